/**
 * Hostile and careless peers against a server built as the README says: each test sends raw
 * frames (or misbehaves with a real client) and checks that the server's memory stays within its
 * budget, that the offender alone pays, and that everyone else is served. Memory is asserted by
 * counting the bytes the server holds (Server.stats()), never by timing.
 */
import { test } from "uvu";
import * as assert from "uvu/assert";
import { subscribe, unsubscribe } from "node:diagnostics_channel";
import { setTimeout as sleep } from "node:timers/promises";
import { Code, RpcError, closeClient, createChannel, createClient, createHeap, createServer, type Server, type ServerOptions } from "../../src/index.js";
import { LIMITED_LINES_PER_PERIOD, limitedEventCounts, resetLogLimits } from "../../src/log.js";
import { FrameFlag, FrameType } from "../../src/rpc/frame.js";
import { CONNECTION_WINDOW_BYTES, STREAM_WINDOW_BYTES } from "../../src/rpc/stream.js";
import { rejection, until } from "../helpers.js";
import { EchoRequest, EchoService } from "../fixtures/rpc/gen/echo.js";
import { echoImpl, observe } from "./echo-service.js";
import { callFrame, rawClient, rawFrame } from "./raw.js";

const KiB = 1024;
const MiB = 1024 * KiB;
const UNARY = "/koala.test.Echo/Unary";
const CLIENT_STREAM = "/koala.test.Echo/ClientStream";



async function echoServer(options?: ServerOptions): Promise<{ server: Server; address: string }> {
  const server = createServer({ logHandlerErrors: false, ...options });
  server.add(EchoService, echoImpl(observe()));
  return { server, address: await server.listen("tcp://127.0.0.1:0") };
}

const request = (text: string, payloadBytes = 0) => EchoRequest.encode(EchoRequest.create({ text, payload: new Uint8Array(payloadBytes) }));

test("a client that sends requests and never reads replies: the server stops reading it, holds at most its budget, and serves others", async () => {
  const budget = 4 * MiB;
  const { server, address } = await echoServer({ connectionBudgetBytes: budget, sendTimeoutMs: 0 });
  const good = createClient(EchoService, address);
  // The raw client reads nothing: its transport stops reading the socket after one message.
  const raw = await rawClient(address, { receiveQueueMessages: 1, receiveQueueBytes: 1 });
  raw.conn.pause();
  try {
    const body = request("flood", 64 * KiB);
    const sent = 1000; // 64 MiB of requests, each answered with 64 KiB
    for (let i = 1; i <= sent; i++) raw.send(callFrame(i, UNARY, body));
    let peak = 0;
    const sample = () => {
      const s = server.stats();
      peak = Math.max(peak, s.heldRequestBytes + s.unsentBytes);
    };
    const sampler = setInterval(sample, 2);
    await sleep(1500);
    clearInterval(sampler);
    sample();
    // One reply may land on top of what the budget allows before the check sees the queue.
    assert.ok(peak <= budget + 128 * KiB, `the server held ${peak} bytes for the connection; its budget is ${budget}`);
    assert.is((await good.unary({ text: "still served" })).text, "still served");
    const st = server.stats();
    assert.ok(st.calls < sent, "the server stopped taking requests from the connection that does not read");
  } finally {
    raw.conn.close(new Error("done"));
    closeClient(good);
    server.forceShutdown();
  }
});

test("a raw client that ignores stream credit is cut off at the window; the server kept no more than the window", async () => {
  const server = createServer({ logHandlerErrors: false });
  let handlerSaw = 0;
  server.add(EchoService, {
    unary: (req) => ({ text: req.text }),
    async clientStream(requests) {
      await sleep(10_000).catch(() => undefined); // reads nothing for now
      for await (const r of requests) handlerSaw += r.payload.byteLength;
      return {};
    },
  });
  const address = await server.listen("tcp://127.0.0.1:0");
  const raw = await rawClient(address);
  const good = createClient(EchoService, address);
  try {
    raw.send(callFrame(1, CLIENT_STREAM, new Uint8Array(0), { streaming: true }));
    const chunk = request("x", 64 * KiB);
    // 32 chunks of 64 KiB is 2 MiB into a 1 MiB window.
    for (let i = 0; i < 32; i++) raw.send(rawFrame({ type: FrameType.DATA, callId: 1, body: chunk }));
    const reason = await raw.conn.closed;
    assert.ok(["KOALA_ERR_CONNECTION_RESET", "KOALA_ERR_PEER_CLOSED"].includes(reason.code), reason.code);
    assert.ok(server.stats().unconsumedStreamBytes <= STREAM_WINDOW_BYTES + 64 * KiB);
    assert.is((await good.unary({ text: "ok" })).text, "ok", "other clients are served");
    assert.is(handlerSaw, 0);
  } finally {
    closeClient(good);
    server.forceShutdown();
  }
});

test("many streams within their own windows cannot pass the connection window: raw sender cut off, compliant sender held", async () => {
  const server = createServer({ logHandlerErrors: false });
  const release: (() => void)[] = [];
  server.add(EchoService, {
    async clientStream(requests) {
      await new Promise<void>((r) => release.push(r)); // reads nothing until released
      let n = 0;
      for await (const r of requests) n += r.payload.byteLength;
      return { index: n };
    },
  });
  const address = await server.listen("tcp://127.0.0.1:0");
  try {
    // Raw: 20 streams × 768 KiB (inside each stream window), 15 MiB in all, into an 8 MiB connection window.
    const raw = await rawClient(address);
    const chunk = request("x", 64 * KiB);
    for (let id = 1; id <= 20; id++) {
      raw.send(callFrame(id, CLIENT_STREAM, new Uint8Array(0), { streaming: true }));
      for (let i = 0; i < 12; i++) raw.send(rawFrame({ type: FrameType.DATA, callId: id, body: chunk }));
    }
    await raw.conn.closed;
    // PROTOCOL.md's bound: the window, plus the one message accepted while under it that takes it past.
    const heldByRaw = server.stats().unconsumedStreamBytes;
    assert.ok(heldByRaw <= CONNECTION_WINDOW_BYTES + 64 * KiB + 64, `${heldByRaw} bytes held`);
    release.length = 0; // the raw client's handlers wait forever; only the compliant client's count below

    // Compliant: the same load from a real client waits for credit instead; the server holds one window.
    const client = createClient(EchoService, address);
    const calls = Array.from({ length: 20 }, () =>
      client.clientStream(
        (function* () {
          for (let i = 0; i < 12; i++) yield { payload: new Uint8Array(64 * KiB) };
        })(),
      ),
    );
    const outcome = Promise.all(calls);
    outcome.catch(() => undefined); // awaited below; a failure before then must not go unhandled
    await until(() => server.stats().unconsumedStreamBytes >= CONNECTION_WINDOW_BYTES - 1 * MiB, "the connection window to fill");
    await sleep(200);
    const held = server.stats().unconsumedStreamBytes;
    assert.ok(held <= CONNECTION_WINDOW_BYTES + 20 * (64 * KiB + 64), `held ${held} bytes of stream messages; the window is ${CONNECTION_WINDOW_BYTES}`);
    await until(() => release.length === 20, "all 20 handlers to start");
    for (const r of release) r();
    const results = await outcome;
    for (const r of results) assert.is(r.index, 12 * 64 * KiB, "every byte arrived once the handlers read");
    closeClient(client);
  } finally {
    server.forceShutdown();
  }
});

test("request metadata over maxMetadataBytes fails that call with RESOURCE_EXHAUSTED; response metadata over the client's limit too", async () => {
  const server = createServer({ logHandlerErrors: false, maxMetadataBytes: 16 * KiB });
  server.add(EchoService, {
    unary(req, ctx) {
      if (req.text === "big headers") ctx.responseHeaders.set("x-big", "y".repeat(32 * KiB));
      return { text: req.text };
    },
  });
  const address = await server.listen("tcp://127.0.0.1:0");
  const client = createClient(EchoService, address);
  try {
    const e1 = await rejection(client.unary({ text: "a" }, { metadata: { "x-huge": "z".repeat(64 * KiB) } }));
    assert.is(e1.code, Code.RESOURCE_EXHAUSTED);
    assert.match(e1.message, /request metadata of \d+ bytes exceeds the server's limit of 16384/);
    const e2 = await rejection(client.unary({ text: "big headers" }));
    assert.is(e2.code, Code.RESOURCE_EXHAUSTED);
    assert.match(e2.message, /response metadata of \d+ bytes exceeds the client's limit/);
    assert.is((await client.unary({ text: "fine" }, { metadata: { "x-small": "1" } })).text, "fine", "the connection is fine");
  } finally {
    closeClient(client);
    server.forceShutdown();
  }
});

test("maxConnections: connections past it are refused with one log line; room again once one closes", async () => {
  resetLogLimits();
  const { server, address } = await echoServer({ maxConnections: 2 });
  const lines: string[] = [];
  const onLog = (m: unknown) => lines.push((m as { message: string }).message);
  subscribe("koala:server", onLog);
  const clients = Array.from({ length: 5 }, () => createClient(EchoService, address));
  try {
    const results = await Promise.allSettled(clients.map((c) => c.unary({ text: "hi" })));
    const ok = results.filter((r) => r.status === "fulfilled").length;
    assert.is(ok, 2, "two clients are served");
    for (const r of results) if (r.status === "rejected") assert.is((r.reason as RpcError).code, Code.UNAVAILABLE);
    const refusals = lines.filter((l) => /maxConnections/.test(l));
    assert.is(refusals.length, 1, `one log line for three refusals: ${JSON.stringify(refusals)}`);
    closeClient(clients[0]!);
    closeClient(clients[1]!);
    await until(() => server.stats().connections === 0, "the closed clients to go");
    assert.is((await clients[4]!.unary({ text: "now" }, { waitForReady: true, timeoutMs: 5000 })).text, "now");
  } finally {
    unsubscribe("koala:server", onLog);
    for (const c of clients) closeClient(c);
    server.forceShutdown();
  }
});

test("maxConcurrentStreams: the client queues calls past the server's limit (announced in SETTINGS); a raw client past it gets RESOURCE_EXHAUSTED", async () => {
  const server = createServer({ logHandlerErrors: false, maxConcurrentStreams: 2 });
  let running = 0;
  let most = 0;
  server.add(EchoService, {
    async unary(req) {
      most = Math.max(most, ++running);
      await sleep(20);
      running--;
      return { text: req.text };
    },
  });
  const address = await server.listen("tcp://127.0.0.1:0");
  const client = createClient(EchoService, address);
  const raw = await rawClient(address);
  try {
    const replies = await Promise.all(Array.from({ length: 10 }, (_, i) => client.unary({ text: `c${i}` })));
    assert.equal(replies.map((r) => r.text), Array.from({ length: 10 }, (_, i) => `c${i}`));
    assert.is(most, 2, "never more than two at once on the server");
    const settings = await raw.next((f) => f.type === FrameType.SETTINGS);
    assert.is(settings.arg, 2);
    for (let id = 1; id <= 3; id++) raw.send(callFrame(id, UNARY, request(`r${id}`)));
    const third = await raw.status(3);
    assert.is(third.arg, Code.RESOURCE_EXHAUSTED);
    assert.match(third.text, /maxConcurrentStreams/);
    assert.is((await raw.status(1)).arg, Code.OK);
  } finally {
    raw.conn.close();
    closeClient(client);
    server.forceShutdown();
  }
});

test("idle connections are closed by the server (GOAWAY) and the next call reconnects by itself", async () => {
  const { server, address } = await echoServer({ idleTimeoutMs: 100 });
  const client = createClient(EchoService, address);
  try {
    assert.is((await client.unary({ text: "1" })).text, "1");
    assert.is(server.stats().connections, 1);
    await until(() => server.stats().connections === 0, "the idle connection to close");
    assert.is((await client.unary({ text: "2" })).text, "2");
  } finally {
    closeClient(client);
    server.forceShutdown();
  }
});

test("max connection age: calls in flight finish, new calls go to a new connection; with a grace period, what still runs is cancelled", async () => {
  const { server, address } = await echoServer({ maxConnectionAgeMs: 150 });
  const client = createClient(EchoService, address);
  try {
    const long = client.unary({ text: "long", delayMs: 400 });
    assert.is((await long).text, "long", "a call that outlives the connection's age finishes");
    assert.is((await client.unary({ text: "after" })).text, "after");
  } finally {
    closeClient(client);
    server.forceShutdown();
  }
  const graced = await echoServer({ maxConnectionAgeMs: 100, maxConnectionAgeGraceMs: 100 });
  const c2 = createClient(EchoService, graced.address);
  try {
    const e = await rejection(c2.unary({ text: "too long", delayMs: 3000 }));
    assert.is(e.code, Code.UNAVAILABLE);
    assert.match(e.message, /maximum age/);
  } finally {
    closeClient(c2);
    graced.server.forceShutdown();
  }
});

test("a client that stops reading is dropped after sendTimeoutMs; its calls are cancelled", async () => {
  const { server, address } = await echoServer({ sendTimeoutMs: 300 });
  const raw = await rawClient(address, { receiveQueueMessages: 1, receiveQueueBytes: 1 });
  raw.conn.pause();
  try {
    const body = request("x", 256 * KiB);
    for (let i = 1; i <= 64; i++) raw.send(callFrame(i, UNARY, body));
    // The raw client reads nothing, so it does not even notice; the server has let go of it.
    await until(() => server.stats().connections === 0, "the server to drop the connection", 15_000);
    assert.is(server.stats().unsentBytes, 0);
  } finally {
    raw.conn.close();
    server.forceShutdown();
  }
});

test("malformed request metadata fails its call with a few short log lines, not a stack trace per attempt", async () => {
  resetLogLimits();
  const { server, address } = await echoServer({ logHandlerErrors: true });
  const lines: string[] = [];
  const onLog = (m: unknown) => lines.push((m as { message: string }).message);
  subscribe("koala:server", onLog);
  const raw = await rawClient(address);
  try {
    const garbage = new Uint8Array([0xff, 0xff, 0xff, 0xff, 0x01]);
    for (let id = 1; id <= 20; id++) raw.send(rawFrame({ type: FrameType.CALL, flags: FrameFlag.DEFINE_METHOD | FrameFlag.END_STREAM, callId: id, arg: 1, metadata: garbage, text: UNARY, body: request("m") }));
    const last = await raw.status(20);
    assert.is(last.arg, Code.INTERNAL);
    assert.match(last.text, /malformed request metadata/);
    const about = lines.filter((l) => /malformed/.test(l));
    assert.is(about.length, LIMITED_LINES_PER_PERIOD, `the first few lines for 20 malformed calls: ${JSON.stringify(about)}`);
    assert.is(limitedEventCounts().find((c) => c.kind === "server.bad-metadata")?.events, 20, "every one counted");
    assert.not.match(about[0]!, /\n\s+at /, "no stack trace");
  } finally {
    unsubscribe("koala:server", onLog);
    raw.conn.close();
    server.forceShutdown();
  }
});

test("shutdown: concurrent calls share one promise; forceShutdown() ends a graceful shutdown that waits on a call", async () => {
  const { server, address } = await echoServer();
  const client = createClient(EchoService, address);
  try {
    const stuck = rejection(client.unary({ text: "stuck", delayMs: 60_000 })); // handled from the start
    await until(() => server.stats().calls === 1, "the call to start");
    const a = server.shutdown();
    const b = server.shutdown();
    assert.is(a, b, "one shutdown promise");
    let settled = false;
    void a.then(() => (settled = true));
    await sleep(50);
    assert.not.ok(settled, "the graceful shutdown waits for the call");
    server.forceShutdown();
    await a;
    await b;
    const e = await stuck;
    assert.ok([Code.UNAVAILABLE, Code.CANCELLED].includes(e.code), String(e.code));
  } finally {
    closeClient(client);
    server.forceShutdown();
  }
});

test("a misspelled nested transport option is an error when the channel or server is created, naming it", () => {
  assert.throws(() => createChannel("tcp://127.0.0.1:1", { transport: { highWaterMark: 5 } as never }), /highWaterMark/);
  assert.throws(() => createServer({ transport: { noDelya: true } as never }), /noDelya/);
  assert.throws(() => createServer({ maxConcurrentStreams: 0 }), /maxConcurrentStreams/);
});

test("graceful shutdown is not held up by a client that never closes its end (closeLingerMs)", async () => {
  const { server, address } = await echoServer({ transport: { closeLingerMs: 200 } });
  const raw = await rawClient(address); // connects, then neither calls nor closes
  try {
    await raw.next((f) => f.type === FrameType.SETTINGS);
    let done = false;
    const shutdown = server.shutdown().then(() => (done = true));
    await until(() => done, "shutdown() to resolve", 5000);
    await shutdown;
    assert.is(server.stats().connections, 0);
  } finally {
    raw.conn.close();
    server.forceShutdown();
  }
});

test("a full heap fails nobody: frames are encoded into plain memory instead (no INTERNAL for another client's reply)", async () => {
  const heap = createHeap({ maxBytes: 1 * MiB, trackLeaks: "off" });
  const server = createServer({ heap });
  server.add(EchoService, { unary: (req) => ({ text: req.text, payload: new Uint8Array(2 * MiB).fill(3) }) });
  const address = await server.listen("tcp://127.0.0.1:0");
  const client = createClient(EchoService, address);
  try {
    // Each reply needs 2 MiB; the heap may hold 1 MiB in all.
    const replies = await Promise.all([client.unary({ text: "a" }), client.unary({ text: "b" })]);
    for (const r of replies) assert.ok(r.payload.byteLength === 2 * MiB && r.payload[0] === 3);
    assert.is(heap.stats().inUseBytes, 0);
  } finally {
    closeClient(client);
    server.forceShutdown();
  }
});

test("protocol errors are logged a few times per kind and 10 s, not once per connection", async () => {
  resetLogLimits(); // earlier tests in this process logged the same kind of error
  const { server, address } = await echoServer();
  const lines: string[] = [];
  const onLog = (m: unknown) => lines.push((m as { message: string }).message);
  subscribe("koala:server", onLog);
  try {
    for (let i = 0; i < 20; i++) {
      const raw = await rawClient(address);
      raw.send(new TextEncoder().encode("garbage, not a frame"));
      await raw.conn.closed;
    }
    const about = lines.filter((l) => /malformed RPC frame/.test(l));
    assert.is(about.length, LIMITED_LINES_PER_PERIOD, `the first few lines for 20 connections: ${JSON.stringify(about)}`);
    assert.is(limitedEventCounts().find((c) => c.kind === "server.protocol")?.events, 20, "every one counted");
    const client = createClient(EchoService, address);
    assert.is((await client.unary({ text: "ok" })).text, "ok");
    closeClient(client);
  } finally {
    unsubscribe("koala:server", onLog);
    server.forceShutdown();
  }
});

test.run();
