/**
 * The RDMA transport's protocol on the software provider: credits (the sender waits, never
 * receiver-not-ready), eager / rendezvous around KOALA_RNDV_THRESH, 64 MiB, scatter-gather
 * past max_sge, release() and the copy-out rule, a peer killed mid-rendezvous, 200
 * connections, an injected QP error, every resource back to the heap afterwards; selection
 * (strict, auto on one port, fallback) and the RDMA variables; a thread's CQ growing to the
 * device's max_cqe and the connection past it refused.
 */
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { fork, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import diagnostics from "node:diagnostics_channel";
import { KoalaError } from "../../src/errors.js";
import { resetLogLevel, type LogEvent } from "../../src/log.js";
import { connect, listen, type Connection, type Listener, type TransportOptions } from "../../src/transport/index.js";
import { chooseTransport, resolveAddress } from "../../src/transport/registry.js";
import { DEFAULT_RNDV_THRESH, parseDeviceFilter, deviceSelected, readRdmaConfig } from "../../src/transport/rdma/config.js";
import { openRdmaContexts, type RdmaContext } from "../../src/transport/rdma/context.js";
import { HEADER_BYTES, MsgType, PACK_MESSAGE_MAX, RECV_DEPTH, encodeHello, type RdmaConnection } from "../../src/transport/rdma/connection.js";
import { registerVerbsProvider } from "../../src/transport/rdma/providers.js";
import { nativeProvider } from "../../src/transport/rdma/native-provider.js";
import { softCounters, softFaults, softProvider } from "../../src/transport/rdma/soft.js";
import { Access, Opcode, SendFlags, WorkBatch } from "../../src/transport/rdma/verbs.js";

const MiB = 1024 * 1024;
const THRESH = DEFAULT_RNDV_THRESH;

const saved = { provider: process.env.KOALA_RDMA_PROVIDER, transport: process.env.KOALA_TRANSPORT, log: process.env.KOALA_LOG };

function restore(name: string, value: string | undefined): void {
  if (value === undefined) delete process.env[name];
  else process.env[name] = value;
}

async function within<T>(p: Promise<T>, what: string, ms = 20_000): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: not done within ${ms} ms`)), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

async function until(cond: () => boolean, what: string, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`still waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 1));
  }
}

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof KoalaError, String(err));
    return (err as KoalaError).code;
  }
  return "resolved";
}

const sha = (m: Uint8Array) => createHash("sha256").update(m).digest("hex");

function pattern(seed: number, size: number): Uint8Array {
  const b = new Uint8Array(size);
  for (let j = 0; j < size; j++) b[j] = (seed * 31 + j * 7) & 0xff;
  return b;
}

/** The one RDMA context of this thread (the soft provider's). */
function context(): RdmaContext {
  const all = openRdmaContexts();
  assert.is(all.length, 1, "one context per thread");
  return all[0]!;
}

/** Live leases of the context's heap and connections routed by it. */
function resources(): { leases: number; connections: number } {
  const ctx = context();
  return { leases: ctx.heap.stats().leases + ctx.receiveHeap.stats().leases, connections: ctx.connections };
}

type Ctx = { opened: (Connection | Listener)[] };

const s = suite<Ctx>("rdma transport: protocol (soft provider)");

s.before(() => {
  process.env.KOALA_RDMA_PROVIDER = "soft";
  delete process.env.KOALA_TRANSPORT;
});
s.after(() => {
  restore("KOALA_RDMA_PROVIDER", saved.provider);
  restore("KOALA_TRANSPORT", saved.transport);
});
s.before.each((ctx) => {
  ctx.opened = [];
});
s.after.each(async (ctx) => {
  for (const x of ctx.opened.reverse()) {
    if ("accept" in x) await x.close();
    else x.close(new Error("test over"));
  }
  await Promise.all(ctx.opened.filter((x): x is Connection => !("accept" in x)).map((c) => c.closed));
});

async function pair(ctx: Ctx, options?: TransportOptions): Promise<{ client: Connection; server: Connection; listener: Listener }> {
  const listener = await listen("rdma://127.0.0.1:0", options);
  ctx.opened.push(listener);
  const accepted = listener.accept();
  const client = await connect(listener.address, options);
  const server = await accepted;
  ctx.opened.push(client, server);
  return { client, server, listener };
}

/** Collects messages of `c`, releasing each after copying it. */
function collect(c: Connection): Uint8Array[] {
  const got: Uint8Array[] = [];
  c.onMessage((m) => {
    got.push(m.slice());
    c.release(m);
  });
  return got;
}

s("credit exhaustion: a sender facing a reader that stopped waits; nothing is refused (no receiver-not-ready)", async (ctx) => {
  const rnr = softCounters.rnrNaks;
  const { client, server } = await pair(ctx, { receiveQueueMessages: 4 });
  server.pause();
  const got = collect(server);
  // Over PACK_MESSAGE_MAX: one SEND (one credit) each.
  const n = 500;
  for (let i = 0; i < n; i++) client.send([pattern(i, PACK_MESSAGE_MAX + 100 + (i % 50))]);
  await new Promise((r) => setTimeout(r, 50));
  assert.is(got.length, 0);
  assert.ok(client.bufferedBytes > 0, "the sender holds what it may not send yet");
  server.resume();
  await until(() => got.length === n, `${n} messages`);
  got.forEach((m, i) => assert.ok(Buffer.from(m).equals(Buffer.from(pattern(i, PACK_MESSAGE_MAX + 100 + (i % 50)))), `message ${i}`));
  // Both ways at once, many rounds, readers that release late.
  const back = collect(client);
  for (let i = 0; i < 2000; i++) {
    client.send([pattern(i, 64)]);
    server.send([pattern(i, 64)]);
  }
  await until(() => got.length === n + 2000 && back.length === 2000, "4000 more");
  // The receiver can see the last messages before the sender has polled their send
  // completions (which is what empties bufferedBytes): wait for those, do not race them.
  await until(() => client.bufferedBytes === 0, "the sender's queue empty once its sends completed");
  assert.is(softCounters.rnrNaks - rnr, 0, "no SEND ever found the receive queue empty");
});

s("stress, three seeds: both ways at once, eager and rendezvous sizes, readers pausing and releasing late; everything arrives in order, no receiver-not-ready, resources return", async (ctx) => {
  for (const seed of [1, 2, 3]) {
    let state = seed * 0x9e3779b9;
    const rand = (n: number) => {
      state = (Math.imul(state ^ (state >>> 15), 0x2c1b3c6d) + 0x6d2b79f5) >>> 0;
      return state % n;
    };
    const before = resources();
    const rnr = softCounters.rnrNaks;
    const { client, server } = await pair(ctx, { receiveQueueMessages: 1 + rand(8), highWaterMarkBytes: 64 * 1024 });
    const sizeOf = () => [0, 1, 100, THRESH - 1, THRESH, THRESH + 1, 3 * THRESH, 100_000][rand(8)]!;
    const n = 300;
    const sent: Record<string, number[]> = { c: [], s: [] };
    const got: Record<string, Uint8Array[]> = { c: [], s: [] };
    const held: [Connection, Uint8Array][] = [];
    for (const [name, conn] of [["s", server], ["c", client]] as const) {
      conn.onMessage((m) => {
        got[name]!.push(m.slice());
        // Some messages are released at once, some later, some after a while.
        if (rand(3) === 0) conn.release(m);
        else held.push([conn, m]);
        if (held.length > 5 || rand(4) === 0) for (const [c, x] of held.splice(0)) c.release(x);
      });
    }
    const writer = async (name: "c" | "s", conn: Connection) => {
      for (let i = 0; i < n; i++) {
        const size = sizeOf();
        sent[name]!.push(size);
        const body = pattern(i, Math.max(size, 4));
        new DataView(body.buffer).setUint32(0, i);
        if (!conn.send([body.subarray(0, Math.max(size, 4))])) await conn.drain();
      }
    };
    const pauser = (async () => {
      for (let k = 0; k < 10; k++) {
        await new Promise((r) => setTimeout(r, rand(5)));
        const c = rand(2) === 0 ? server : client;
        c.pause();
        await new Promise((r) => setTimeout(r, rand(10)));
        c.resume();
      }
    })();
    await within(Promise.all([writer("c", client), writer("s", server), pauser]), `seed ${seed}: the writers`);
    await until(() => got.s!.length === n && got.c!.length === n, `seed ${seed}: every message`);
    for (const [from, to] of [["c", "s"], ["s", "c"]] as const) {
      got[to]!.forEach((m, i) => {
        if (m.byteLength !== Math.max(sent[from]![i]!, 4) || new DataView(m.buffer, m.byteOffset).getUint32(0) !== i) {
          assert.unreachable(`seed ${seed}: message ${i} from ${from}: ${m.byteLength} bytes`);
        }
      });
    }
    for (const [c, x] of held.splice(0)) c.release(x);
    client.close();
    await Promise.all([client.closed, server.closed]);
    assert.is(softCounters.rnrNaks - rnr, 0, `seed ${seed}: no receiver-not-ready`);
    assert.equal(resources(), before, `seed ${seed}: resources back`);
  }
});

s("messages of thresh−1, thresh, thresh+1 bytes and 64 MiB arrive whole, as views of registered memory once the reader releases", async (ctx) => {
  const { client, server } = await pair(ctx);
  const rctx = context();
  const sizes = [THRESH - 1, THRESH, THRESH + 1, 64 * MiB];
  const hashes: string[] = [];
  const registered: boolean[] = [];
  server.onMessage((m) => {
    hashes.push(sha(m));
    registered.push(rctx.locate(m) !== undefined);
    server.release(m);
  });
  const sent = sizes.map((n, i) => pattern(i + 1, n));
  for (const m of sent) client.send([m]);
  await within(until(() => hashes.length === sizes.length, "4 messages", 30_000), "the messages");
  assert.equal(hashes, sent.map(sha));
  // The first, delivered before this reader ever released anything, is a copy; the rest are
  // views of registered memory (a receive buffer, or the rendezvous lease).
  assert.equal(registered, [false, true, true, true]);
});

s("more parts than max_sge, parts in registered memory (sent in place) and not: every message intact", async (ctx) => {
  const { client, server } = await pair(ctx);
  const rctx = context();
  const maxSge = rctx.selection.device!.maxSge;
  const got = collect(server);
  const leases = Array.from({ length: maxSge + 3 }, (_, i) => {
    const l = rctx.heap.alloc(300 + i);
    l.bytes.set(pattern(i, 300 + i));
    return l;
  });
  const cases: Uint8Array[][] = [
    leases.slice(0, 3).map((l) => l.bytes), // registered, under max_sge: scatter-gather in place
    leases.map((l) => l.bytes), // registered, more than max_sge: copied
    Array.from({ length: 40 }, (_, i) => pattern(i, 50)), // 40 plain parts
    Array.from({ length: 40 }, (_, i) => pattern(i, 1000)), // 40 plain parts over the threshold
    leases.slice(0, 2).map((l) => l.bytes).concat([pattern(9, 3 * THRESH)]), // mixed, rendezvous
  ];
  let written = 0;
  for (const parts of cases) client.send(parts, () => written++);
  await until(() => got.length === cases.length && written === cases.length, "every message and onWritten");
  cases.forEach((parts, i) => assert.ok(Buffer.from(got[i]!).equals(Buffer.concat(parts)), `case ${i}`));
  for (const l of leases) l.release();
});

s("a reader that never released gets copies; after release() views of the buffers, posted again on release(); copies again while half are held", async (ctx) => {
  const { client, server } = await pair(ctx);
  const rctx = context();
  // Before its first release() the reader gets copies; the first release() turns views on.
  const first = collect(server);
  client.send([pattern(0, 32)]);
  await until(() => first.length === 1, "a first message");
  server.onMessage(null);
  const kept: Uint8Array[] = [];
  server.onMessage((m) => kept.push(m));
  // Over PACK_MESSAGE_MAX, so each arrives alone in its buffer (small ones sent together are packed and copied).
  const size = PACK_MESSAGE_MAX + 1;
  for (let i = 0; i < RECV_DEPTH * 3; i++) client.send([pattern(i, size)]);
  await until(() => kept.length === RECV_DEPTH * 3, "every message");
  const inBuffers = kept.filter((m) => rctx.locate(m) !== undefined).length;
  assert.is(inBuffers, RECV_DEPTH / 2, "at most half the receive buffers are lent out");
  kept.forEach((m, i) => assert.ok(Buffer.from(m).equals(Buffer.from(pattern(i, size))), `message ${i} stays valid while kept`));
  for (const m of kept) server.release(m);
  server.onMessage(null);
  const again: Uint8Array[] = [];
  server.onMessage((m) => {
    again.push(m);
    server.release(m);
  });
  client.send([pattern(99, 32)]);
  await until(() => again.length === 1, "one more");
  assert.ok(rctx.locate(again[0]!) !== undefined, "after release, messages are views of the buffers again");
});

s("resources go back: 200 connections echo and close; heap leases and routed queue pairs return to where they were", async (ctx) => {
  const before = resources();
  const listener = await listen("rdma://127.0.0.1:0");
  ctx.opened.push(listener);
  const accepted: Connection[] = [];
  listener.onConnection((c) => {
    accepted.push(c);
    c.onMessage((m) => {
      if (!c.isClosed) c.send([m]);
      c.release(m);
    });
  });
  const conns = await Promise.all(Array.from({ length: 200 }, () => connect(listener.address)));
  const replies = await Promise.all(
    conns.map(
      (c, i) =>
        new Promise<string>((resolve) => {
          c.onMessage((m) => {
            resolve(new TextDecoder().decode(m));
            c.release(m);
          });
          c.send([new TextEncoder().encode(i % 2 === 0 ? `connection ${i}` : `connection ${i} ${"x".repeat(THRESH)}`)]);
        }),
    ),
  );
  replies.forEach((r, i) => assert.ok(r.startsWith(`connection ${i}`), r.slice(0, 30)));
  assert.is(accepted.length, 200);
  for (const c of conns) c.close();
  const reasons = await Promise.all([...conns, ...accepted].map((c) => c.closed));
  assert.ok(reasons.slice(0, 200).every((r) => r.code === "KOALA_ERR_CLOSED"));
  assert.ok(reasons.slice(200).every((r) => r.code === "KOALA_ERR_PEER_CLOSED"));
  assert.equal(resources(), before);
});

s("an injected QP error closes that connection with KOALA_ERR_QP_ERROR, the peer with a reset; others go on; resources return", async (ctx) => {
  const quiet = process.env.KOALA_LOG;
  process.env.KOALA_LOG = "off";
  resetLogLevel();
  try {
    const before = resources();
    const { client, server } = await pair(ctx);
    const other = await pair(ctx);
    const got = collect(server);
    client.send([pattern(1, 10)]);
    await until(() => got.length === 1, "a first message");
    softFaults.failSendIn = 1;
    client.send([pattern(2, 10)]);
    const mine = await client.closed;
    assert.is(mine.code, "KOALA_ERR_QP_ERROR");
    assert.match(mine.message, /REM_OP_ERR/);
    assert.is((await server.closed).code, "KOALA_ERR_CONNECTION_RESET");
    const echo = collect(other.server);
    other.client.send([pattern(3, 10)]);
    await until(() => echo.length === 1, "the other connection");
    other.client.close();
    other.server.close();
    await Promise.all([other.client.closed, other.server.closed]);
    assert.equal(resources(), before);
  } finally {
    softFaults.failSendIn = 0;
    restore("KOALA_LOG", quiet);
    resetLogLevel();
  }
});

s("a received message sent on and released at once (echo, forward to another connection) arrives intact; the forwarded lease is held until written", async (ctx) => {
  const before = resources();
  const a = await pair(ctx);
  const b = await pair(ctx);
  // a.client → a.server, which forwards to b.client → b.server, which echoes back to b.client
  // → forwarded back to a.server → a.client. Every hop releases the message right after send().
  a.server.onMessage((m) => (b.client.send([m]), a.server.release(m)));
  b.server.onMessage((m) => (b.server.send([m]), b.server.release(m)));
  b.client.onMessage((m) => (a.server.send([m]), b.client.release(m)));
  const back = collect(a.client);
  const sizes = (i: number) => [100, THRESH, 3 * THRESH, 200_000][i % 4]!;
  for (let i = 0; i < 120; i++) a.client.send([pattern(i, sizes(i))]);
  await until(() => back.length === 120, "120 round trips through four connections");
  back.forEach((m, i) => assert.ok(Buffer.from(m).equals(Buffer.from(pattern(i, sizes(i)))), `message ${i} (${sizes(i)} bytes)`));
  for (const c of [a.client, b.client]) c.close();
  await Promise.all([a.client.closed, a.server.closed, b.client.closed, b.server.closed]);
  assert.equal(resources(), before);
});

s("a peer that advertises receive buffers it never posts: SENDs meet receiver-not-ready, retried, then the connection closes with KOALA_ERR_RECEIVER_NOT_READY", async () => {
  const quiet = process.env.KOALA_LOG;
  process.env.KOALA_LOG = "off";
  resetLogLevel();
  // A raw verbs endpoint that says it posted 16 buffers of the usual size and posts none.
  const raw = softProvider.open("soft0", 1);
  const pd = raw.allocPd();
  const cq = raw.createCq(64, () => undefined);
  const held: { qp?: ReturnType<typeof raw.createQp>; id?: Parameters<typeof raw.accept>[0] } = {};
  const cm = await raw.listen("127.0.0.1", 0, (e) => {
    if (e.type !== "connect_request") return;
    held.id = e.id;
    held.qp = raw.createQp(e.id, pd, cq, cq, { maxSendWr: 16, maxRecvWr: 16, maxSendSge: 1, maxRecvSge: 1, maxInlineData: 0 });
    raw.accept(e.id, encodeHello(RECV_DEPTH, 16 + THRESH));
  });
  try {
    const before = softCounters.rnrNaks;
    const c = await connect(`rdma://127.0.0.1:${cm.port}`);
    c.send([pattern(1, 100)]);
    const reason = await within(c.closed, "the sender giving up");
    assert.is(reason.code, "KOALA_ERR_RECEIVER_NOT_READY", reason.message);
    assert.match(reason.message, /receiver not ready/);
    assert.ok(softCounters.rnrNaks - before > 1, "retried before giving up");
  } finally {
    raw.disconnect(held.id!);
    raw.destroyQp(held.qp!);
    raw.destroyId(held.id!);
    raw.closeListener(cm);
    restore("KOALA_LOG", quiet);
    resetLogLevel();
  }
});

s("small messages sent in one tick share SENDs (PACK): every one arrives, in order and intact, in far fewer SENDs than messages", async (ctx) => {
  const { client, server } = await pair(ctx);
  const got = collect(server);
  const n = 2000;
  const size = (i: number) => 1 + (i % PACK_MESSAGE_MAX);
  const sends = softCounters.sends;
  for (let i = 0; i < n; i++) client.send([pattern(i, size(i))]);
  await until(() => got.length === n, `${n} messages`);
  got.forEach((m, i) => assert.ok(Buffer.from(m).equals(Buffer.from(pattern(i, size(i)))), `message ${i} (${size(i)} bytes)`));
  const used = softCounters.sends - sends;
  assert.ok(used < n / 4, `${n} messages went in ${used} SENDs`);
});

s("packed messages to a reader that stopped: the sender waits (credits), the reader's memory stays bounded, all arrive in order once it reads", async (ctx) => {
  const rnr = softCounters.rnrNaks;
  const { client, server } = await pair(ctx, { receiveQueueMessages: 4 });
  server.pause();
  const got = collect(server);
  const n = 20_000;
  for (let i = 0; i < n; i++) client.send([pattern(i, 40 + (i % 60))]);
  await new Promise((r) => setTimeout(r, 50));
  assert.is(got.length, 0);
  // 16 receive buffers of 16 + 8192 bytes hold about 140 KB of them: the rest waits at the sender.
  assert.ok(client.bufferedBytes > n * 40 - 16 * (HEADER_BYTES + DEFAULT_RNDV_THRESH), `the sender holds what the reader has no room for (${client.bufferedBytes} bytes)`);
  server.resume();
  await until(() => got.length === n, `${n} messages`);
  got.forEach((m, i) => assert.ok(Buffer.from(m).equals(Buffer.from(pattern(i, 40 + (i % 60)))), `message ${i}`));
  assert.is(softCounters.rnrNaks - rnr, 0, "no SEND ever found the receive queue empty");
});

s("a malformed PACK (an entry past its end, a count that disagrees, a message over maxMessageBytes) closes that connection with the reason; the listener serves on", async () => {
  const quiet = process.env.KOALA_LOG;
  process.env.KOALA_LOG = "off";
  resetLogLevel();
  // A raw verbs endpoint that accepts a koala client and sends it one crafted SEND.
  const raw = softProvider.open("soft0", 1);
  const pd = raw.allocPd();
  const cq = raw.createCq(64, () => undefined);
  const buf = new Uint8Array(4096);
  const mr = raw.regMr(pd, buf, Access.LOCAL_WRITE);
  const conns: { qp: ReturnType<typeof raw.createQp>; id: Parameters<typeof raw.accept>[0] }[] = [];
  let established: (() => void) | undefined;
  const cm = await raw.listen("127.0.0.1", 0, (e) => {
    if (e.type === "connect_request") {
      const qp = raw.createQp(e.id, pd, cq, cq, { maxSendWr: 16, maxRecvWr: 16, maxSendSge: 1, maxRecvSge: 1, maxInlineData: 0 });
      conns.push({ qp, id: e.id });
      raw.accept(e.id, encodeHello(RECV_DEPTH, 16 + THRESH));
    } else if (e.type === "established") established?.();
  });
  /** A PACK header for `count` messages and `body`, with the header's length `length`. */
  const pack = (count: number, body: number[], length = body.length): Uint8Array => {
    const b = new Uint8Array(HEADER_BYTES + body.length);
    const v = new DataView(b.buffer);
    v.setUint8(0, MsgType.PACK);
    v.setUint32(4, length, true);
    v.setUint32(8, count, true);
    b.set(body, HEADER_BYTES);
    return b;
  };
  const le = (n: number) => [n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, n >>> 24];
  const cases: [Uint8Array, string, RegExp][] = [
    [pack(1, [...le(10), 1, 2, 3]), "KOALA_ERR_PROTOCOL", /message 1 of 1 \(10 bytes\) runs past its end/],
    [pack(3, [...le(1), 7, ...le(1), 8]), "KOALA_ERR_PROTOCOL", /ends inside the length of its message 3 of 3/],
    [pack(1, [...le(1), 7, 9, 9]), "KOALA_ERR_PROTOCOL", /2 bytes after its 1 messages/],
    [pack(1, [...le(2), 7, 7], 9), "KOALA_ERR_PROTOCOL", /header says 9 bytes arrived with 6/],
    [pack(1, [...le(5000), ...new Array<number>(8).fill(0)]), "KOALA_ERR_MESSAGE_TOO_LARGE", /5000 bytes; the limit is 1000/],
  ];
  try {
    for (const [bytes, code, why] of cases) {
      const up = new Promise<void>((r) => (established = r));
      const c = await connect(`rdma://127.0.0.1:${cm.port}`, { maxMessageBytes: 1000 });
      const got = collect(c);
      await within(up, "the raw side established");
      buf.set(bytes);
      const batch = new WorkBatch(1);
      batch.addSge(mr.addr, bytes.byteLength, mr.lkey);
      batch.addSend(1, Opcode.SEND, SendFlags.SIGNALED, 1);
      raw.postSend(conns[conns.length - 1]!.qp, batch);
      const reason = await within(c.closed, "the client closing");
      assert.is(reason.code, code, reason.message);
      assert.match(reason.message, why);
      assert.equal(got.length, 0, "nothing of a malformed PACK is delivered");
    }
  } finally {
    for (const { qp, id } of conns) {
      raw.disconnect(id);
      raw.destroyQp(qp);
      raw.destroyId(id);
    }
    raw.closeListener(cm);
    restore("KOALA_LOG", quiet);
    resetLogLevel();
  }
});

s("a listener that never answers: connect fails with KOALA_ERR_CONNECT_TIMEOUT after connectTimeoutMs; the attempt's resources are released", async () => {
  const before = resources();
  const raw = softProvider.open("soft0", 1);
  const requests: unknown[] = [];
  const cm = await raw.listen("127.0.0.1", 0, (e) => requests.push(e)); // hears requests, answers none
  try {
    const err = await connect(`rdma://127.0.0.1:${cm.port}`, { connectTimeoutMs: 150 }).catch((e: unknown) => e);
    assert.ok(err instanceof KoalaError, String(err));
    assert.is((err as KoalaError).code, "KOALA_ERR_CONNECT_TIMEOUT");
    assert.match((err as KoalaError).message, new RegExp(`rdma://127\\.0\\.0\\.1:${cm.port}`));
    assert.is(requests.length, 1);
    assert.equal(resources(), before);
  } finally {
    raw.closeListener(cm);
  }
});

s("a peer closed mid-rendezvous (in this process): the reader's lease and the sender's advertised memory are released", async (ctx) => {
  const before = resources();
  const { client, server } = await pair(ctx, { receiveQueueMessages: 1 });
  server.pause();
  const rctx = context();
  const source = rctx.heap.alloc(4 * MiB);
  let written = 0;
  client.send([pattern(1, 10)]);
  client.send([source.bytes], () => written++); // sent in place: advertised until the peer reads it
  await new Promise((r) => setTimeout(r, 30));
  assert.is(written, 0, "still advertised");
  client.close(new Error("gone"));
  assert.is((await server.closed).code, "KOALA_ERR_CONNECTION_RESET");
  await client.closed;
  assert.is(written, 1, "onWritten once, when the rendezvous was dropped");
  source.release();
  const got = collect(server);
  server.resume();
  assert.is(got.length, 1, "only the whole first message");
  assert.equal(resources(), before);
});

s("a peer process killed mid-rendezvous: a reset, only whole messages delivered, every resource released, the listener serves on", async (ctx) => {
  const before = resources();
  const size = 64 * MiB;
  // receiveQueueMessages 1: the first message stops the reader, so the big one's RTS waits unread.
  const l = await listen("rdma://127.0.0.1:0", { maxMessageBytes: size, receiveQueueMessages: 1 });
  ctx.opened.push(l);
  const accepted = l.accept();
  const child = fork(new URL("../fixtures/transport/big-sender.ts", import.meta.url).pathname, [l.address, String(size)], {
    execArgv: ["--import", "tsx"],
    stdio: ["ignore", "inherit", "inherit", "ipc"],
    env: { ...process.env, KOALA_RDMA_PROVIDER: "soft" },
  });
  const exited = new Promise((r) => child.once("exit", r));
  try {
    const server = await within(accepted, "the child connecting");
    ctx.opened.push(server);
    assert.equal(await within(new Promise((r) => child.once("message", r)), "the child sending"), { sending: true });
    child.kill("SIGKILL");
    await exited;
    const reason = await server.closed;
    assert.is(reason.code, "KOALA_ERR_CONNECTION_RESET", reason.message);
    const got = collect(server);
    assert.equal(got.map((m) => new TextDecoder().decode(m)), ["first"]);
    assert.equal(resources(), before, "the dead peer's connection released everything");
    const { client, server: s2 } = await (async () => {
      const a = l.accept();
      const c = await connect(l.address);
      ctx.opened.push(c);
      const sv = await a;
      ctx.opened.push(sv);
      return { client: c, server: sv };
    })();
    const echo = collect(s2);
    client.send([pattern(5, 5)]);
    await until(() => echo.length === 1, "after the killed peer");
  } finally {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  }
});

s("selection: KOALA_TRANSPORT=rdma is strict; the verbs provider is unavailable with its reason; variables are validated", () => {
  const err = (() => {
    try {
      chooseTransport({ KOALA_TRANSPORT: "rdma", KOALA_RDMA_PROVIDER: "verbs" });
    } catch (e) {
      return e as KoalaError;
    }
    return undefined;
  })();
  assert.is(err?.code, "KOALA_ERR_TRANSPORT_UNAVAILABLE");
  // Which reason depends on the host (addon built or not, a NIC or not; rdma-addon.test.ts
  // pins each case down); here: the provider's own reason reaches the strict choice's error.
  const verbsReason = nativeProvider.unavailableReason();
  assert.ok(verbsReason !== undefined && verbsReason.length > 0, "the verbs provider gives a reason");
  assert.ok(err!.message.endsWith(`provider verbs: ${verbsReason}`), err!.message);
  assert.is(chooseTransport({ KOALA_TRANSPORT: "rdma", KOALA_RDMA_PROVIDER: "soft" }).transport, "rdma");
  const auto = chooseTransport({ KOALA_RDMA_PROVIDER: "soft" });
  assert.is(auto.transport, "rdma");
  assert.match(auto.reason, /soft0:1 through provider soft \(a software provider\)/, "auto says what it uses");
  assert.is(chooseTransport({ KOALA_RDMA_PROVIDER: "soft", KOALA_RDMA_DEVICES: "^soft0" }).transport, "tcp", "no device left: auto uses tcp");
  assert.match(chooseTransport({ KOALA_RDMA_PROVIDER: "soft", KOALA_RDMA_DEVICES: "=soft" }).reason, /no active port allowed by KOALA_RDMA_DEVICES/);
  assert.is(resolveAddress("rdma://127.0.0.1:1", { KOALA_RDMA_PROVIDER: "soft", KOALA_RDMA_DEVICES: "soft0:1" }).transport.name, "rdma");
  for (const [name, value] of [
    ["KOALA_RDMA_PROVIDER", "ib"],
    ["KOALA_RNDV_THRESH", "12x"],
    ["KOALA_RNDV_THRESH", "100"],
    ["KOALA_RNDV_THRESH", "4M"],
    ["KOALA_RDMA_DEVICES", "mlx5_0:x"],
    ["KOALA_RDMA_DEVICES", "mlx5_0:0"],
    ["KOALA_RDMA_BUSY_POLL_US", "-1"],
  ] as const) {
    const e = (() => {
      try {
        chooseTransport({ KOALA_RDMA_PROVIDER: "soft", [name]: value });
      } catch (x) {
        return x as KoalaError;
      }
      return undefined;
    })();
    assert.is(e?.code, "KOALA_ERR_INVALID_ARGUMENT", `${name}=${value}`);
    assert.ok(e!.message.includes(name) && e!.message.includes(JSON.stringify(value)), e!.message);
  }
  assert.is(readRdmaConfig({ KOALA_RNDV_THRESH: "16K" }).rndvThreshBytes, 16384);
  assert.is(readRdmaConfig({}).rndvThreshBytes, DEFAULT_RNDV_THRESH);
});

s("koala info lists the providers, the soft device's port, state and limits, and what auto picks", () => {
  const bin = new URL("../../bin/koala.js", import.meta.url).pathname;
  const info = (env: Record<string, string>) => spawnSync(process.execPath, [bin, "info"], { env: { ...process.env, KOALA_TRANSPORT: "auto", ...env }, encoding: "utf8" });
  const soft = info({ KOALA_RDMA_PROVIDER: "soft" });
  assert.is(soft.status, 0, soft.stderr);
  assert.ok(soft.stdout.includes(`verbs   unavailable: ${nativeProvider.unavailableReason()}`), soft.stdout);
  assert.match(soft.stdout, /soft\s+available \[selected\]\s+\(software verbs provider/);
  assert.match(soft.stdout, /soft0:1 active, Ethernet, MTU 4096, GID [0-9a-f:]+; max_sge 8, max_qp_wr 4096, max_inline_data 128/);
  assert.match(soft.stdout, /rdma uses soft0:1 \(provider soft, a software provider\); KOALA_RNDV_THRESH 8192 bytes/);
  assert.match(soft.stdout, /host:port addresses use rdma/);
  const excluded = info({ KOALA_RDMA_PROVIDER: "soft", KOALA_RDMA_DEVICES: "^soft0" });
  assert.match(excluded.stdout, /host:port addresses use tcp: RDMA is not used: provider soft has no active port allowed by KOALA_RDMA_DEVICES=\^soft0/);
  const bad = info({ KOALA_RNDV_THRESH: "lots" });
  assert.is(bad.status, 1);
  assert.match(bad.stdout, /KOALA_RNDV_THRESH="lots" is not valid/);
});

s("KOALA_RDMA_DEVICES follows the NCCL grammar: prefixes and ports, ^ excludes, = exact", () => {
  const pick = (spec: string) =>
    ["mlx5_0:1", "mlx5_0:2", "mlx5_1:1", "mlx5_10:1", "soft0:1"].filter((d) => {
      const [name, port] = d.split(":");
      return deviceSelected(parseDeviceFilter(spec), name!, Number(port));
    });
  assert.equal(pick(""), ["mlx5_0:1", "mlx5_0:2", "mlx5_1:1", "mlx5_10:1", "soft0:1"]);
  assert.equal(pick("mlx5_0:1,mlx5_1"), ["mlx5_0:1", "mlx5_1:1", "mlx5_10:1"], "mlx5_1 is a prefix of mlx5_10");
  assert.equal(pick("=mlx5_1"), ["mlx5_1:1"]);
  assert.equal(pick("^mlx5_0"), ["mlx5_1:1", "mlx5_10:1", "soft0:1"]);
  assert.equal(pick("^=mlx5_1,soft0"), ["mlx5_0:1", "mlx5_0:2", "mlx5_10:1"]);
  assert.equal(pick("mlx5_0:2"), ["mlx5_0:2"]);
});

s("auto: one port serves rdma and tcp; an auto client uses rdma, and falls back to tcp where nobody serves rdma", async (ctx) => {
  process.env.KOALA_TRANSPORT = "auto";
  try {
    const l = await listen("127.0.0.1:0");
    ctx.opened.push(l);
    assert.match(l.address, /^koala:\/\/127\.0\.0\.1:\d+$/);
    const port = l.address.slice(l.address.lastIndexOf(":") + 1);
    const accepted: Connection[] = [];
    l.onConnection((c) => {
      accepted.push(c);
      ctx.opened.push(c);
      c.onMessage((m) => (c.send([m]), c.release(m)));
    });
    const viaAuto = await connect(l.address);
    const viaTcp = await connect(`tcp://127.0.0.1:${port}`);
    const viaRdma = await connect(`rdma://127.0.0.1:${port}`);
    ctx.opened.push(viaAuto, viaTcp, viaRdma);
    assert.equal([viaAuto.transport, viaTcp.transport, viaRdma.transport], ["rdma", "tcp", "rdma"]);
    for (const c of [viaAuto, viaTcp, viaRdma]) {
      const got = collect(c);
      c.send([pattern(1, 20)]);
      await until(() => got.length === 1, `an echo over ${c.transport}`);
    }
    assert.equal(accepted.map((c) => c.transport).sort(), ["rdma", "rdma", "tcp"]);
    // A plain TCP server: the auto client falls back.
    const tcpOnly = await listen("tcp://127.0.0.1:0");
    ctx.opened.push(tcpOnly);
    tcpOnly.onConnection((c) => ctx.opened.push(c));
    const fallback = await connect(`127.0.0.1:${tcpOnly.address.slice(tcpOnly.address.lastIndexOf(":") + 1)}`);
    ctx.opened.push(fallback);
    assert.is(fallback.transport, "tcp");
    // Nobody at all: the TCP attempt's refusal is the answer.
    await tcpOnly.close();
    assert.is(await codeOf(connect(`127.0.0.1:${tcpOnly.address.slice(tcpOnly.address.lastIndexOf(":") + 1)}`)), "KOALA_ERR_CONNECTION_REFUSED");
  } finally {
    delete process.env.KOALA_TRANSPORT;
  }
});

// Last: it opens a second context in this thread (the busy-poll setting is part of its key).
s("KOALA_RDMA_BUSY_POLL_US: completions polled for a bounded while before sleeping; traffic flows as without it", async (ctx) => {
  process.env.KOALA_RDMA_BUSY_POLL_US = "200";
  try {
    const { client, server } = await pair(ctx);
    assert.ok(openRdmaContexts().some((c) => c.selection.config.busyPollUs === 200), "a context that busy-polls");
    const echo = collect(client);
    server.onMessage((m) => (server.send([m]), server.release(m)));
    for (let i = 0; i < 200; i++) client.send([pattern(i, i % 2 === 0 ? 100 : 3 * THRESH)]);
    await until(() => echo.length === 200, "200 echoes");
    echo.forEach((m, i) => assert.ok(Buffer.from(m).equals(Buffer.from(pattern(i, i % 2 === 0 ? 100 : 3 * THRESH))), `echo ${i}`));
  } finally {
    delete process.env.KOALA_RDMA_BUSY_POLL_US;
  }
});

// Last as well: it opens four more contexts (busy-poll settings 11 to 14) on a soft device whose
// max_cqe is lowered to 1500 (a provider registered in place of "soft" for this test only).
s("a thread's CQ grows with its connections up to the device's max_cqe; past it the new connection is refused, by the accepting or the connecting side, and the others go on", async (ctx) => {
  const LIMIT = 1500;
  const quiet = process.env.KOALA_LOG;
  process.env.KOALA_LOG = "off";
  resetLogLevel();
  const events: LogEvent[] = [];
  const onLog = (e: unknown): void => void events.push(e as LogEvent);
  diagnostics.subscribe("koala:transport", onLog);
  registerVerbsProvider({ ...softProvider, devices: () => softProvider.devices().map((d) => ({ ...d, maxCqe: LIMIT })) });
  const use = (us: number): void => void (process.env.KOALA_RDMA_BUSY_POLL_US = String(us));
  const byPoll = (us: number): RdmaContext => openRdmaContexts().find((c) => c.selection.config.busyPollUs === us)!;
  const state = (c: RdmaContext) => ({ connections: c.connections, cqUsers: c.cq.users, pdUsers: c.pd.users, leases: c.receiveHeap.stats().leases });
  try {
    const serve = async (us: number): Promise<Listener> => {
      use(us);
      const l = await listen("rdma://127.0.0.1:0");
      ctx.opened.push(l);
      l.onConnection((c) => {
        ctx.opened.push(c);
        c.onMessage((m) => (c.send([m]), c.release(m)));
      });
      return l;
    };
    const dial = async (us: number, l: Listener): Promise<Connection> => {
      use(us);
      const c = await connect(l.address);
      ctx.opened.push(c);
      return c;
    };
    const l1 = await serve(11);
    const l2 = await serve(14);
    const c1 = [await dial(12, l1)];
    const caps = (c1[0] as RdmaConnection).qp.caps;
    const per = caps.maxSendWr + caps.maxRecvWr;
    const fit = Math.floor(LIMIT / per);
    assert.ok(fit * per > 1024 && fit > 8, `more than the CQ's first 1024 entries fit (${fit} of ${per})`);
    while (c1.length < fit - 8) c1.push(await dial(12, l1));
    const c2: Connection[] = [];
    while (c2.length < 8) c2.push(await dial(13, l1));
    const server = byPoll(11);
    assert.is(server.connections, fit);
    assert.is((server.cq as unknown as { depth: number }).depth, LIMIT, "grown from 1024 and clamped at max_cqe, not doubled to 2048");

    // The accepting side is full: it refuses the request (the client hears a rejection), logs why, keeps nothing.
    const before = state(server);
    use(12);
    assert.is(await codeOf(connect(l1.address)), "KOALA_ERR_CONNECTION_REFUSED");
    assert.equal(state(server), before, "no connection, QP, identifier or receive area left behind");
    const refusal = events.find((e) => e.level === "warn" && e.message.startsWith("refused an RDMA connection"));
    assert.ok(refusal !== undefined, "the refusal is logged");
    assert.ok(
      refusal!.message.endsWith(`this thread's RDMA completion queue would need ${(fit + 1) * per} entries for ${fit + 1} connections; the device soft0 allows ${LIMIT} (max_cqe)`),
      refusal!.message,
    );

    // The connecting side is full: connect() fails with the reason before anything reaches the peer.
    while (c2.length < fit) c2.push(await dial(13, l2));
    const client = byPoll(13);
    const peer = byPoll(14);
    const clientBefore = state(client);
    const peerBefore = peer.connections;
    use(13);
    try {
      await connect(l2.address);
      assert.unreachable("a connection past max_cqe");
    } catch (err) {
      assert.instance(err, KoalaError);
      assert.is((err as KoalaError).code, "KOALA_ERR_VERBS");
      assert.is(
        (err as Error).message,
        `connect to ${l2.address}: this thread's RDMA completion queue would need ${(fit + 1) * per} entries for ${fit + 1} connections; the device soft0 allows ${LIMIT} (max_cqe)`,
      );
    }
    assert.equal(state(client), clientBefore, "no connection, QP, identifier or receive area left behind");
    assert.is(peer.connections, peerBefore, "the listener never heard of it");

    // Every connection made before the refusals still carries messages both ways.
    const all = [...c1, ...c2];
    const got = all.map((c) => collect(c));
    all.forEach((c, i) => c.send([pattern(i, 100)]));
    await until(() => got.every((g) => g.length === 1), `an echo on each of ${all.length} connections`);
    got.forEach((g, i) => assert.ok(Buffer.from(g[0]!).equals(Buffer.from(pattern(i, 100))), `echo ${i}`));

    // As the connections close, each thread's CQ gives its memory back, down to its first 1024 entries.
    const threads = [server, byPoll(12), client, peer];
    const depths = (): number[] => threads.map((t) => (t.cq as unknown as { depth: number }).depth);
    assert.equal(depths(), [LIMIT, 1024, LIMIT, 1024], "grown where a thread holds more than 1024 entries' worth of connections (fit), not where it holds fit - 8");
    for (const c of all) c.close();
    // A CQ shrinks at the drain after the closes, once it has polled their flushed completions.
    await until(() => threads.every((t) => t.connections === 0) && depths().every((d) => d === 1024), "every connection closed and every CQ back at 1024 entries");
  } finally {
    diagnostics.unsubscribe("koala:transport", onLog);
    registerVerbsProvider(softProvider);
    delete process.env.KOALA_RDMA_BUSY_POLL_US;
    restore("KOALA_LOG", quiet);
    resetLogLevel();
  }
});

s.run();
