/** The socket framing decoder fed raw bytes, with no socket at all. */
import { test } from "uvu";
import * as assert from "uvu/assert";
import fc from "fast-check";
import { ErrorCode, KoalaError } from "../../src/errors.js";
import {
  FRAME_HEADER_BYTES,
  FrameDecoder,
  FrameKind,
  MAX_ACCESS_ERROR_BYTES,
  WRITE_REQUEST_HEAD_BYTES,
  checkHello,
  decodeAccessError,
  decodeRequest,
  encodeAccessError,
  encodeReadRequest,
  encodeResponseHead,
  encodeWriteRequestHead,
  helloFrame,
  responseId,
  writeFrameHeader,
} from "../../src/transport/framing.js";
import { thrownCode } from "../helpers.js";

function frame(kind: number, ...parts: Uint8Array[]): Buffer {
  const payload = Buffer.concat(parts);
  const b = Buffer.alloc(FRAME_HEADER_BYTES + payload.length);
  writeFrameHeader(b, 0, payload.length, kind as FrameKind);
  b.set(payload, FRAME_HEADER_BYTES);
  return b;
}

type Seen = { kind: number; bytes: number[] };

function collect(max = 1 << 20) {
  const out: Seen[] = [];
  const d = new FrameDecoder(max, (kind, p) => out.push({ kind, bytes: [...p] }));
  return { d, out };
}

/** A decoder that has already read the peer's HELLO. */
function greeted(max = 1 << 20) {
  const c = collect(max);
  c.d.push(helloFrame());
  c.out.length = 0;
  return c;
}

const bytes = (n: number, seed = 0) => Uint8Array.from({ length: n }, (_, i) => (i * 7 + seed) & 0xff);

// About 300 bytes: a HELLO, messages of several sizes (one empty) and one-sided frames.
const frames: { kind: number; payload: Uint8Array }[] = [
  { kind: FrameKind.HELLO, payload: helloFrame().subarray(FRAME_HEADER_BYTES) },
  { kind: FrameKind.MESSAGE, payload: bytes(0) },
  { kind: FrameKind.MESSAGE, payload: bytes(1, 3) },
  { kind: FrameKind.MESSAGE, payload: bytes(150, 5) },
  { kind: FrameKind.READ_REQUEST, payload: encodeReadRequest(7, 99n, 12, 30) },
  { kind: FrameKind.READ_RESPONSE, payload: Buffer.concat([encodeResponseHead(7), bytes(30, 1)]) },
  { kind: FrameKind.WRITE_REQUEST, payload: Buffer.concat([encodeWriteRequestHead(8, 99n, 0), bytes(9, 2)]) },
  { kind: FrameKind.WRITE_RESPONSE, payload: encodeResponseHead(8) },
  { kind: FrameKind.ACCESS_ERROR, payload: encodeAccessError(9, new KoalaError(ErrorCode.OUT_OF_BOUNDS, "nope")) },
  { kind: FrameKind.MESSAGE, payload: bytes(3, 9) },
];
const stream = Buffer.concat(frames.map((f) => frame(f.kind, f.payload)));
const expected: Seen[] = frames.map((f) => ({ kind: f.kind, bytes: [...f.payload] }));

test("the test stream is about 300 bytes of several frames", () => {
  assert.ok(stream.length >= 280 && stream.length <= 380, String(stream.length));
});

test("frames inside one chunk come out whole, in order, as views of the chunk", () => {
  const views: Uint8Array[] = [];
  const d = new FrameDecoder(1024, (_k, p) => views.push(p));
  d.push(stream);
  assert.equal(
    views.map((v) => v.byteLength),
    frames.map((f) => f.payload.byteLength),
  );
  assert.is(views[3]!.buffer, stream.buffer, "no copy for a frame inside one chunk");
  assert.is(d.assembled, 0);
  assert.not.ok(d.midFrame);
});

test("a stream split at every byte boundary decodes the same", () => {
  for (let cut = 0; cut <= stream.length; cut++) {
    const { d, out } = collect();
    d.push(stream.subarray(0, cut));
    d.push(stream.subarray(cut));
    assert.equal(out, expected, `split at ${cut}`);
    assert.not.ok(d.midFrame);
  }
});

test("a stream split at every pair of boundaries decodes the same", () => {
  for (let a = 0; a <= stream.length; a++) {
    for (let b = a; b <= stream.length; b++) {
      const { d, out } = collect();
      d.push(stream.subarray(0, a));
      d.push(stream.subarray(a, b));
      d.push(stream.subarray(b));
      assert.equal(out, expected, `split at ${a} and ${b}`);
    }
  }
});

test("byte by byte", () => {
  const boundaries = new Set<number>();
  let end = 0;
  for (const f of frames) boundaries.add((end += FRAME_HEADER_BYTES + f.payload.byteLength));
  const { d, out } = collect();
  for (let i = 0; i < stream.length; i++) {
    d.push(stream.subarray(i, i + 1));
    assert.is(d.midFrame, !boundaries.has(i + 1), `after byte ${i}`);
  }
  assert.equal(out, expected);
  assert.not.ok(d.midFrame);
});

test("any chunking of any messages decodes to the same messages (property)", () => {
  fc.assert(
    fc.property(fc.array(fc.uint8Array({ maxLength: 300 }), { maxLength: 12 }), fc.array(fc.integer({ min: 1, max: 64 }), { minLength: 1 }), (msgs, sizes) => {
      const all = Buffer.concat([helloFrame(), ...msgs.map((m) => frame(FrameKind.MESSAGE, m))]);
      const got: number[][] = [];
      const d = new FrameDecoder(1000, (k, p) => k === FrameKind.MESSAGE && got.push([...p]));
      for (let at = 0, i = 0; at < all.length; i++) {
        const n = sizes[i % sizes.length]!;
        d.push(all.subarray(at, at + n));
        at += n;
      }
      assert.equal(got, msgs.map((m) => [...m]));
    }),
    { numRuns: 300 },
  );
});

test("an empty message, alone and between others", () => {
  const { d, out } = greeted();
  d.push(frame(FrameKind.MESSAGE));
  d.push(Buffer.concat([frame(FrameKind.MESSAGE, bytes(2)), frame(FrameKind.MESSAGE), frame(FrameKind.MESSAGE, bytes(1))]));
  assert.equal(
    out.map((o) => o.bytes.length),
    [0, 2, 0, 1],
  );
});

test("a large frame from many chunks is gathered into one buffer allocated once, at its final size", () => {
  const big = bytes(1_000_000, 4);
  const all = frame(FrameKind.MESSAGE, big);
  const got: Uint8Array[] = [];
  const d = new FrameDecoder(2_000_000, (k, p) => k === FrameKind.MESSAGE && got.push(p));
  d.push(helloFrame());
  const sizes: number[] = [];
  const original = Buffer.allocUnsafe;
  Buffer.allocUnsafe = (size: number) => (sizes.push(size), original(size));
  try {
    for (let at = 0; at < all.length; at += 1000) d.push(all.subarray(at, at + 1000)); // 1,001 chunks
  } finally {
    Buffer.allocUnsafe = original;
  }
  assert.equal(sizes, [1_000_000], "one allocation, of the payload's size");
  assert.is(d.assembled, 1);
  assert.is(got.length, 1);
  assert.ok(Buffer.from(got[0]!).equals(Buffer.from(big)));
});

test("size limit: exactly the maximum passes; one byte over fails at the header, before the payload", () => {
  const ok = greeted(100);
  ok.d.push(frame(FrameKind.MESSAGE, new Uint8Array(100)));
  assert.is(ok.out.length, 1);
  const over = greeted(100);
  const header = frame(FrameKind.MESSAGE, new Uint8Array(101)).subarray(0, FRAME_HEADER_BYTES);
  let err: unknown;
  try {
    over.d.push(header);
  } catch (e) {
    err = e;
  }
  assert.instance(err, KoalaError);
  assert.is((err as KoalaError).code, ErrorCode.MESSAGE_TOO_LARGE);
  assert.match((err as KoalaError).message, /101 bytes; the limit is 100/);
  assert.is(thrownCode(() => over.d.push(new Uint8Array(1))), ErrorCode.MESSAGE_TOO_LARGE, "a failed decoder stays failed");

  // A header claiming 4 GiB is refused the same way, with nothing allocated for it.
  const huge = greeted(100);
  const h = Buffer.alloc(FRAME_HEADER_BYTES);
  h.writeUInt32LE(0xffff_ffff, 0);
  h[4] = FrameKind.MESSAGE;
  assert.is(thrownCode(() => huge.d.push(h)), ErrorCode.MESSAGE_TOO_LARGE);
  assert.is(huge.d.assembled, 0);
});

test("one-sided frames get room for their heads on top of the message limit, and no more", () => {
  const ok = greeted(100);
  ok.d.push(frame(FrameKind.READ_RESPONSE, encodeResponseHead(1), new Uint8Array(100)));
  ok.d.push(frame(FrameKind.WRITE_REQUEST, encodeWriteRequestHead(1, 2n, 3), new Uint8Array(100)));
  assert.is(ok.out.length, 2);
  const header = (kind: number, length: number) => {
    const h = Buffer.alloc(FRAME_HEADER_BYTES);
    writeFrameHeader(h, 0, length, kind as FrameKind);
    return h;
  };
  assert.is(thrownCode(() => greeted(100).d.push(header(FrameKind.READ_RESPONSE, 105))), ErrorCode.MESSAGE_TOO_LARGE);
  assert.is(thrownCode(() => greeted(100).d.push(header(FrameKind.WRITE_REQUEST, 100 + WRITE_REQUEST_HEAD_BYTES + 1))), ErrorCode.MESSAGE_TOO_LARGE);
  assert.is(thrownCode(() => greeted(100).d.push(header(FrameKind.ACCESS_ERROR, MAX_ACCESS_ERROR_BYTES + 1))), ErrorCode.PROTOCOL);
  assert.throws(() => greeted().d.push(header(FrameKind.READ_REQUEST, 23)), /READ_REQUEST frame cannot be 23 bytes/);
  assert.throws(() => greeted().d.push(header(FrameKind.WRITE_RESPONSE, 5)), /WRITE_RESPONSE frame cannot be 5 bytes/);
});

test("a peer whose first frame is not a HELLO is caught at its first header", () => {
  const http = Buffer.from("GET / HTTP/1.1\r\nHost: example\r\n\r\n");
  const { d, out } = collect();
  assert.throws(() => d.push(http), (e: unknown) => e instanceof KoalaError && e.code === ErrorCode.PROTOCOL && /does not speak the koala protocol/.test(e.message));
  assert.is(out.length, 0);
  // A well-formed message frame is still not a greeting.
  assert.is(thrownCode(() => collect().d.push(frame(FrameKind.MESSAGE, bytes(8)))), ErrorCode.PROTOCOL);
  // Nor is a frame of a HELLO's kind with the wrong size.
  assert.is(thrownCode(() => collect().d.push(frame(FrameKind.HELLO, bytes(9)))), ErrorCode.PROTOCOL);
  // Eight bytes are enough to tell: the rest of the garbage is never waited for.
  assert.is(thrownCode(() => collect().d.push(http.subarray(0, 8))), ErrorCode.PROTOCOL);
  // A header announcing a 16 MiB message before any HELLO: refused at the header, nothing allocated for it.
  const early = collect();
  const bigHeader = Buffer.alloc(FRAME_HEADER_BYTES);
  writeFrameHeader(bigHeader, 0, 16 * 1024 * 1024, FrameKind.MESSAGE);
  assert.is(thrownCode(() => early.d.push(Buffer.concat([bigHeader, bytes(100)]))), ErrorCode.PROTOCOL);
  assert.is(early.d.assembled, 0, "no buffer was allocated for the announced frame");
});

test("HELLO: bad magic, other version, reserved byte, a second HELLO", () => {
  const hello = () => Buffer.from(helloFrame());
  const badMagic = hello();
  badMagic[FRAME_HEADER_BYTES] = 0x4a; // "JOALA"
  assert.throws(() => collect().d.push(badMagic), /bad HELLO magic/);
  const v2 = hello();
  v2[FRAME_HEADER_BYTES + 5] = 2;
  assert.throws(() => collect().d.push(v2), /version 2; this side speaks version 1/);
  const reserved = hello();
  reserved[FRAME_HEADER_BYTES + 7] = 1;
  assert.throws(() => collect().d.push(reserved), /reserved byte of the peer's HELLO/);
  const flags = hello();
  flags[FRAME_HEADER_BYTES + 6] = 0x80;
  const withFlags = collect();
  withFlags.d.push(flags);
  assert.ok(withFlags.d.greeted, "unknown flags are accepted");
  assert.is(checkHello(flags.subarray(FRAME_HEADER_BYTES)), 0x80);
  assert.throws(() => greeted().d.push(helloFrame()), /second HELLO/);
});

test("unknown kinds and nonzero reserved bits are protocol errors naming the problem", () => {
  for (const kind of [0, 8, 42, 255]) {
    const bad = frame(kind, new Uint8Array(1));
    assert.throws(() => greeted().d.push(bad), new RegExp(`unknown frame kind ${kind}\\b`));
  }
  for (const at of [5, 6, 7]) {
    const reserved = frame(FrameKind.MESSAGE, new Uint8Array(1));
    reserved[at] = 1;
    const c = greeted();
    assert.throws(() => c.d.push(reserved), /reserved header bytes are not zero/);
    assert.is(thrownCode(() => c.d.push(frame(FrameKind.MESSAGE))), ErrorCode.PROTOCOL, "stays failed");
  }
});

test("a header split across chunks", () => {
  const { d, out } = greeted();
  const f = frame(FrameKind.MESSAGE, new Uint8Array([9, 8, 7]));
  d.push(f.subarray(0, 3));
  assert.ok(d.midFrame);
  assert.is(out.length, 0);
  d.push(f.subarray(3, 8));
  assert.ok(d.midFrame);
  d.push(f.subarray(8));
  assert.equal(out, [{ kind: FrameKind.MESSAGE, bytes: [9, 8, 7] }]);
  assert.not.ok(d.midFrame);
  assert.is(d.assembled, 1, "a payload whose header came in another chunk is gathered");
});

test("one-sided payloads round-trip", () => {
  const r = decodeRequest(FrameKind.READ_REQUEST, encodeReadRequest(0xfffffffe, 0xfedcba9876543210n, 2 ** 40, 4096));
  assert.equal({ id: r.id, key: r.key, offset: r.offset, length: r.length }, { id: 0xfffffffe, key: 0xfedcba9876543210n, offset: 2 ** 40, length: 4096 });
  const w = decodeRequest(FrameKind.WRITE_REQUEST, Buffer.concat([encodeWriteRequestHead(5, 6n, 7), Buffer.from([1, 2, 3])]));
  assert.equal({ id: w.id, key: w.key, offset: w.offset, length: w.length, data: [...w.data] }, { id: 5, key: 6n, offset: 7, length: 3, data: [1, 2, 3] });
  assert.is(responseId(encodeResponseHead(0xdeadbeef)), 0xdeadbeef);

  const e = decodeAccessError(encodeAccessError(3, new KoalaError(ErrorCode.REMOTE_ACCESS_DENIED, "read-only région")));
  assert.is(e.code, ErrorCode.REMOTE_ACCESS_DENIED);
  assert.is(e.message, "read-only région");
  const long = encodeAccessError(3, new KoalaError(ErrorCode.OUT_OF_BOUNDS, "x".repeat(10_000)));
  assert.is(long.byteLength, MAX_ACCESS_ERROR_BYTES, "a long text is cut to fit");
  const unknown = encodeAccessError(3, new KoalaError(ErrorCode.OUT_OF_BOUNDS, "m"));
  unknown[5] = 0x5a; // the code no longer names a known one
  assert.is(decodeAccessError(unknown).code, ErrorCode.PROTOCOL);
});

test.run();
