/**
 * The protobuf JSON mapping against @bufbuild/protobuf's toJson / fromJson: random messages of
 * the spec fixtures (every field kind, proto2, editions, the well-known types) give the same
 * JSON on both sides and read back to the same message; the special forms and the parsing
 * rules one by one; the well-known-type helpers.
 */
import { test } from "uvu";
import * as assert from "uvu/assert";
import fc from "fast-check";
import { create as bufCreate, createRegistry, fromBinary, fromJson as bufFromJson, toBinary, toJson as bufToJson } from "@bufbuild/protobuf";
import { anyPack as bufAnyPack, durationFromMs as bufDurationFromMs, timestampFromDate as bufTimestampFromDate } from "@bufbuild/protobuf/wkt";
import {
  anyIs,
  anyPack,
  anyUnpack,
  durationFromMs,
  durationToMs,
  structFromJson,
  structToJson,
  timestampFromDate,
  timestampToDate,
  unwrap,
  valueFromJson,
  valueToJson,
  wrap,
} from "../../src/index.js";
import type { MessageType } from "../../src/proto/definition.js";
import { Aliased, All, Kind, Leaf } from "../golden/spec/spec3.js";
import { P2 } from "../golden/spec/spec2.js";
import { Node } from "../golden/spec/editions.js";
import { Wkt } from "../golden/spec/wkt.js";
import { Any } from "../golden/spec/google/protobuf/any.js";
import { Timestamp } from "../golden/spec/google/protobuf/timestamp.js";
import { Duration } from "../golden/spec/google/protobuf/duration.js";
import { Int64Value } from "../golden/spec/google/protobuf/wrappers.js";
import { Struct, Value } from "../golden/spec/google/protobuf/struct.js";
import { thrownCode } from "../helpers.js";
import { desc, hex, messageArb } from "./oracle-helpers.js";

const TYPES: [string, MessageType<any>][] = [
  ["spec3.All", All],
  ["spec2.P2", P2],
  ["specedition.Node", Node],
  ["specwkt.Wkt", Wkt],
];

for (const [name, ours] of TYPES) {
  test(`${name}: toJson and fromJson agree with bufbuild on random messages`, () => {
    const d = desc(name);
    fc.assert(
      fc.property(messageArb(d), (init) => {
        const bytes = ours.encode(init);
        const theirs = bufToJson(d, fromBinary(d, bytes));
        const json = ours.toJson(ours.decode(bytes));
        assert.equal(json, theirs);
        // Back from JSON: the same message as bufbuild reads from the same JSON.
        const back = ours.fromJson(theirs);
        assert.is(hex(ours.encode(back)), hex(toBinary(d, bufFromJson(d, theirs))));
      }),
      { numRuns: 150 },
    );
  });
}

const OPTION_SETS = [
  { alwaysEmitImplicit: true },
  { enumAsInteger: true },
  { useProtoFieldName: true },
  { alwaysEmitImplicit: true, enumAsInteger: true, useProtoFieldName: true },
] as const;

for (const [name, ours] of TYPES) {
  test(`${name}: toJson options (alwaysEmitImplicit, enumAsInteger, useProtoFieldName) write what bufbuild writes, and read back`, () => {
    const d = desc(name);
    for (const opts of OPTION_SETS) {
      fc.assert(
        fc.property(messageArb(d), (init) => {
          const bytes = ours.encode(init);
          const theirs = bufToJson(d, fromBinary(d, bytes), opts);
          const json = ours.toJson(ours.decode(bytes), opts);
          assert.equal(json, theirs, JSON.stringify(opts));
          // Every form reads back: to the message bufbuild reads from the same JSON.
          assert.is(hex(ours.encode(ours.fromJson(json))), hex(toBinary(d, bufFromJson(d, theirs))), "fromJson reads every form back");
        }),
        { numRuns: 60 },
      );
    }
  });
}

test("toJson options on an empty message: defaults written only when asked, by proto name when asked; a wrong option is named", () => {
  const empty = All.decode(new Uint8Array(0));
  assert.equal(All.toJson(empty), {});
  const full = All.toJson(empty, { alwaysEmitImplicit: true }) as Record<string, unknown>;
  const d = desc("spec3.All");
  assert.equal(full, bufToJson(d, bufCreate(d), { alwaysEmitImplicit: true }));
  assert.ok(Object.keys(full).length > 10, "the implicit fields are there");
  assert.equal(Object.keys(All.toJson(empty, { alwaysEmitImplicit: true, useProtoFieldName: true }) as object), d.fields.filter((f) => f.presence === 2 || f.fieldKind === "list" || f.fieldKind === "map").filter((f) => f.oneof === undefined).map((f) => f.name));
  assert.is(thrownCode(() => All.toJson(empty, { enumAsInteger: "yes" } as never)), "KOALA_ERR_INVALID_ARGUMENT");
  assert.throws(() => All.toJson(empty, { alwaysEmitImplicit: 1 } as never), /alwaysEmitImplicit/);
});

test("special forms: 64-bit as strings, bytes as base64, enums by name, NaN, json_name, WKTs", () => {
  assert.equal(All.toJson(All.create({ fInt64: -5n, fUint64: 2n ** 64n - 1n, fBytes: Uint8Array.from([0xfb, 0xff]), fKind: Kind.KIND_NEG, fDouble: NaN, rFloat: [Infinity, -Infinity], fieldName4: "x" })), {
    fDouble: "NaN",
    fInt64: "-5",
    fUint64: "18446744073709551615",
    fBytes: "+/8=",
    fKind: "KIND_NEG",
    rFloat: ["Infinity", "-Infinity"],
    fieldName4: "x",
  });
  assert.equal(All.toJson(All.create({ fKind: 42 as Kind })), { fKind: 42 }, "an unknown enum value stays a number");
  assert.equal(All.toJson(All.create({ fAliased: Aliased.AL_UNO })), { fAliased: "AL_ONE" }, "an aliased number goes by its first name");
  assert.equal(All.fromJson({ fAliased: "AL_EINS" }).fAliased, 1);
  const w = Wkt.create({
    at: { seconds: 1n, nanos: 20_000_000 },
    took: { seconds: -3n, nanos: -500 },
    struct: Struct.fromJson({ a: [1, "b", null, { c: true }] }),
    value: Value.fromJson(null),
    mask: { paths: ["foo_bar", "baz"] },
    empty: {},
    wInt64: { value: 7n },
    wBytes: { value: Uint8Array.from([1]) },
    jsonNamed: "j",
  });
  assert.equal(Wkt.toJson(w), {
    at: "1970-01-01T00:00:01.020Z",
    took: "-3.000000500s",
    struct: { a: [1, "b", null, { c: true }] },
    value: null,
    mask: "fooBar,baz",
    empty: {},
    wInt64: "7",
    wBytes: "AQ==",
    customName: "j",
  });
  assert.is(hex(Wkt.encode(Wkt.fromJson(Wkt.toJson(w) as never))), hex(Wkt.encode(w)));
});

test("Any: packed messages and WKTs in JSON through a type registry, as bufbuild writes them", () => {
  const leaf = Any.create({ typeUrl: "type.googleapis.com/spec3.Leaf", value: Leaf.encode({ label: "l", n: 2 }) });
  const stamp = Any.create({ typeUrl: "type.googleapis.com/google.protobuf.Timestamp", value: Timestamp.encode({ seconds: 3n }) });
  const registry = createRegistry(desc("spec3.Leaf"), desc("google.protobuf.Timestamp"));
  const typeRegistry = [Leaf, Timestamp];
  for (const any of [leaf, stamp]) {
    const w = Wkt.create({ any });
    const d = desc("specwkt.Wkt");
    const theirs = bufToJson(d, fromBinary(d, Wkt.encode(w)), { registry });
    assert.equal(Wkt.toJson(w, { typeRegistry }), theirs);
    assert.is(hex(Wkt.encode(Wkt.fromJson(theirs, { typeRegistry }))), hex(Wkt.encode(w)));
  }
  assert.equal(Wkt.toJson(Wkt.create({ any: leaf }), { typeRegistry }), { any: { "@type": "type.googleapis.com/spec3.Leaf", label: "l", n: 2 } });
  assert.throws(() => Wkt.toJson(Wkt.create({ any: leaf })), /Any holds spec3\.Leaf, which is not in the typeRegistry option/);
});

test("fromJson: proto names, null as the default, strings for numbers, unknown keys refused or ignored, clear errors", () => {
  assert.equal(All.fromJson({ f_int32: "12", fInt64: 3, f_string: null, fFloat: "-Infinity", fBytes: "-_8", fKind: "KIND_ONE" }), All.create({ fInt32: 12, fInt64: 3n, fFloat: -Infinity, fBytes: Uint8Array.from([0xfb, 0xff]), fKind: Kind.KIND_ONE }));
  assert.throws(() => All.fromJson({ nope: 1 }), /spec3\.All: unknown field "nope"/);
  assert.equal(All.fromJson({ nope: 1, fKind: "NOPE" }, { ignoreUnknownFields: true }), All.create());
  assert.throws(() => All.fromJson({ fInt32: 1.5 }), /spec3\.All\.f_int32: expected an integer/);
  assert.throws(() => All.fromJson({ fUint32: -1 }), /f_uint32: expected an integer in \[0, 4294967295\]/);
  assert.throws(() => All.fromJson({ fInt64: "1x" }), /f_int64: expected a signed 64-bit integer/);
  assert.throws(() => All.fromJson({ fLeaf: { label: 5 } }), /spec3\.All\.f_leaf\.label: expected a string, got number/);
  assert.throws(() => All.fromJson({ cString: "a", cInt64: "1" }), /a second field of oneof choice/);
  assert.throws(() => Timestamp.fromJson("yesterday"), /expected an RFC 3339 timestamp/);
  assert.throws(() => Duration.fromJson("1m"), /expected a duration like "1\.5s"/);
  assert.is(thrownCode(() => All.fromJson([] as never)), "KOALA_ERR_INVALID_ARGUMENT");
  assert.throws(() => All.fromJson({}, { ignoreUnknownField: true } as never), /unknown option "ignoreUnknownField" \(did you mean "ignoreUnknownFields"\?\)/);
  assert.throws(() => All.toJson(All.create(), { typeRegistry: [1] } as never), /typeRegistry/);
  assert.equal(Int64Value.fromJson("-9"), { value: -9n });
  assert.equal(Timestamp.fromJson("1970-01-01T01:00:00.5+01:00"), { seconds: 0n, nanos: 500_000_000 });
});


test("well-known-type helpers agree with bufbuild's: Timestamp ↔ Date, Duration ↔ ms, Any pack / is / unpack, Struct ↔ JSON, wrappers", () => {
  fc.assert(
    fc.property(fc.date({ noInvalidDate: true, min: new Date(-62135596800000), max: new Date(253402300799000) }), (date) => {
      const t = timestampFromDate(date);
      const b = bufTimestampFromDate(date);
      assert.equal(t, { seconds: b.seconds, nanos: b.nanos });
      assert.is(timestampToDate(t).getTime(), date.getTime());
    }),
  );
  fc.assert(
    fc.property(fc.integer({ min: -1e12, max: 1e12 }), (ms) => {
      const d = durationFromMs(ms);
      const b = bufDurationFromMs(ms);
      assert.equal(d, { seconds: b.seconds, nanos: b.nanos });
      assert.is(durationToMs(d), ms);
    }),
  );
  const any = anyPack(Leaf, { label: "x" });
  const theirs = bufAnyPack(desc("spec3.Leaf"), bufCreate(desc("spec3.Leaf"), { label: "x" }));
  assert.equal([any.typeUrl, hex(any.value)], [theirs.typeUrl, hex(theirs.value)]);
  assert.ok(anyIs(any, Leaf) && anyIs(any, "spec3.Leaf") && !anyIs(any, All));
  assert.equal(anyUnpack(any, Leaf), Leaf.create({ label: "x" }));
  assert.is(anyUnpack(any, All), undefined);
  const json = { a: 1, b: [true, null, "s"], c: { d: {} } };
  assert.equal(structToJson(structFromJson(json)), json);
  assert.equal(Struct.toJson(Struct.create(structFromJson(json))), json);
  assert.equal(valueToJson(valueFromJson([1, "x"])), [1, "x"]);
  assert.throws(() => valueToJson(valueFromJson(NaN)), /JSON cannot carry/);
  assert.equal([wrap(5), wrap(undefined), unwrap({ value: "v" }), unwrap(undefined)], [{ value: 5 }, undefined, "v", undefined]);
});

test.run();
