/**
 * One conformance suite, run against every transport: what any transport must do, checked
 * through the public listen() / connect() only.
 */
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { createHash } from "node:crypto";
import { fork } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { resetLogLevel } from "../../src/log.js";
import { connect, createHeap, listen, registerRegion, encodeDescriptor, decodeDescriptor, KoalaError, type Connection, type Listener } from "../../src/index.js";

type Kind = "tcp" | "unix" | "memory";

const dirs: string[] = [];
let memoryN = 0;

function addressFor(kind: Kind): string {
  if (kind === "tcp") return "tcp://127.0.0.1:0";
  if (kind === "unix") {
    const dir = mkdtempSync(join(tmpdir(), "koala-conf-"));
    dirs.push(dir);
    return `unix:${join(dir, "t.sock")}`;
  }
  return `memory:conf-${process.pid}-${++memoryN}`;
}

/** A listener whose connections echo every message back. */
async function echoServer(kind: Kind, options?: Parameters<typeof listen>[1]): Promise<Listener> {
  const l = await listen(addressFor(kind), options);
  l.onConnection((c) => c.onMessage((m) => c.send([m])));
  return l;
}

function nextMessage(c: Connection): Promise<Uint8Array> {
  return new Promise((resolve, reject) => {
    c.onMessage((m) => {
      c.onMessage(null);
      resolve(m);
    });
    void c.closed.then(reject);
  });
}

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof KoalaError, `expected a KoalaError, got ${String(err)}`);
    return (err as KoalaError).code;
  }
  return "resolved";
}

const sha = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

for (const kind of ["tcp", "unix", "memory"] as const) {
  const s = suite(`transport conformance: ${kind}`);
  const cleanups: (() => unknown)[] = [];
  s.after.each(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });
  s.after(() => {
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  });
  const track = <T extends { close(): unknown }>(x: T): T => {
    cleanups.push(() => x.close());
    return x;
  };

  s("messages arrive whole and in order, both ways; parts are sent as their concatenation", async () => {
    const l = track(await echoServer(kind));
    const c = track(await connect(l.address));
    const got: Uint8Array[] = [];
    const done = new Promise<void>((resolve) => c.onMessage((m) => got.push(m) === 10_003 && resolve()));
    let written = 0;
    for (let i = 0; i < 10_000; i++) {
      const b = new Uint8Array(4);
      new DataView(b.buffer).setUint32(0, i);
      c.send([b], () => written++);
    }
    const sizes = [0, 1, 7, 65539];
    c.send([new Uint8Array(0)]);
    c.send([new Uint8Array([1]), new Uint8Array(0), new Uint8Array([2, 3, 4, 5, 6, 7])], () => written++);
    c.send([new Uint8Array(65536).fill(9), new Uint8Array([1, 2, 3])], () => written++);
    await done;
    assert.is(written, 10_002, "onWritten once per send that asked for it");
    for (let i = 0; i < 10_000; i++) assert.is(new DataView(got[i]!.buffer, got[i]!.byteOffset, 4).getUint32(0), i);
    assert.equal(got.slice(10_000).map((m) => m.byteLength), sizes.slice(0, 1).concat([7, 65539]));
    assert.equal([...got[10_001]!], [1, 2, 3, 4, 5, 6, 7]);
    assert.equal([...got[10_002]!.subarray(65535)], [9, 1, 2, 3]);
  });

  s("a 64 MiB message arrives intact and is echoed back", async () => {
    const opts = { maxMessageBytes: 65 * 1024 * 1024 };
    const l = track(await echoServer(kind, opts));
    const c = track(await connect(l.address, opts));
    const big = new Uint8Array(64 * 1024 * 1024);
    for (let i = 0; i < big.length; i += 4096) big[i] = (i >>> 12) & 0xff;
    big[big.length - 1] = 42;
    const reply = nextMessage(c);
    c.send([big.subarray(0, 1000), big.subarray(1000)]);
    const back = await reply;
    assert.is(back.byteLength, big.byteLength);
    assert.is(sha(back), sha(big));
  });

  s("1,000 concurrent connections to one listener", async () => {
    const l = track(await echoServer(kind));
    const conns = await Promise.all(Array.from({ length: 1000 }, () => connect(l.address)));
    for (const c of conns) track(c);
    const replies = await Promise.all(
      conns.map((c, i) => {
        const p = nextMessage(c);
        c.send([new TextEncoder().encode(`conn ${i}`)]);
        return p;
      }),
    );
    replies.forEach((r, i) => assert.is(new TextDecoder().decode(r), `conn ${i}`));
  });

  s("a slow reader does not make the writer's memory grow without bound", async () => {
    const opts = { highWaterMarkBytes: 256 * 1024, receiveQueueMessages: 16 };
    const l = track(await listen(addressFor(kind), opts));
    const accepted = l.accept();
    const c = track(await connect(l.address, opts));
    const server = track(await accepted);
    const total = 128 * 1024 * 1024;
    const chunk = new Uint8Array(64 * 1024).fill(1);
    let received = 0;
    let maxQueued = 0;
    const reading = (async () => {
      for await (const m of server) {
        received += m.byteLength;
        if (received % (4 * 1024 * 1024) === 0) await sleep(1); // a reader slower than the writer
        if (received >= total) break;
      }
    })();
    let maxBuffered = 0;
    for (let sent = 0; sent < total; sent += chunk.byteLength) {
      if (!c.send([chunk])) await c.drain();
      maxBuffered = Math.max(maxBuffered, c.bufferedBytes);
      maxQueued = Math.max(maxQueued, c.bufferedBytes);
    }
    await reading;
    assert.is(received, total);
    assert.ok(maxBuffered <= opts.highWaterMarkBytes + chunk.byteLength + 64, `writer buffered up to ${maxBuffered} bytes`);
    void maxQueued;
  });

  s("close from either side: reasons carry stable codes, queued messages still arrive", async () => {
    const l = track(await listen(addressFor(kind)));
    const accepted = l.accept();
    const c = track(await connect(l.address));
    const server = await accepted;
    const got: number[] = [];
    server.onMessage((m) => got.push(m[0]!));
    for (let i = 0; i < 100; i++) c.send([new Uint8Array([i])]);
    c.close();
    assert.ok(c.isClosed);
    assert.is((await c.closed).code, "KOALA_ERR_CLOSED");
    assert.is((await server.closed).code, "KOALA_ERR_PEER_CLOSED");
    assert.equal(got, [...Array(100).keys()], "every message sent before an orderly close arrives");
    assert.throws(() => c.send([new Uint8Array(1)]), (e: unknown) => (e as KoalaError).code === "KOALA_ERR_CLOSED");
    assert.is(await codeOf(c.drain()), "KOALA_ERR_CLOSED");

    // The server side closes; the client's iteration ends normally.
    const accepted2 = l.accept();
    const c2 = track(await connect(l.address));
    const s2 = await accepted2;
    const ended = (async () => {
      let n = 0;
      for await (const _ of c2) n++;
      return n;
    })();
    s2.send([new Uint8Array(3)]);
    s2.close();
    assert.is(await ended, 1);
    assert.is((await c2.closed).code, "KOALA_ERR_PEER_CLOSED");

    // close(reason) drops at once; the peer sees a non-orderly end.
    const accepted3 = l.accept();
    const c3 = track(await connect(l.address));
    const s3 = await accepted3;
    c3.close(new Error("giving up"));
    const r3 = await c3.closed;
    assert.is(r3.code, "KOALA_ERR_CLOSED");
    assert.match(r3.message, /giving up/);
    assert.ok(["KOALA_ERR_CONNECTION_RESET", "KOALA_ERR_PEER_CLOSED"].includes((await s3.closed).code));
  });

  s("connect to nobody is a clear error code", async () => {
    const l = await listen(addressFor(kind));
    const address = l.address;
    await l.close();
    const code = await codeOf(connect(address));
    // A unix path whose socket file is gone is ENOENT: "host not found" rather than "refused".
    assert.ok(
      kind === "unix" ? ["KOALA_ERR_CONNECTION_REFUSED", "KOALA_ERR_HOST_NOT_FOUND"].includes(code) : code === "KOALA_ERR_CONNECTION_REFUSED",
      code,
    );
  });

  s("an oversized send throws and the connection stays usable; options are validated", async () => {
    const l = track(await echoServer(kind, { maxMessageBytes: 1000 }));
    const c = track(await connect(l.address, { maxMessageBytes: 1000 }));
    assert.throws(() => c.send([new Uint8Array(600), new Uint8Array(401)]), (e: unknown) => (e as KoalaError).code === "KOALA_ERR_MESSAGE_TOO_LARGE");
    const reply = nextMessage(c);
    c.send([new Uint8Array(1000)]);
    assert.is((await reply).byteLength, 1000);
    assert.is(await codeOf(connect(l.address, { maxMesageBytes: 5 } as never)), "KOALA_ERR_INVALID_ARGUMENT");
    await connect(l.address, { maxMesageBytes: 5 } as never).catch((e: Error) => assert.match(e.message, /unknown option "maxMesageBytes" \(did you mean "maxMessageBytes"\?\)/));
  });

  s("one-sided read and write on a region the peer registered, and every violation", async () => {
    const l = track(await listen(addressFor(kind)));
    const accepted = l.accept();
    const c = track(await connect(l.address));
    const server = track(await accepted);
    const memory = new Uint8Array(4096);
    for (let i = 0; i < memory.length; i++) memory[i] = i & 0xff;
    const rw = registerRegion(memory, { access: "readwrite" });
    const ro = registerRegion(new Uint8Array(64).fill(7));
    cleanups.push(() => (rw.deregister(), ro.deregister()));
    const descMsg = nextMessage(c);
    server.send([encodeDescriptor(rw.descriptor), encodeDescriptor(ro.descriptor)]);
    const msg = await descMsg;
    const rwd = decodeDescriptor(msg.subarray(0, 16));
    const rod = decodeDescriptor(msg.subarray(16));
    assert.equal(rwd, rw.descriptor);

    assert.equal([...(await c.read(rwd, 250, 10))], [250, 251, 252, 253, 254, 255, 0, 1, 2, 3]);
    await c.write(rwd, 100, new Uint8Array([0xaa, 0xbb]));
    assert.equal([...memory.subarray(99, 103)], [99, 0xaa, 0xbb, 102]);
    assert.is((await c.read(rod, 0, 64)).byteLength, 64);

    assert.is(await codeOf(c.read(rwd, 4090, 10)), "KOALA_ERR_OUT_OF_BOUNDS");
    assert.is(await codeOf(c.read(rwd, -1, 1)), "KOALA_ERR_OUT_OF_BOUNDS");
    assert.is(await codeOf(c.write(rwd, 4095, new Uint8Array(2))), "KOALA_ERR_OUT_OF_BOUNDS");
    assert.is(await codeOf(c.write(rod, 0, new Uint8Array(1))), "KOALA_ERR_REMOTE_ACCESS_DENIED");
    // A descriptor that claims more than the owner registered is caught by the owner.
    assert.is(await codeOf(c.read({ ...rwd, length: 1 << 20 }, 5000, 8)), "KOALA_ERR_OUT_OF_BOUNDS");
    assert.is(await codeOf(c.write({ ...rod, access: "readwrite" }, 0, new Uint8Array(1))), "KOALA_ERR_REMOTE_ACCESS_DENIED");
    assert.is(await codeOf(c.read({ key: 12345, length: 10, access: "read" }, 0, 1)), "KOALA_ERR_REGION_NOT_FOUND");
    rw.deregister();
    assert.is(await codeOf(c.read(rwd, 0, 1)), "KOALA_ERR_REGION_NOT_FOUND", "deregistering revokes access");

    // A heap lease can be registered too; releasing the lease revokes remote access.
    const heap = createHeap();
    const lease = heap.alloc(32);
    lease.write(0, new TextEncoder().encode("leased bytes"));
    const leased = registerRegion(lease, { access: "readwrite" });
    cleanups.push(() => leased.deregister());
    assert.is(new TextDecoder().decode(await c.read(leased.descriptor, 0, 12)), "leased bytes");
    lease.release();
    assert.is(await codeOf(c.read(leased.descriptor, 0, 1)), "KOALA_ERR_REGION_NOT_FOUND");

    // After every violation the connection still carries messages.
    const echo = nextMessage(server);
    c.send([new Uint8Array([5])]);
    assert.equal([...(await echo)], [5]);
  });

  s("a receiver that throws closes only its own connection, with KOALA_ERR_RECEIVER_FAILED", async () => {
    const saved = process.env.KOALA_LOG;
    process.env.KOALA_LOG = "off"; // the error is logged with its stack; keep the test output clean
    resetLogLevel();
    try {
      const l = track(await listen(addressFor(kind)));
      const reasons: Promise<KoalaError>[] = [];
      l.onConnection((c) => {
        reasons.push(c.closed);
        c.onMessage((m) => {
          if (m[0] === 0xbb) throw new Error("handler bug");
          c.send([m]);
        });
      });
      const bad = track(await connect(l.address));
      const good = track(await connect(l.address));
      bad.send([new Uint8Array([0xbb])]);
      assert.ok(["KOALA_ERR_CONNECTION_RESET", "KOALA_ERR_PEER_CLOSED"].includes((await bad.closed).code));
      const reply = nextMessage(good);
      good.send([new Uint8Array([1])]);
      assert.equal([...(await reply)], [1], "other connections keep being served");
      const own = await reasons[0]!;
      assert.is(own.code, "KOALA_ERR_RECEIVER_FAILED");
      assert.match(own.message, /handler bug/);
    } finally {
      if (saved === undefined) delete process.env.KOALA_LOG;
      else process.env.KOALA_LOG = saved;
      resetLogLevel();
    }
  });

  s("listener: real address, accept(), for await, onConnection, close stops accepting only", async () => {
    const l = await listen(addressFor(kind));
    if (kind === "tcp") assert.match(l.address, /^tcp:\/\/127\.0\.0\.1:[1-9]\d*$/);
    const a = l.accept();
    const c1 = track(await connect(l.address));
    const s1 = track(await a);
    const it = l[Symbol.asyncIterator]();
    const n = it.next();
    const c2 = track(await connect(l.address));
    const s2 = (await n).value as Connection;
    track(s2);
    const seen: Connection[] = [];
    l.onConnection((c) => seen.push(track(c)));
    track(await connect(l.address));
    while (seen.length === 0) await sleep(1);
    await l.close();
    assert.is(await codeOf(l.accept()), "KOALA_ERR_CLOSED");
    assert.is.not(await codeOf(connect(l.address)), "resolved");
    const p = nextMessage(s1);
    c1.send([new Uint8Array([1])]);
    assert.is((await p).byteLength, 1, "connections outlive their listener");
    void c2;
  });

  if (kind !== "memory") {
    s("garbage and an oversized frame from a raw socket close only that connection", async () => {
      const l = track(await echoServer(kind, { maxMessageBytes: 1024 }));
      const good = track(await connect(l.address, { maxMessageBytes: 1024 }));
      const target = kind === "tcp" ? { host: "127.0.0.1", port: Number(l.address.split(":").pop()) } : { path: l.address.slice(5) };
      for (const bytes of [Buffer.from("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), Buffer.from([0xff, 0xff, 0xff, 0x7f, 1, 0, 0, 0])]) {
        const raw = net.connect(target);
        raw.on("error", () => undefined);
        raw.resume();
        await new Promise((r) => raw.once("connect", r));
        raw.write(bytes);
        await new Promise((r) => raw.once("close", r));
      }
      // Oversized after a proper HELLO: header claims 1 MiB.
      const raw = net.connect(target);
      raw.on("error", () => undefined);
      raw.resume();
      await new Promise((r) => raw.once("connect", r));
      const hello = Buffer.alloc(16);
      hello.writeUInt32LE(8, 0);
      hello[4] = 1;
      hello.write("KOALA", 8, "latin1");
      hello[13] = 1;
      const huge = Buffer.alloc(8);
      huge.writeUInt32LE(1 << 20, 0);
      huge[4] = 2;
      raw.write(Buffer.concat([hello, huge]));
      await new Promise((r) => raw.once("close", r));
      const reply = nextMessage(good);
      good.send([new Uint8Array([1, 2])]);
      assert.equal([...(await reply)], [1, 2], "the listener and other connections keep working");
      const fresh = track(await connect(l.address));
      const r2 = nextMessage(fresh);
      fresh.send([new Uint8Array([3])]);
      assert.equal([...(await r2)], [3]);
    });

    s("a peer process killed mid-message: closed with a reason, no partial message, listener keeps serving", async () => {
      const l = track(await listen(addressFor(kind), { maxMessageBytes: 512 * 1024 * 1024 }));
      const accepted = l.accept();
      const child = fork(new URL("../fixtures/transport/big-sender.ts", import.meta.url).pathname, [l.address], {
        execArgv: ["--import", "tsx"],
        stdio: ["ignore", "ignore", "inherit", "ipc"],
      });
      cleanups.push(() => child.kill("SIGKILL"));
      const server = await accepted;
      let delivered = 0;
      server.onMessage(() => delivered++);
      await new Promise((r) => child.once("message", r)); // the child has started its big send
      await sleep(50);
      child.kill("SIGKILL");
      const reason = await server.closed;
      assert.ok(["KOALA_ERR_CONNECTION_RESET", "KOALA_ERR_PEER_CLOSED"].includes(reason.code), reason.code);
      assert.is(delivered, 0, "no partial message is delivered");
      const l2c = l.accept();
      const c = track(await connect(l.address));
      track(await l2c);
      assert.not.ok(c.isClosed);
    });
  }

  s.run();
}
