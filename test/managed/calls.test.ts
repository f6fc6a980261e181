/**
 * Calls through the daemon: the same client API with a `managed:` target (and with
 * KOALA_MODE=managed), every call kind, deadlines, cancellation, metadata and status codes; a
 * real koala server behind it on tcp, the daemon in this process (its set-up socket is a real
 * Unix socket and the rings a real /dev/shm mapping).
 */
import { existsSync, readFileSync, readdirSync, readlinkSync, statSync } from "node:fs";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { Code, closeClient, createClient, createServer, type Server } from "../../src/index.js";
import { startDaemon, type Daemon } from "../../src/managed/daemon.js";
import { EchoService } from "../fixtures/rpc/gen/echo.js";
import { echoImpl, observe, abortSeen } from "../rpc/echo-service.js";
import { rejection, until } from "../helpers.js";
import { addonMissing, socketDir } from "./helpers.js";

const missing = addonMissing();
let server: Server;
let backend: string;
let daemon: Daemon;
let dir: ReturnType<typeof socketDir>;
const seen = observe();

test.before(async () => {
  if (missing !== undefined) return;
  server = createServer({ logHandlerErrors: false });
  server.add(EchoService, echoImpl(seen));
  backend = await server.listen("tcp://127.0.0.1:0");
  dir = socketDir();
  process.env.KOALA_DAEMON_SOCKET = dir.path;
  daemon = await startDaemon({ socketPath: dir.path });
});

test.after(async () => {
  if (missing !== undefined) return;
  await daemon.close();
  server.forceShutdown();
  dir.remove();
  delete process.env.KOALA_DAEMON_SOCKET;
});

const skip = (): boolean => {
  if (missing !== undefined) console.log(`  (skipped: ${missing})`);
  return missing !== undefined;
};

test("the set-up socket is 0600 in a 0700 folder; the rings are a memfd, closed once passed", async () => {
  if (skip()) return;
  assert.is(statSync(dir.path).mode & 0o777, 0o600);
  const client = createClient(EchoService, `managed:///${backend}`);
  try {
    await client.unary({ text: "x" });
    assert.equal(readdirSync("/dev/shm").filter((f) => f.startsWith("koala-")), [], "no ring file in /dev/shm");
    assert.match(readFileSync("/proc/self/maps", "utf8"), /memfd:koala-rings/, "the rings are a mapped memfd, in no file system");
    const openFds = readdirSync("/proc/self/fd").filter((f) => {
      try {
        return readlinkSync(`/proc/self/fd/${f}`).includes("memfd:koala-rings");
      } catch {
        return false;
      }
    });
    assert.equal(openFds, [], "the memfd's descriptor is closed once the daemon has its own");
    assert.is(daemon.attached().length, 1);
    assert.is(daemon.attached()[0]!.peer.pid, process.pid, "the daemon knows the application's pid from the kernel");
    assert.is(daemon.attached()[0]!.target, backend);
  } finally {
    closeClient(client);
  }
  await until(() => daemon.attached().length === 0, "the daemon released the closed connection");
});

test("unary, server, client and bidi streaming, big messages, metadata both ways", async () => {
  if (skip()) return;
  const client = createClient(EchoService, `managed:///${backend}`);
  try {
    let headers: unknown;
    let trailers: unknown;
    const r = await client.unary({ text: "hi", payload: new Uint8Array([1, 2, 3]) }, { metadata: { "x-echo": "m1" }, onHeader: (h) => (headers = h.get("x-header")), onTrailer: (t) => (trailers = t.get("x-trailer")) });
    assert.is(r.text, "hi");
    assert.equal([...r.payload], [1, 2, 3]);
    assert.is(r.seenMetadata, "m1");
    assert.is(headers, "h1");
    assert.is(trailers, "t1");
    const stream: number[] = [];
    for await (const m of client.serverStream({ text: "s", count: 300 })) stream.push(m.index);
    assert.equal(stream, Array.from({ length: 300 }, (_, i) => i));
    const cs = await client.clientStream([{ text: "a" }, { text: "b" }, { text: "c" }]);
    assert.is(cs.text, "a,b,c");
    const bidi: string[] = [];
    for await (const m of client.bidi(Array.from({ length: 200 }, (_, i) => ({ text: `b${i}` })))) bidi.push(m.text);
    assert.is(bidi.length, 200);
    assert.is(bidi[199], "b199");
    const payload = new Uint8Array(1024 * 1024).map((_, i) => i & 255);
    const big = await client.unary({ text: "big", payload });
    assert.is(big.payload.byteLength, payload.byteLength);
    assert.is(big.payload[123_457], 123_457 & 255);
    // Many in flight at once over one ring pair.
    const many = await Promise.all(Array.from({ length: 500 }, (_, i) => client.unary({ text: `p${i}` })));
    assert.ok(many.every((m, i) => m.text === `p${i}`));
  } finally {
    closeClient(client);
  }
});

test("status codes, deadlines and cancellation reach the server and come back", async () => {
  if (skip()) return;
  const client = createClient(EchoService, `managed:///${backend}`);
  try {
    const failed = await rejection(client.unary({ text: "f", failCode: Code.FAILED_PRECONDITION }));
    assert.is(failed.code, Code.FAILED_PRECONDITION);
    assert.is(failed.metadata["x-fail"], String(Code.FAILED_PRECONDITION));
    const slow = await rejection(client.unary({ text: "slow", delayMs: 5000 }, { timeoutMs: 100 }));
    assert.is(slow.code, Code.DEADLINE_EXCEEDED);
    const left = await client.unary({ text: "left" }, { timeoutMs: 5000 });
    assert.ok(left.timeLeftMs > 4000 && left.timeLeftMs <= 5000, `the server saw the deadline (${left.timeLeftMs} ms left)`);
    const ac = new AbortController();
    const p = client.unary({ text: "cancel-me", delayMs: 5000 }, { signal: ac.signal });
    await until(() => seen.started.has("cancel-me"), "the call reached the server");
    ac.abort();
    assert.is((await rejection(p)).code, Code.CANCELLED);
    await abortSeen(seen, "cancel-me"); // the CANCEL frame went through the daemon to the handler
  } finally {
    closeClient(client);
  }
});

test("KOALA_MODE=managed sends a plain target through the daemon; no daemon is UNAVAILABLE naming it", async () => {
  if (skip()) return;
  process.env.KOALA_MODE = "managed";
  const client = createClient(EchoService, backend);
  try {
    assert.is((await client.unary({ text: "via daemon" })).text, "via daemon");
    assert.is(daemon.attached().filter((a) => a.peer.pid === process.pid).length, 1);
  } finally {
    closeClient(client);
    delete process.env.KOALA_MODE;
  }
  process.env.KOALA_DAEMON_SOCKET = `${dir.path}.none`;
  const lost = createClient(EchoService, `managed:///${backend}`);
  try {
    const err = await rejection(lost.unary({ text: "x" }));
    assert.is(err.code, Code.UNAVAILABLE);
    assert.match(err.message, /koala daemon/);
  } finally {
    closeClient(lost);
    process.env.KOALA_DAEMON_SOCKET = dir.path;
  }
  assert.not.ok(existsSync(`${dir.path}.none`));
});

test("a target with a resolver (static:) is resolved in the daemon by the cluster layer", async () => {
  if (skip()) return;
  const port = backend.slice(backend.lastIndexOf(":") + 1);
  const client = createClient(EchoService, `managed:///static:///127.0.0.1:1,127.0.0.1:${port}`);
  try {
    assert.is((await client.unary({ text: "resolved" })).text, "resolved");
    const mine = daemon.attached().find((a) => a.target.startsWith("static:"));
    assert.is(mine?.upstream, `tcp://127.0.0.1:${port}`, "pick_first took the endpoint that answers");
  } finally {
    closeClient(client);
  }
});

test("a target the daemon cannot reach fails the call with UNAVAILABLE, the daemon keeps serving", async () => {
  if (skip()) return;
  const bad = createClient(EchoService, "managed:///tcp://127.0.0.1:1");
  try {
    const err = await rejection(bad.unary({ text: "x" }));
    assert.is(err.code, Code.UNAVAILABLE);
  } finally {
    closeClient(bad);
  }
  const good = createClient(EchoService, `managed:///${backend}`);
  try {
    assert.is((await good.unary({ text: "still" })).text, "still");
  } finally {
    closeClient(good);
  }
});

test.run();
