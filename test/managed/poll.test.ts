/**
 * Adaptive polling of the shared rings (src/managed/poll.ts):
 * - the window itself, fed events by hand (no clock read): it opens after a write, closes once
 *   the answer is read, never runs past the cap; `fixed` and 0;
 * - its settings checked like every option, from the daemon's options and from the environment;
 * - two real ends over a memfd and a Unix socket pair: after traffic an idle end stops looking
 *   (no more poll turns) and a message after the idle spell goes through the sleep path (the
 *   sender writes a wake-up byte);
 * - `koala daemon` in its own process and an application (this process) attached to it, idle
 *   after a few hundred calls: each uses under 10% of a core over one second (a resource bound,
 *   read from /proc and process.cpuUsage, not a timing of speed), and a call after the idle spell
 *   still works.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { closeClient, createClient, createServer, type Server } from "../../src/index.js";
import { startDaemon } from "../../src/managed/daemon.js";
import { DEFAULT_POLL_US, PollWindow, READ, WRITE, pollSettingsFromEnv, resolvePollSettings } from "../../src/managed/poll.js";
import { EchoService } from "../fixtures/rpc/gen/echo.js";
import { echoImpl, observe } from "../rpc/echo-service.js";
import { thrownCode, until } from "../helpers.js";
import { addonMissing, connectionPair, socketDir } from "./helpers.js";

const missing = addonMissing();
const bin = join(import.meta.dirname, "..", "..", "bin", "koala.js");
const skip = (): boolean => {
  if (missing !== undefined) console.log(`  (skipped: ${missing})`);
  return missing !== undefined;
};
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

test("adaptive window: opens after a write for at most the cap, shuts once the answer is read", () => {
  const w = new PollWindow({ mode: "adaptive", maxUs: 200 });
  assert.is(w.deadline, 0, "nothing written: nothing awaited");
  let now = 1000; // ms, as performance.now() gives it
  for (let i = 0; i < 50; i++) {
    w.note(WRITE, 1, now);
    assert.ok(w.deadline > now && w.deadline <= now + 0.2, `the window after a write is open and at most 200 µs (${((w.deadline - now) * 1000).toFixed(1)} µs)`);
    now += 0.03; // answers come 30 µs after each call
    w.note(READ, 1, now);
    assert.is(w.deadline, 0, "the one call answered: sleep at once");
    now += 0.01;
  }
  w.note(WRITE, 1, now);
  const open = (w.deadline - now) * 1000;
  assert.ok(open >= 50 && open <= 70, `after answers in 30 µs, it looks about twice that long (${open.toFixed(1)} µs)`);
  // Two calls out, one answer back: still awaited, the window stays.
  w.note(WRITE, 1, now);
  const deadline = w.deadline;
  w.note(READ, 1, now + 0.01);
  assert.is(w.deadline, deadline, "one call still awaited: still looking");
  w.note(READ, 1, now + 0.02);
  assert.is(w.deadline, 0);
});

test("adaptive window: slow answers never widen it past the cap; batches count by records", () => {
  const w = new PollWindow({ mode: "adaptive", maxUs: 100 });
  let now = 0;
  for (let i = 0; i < 20; i++) {
    w.note(WRITE, 1, now);
    assert.ok(w.deadline - now <= 0.1 + 1e-9, "at most the cap");
    now += 50; // 50 ms: far past the cap
    w.note(READ, 1, now);
  }
  const d = new PollWindow({ mode: "adaptive", maxUs: 200 });
  d.note(WRITE, 32, now);
  assert.ok(d.deadline > now, "32 calls out: looking");
  d.note(READ, 31, now + 0.01);
  assert.ok(d.deadline > now, "one of them still awaited: still looking");
  d.note(READ, 1, now + 0.02);
  assert.is(d.deadline, 0, "all 32 answered: asleep");
  // A client stream: 10 records out, 1 back. Once the end has slept the count starts again.
  d.note(WRITE, 10, now);
  d.note(READ, 1, now + 0.05);
  assert.ok(d.deadline > 0, "9 look unanswered");
  d.slept();
  d.note(WRITE, 1, now + 10);
  d.note(READ, 1, now + 10.03);
  assert.is(d.deadline, 0, "after a sleep the next call is counted afresh: answered, asleep");
});

test("fixed looks maxUs after every event; maxUs 0 never looks", () => {
  const f = new PollWindow({ mode: "fixed", maxUs: 300 });
  f.note(READ, 1, 10);
  assert.ok(Math.abs(f.deadline - 10.3) < 1e-9);
  const off = new PollWindow({ mode: "adaptive", maxUs: 0 });
  assert.ok(off.off);
  off.note(WRITE, 1, 10);
  assert.is(off.deadline, 0);
});

test("settings are checked like the other options: defaults, bad values, misspelled keys, the environment", () => {
  assert.equal(resolvePollSettings("x", {}), { mode: "adaptive", maxUs: DEFAULT_POLL_US });
  assert.equal(resolvePollSettings("x", { mode: "fixed", maxUs: 0 }), { mode: "fixed", maxUs: 0 });
  assert.is(thrownCode(() => resolvePollSettings("x", { mode: "spin" })), "KOALA_ERR_INVALID_ARGUMENT");
  assert.is(thrownCode(() => resolvePollSettings("x", { maxUs: -1 })), "KOALA_ERR_INVALID_ARGUMENT");
  assert.is(thrownCode(() => resolvePollSettings("x", { maxUS: 5 })), "KOALA_ERR_INVALID_ARGUMENT");
  assert.equal(pollSettingsFromEnv({}), { mode: "adaptive", maxUs: DEFAULT_POLL_US });
  assert.equal(pollSettingsFromEnv({ KOALA_MANAGED_POLL_US: "0" }), { mode: "adaptive", maxUs: 0 });
  assert.equal(pollSettingsFromEnv({ KOALA_MANAGED_POLL_US: "2000", KOALA_MANAGED_POLL: "fixed" }), { mode: "fixed", maxUs: 2000 });
  assert.is(thrownCode(() => pollSettingsFromEnv({ KOALA_MANAGED_POLL_US: "1.5" })), "KOALA_ERR_INVALID_ARGUMENT");
  assert.is(thrownCode(() => pollSettingsFromEnv({ KOALA_MANAGED_POLL: "always" })), "KOALA_ERR_INVALID_ARGUMENT");
});

test("startDaemon() checks its polling options", async () => {
  if (skip()) return;
  const dir = socketDir();
  try {
    const code = async (o: object): Promise<unknown> => startDaemon({ socketPath: dir.path, policy: null, ...o }).then(async (d) => (await d.close(), "started"), (e: { code?: unknown; message?: string }) => `${String(e.code)} ${e.message}`);
    assert.match(String(await code({ pollUs: -5 })), /^KOALA_ERR_INVALID_ARGUMENT startDaemon\(\): option "pollUs"/);
    assert.match(String(await code({ pollMode: "busy" })), /^KOALA_ERR_INVALID_ARGUMENT startDaemon\(\): option "pollMode"/);
    assert.is(await code({ pollUs: 50, pollMode: "fixed" }), "started");
  } finally {
    dir.remove();
  }
});

test("two real ends: after calls an idle end stops looking, and a message after the idle spell takes the sleep path", async () => {
  if (skip()) return;
  const { app, daemon, done } = await connectionPair(64 * 1024, 200);
  try {
    const appGot: number[] = [];
    let answered: (() => void) | undefined;
    daemon.onMessage((m) => {
      const n = m[0]!;
      daemon.release(m);
      daemon.send([Uint8Array.of(n)]); // the "reply"
    });
    app.onMessage((m) => {
      appGot.push(m[0]!);
      answered?.();
    });
    for (let i = 0; i < 100; i++) {
      const got = new Promise<void>((r) => (answered = r));
      app.send([Uint8Array.of(i)]);
      await got;
    }
    assert.is(appGot.length, 100);
    assert.ok(app.pollTurns + daemon.pollTurns > 0, "the ends looked for answers while calls went on");
    await sleep(300);
    const turns = [app.pollTurns, daemon.pollTurns];
    const wakes = app.wakeupsSent;
    await sleep(1000);
    assert.equal([app.pollTurns, daemon.pollTurns], turns, "idle: neither end looks at its ring any more");
    const got = new Promise<void>((r) => (answered = r));
    app.send([Uint8Array.of(200)]);
    await got;
    assert.is(appGot.at(-1), 200, "the call after the idle spell is answered");
    assert.is(app.wakeupsSent, wakes + 1, "the daemon's end was asleep: the application woke it with one byte");
  } finally {
    done();
  }
});

/** CPU time (user + system) of `pid` so far, in µs, from /proc/<pid>/stat (clock ticks of 10 ms). */
function procCpuUs(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(f[11]) + Number(f[12])) * 10_000;
}

test("an idle attached application and `koala daemon` each use under 10% of a core over 1 s; a call after the idle spell works", async () => {
  if (skip()) return;
  const server: Server = createServer({ logHandlerErrors: false });
  server.add(EchoService, echoImpl(observe()));
  const backend = await server.listen("tcp://127.0.0.1:0");
  const dir = socketDir();
  let daemon: ChildProcess | undefined;
  const client = createClient(EchoService, `managed:///${backend}`);
  const saved = { socket: process.env.KOALA_DAEMON_SOCKET, poll: process.env.KOALA_MANAGED_POLL_US, mode: process.env.KOALA_MANAGED_POLL };
  process.env.KOALA_DAEMON_SOCKET = dir.path;
  // The defaults: adaptive polling on both sides.
  delete process.env.KOALA_MANAGED_POLL_US;
  delete process.env.KOALA_MANAGED_POLL;
  try {
    const env = { ...process.env, KOALA_RUNTIME_DIR: join(dir.path, "..", "run"), KOALA_CONFIG: "" };
    daemon = spawn(process.execPath, [bin, "daemon", "--socket", dir.path], { stdio: ["ignore", "pipe", "inherit"], env });
    let out = "";
    daemon.stdout!.on("data", (d: Buffer) => (out += d.toString()));
    await until(() => out.includes("listening on") || daemon!.exitCode !== null, "koala daemon listening", 20_000);
    assert.ok(out.includes("listening on"), `koala daemon started (${out})`);
    for (let i = 0; i < 300; i++) assert.is((await client.unary({ text: `w${i}` })).text, `w${i}`);
    await sleep(200);
    const app0 = process.cpuUsage();
    const daemon0 = procCpuUs(daemon.pid!);
    await sleep(1000);
    const app = process.cpuUsage(app0);
    const appUs = app.user + app.system;
    const daemonUs = procCpuUs(daemon.pid!) - daemon0;
    assert.ok(appUs < 100_000, `the idle application (and the idle server beside it) used ${(appUs / 1000).toFixed(1)} ms of CPU in 1 s`);
    assert.ok(daemonUs < 100_000, `the idle daemon used ${(daemonUs / 1000).toFixed(1)} ms of CPU in 1 s`);
    assert.is((await client.unary({ text: "after the idle spell" })).text, "after the idle spell");
  } finally {
    closeClient(client);
    if (daemon !== undefined && daemon.exitCode === null) {
      const exited = new Promise((r) => daemon!.once("exit", r));
      daemon.kill("SIGTERM");
      await exited;
    }
    server.forceShutdown();
    dir.remove();
    for (const [k, v] of [["KOALA_DAEMON_SOCKET", saved.socket], ["KOALA_MANAGED_POLL_US", saved.poll], ["KOALA_MANAGED_POLL", saved.mode]] as const) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
});

test.run();
