/** koala gen: golden output, every field kind round-trips and agrees with protobufjs, malformed input fails cleanly. */
import { test } from "uvu";
import * as assert from "uvu/assert";
import { readFileSync, writeFileSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import fc from "fast-check";
import protobuf from "protobufjs";
import { generate } from "../../src/rpc/codegen/generate.js";
import { encodeMessage, encodeToBytes } from "../../src/rpc/wire/writer.js";
import { KoalaError } from "../../src/errors.js";
import { Everything, Everything_Nested, Everything_Nested_Level, KindsService } from "../golden/everything.js";
import { Color } from "../golden/shared/common.js";

const root = new URL("../..", import.meta.url).pathname;
const fixture = join(root, "test/fixtures/protos/app/everything.proto");
const include = join(root, "test/fixtures/protos/include");
const goldenDir = join(root, "test/golden");

test("generated code matches the golden copy (KOALA_UPDATE_GOLDEN=1 rewrites it)", () => {
  const out = generate([fixture], { includeDirs: [include], runtimeImport: "../../src/index.js" });
  assert.equal([...out.keys()].sort(), ["everything.ts", "google/protobuf/wkt.ts", "shared/common.ts"]);
  for (const [rel, text] of out) {
    const path = join(goldenDir, rel);
    if (process.env.KOALA_UPDATE_GOLDEN === "1") {
      mkdirSync(dirname(path), { recursive: true });
      writeFileSync(path, text);
    }
    assert.fixture(text, readFileSync(path, "utf8"), rel);
  }
});

test("the examples' generated code is up to date", () => {
  for (const [proto, dir, runtime] of [
    ["examples/hello/hello.proto", "examples/hello/gen", "../../../src/index.js"],
    ["examples/kv/kv.proto", "examples/kv/gen", "../../../src/index.js"],
    ["test/fixtures/rpc/echo.proto", "test/fixtures/rpc/gen", "../../../../src/index.js"],
  ] as const) {
    for (const [rel, text] of generate([join(root, proto)], { runtimeImport: runtime })) {
      assert.fixture(readFileSync(join(root, dir, rel), "utf8"), text, `${dir}/${rel}: run npm run gen:examples`);
    }
  }
});

test("service definitions carry names, paths and call kinds", () => {
  const m = KindsService.methods;
  assert.is(KindsService.typeName, "app.v1.Kinds");
  assert.equal(
    Object.values(m).map((x) => [x.localName, x.path, x.kind]),
    [
      ["unary", "/app.v1.Kinds/Unary", "unary"],
      ["serverStream", "/app.v1.Kinds/ServerStream", "server_streaming"],
      ["clientStream", "/app.v1.Kinds/ClientStream", "client_streaming"],
      ["bidi", "/app.v1.Kinds/Bidi", "bidi_streaming"],
    ],
  );
  assert.is(m.bidi.input, Everything_Nested);
});

/** Bytes as plain arrays, so a Buffer view and a Uint8Array with the same bytes compare equal. */
function plain(x: unknown): unknown {
  if (x instanceof Uint8Array) return { bytes: [...x] };
  if (Array.isArray(x)) return x.map(plain);
  if (x !== null && typeof x === "object") return Object.fromEntries(Object.entries(x).map(([k, v]) => [k, plain(v)]));
  return x;
}

function sample(): Everything {
  return Everything.create({
    fDouble: -1.5,
    fFloat: 0.25,
    fInt32: -7,
    fInt64: -(2n ** 60n),
    fUint32: 4_000_000_000,
    fUint64: 2n ** 64n - 1n,
    fSint32: -123456,
    fSint64: -(2n ** 62n) + 3n,
    fFixed32: 0xdeadbeef,
    fFixed64: 2n ** 63n + 9n,
    fSfixed32: -2,
    fSfixed64: -(2n ** 63n),
    fBool: true,
    fString: "héllo, 世界 ✓",
    fBytes: new Uint8Array([0, 1, 2, 255]),
    color: Color.GREEN,
    price: { currency: "EUR", units: 12n, nanos: -5 },
    nested: { label: "outer", level: Everything_Nested_Level.DEEP, child: { label: "inner", level: 0, child: undefined } },
    rInt32: [1, -1, 300, 0],
    rSint64: [-1n, 2n ** 40n],
    rDouble: [1.25, -0, Infinity],
    rBool: [true, false, true],
    rString: ["a", "", "ü"],
    rBytes: [new Uint8Array([9]), new Uint8Array(0)],
    rNested: [{ label: "x", level: 1, child: undefined }, { label: "", level: 0, child: undefined }],
    rColor: [Color.RED, Color.GREEN],
    mStringInt32: { one: 1, two: -2 },
    mInt64String: { "-5": "minus five", "9007199254740993": "big" },
    mUint32Nested: { 7: { label: "seven", level: 0, child: undefined } },
    mBoolBytes: { true: new Uint8Array([1]), false: new Uint8Array([]) },
    choice: { case: "cNumber", value: -42n },
    oInt32: 0,
    oString: undefined,
    at: { seconds: 1_700_000_000n, nanos: 5 },
    took: { seconds: -1n, nanos: -500 },
    maybeName: { value: "n" },
    maybeCount: { value: 0n },
  });
}

test("a message with every field kind round-trips", () => {
  const m = sample();
  const back = Everything.decode(Everything.encode(m));
  assert.equal(plain(back), plain(m));
  for (const choice of [{ case: "cText", value: "t" }, { case: "cNested", value: { label: "n", level: 0, child: undefined } }, { case: undefined }] as const) {
    const x = Everything.create({ choice: choice as Everything["choice"] });
    assert.equal(plain(Everything.decode(Everything.encode(x)).choice), plain(choice));
  }
  assert.equal(plain(Everything.decode(Everything.encode(Everything.create()))), plain(Everything.create()), "defaults encode to nothing and decode back");
  assert.is(Everything.encode(Everything.create()).byteLength, 0);
  assert.is(Everything.decode(Everything.encode(Everything.create({ oInt32: 0 }))).oInt32, 0, "optional keeps presence of a zero");
});

const pbRoot = new protobuf.Root();
pbRoot.resolvePath = (origin, target) => (target.startsWith("shared/") ? join(include, target) : protobuf.util.path.resolve(origin, target));
pbRoot.loadSync(fixture, { keepCase: false });
const PbEverything = pbRoot.lookupType("app.v1.Everything");

test("protobufjs reads what koala writes, and koala reads what protobufjs writes", () => {
  const m = sample();
  const ours = Everything.encode(m);
  const theirs = PbEverything.toObject(PbEverything.decode(ours), { longs: String, defaults: false, bytes: Array, oneofs: true }) as Record<string, any>;
  assert.is(theirs.fString, m.fString);
  assert.is(theirs.fUint64, String(m.fUint64));
  assert.is(theirs.fSint64, String(m.fSint64));
  assert.is(theirs.fFixed64, String(m.fFixed64));
  assert.is(theirs.fSfixed64, String(m.fSfixed64));
  assert.is(theirs.fInt64, String(m.fInt64));
  assert.is(theirs.fUint32, m.fUint32);
  assert.equal(theirs.fBytes, [0, 1, 2, 255]);
  assert.equal(theirs.rInt32, m.rInt32);
  assert.equal(theirs.rSint64, m.rSint64.map(String));
  assert.equal(theirs.mStringInt32, { one: 1, two: -2 });
  assert.equal(theirs.mInt64String, { "-5": "minus five", "9007199254740993": "big" });
  assert.is(theirs.mUint32Nested["7"].label, "seven");
  assert.is(theirs.choice, "cNumber");
  assert.is(theirs.cNumber, "-42");
  assert.is(theirs.nested.child.label, "inner");
  assert.is(theirs.at.seconds, "1700000000");
  assert.is(theirs.maybeName.value, "n");

  // The other way: protobufjs encodes (packed or not as it likes), koala decodes the same message.
  const pbBytes = PbEverything.encode(PbEverything.decode(ours)).finish();
  assert.equal(plain(Everything.decode(pbBytes)), plain(m));
  // Unpacked repeated scalars are accepted too.
  const unpacked = new Uint8Array([0xa0, 0x01, 0x05, 0xa0, 0x01, 0x06]); // field 20, varints 5 and 6
  assert.equal(Everything.decode(unpacked).rInt32, [5, 6]);
});

test("large bytes fields are sent as parts of their own, without a copy; headroom is reserved", () => {
  const payload = new Uint8Array(100_000).fill(3);
  const m = Everything.create({ fString: "before", fBytes: payload, rString: ["after"] });
  const parts = encodeMessage(Everything, m, { headroom: 24, externalBytesThreshold: 1000 });
  assert.ok(parts.length >= 2);
  assert.ok(parts.includes(payload), "the caller's bytes are one of the parts, not a copy");
  const joined = Buffer.concat(parts);
  assert.ok(joined.subarray(24).equals(Buffer.from(encodeToBytes(Everything, m))));
  let allocated = 0;
  encodeMessage(Everything, m, { alloc: (n) => new Uint8Array((allocated = n)), externalBytesThreshold: 1000 });
  assert.ok(allocated < 1000, `only the inline bytes are allocated (${allocated})`);
});

test("decoded bytes fields are views of the input", () => {
  const bytes = Everything.encode(Everything.create({ fBytes: new Uint8Array(50).fill(1) }));
  const m = Everything.decode(bytes);
  assert.is(m.fBytes.buffer, bytes.buffer);
});

test("malformed input: truncations and random bytes fail with KOALA_ERR_PROTOCOL, never hang", () => {
  const good = Everything.encode(sample());
  for (let n = 0; n < good.length; n++) {
    try {
      Everything.decode(good.subarray(0, n));
    } catch (err) {
      assert.ok(err instanceof KoalaError && err.code === "KOALA_ERR_PROTOCOL", `cut at ${n}: ${String(err)}`);
    }
  }
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 200 }), (bytes) => {
      try {
        Everything.decode(bytes);
      } catch (err) {
        assert.ok(err instanceof KoalaError && err.code === "KOALA_ERR_PROTOCOL", String(err));
      }
    }),
    { numRuns: 3000 },
  );
  // Deep nesting is refused rather than overflowing the stack.
  let deep = new Uint8Array(0);
  for (let i = 0; i < 200; i++) deep = Uint8Array.from([0x1a, ...varint(deep.length), ...deep]);
  assert.throws(() => Everything_Nested.decode(deep), /nested deeper than 100/);
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

test("koala gen reports a bad .proto clearly", () => {
  assert.throws(() => generate([join(root, "test/fixtures/protos/nope.proto")]), /koala gen: .*nope\.proto/);
});

test.run();
