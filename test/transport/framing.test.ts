/** The socket framing decoder fed raw bytes, with no socket at all. */
import { test } from "uvu";
import * as assert from "uvu/assert";
import { FRAME_HEADER_BYTES, FrameDecoder, FrameKind, checkHello, helloFrame, writeFrameHeader } from "../../src/transport/framing.js";
import { thrownCode } from "../helpers.js";

function frame(kind: number, payload: Uint8Array): Buffer {
  const b = Buffer.alloc(FRAME_HEADER_BYTES + payload.length);
  writeFrameHeader(b, 0, payload.length, kind as FrameKind);
  b.set(payload, FRAME_HEADER_BYTES);
  return b;
}

function collect(max = 1 << 20) {
  const out: { kind: number; bytes: number[] }[] = [];
  const d = new FrameDecoder(max, (kind, p) => out.push({ kind, bytes: [...p] }));
  return { d, out };
}


const payloads = [new Uint8Array(0), new Uint8Array([1]), Uint8Array.from({ length: 200 }, (_, i) => i), new Uint8Array([7, 7, 7])];
const stream = Buffer.concat([helloFrame(), ...payloads.map((p) => frame(FrameKind.MESSAGE, p))]);
const expected = [{ kind: FrameKind.HELLO, bytes: [...helloFrame().subarray(8)] }, ...payloads.map((p) => ({ kind: FrameKind.MESSAGE, bytes: [...p] }))];

test("several frames in one chunk come out whole and as views of the chunk", () => {
  const views: Uint8Array[] = [];
  const d = new FrameDecoder(1024, (_k, p) => views.push(p));
  d.push(stream);
  assert.is(views.length, 5);
  assert.equal(views.map((v) => v.byteLength), [8, 0, 1, 200, 3]);
  assert.is(views[3]!.buffer, stream.buffer, "no copy for a frame inside one chunk");
  assert.is(d.assembled, 0);
});

test("a stream split at every byte boundary decodes the same", () => {
  for (let cut = 0; cut <= stream.length; cut++) {
    const { d, out } = collect();
    d.push(stream.subarray(0, cut));
    d.push(stream.subarray(cut));
    assert.equal(out, expected, `split at ${cut}`);
  }
  for (let a = 1; a < stream.length; a += 7) {
    for (let b = a + 1; b < stream.length; b += 13) {
      const { d, out } = collect();
      d.push(stream.subarray(0, a));
      d.push(stream.subarray(a, b));
      d.push(stream.subarray(b));
      assert.equal(out, expected, `split at ${a} and ${b}`);
    }
  }
});

test("byte by byte", () => {
  const { d, out } = collect();
  for (const byte of stream) d.push(Uint8Array.of(byte));
  assert.equal(out, expected);
  assert.not.ok(d.midFrame);
});

test("a large frame from many chunks is assembled into one buffer allocated once", () => {
  const big = new Uint8Array(1_000_000);
  for (let i = 0; i < big.length; i++) big[i] = i % 251;
  const bytes = frame(FrameKind.MESSAGE, big);
  const got: Uint8Array[] = [];
  const d = new FrameDecoder(2_000_000, (_k, p) => got.push(p));
  for (let at = 0; at < bytes.length; at += 65536) d.push(bytes.subarray(at, at + 65536));
  assert.is(got.length, 1);
  assert.is(d.assembled, 1);
  assert.ok(Buffer.from(got[0]!).equals(Buffer.from(big)));
});

test("size limit: exactly the maximum passes, one byte over fails at the header", () => {
  const ok = collect(100);
  ok.d.push(frame(FrameKind.MESSAGE, new Uint8Array(100)));
  assert.is(ok.out.length, 1);
  const over = collect(100);
  const header = frame(FrameKind.MESSAGE, new Uint8Array(101)).subarray(0, FRAME_HEADER_BYTES);
  assert.is(thrownCode(() => over.d.push(header)), "KOALA_ERR_MESSAGE_TOO_LARGE", "refused before any payload arrives");
  assert.is(thrownCode(() => over.d.push(new Uint8Array(1))), "KOALA_ERR_MESSAGE_TOO_LARGE", "a failed decoder stays failed");
});

test("unknown kinds, reserved bits and a bad HELLO are protocol errors naming the problem", () => {
  const bad = frame(FrameKind.MESSAGE, new Uint8Array(1));
  bad[4] = 42;
  assert.throws(() => collect().d.push(bad), /unknown frame kind 42/);
  const reserved = frame(FrameKind.MESSAGE, new Uint8Array(1));
  reserved[6] = 1;
  assert.throws(() => collect().d.push(reserved), /reserved header bytes/);
  assert.is(thrownCode(() => checkHello(new TextEncoder().encode("HELLO!!!"))), "KOALA_ERR_PROTOCOL");
  const v2 = helloFrame().subarray(8);
  v2[5] = 2;
  assert.throws(() => checkHello(v2), /version 2/);
});

test("a header split across chunks", () => {
  const { d, out } = collect();
  const f = frame(FrameKind.MESSAGE, new Uint8Array([9, 8, 7]));
  d.push(f.subarray(0, 3));
  assert.ok(d.midFrame);
  d.push(f.subarray(3, 8));
  d.push(f.subarray(8));
  assert.equal(out, [{ kind: FrameKind.MESSAGE, bytes: [9, 8, 7] }]);
});

test.run();
