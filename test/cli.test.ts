import { test } from "uvu";
import * as assert from "uvu/assert";
import { execFile, execFileSync, fork, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { until } from "./helpers.js";

const bin = new URL("../bin/koala.js", import.meta.url).pathname;

function koala(args: string[], env: Record<string, string> = {}) {
  return spawnSync(process.execPath, [bin, ...args], { env: { ...process.env, ...env }, encoding: "utf8" });
}

test("koala info lists the transports and says what auto picks and why", () => {
  const r = koala(["info"], { KOALA_TRANSPORT: "auto" });
  assert.is(r.status, 0, r.stderr);
  assert.match(r.stdout, /tcp\s+available/);
  assert.match(r.stdout, /unix\s+available/);
  assert.match(r.stdout, /rdma\s+unavailable: /);
  assert.match(r.stdout, /host:port addresses use tcp: RDMA is not used: /);
});

test("koala info --json, and an explicit rdma choice failing with the reason", () => {
  const json = JSON.parse(execFileSync(process.execPath, [bin, "info", "--json"], { encoding: "utf8" }));
  assert.is(json.choice.transport, "tcp");
  const r = koala(["info"], { KOALA_TRANSPORT: "rdma" });
  assert.is(r.status, 1);
  assert.match(r.stdout, /rdma transport unavailable: /);
  const bad = koala(["info"], { KOALA_TRANSPORT: "carrier-pigeon" });
  assert.match(bad.stdout, /KOALA_TRANSPORT="carrier-pigeon" is not one of auto, tcp, unix, rdma/);
});

test("unknown commands get the usage and exit code 2", () => {
  const r = koala(["frobnicate"]);
  assert.is(r.status, 2);
  assert.match(r.stderr, /unknown command "frobnicate"/);
  assert.match(r.stderr, /usage: koala/);
});

/** `koala <args>` without blocking the event loop (the process it asks must keep answering). */
function koalaAsync(args: string[], env: Record<string, string>): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [bin, ...args], { env: { ...process.env, ...env }, timeout: 60_000 }, (err, stdout, stderr) => {
      resolve({ code: err === null ? 0 : typeof err.code === "number" ? err.code : 1, stdout, stderr });
    });
  });
}

test("koala ctl channels and koala info <pid> show a process's static: channel, its balancer and each endpoint's transport (tcp, tcp, rdma)", async () => {
  const base = mkdtempSync(join(tmpdir(), "koala-cli-"));
  const dir = join(base, "run");
  const fixture = new URL("./fixtures/cluster/channels-process.ts", import.meta.url).pathname;
  const child = fork(fixture, [], {
    execArgv: ["--import", "tsx"],
    env: { ...process.env, KOALA_RUNTIME_DIR: dir, KOALA_CONTROL: "1", KOALA_RDMA_PROVIDER: "soft" },
    stdio: ["ignore", "ignore", "inherit", "ipc"],
  });
  try {
    const { addresses } = await new Promise<{ addresses: string[] }>((resolve, reject) => {
      child.once("message", resolve as never);
      child.once("exit", (code) => reject(new Error(`channels process exited with ${code}`)));
    });
    await until(() => existsSync(join(dir, `${child.pid}.sock`)), "the control socket", 10_000);
    const env = { KOALA_RUNTIME_DIR: dir, KOALA_CONTROL: "" };
    const r = await koalaAsync(["ctl", "channels", String(child.pid)], env);
    assert.is(r.code, 0, r.stderr);
    assert.match(r.stdout, `channel static:///${addresses.join(",")}  balancer round_robin`);
    const transports = ["tcp", "tcp", "rdma"];
    addresses.forEach((a, i) => assert.match(r.stdout, new RegExp(`\\n    ${a.replace(/[.]/g, "\\.")}  ready  ${transports[i]}  `), `${a} over ${transports[i]}:\n${r.stdout}`));

    const json = await koalaAsync(["ctl", "channels", String(child.pid), "--json"], env);
    const [answer] = JSON.parse(json.stdout) as { ok: boolean; result: { channels: { target: string; balancer: string; endpoints: { address: string; transport?: string }[] }[] } }[];
    const channel = answer!.result.channels.find((c) => c.target.startsWith("static:"))!;
    assert.equal(channel.endpoints.map((e) => [e.address, e.transport]), addresses.map((a, i) => [a, transports[i]]));

    // koala info <pid>: the same channel, and the three servers of the process.
    const info = await koalaAsync(["info", String(child.pid)], env);
    assert.is(info.code, 0, info.stderr);
    assert.match(info.stdout, "balancer round_robin");
    assert.match(info.stdout, new RegExp(`${addresses[2]!.replace(/[.]/g, "\\.")}  ready  rdma`));
    assert.is(info.stdout.match(/^  server /gm)?.length, 3, info.stdout);

    const gone = await koalaAsync(["ctl", "channels", "999999999"], env);
    assert.is(gone.code, 1);
    assert.match(gone.stderr, /KOALA_ERR_CONNECTION_REFUSED/);
  } finally {
    child.kill("SIGKILL");
    rmSync(base, { recursive: true, force: true });
  }
});

test.run();
