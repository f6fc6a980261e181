import { test } from "uvu";
import * as assert from "uvu/assert";
import fc from "fast-check";
import { KoalaError } from "../../src/errors.js";
import { FrameFlag, FrameType, HEADER_BYTES, decodeFrame, frameBody, writeHeader } from "../../src/rpc/frame.js";
import { Metadata, decodeMetadata, encodeMetadata, metadataLength } from "../../src/rpc/metadata.js";

function frame(type: number, flags: number, sections: { md?: Metadata; text?: string; body?: Uint8Array }): Uint8Array {
  const mdLen = sections.md ? metadataLength(sections.md) : 0;
  const text = Buffer.from(sections.text ?? "");
  const body = sections.body ?? new Uint8Array(0);
  const out = Buffer.alloc(HEADER_BYTES + mdLen + text.length + body.length);
  writeHeader(out, type as FrameType, flags | (mdLen ? FrameFlag.METADATA : 0) | (sections.body ? FrameFlag.MESSAGE : 0), 7, 3, 1500, mdLen, text.length);
  let at = HEADER_BYTES;
  if (sections.md) at = encodeMetadata(sections.md, out, at);
  out.set(text, at);
  out.set(body, at + text.length);
  return out;
}

test("a CALL frame round-trips header, metadata, path and body", () => {
  const md = new Metadata({ "x-user": "ana", "trace-bin": new Uint8Array([1, 2, 3]) });
  const bytes = frame(FrameType.CALL, FrameFlag.DEFINE_METHOD | FrameFlag.END_STREAM, { md, text: "/pkg.S/M", body: new Uint8Array([9, 8]) });
  const f = decodeFrame(bytes);
  assert.is(f.type, FrameType.CALL);
  assert.is(f.callId, 7);
  assert.is(f.arg, 3);
  assert.is(f.arg2, 1500);
  assert.is(f.text, "/pkg.S/M");
  assert.is(f.bodyBytes, 2);
  assert.equal([...frameBody(f)!], [9, 8]);
  assert.is(frameBody(f)!.buffer, bytes.buffer, "the body is a view of the received bytes");
  const back = decodeMetadata(f.metadata!);
  assert.is(back.get("x-user"), "ana");
  assert.equal([...(back.get("trace-bin") as Uint8Array)], [1, 2, 3]);
});

test("every truncation of a valid frame is either valid or a KOALA_ERR_PROTOCOL error", () => {
  const bytes = frame(FrameType.CALL, FrameFlag.DEFINE_METHOD, { md: new Metadata({ a: "b" }), text: "/x.Y/Z", body: new Uint8Array([1]) });
  for (let n = 0; n < bytes.length; n++) {
    try {
      decodeFrame(bytes.subarray(0, n));
    } catch (err) {
      assert.ok(err instanceof KoalaError, `cut at ${n}: ${String(err)}`);
      assert.is((err as KoalaError).code, "KOALA_ERR_PROTOCOL");
      assert.match((err as Error).message, /malformed RPC frame/);
    }
  }
});

test("random bytes never crash the decoder: a frame or a KOALA_ERR_PROTOCOL error", () => {
  fc.assert(
    fc.property(fc.uint8Array({ minLength: 0, maxLength: 120 }), (bytes) => {
      try {
        const f = decodeFrame(bytes);
        assert.ok(f.type >= 1 && f.type <= 8);
      } catch (err) {
        assert.ok(err instanceof KoalaError && err.code === "KOALA_ERR_PROTOCOL", String(err));
      }
    }),
    { numRuns: 2000 },
  );
  fc.assert(
    fc.property(fc.uint8Array({ minLength: 0, maxLength: 60 }), (bytes) => {
      try {
        decodeMetadata(bytes);
      } catch (err) {
        assert.ok(err instanceof KoalaError && err.code === "KOALA_ERR_PROTOCOL", String(err));
      }
    }),
    { numRuns: 2000 },
  );
});

test("decoder names what is wrong", () => {
  assert.throws(() => decodeFrame(new Uint8Array(5)), /shorter than the 24-byte header/);
  const bad = frame(FrameType.DATA, 0, {});
  bad[0] = 99;
  assert.throws(() => decodeFrame(bad), /unknown frame type 99/);
  const flags = frame(FrameType.DATA, 0, {});
  flags[1] = 0x80;
  assert.throws(() => decodeFrame(flags), /unknown flags/);
  const over = frame(FrameType.DATA, 0, {});
  over[16] = 200;
  assert.throws(() => decodeFrame(over), /overrun/);
});

test("metadata keys and values are checked", () => {
  assert.throws(() => new Metadata({ "Bad Key": "x" }), /metadata key/);
  assert.throws(() => new Metadata({ "x-bin": "text" }), /-bin/);
  assert.throws(() => new Metadata({ x: new Uint8Array(1) }), /string values/);
  const md = new Metadata({ X: ["1", "2"] });
  assert.equal(md.getAll("x"), ["1", "2"]);
});

test.run();
