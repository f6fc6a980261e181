/**
 * The protobuf wire layer under generated code: every scalar at its edges agrees byte for
 * byte with protobufjs, random messages of every field kind encode exactly as protobufjs
 * encodes them and decode back equal, scatter-gather parts and headroom, bytes decoded as
 * views, and malformed input failing with KOALA_ERR_PROTOCOL (never a hang, never another
 * error).
 */
import { test } from "uvu";
import * as assert from "uvu/assert";
import { join } from "node:path";
import fc from "fast-check";
import protobuf from "protobufjs";
import { KoalaError } from "../../src/errors.js";
import type { MessageType } from "../../src/proto/definition.js";
import { ProtoReader, decodeWith } from "../../src/proto/wire/reader.js";
import {
  ProtoWriter,
  SizeCounter,
  encodeMessage,
  encodedLength,
  sint32Size,
  sint64Size,
  stringSize,
  varint32Size,
  varint64Size,
} from "../../src/proto/wire/writer.js";
import { Everything, Everything_Nested, Everything_Nested_Level } from "../golden/everything.js";
import { Color, Money } from "../golden/shared/common.js";
import { Timestamp } from "../golden/google/protobuf/timestamp.js";
import { Legacy } from "../golden/edge/legacy.js";
import { Object as ObjectMessage, String as StringMessage } from "../golden/edge/names.js";
import { ListValue, Struct, Value } from "../golden/edge/google/protobuf/struct.js";
import { thrownCode } from "../helpers.js";

const root = new URL("../..", import.meta.url).pathname;
const protos = join(root, "test/fixtures/protos");

/** protobufjs' view of the fixture protos: the reference implementation. */
const pb = new protobuf.Root();
pb.resolvePath = (origin, target) =>
  target.startsWith("shared/")
    ? join(protos, "include", target)
    : target === "google/protobuf/descriptor.proto"
      ? join(root, "node_modules/protobufjs", target)
      : protobuf.util.path.resolve(origin, target);
pb.loadSync([join(protos, "app/everything.proto"), join(protos, "edge/names.proto")], { keepCase: false });
pb.resolveAll();
const PbEverything = pb.lookupType("app.v1.Everything");
const PbLegacy = pb.lookupType("edge.legacy.Legacy");
const PbStruct = pb.lookupType("google.protobuf.Struct");

const hex = (b: Uint8Array) => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString("hex");

/** Writes with `fn` into a buffer of `size` bytes and returns what was written. */
function written(size: number, fn: (w: ProtoWriter) => void): Uint8Array {
  const w = new ProtoWriter();
  w.begin(new Uint8Array(size), 0, new SizeCounter());
  fn(w);
  const end = w.pos;
  return w.finish()[0]!.subarray(0, end);
}

function isProtocolError(err: unknown): boolean {
  return err instanceof KoalaError && err.code === "KOALA_ERR_PROTOCOL";
}

// ---------------------------------------------------------------------------------------------
// Scalars at their edges.

const INT32 = [0, 1, 127, 128, 300, 16383, 16384, 2 ** 31 - 1, -1, -2, -128, -(2 ** 31)];
const UINT32 = [0, 1, 127, 128, 2 ** 28 - 1, 2 ** 28, 2 ** 31, 2 ** 32 - 1];
const INT64 = [0n, 1n, -1n, 127n, 128n, 2n ** 31n - 1n, 2n ** 31n, 2n ** 32n, 2n ** 35n - 1n, 2n ** 35n, 2n ** 53n + 1n, 2n ** 63n - 1n, -(2n ** 63n), -(2n ** 31n), -(2n ** 32n) - 7n];
const UINT64 = [0n, 1n, 2n ** 32n - 1n, 2n ** 32n, 2n ** 49n, 2n ** 56n, 2n ** 63n, 2n ** 64n - 1n];
const FLOATS = [0, -0, 1.5, -2.25, NaN, Infinity, -Infinity, 3.4028234663852886e38, 1.401298464324817e-45];
const DOUBLES = [0, -0, 0.1, -1e308, 5e-324, NaN, Infinity, -Infinity, Number.MAX_SAFE_INTEGER];
const STRINGS = ["", "a", "x".repeat(127), "x".repeat(128), "é", "héllo", "日本語", "🐨 koala", `${"y".repeat(100)}é`, "ü".repeat(5000)];

test("every scalar writer agrees with protobufjs' Writer and with its size function", () => {
  const check = (what: string, size: number, ours: (w: ProtoWriter) => void, theirs: (w: protobuf.Writer) => void) => {
    const a = written(size, ours);
    const b = theirs(protobuf.Writer.create()) as unknown as protobuf.Writer;
    assert.is(hex(a), hex(b.finish()), what);
    assert.is(a.byteLength, size, `${what}: size function`);
  };
  for (const v of INT32) check(`int32 ${v}`, varint32Size(v), (w) => w.int32(v), (w) => w.int32(v));
  for (const v of UINT32) check(`uint32 ${v}`, varint32Size(v), (w) => w.uint32(v), (w) => w.uint32(v));
  for (const v of INT32) check(`sint32 ${v}`, sint32Size(v), (w) => w.sint32(v), (w) => w.sint32(v));
  for (const v of UINT32) check(`fixed32 ${v}`, 4, (w) => w.fixed32(v), (w) => w.fixed32(v));
  for (const v of INT32) check(`sfixed32 ${v}`, 4, (w) => w.sfixed32(v), (w) => w.sfixed32(v));
  for (const v of INT64) check(`int64 ${v}`, varint64Size(v), (w) => w.int64(v), (w) => w.int64(String(v)));
  for (const v of UINT64) check(`uint64 ${v}`, varint64Size(v), (w) => w.uint64(v), (w) => w.uint64(String(v)));
  for (const v of INT64) check(`sint64 ${v}`, sint64Size(v), (w) => w.sint64(v), (w) => w.sint64(String(v)));
  for (const v of UINT64) check(`fixed64 ${v}`, 8, (w) => w.fixed64(v), (w) => w.fixed64(String(v)));
  for (const v of INT64) check(`sfixed64 ${v}`, 8, (w) => w.sfixed64(v), (w) => w.sfixed64(String(v)));
  for (const v of FLOATS) check(`float ${v}`, 4, (w) => w.float(v), (w) => w.float(v));
  for (const v of DOUBLES) check(`double ${v}`, 8, (w) => w.double(v), (w) => w.double(v));
  for (const v of [true, false]) check(`bool ${v}`, 1, (w) => w.bool(v), (w) => w.bool(v));
  for (const v of STRINGS) check(`string of ${v.length}`, stringSize(v), (w) => w.string(v), (w) => w.string(v));
  for (const n of [0, 1, 127, 128, 20_000]) {
    const v = new Uint8Array(n).map((_, i) => i);
    check(`bytes of ${n}`, varint32Size(n) + n, (w) => w.bytes(v), (w) => w.bytes(v));
  }
  check("tag 1/0", 1, (w) => w.tag(1, 0), (w) => w.uint32(8));
  check("tag 2^29-1/5", 5, (w) => w.tag(2 ** 29 - 1, 5), (w) => w.uint32((2 ** 29 - 1) * 8 + 5));
});

test("strings of every kind (ASCII, 2-, 3- and 4-byte UTF-8, lone surrogates, concatenations, short and long) encode as Node's UTF-8 encoder does", () => {
  const unit = fc.oneof(
    fc.integer({ min: 0, max: 0x7f }),
    fc.integer({ min: 0x80, max: 0x7ff }),
    fc.integer({ min: 0x800, max: 0xffff }), // lone surrogates included
    fc.constantFrom(0xd83d, 0xde80, 0xdbff, 0xdc00),
  );
  const text = fc.array(unit, { maxLength: 300 }).map((units) => String.fromCharCode(...units));
  fc.assert(
    fc.property(text, text, (a, b) => {
      for (const s of [a, a + b, `${a}.${b}`]) {
        const expected = Buffer.from(s, "utf8");
        const size = stringSize(s);
        assert.is(size, varint32Size(expected.byteLength) + expected.byteLength, "stringSize");
        const w = new ProtoWriter();
        const c = new SizeCounter();
        c.reset(0);
        const buf = new Uint8Array(size);
        w.begin(buf, 0, c);
        w.string(s);
        assert.is(w.pos, size, "bytes written");
        const r = new ProtoReader(buf);
        assert.is(Buffer.compare(r.bytes(), expected), 0, JSON.stringify(s));
        // Between other fields, in a plain Uint8Array that starts inside its ArrayBuffer: the
        // bytes around the string stay as written.
        const inner = new Uint8Array(size + 8).subarray(3, 3 + size + 2);
        w.begin(inner, 0, c);
        w.byte(0xaa).string(s).byte(0xbb);
        assert.is(w.pos, size + 2, "bytes written between fields");
        assert.is(inner[0], 0xaa);
        assert.is(inner[size + 1], 0xbb);
        const r2 = new ProtoReader(inner, 1, size + 1);
        assert.is(Buffer.compare(r2.bytes(), expected), 0, `between fields: ${JSON.stringify(s)}`);
      }
    }),
    { numRuns: 400 },
  );
  // The edge of the one-pass path: 42 units of 3 bytes still take a one-byte length; 43 do not.
  for (const n of [42, 43]) {
    const s = "€".repeat(n);
    const w = new ProtoWriter();
    const c = new SizeCounter();
    c.reset(0);
    const buf = new Uint8Array(stringSize(s));
    w.begin(buf, 0, c);
    w.string(s);
    assert.is(new ProtoReader(buf).string(), s);
  }
});

test("every scalar reader reads what protobufjs writes", () => {
  const read = <T>(b: Uint8Array, fn: (r: ProtoReader) => T): T => {
    const r = new ProtoReader(b);
    const v = fn(r);
    assert.is(r.pos, b.byteLength, "reads exactly the value");
    return v;
  };
  const w = () => protobuf.Writer.create();
  for (const v of INT32) assert.is(read(w().int32(v).finish(), (r) => r.int32()), v);
  for (const v of UINT32) assert.is(read(w().uint32(v).finish(), (r) => r.uint32()), v);
  for (const v of INT32) assert.is(read(w().sint32(v).finish(), (r) => r.sint32()), v);
  for (const v of UINT32) assert.is(read(w().fixed32(v).finish(), (r) => r.fixed32()), v);
  for (const v of INT32) assert.is(read(w().sfixed32(v).finish(), (r) => r.sfixed32()), v);
  for (const v of INT64) assert.is(read(w().int64(String(v)).finish(), (r) => r.int64()), v);
  for (const v of UINT64) assert.is(read(w().uint64(String(v)).finish(), (r) => r.uint64()), v);
  for (const v of INT64) assert.is(read(w().sint64(String(v)).finish(), (r) => r.sint64()), v);
  for (const v of UINT64) assert.is(read(w().fixed64(String(v)).finish(), (r) => r.fixed64()), v);
  for (const v of INT64) assert.is(read(w().sfixed64(String(v)).finish(), (r) => r.sfixed64()), v);
  for (const v of FLOATS) assert.ok(Object.is(read(w().float(v).finish(), (r) => r.float()), v), `float ${v}`);
  for (const v of DOUBLES) assert.ok(Object.is(read(w().double(v).finish(), (r) => r.double()), v), `double ${v}`);
  for (const v of [true, false]) assert.is(read(w().bool(v).finish(), (r) => r.bool()), v);
  for (const v of STRINGS) assert.is(read(w().string(v).finish(), (r) => r.string()), v);
  // A negative int32 is a 10-byte varint; uint32 keeps its low 32 bits, as protobuf does.
  assert.is(read(w().int32(-1).finish(), (r) => r.uint32()), 2 ** 32 - 1);
  assert.is(read(w().uint64("18446744073709551615").finish(), (r) => r.int32()), -1);
});

test("sizes and writes agree for any JavaScript number, so odd values never corrupt a message", () => {
  const odd = [NaN, -0.5, 1.5, 2 ** 32 + 3, -(2 ** 31) - 5, 2 ** 53, Infinity, -Infinity, -0];
  for (const v of odd) {
    for (const method of ["uint32", "int32"] as const) assert.is(written(16, (w) => w[method](v)).byteLength, varint32Size(v), `${method}(${v})`);
    assert.is(written(16, (w) => w.sint32(v)).byteLength, sint32Size(v), `sint32(${v})`);
  }
  // Inside nested messages and packed fields, where a wrong size would shift every later byte.
  const m = Everything.create({
    rInt32: odd,
    nested: { label: "n", level: -1 as Everything_Nested_Level, child: { label: "c", level: 2 ** 40, child: undefined } },
    rColor: [NaN as Color, -3 as Color],
    fString: "after",
  });
  const bytes = Everything.encode(m);
  assert.is(bytes.byteLength, encodedLength(Everything, m));
  const back = Everything.decode(bytes);
  assert.equal(back.rInt32, odd.map((v) => v | 0), "each value arrives as its int32 (low 32 bits)");
  assert.is(back.nested!.level, -1);
  assert.is(back.nested!.child!.level, 0);
  assert.equal(back.rColor, [0, -3]);
  assert.is(back.fString, "after");
  const theirs = PbEverything.toObject(PbEverything.decode(bytes)) as { rInt32: number[]; fString: string };
  assert.equal(theirs.rInt32, back.rInt32, "protobufjs reads the same");
  // 64-bit fields take numbers as well as bigints, the same way in both passes.
  const n = Everything.create({ fInt64: 5 as unknown as bigint, fUint64: 2 ** 40 as unknown as bigint, rSint64: [-3 as unknown as bigint] });
  assert.equal([Everything.decode(Everything.encode(n)).fInt64, Everything.decode(Everything.encode(n)).fUint64], [5n, 2n ** 40n]);
  assert.equal(Everything.decode(Everything.encode(n)).rSint64, [-3n]);
});

// ---------------------------------------------------------------------------------------------
// Whole messages against protobufjs.

const int32 = fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 });
const uint32 = fc.integer({ min: 0, max: 2 ** 32 - 1 });
const int64 = fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n });
const uint64 = fc.bigInt({ min: 0n, max: 2n ** 64n - 1n });
const text = fc.oneof(fc.string({ maxLength: 12 }), fc.string({ unit: "grapheme", maxLength: 40 }), fc.string({ minLength: 120, maxLength: 300 }));
const bytes = fc.uint8Array({ maxLength: 40 });
const enumValue = fc.oneof(fc.constantFrom(0, 1, 2), int32);

const nestedArb: fc.Arbitrary<Everything_Nested> = fc.letrec<{ nested: Everything_Nested }>((tie) => ({
  nested: fc.record({
    label: text,
    level: enumValue as fc.Arbitrary<Everything_Nested_Level>,
    child: fc.option(tie("nested"), { nil: undefined, depthSize: "small" }),
  }),
})).nested;

const everythingArb: fc.Arbitrary<Everything> = fc
  .record({
    fDouble: fc.double(),
    fFloat: fc.float(),
    fInt32: int32,
    fInt64: int64,
    fUint32: uint32,
    fUint64: uint64,
    fSint32: int32,
    fSint64: int64,
    fFixed32: uint32,
    fFixed64: uint64,
    fSfixed32: int32,
    fSfixed64: int64,
    fBool: fc.boolean(),
    fString: text,
    fBytes: bytes,
    color: enumValue as fc.Arbitrary<Color>,
    price: fc.option(fc.record({ currency: text, units: int64, nanos: int32 }), { nil: undefined }),
    nested: fc.option(nestedArb, { nil: undefined }),
    rInt32: fc.array(int32, { maxLength: 6 }),
    rSint64: fc.array(int64, { maxLength: 6 }),
    rDouble: fc.array(fc.double(), { maxLength: 6 }),
    rBool: fc.array(fc.boolean(), { maxLength: 6 }),
    rString: fc.array(text, { maxLength: 4 }),
    rBytes: fc.array(bytes, { maxLength: 4 }),
    rNested: fc.array(nestedArb, { maxLength: 3 }),
    rColor: fc.array(enumValue as fc.Arbitrary<Color>, { maxLength: 4 }),
    mStringInt32: fc.dictionary(fc.string({ maxLength: 8 }), int32, { maxKeys: 4, noNullPrototype: true }),
    mInt64String: fc.dictionary(int64.map(String), text, { maxKeys: 4, noNullPrototype: true }),
    mUint32Nested: fc.dictionary(uint32.map(String), nestedArb, { maxKeys: 3, noNullPrototype: true }) as fc.Arbitrary<{ [key: number]: Everything_Nested }>,
    mBoolBytes: fc.dictionary(fc.constantFrom("true", "false"), bytes, { maxKeys: 2, noNullPrototype: true }),
    choice: fc.oneof(
      fc.constant({ case: undefined }),
      fc.record({ case: fc.constant("cText" as const), value: text }),
      fc.record({ case: fc.constant("cNumber" as const), value: int64 }),
      fc.record({ case: fc.constant("cNested" as const), value: nestedArb }),
    ),
    oInt32: fc.option(int32, { nil: undefined }),
    oString: fc.option(text, { nil: undefined }),
    at: fc.option(fc.record({ seconds: int64, nanos: int32 }), { nil: undefined }),
    took: fc.option(fc.record({ seconds: int64, nanos: int32 }), { nil: undefined }),
    maybeName: fc.option(fc.record({ value: text }), { nil: undefined }),
    maybeCount: fc.option(fc.record({ value: int64 }), { nil: undefined }),
  })
  .map((m) => m as Everything);

/** Our message as protobufjs' fromObject takes it: fields at their (implicit) default left out, as our encoder leaves them out. */
function toPb(m: Everything): Record<string, unknown> {
  const o: Record<string, unknown> = {};
  const nested = (n: Everything_Nested): Record<string, unknown> => ({
    ...(n.label === "" ? {} : { label: n.label }),
    ...(n.level === 0 ? {} : { level: n.level }),
    ...(n.child === undefined ? {} : { child: nested(n.child) }),
  });
  for (const [k, v] of Object.entries(m)) {
    if (v === undefined || v === "" || v === 0n || v === false) continue;
    if (typeof v === "number" && Object.is(v, 0)) continue;
    if (typeof v === "number" && v === 0 && !["fDouble", "fFloat"].includes(k)) continue;
    if (v instanceof Uint8Array && v.byteLength === 0) continue;
    if (k === "choice") {
      const c = v as Everything["choice"];
      if (c.case !== undefined) o[c.case] = c.case === "cNested" ? nested(c.value) : c.value;
    } else if (k === "nested") o[k] = nested(v as Everything_Nested);
    else if (k === "rNested") o[k] = (v as Everything_Nested[]).map(nested);
    else if (k === "mUint32Nested") o[k] = Object.fromEntries(Object.entries(v as object).map(([key, n]) => [key, nested(n as Everything_Nested)]));
    else o[k] = v;
  }
  if (m.oInt32 !== undefined) o.oInt32 = m.oInt32;
  if (m.oString !== undefined) o.oString = m.oString;
  return o;
}

/** Bytes as plain arrays, so a Buffer view and a Uint8Array with the same bytes compare equal. */
function plain(x: unknown): unknown {
  if (x instanceof Uint8Array) return { bytes: [...x] };
  if (Array.isArray(x)) return x.map(plain);
  if (x !== null && typeof x === "object") return Object.fromEntries(Object.entries(x).map(([k, v]) => [k, plain(v)]));
  return x;
}

test("random messages of every field kind: byte-identical to protobufjs, and decode back equal", () => {
  fc.assert(
    fc.property(everythingArb, (m) => {
      const ours = Everything.encode(m);
      const theirs = PbEverything.encode(PbEverything.fromObject(toPb(m))).finish();
      assert.is(hex(ours), hex(theirs), "same bytes as protobufjs");
      assert.is(ours.byteLength, encodedLength(Everything, m));
      const back = Everything.decode(ours);
      assert.equal(plain(back), plain(Everything.create(m)), "decodes back to the message");
      assert.equal(plain(Everything.decode(theirs)), plain(back), "decodes protobufjs' bytes the same");
    }),
    { numRuns: 300 },
  );
});

test("a hand-picked message: protobufjs reads every field back", () => {
  const m = Everything.create({
    fUint64: 2n ** 64n - 1n,
    fSfixed64: -(2n ** 63n),
    fString: "héllo, 世界 ✓",
    fBytes: new Uint8Array([0, 1, 2, 255]),
    price: { currency: "EUR", units: 12n, nanos: -5 },
    mInt64String: { "-5": "minus five", "9007199254740993": "big" },
    choice: { case: "cNumber", value: -42n },
    oInt32: 0,
    at: { seconds: 1_700_000_000n, nanos: 5 },
  });
  const o = PbEverything.toObject(PbEverything.decode(Everything.encode(m)), { longs: String, bytes: Array, oneofs: true }) as Record<string, any>;
  assert.is(o.fUint64, "18446744073709551615");
  assert.is(o.fSfixed64, "-9223372036854775808");
  assert.is(o.fString, m.fString);
  assert.equal(o.fBytes, [0, 1, 2, 255]);
  assert.equal(o.price, { currency: "EUR", units: "12", nanos: -5 });
  assert.equal(o.mInt64String, { "-5": "minus five", "9007199254740993": "big" });
  assert.is(o.choice, "cNumber");
  assert.is(o.cNumber, "-42");
  assert.is(o.oInt32, 0, "an optional zero is present");
  assert.is(o.at.seconds, "1700000000");
  // Unpacked repeated scalars (what a proto2 writer sends) are read too.
  assert.equal(Everything.decode(new Uint8Array([0xa0, 0x01, 0x05, 0xa0, 0x01, 0x06])).rInt32, [5, 6]);
  // Fields this version does not know are skipped, whatever their wire type.
  const unknown = protobuf.Writer.create().uint32((99 << 3) | 0).uint64("18446744073709551615").uint32((98 << 3) | 1).fixed64(1).uint32((97 << 3) | 2).bytes(new Uint8Array(3)).uint32((96 << 3) | 5).fixed32(1);
  unknown.uint32((95 << 3) | 3).uint32((1 << 3) | 0).uint32(1).uint32((95 << 3) | 4).uint32((14 << 3) | 2).string("kept");
  assert.is(Everything.decode(unknown.finish()).fString, "kept");
});

test("defaults encode to nothing; explicit presence keeps zeros", () => {
  assert.is(Everything.encode(Everything.create()).byteLength, 0);
  assert.equal(plain(Everything.decode(new Uint8Array(0))), plain(Everything.create()));
  assert.is(Everything.decode(Everything.encode(Everything.create({ oInt32: 0, oString: "" }))).oInt32, 0);
  assert.is(Everything.decode(Everything.encode(Everything.create({ oString: "" }))).oString, "");
  assert.is(Everything.decode(Everything.encode(Everything.create())).oInt32, undefined);
  // Partial messages (what handlers return) encode like complete ones.
  const partial = { fString: "only" } as unknown as Everything;
  assert.is(hex(Everything.encode(partial)), hex(Everything.encode(Everything.create({ fString: "only" }))));
  // -0 is not the default of a double: it is sent, as protobufjs sends it.
  assert.ok(Object.is(Everything.decode(Everything.encode(Everything.create({ fDouble: -0 }))).fDouble, -0));
});

test("proto2: presence, unpacked and packed repeated fields, as protobufjs encodes them", () => {
  const m = Legacy.create({ count: 0, name: "", unpacked: [1, -1, 300], packed: [-2, 2], blob: new Uint8Array(0), color: 2, big: 2n ** 63n, next: { name: "n", unpacked: [], packed: [] } });
  const ours = Legacy.encode(m);
  const theirs = PbLegacy.encode(PbLegacy.fromObject({ count: 0, name: "", unpacked: [1, -1, 300], packed: [-2, 2], blob: new Uint8Array(0), color: 2, big: 2n ** 63n, next: { name: "n" } })).finish();
  assert.is(hex(ours), hex(theirs));
  const back = Legacy.decode(ours);
  assert.is(back.count, 0, "an explicit zero survives");
  assert.is(back.name, "");
  assert.equal(back.unpacked, [1, -1, 300]);
  assert.equal(back.packed, [-2, 2]);
  const absent = Legacy.decode(new Uint8Array([0x12, 0x00]));
  assert.is(absent.count, 5, "an absent field reads as its [default = 5]");
  assert.not.ok(Object.hasOwn(absent, "count"), "... and stays absent");
  assert.is(Legacy.encode(absent).byteLength, 2, "an absent field with a default is not encoded");
  assert.is(Legacy.defaults.count, 5);
  // A missing required field is an error both ways.
  assert.throws(() => Legacy.decode(new Uint8Array(0)), (e: unknown) => isProtocolError(e) && /edge\.legacy\.Legacy: required field name not set/.test((e as Error).message));
  assert.is(thrownCode(() => Legacy.encode({})), "KOALA_ERR_INVALID_ARGUMENT");
  // A proto2 field declared unpacked is still read when a writer packs it.
  assert.equal(Legacy.decode(protobuf.Writer.create().uint32((3 << 3) | 2).fork().int32(7).int32(8).ldelim().uint32((2 << 3) | 2).string("").finish()).unpacked, [7, 8]);
  // Extension fields are kept as unknown fields and written back.
  const ext = protobuf.Writer.create().uint32((100 << 3) | 0).int32(9).uint32((2 << 3) | 2).string("x").finish();
  const withExt = Legacy.decode(ext);
  assert.is(withExt.name, "x");
  assert.is(hex(Legacy.encode(withExt)), hex(Uint8Array.from([0x12, 0x01, 0x78, 0xa0, 0x06, 0x09])), "known fields first, then the unknown ones as they came");
});

test("Struct, Value and ListValue (recursive oneofs in maps) match protobufjs", () => {
  const v = (kind: Value["kind"]): Value => ({ kind });
  const s: Struct = {
    fields: {
      n: v({ case: "numberValue", value: 1.5 }),
      s: v({ case: "stringValue", value: "x" }),
      b: v({ case: "boolValue", value: false }),
      z: v({ case: "nullValue", value: 0 }),
      l: v({ case: "listValue", value: { values: [v({ case: "numberValue", value: 2 }), v({ case: "structValue", value: { fields: {} } })] } }),
    },
  };
  const ours = Struct.encode(s);
  const theirs = PbStruct.encode(
    PbStruct.fromObject({
      fields: { n: { numberValue: 1.5 }, s: { stringValue: "x" }, b: { boolValue: false }, z: { nullValue: 0 }, l: { listValue: { values: [{ numberValue: 2 }, { structValue: {} }] } } },
    }),
  ).finish();
  assert.is(hex(ours), hex(theirs));
  assert.equal(Struct.decode(ours), s);
  assert.equal(ListValue.decode(ListValue.encode({ values: [] })), { values: [] });
});

test("a map key named __proto__ is an ordinary entry, not a prototype", () => {
  const clients: ObjectMessage["clients"] = {};
  Object.defineProperty(clients, "__proto__", { value: { id: "evil" }, enumerable: true, writable: true, configurable: true });
  clients.ok = { id: "fine" };
  const m = ObjectMessage.decode(ObjectMessage.encode(ObjectMessage.create({ clients, flags: { true: "t", false: "f" }, children: { "-1": ObjectMessage.create() } })));
  assert.is(Object.getPrototypeOf(m.clients), Object.prototype);
  assert.equal(Object.keys(m.clients), ["__proto__", "ok"]);
  assert.is(Object.getOwnPropertyDescriptor(m.clients, "__proto__")!.value.id, "evil");
  assert.equal(m.flags, { true: "t", false: "f" });
  assert.equal(Object.keys(m.children), ["-1"]);
  // Messages named after globals and runtime exports work like any other.
  const str = StringMessage.decode(StringMessage.encode({ legacy: { name: "l", unpacked: [], packed: [] }, value: { kind: { case: "stringValue", value: "v" } } }));
  assert.is(str.legacy!.name, "l");
  assert.equal(str.value!.kind, { case: "stringValue", value: "v" });
});

// ---------------------------------------------------------------------------------------------
// Scatter-gather, headroom, allocation.

test("encodeMessage: large bytes are parts of their own, headroom comes first, memory is asked for once at its exact size", () => {
  fc.assert(
    fc.property(everythingArb, fc.nat({ max: 64 }), fc.integer({ min: 1, max: 30 }), (m, headroom, threshold) => {
      const whole = Everything.encode(m);
      const sizes: number[] = [];
      const parts = encodeMessage(Everything, m, { headroom, externalBytesThreshold: threshold, alloc: (n) => (sizes.push(n), new Uint8Array(n)) });
      const joined = Buffer.concat(parts);
      assert.is(hex(joined.subarray(headroom)), hex(whole), "the parts concatenate to the encoding");
      assert.is(sizes.length, 1, "one allocation");
      assert.ok(parts[0]!.byteLength >= headroom, "the first part holds the headroom");
      // Every part past the first is either the caller's own bytes value (not a copy) or memory from the one allocation.
      const big = [m.fBytes, ...m.rBytes, ...Object.values(m.mBoolBytes)].filter((b) => b.byteLength >= threshold);
      const external = parts.filter((p) => big.includes(p));
      assert.is(external.length, big.length, "each large bytes value is sent as it is");
      assert.is(sizes[0], headroom + whole.byteLength - big.reduce((n, b) => n + b.byteLength, 0), "only the inline bytes are allocated");
    }),
    { numRuns: 200 },
  );
});

test("encodeMessage: a message starting with a large bytes field still starts with its own part; 0 and Infinity never externalize", () => {
  const payload = new Uint8Array(70_000).fill(7);
  const m = Money.create({ currency: "x" });
  const nested = Everything.create({ fBytes: payload });
  for (const headroom of [0, 24]) {
    const parts = encodeMessage(Everything, nested, { headroom });
    assert.is(parts.length, 2);
    assert.is(parts[1], payload, "default threshold (64 KiB): sent from the caller's memory");
    assert.is(parts[0]!.byteLength, headroom + 1 + varint32Size(payload.byteLength), "headroom, tag and length");
  }
  for (const externalBytesThreshold of [0, Infinity]) assert.is(encodeMessage(Everything, nested, { externalBytesThreshold }).length, 1);
  assert.is(encodeMessage(Money, m, { headroom: 8 })[0]!.byteLength, 8 + Money.encode(m).byteLength);
  const empty = encodeMessage(Money, Money.create(), { headroom: 5 });
  assert.equal(empty.map((p) => p.byteLength), [5], "an empty message is its headroom");
});

test("encodeMessage refuses bad options, wrong field types and inconsistent types, naming the problem", () => {
  assert.is(thrownCode(() => encodeMessage(Money, Money.create(), { headrom: 4 } as never)), "KOALA_ERR_INVALID_ARGUMENT");
  assert.throws(() => encodeMessage(Money, Money.create(), { headrom: 4 } as never), /unknown option "headrom" \(did you mean "headroom"\?\)/);
  assert.throws(() => encodeMessage(Money, Money.create(), { externalBytesThreshold: -1 }), /externalBytesThreshold/);
  assert.throws(() => encodeMessage(Money, Money.create({ currency: "EUR" }), { alloc: (n) => new Uint8Array(n - 1) }), /alloc\(5\) returned only 4 bytes/);
  for (const bad of ["text", new ArrayBuffer(4), new Int32Array(2), null]) {
    assert.throws(() => Everything.encode(Everything.create({ rBytes: [bad as never] })), (e: unknown) => e instanceof KoalaError && /bytes field needs a Uint8Array/.test(e.message) || e instanceof TypeError);
  }
  // A type whose size pass and write pass disagree is caught before its bytes leave.
  const lying: MessageType<{ n: number }> = { ...(Money as unknown as MessageType<{ n: number }>), sizeOf: () => 3, write: (_m, w) => void w.uint32(1) };
  assert.throws(() => encodeMessage(lying, { n: 1 }), /write pass produced 1 bytes where the size pass counted 3/);
});

// ---------------------------------------------------------------------------------------------
// Decoding: views, and malformed input.

test("decoded bytes fields are views of the input, wherever they sit", () => {
  const pool = Buffer.alloc(4096);
  const m = Everything.create({ fBytes: new Uint8Array([1, 2, 3]), rBytes: [new Uint8Array([4])], mBoolBytes: { true: new Uint8Array([5, 6]) }, nested: { label: "x", level: 0, child: undefined } });
  const enc = Everything.encode(m);
  const input = pool.subarray(100, 100 + enc.byteLength);
  input.set(enc);
  const back = Everything.decode(input);
  for (const b of [back.fBytes, back.rBytes[0]!, back.mBoolBytes.true!]) {
    assert.is(b.buffer, pool.buffer, "same memory as the input");
    assert.ok(b.byteOffset >= input.byteOffset && b.byteOffset + b.byteLength <= input.byteOffset + input.byteLength);
  }
  assert.equal([...back.fBytes], [1, 2, 3]);
  pool[back.fBytes.byteOffset + 2] = 9; // the view sees later writes to the input's memory
  assert.is(back.fBytes[2], 9);
});

test("runs of short strings (ASCII and not, sparse and dense) decode as written, from any range of a larger buffer, by a reused reader", () => {
  const unit = fc.oneof(fc.integer({ min: 0x20, max: 0x7e }), fc.integer({ min: 0x80, max: 0x7ff }), fc.constantFrom(0xe9, 0x4e2d));
  const str = fc.oneof(fc.array(fc.integer({ min: 0, max: 0x7f }), { maxLength: 70 }), fc.array(unit, { maxLength: 20 })).map((units) => String.fromCharCode(...units));
  // A string field between padding fields (a bytes field of `pad` bytes) that spreads the strings out.
  const field = fc.record({ s: str, pad: fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 2000 })) });
  const reader = new ProtoReader(new Uint8Array(0));
  fc.assert(
    fc.property(fc.array(field, { maxLength: 60 }), fc.integer({ min: 0, max: 9 }), (fields, lead) => {
      const w = protobuf.Writer.create();
      for (const f of fields) {
        w.string(f.s);
        if (f.pad > 0) w.bytes(new Uint8Array(f.pad).fill(0x41)); // ASCII padding: must not leak into a string
      }
      const enc = w.finish();
      const pool = new Uint8Array(lead + enc.byteLength + 5).fill(0x42);
      pool.set(enc, lead);
      reader.reset(pool, lead, lead + enc.byteLength);
      for (const f of fields) {
        assert.is(reader.string(), f.s);
        if (f.pad > 0) assert.is(reader.bytes().byteLength, f.pad);
      }
      assert.is(reader.pos, lead + enc.byteLength);
    }),
    { numRuns: 300 },
  );
  // A range over 256 KiB: dense short strings still decode as written.
  const w = protobuf.Writer.create();
  const many = Array.from({ length: 30_000 }, (_, i) => (i % 7 === 0 ? `é${i}` : `key.${i}`));
  for (const s of many) w.string(s);
  const big = w.finish();
  reader.reset(big, 0, big.byteLength);
  for (const s of many) assert.is(reader.string(), s);
});

test("malformed input throws KOALA_ERR_PROTOCOL with the reason", () => {
  const cases: [string, number[], RegExp][] = [
    ["truncated varint", [0x18, 0x80], /truncated varint/],
    ["varint of 11 bytes", [0x18, ...new Array(10).fill(0xff), 0x01], /longer than 10 bytes/],
    ["length past the end", [0x72, 0x05, 0x61], /needs 5 more bytes/],
    ["nested length past the end", [0x92, 0x01, 0x09, 0x0a, 0x01], /runs past the end/],
    ["wire type 6", [0x0e], /invalid wire type 6/],
    ["wire type 7", [0xbf, 0x06], /invalid wire type 7/],
    ["end group without a start", [0x0c], /end-group tag of field 1 outside any group/],
    ["unterminated group", [0xfb, 0x06, 0x08, 0x01], /unterminated group/],
    ["mismatched group end", [0xfb, 0x06, 0xfc, 0x07], /group 111 ended by the end tag of field 127/],
    ["field number 0", [0x00, 0x01], /field number 0/],
    ["fixed64 cut short", [0x51, 1, 2, 3], /needs \d more bytes/],
    ["packed field overrunning its length", [0xa2, 0x01, 0x01, 0x80, 0x01], /packed field overran|truncated/],
    ["nested message overrunning its length", [0x92, 0x01, 0x02, 0x0a, 0x05, 0x61, 0x62, 0x63, 0x64, 0x65], /overran its length|needs/],
    ["trailing garbage inside a nested message", [0x92, 0x01, 0x01, 0x80], /truncated varint|overran/],
  ];
  for (const [what, bytes, why] of cases) {
    try {
      Everything.decode(Uint8Array.from(bytes));
      assert.unreachable(`${what}: decoded`);
    } catch (err) {
      assert.ok(isProtocolError(err), `${what}: ${String(err)}`);
      assert.match((err as Error).message, why, what);
    }
  }
});

test("nesting: 100 levels below the top decode, 101 are refused, deep groups too, without exhausting the stack", () => {
  const nest = (levels: number) => {
    let b = new Uint8Array(0);
    for (let i = 0; i < levels; i++) b = Uint8Array.from([0x1a, ...varint(b.length), ...b]);
    return b;
  };
  let depth = 0;
  for (let n: Everything_Nested | undefined = Everything_Nested.decode(nest(100)); n?.child; n = n.child) depth++;
  assert.is(depth, 100);
  assert.throws(() => Everything_Nested.decode(nest(101)), /nested deeper than 100/);
  assert.throws(() => Everything_Nested.decode(nest(10_000)), /nested deeper than 100/);
  const groups = Uint8Array.from([...new Array(5000).fill(0x23)]); // field 4, start group, 5000 times
  assert.throws(() => Everything_Nested.decode(groups), (e: unknown) => isProtocolError(e));
});

const fuzzTypes: [string, MessageType<any>][] = [
  ["Everything", Everything],
  ["Nested", Everything_Nested],
  ["Timestamp", Timestamp],
  ["Legacy", Legacy],
  ["Struct", Struct],
  ["Object", ObjectMessage],
];

test("random bytes and damaged encodings: decoded or refused with KOALA_ERR_PROTOCOL, nothing else", () => {
  const decodeOrProtocolError = (type: MessageType<any>, b: Uint8Array) => {
    try {
      type.decode(b);
    } catch (err) {
      if (!isProtocolError(err)) throw err;
    }
  };
  for (const [, type] of fuzzTypes) {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 300 }), (b) => decodeOrProtocolError(type, b)), { numRuns: 300 });
  }
  // Valid encodings with bytes flipped, cut off or inserted reach deeper into the decoders.
  fc.assert(
    fc.property(everythingArb, fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 }), fc.constantFrom("flip", "cut", "insert")), { minLength: 1, maxLength: 4 }), (m, edits) => {
      let b = Uint8Array.from(Everything.encode(m));
      for (const [at, byte, op] of edits) {
        if (b.length === 0) break;
        const i = at % b.length;
        if (op === "flip") b[i] = byte;
        else if (op === "cut") b = b.subarray(0, i);
        else b = Uint8Array.from([...b.subarray(0, i), byte, ...b.subarray(i)]);
      }
      decodeOrProtocolError(Everything, b);
    }),
    { numRuns: 300 },
  );
  // Every truncation of a rich message.
  const good = Everything.encode(Everything.create({ fString: "s", nested: { label: "n", level: 1, child: { label: "c", level: 0, child: undefined } }, rDouble: [1, 2], mUint32Nested: { 3: Everything_Nested.create() }, choice: { case: "cNumber", value: -1n } }));
  for (let n = 0; n < good.length; n++) decodeOrProtocolError(Everything, good.subarray(0, n));
});

test("decodeWith reads one whole message and refuses trailing bytes of a nested read", () => {
  const enc = Money.encode({ currency: "EUR", units: 1n, nanos: 2 });
  assert.equal(decodeWith(Money, enc), { currency: "EUR", units: 1n, nanos: 2 });
  const r = new ProtoReader(Uint8Array.from([0xff, ...enc, 0xff]), 1, 1 + enc.byteLength);
  assert.equal(Money.read(r, r.end), { currency: "EUR", units: 1n, nanos: 2 });
  assert.is(r.pos, 1 + enc.byteLength, "a reader over part of a buffer stops at its end");
});

function varint(n: number): number[] {
  const out: number[] = [];
  while (n >= 0x80) {
    out.push((n & 0x7f) | 0x80);
    n >>>= 7;
  }
  out.push(n);
  return out;
}

test.run();
