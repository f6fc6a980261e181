/**
 * The transport conformance suite: what every transport must do, checked through the public
 * `listen()` / `connect()` of src/transport/index.ts only. `conformance.test.ts` runs it for
 * tcp, tls, unix, memory and rdma (soft provider); a new transport passes it before it is registered.
 *
 * What the suite decides where the contract leaves room (see each test):
 * - `close(reason)` drops the connection; its peer sees KOALA_ERR_CONNECTION_RESET on tcp
 *   (a TCP reset) and memory. A Unix stream socket has no reset: its peer sees the end of the
 *   stream, which between two messages reads as KOALA_ERR_PEER_CLOSED, so unix allows both.
 * - A peer cut off in the middle of a message (a killed process) is a reset, never an orderly
 *   close: KOALA_ERR_CONNECTION_RESET, and the partial message is not delivered.
 * - Connecting to a Unix path with nothing there is KOALA_ERR_HOST_NOT_FOUND (ENOENT: the path
 *   does not exist); a path that exists but where nobody listens (a stale socket file, a plain
 *   file) is KOALA_ERR_CONNECTION_REFUSED, as a closed TCP port is.
 * - One-sided access on rdma is RDMA READ / WRITE: what only the owner can check (a key it
 *   never gave this connection, a descriptor that claims more length or access than was
 *   registered, a revoked region) is checked by the owner's NIC, which refuses the access
 *   (REM_ACCESS_ERR) and leaves the requester's queue pair in the error state, as every RDMA
 *   NIC does. So on rdma such a request fails with KOALA_ERR_REMOTE_ACCESS_DENIED and closes
 *   the connection; the checks the requester can make from the descriptor are the same as
 *   elsewhere and leave the connection open.
 */
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { fork, type ChildProcess } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, linkSync, readFileSync, unlinkSync, writeFileSync } from "node:fs";
import net from "node:net";
import tls from "node:tls";
import { setTimeout as sleep } from "node:timers/promises";
import { KoalaError } from "../../src/errors.js";
import { quietly, thrownCode } from "../helpers.js";
import { FRAME_HEADER_BYTES, FrameKind, helloFrame, writeFrameHeader } from "../../src/transport/framing.js";
import {
  connect as connectAny,
  DESCRIPTOR_BYTES,
  decodeDescriptor,
  encodeDescriptor,
  listen as listenAny,
  type Connection,
  type Listener,
  type TransportOptions,
} from "../../src/transport/index.js";

/** The transports the suite runs against. */
export type ConformanceTransport = "tcp" | "tls" | "unix" | "memory" | "rdma";

/** Extra steps around the suite. */
export interface ConformanceHooks {
  /** Runs once before the first test (e.g. to select an RDMA provider). */
  before?: () => void | Promise<void>;
  /** Runs once after the last test, even when tests failed (e.g. to remove a temporary folder). */
  after?: () => void | Promise<void>;
  /** Options every listen() of the suite starts from, under the test's own (e.g. a TLS certificate). */
  listenOptions?: TransportOptions;
  /** Options every connect() of the suite starts from, under the test's own (e.g. the CA to trust). */
  connectOptions?: TransportOptions;
}

/** The suite's listen() and connect(): the transport's, with the base options of the hooks. */
interface Endpoints {
  listen(address: string, options?: TransportOptions): Promise<Listener>;
  connect(address: string, options?: TransportOptions): Promise<Connection>;
}

/** `options` over `base`; anything but an options object is passed as it is, for the validation tests. */
function withBase(base: TransportOptions | undefined, options: TransportOptions | undefined): TransportOptions | undefined {
  if (base === undefined || options === undefined) return options ?? base;
  return typeof options === "object" && options !== null && !Array.isArray(options) ? { ...base, ...options } : options;
}

const KiB = 1024;
const MiB = 1024 * 1024;
/** A test that has not finished by then fails (instead of hanging the whole run). */
const TEST_DEADLINE_MS = 30_000;
/** Time every connection a test opened gets to report `closed` after the test closed it. */
const SETTLE_MS = 5_000;

const RESET = "KOALA_ERR_CONNECTION_RESET";
const PEER_CLOSED = "KOALA_ERR_PEER_CLOSED";
const CLOSED = "KOALA_ERR_CLOSED";

// ---- helpers --------------------------------------------------------------------------------

async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: not done within ${ms} ms`)), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

/** Waits until `cond()` holds (polling); fails after `ms`. */
async function until(cond: () => boolean, what: string, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`still waiting for ${what} after ${ms} ms`);
    await sleep(1);
  }
}

/** The code of the KoalaError `p` rejects with; "resolved" when it resolves. */
async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof KoalaError, `expected a KoalaError, got ${String(err)}`);
    return (err as KoalaError).code;
  }
  return "resolved";
}

/** The KoalaError `p` rejects with. */
async function errorOf(p: Promise<unknown>): Promise<KoalaError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof KoalaError, `expected a KoalaError, got ${String(err)}`);
    return err as KoalaError;
  }
  throw new Error("expected a rejection, but it resolved");
}

/** The next `n` messages of `c` (through onMessage, which is removed after the last one). */
function receive(c: Connection, n: number): Promise<Uint8Array[]> {
  return new Promise((resolve, reject) => {
    const got: Uint8Array[] = [];
    if (n === 0) return resolve(got);
    c.onMessage((m) => {
      got.push(m);
      if (got.length === n) {
        c.onMessage(null);
        resolve(got);
      }
    });
    void c.closed.then((r) => reject(new Error(`connection closed after ${got.length} of ${n} messages: ${r.code}: ${r.message}`)));
  });
}

/** Every message of `c` until it closes. */
function collectAll(c: Connection): Uint8Array[] {
  const got: Uint8Array[] = [];
  c.onMessage((m) => got.push(m));
  return got;
}

const u32 = (n: number): Uint8Array => {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, n);
  return b;
};
const readU32 = (m: Uint8Array): number => new DataView(m.buffer, m.byteOffset, m.byteLength).getUint32(0);
const text = (s: string): Uint8Array => new TextEncoder().encode(s);
const str = (m: Uint8Array): string => new TextDecoder().decode(m);
const sha = (...parts: Uint8Array[]): string => {
  const h = createHash("sha256");
  for (const p of parts) h.update(p);
  return h.digest("hex");
};

/** `size` bytes that depend on `seed` and on their position. */
function pattern(seed: number, size: number): Uint8Array {
  const b = new Uint8Array(size);
  for (let j = 0; j < size; j++) b[j] = (seed * 31 + j * 7) & 0xff;
  return b;
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
}

/** Soft limit on open files of this process (Linux), or undefined where it cannot be read. */
function openFilesLimit(): number | undefined {
  try {
    const m = /^Max open files\s+(\d+|unlimited)/m.exec(readFileSync("/proc/self/limits", "utf8"));
    return m === null ? undefined : m[1] === "unlimited" ? Infinity : Number(m[1]);
  } catch {
    return undefined;
  }
}

/** The resources of one test; everything is closed after it, also when it failed. */
class TestContext {
  private readonly cleanups: (() => unknown)[] = [];
  private readonly connections: Connection[] = [];

  constructor(
    readonly makeAddress: () => string,
    private readonly endpoints: Endpoints,
  ) {}

  /** Runs `fn` after the test. */
  defer(fn: () => unknown): void {
    this.cleanups.push(fn);
  }

  /** Listens at a fresh address of the transport under test. */
  async listen(options?: TransportOptions, address = this.makeAddress()): Promise<Listener> {
    const l = await this.endpoints.listen(address, options);
    this.defer(() => l.close());
    return l;
  }

  /** Closes `c` after the test and checks that its `closed` settles. */
  track<C extends Connection>(c: C): C {
    this.connections.push(c);
    return c;
  }

  async connect(address: string, options?: TransportOptions): Promise<Connection> {
    return this.track(await this.endpoints.connect(address, options));
  }

  /** A listener with one accepted connection: `client` dialled it, `server` is the accepted end. */
  async pair(serverOptions?: TransportOptions, clientOptions: TransportOptions | undefined = serverOptions) {
    const listener = await this.listen(serverOptions);
    const accepted = listener.accept();
    const client = await this.connect(listener.address, clientOptions);
    const server = this.track(await accepted);
    return { listener, client, server };
  }

  /** Makes every connection `l` accepts echo each message back (tracked for cleanup). */
  echo(l: Listener): Connection[] {
    const accepted: Connection[] = [];
    l.onConnection((c) => {
      accepted.push(this.track(c));
      c.onMessage((m) => {
        if (!c.isClosed) c.send([m]);
      });
    });
    return accepted;
  }

  /** Closes everything; returns a complaint when a connection's `closed` did not settle. */
  async cleanup(): Promise<string | undefined> {
    for (const c of this.connections) c.close(new Error("test cleanup"));
    for (const fn of this.cleanups.splice(0).reverse()) {
      try {
        await fn();
      } catch {
        /* cleanup goes on */
      }
    }
    let settled = 0;
    try {
      await within(Promise.all(this.connections.map((c) => c.closed.then(() => settled++))), SETTLE_MS, "closing");
    } catch {
      return `${this.connections.length - settled} of ${this.connections.length} connections did not resolve \`closed\` within ${SETTLE_MS} ms of close()`;
    }
    return undefined;
  }
}

/** Sends one message on `from` and checks that `to` receives it unchanged. */
async function roundTrip(from: Connection, to: Connection, what = "ping"): Promise<void> {
  const got = receive(to, 1);
  from.send([text(what)]);
  assert.is(str((await got)[0]!), what);
}

/** Sends one message on `c`, whose peer echoes, and checks that it comes back unchanged. */
async function echoTrip(c: Connection, what: string): Promise<void> {
  const got = receive(c, 1);
  c.send([text(what)]);
  assert.is(str((await got)[0]!), what);
}

// ---- the suite ------------------------------------------------------------------------------

/**
 * Registers the conformance tests for transport `name` as one uvu suite and runs it.
 * `makeAddress` returns a fresh address to listen on at every call (`tcp://127.0.0.1:0`,
 * `unix:<temporary folder>/<n>.sock`, `memory:<unique name>`).
 */
export function conformanceSuite(name: ConformanceTransport, makeAddress: () => string, hooks: ConformanceHooks = {}): void {
  const s = suite(`transport conformance: ${name}`);
  const listen = (address: string, options?: TransportOptions): Promise<Listener> => listenAny(address, withBase(hooks.listenOptions, options));
  const connect = (address: string, options?: TransportOptions): Promise<Connection> => connectAny(address, withBase(hooks.connectOptions, options));
  /** The socket transports, whose raw sockets some tests poke at (on tls, through a TLS socket). */
  const sockets = name === "tcp" || name === "unix" || name === "tls";
  /** Whether the owner's side of one-sided access is a NIC that errors the queue pair (see the module comment). */
  const nicChecked = name === "rdma";
  /** What the peer of a `close(reason)` sees (see the module comment). */
  const abortCodes = name === "unix" ? [RESET, PEER_CLOSED] : [RESET];

  const t = (title: string, fn: (ctx: TestContext) => Promise<void>): void => {
    s(title, async () => {
      const ctx = new TestContext(makeAddress, { listen, connect });
      let failure: unknown;
      try {
        await within(fn(ctx), TEST_DEADLINE_MS, title);
      } catch (err) {
        failure = err;
      }
      const leak = await ctx.cleanup();
      if (failure !== undefined) throw failure;
      if (leak !== undefined) assert.unreachable(leak);
    });
  };

  s.before(async () => {
    await hooks.before?.();
  });

  s.after(async () => {
    await hooks.after?.();
  });

  // ---- messages -----------------------------------------------------------------------------

  t("10 000 messages arrive in order in both directions at once; onWritten once per send", async (ctx) => {
    const { client, server } = await ctx.pair();
    const N = 10_000;
    const atServer = receive(server, N);
    const atClient = receive(client, N);
    let writtenByClient = 0;
    let writtenByServer = 0;
    for (let i = 0; i < N; i++) {
      client.send([u32(i)], () => writtenByClient++);
      server.send([u32(N - i)], () => writtenByServer++);
    }
    const [fromClient, fromServer] = await Promise.all([atServer, atClient]);
    for (let i = 0; i < N; i++) {
      // One assertion per message would make 20 000; check first, report the first miss.
      if (fromClient[i]!.byteLength !== 4 || readU32(fromClient[i]!) !== i) assert.unreachable(`message ${i} from the client is ${readU32(fromClient[i]!)}`);
      if (fromServer[i]!.byteLength !== 4 || readU32(fromServer[i]!) !== N - i) assert.unreachable(`message ${i} from the server is ${readU32(fromServer[i]!)}`);
    }
    client.close();
    server.close();
    await Promise.all([client.closed, server.closed]);
    await sleep(5);
    assert.is(writtenByClient, N, "the client's onWritten ran once per send");
    assert.is(writtenByServer, N, "the server's onWritten ran once per send");
  });

  // The last: a write at nearly every message, in the middle of the tick that queues them (sockets).
  for (const opts of [{ coalesceMaxBytes: 16 * KiB }, { coalesceMaxBytes: 0 }, { writeEagerBytes: 100 }]) {
    t(`message boundaries are kept: sizes 0, 1, 7 and 64 KiB + 3 mixed (${JSON.stringify(opts)})`, async (ctx) => {
      const l = await ctx.listen(opts);
      ctx.echo(l);
      const c = await ctx.connect(l.address, opts);
      const sizes = [0, 1, 7, 64 * KiB + 3];
      const sent: Uint8Array[] = [];
      for (let i = 0; i < 400; i++) sent.push(pattern(i, sizes[(i * 7 + (i >> 3)) % 4]!));
      const back = receive(c, sent.length);
      for (const m of sent) c.send([m]);
      const got = await back;
      got.forEach((m, i) => {
        assert.is(m.byteLength, sent[i]!.byteLength, `size of message ${i}`);
        assert.ok(sameBytes(m, sent[i]!), `content of message ${i}`);
      });
    });
  }

  t("reserve / commit: messages encoded in place arrive in order among sent ones, over many batches; a send cancels a reservation; too large or closed is refused", async (ctx) => {
    const { client, server } = await ctx.pair();
    assert.ok(client.reserve !== undefined && client.commit !== undefined, "every transport encodes in place");
    const expected: Uint8Array[] = [];
    const put = (m: Uint8Array): void => {
      const buf = client.reserve!(m.byteLength);
      assert.ok(buf !== undefined, `a message of ${m.byteLength} bytes has room`);
      buf.set(m, client.reservedOffset!);
      client.commit!();
      expected.push(m);
    };
    const N = 3000;
    for (let i = 0; i < N; i++) {
      if (i % 10 === 0) {
        const m = pattern(i, i % 3);
        client.send([m]);
        expected.push(m);
        continue;
      }
      if (i % 97 === 0) {
        // Reserved and written, then a send: the reservation is gone and never sent.
        const buf = client.reserve!(8)!;
        buf.fill(0xdd, client.reservedOffset!, client.reservedOffset! + 8);
        const m = pattern(i, 5);
        client.send([m]);
        expected.push(m);
        try {
          client.commit!();
          assert.unreachable("commit after a send");
        } catch (err) {
          assert.is((err as KoalaError).code, "KOALA_ERR_INVALID_ARGUMENT");
          assert.match((err as Error).message, /without a reservation/);
        }
      }
      if (i % 500 === 1) {
        const big = pattern(i, 20 * KiB + 1);
        client.send([big]);
        expected.push(big);
      }
      put(pattern(i, i % 301));
      // Several ticks, so that several send batches are filled in place and flushed.
      if (i % 700 === 0) await sleep(0);
    }
    // Messages that arrived before this are queued for the receiver, in order.
    const messages = await receive(server, expected.length);
    assert.is(messages.length, expected.length);
    messages.forEach((m, i) => {
      if (!sameBytes(m, expected[i]!)) assert.unreachable(`message ${i}: ${m.byteLength} bytes, expected ${expected[i]!.byteLength}`);
    });
    assert.is(client.reserve!(client.options.maxMessageBytes + 1), undefined, "a message over the limit: send() reports it");
    client.close();
    assert.is(thrownCode(() => client.reserve!(1)), "KOALA_ERR_CLOSED", "reserve after close");
  });

  t("a message sent as several parts arrives as their concatenation, and the parts may change after onWritten", async (ctx) => {
    const { client, server } = await ctx.pair();
    const backing = pattern(9, 300 * KiB);
    const cases: Uint8Array[][] = [
      [],
      [new Uint8Array(0)],
      [text("ab"), new Uint8Array(0), text("cde")],
      Array.from({ length: 10 }, (_, i) => pattern(i, i + 1)),
      [pattern(1, 64 * KiB), new Uint8Array([1]), pattern(2, 100 * KiB + 5)],
      [new Uint8Array([42]), pattern(3, 2 * MiB)],
      // Views into one larger buffer, at odd offsets.
      [backing.subarray(3, 1003), backing.subarray(200 * KiB + 1, 300 * KiB - 1), backing.subarray(7, 8)],
    ];
    const expected = cases.map((parts) => Buffer.concat(parts.map((p) => Buffer.from(p))));
    const got = receive(server, cases.length);
    let written = 0;
    for (const parts of cases) {
      client.send(parts, () => {
        written++;
        // The transport is done with the parts: reusing their memory must not touch the message.
        for (const p of parts) p.fill(0xee);
      });
    }
    const messages = await got;
    messages.forEach((m, i) => assert.ok(sameBytes(m, expected[i]!), `message ${i}: ${m.byteLength} bytes, expected ${expected[i]!.byteLength}`));
    await until(() => written === cases.length, "every onWritten");
  });

  t("onWritten runs exactly once for a message dropped by close(reason), and never for a refused send", async (ctx) => {
    // The server does not read, so big messages stay queued on the client's side.
    const { client, server } = await ctx.pair({ receiveQueueMessages: 1 });
    let written = 0;
    const n = 40;
    for (let i = 0; i < n; i++) client.send([pattern(i, 256 * KiB)], () => written++);
    assert.throws(() => client.send([new Uint8Array(client.options.maxMessageBytes + 1)], () => written++), (e: unknown) => (e as KoalaError).code === "KOALA_ERR_MESSAGE_TOO_LARGE");
    client.close(new Error("giving up"));
    assert.throws(() => client.send([new Uint8Array(1)], () => written++), (e: unknown) => (e as KoalaError).code === CLOSED);
    await client.closed;
    await server.closed;
    await sleep(5);
    assert.is(written, n);
  });

  t("onWritten runs exactly once for messages dropped because the peer dropped the connection", async (ctx) => {
    const { client, server } = await ctx.pair({ receiveQueueMessages: 1 });
    let written = 0;
    const n = 40;
    for (let i = 0; i < n; i++) client.send([pattern(i, 256 * KiB)], () => written++);
    server.close(new Error("the peer gives up"));
    const reason = await client.closed;
    assert.ok([...abortCodes, PEER_CLOSED].includes(reason.code), `the writer saw ${reason.code}`);
    await sleep(5);
    assert.is(written, n);
  });

  t("a 64 MiB message arrives intact and is echoed back", async (ctx) => {
    const opts = { maxMessageBytes: 64 * MiB };
    const l = await ctx.listen(opts);
    const hashesAtServer: string[] = [];
    l.onConnection((c) => {
      ctx.track(c);
      c.onMessage((m) => {
        hashesAtServer.push(sha(m));
        c.send([m]);
      });
    });
    const c = await ctx.connect(l.address, opts);
    const big = new Uint8Array(64 * MiB);
    const words = new Uint32Array(big.buffer);
    for (let i = 0; i < words.length; i++) words[i] = Math.imul(i, 2654435761);
    const expected = sha(big);
    const reply = receive(c, 1);
    c.send([big.subarray(0, 1000), big.subarray(1000, 33 * MiB), big.subarray(33 * MiB)]);
    const [back] = await reply;
    assert.equal(hashesAtServer, [expected], "the server got it whole");
    assert.is(back!.byteLength, big.byteLength);
    assert.is(sha(back!), expected, "and the echo came back whole");
  });

  t("1,000 concurrent connections to one listener each echo one message", async (ctx) => {
    const n = 1000;
    if (sockets) {
      // Both ends live in this process: 2 descriptors per connection. CI raises the limit
      // (`ulimit -n` in .ci/run); a shell with the common default of 1024 cannot run this test.
      const limit = openFilesLimit();
      assert.ok(limit === undefined || limit >= 2 * n + 200, `this test needs ${2 * n + 200} open files; \`ulimit -n\` is ${limit}: raise it (ulimit -n 4096)`);
    }
    const l = await ctx.listen();
    const accepted = ctx.echo(l);
    const conns = await Promise.all(Array.from({ length: n }, () => ctx.connect(l.address)));
    const replies = await Promise.all(
      conns.map((c, i) => {
        const r = receive(c, 1);
        c.send([text(`connection ${i}`)]);
        return r;
      }),
    );
    replies.forEach(([r], i) => assert.is(str(r!), `connection ${i}`));
    assert.is(accepted.length, n);
  });

  t("a slow reader bounds the writer's buffer and the reader's queue; everything arrives", async (ctx) => {
    const hwm = 256 * KiB;
    const queueMessages = 8;
    const messageBytes = 64 * KiB;
    const count = (256 * MiB) / messageBytes;
    const { client, server } = await ctx.pair({ highWaterMarkBytes: hwm, receiveQueueMessages: queueMessages }, { highWaterMarkBytes: hwm });
    // Bodies are shared by many messages, so they are never changed; the sequence number is a part of its own.
    const bodies = Array.from({ length: 16 }, (_, k) => new Uint8Array(messageBytes - 4).fill(k + 1));

    let received = 0;
    let receivedBytes = 0;
    let problems = 0;
    let burst = 0;
    const done = new Promise<void>((resolve) => {
      server.onMessage((m) => {
        const k = received % 16;
        if (m.byteLength !== messageBytes || readU32(m) !== received || m[4] !== k + 1 || m[m.byteLength - 1] !== k + 1) problems++;
        received++;
        receivedBytes += m.byteLength;
        burst++;
        if (received === count) resolve();
      });
    });

    let writerWaiting = false;
    let maxBuffered = 0;
    const writer = (async () => {
      for (let i = 0; i < count; i++) {
        const ok = client.send([u32(i), bodies[i % 16]!]);
        maxBuffered = Math.max(maxBuffered, client.bufferedBytes);
        if (!ok) {
          writerWaiting = true;
          await client.drain();
          writerWaiting = false;
          maxBuffered = Math.max(maxBuffered, client.bufferedBytes);
        }
      }
    })();

    // The reader stops 8 times; each time the writer must end up waiting in drain(), and what
    // the reader finds queued when it resumes (all delivered inside resume()) must stay small.
    let maxQueued = 0;
    for (let p = 1; p <= 8; p++) {
      await until(() => received >= (p * count) / 9, "the reader's progress");
      server.pause();
      await sleep(20);
      await until(() => writerWaiting, "the writer to wait for drain()");
      burst = 0;
      server.resume();
      maxQueued = Math.max(maxQueued, burst);
    }
    await writer;
    await done;
    await until(() => client.bufferedBytes === 0, "bufferedBytes back to 0 once everything was written");
    await client.drain();
    assert.is(received, count);
    assert.is(receivedBytes, count * messageBytes);
    assert.is(problems, 0, "messages in order and unchanged");
    assert.ok(maxBuffered <= hwm + messageBytes + 64, `the writer buffered up to ${maxBuffered} bytes (high-water mark ${hwm})`);
    // A socket may already have read one more chunk (at most 64 KiB) when its queue fills; the
    // chunk is decoded whole, and it can complete one more message of this size.
    const slack = sockets ? 1 : 0;
    assert.ok(maxQueued <= queueMessages + slack, `the reader found up to ${maxQueued} messages queued (receiveQueueMessages ${queueMessages})`);
  });

  t("pause(), resume(), onMessage(null) and for await hold and deliver messages in order", async (ctx) => {
    const { client, server } = await ctx.pair();
    server.pause();
    const got = collectAll(server);
    for (let i = 0; i < 10; i++) client.send([u32(i)]);
    await roundTrip(server, client, "the server is still there");
    await sleep(10);
    assert.is(got.length, 0, "nothing is delivered while paused");
    server.resume();
    await until(() => got.length === 10, "10 messages after resume()");
    assert.equal(got.map(readU32), [...Array(10).keys()]);

    server.onMessage(null);
    for (let i = 10; i < 20; i++) client.send([u32(i)]);
    await roundTrip(server, client, "again");
    const later = await receive(server, 10);
    assert.equal(later.map(readU32), [...Array(10).keys()].map((i) => i + 10), "messages queued without a receiver go to the next one");

    // Iteration and a receiver are exclusive; after the loop ends, a receiver can be set again.
    const it = server[Symbol.asyncIterator]();
    assert.is(thrownCode(() => server.onMessage(() => undefined)), "KOALA_ERR_INVALID_ARGUMENT");
    client.send([u32(20)]);
    assert.is(readU32((await it.next()).value as Uint8Array), 20);
    server.pause();
    const held = it.next();
    client.send([u32(21)]);
    await roundTrip(server, client, "while the iterator is paused");
    let settled = false;
    void held.then(() => (settled = true));
    await sleep(10);
    assert.not.ok(settled, "a paused iterator waits");
    server.resume();
    assert.is(readU32((await held).value as Uint8Array), 21);
    await it.return?.();
    const last = receive(server, 1);
    client.send([u32(22)]);
    assert.is(readU32((await last)[0]!), 22);
  });

  t("messages queued while paused are delivered after the peer's orderly close, to a receiver or an iterator", async (ctx) => {
    for (const reader of ["receiver", "iterator"] as const) {
      const { client, server } = await ctx.pair();
      server.pause();
      const got: number[] = [];
      const it = reader === "iterator" ? server[Symbol.asyncIterator]() : undefined;
      const first = it?.next();
      if (it === undefined) server.onMessage((m) => got.push(readU32(m)));
      for (let i = 0; i < 5; i++) client.send([u32(i)]);
      client.close();
      assert.is((await server.closed).code, PEER_CLOSED);
      assert.is(got.length, 0, "nothing while paused");
      server.resume();
      if (it !== undefined) {
        const r = await first!;
        assert.not.ok(r.done, "the paused iterator gets the first queued message, not the end");
        got.push(readU32(r.value as Uint8Array));
        for (let r2 = await it.next(); !r2.done; r2 = await it.next()) got.push(readU32(r2.value as Uint8Array));
      }
      assert.equal(got, [0, 1, 2, 3, 4], `${reader}: every queued message, in order`);
    }
  });

  t("a connection describes itself: transport, addresses, resolved options", async (ctx) => {
    const { listener, client, server } = await ctx.pair({ highWaterMarkBytes: 12_345 }, { highWaterMarkBytes: 54_321, receiveQueueMessages: 7 });
    assert.is(client.transport, name);
    assert.is(server.transport, name);
    assert.is(client.remoteAddress, listener.address);
    assert.is(server.localAddress, listener.address);
    assert.ok(client.localAddress.length > 0 && server.remoteAddress.length > 0);
    if (name !== "unix") assert.is(server.remoteAddress, client.localAddress, "each end names the other");
    assert.is(client.options.highWaterMarkBytes, 54_321);
    assert.is(client.options.receiveQueueMessages, 7);
    assert.is(client.options.maxMessageBytes, 64 * MiB, "defaults are filled in");
    assert.is(server.options.highWaterMarkBytes, 12_345, "an accepted connection has its listener's options");
    assert.ok(Object.isFrozen(client.options));
    assert.not.ok(client.isClosed);
    assert.ok(client.bufferedBytes >= 0);
  });

  // ---- closing ------------------------------------------------------------------------------

  for (const closer of ["client", "server"] as const) {
    t(`an orderly close by the ${closer}: every message sent before it arrives, then the peer sees KOALA_ERR_PEER_CLOSED`, async (ctx) => {
      const pair = await ctx.pair({ receiveQueueMessages: 4 });
      const [a, b] = closer === "client" ? [pair.client, pair.server] : [pair.server, pair.client];
      // More than the buffers hold, so close() has to wait for the slow peer to flush them.
      const sent: Uint8Array[] = [];
      for (let i = 0; i < 300; i++) sent.push(pattern(i, i % 3 === 0 ? 64 * KiB : i));
      for (const m of sent) a.send([m]);
      a.close();
      assert.ok(a.isClosed, "isClosed at once");
      assert.is(thrownCode(() => a.send([new Uint8Array(1)])), CLOSED, "send() after close()");
      assert.is(await codeOf(a.drain()), CLOSED, "drain() after close()");
      a.close();
      a.close(new Error("a second close changes nothing"));
      // The peer reads only now, with for await, which ends at the orderly close.
      const got: Uint8Array[] = [];
      for await (const m of b) got.push(m);
      assert.is(got.length, sent.length, "every message sent before close() arrived");
      got.forEach((m, i) => assert.ok(sameBytes(m, sent[i]!), `message ${i}`));
      const [mine, theirs] = await Promise.all([a.closed, b.closed]);
      assert.is(mine.code, CLOSED);
      assert.is(theirs.code, PEER_CLOSED);
      assert.ok(b.isClosed);
      assert.is(thrownCode(() => b.send([new Uint8Array(1)])), CLOSED, "send() after the peer closed");
    });
  }

  t("close(reason) drops at once: KOALA_ERR_CLOSED with the reason here, a non-orderly end there", async (ctx) => {
    const { client, server } = await ctx.pair();
    await roundTrip(client, server);
    const iterating = (async () => {
      let n = 0;
      for await (const _ of server) n++;
      return n;
    })();
    // Observed now: it may reject before the assertions below look at it.
    const iterationEnd = codeOf(iterating);
    const why = new Error("giving up");
    client.close(why);
    const mine = await client.closed;
    assert.is(mine.code, CLOSED);
    assert.match(mine.message, /giving up/);
    assert.is(mine.cause, why);
    const theirs = await server.closed;
    assert.ok(abortCodes.includes(theirs.code), `the peer saw ${theirs.code}: ${theirs.message}`);
    assert.is(await iterationEnd, theirs.code === RESET ? RESET : "resolved", "for await throws at a reset and ends at an end of stream");
    assert.is(thrownCode(() => server.send([new Uint8Array(1)])), CLOSED);
  });

  t("drain() waiters reject when the connection closes, from either side", async (ctx) => {
    for (const side of ["local", "peer"] as const) {
      const { client, server } = await ctx.pair({ receiveQueueMessages: 1, highWaterMarkBytes: 64 * KiB }, { highWaterMarkBytes: 64 * KiB });
      // The server does not read: the client sends until drain() no longer resolves.
      const chunk = new Uint8Array(256 * KiB);
      let pending: Promise<void> | undefined;
      for (let i = 0; i < 1000 && pending === undefined; i++) {
        if (client.send([chunk])) continue;
        const d = client.drain();
        let drained = false;
        void d.then(() => (drained = true), () => undefined);
        await sleep(20);
        if (!drained) pending = d;
      }
      assert.ok(pending !== undefined, "the writer is held up by a peer that does not read");
      if (side === "local") {
        client.close();
        assert.is(await codeOf(pending!), CLOSED);
      } else {
        server.close(new Error("peer gives up"));
        const code = await codeOf(pending!);
        assert.ok([...abortCodes, PEER_CLOSED].includes(code), `drain() rejected with ${code} when the peer dropped the connection`);
      }
      client.close(new Error("done"));
      server.close(new Error("done"));
    }
  });

  t("both sides closing at once each see KOALA_ERR_CLOSED; one-sided access after close fails with it", async (ctx) => {
    const { client, server } = await ctx.pair({ oneSided: true });
    const region = server.registerRegion(new Uint8Array(16), { access: "readwrite" });
    const inFlight = codeOf(client.read(region.descriptor, 0, 4));
    client.close();
    server.close();
    const [a, b] = await Promise.all([client.closed, server.closed]);
    assert.is(a.code, CLOSED);
    assert.is(b.code, CLOSED);
    const flight = await inFlight;
    assert.ok(flight === CLOSED || flight === "resolved", `a read in flight at close() ended with ${flight}`);
    assert.is(await codeOf(client.read(region.descriptor, 0, 4)), CLOSED);
    assert.is(await codeOf(server.write(region.descriptor, 0, new Uint8Array(1))), CLOSED);
  });

  // ---- errors -------------------------------------------------------------------------------

  t("connecting where nobody listens is a clear error", async (ctx) => {
    const l = await ctx.listen();
    const address = l.address;
    await l.close();
    const err = await errorOf(connect(address));
    assert.ok(err.message.includes(address), `the error names the address: ${err.message}`);
    // A closed listener removed its socket file: the path does not exist (ENOENT).
    assert.is(err.code, name === "unix" ? "KOALA_ERR_HOST_NOT_FOUND" : "KOALA_ERR_CONNECTION_REFUSED");
    if (name === "unix") {
      // A path that exists but where nobody listens is refused, as a closed TCP port is.
      const plain = makeAddress().slice("unix:".length);
      writeFileSync(plain, "not a socket");
      ctx.defer(() => unlinkSync(plain));
      assert.is(await codeOf(connect(`unix:${plain}`)), "KOALA_ERR_CONNECTION_REFUSED", "a plain file");
      const live = await ctx.listen();
      const stale = `${live.address.slice("unix:".length)}.stale`;
      linkSync(live.address.slice("unix:".length), stale);
      ctx.defer(() => existsSync(stale) && unlinkSync(stale));
      await live.close();
      assert.is(await codeOf(connect(`unix:${stale}`)), "KOALA_ERR_CONNECTION_REFUSED", "a socket file left by a listener that is gone");
    }
  });

  t("an oversized send throws KOALA_ERR_MESSAGE_TOO_LARGE and the connection stays usable", async (ctx) => {
    const opts = { maxMessageBytes: 1000 };
    const l = await ctx.listen(opts);
    ctx.echo(l);
    const c = await ctx.connect(l.address, opts);
    let written = 0;
    const err = (() => {
      try {
        c.send([new Uint8Array(600), new Uint8Array(401)], () => written++);
      } catch (e) {
        return e as KoalaError;
      }
      return undefined;
    })();
    assert.is(err?.code, "KOALA_ERR_MESSAGE_TOO_LARGE");
    assert.match(err!.message, /1001/);
    assert.is(written, 0);
    assert.not.ok(c.isClosed);
    const back = receive(c, 1);
    c.send([new Uint8Array(1000).fill(3)]);
    assert.is((await back)[0]!.byteLength, 1000, "a message of exactly maxMessageBytes goes through");
  });

  t("a message over the receiver's maxMessageBytes closes that connection only, with KOALA_ERR_MESSAGE_TOO_LARGE", async (ctx) => {
    await quietly(async () => {
      const l = await ctx.listen({ maxMessageBytes: 1000 });
      const accepted = ctx.echo(l);
      const c = await ctx.connect(l.address, { maxMessageBytes: 4000 });
      await echoTrip(c, "small");
      c.send([new Uint8Array(2000)]);
      const theirs = await accepted[0]!.closed;
      assert.is(theirs.code, "KOALA_ERR_MESSAGE_TOO_LARGE");
      assert.match(theirs.message, /2000/);
      const mine = await c.closed;
      assert.ok(abortCodes.includes(mine.code), `the sender saw ${mine.code}`);
      const fresh = await ctx.connect(l.address, { maxMessageBytes: 1000 });
      await echoTrip(fresh, "still serving");
    });
  });

  t("options are checked: an unknown key or a bad value is an error naming it", async (ctx) => {
    const l = await ctx.listen();
    const typo = await errorOf(connect(l.address, { maxMesageBytes: 5 } as TransportOptions));
    assert.is(typo.code, "KOALA_ERR_INVALID_ARGUMENT");
    assert.match(typo.message, /unknown option "maxMesageBytes" \(did you mean "maxMessageBytes"\?\)/);
    const onListen = await errorOf(listen(makeAddress(), { highWaterMark: 1 } as TransportOptions));
    assert.is(onListen.code, "KOALA_ERR_INVALID_ARGUMENT");
    assert.match(onListen.message, /"highWaterMark"/);
    const value = await errorOf(connect(l.address, { receiveQueueMessages: 0 }));
    assert.is(value.code, "KOALA_ERR_INVALID_ARGUMENT");
    assert.match(value.message, /"receiveQueueMessages"/);
    assert.is(await codeOf(connect(l.address, "fast" as TransportOptions)), "KOALA_ERR_INVALID_ARGUMENT");
  });

  t("a receiver or connection handler that throws closes only its own connection", async (ctx) => {
    await quietly(async () => {
      const l = await ctx.listen();
      const reasons: Promise<KoalaError>[] = [];
      let handled = 0;
      let afterFailure = 0;
      l.onConnection((c) => {
        ctx.track(c);
        if (handled++ === 2) throw new Error("handler bug");
        reasons.push(c.closed);
        c.onMessage((m) => {
          if (m[0] === 0xbb) throw new Error("receiver bug");
          if (m[0] === 0xbc) afterFailure++;
          c.send([m]);
        });
      });
      const bad = await ctx.connect(l.address);
      const good = await ctx.connect(l.address);
      bad.send([new Uint8Array([0xbb])]);
      bad.send([new Uint8Array([0xbc])]);
      const own = await reasons[0]!;
      assert.is(own.code, "KOALA_ERR_RECEIVER_FAILED");
      assert.match(own.message, /receiver bug/);
      assert.ok([RESET, PEER_CLOSED].includes((await bad.closed).code));
      await echoTrip(good, "other connections keep being served");
      // The third connection's handler throws: that connection is closed, the listener goes on.
      const third = await ctx.connect(l.address);
      assert.ok([RESET, PEER_CLOSED].includes((await third.closed).code), "a connection whose handler threw is closed");
      const fourth = await ctx.connect(l.address);
      await echoTrip(fourth, "the listener goes on");
      await echoTrip(good, "and so does the good connection");
      assert.is(afterFailure, 0, "a receiver that threw gets no further messages");
    });
  });

  // ---- one-sided ----------------------------------------------------------------------------

  t("one-sided read and write on a region the peer registered: correct results", async (ctx) => {
    const { client, server } = await ctx.pair({ oneSided: true });
    const owned = pattern(5, 64 * KiB);
    const original = owned.slice();
    const rw = server.registerRegion(owned, { access: "readwrite" });
    const roBytes = new Uint8Array(256).fill(7);
    const ro = server.registerRegion(roBytes);
    const descriptors = receive(client, 1);
    server.send([encodeDescriptor(rw.descriptor), encodeDescriptor(ro.descriptor)]);
    const [msg] = await descriptors;
    const rwd = decodeDescriptor(msg!.subarray(0, DESCRIPTOR_BYTES));
    const rod = decodeDescriptor(msg!.subarray(DESCRIPTOR_BYTES, 2 * DESCRIPTOR_BYTES));
    assert.equal(rwd, rw.descriptor);
    assert.equal(rod, ro.descriptor);

    assert.ok(sameBytes(await client.read(rwd, 0, owned.byteLength), original), "the whole region");
    assert.ok(sameBytes(await client.read(rwd, 1000, 10), original.subarray(1000, 1010)), "a slice");
    assert.is((await client.read(rwd, owned.byteLength, 0)).byteLength, 0, "0 bytes at the very end");
    const snapshot = await client.read(rwd, 0, 8);
    owned[0] = owned[0]! ^ 0xff;
    assert.is(snapshot[0], original[0], "a read result is a copy");
    owned[0] = original[0]!;

    await client.write(rwd, 100, new Uint8Array([0xaa, 0xbb]));
    assert.equal([...owned.subarray(99, 103)], [original[99], 0xaa, 0xbb, original[102]]);
    // Like RDMA, a write may send straight from `block`: it stays unchanged until write() settles.
    const block = pattern(77, 32 * KiB);
    await client.write(rwd, 1001, block);
    assert.ok(sameBytes(owned.subarray(1001, 1001 + 32 * KiB), block));
    assert.ok(sameBytes(await client.read(rwd, 1001, 32 * KiB), block), "read back what was written");
    await client.write(rwd, owned.byteLength, new Uint8Array(0));

    const reads = await Promise.all(Array.from({ length: 50 }, (_, i) => client.read(rwd, i * 1000, 500 + i)));
    reads.forEach((r, i) => assert.ok(sameBytes(r, owned.subarray(i * 1000, i * 1000 + 500 + i)), `concurrent read ${i}`));
    assert.ok(sameBytes(await client.read(rod, 0, 256), roBytes), "a read-only region can be read");

    // The other way round: the server reads and writes what the client registered.
    const mine = client.registerRegion(text("client-side bytes"), { access: "readwrite" });
    const d = receive(server, 1);
    client.send([encodeDescriptor(mine.descriptor)]);
    const md = decodeDescriptor((await d)[0]!);
    await server.write(md, 0, text("CLIENT"));
    assert.is(str(await server.read(md, 0, md.length)), "CLIENT-side bytes");
  });

  t("one-sided access is opt-in, scoped to the connection it was shared on, and guessing keys gets a peer cut off", async (ctx) => {
    // Off by default: nothing can be registered, and a forged request is refused.
    const plain = await ctx.pair();
    assert.is(thrownCode(() => plain.server.registerRegion(new Uint8Array(8))), "KOALA_ERR_INVALID_ARGUMENT");
    const forged = { key: 12345n, address: 0n, length: 8, access: "read" as const };
    assert.is(await quietly(() => codeOf(plain.client.read(forged, 0, 1))), "KOALA_ERR_REMOTE_ACCESS_DENIED");
    if (nicChecked) assert.is((await plain.client.closed).code, "KOALA_ERR_REMOTE_ACCESS_DENIED", "the queue pair is in the error state");
    else await roundTrip(plain.client, plain.server, "after a refused request");

    // A region shared with one client is not reachable from another client of the same listener.
    const listener = await ctx.listen({ oneSided: true });
    const accepted = listener.accept();
    const first = await ctx.connect(listener.address);
    const firstServer = ctx.track(await accepted);
    const acceptedToo = listener.accept();
    const second = await ctx.connect(listener.address);
    ctx.track(await acceptedToo);
    const secret = text("only for the first client");
    const region = firstServer.registerRegion(secret);
    assert.is(str(await first.read(region.descriptor, 0, secret.byteLength)), "only for the first client");
    assert.is(await quietly(() => codeOf(second.read(region.descriptor, 0, secret.byteLength))), nicChecked ? "KOALA_ERR_REMOTE_ACCESS_DENIED" : "KOALA_ERR_REGION_NOT_FOUND", "another connection");

    // A peer that keeps naming keys it was never given is dropped after a bounded number of tries.
    const tries: Promise<string>[] = [];
    for (let i = 0; i < 100; i++) tries.push(codeOf(second.read({ ...region.descriptor, key: BigInt(i + 1) }, 0, 1)));
    const codes = await Promise.all(tries);
    assert.ok(codes.filter((c) => c === "KOALA_ERR_REGION_NOT_FOUND").length <= 64, "at most 64 unknown keys are answered");
    assert.ok(second.isClosed || (await within(second.closed, 5000, "the guessing peer is dropped")) !== undefined);
    // The first client is not affected, and closing its connection revokes the region.
    assert.is(str(await first.read(region.descriptor, 0, 4)), "only");
    first.close();
    await firstServer.closed;
    assert.not.ok(region.registered, "a region dies with its connection");
  });

  t("one-sided violations fail with stable codes and the connection keeps working after each", async (ctx) => {
    const owned = pattern(6, 4096);
    const roBytes = new Uint8Array(64).fill(7);
    // A pair with its regions; on rdma a fresh one after each violation only the owner's NIC sees.
    const setup = async () => {
      const { client, server } = await ctx.pair({ maxMessageBytes: 128 * KiB, oneSided: true });
      const rw = server.registerRegion(owned, { access: "readwrite" });
      const ro = server.registerRegion(roBytes);
      return { client, server, rwd: rw.descriptor, rod: ro.descriptor, big: server.registerRegion(new Uint8Array(256 * KiB)) };
    };
    let { client, server, rwd, rod, big } = await setup();
    let checks = 0;
    const stillWorks = async (after: string): Promise<void> => {
      await roundTrip(client, server, `after ${after}`);
      await roundTrip(server, client, `back after ${after}`);
      assert.ok(sameBytes(await client.read(rwd, 10, 20), owned.subarray(10, 30)), `a valid read after ${after}`);
      assert.not.ok(client.isClosed || server.isClosed, `still open after ${after}`);
      checks++;
    };
    /** On rdma, what only the owner can check closes the connection (see the module comment). */
    const ownerRefuses = async (what: string, op: () => Promise<unknown>, code: string): Promise<void> => {
      if (!nicChecked) {
        assert.is(await codeOf(op()), code, what);
        return stillWorks(what);
      }
      await quietly(async () => {
        assert.is(await codeOf(op()), "KOALA_ERR_REMOTE_ACCESS_DENIED", what);
        assert.is((await client.closed).code, "KOALA_ERR_REMOTE_ACCESS_DENIED", `${what}: the requester's connection is closed`);
      });
      ({ client, server, rwd, rod, big } = await setup());
      return stillWorks(`${what}, on a new connection`);
    };
    const ownerChecked = new Set(["a read the owner finds out of bounds", "a write the owner finds out of bounds", "a write the owner finds read-only", "a read of an unknown key", "a write to an unknown key"]);
    const violations: [string, () => Promise<unknown>, string][] = [
      ["a read past the end", () => client.read(rwd, 4090, 10), "KOALA_ERR_OUT_OF_BOUNDS"],
      ["a read at a negative offset", () => client.read(rwd, -1, 4), "KOALA_ERR_OUT_OF_BOUNDS"],
      ["a read starting past the end", () => client.read(rwd, 4097, 0), "KOALA_ERR_OUT_OF_BOUNDS"],
      ["a read with a negative length", () => client.read(rwd, 0, -1), "KOALA_ERR_OUT_OF_BOUNDS"],
      ["a read at a fractional offset", () => client.read(rwd, 1.5, 1), "KOALA_ERR_OUT_OF_BOUNDS"],
      ["a write past the end", () => client.write(rwd, 4095, new Uint8Array(2)), "KOALA_ERR_OUT_OF_BOUNDS"],
      ["a write at a negative offset", () => client.write(rwd, -8, new Uint8Array(4)), "KOALA_ERR_OUT_OF_BOUNDS"],
      // A descriptor that claims more than was registered: the owner's check catches it.
      ["a read the owner finds out of bounds", () => client.read({ ...rwd, length: 1 << 20 }, 5000, 8), "KOALA_ERR_OUT_OF_BOUNDS"],
      ["a write the owner finds out of bounds", () => client.write({ ...rwd, length: 1 << 20 }, 4093, new Uint8Array(8)), "KOALA_ERR_OUT_OF_BOUNDS"],
      ["a write to a read-only region", () => client.write(rod, 0, new Uint8Array([1])), "KOALA_ERR_REMOTE_ACCESS_DENIED"],
      ["a write the owner finds read-only", () => client.write({ ...rod, access: "readwrite" }, 0, new Uint8Array([1])), "KOALA_ERR_REMOTE_ACCESS_DENIED"],
      ["a read of an unknown key", () => client.read({ ...rwd, key: rwd.key ^ 1n }, 0, 1), "KOALA_ERR_REGION_NOT_FOUND"],
      ["a write to an unknown key", () => client.write({ ...rwd, key: rwd.key ^ 2n }, 0, new Uint8Array(1)), "KOALA_ERR_REGION_NOT_FOUND"],
      ["a read over maxMessageBytes", () => client.read(big.descriptor, 0, 200 * KiB), "KOALA_ERR_MESSAGE_TOO_LARGE"],
    ];
    for (const [what, op, code] of violations) {
      if (ownerChecked.has(what)) {
        await ownerRefuses(what, op, code);
      } else {
        assert.is(await codeOf(op()), code, what);
        await stillWorks(what);
      }
    }
    assert.ok(sameBytes(roBytes, new Uint8Array(64).fill(7)), "the read-only region is unchanged");

    // Revocation: the region worked, is deregistered, and then is gone for reads and writes.
    for (const kind of ["read", "write"] as const) {
      const revocable = server.registerRegion(pattern(8, 128), { access: "readwrite" });
      assert.is((await client.read(revocable.descriptor, 0, 128)).byteLength, 128);
      revocable.deregister();
      assert.not.ok(revocable.registered);
      const op = () => (kind === "read" ? client.read(revocable.descriptor, 0, 1) : client.write(revocable.descriptor, 0, new Uint8Array(1)));
      await ownerRefuses(`a ${kind} after deregister()`, op, "KOALA_ERR_REGION_NOT_FOUND");
    }
    assert.is(checks, violations.length + 2);
  });

  // ---- listener -----------------------------------------------------------------------------

  t("listener: real address, accept(), for await, onConnection; close() stops accepting only", async (ctx) => {
    const asked = makeAddress();
    const l = await ctx.listen(undefined, asked);
    assert.is(l.transport, name);
    if (name === "tcp" || name === "tls" || name === "rdma") {
      const m = new RegExp(`^${name}://127\\.0\\.0\\.1:(\\d+)$`).exec(l.address);
      assert.ok(m !== null && Number(m[1]) > 0 && Number(m[1]) < 65536, `a real port: ${l.address}`);
    } else {
      assert.is(l.address, asked);
    }

    // accept() waiting before the connection, and called after it arrived.
    const a = l.accept();
    const c1 = await ctx.connect(l.address);
    const s1 = ctx.track(await a);
    await roundTrip(c1, s1);
    const c2 = await ctx.connect(l.address);
    const s2 = ctx.track(await l.accept());
    await roundTrip(s2, c2);

    // for await over the listener.
    const seen: Connection[] = [];
    const loop = (async () => {
      for await (const c of l) {
        seen.push(ctx.track(c));
        c.onMessage((m) => c.send([m]));
        if (seen.length === 3) break;
      }
    })();
    const three = await Promise.all([0, 1, 2].map(() => ctx.connect(l.address)));
    await loop;
    assert.is(seen.length, 3);
    for (const [i, c] of three.entries()) await echoTrip(c, `iterated ${i}`);

    // onConnection takes every connection while set; accept() works again after it is removed.
    const handled: Connection[] = [];
    l.onConnection((c) => handled.push(ctx.track(c)));
    const c4 = await ctx.connect(l.address);
    await until(() => handled.length === 1, "the onConnection handler");
    await roundTrip(c4, handled[0]!);
    l.onConnection(null);
    const next = l.accept();
    const c5 = await ctx.connect(l.address);
    await roundTrip(c5, ctx.track(await next));

    // close(): waiting accept() and iteration end; connecting fails; existing connections live on.
    const pending = codeOf(l.accept());
    const iteration = (async () => {
      let n = 0;
      for await (const _ of l) n++;
      return n;
    })();
    await l.close();
    await l.close();
    assert.is(await pending, CLOSED);
    assert.is(await iteration, 0);
    assert.is(await codeOf(l.accept()), CLOSED);
    const refused = await codeOf(connect(l.address));
    assert.ok(["KOALA_ERR_CONNECTION_REFUSED", "KOALA_ERR_HOST_NOT_FOUND"].includes(refused), `connect after close: ${refused}`);
    await roundTrip(c1, s1, "after the listener closed");
    await roundTrip(s2, c2, "after the listener closed");
    await roundTrip(c4, handled[0]!, "after the listener closed");
  });

  t("listening on an address in use fails with KOALA_ERR_ADDRESS_IN_USE", async (ctx) => {
    const l = await ctx.listen();
    assert.is(await codeOf(listen(l.address)), "KOALA_ERR_ADDRESS_IN_USE");
    const a = l.accept();
    const c = await ctx.connect(l.address);
    await roundTrip(c, ctx.track(await a), "the first listener still serves");
  });

  // ---- raw sockets and dead peers (tcp, unix) ----------------------------------------------

  if (sockets) {
    const rawTarget = (address: string): net.NetConnectOpts =>
      name === "unix" ? { path: address.slice("unix:".length) } : { host: "127.0.0.1", port: Number(address.slice(address.lastIndexOf(":") + 1)) };

    /** Opens a raw socket (on tls, a TLS socket with the suite's CA), writes `bytes` (and ends when `end`), and resolves once the server has closed it. */
    const rawExchange = async (address: string, bytes: Uint8Array, end = false): Promise<void> => {
      const target = rawTarget(address) as net.TcpNetConnectOpts;
      const raw = name === "tls" ? tls.connect({ host: target.host, port: target.port, ca: hooks.connectOptions?.tls?.ca as tls.ConnectionOptions["ca"] }) : net.connect(target);
      raw.on("error", () => undefined);
      raw.resume();
      const closed = new Promise((r) => raw.once("close", r));
      await new Promise((r) => raw.once(name === "tls" ? "secureConnect" : "connect", r));
      if (end) raw.end(bytes);
      else raw.write(bytes);
      await within(closed, 5000, "the server closing a raw socket");
    };

    const frame = (kind: number, payload: Uint8Array, length = payload.byteLength): Buffer => {
      const b = Buffer.alloc(FRAME_HEADER_BYTES + payload.byteLength);
      writeFrameHeader(b, 0, length, kind as FrameKind);
      b.set(payload, FRAME_HEADER_BYTES);
      return b;
    };

    t("garbage and oversized frame headers from a raw socket close only that connection, with a clear reason", async (ctx) => {
      await quietly(async () => {
        const l = await ctx.listen({ maxMessageBytes: 1024 });
        const accepted = ctx.echo(l);
        const good = await ctx.connect(l.address, { maxMessageBytes: 1024 });
        const stillServing = (what: string): Promise<void> => echoTrip(good, `still serving after ${what}`);
        await until(() => accepted.length === 1, "the good connection");

        // Before any HELLO: nothing is accepted, the socket is just closed.
        await rawExchange(l.address, Buffer.from("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
        await stillServing("an HTTP request");
        await rawExchange(l.address, frame(FrameKind.HELLO, new Uint8Array(8), 0x7fffffff));
        await stillServing("a first header claiming 2 GiB");
        const badVersion = helloFrame();
        badVersion[FRAME_HEADER_BYTES + 5] = 99;
        await rawExchange(l.address, badVersion);
        await stillServing("a HELLO of protocol version 99");
        assert.is(accepted.length, 1, "none of those became a connection");

        // After a proper HELLO: the accepted connection ends with a reason that says what was wrong.
        const cases: [string, Buffer, string, RegExp, boolean][] = [
          ["an oversized header", frame(FrameKind.MESSAGE, new Uint8Array(0), 1 << 20), "KOALA_ERR_MESSAGE_TOO_LARGE", /1048576/, false],
          ["an unknown frame kind", Buffer.from("\x05\x00\x00\x00\x2f\x00\x00\x00hello"), "KOALA_ERR_PROTOCOL", /kind/, false],
          ["non-zero reserved header bytes", Buffer.from([1, 0, 0, 0, FrameKind.MESSAGE, 0, 9, 0, 1]), "KOALA_ERR_PROTOCOL", /reserved/, false],
          ["a message cut off by the end of the stream", Buffer.concat([frame(FrameKind.MESSAGE, text("whole")), frame(FrameKind.MESSAGE, new Uint8Array(10), 100)]), RESET, /./, true],
        ];
        for (const [what, bytes, code, pattern, end] of cases) {
          const before = accepted.length;
          await rawExchange(l.address, Buffer.concat([helloFrame(), bytes]), end);
          await until(() => accepted.length === before + 1, `the connection that sent ${what}`);
          const reason = await accepted[before]!.closed;
          assert.is(reason.code, code, what);
          assert.match(reason.message, pattern, `${what}: ${reason.message}`);
          await stillServing(what);
        }

        // A client that connects and says nothing is dropped after connectTimeoutMs.
        const strict = await ctx.listen({ connectTimeoutMs: 200 });
        await rawExchange(strict.address, new Uint8Array(0));

        const fresh = await ctx.connect(l.address, { maxMessageBytes: 1024 });
        await echoTrip(fresh, "the listener accepts new connections");
      });
    });

    t("a peer process killed mid-message: a reset, no partial message, the listener keeps serving", async (ctx) => {
      const size = 64 * MiB;
      // receiveQueueMessages 1: the first message stops the reading, so the big one is still
      // on its way (partly read, partly in the kernel, mostly in the child) when the child dies.
      const l = await ctx.listen({ maxMessageBytes: size, receiveQueueMessages: 1 });
      const accepted = l.accept();
      // The child trusts the test CA on tls (see the fixture).
      const child: ChildProcess = fork(new URL("../fixtures/transport/big-sender.ts", import.meta.url).pathname, [l.address, String(size)], {
        execArgv: ["--import", "tsx"],
        stdio: ["ignore", "inherit", "inherit", "ipc"],
      });
      const exited = new Promise((r) => child.once("exit", r));
      ctx.defer(() => child.exitCode === null && child.signalCode === null && child.kill("SIGKILL"));
      const server = ctx.track(await accepted);
      const started = await within(new Promise((r) => child.once("message", r)), 20_000, "the child to start sending");
      assert.equal(started, { sending: true });
      child.kill("SIGKILL");
      await exited;
      const got = collectAll(server);
      const reason = await server.closed;
      assert.is(reason.code, RESET, `a peer cut off mid-message is a reset: ${reason.code}: ${reason.message}`);
      assert.equal(got.map(str), ["first"], "only the whole message is delivered");

      const next = l.accept();
      const c = await ctx.connect(l.address);
      const s = ctx.track(await next);
      await roundTrip(c, s, "after the killed peer");
    });
  }

  s.run();
}
