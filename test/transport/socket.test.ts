/**
 * The tcp and unix transports on real sockets: echo, close reasons, errno mapping, stale socket
 * files, hostile raw sockets, backpressure and one-sided access. The shared conformance suite
 * covers the heavy cases (64 MiB, 1,000 connections, killed peers).
 */
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { ErrorCode, KoalaError } from "../../src/errors.js";
import { resetLogLevel } from "../../src/log.js";
import { FRAME_HEADER_BYTES, FrameKind, helloFrame, writeFrameHeader } from "../../src/transport/framing.js";
import { connect, listen, type Connection, type Listener, type TransportOptions } from "../../src/transport/index.js";
import { fromSystemError } from "../../src/transport/errno.js";
import { tcpTransport, unixTransport } from "../../src/transport/socket.js";
import { thrownCode } from "../helpers.js";

// Hostile peers are expected here; their warnings would only clutter the output.
process.env.KOALA_LOG = "off";
resetLogLevel();

const unhandled: unknown[] = [];
process.on("unhandledRejection", (reason) => unhandled.push(reason));

const dir = mkdtempSync(join(tmpdir(), "koala-socket-"));
let files = 0;
const socketPath = () => join(dir, `s${++files}.sock`);

type Kind = "tcp" | "unix";
const addressFor = (kind: Kind) => (kind === "tcp" ? "tcp://127.0.0.1:0" : `unix:${socketPath()}`);
const rawTarget = (address: string): net.NetConnectOpts =>
  address.startsWith("unix:") ? { path: address.slice(5) } : { host: "127.0.0.1", port: Number(address.split(":").pop()) };

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof KoalaError, `expected a KoalaError, got ${String(err)}`);
    return (err as KoalaError).code;
  }
  return "resolved";
}

function nextMessage(c: Connection): Promise<Uint8Array> {
  return new Promise((resolve, reject) => {
    c.onMessage((m) => {
      c.onMessage(null);
      resolve(m);
    });
    c.closed.then(reject, reject);
  });
}

/** A raw socket to `address`, connected; it swallows its own errors and records what it receives. */
async function rawSocket(address: string): Promise<{ socket: net.Socket; received: Buffer[]; closed: Promise<void> }> {
  const socket = net.connect(rawTarget(address));
  const received: Buffer[] = [];
  socket.on("data", (d: Buffer) => received.push(d));
  socket.on("error", () => undefined);
  const closed = new Promise<void>((r) => socket.once("close", () => r()));
  await new Promise((r) => socket.once("connect", r));
  return { socket, received, closed };
}

function rawFrame(kind: number, payload: Uint8Array = new Uint8Array(0), length = payload.byteLength): Buffer {
  const b = Buffer.alloc(FRAME_HEADER_BYTES + payload.byteLength);
  writeFrameHeader(b, 0, length, kind as FrameKind);
  b.set(payload, FRAME_HEADER_BYTES);
  return b;
}

for (const kind of ["tcp", "unix"] as const) {
  const s = suite(`socket transport: ${kind}`);
  const cleanups: (() => unknown)[] = [];
  s.after.each(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });
  const track = <T extends { close(): unknown }>(x: T): T => {
    cleanups.push(() => x.close());
    return x;
  };

  /** A listener, a client and the server's end of that client's connection. */
  async function pair(options?: TransportOptions): Promise<{ l: Listener; c: Connection; server: Connection }> {
    const l = track(await listen(addressFor(kind), options));
    const accepted = l.accept();
    const c = track(await connect(l.address, options));
    const server = track(await accepted);
    return { l, c, server };
  }

  s("reserve / commit: a message encoded in the send buffer arrives in order among sent ones; a send in between cancels the reservation; too large or closed is refused", async () => {
    const { c, server } = await pair();
    const got: string[] = [];
    const all = new Promise<void>((resolve) => server.onMessage((m) => got.push(Buffer.from(m).toString()) === 5 && resolve()));
    const put = (text: string): boolean => {
      const buf = c.reserve!(Buffer.byteLength(text));
      assert.ok(buf !== undefined, "a small message has room");
      Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength).write(text, c.reservedOffset!);
      return c.commit!();
    };
    c.send([Buffer.from("one")]);
    assert.ok(put("two"));
    assert.ok(put(""), "an empty message");
    // Reserved, then a send: the reservation is gone and never sent.
    c.reserve!(5);
    c.send([Buffer.from("three")]);
    try {
      c.commit!();
      assert.unreachable("commit after a send");
    } catch (err) {
      assert.is((err as KoalaError).code, ErrorCode.INVALID_ARGUMENT);
      assert.match((err as Error).message, /without a reservation/);
    }
    assert.ok(put("four"));
    await all;
    assert.equal(got, ["one", "two", "", "three", "four"]);
    assert.is(c.reserve!(c.options.coalesceMaxBytes + 1), undefined, "over the coalescing limit: use send()");
    c.close();
    assert.is(thrownCode(() => c.reserve!(1)), ErrorCode.CLOSED, "reserve after close");
  });

  s("echo: small, coalesced and large messages; onWritten exactly once each; buffers empty after", async () => {
    const { c, server } = await pair();
    server.onMessage((m) => server.send([m]));
    assert.is(c.transport, kind);
    assert.is(server.transport, kind);
    if (kind === "tcp") {
      assert.match(c.remoteAddress, /^tcp:\/\/127\.0\.0\.1:\d+$/);
      assert.is(server.localAddress, c.remoteAddress);
      assert.is(server.remoteAddress, c.localAddress);
    }
    const got: Uint8Array[] = [];
    const all = new Promise<void>((resolve) => c.onMessage((m) => got.push(m) === 1003 && resolve()));
    const written: number[] = [];
    for (let i = 0; i < 1000; i++) c.send([Uint8Array.of(i & 0xff, i >> 8)], () => written.push(i));
    assert.is(written.length, 1000, "copied parts are released at once");
    const big = new Uint8Array(1 << 20).map((_, i) => i % 251);
    c.send([big.subarray(0, 100), new Uint8Array(0), big.subarray(100)], () => written.push(-1));
    c.send([], () => written.push(-2));
    c.send([new Uint8Array(20_000).fill(3)], () => written.push(-3)); // over coalesceMaxBytes: written on its own
    await all;
    assert.equal(written.slice(1000).sort(), [-1, -2, -3]);
    for (let i = 0; i < 1000; i++) assert.equal([...got[i]!], [i & 0xff, i >> 8]);
    assert.is(got[1000]!.byteLength, big.byteLength);
    assert.ok(Buffer.from(got[1000]!).equals(Buffer.from(big)));
    assert.is(got[1001]!.byteLength, 0);
    assert.is(got[1002]!.byteLength, 20_000);
    assert.is(c.bufferedBytes, 0);
    assert.is(server.bufferedBytes, 0);
  });

  s("an onWritten that throws is reported, not thrown into the socket; the connection keeps working", async () => {
    const { c, server } = await pair();
    server.onMessage((m) => server.send([m]));
    const bad = () => {
      throw new Error("release bug");
    };
    c.send([new Uint8Array(10)], bad); // copied: called at once
    c.send([new Uint8Array(100_000)], bad); // written: called from the socket's write callback
    const reply = nextMessage(c);
    await sleep(10);
    c.send([Uint8Array.of(8)]);
    const first = await reply;
    assert.is(first.byteLength, 10);
    assert.not.ok(c.isClosed);
  });

  s("async iteration, pause and resume keep order", async () => {
    const { c, server } = await pair({ receiveQueueMessages: 4 });
    server.pause();
    for (let i = 0; i < 50; i++) c.send([Uint8Array.of(i)]);
    await sleep(20);
    const seen: number[] = [];
    server.resume();
    for await (const m of server) {
      seen.push(m[0]!);
      if (seen.length === 50) break;
    }
    assert.equal(seen, [...Array(50).keys()]);
  });

  s("close reasons: local close, peer FIN, close(reason); pending reads and drain reject with the reason", async () => {
    const { c, server } = await pair();
    c.close();
    assert.ok(c.isClosed);
    assert.is((await c.closed).code, ErrorCode.CLOSED);
    assert.is((await server.closed).code, ErrorCode.PEER_CLOSED);
    assert.throws(() => c.send([new Uint8Array(1)]), (e: unknown) => (e as KoalaError).code === ErrorCode.CLOSED);
    assert.is(await codeOf(c.drain()), ErrorCode.CLOSED);
    assert.is(await codeOf(c.read({ key: 1n, address: 0n, length: 8, access: "read" }, 0, 1)), ErrorCode.CLOSED);

    const p2 = await pair({ highWaterMarkBytes: 1024 });
    p2.server.pause(); // nobody answers: the peer's socket is paused
    // A one-sided read waits for its answer; the drain waits for a slow peer.
    const reading = codeOf(p2.c.read({ key: 1n, address: 0n, length: 100, access: "read" }, 0, 10));
    const cause = new Error("giving up");
    p2.c.close(cause);
    const r = await p2.c.closed;
    assert.is(r.code, ErrorCode.CLOSED);
    assert.is(r.cause, cause);
    assert.match(r.message, /giving up/);
    assert.is(await reading, ErrorCode.CLOSED);
    const peer = await p2.server.closed;
    if (kind === "tcp") {
      assert.is(peer.code, ErrorCode.CONNECTION_RESET, "close(reason) resets a TCP connection");
      assert.match(peer.message, /ECONNRESET/);
    } else assert.ok([ErrorCode.CONNECTION_RESET, ErrorCode.PEER_CLOSED].includes(peer.code as never), peer.code);
  });

  s("onWritten is called for parts dropped by close(reason), and drain() rejects", async () => {
    const { c, server } = await pair({ highWaterMarkBytes: 64 * 1024 });
    server.pause();
    let released = 0;
    const big = new Uint8Array(4 << 20);
    for (let i = 0; i < 8; i++) c.send([big], () => released++);
    assert.ok(c.bufferedBytes > 64 * 1024);
    const draining = codeOf(c.drain());
    c.close(new Error("stop"));
    assert.is(await draining, ErrorCode.CLOSED);
    await c.closed;
    assert.is(released, 8);
  });

  s("backpressure: send() returns false above the high-water mark, drain() resolves once written", async () => {
    // A tiny mark, below the socket's own: drain must not wait for a socket 'drain' event that never comes.
    const { c, server } = await pair({ highWaterMarkBytes: 1000 });
    let n = 0;
    server.onMessage(() => n++);
    assert.ok(c.send([new Uint8Array(600)]));
    assert.not.ok(c.send([new Uint8Array(600)]), "1,216 bytes wait: above the mark");
    await c.drain();
    assert.ok(c.bufferedBytes <= 500);
    // A reader that stops reading makes the writer wait, with memory bounded by the mark.
    const slow = await pair({ highWaterMarkBytes: 256 * 1024, receiveQueueMessages: 8 });
    slow.server.pause();
    const chunk = new Uint8Array(64 * 1024);
    let sent = 0;
    let blocked = false;
    // Fill the queues and the kernel's buffers (64 MiB at most) until drain() stops resolving.
    while (!blocked && sent < 1024) {
      sent++;
      if (slow.c.send([chunk])) continue;
      const drained = slow.c.drain().then(
        () => false,
        () => false,
      );
      blocked = await Promise.race([drained, sleep(100).then(() => true)]);
      assert.ok(slow.c.bufferedBytes <= 256 * 1024 + chunk.byteLength + 8, `${slow.c.bufferedBytes} bytes buffered`);
    }
    assert.ok(blocked, "a peer that reads nothing stops the writer");
    let received = 0;
    slow.server.onMessage(() => received++);
    slow.server.resume();
    await slow.c.drain();
    while (received < sent) await sleep(1);
    assert.is(received, sent);
    assert.is(n, 2);
  });

  s("an oversized send throws and the connection stays up; one from the peer closes only that connection", async () => {
    const { l, c, server } = await pair({ maxMessageBytes: 1000 });
    assert.throws(() => c.send([new Uint8Array(1001)]), (e: unknown) => (e as KoalaError).code === ErrorCode.MESSAGE_TOO_LARGE);
    const echo = nextMessage(server);
    c.send([new Uint8Array(1000)]);
    assert.is((await echo).byteLength, 1000);

    // A raw peer that greets properly, then announces 1,001 bytes.
    const next = l.accept();
    const raw = await rawSocket(l.address);
    raw.socket.write(Buffer.concat([helloFrame(), rawFrame(FrameKind.MESSAGE, new Uint8Array(0), 1001)]));
    const victim = track(await next);
    const reason = await victim.closed;
    assert.is(reason.code, ErrorCode.MESSAGE_TOO_LARGE);
    await raw.closed;
    const again = nextMessage(server);
    c.send([Uint8Array.of(7)]);
    assert.equal([...(await again)], [7], "the other connection still works");
  });

  s("garbage from a raw socket closes that connection at once; the listener and other connections go on", async () => {
    const l = track(await listen(addressFor(kind)));
    let accepted = 0;
    l.onConnection((conn) => {
      accepted++;
      conn.onMessage((m) => conn.send([m]));
    });
    const good = track(await connect(l.address));
    const raw = await rawSocket(l.address);
    raw.socket.write("GET / HTTP/1.1\r\nHost: koala\r\n\r\n");
    await raw.closed;
    const hello = Buffer.concat(raw.received);
    assert.ok(hello.subarray(0, 16).equals(helloFrame()), "the listener greeted first");
    // A koala peer that turns bad after its HELLO: an unknown frame kind.
    const bad = await rawSocket(l.address);
    bad.socket.write(Buffer.concat([helloFrame(), rawFrame(42, new Uint8Array(3))]));
    await bad.closed;
    const reply = nextMessage(good);
    good.send([Uint8Array.of(1, 2, 3)]);
    assert.equal([...(await reply)], [1, 2, 3]);
    assert.is(accepted, 2, "the garbage connection was never handed to the server");
    const fresh = track(await connect(l.address));
    const r2 = nextMessage(fresh);
    fresh.send([Uint8Array.of(9)]);
    assert.equal([...(await r2)], [9]);
  });

  s("a peer that never says HELLO is dropped after connectTimeoutMs", async () => {
    const l = track(await listen(addressFor(kind), { connectTimeoutMs: 100 }));
    const silent = await rawSocket(l.address);
    await silent.closed;
    const ok = l.accept();
    track(await connect(l.address));
    track(await ok);
  });

  s("a peer cut off in the middle of a frame is a reset, not an orderly close", async () => {
    const l = track(await listen(addressFor(kind)));
    const next = l.accept();
    const raw = await rawSocket(l.address);
    raw.socket.write(Buffer.concat([helloFrame(), rawFrame(FrameKind.MESSAGE, new Uint8Array(10), 100)]));
    const conn = track(await next);
    let delivered = 0;
    conn.onMessage(() => delivered++);
    raw.socket.end();
    const reason = await conn.closed;
    assert.is(reason.code, ErrorCode.CONNECTION_RESET);
    assert.match(reason.message, /middle of a frame/);
    assert.is(delivered, 0);
  });

  s("connect to a server that is not koala fails with PROTOCOL, or CONNECT_TIMEOUT when it says nothing", async () => {
    const sockets: net.Socket[] = [];
    const keep = (sock: net.Socket) => (sockets.push(sock), sock.on("error", () => undefined));
    const chatty = net.createServer((sock) => keep(sock).end("SSH-2.0-OpenSSH_9.6\r\n"));
    const mute = net.createServer(keep);
    const addrs: string[] = [];
    for (const srv of [chatty, mute]) {
      cleanups.push(() => (sockets.forEach((x) => x.destroy()), srv.close()));
      if (kind === "tcp") {
        await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
        addrs.push(`tcp://127.0.0.1:${(srv.address() as net.AddressInfo).port}`);
      } else {
        const path = socketPath();
        await new Promise<void>((r) => srv.listen(path, r));
        addrs.push(`unix:${path}`);
      }
    }
    const err = await connect(addrs[0]!).catch((e: KoalaError) => e);
    assert.instance(err, KoalaError);
    assert.is((err as KoalaError).code, ErrorCode.PROTOCOL);
    assert.match((err as KoalaError).message, /does not speak the koala protocol/);
    assert.is(await codeOf(connect(addrs[1]!, { connectTimeoutMs: 100 })), ErrorCode.CONNECT_TIMEOUT);
  });

  s("connect to nobody, and ADDRESS_IN_USE", async () => {
    const l = await listen(addressFor(kind));
    const address = l.address;
    const second = listen(address);
    assert.is(await codeOf(second), ErrorCode.ADDRESS_IN_USE);
    await l.close();
    const err = await connect(address).catch((e: KoalaError) => e);
    assert.instance(err, KoalaError);
    if (kind === "tcp") {
      assert.is((err as KoalaError).code, ErrorCode.CONNECTION_REFUSED);
      assert.match((err as KoalaError).message, new RegExp(`connect to ${address.replace(/[./]/g, "\\$&")}.*ECONNREFUSED`));
      assert.is(((err as KoalaError).cause as { code?: string }).code, "ECONNREFUSED");
    } else {
      assert.is((err as KoalaError).code, ErrorCode.HOST_NOT_FOUND, "the socket file is removed on close");
      assert.not.ok(existsSync(address.slice(5)));
    }
  });

  s("listener: real address, close stops accepting and keeps accepted connections", async () => {
    const { l, c, server } = await pair();
    if (kind === "tcp") assert.match(l.address, /^tcp:\/\/127\.0\.0\.1:[1-9]\d*$/);
    else assert.match(l.address, /^unix:\//);
    await l.close();
    await l.close();
    assert.is(await codeOf(l.accept()), ErrorCode.CLOSED);
    assert.is.not(await codeOf(connect(l.address, { connectTimeoutMs: 1000 })), "resolved");
    const echo = nextMessage(server);
    c.send([Uint8Array.of(4)]);
    assert.equal([...(await echo)], [4]);
  });

  s("one-sided read and write, small and large, and every violation; none closes the connection", async () => {
    const { c, server } = await pair({ maxMessageBytes: 1 << 20, oneSided: true });
    const memory = new Uint8Array(256 * 1024).map((_, i) => (i * 13) & 0xff);
    const rw = server.registerRegion(memory, { access: "readwrite" });
    const ro = server.registerRegion(new Uint8Array(32).fill(5));
    assert.equal([...(await c.read(rw.descriptor, 1, 3))], [13, 26, 39]);
    const large = await c.read(rw.descriptor, 1000, 200_000); // over coalesceMaxBytes: sent on its own
    assert.ok(Buffer.from(large).equals(Buffer.from(memory.subarray(1000, 201_000))));
    await c.write(rw.descriptor, 10, Uint8Array.of(1, 2));
    assert.equal([...memory.subarray(9, 13)], [117, 1, 2, 156]);
    const block = new Uint8Array(100_000).fill(0xee);
    await c.write(rw.descriptor, 100_000, block);
    assert.ok(memory.subarray(100_000, 200_000).every((b) => b === 0xee));
    const several = await Promise.all([c.read(ro.descriptor, 0, 32), c.read(rw.descriptor, 10, 2), c.write(rw.descriptor, 0, Uint8Array.of(9))]);
    assert.equal([...several[1]], [1, 2]);
    assert.is(memory[0], 9);

    // Caught before sending: outside the descriptor, read-only, over maxMessageBytes.
    assert.is(await codeOf(c.read(rw.descriptor, 256 * 1024 - 1, 2)), ErrorCode.OUT_OF_BOUNDS);
    assert.is(await codeOf(c.write(ro.descriptor, 0, Uint8Array.of(1))), ErrorCode.REMOTE_ACCESS_DENIED);
    assert.is(await codeOf(c.read({ ...rw.descriptor, length: 4 << 20 }, 0, 2 << 20)), ErrorCode.MESSAGE_TOO_LARGE);
    // Caught by the owner: a descriptor that claims more than was registered, or forged rights, or an unknown key.
    assert.is(await codeOf(c.read({ ...ro.descriptor, length: 1000 }, 100, 1)), ErrorCode.OUT_OF_BOUNDS);
    assert.is(await codeOf(c.write({ ...ro.descriptor, access: "readwrite" }, 0, Uint8Array.of(1))), ErrorCode.REMOTE_ACCESS_DENIED);
    assert.is(await codeOf(c.read({ ...rw.descriptor, key: 4242n }, 0, 1)), ErrorCode.REGION_NOT_FOUND);
    ro.deregister();
    const gone = await c.read(ro.descriptor, 0, 1).catch((e: KoalaError) => e);
    assert.is((gone as KoalaError).code, ErrorCode.REGION_NOT_FOUND);
    assert.match((gone as KoalaError).message, /not registered/, "the owner's message comes across");
    assert.not.ok(c.isClosed);
    assert.not.ok(server.isClosed);
    const echo = nextMessage(server);
    c.send([Uint8Array.of(1)]);
    assert.equal([...(await echo)], [1]);
  });

  s.run();
}

const misc = suite("socket transport: errors and files");

misc("a stale unix socket file is removed; a live one is ADDRESS_IN_USE; a regular file is left alone", async () => {
  const path = socketPath();
  // A process that dies without closing its listener leaves the socket file behind.
  const script = `require("net").createServer().listen(${JSON.stringify(path)}, () => process.kill(process.pid, "SIGKILL"))`;
  spawnSync(process.execPath, ["-e", script]);
  assert.ok(existsSync(path), "the dead listener left its file");
  assert.is(await codeOf(connect(`unix:${path}`)), ErrorCode.CONNECTION_REFUSED);
  const l = await listen(`unix:${path}`);
  try {
    assert.is(await codeOf(listen(`unix:${path}`)), ErrorCode.ADDRESS_IN_USE);
    const accepted = l.accept();
    const c = await connect(l.address);
    (await accepted).close();
    c.close();
  } finally {
    await l.close();
  }
  assert.not.ok(existsSync(path), "closing the listener removes the file");

  const plain = socketPath();
  writeFileSync(plain, "not a socket");
  assert.is(await codeOf(listen(`unix:${plain}`)), ErrorCode.ADDRESS_IN_USE);
  assert.ok(existsSync(plain), "a file that is not a socket is never removed");
});

misc("a unix socket file gets mode 0660 by default (not the umask), or the socketFileMode asked for", async () => {
  const oldMask = process.umask(0o000); // a permissive umask must not leak into the file
  try {
    const a = await listen(`unix:${socketPath()}`);
    const b = await listen(`unix:${socketPath()}`, { socketFileMode: 0o600 });
    try {
      assert.is(statSync(a.address.slice("unix:".length)).mode & 0o777, 0o660);
      assert.is(statSync(b.address.slice("unix:".length)).mode & 0o777, 0o600);
    } finally {
      await a.close();
      await b.close();
    }
  } finally {
    process.umask(oldMask);
  }
  assert.is(await codeOf(listen(`unix:${socketPath()}`, { socketFileMode: 0o1777 })), ErrorCode.INVALID_ARGUMENT);
});

misc("writeEagerBytes is checked: the error names it", async () => {
  for (const bad of [0, -1, 1.5, "16k"]) {
    try {
      await listen("tcp://127.0.0.1:0", { writeEagerBytes: bad as number });
      assert.unreachable(`writeEagerBytes ${String(bad)} was taken`);
    } catch (err) {
      assert.is((err as KoalaError).code, ErrorCode.INVALID_ARGUMENT);
      assert.match((err as Error).message, /writeEagerBytes/);
    }
  }
});

misc("fromSystemError maps errnos, keeps the cause and names the context", () => {
  const cases: [string, string][] = [
    ["ECONNREFUSED", ErrorCode.CONNECTION_REFUSED],
    ["ECONNRESET", ErrorCode.CONNECTION_RESET],
    ["EPIPE", ErrorCode.CONNECTION_RESET],
    ["ECONNABORTED", ErrorCode.CONNECTION_RESET],
    ["ETIMEDOUT", ErrorCode.CONNECT_TIMEOUT],
    ["ENOTFOUND", ErrorCode.HOST_NOT_FOUND],
    ["EAI_AGAIN", ErrorCode.HOST_NOT_FOUND],
    ["ENOENT", ErrorCode.HOST_NOT_FOUND],
    ["EADDRINUSE", ErrorCode.ADDRESS_IN_USE],
    ["EACCES", ErrorCode.ACCESS_DENIED],
    ["EPERM", ErrorCode.ACCESS_DENIED],
    ["EMFILE", ErrorCode.SYSTEM],
  ];
  for (const [errno, code] of cases) {
    const original = Object.assign(new Error("something failed"), { code: errno });
    const mapped = fromSystemError(original, "connect to tcp://h:1");
    assert.is(mapped.code, code, errno);
    assert.is(mapped.cause, original);
    assert.is(mapped.message, `connect to tcp://h:1: something failed (${errno})`);
  }
  assert.is(fromSystemError("weird", "x").code, ErrorCode.SYSTEM);
  const k = new KoalaError(ErrorCode.PROTOCOL, "p");
  assert.is(fromSystemError(k, "x"), k);
});

misc("the transports name themselves and are available here", () => {
  assert.is(tcpTransport.name, "tcp");
  assert.is(unixTransport.name, "unix");
  assert.is(tcpTransport.unavailableReason(), undefined);
  if (process.platform !== "win32") assert.is(unixTransport.unavailableReason(), undefined);
});

misc("no unhandled promise rejections happened", async () => {
  await sleep(10);
  assert.equal(unhandled, []);
});

misc.after(() => rmSync(dir, { recursive: true, force: true }));

misc.run();
