/**
 * Live control through `koala ctl`, against server processes started with KOALA_CONTROL=1:
 * attaching an engine changes what calls get, replacing one under load loses and repeats no
 * call and keeps its state, metrics come out as Prometheus text; control sockets are 0600 in a
 * 0700 directory, removed when their process exits, and cleaned up by `ps` when it was killed.
 * Every test has its own runtime directory (KOALA_RUNTIME_DIR): other koala processes of the
 * host are never touched.
 */
import { test } from "uvu";
import * as assert from "uvu/assert";
import { execFile, fork, spawn, type ChildProcess } from "node:child_process";
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code, ErrorCode, KoalaError, RpcError, closeClient, createClient } from "../../src/index.js";
import { enableControl, type ProcessInfo } from "../../src/policy/control.js";
import { EchoService } from "../fixtures/rpc/gen/echo.js";
import { GatewayService } from "../../examples/backends/gen/gateway.js";

const root = new URL("../..", import.meta.url).pathname;
const bin = join(root, "bin/koala.js");

interface Child {
  proc: ChildProcess;
  pid: number;
  address: string;
  socket: string;
}

/** A test's own runtime directory and the children it started, all removed by `cleanup` (run in finally). */
function sandbox() {
  const base = mkdtempSync(join(tmpdir(), "koala-ctl-"));
  const dir = join(base, "run");
  const children: Child[] = [];
  const env = { ...process.env, KOALA_RUNTIME_DIR: dir, KOALA_CONTROL: "1" };
  return {
    dir,
    children,
    async start(fixture = "control-server.ts"): Promise<Child> {
      const proc = fork(join(root, "test/fixtures/policy", fixture), [], { execArgv: ["--import", "tsx"], env, stdio: ["ignore", "ignore", "inherit", "ipc"] });
      const c = { proc, pid: proc.pid!, address: "", socket: "" };
      children.push(c);
      const m = await new Promise<{ address: string; socket: string }>((resolve, reject) => {
        proc.once("message", resolve as never);
        proc.once("exit", (code) => reject(new Error(`control server exited with ${code}`)));
      });
      return Object.assign(c, m);
    },
    /** Runs `koala ctl …` with this sandbox's runtime directory. */
    ctl(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
      return new Promise((resolve) => {
        execFile(process.execPath, [bin, "ctl", ...args], { env: { ...env, KOALA_CONTROL: "" }, timeout: 60_000 }, (err, stdout, stderr) => {
          resolve({ code: err === null ? 0 : typeof err.code === "number" ? err.code : 1, stdout, stderr });
        });
      });
    },
    cleanup(): void {
      for (const c of children) c.proc.kill("SIGKILL");
      rmSync(base, { recursive: true, force: true });
    },
  };
}

function seen(c: Child): Promise<string[]> {
  return new Promise((resolve) => {
    const on = (m: unknown) => {
      if (typeof m === "object" && m !== null && "seen" in m) {
        c.proc.off("message", on);
        resolve((m as { seen: string[] }).seen);
      }
    };
    c.proc.on("message", on);
    c.proc.send("seen");
  });
}

const outcome = (p: Promise<unknown>) => p.then(() => "OK", (e: unknown) => (e instanceof RpcError ? Code[e.code]! : String(e)));
const exited = (c: Child) => new Promise<void>((r) => (c.proc.exitCode !== null || c.proc.signalCode !== null ? r() : c.proc.once("exit", () => r())));

test("koala ctl ps lists the process with its server and engines; attach from another process changes what calls get, detach undoes it", async () => {
  const sb = sandbox();
  try {
    const child = await sb.start();
    const client = createClient(EchoService, child.address);
    try {
      let ps = await sb.ctl("ps");
      assert.is(ps.code, 0, ps.stderr);
      assert.match(ps.stdout, new RegExp(`^${child.pid}  .*control-server\\.ts`, "m"));
      assert.match(ps.stdout, /server echo: koala\.test\.Echo at tcp:\/\/127\.0\.0\.1:\d+/);

      const attach = await sb.ctl("attach", String(child.pid), "ratelimit", "--name", "rl", "--scope", "service=koala.test.Echo", "--side", "server", "--options", `{"ratePerSecond":0.001,"burst":2,"mode":"reject"}`);
      assert.is(attach.code, 0, attach.stderr);
      assert.match(attach.stdout, new RegExp(`^${child.pid}: attached rl \\(ratelimit\\) on {"service":"koala.test.Echo","side":"server"}`));
      const limited = await Promise.all(Array.from({ length: 6 }, (_, i) => outcome(client.unary({ text: `a${i}` }))));
      assert.is(limited.filter((c) => c === "OK").length, 2);
      assert.is(limited.filter((c) => c === "RESOURCE_EXHAUSTED").length, 4);

      ps = await sb.ctl("ps", "--json");
      const info = (JSON.parse(ps.stdout) as { pid: number; result: ProcessInfo }[]).find((a) => a.pid === child.pid)!.result;
      assert.equal(info.engines.map((e) => [e.name, e.kind]), [["rl", "ratelimit"]]);

      const detach = await sb.ctl("detach", String(child.pid), "rl");
      assert.is(detach.code, 0, detach.stderr);
      const free = await Promise.all(Array.from({ length: 6 }, (_, i) => outcome(client.unary({ text: `b${i}` }))));
      assert.equal(free, ["OK", "OK", "OK", "OK", "OK", "OK"]);

      // Mistakes are reported by the process, naming what was wrong; nothing changes.
      const bad = await sb.ctl("attach", String(child.pid), "ratelimit", "--options", `{"burts":2}`);
      assert.is(bad.code, 1);
      assert.match(bad.stderr, /KOALA_ERR_INVALID_ARGUMENT: engine ratelimit \(ratelimit\): unknown option "burts" \(did you mean "burst"\?\)/);
      const none = await sb.ctl("detach", String(child.pid), "nope");
      assert.match(none.stderr, /KOALA_ERR_CONTROL: no engine named "nope"/);
      const usage = await sb.ctl("attach", "everyone", "null");
      assert.is(usage.code, 2);
      assert.match(usage.stderr, /the target must be a pid or all/);
    } finally {
      closeClient(client);
    }
  } finally {
    sb.cleanup();
  }
});

test("KOALA_CONTROL=1 alone makes a plain server (no policy code in it) reachable: listed by ps, changed live", async () => {
  const sb = sandbox();
  try {
    const child = await sb.start("plain-server.ts");
    const client = createClient(EchoService, child.address);
    try {
      let ps = await sb.ctl("ps");
      for (let i = 0; i < 100 && !ps.stdout.includes(String(child.pid)); i++) ps = await sb.ctl("ps");
      assert.match(ps.stdout, new RegExp(`^${child.pid}  .*plain-server\\.ts`, "m"));
      assert.match(ps.stdout, /server server-1: koala\.test\.Echo at tcp:\/\/127\.0\.0\.1:\d+/);
      const attach = await sb.ctl("attach", String(child.pid), "acl", "--name", "wall", "--side", "server", "--options", `{"default":"deny"}`);
      assert.is(attach.code, 0, attach.stderr);
      assert.is(await outcome(client.unary({ text: "x" })), "PERMISSION_DENIED");
      assert.is((await sb.ctl("detach", String(child.pid), "wall")).code, 0);
      assert.is(await outcome(client.unary({ text: "y" })), "OK");
    } finally {
      closeClient(client);
    }
  } finally {
    sb.cleanup();
  }
});

test("replace through koala ctl under load: no call lost or repeated, queued calls and counters carried over; metrics through ctl", async () => {
  const sb = sandbox();
  try {
    const child = await sb.start();
    const pid = String(child.pid);
    const client = createClient(EchoService, child.address);
    try {
      assert.is((await sb.ctl("attach", pid, "metrics", "--name", "m")).code, 0);
      assert.is((await sb.ctl("attach", pid, "ratelimit", "--name", "rl", "--side", "server", "--options", `{"ratePerSecond":50,"burst":5}`)).code, 0);
      const n = 120;
      const calls = Array.from({ length: n }, (_, i) => outcome(client.unary({ text: `c${i}` })));
      // While most calls wait in the bucket's queue: a faster rate, then a new metrics engine.
      const replaced = await sb.ctl("replace", pid, "rl", "--options", `{"ratePerSecond":400,"burst":5}`);
      assert.is(replaced.code, 0, replaced.stderr);
      assert.match(replaced.stdout, /replaced rl \(ratelimit\) on .* with {"ratePerSecond":400,"burst":5,"mode":"queue","maxQueue":10000}/);
      assert.is((await sb.ctl("replace", pid, "m")).code, 0);
      const codes = await Promise.all(calls);
      assert.equal(codes.filter((c) => c !== "OK"), [], "every call passed");
      const texts = await seen(child);
      assert.is(texts.length, n, "no call lost");
      assert.is(new Set(texts).size, n, "no call repeated");

      const metrics = await sb.ctl("metrics", pid);
      assert.is(metrics.code, 0, metrics.stderr);
      // The counters of the first metrics engine moved to its successor: all n calls are counted.
      assert.match(metrics.stdout, new RegExp(`koala_calls_total\\{side="server",method="/koala.test.Echo/Unary",code="OK"\\} ${n}\\n`));
      assert.match(metrics.stdout, /# TYPE koala_call_duration_seconds histogram/);
    } finally {
      closeClient(client);
    }
  } finally {
    sb.cleanup();
  }
});

test("all: one policy for every koala process of the host; configure in place", async () => {
  const sb = sandbox();
  try {
    const a = await sb.start();
    const b = await sb.start();
    const attach = await sb.ctl("attach", "all", "acl", "--name", "guard", "--options", `{"default":"deny","rules":[{"action":"allow","fields":{"text":"friend"}}]}`);
    assert.is(attach.code, 0, attach.stderr);
    assert.is(attach.stdout.trim().split("\n").length, 2, attach.stdout);
    const clients = [a, b].map((c) => createClient(EchoService, c.address));
    try {
      for (const c of clients) assert.equal([await outcome(c.unary({ text: "friend" })), await outcome(c.unary({ text: "foe" }))], ["OK", "PERMISSION_DENIED"]);
      const configured = await sb.ctl("configure", "all", "guard", "--options", `{"default":"allow"}`);
      assert.is(configured.code, 0, configured.stderr);
      for (const c of clients) assert.is(await outcome(c.unary({ text: "foe" })), "OK");
      const metrics = await sb.ctl("metrics", "all");
      assert.is(metrics.code, 0, metrics.stderr);
      for (const c of [a, b]) {
        assert.match(metrics.stdout, `# koala process ${c.pid}\n# no metrics engine is attached to process ${c.pid}; attach one with: koala ctl attach ${c.pid} metrics\n`, "no metrics engine: said, with the attach line");
      }
      const one = await sb.ctl("metrics", String(a.pid));
      assert.equal([one.code, one.stdout], [0, ""]);
      assert.is(one.stderr, `koala ctl: no metrics engine is attached to process ${a.pid}; attach one with: koala ctl attach ${a.pid} metrics\n`);
    } finally {
      for (const c of clients) closeClient(c);
    }
  } finally {
    sb.cleanup();
  }
});

test("a backend started from a file with control = true is listed by koala ctl ps with the file's engines, and changed live", async () => {
  const sb = sandbox();
  const file = join(sb.dir, "..", "koala.toml");
  writeFileSync(file, `control = true\n[backends.edge]\nlisten = "127.0.0.1:0"\n[[backends.edge.engines]]\nkind = "acl"\noptions = { default = "deny" }\n`);
  const proc = fork(join(root, "test/fixtures/policy/config-backend.ts"), ["edge"], {
    execArgv: ["--import", "tsx"],
    env: { ...process.env, KOALA_RUNTIME_DIR: sb.dir, KOALA_CONFIG: file, KOALA_CONTROL: "" },
    stdio: ["ignore", "ignore", "inherit", "ipc"],
  });
  sb.children.push({ proc, pid: proc.pid!, address: "", socket: "" });
  try {
    const { address } = await new Promise<{ address: string }>((resolve) => proc.once("message", resolve as never));
    const ps = await sb.ctl("ps");
    assert.match(ps.stdout, new RegExp(`^${proc.pid}  `, "m"));
    assert.match(ps.stdout, /server edge: koala\.test\.Echo at tcp:\/\/127\.0\.0\.1:\d+\n {2}engine edge\.acl \(acl\) on {"service":"koala\.test\.Echo","side":"server","backend":"edge"}/);
    const client = createClient(EchoService, address);
    try {
      assert.is(await outcome(client.unary({ text: "x" })), "PERMISSION_DENIED");
      assert.is((await sb.ctl("configure", String(proc.pid), "edge.acl", "--options", `{"default":"allow"}`)).code, 0);
      assert.is(await outcome(client.unary({ text: "x" })), "OK");
      // Live, by backend name: an engine for another backend leaves this one alone, one for it applies.
      assert.is((await sb.ctl("attach", String(proc.pid), "fault", "--name", "f-other", "--backend", "other", "--options", `{"abortFraction":1}`)).code, 0);
      assert.is(await outcome(client.unary({ text: "x" })), "OK");
      assert.is((await sb.ctl("attach", String(proc.pid), "fault", "--name", "f-edge", "--backend", "edge", "--options", `{"abortFraction":1}`)).code, 0);
      assert.is(await outcome(client.unary({ text: "x" })), "UNAVAILABLE");
      assert.match((await sb.ctl("ps")).stdout, /engine f-edge \(fault\) on {"global":true,"backend":"edge"}/);
    } finally {
      closeClient(client);
    }
  } finally {
    sb.cleanup();
  }
});

test("koala serve starts the example's three backends from its file; ctl ps lists them; SIGTERM shuts them down and exits 0", async () => {
  const sb = sandbox();
  const proc = spawn(process.execPath, [bin, "serve", "examples/backends/services.ts", "--config", "examples/backends/koala.toml"], {
    cwd: root,
    env: { ...process.env, KOALA_RUNTIME_DIR: sb.dir, KOALA_CONTROL: "1", KOALA_TRANSPORT: "" },
    stdio: ["ignore", "pipe", "inherit"],
  });
  sb.children.push({ proc, pid: proc.pid!, address: "", socket: "" });
  try {
    let out = "";
    await new Promise<void>((resolve, reject) => {
      proc.stdout!.on("data", (d: Buffer) => {
        out += d.toString();
        if (/gateway listening on /.test(out)) resolve();
      });
      proc.once("exit", (code) => reject(new Error(`koala serve exited with ${code}: ${out}`)));
    });
    const gatewayAddress = /gateway listening on (\S+)/.exec(out)![1]!;
    const client = createClient(GatewayService, gatewayAddress);
    try {
      assert.is((await client.welcome({ name: "Ana" })).greeting, "Hello, Ana!");
    } finally {
      closeClient(client);
    }
    const ps = await sb.ctl("ps");
    for (const s of ["greeter: hello.Greeter", "kv: kv.KeyValue", "gateway: gateway.Gateway"]) assert.ok(ps.stdout.includes(`server ${s} at tcp://`), ps.stdout);
    assert.match(ps.stdout, /engine greeter\.ratelimit \(ratelimit\)/);
    const exit = new Promise<number | null>((r) => proc.once("exit", (code) => r(code)));
    proc.kill("SIGTERM");
    assert.is(await exit, 0);
    assert.match(out, /SIGTERM: shutting down/);
    assert.equal(readdirSync(sb.dir), [], "its control socket is gone");
  } finally {
    sb.cleanup();
  }
});

test("control sockets: 0600 in a 0700 directory named by pid, closed to other users; removed on exit and on SIGTERM; a killed process's socket is cleaned up by ps", async () => {
  const sb = sandbox();
  try {
    const a = await sb.start();
    assert.is(a.socket, join(sb.dir, `${a.pid}.sock`));
    assert.is(statSync(sb.dir).mode & 0o777, 0o700);
    assert.is(statSync(a.socket).mode & 0o777, 0o600);
    assert.ok(statSync(a.socket).isSocket());
    if (process.getuid?.() === 0) {
      // Another user cannot even reach the socket (root can run a process as "nobody" to check).
      const other = await new Promise<string>((resolve) => {
        execFile(process.execPath, ["-e", `require("net").connect(${JSON.stringify(a.socket)}).on("connect", () => { console.log("connected"); process.exit(0) }).on("error", (e) => console.log(e.code))`], { uid: 65534, gid: 65534 }, (e, out) => resolve(out.trim() || `the check itself did not run: ${String(e)}`));
      });
      assert.is(other, "EACCES");
    }

    const b = await sb.start();
    const c = await sb.start();
    a.proc.send("exit");
    await exited(a);
    assert.not.ok(existsSync(a.socket), "removed at a normal exit");
    b.proc.kill("SIGTERM");
    await exited(b);
    assert.not.ok(existsSync(b.socket), "removed on SIGTERM");
    c.proc.kill("SIGKILL");
    await exited(c);
    assert.ok(existsSync(c.socket), "a killed process leaves its socket");
    const ps = await sb.ctl("ps");
    assert.is(ps.code, 0, ps.stderr);
    assert.is(ps.stdout.trim(), "no koala process with a control socket here");
    assert.equal(readdirSync(sb.dir), [], "ps removed the stale socket");
  } finally {
    sb.cleanup();
  }
});

test("enableControl refuses a runtime directory owned by another user, and makes its own 0700", async () => {
  const base = mkdtempSync(join(tmpdir(), "koala-ctl-dir-"));
  try {
    const loose = join(base, "loose");
    mkdirSync(loose, { mode: 0o755 });
    chmodSync(loose, 0o755);
    const handle = await enableControl({ dir: loose });
    try {
      assert.is(statSync(loose).mode & 0o777, 0o700);
      assert.is(statSync(handle.path).mode & 0o777, 0o600);
    } finally {
      await handle.close();
    }
    assert.not.ok(existsSync(handle.path), "close removes the socket");
    if (process.getuid?.() === 0) {
      const foreign = join(base, "foreign");
      mkdirSync(foreign, { mode: 0o700 });
      chownSync(foreign, 65534, 65534);
      const err = await enableControl({ dir: foreign }).catch((e: unknown) => e);
      assert.ok(err instanceof KoalaError && err.code === ErrorCode.CONTROL, String(err));
      assert.match(String(err), /belongs to uid 65534, not to this user/);
    }
  } finally {
    rmSync(base, { recursive: true, force: true });
  }
});

test.run();
