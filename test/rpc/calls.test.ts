/**
 * The RPC core over every transport: all four call kinds, deadlines, cancellation,
 * metadata, every status path, early ends, lost connections and shutdown.
 */
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import {
  Code,
  RpcError,
  closeClient,
  createChannel,
  createClient,
  createServer,
  listen,
  type ChannelOptions,
  type Client,
  type Metadata,
  type Server,
  type ServerOptions,
  type ServiceDefinition,
} from "../../src/index.js";
import { settingsFrame } from "./raw.js";
import { EchoService } from "../fixtures/rpc/gen/echo.js";
import { clientTls, serverTls } from "../fixtures/tls/certs.js";
import { abortSeen, echoImpl, observe, type Observed } from "./echo-service.js";

type Echo = Client<typeof EchoService>;

async function rejects(p: Promise<unknown>, code: Code, message?: RegExp): Promise<RpcError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof RpcError, `expected an RpcError, got ${String(err)}`);
    assert.is(Code[(err as RpcError).code], Code[code], (err as Error).message);
    if (message) assert.match((err as Error).message, message);
    return err as RpcError;
  }
  assert.unreachable(`expected ${Code[code]}, the call succeeded`);
  throw new Error("unreachable");
}

async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

let dirs: string[] = [];
let memoryN = 0;

function addressFor(kind: string): string {
  if (kind === "tcp") return "tcp://127.0.0.1:0";
  if (kind === "tls") return "tls://127.0.0.1:0";
  if (kind === "unix") {
    const dir = mkdtempSync(join(tmpdir(), "koala-rpc-"));
    dirs.push(dir);
    return `unix:${join(dir, "s.sock")}`;
  }
  if (kind === "rdma") return "rdma://127.0.0.1:0";
  return `memory:rpc-${process.pid}-${++memoryN}`;
}

for (const kind of ["memory", "tcp", "tls", "unix", "rdma"] as const) {
  const s = suite<{ server: Server; address: string; client: Echo; o: Observed }>(`calls over ${kind}`);
  // tls: every server has the test certificate, every client trusts the test CA.
  const serverOpts = (o: ServerOptions = {}): ServerOptions => (kind === "tls" ? { ...o, transport: { ...o.transport, tls: serverTls } } : o);
  const clientOpts = (o: ChannelOptions = {}): ChannelOptions => (kind === "tls" ? { ...o, transport: { ...o.transport, tls: clientTls } } : o);
  // rdma runs on the software verbs provider, selected only while its suite runs.
  const savedProvider = process.env.KOALA_RDMA_PROVIDER;
  s.before(() => {
    if (kind === "rdma") process.env.KOALA_RDMA_PROVIDER = "soft";
  });
  s.after(() => {
    if (savedProvider === undefined) delete process.env.KOALA_RDMA_PROVIDER;
    else process.env.KOALA_RDMA_PROVIDER = savedProvider;
  });

  s.before.each(async (ctx) => {
    ctx.o = observe();
    ctx.server = createServer(serverOpts({ logHandlerErrors: false }));
    ctx.server.add(EchoService, echoImpl(ctx.o));
    ctx.address = await ctx.server.listen(addressFor(kind));
    ctx.client = createClient(EchoService, ctx.address, clientOpts());
  });

  s.after.each(async (ctx) => {
    closeClient(ctx.client);
    ctx.server.forceShutdown();
  });

  s.after(() => {
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
    dirs = [];
  });

  s("unary call answers with the request echoed, 64-bit integers intact", async ({ client }) => {
    const r = await client.unary({ text: "hi", payload: new Uint8Array([1, 2, 3]), big: 2n ** 62n + 5n });
    assert.is(r.text, "hi");
    assert.equal([...r.payload], [1, 2, 3]);
    assert.is(r.big, 2n ** 62n + 5n);
    assert.is(r.timeLeftMs, -1, "no deadline was set");
  });

  s("server streaming delivers every reply in order", async ({ client }) => {
    const replies = await collect(client.serverStream({ text: "s", count: 200 }));
    assert.equal(replies.map((r) => r.index), [...Array(200).keys()]);
  });

  s("client streaming sees every request", async ({ client }) => {
    async function* reqs() {
      for (let i = 0; i < 300; i++) yield { text: `m${i}` };
    }
    const r = await client.clientStream(reqs());
    assert.is(r.index, 300);
    assert.is(r.text.split(",")[299], "m299");
    const fromArray = await client.clientStream([{ text: "a" }, { text: "b" }]);
    assert.is(fromArray.text, "a,b");
  });

  s("bidirectional streaming answers each request", async ({ client }) => {
    const replies = await collect(client.bidi(Array.from({ length: 150 }, (_, i) => ({ text: `b${i}` }))));
    assert.is(replies.length, 150);
    assert.is(replies[149]!.text, "b149");
  });

  s("a 1 MiB bytes field goes both ways intact", async ({ client }) => {
    const payload = new Uint8Array(1 << 20);
    for (let i = 0; i < payload.length; i++) payload[i] = (i * 31) & 0xff;
    const r = await client.unary({ text: "big", payload });
    assert.is(r.payload.byteLength, payload.byteLength);
    assert.ok(Buffer.from(r.payload).equals(Buffer.from(payload)));
  });

  s("deadline: the server sees the time left; a slow handler ends in DEADLINE_EXCEEDED on both sides", async ({ client, o }) => {
    const ok = await client.unary({ text: "fast" }, { timeoutMs: 5000 });
    assert.ok(ok.timeLeftMs > 3000 && ok.timeLeftMs <= 5000, `time left ${ok.timeLeftMs}`);
    const slow = client.unary({ text: "slow", delayMs: 5000 }, { timeoutMs: 100 });
    await rejects(slow, Code.DEADLINE_EXCEEDED);
    const reason = await abortSeen(o, "slow");
    assert.ok(reason instanceof RpcError);
    assert.ok([Code.DEADLINE_EXCEEDED, Code.CANCELLED].includes((reason as RpcError).code));
    await rejects(client.unary({ text: "past" }, { deadline: Date.now() - 1 }), Code.DEADLINE_EXCEEDED);
    // Beyond what a Node timer can hold (~24.8 days) the deadline must not fire at once.
    const far = await client.unary({ text: "far", delayMs: 20 }, { timeoutMs: 40 * 24 * 3600 * 1000 });
    assert.is(far.text, "far");
  });

  s("cancel before the first response: CANCELLED, and the handler's signal aborts", async ({ client, o }) => {
    const ac = new AbortController();
    const p = client.unary({ text: "c1", delayMs: 5000 }, { signal: ac.signal });
    while (!o.started.has("c1")) await sleep(2);
    ac.abort(new Error("user gave up"));
    await rejects(p, Code.CANCELLED, /user gave up/);
    await abortSeen(o, "c1");
    const pre = new AbortController();
    pre.abort();
    await rejects(client.unary({ text: "c0" }, { signal: pre.signal }), Code.CANCELLED);
    assert.not.ok(o.started.has("c0"), "an aborted signal stops the call before it is sent");
  });

  s("cancel after the first response of a stream", async ({ client, o }) => {
    const ac = new AbortController();
    const it = client.serverStream({ text: "c2", count: 10, delayMs: 5000 }, { signal: ac.signal })[Symbol.asyncIterator]();
    const first = await it.next();
    assert.is(first.value?.index, 0);
    ac.abort();
    await rejects(it.next(), Code.CANCELLED);
    await abortSeen(o, "c2");
  });

  s("metadata both ways: request headers, response headers, trailers", async ({ client }) => {
    let headers: Metadata | undefined;
    let trailers: Metadata | undefined;
    const r = await client.unary(
      { text: "md" },
      { metadata: { "x-echo": "hello", "x-bin": new Uint8Array([7]) }, onHeader: (h) => (headers = h), onTrailer: (t) => (trailers = t) },
    );
    assert.is(r.seenMetadata, "hello");
    assert.is(headers?.get("x-header"), "h1");
    assert.is(trailers?.get("x-trailer"), "t1");
    let streamHeaders: Metadata | undefined;
    await collect(client.serverStream({ text: "mds", count: 2 }, { onHeader: (h) => (streamHeaders = h) }));
    assert.is(streamHeaders?.get("x-header"), "h2");
  });

  s("status paths: handler errors keep their code and trailers; a plain throw is UNKNOWN; the server keeps serving", async ({ client }) => {
    const e = await rejects(client.unary({ text: "nf", failCode: Code.NOT_FOUND }), Code.NOT_FOUND, /asked to fail/);
    assert.is(e.metadata["x-fail"], String(Code.NOT_FOUND));
    await rejects(client.unary({ text: "boom", failCode: 999 }), Code.UNKNOWN, /plain failure for boom/);
    await rejects(collect(client.serverStream({ text: "sf", count: 3, failCode: Code.ABORTED })), Code.ABORTED);
    await rejects(client.clientStream([{ text: "x" }, { text: "y", failCode: Code.FAILED_PRECONDITION }]), Code.FAILED_PRECONDITION);
    const ok = await client.unary({ text: "still here" });
    assert.is(ok.text, "still here");
  });

  s("unknown method → UNIMPLEMENTED", async ({ address }) => {
    const unary = EchoService.methods.unary;
    const Other: ServiceDefinition = {
      typeName: "koala.test.Other",
      methods: { missing: { ...unary, name: "Missing", localName: "missing", path: "/koala.test.Other/Missing" } },
    };
    const other = createClient(Other, address, clientOpts()) as unknown as { missing: (r: object) => Promise<unknown> };
    await rejects(other.missing({ text: "?" }), Code.UNIMPLEMENTED, /Missing/);
    closeClient(other);
  });

  s("messages over the size limit → RESOURCE_EXHAUSTED, on either side", async ({ address, client }) => {
    const small = createClient(EchoService, address, clientOpts({ maxMessageBytes: 1000 }));
    await rejects(small.unary({ text: "x", payload: new Uint8Array(2000) }), Code.RESOURCE_EXHAUSTED, /exceeds/);
    closeClient(small);
    const server2 = createServer(serverOpts({ maxMessageBytes: 1000 }));
    server2.add(EchoService, echoImpl(observe()));
    const a2 = await server2.listen(addressFor(kind));
    const c2 = createClient(EchoService, a2, clientOpts());
    await rejects(c2.unary({ text: "x", payload: new Uint8Array(5000) }), Code.RESOURCE_EXHAUSTED, /limit/);
    assert.is((await c2.unary({ text: "fine" })).text, "fine", "the connection survives");
    closeClient(c2);
    server2.forceShutdown();
    assert.is((await client.unary({ text: "ok" })).text, "ok");
  });

  s("a stream ends early from either side", async ({ client, o }) => {
    const replies: number[] = [];
    for await (const r of client.serverStream({ text: "early", count: 1_000_000, delayMs: 0 })) {
      replies.push(r.index);
      if (replies.length === 3) break;
    }
    assert.equal(replies, [0, 1, 2]);
    await abortSeen(o, "early");
    const short = await collect(client.serverStream({ text: "short", count: 2 }));
    assert.is(short.length, 2);
  });

  s("a slow reader of a stream holds the server back (flow control bounds memory)", async ({ client, o }) => {
    const payload = new Uint8Array(1000);
    const it = client.serverStream({ text: "slow", count: 100_000, payload })[Symbol.asyncIterator]();
    for (let i = 0; i < 10; i++) await it.next();
    await sleep(200);
    const produced = o.produced.get("slow") ?? 0;
    // The window is 1 MiB of body bytes: about a thousand 1 KB replies, never the whole stream.
    assert.ok(produced > 10 && produced < 2_000, `the server produced ${produced} replies for a reader that took 10`);
    await it.return!();
  });

  s("10,000 concurrent unary calls on one connection are all answered correctly", async ({ client }) => {
    const calls = Array.from({ length: 10_000 }, (_, i) => client.unary({ text: `n${i}`, big: BigInt(i) }));
    const replies = await Promise.all(calls);
    replies.forEach((r, i) => {
      assert.is(r.text, `n${i}`);
      assert.is(r.big, BigInt(i));
    });
  });

  s("a connection lost mid-call → UNAVAILABLE; the next call reconnects", async (ctx) => {
    const p = ctx.client.unary({ text: "lost", delayMs: 5000 });
    while (!ctx.o.started.has("lost")) await sleep(2);
    const address = ctx.address;
    ctx.server.forceShutdown();
    await rejects(p, Code.UNAVAILABLE);
    await rejects(ctx.client.unary({ text: "nobody" }), Code.UNAVAILABLE);
    // The failed connect backs off: meanwhile calls fail fast, without dialing.
    await rejects(ctx.client.unary({ text: "too soon" }), Code.UNAVAILABLE, /next attempt in \d+ ms/);
    ctx.server = createServer(serverOpts());
    ctx.server.add(EchoService, echoImpl(ctx.o));
    await ctx.server.listen(address);
    assert.is((await ctx.client.unary({ text: "back" }, { waitForReady: true, timeoutMs: 5000 })).text, "back");
  });

  s("waitForReady waits for a server that is not there yet, until its deadline", async (ctx) => {
    const address = ctx.address;
    ctx.server.forceShutdown();
    const late = createClient(EchoService, address, clientOpts({ reconnectBackoffInitialMs: 20, reconnectBackoffMaxMs: 50 }));
    try {
      await rejects(late.unary({ text: "x" }, { waitForReady: true, timeoutMs: 150 }), Code.DEADLINE_EXCEEDED);
      const pending = late.unary({ text: "patient" }, { waitForReady: true, timeoutMs: 5000 });
      await sleep(100);
      ctx.server = createServer(serverOpts());
      ctx.server.add(EchoService, echoImpl(ctx.o));
      await ctx.server.listen(address);
      assert.is((await pending).text, "patient");
    } finally {
      closeClient(late);
    }
  });

  s("graceful shutdown lets calls in flight finish and refuses new ones", async (ctx) => {
    const inflight = ctx.client.unary({ text: "finishing", delayMs: 150 });
    while (!ctx.o.started.has("finishing")) await sleep(2);
    const done = ctx.server.shutdown();
    await sleep(20);
    await rejects(ctx.client.unary({ text: "late" }), Code.UNAVAILABLE);
    assert.is((await inflight).text, "finishing");
    await done;
  });

  s("forced shutdown cancels calls in flight", async (ctx) => {
    const inflight = ctx.client.serverStream({ text: "forced", count: 5, delayMs: 5000 });
    const it = inflight[Symbol.asyncIterator]();
    await it.next();
    ctx.server.forceShutdown();
    await rejects(it.next(), Code.UNAVAILABLE);
    await abortSeen(ctx.o, "forced");
  });

  s("a shared channel serves several clients; bad call options are rejected", async ({ address }) => {
    const channel = createChannel(address, clientOpts());
    const a = createClient(EchoService, channel);
    const b = createClient(EchoService, channel);
    const [x, y] = await Promise.all([a.unary({ text: "a" }), b.unary({ text: "b" })]);
    assert.is(x.text + y.text, "ab");
    await rejects(a.unary({ text: "a" }, { timeoutMS: 5 } as never), Code.INVALID_ARGUMENT, /timeoutMS/);
    channel.close();
    await rejects(a.unary({ text: "a" }), Code.UNAVAILABLE);
  });

  s.run();
}

// Keepalive: a peer that accepts the connection but never answers pings is detected.
const k = suite("keepalive");
k("a peer that never answers pings is detected and the call fails UNAVAILABLE", async () => {
  const listener = await listen("tcp://127.0.0.1:0");
  const held: unknown[] = [];
  listener.onConnection((c) => {
    held.push(c);
    c.send([settingsFrame()]); // says it is a server, then reads nothing and answers nothing
  });
  const client = createClient(EchoService, listener.address, { keepaliveIntervalMs: 50, keepaliveTimeoutMs: 100 });
  await rejects(client.unary({ text: "hang" }), Code.UNAVAILABLE, /keepalive/);
  closeClient(client);
  for (const c of held) (c as { close(): void }).close();
  await listener.close();
});
k.run();
