/**
 * The daemon as the operator runs it and as applications break it:
 * - `koala daemon` from a configuration file: its engines (acl for everyone, a rate limit for
 *   one pid) apply to the calls of applications in other processes, and `koala ctl` attaches one
 *   more to the daemon while it serves;
 * - an application killed with SIGKILL mid-call: its connection, rings and calls are released
 *   and the daemon serves the others;
 * - hostile applications (huge lengths, overrun records, impossible positions, ring memory that
 *   is not a sealed memfd): cut off or refused, with a logged reason, the others served.
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import diagnostics from "node:diagnostics_channel";
import { closeSync, ftruncateSync, openSync, readFileSync, statSync, writeFileSync } from "node:fs";
import v8 from "node:v8";
import vm from "node:vm";
import { join } from "node:path";
import { createConnection } from "node:net";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { Code, closeClient, createClient, createServer, type Server } from "../../src/index.js";
import { startDaemon } from "../../src/managed/daemon.js";
import { closeFd, createSealedMemory } from "../../src/managed/native.js";
import type { LogEvent } from "../../src/log.js";
import { EchoService } from "../fixtures/rpc/gen/echo.js";
import { echoImpl, observe, abortSeen } from "../rpc/echo-service.js";
import { rejection, until } from "../helpers.js";
import { addonMissing, socketDir } from "./helpers.js";

const missing = addonMissing();
const bin = join(import.meta.dirname, "..", "..", "bin", "koala.js");
let server: Server;
let backend: string;
const seen = observe();

test.before(async () => {
  if (missing !== undefined) return;
  server = createServer({ logHandlerErrors: false });
  server.add(EchoService, echoImpl(seen));
  backend = await server.listen("tcp://127.0.0.1:0");
});
test.after(() => {
  if (missing !== undefined) return;
  server.forceShutdown();
});
const skip = (): boolean => {
  if (missing !== undefined) console.log(`  (skipped: ${missing})`);
  return missing !== undefined;
};

function child(args: string[], env: NodeJS.ProcessEnv = {}): { proc: ChildProcess; lines: string[]; line: (re: RegExp) => Promise<string> } {
  const proc = spawn(process.execPath, ["--import", "tsx", ...args], { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, ...env } });
  const lines: string[] = [];
  let buf = "";
  proc.stdout!.on("data", (d: Buffer) => {
    buf += d.toString();
    const parts = buf.split("\n");
    buf = parts.pop()!;
    lines.push(...parts);
  });
  let err = "";
  proc.stderr!.on("data", (d: Buffer) => (err += d.toString()));
  const line = async (re: RegExp): Promise<string> => {
    await until(() => lines.some((l) => re.test(l)) || proc.exitCode !== null, `a line matching ${re} (stderr: ${err})`, 20_000);
    const l = lines.find((x) => re.test(x));
    if (l === undefined) throw new Error(`exited ${proc.exitCode} without ${re}; stderr: ${err}`);
    return l;
  };
  return { proc, lines, line };
}

v8.setFlagsFromString("--expose-gc");
const gc = vm.runInNewContext("gc") as () => void;
/** Ring pairs mapped in this process now. */
const ringMappings = (): number => new Set(readFileSync("/proc/self/maps", "utf8").split("\n").filter((l) => l.includes("memfd:koala-rings")).map((l) => l.split(/\s+/)[4])).size;

function stop(p: ChildProcess): Promise<void> {
  if (p.exitCode !== null || p.signalCode !== null) return Promise.resolve();
  return new Promise((r) => {
    p.once("exit", () => r());
    p.kill("SIGTERM");
  });
}

test("koala daemon: the config's engines apply to every attached application, a pid-scoped one to that pid only; koala ctl attaches more", async () => {
  if (skip()) return;
  const dir = socketDir();
  const runtime = join(dir.path, "..", "run");
  const config = join(dir.path, "..", "koala.toml");
  writeFileSync(
    config,
    `[daemon]
socket = "${dir.path}"

[[daemon.engines]]
kind = "acl"
options = { rules = [{ action = "deny", method = "/koala.test.Echo/ClientStream" }] }

[[daemon.engines]]
kind = "ratelimit"
name = "limit-me"
scope = { pid = ${process.pid} }
options = { ratePerSecond = 0.001, burst = 2, mode = "reject" }
`,
  );
  const daemon = child([bin, "daemon", "--config", config], { KOALA_RUNTIME_DIR: runtime });
  process.env.KOALA_DAEMON_SOCKET = dir.path;
  const client = createClient(EchoService, `managed:///${backend}`);
  try {
    await daemon.line(/koala daemon listening on/);
    assert.is(statSync(dir.path).mode & 0o777, 0o600);
    assert.is(statSync(join(dir.path, "..")).mode & 0o777, 0o700);
    // This process: limited to 2 calls, and ClientStream denied.
    assert.is((await client.unary({ text: "1" })).text, "1");
    assert.is((await client.unary({ text: "2" })).text, "2");
    assert.is((await rejection(client.unary({ text: "3" }))).code, Code.RESOURCE_EXHAUSTED);
    const denied = await rejection(client.clientStream([{ text: "a" }]));
    assert.is(denied.code, Code.PERMISSION_DENIED);
    // Another process: no rate limit for its pid, the same ACL.
    const other = child(["test/fixtures/managed/app.ts", `managed:///${backend}`, "calls"], { KOALA_DAEMON_SOCKET: dir.path });
    assert.equal(JSON.parse(await other.line(/^\[/)), [0, 0, 0, Code.PERMISSION_DENIED]);
    // The application's own process has no engine at all: the daemon did it.
    const { processInterceptors } = await import("../../src/rpc/interceptor.js");
    assert.is(processInterceptors.size, 0);
    // koala ctl on the daemon's pid: deny Unary for everyone, then detach it again.
    const ctl = (...args: string[]) => spawnSync(process.execPath, [bin, "ctl", ...args], { env: { ...process.env, KOALA_RUNTIME_DIR: runtime }, encoding: "utf8" });
    const attached = ctl("attach", String(daemon.proc.pid), "acl", "--name", "no-unary", "--options", JSON.stringify({ rules: [{ action: "deny", method: "Unary" }] }));
    assert.is(attached.status, 0, attached.stderr);
    const third = child(["test/fixtures/managed/app.ts", `managed:///${backend}`, "calls"], { KOALA_DAEMON_SOCKET: dir.path });
    assert.equal(JSON.parse(await third.line(/^\[/)), [Code.PERMISSION_DENIED, Code.PERMISSION_DENIED, Code.PERMISSION_DENIED, Code.PERMISSION_DENIED]);
    assert.is(ctl("detach", String(daemon.proc.pid), "no-unary").status, 0);
  } finally {
    closeClient(client);
    delete process.env.KOALA_DAEMON_SOCKET;
    await stop(daemon.proc);
    dir.remove();
  }
});

test("an application killed with SIGKILL mid-call: its connection, rings and calls are released; the daemon serves the others", async () => {
  if (skip()) return;
  // Ring pairs of the earlier tests' in-process clients go with their last reference (a gc):
  // wait for them, so that the count below is this child's alone.
  await until(() => {
    gc();
    return ringMappings() === 0;
  }, "the earlier tests' ring mappings released");
  const dir = socketDir();
  const daemon = await startDaemon({ socketPath: dir.path });
  const app = child(["test/fixtures/managed/app.ts", `managed:///${backend}`, "hang"], { KOALA_DAEMON_SOCKET: dir.path });
  try {
    await app.line(/started/);
    const pid = app.proc.pid!;
    gc();
    assert.is(ringMappings(), 1, "the daemon (this process) maps the child's ring pair");
    await until(() => seen.started.has("hang") && daemon.attached().some((a) => a.peer.pid === pid && a.calls === 2), "the child's two calls open in the daemon");
    app.proc.kill("SIGKILL");
    await until(() => !daemon.attached().some((a) => a.peer.pid === pid), "the daemon released the killed application");
    // Its upstream connection closed, so the server cancelled its calls.
    await abortSeen(seen, "hang");
    // The daemon's mapping of the killed application's rings goes with the last reference to it.
    await until(() => {
      gc();
      return ringMappings() === 0;
    }, "the daemon unmapped the killed application's rings");
    process.env.KOALA_DAEMON_SOCKET = dir.path;
    const client = createClient(EchoService, `managed:///${backend}`);
    try {
      assert.is((await client.unary({ text: "after" })).text, "after");
    } finally {
      closeClient(client);
      delete process.env.KOALA_DAEMON_SOCKET;
    }
  } finally {
    app.proc.kill("SIGKILL");
    await daemon.close();
    dir.remove();
  }
});

for (const what of ["huge", "overrun", "tail"]) {
  test(`a hostile application (${what}) is cut off with a logged reason; another is served meanwhile`, async () => {
    if (skip()) return;
    const dir = socketDir();
    const daemon = await startDaemon({ socketPath: dir.path });
    const events: LogEvent[] = [];
    const listen = (e: unknown): void => void events.push(e as LogEvent);
    diagnostics.subscribe("koala:managed", listen);
    process.env.KOALA_DAEMON_SOCKET = dir.path;
    const good = createClient(EchoService, `managed:///${backend}`);
    try {
      assert.is((await good.unary({ text: "before" })).text, "before");
      const bad = child(["test/fixtures/managed/hostile.ts", dir.path, backend, what]);
      await bad.line(/attached \{"ok":true\}/);
      await bad.line(/^cut$/);
      await until(() => events.some((e) => e.level === "warn" && /shared ring corrupt/.test(e.message)), "a warning naming the reason");
      assert.match(events.find((e) => /shared ring corrupt/.test(e.message))!.message, new RegExp(`pid/${bad.proc.pid}`));
      assert.is(daemon.attached().filter((a) => a.peer.pid === bad.proc.pid).length, 0);
      assert.is((await good.unary({ text: "after" })).text, "after");
    } finally {
      diagnostics.unsubscribe("koala:managed", listen);
      closeClient(good);
      delete process.env.KOALA_DAEMON_SOCKET;
      await daemon.close();
      dir.remove();
    }
  });
}

test("set-up refusals: ring memory that is not a sealed memfd, a descriptor that is not there, a bad line; the app cannot shrink its rings", async () => {
  if (skip()) return;
  const dir = socketDir();
  const daemon = await startDaemon({ socketPath: dir.path });
  const ask = (line: string): Promise<string> =>
    new Promise((resolve) => {
      const s = createConnection(dir.path);
      let got = "";
      s.on("data", (d) => (got += d.toString()));
      s.on("close", () => resolve(got));
      s.on("error", () => resolve(got));
      s.write(line);
    });
  const plain = join(dir.path, "..", "plain");
  writeFileSync(plain, Buffer.alloc(4096 + 2 * 4096));
  const fd = openSync(plain, "r+");
  try {
    const file = JSON.parse(await ask(`${JSON.stringify({ v: 1, fd, ringBytes: 4096, target: backend })}\n`));
    assert.is(file.code, "KOALA_ERR_ACCESS_DENIED");
    assert.match(file.error, /not a memfd sealed/);
    const none = JSON.parse(await ask(`${JSON.stringify({ v: 1, fd: 100_000, ringBytes: 4096, target: backend })}\n`));
    assert.match(none.error, /\/proc\/\d+\/fd\/100000/);
    const garbage = JSON.parse(await ask("this is not json\n"));
    assert.is(garbage.code, "KOALA_ERR_PROTOCOL");
    const version = JSON.parse(await ask(`${JSON.stringify({ v: 99 })}\n`));
    assert.is(version.code, "KOALA_ERR_PROTOCOL");
    assert.is(daemon.attached().length, 0);
    // The seals hold against the creator: shrinking would SIGBUS the daemon, and is refused.
    const sealed = createSealedMemory(4096 + 2 * 4096);
    try {
      assert.throws(() => ftruncateSync(sealed.fd, 0), /EPERM/);
      assert.throws(() => ftruncateSync(sealed.fd, 1 << 20), /EPERM/);
    } finally {
      closeFd(sealed.fd);
    }
  } finally {
    closeSync(fd);
    await daemon.close();
    dir.remove();
  }
});

test.run();
