/**
 * The protobuf spec where the codec once departed from it: large field numbers, merging of
 * repeated message occurrences, bool and length / tag varints above 32 bits, unknown fields
 * kept and written back, U+FEFF and invalid UTF-8, the same nesting limit both ways, and the
 * proto2 / editions rules (defaults, required, closed enums, groups).
 */
import { test } from "uvu";
import * as assert from "uvu/assert";
import { KoalaError } from "../../src/errors.js";
import type { PartialMessage } from "../../src/proto/definition.js";
import { MAX_DEPTH } from "../../src/proto/wire/reader.js";
import { All, Interleaved, Kind, Leaf } from "../golden/spec/spec3.js";
import { loadMessageTypes } from "koala-rpc/proto-loader";
import { Closed, P2, P2_G } from "../golden/spec/spec2.js";
import { Node, Shut } from "../golden/spec/editions.js";
import { thrownCode } from "../helpers.js";

const bytes = (...b: number[]) => Uint8Array.from(b);
const specDir = new URL("../fixtures/protos/spec/", import.meta.url).pathname;
const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");

function protocolError(fn: () => unknown, why: RegExp): void {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof KoalaError && err.code === "KOALA_ERR_PROTOCOL", String(err));
    assert.match((err as Error).message, why);
    return;
  }
  assert.unreachable("decoded");
}

test("field number 2^29 − 1: a 5-byte tag, sized and written alike, read back", () => {
  const enc = All.encode({ maxField: 7 });
  assert.is(hex(enc), "f8ffffff0f07");
  assert.is(All.decode(enc).maxField, 7);
});

test("a message field that occurs twice is merged, also in a oneof and below", () => {
  // Fields 17 and 82 take two-byte tags.
  const tag = (field: number) => [((field * 8 + 2) & 0x7f) | 0x80, (field * 8 + 2) >> 7];
  const twice = (field: number, a: Uint8Array, b: Uint8Array) => bytes(...tag(field), a.length, ...a, ...tag(field), b.length, ...b);
  const a = Leaf.encode({ label: "a" });
  const b = Leaf.encode({ n: 2 });
  assert.equal(All.decode(twice(17, a, b)).fLeaf, { label: "a", n: 2 });
  assert.equal(All.decode(twice(82, a, b)).choice, { case: "cLeaf", value: { label: "a", n: 2 } });
  // Another oneof case in between replaces the value instead.
  const replaced = All.decode(Uint8Array.from([...All.encode({ choice: { case: "cLeaf", value: { label: "a" } } }), ...All.encode({ choice: { case: "cString", value: "s" } }), ...All.encode({ choice: { case: "cLeaf", value: { n: 3 } } })]));
  assert.equal(replaced.choice, { case: "cLeaf", value: { label: "", n: 3 } });
  const deep = Uint8Array.from([...All.encode({ fSelf: { fLeaf: { label: "x" }, rInt32: [1] } }), ...All.encode({ fSelf: { fLeaf: { n: 1 }, rInt32: [2] } })]);
  const self = All.decode(deep).fSelf!;
  assert.equal(self.fLeaf, { label: "x", n: 1 });
  assert.equal(self.rInt32, [1, 2], "repeated fields of the merged message append");
});

test("a bool varint with only bits above 32 set is true", () => {
  assert.is(All.decode(bytes(0x68, 0x80, 0x80, 0x80, 0x80, 0x10)).fBool, true);
  assert.is(All.decode(bytes(0x68, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01)).fBool, true);
  assert.is(All.decode(bytes(0x68, 0x80, 0x00)).fBool, false);
});

test("a length or a tag above 32 bits is malformed, not truncated", () => {
  protocolError(() => All.decode(bytes(0x72, 0x81, 0x80, 0x80, 0x80, 0x10, 0x61)), /length above 32 bits/);
  protocolError(() => All.decode(bytes(0x8a, 0x01, 0x81, 0x80, 0x80, 0x80, 0x10, 0x61)), /length above 32 bits/);
  protocolError(() => All.decode(bytes(0x88, 0x80, 0x80, 0x80, 0x10, 0x01)), /tag above 32 bits/);
  // A uint32 value above 32 bits is truncated, as the spec says for values.
  assert.is(All.decode(bytes(0x28, 0x81, 0x80, 0x80, 0x80, 0x10)).fUint32, 1);
});

test("unknown fields are kept on decode and written back on encode", () => {
  // Leaf knows its fields 1 and 2 only: every field below is unknown to it.
  const asLeaf = Leaf.decode(All.encode({ fBool: true, fInt64: 5n, rString: ["a", "b"], fSelf: { fDouble: 1 } }));
  assert.equal(asLeaf.$unknown!.length, 5);
  assert.equal(All.decode(Leaf.encode(asLeaf)), All.decode(All.encode({ fBool: true, fInt64: 5n, rString: ["a", "b"], fSelf: { fDouble: 1 } })));
  // Unknown fields inside a known nested message survive too, byte for byte.
  const leafWithExtra = bytes(0x0a, 0x01, 0x6c, 0x18, 0x07, 0x25, 1, 2, 3, 4);
  const outer = bytes(0x8a, 0x01, leafWithExtra.length, ...leafWithExtra, 0x18, 0x05);
  assert.is(hex(All.encode(All.decode(outer))), hex(bytes(0x18, 0x05, 0x8a, 0x01, leafWithExtra.length, ...leafWithExtra)));
  assert.is(All.create({ $unknown: [bytes(0x08, 0x01)] }).$unknown!.length, 1);
});

test("strings: a leading U+FEFF is kept; invalid UTF-8 is refused in proto3, replaced in proto2 and utf8_validation = NONE", () => {
  assert.is(All.decode(All.encode({ fString: "\ufeffbom" })).fString, "\ufeffbom");
  assert.is(All.decode(All.encode({ fString: "\ufeff" })).fString, "\ufeff");
  protocolError(() => All.decode(bytes(0x72, 0x02, 0xc3, 0x28)), /invalid UTF-8/);
  protocolError(() => All.decode(bytes(0x72, 0x01, 0xff)), /invalid UTF-8/);
  protocolError(() => All.decode(bytes(0xba, 0x04, 0x03, 0x0a, 0x01, 0xff)), /invalid UTF-8/); // a map key
  assert.is(P2.decode(bytes(0x12, 0x02, 0xc3, 0x28, 0x30, 0x00)).s, "\ufffd(");
  assert.is(Node.decode(bytes(0x32, 0x01, 0xff, 0x50, 0x00)).raw, "\ufffd");
});

test(`the same nesting limit (${MAX_DEPTH}) on encode and decode, with a clear error and no stack overflow`, () => {
  const nest = (levels: number) => {
    let m: PartialMessage<All> = {};
    for (let i = 0; i < levels; i++) m = { fSelf: m };
    return m;
  };
  assert.ok(All.decode(All.encode(nest(MAX_DEPTH))).fSelf);
  for (const levels of [MAX_DEPTH + 1, 150, 10_000]) {
    assert.is(thrownCode(() => All.encode(nest(levels))), "KOALA_ERR_INVALID_ARGUMENT");
    assert.throws(() => All.encode(nest(levels)), /nested deeper than 100 levels/);
  }
  const cycle = All.create();
  cycle.fSelf = cycle;
  assert.throws(() => All.encode(cycle), /nested deeper than 100 levels \(a cycle\?\)/);
  // Groups count as levels too.
  let g: PartialMessage<Node> = { must: 1 };
  for (let i = 0; i < MAX_DEPTH + 1; i++) g = { must: 1, child: g };
  assert.throws(() => Node.encode(g), /nested deeper than 100 levels/);
  assert.ok(Node.decode(Node.encode(g.child!)).child);
});

test("proto2: [default] read through, presence kept; required checked both ways", () => {
  const m = P2.decode(P2.encode({ req: 1n }));
  assert.equal([m.i32, m.s, [...m.by], m.c, m.d, m.flag, m.u64, m.f, m.sf64], [-7, "hé", [1, 0x78], Closed.C_FIVE, Infinity, true, 2n ** 64n - 1n, -1.5, -9n]);
  assert.is(m.noDefault, undefined);
  assert.not.ok(Object.hasOwn(m, "i32"));
  const zero = P2.decode(P2.encode({ req: 1n, i32: 0, s: "", flag: false }));
  assert.equal([zero.i32, zero.s, zero.flag], [0, "", false], "an explicit value equal to the type's zero is kept");
  assert.is(hex(P2.encode({ req: 1n, i32: -7 })), "08f9ffffffffffffffff013001", "an explicitly set default is sent");
  protocolError(() => P2.decode(new Uint8Array(0)), /spec2\.P2: required field req not set/);
  protocolError(() => P2.decode(bytes(0x30, 0x01, 0x6a, 0x00)), /required field req not set/);
  assert.throws(() => P2.encode({ req: 1n, child: {} }), /cannot encode spec2\.P2: required field req not set/);
  assert.throws(() => Node.encode({}), /specedition\.Node: required field must not set/);
});

test("proto2 / editions: unknown values of a closed enum go to the unknown fields and back", () => {
  const enc = bytes(0x20, 0x03, 0x30, 0x01, 0x38, 0x01, 0x38, 0x07, 0x42, 0x03, 0x05, 0x09, 0x00);
  const m = P2.decode(enc);
  assert.is(m.c, Closed.C_FIVE, "the unknown 3 is not stored: the field stays unset");
  assert.equal(m.rc, [Closed.C_ONE]);
  assert.equal(m.rcp, [Closed.C_FIVE, Closed.C_ZERO]);
  assert.is(m.$unknown!.length, 3);
  const again = P2.decode(P2.encode(m));
  assert.equal(again.$unknown!.map(hex).sort(), ["2003", "3807", "4009"]);
  const shut = Node.decode(bytes(0x40, 0x05, 0x50, 0x01));
  assert.is(shut.shut, undefined);
  assert.is(Node.decode(bytes(0x40, 0x02, 0x50, 0x01)).shut, Shut.SHUT_TWO);
  assert.is(Node.decode(bytes(0x38, 0x05, 0x50, 0x01)).open, 5, "an open enum keeps any value");
});

test("groups: proto2 groups and editions DELIMITED fields round-trip; maps stay length-prefixed", () => {
  const p = P2.create({ req: 3n, g: { a: 1, b: "x", leaf: { v: 2 } }, rg: [{ x: 1 }, { x: 2 }] });
  const enc = P2.encode(p);
  assert.match(hex(enc), /^3003(5b.*5c)/, "field 11 framed by start and end tags (wire types 3 and 4)");
  const back = P2.decode(enc);
  assert.equal(back.g, P2_G.create({ a: 1, b: "x", leaf: { v: 2 } }));
  assert.equal(back.rg.map((x) => x.x), [1, 2]);
  const n = Node.create({ must: 1, id: 1, child: { must: 2, id: 2 }, byName: { k: { must: 3 } }, kids: [{ must: 4 }], framed: { must: 5 } });
  const ne = Node.encode(n);
  assert.ok(ne.includes(0x13) && ne.includes(0x14), "child (field 2) as start and end tags");
  assert.ok(ne.includes(0x1a), "the map (field 3) length-prefixed");
  assert.equal(Node.decode(ne), n);
  protocolError(() => P2.decode(bytes(0x30, 0x01, 0x5b, 0x08, 0x01)), /group 11 has no end tag/);
  protocolError(() => P2.decode(bytes(0x30, 0x01, 0x5b, 0x08, 0x01, 0x64)), /group 11 ended by the end tag of field 12/);
});

test("PartialMessage: partial at every depth, a oneof's value checked against its case (checked by tsc)", () => {
  const deep: PartialMessage<All> = { fSelf: { fLeaf: { n: 1 }, rLeaf: [{}] }, choice: { case: "cSelf", value: { mStringSelf: { k: {} } } } };
  // @ts-expect-error a oneof value must match its case
  const wrong: PartialMessage<All> = { choice: { case: "cString", value: 5 } };
  void wrong;
  assert.equal(All.decode(All.encode(deep)), All.create(deep));
  assert.equal(All.create(deep).fSelf!.fLeaf, { label: "", n: 1 }, "create() completes nested messages");
});

test("field names follow protoc's JSON names", () => {
  const m = All.create({ fieldName4: "x" });
  assert.is(All.decode(All.encode(m)).fieldName4, "x");
  assert.equal(Object.keys(All.create()).filter((k) => k.startsWith("field")), ["fieldName4"]);
  void Kind;
});

test("fields go out in field-number order, a oneof interleaved with other fields too (generated and loaded)", () => {
  const loaded = loadMessageTypes(`${specDir}spec3.proto`)["spec3.Interleaved"]!;
  const m: PartialMessage<Interleaved> = { attrs: ["a"], timeUnixNano: 1n, value: { case: "asInt", value: -2n }, spanId: bytes(4), traceId: bytes(5), tail: { case: "last", value: 8 } };
  // Tags 2, 4, 5, 6 (the oneof member), 7, 8 (the other oneof's): never 6 before 4 and 5.
  const want = "110100000000000000" + "220104" + "2a0105" + "31feffffffffffffff" + "3a0161" + "4008";
  assert.is(hex(Interleaved.encode(m)), want);
  assert.is(hex(loaded.encode(m)), want);
  assert.is(hex(Interleaved.encode({ value: { case: "asDouble", value: 0 }, tail: { case: "first", value: "" }, spanId: bytes(1) })), "0a00" + "190000000000000000" + "220101");
});

test("proto2 [default]s: create() of a decoded message copies only the fields that were on the wire (generated and loaded)", () => {
  const loaded = loadMessageTypes(`${specDir}spec2.proto`)["spec2.P2"]!;
  for (const T of [P2, loaded] as unknown as (typeof P2)[]) {
    const wire = T.encode({ req: 3n, o: { case: "oa", value: 0 }, i32: 5 });
    const decoded = T.decode(wire);
    const copy = T.create(decoded);
    assert.is(hex(T.encode(copy)), hex(wire), "the copy encodes to the same bytes");
    assert.equal(Object.keys(copy).filter((k) => ["s", "by", "c", "d", "flag", "u64", "f", "sf64"].includes(k)), [], "no default became an own property");
    assert.is(copy.s, "hé", "unset fields still read their defaults");
    assert.is(copy.i32, 5);
  }
});

test("closed enums: an unknown value in a map entry or a oneof goes to the unknown fields; the decoded object gains nothing (generated and loaded)", () => {
  const loaded = loadMessageTypes(`${specDir}spec2.proto`)["spec2.P2"]!;
  // req = 0; closed_by_name { "a": 7 } (unknown), { "b": 1 }; od = 9 (unknown); closed_by_name { "c": 5 }.
  const entryA = [0xc2, 0x01, 0x05, 0x0a, 0x01, 0x61, 0x10, 0x07];
  const wire = bytes(0x30, 0x00, ...entryA, 0xc2, 0x01, 0x05, 0x0a, 0x01, 0x62, 0x10, 0x01, 0xc8, 0x01, 0x09, 0xc2, 0x01, 0x05, 0x0a, 0x01, 0x63, 0x10, 0x05);
  for (const T of [P2, loaded] as unknown as (typeof P2)[]) {
    const m = T.decode(wire);
    assert.equal({ ...m.closedByName }, { b: Closed.C_ONE, c: Closed.C_FIVE });
    assert.equal(m.o, { case: undefined }, "the unknown oneof value sets no member");
    assert.equal(m.$unknown!.map(hex), [hex(Uint8Array.from(entryA)), "c80109"], "kept as they came");
    assert.equal(Object.keys(m).filter((k) => Object.hasOwn(P2.defaults, k)), [], "no field with a default became set");
    // Re-emitted on encode (after the known fields), and read back the same.
    const again = T.encode(m);
    assert.is(hex(again), "3000" + "c201050a01621001" + "c201050a01631005" + hex(Uint8Array.from(entryA)) + "c80109");
    assert.equal(T.decode(Uint8Array.from(again)), m);
  }
});

test.run();
