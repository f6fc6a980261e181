/**
 * The codec against @bufbuild/protobuf as the oracle (it passes the protobuf conformance
 * suite), on the spec fixtures (proto3, proto2 with groups and extensions, editions 2023):
 * random messages drawn from the descriptors are encoded by each side and decoded by the
 * other, both ways, with byte equality (every encoding here is canonical: fields in number
 * order, map entries in object order) and semantic equality; unknown fields travel through
 * both; a malformed-input corpus is refused by both, by koala with KOALA_ERR_PROTOCOL.
 * Descriptors come from `buf build` (the @bufbuild/buf package's binary). The conformance
 * messages (test_messages_proto2 / proto3, rewritten as fixtures: oneofs of every member kind,
 * the underscore-named field_name* fields, closed enums, groups, maps, well-known types) run
 * too, against bufbuild and against protobufjs as a second peer; issue 17's cases and shrunk
 * failures are kept as fixtures.
 */
import { test } from "uvu";
import * as assert from "uvu/assert";
import fc from "fast-check";
import { create, fromBinary, getExtension as bufGetExtension, setExtension as bufSetExtension, toBinary } from "@bufbuild/protobuf";
import { clearExtension, getExtension, hasExtension, setExtension } from "../../src/index.js";
import { join } from "node:path";
import { loadMessageTypes } from "koala-rpc/proto-loader";
import { Wkt } from "../golden/spec/wkt.js";

import { agree, bufInit, desc, dropWkt, hex, messageArb, pbInit, registry } from "./oracle-helpers.js";
import protobuf from "protobufjs";
import { TestAllTypesProto2 } from "../golden/spec/test_messages_proto2.js";
import { TestAllTypesProto3 } from "../golden/spec/test_messages_proto3.js";
import { KoalaError } from "../../src/errors.js";
import type { MessageType } from "../../src/proto/definition.js";
import { All, Interleaved, Some } from "../golden/spec/spec3.js";
import { P2, ext_i, ext_s } from "../golden/spec/spec2.js";
import { Node } from "../golden/spec/editions.js";

const root = new URL("../..", import.meta.url).pathname;

const TYPES: [string, MessageType<any>][] = [
  ["spec3.All", All],
  ["spec3.Interleaved", Interleaved],
  ["spec2.P2", P2],
  ["specedition.Node", Node],
  ["protobuf_test_messages.proto2.TestAllTypesProto2", TestAllTypesProto2],
  ["protobuf_test_messages.proto3.TestAllTypesProto3", TestAllTypesProto3],
];

for (const [name, ours] of TYPES) {
  test(`${name}: random messages, koala ↔ @bufbuild/protobuf, byte for byte and field for field`, () => {
    const d = desc(name);
    fc.assert(
      fc.property(messageArb(d), (init) => {
        const ourBytes = ours.encode(init);
        const theirBytes = toBinary(d, create(d, bufInit(d, init) as never));
        assert.is(hex(ourBytes), hex(theirBytes), "the same bytes");
        // bufbuild reads koala's bytes as its own message; koala reads bufbuild's as its own.
        const theirs = fromBinary(d, theirBytes);
        assert.ok(agree(d, fromBinary(d, ourBytes), theirs), "bufbuild reads koala's encoding as its own");
        const decoded = ours.decode(theirBytes);
        // (bytes fields are views of the input: a Buffer's views are Buffers, so compare from plain arrays)
        assert.equal(decoded, ours.decode(new Uint8Array(ourBytes)));
        // What koala decoded re-encodes to what bufbuild wrote.
        assert.is(hex(ours.encode(decoded)), hex(theirBytes), "decode then encode is the identity");
      }),
      { numRuns: 150 },
    );
  });
}

test("unknown fields pass through koala and bufbuild alike", () => {
  const all = desc("spec3.All");
  const some = desc("spec3.Some");
  fc.assert(
    fc.property(messageArb(all), (init) => {
      const full = All.encode(init);
      // As a Some, all but two of All's fields are unknown: both keep and write them back the same.
      const ours = Some.encode(Some.decode(full));
      const theirs = toBinary(some, fromBinary(some, full));
      assert.is(hex(ours), hex(theirs));
      assert.ok(agree(all, fromBinary(all, ours), fromBinary(all, full)), "nothing lost");
    }),
    { numRuns: 100 },
  );
  // proto2 extensions are unknown fields to both.
  const p2 = desc("spec2.P2");
  const withExt = Uint8Array.from([0x30, 0x01, 0xa0, 0x06, 0x07, 0xaa, 0x06, 0x01, 0x61]);
  assert.is(hex(P2.encode(P2.decode(withExt))), hex(toBinary(p2, fromBinary(p2, withExt))));
});

test("extensions: set and read by koala and by bufbuild, through each other's bytes", () => {
  const d = desc("spec2.P2");
  const extI = registry.getExtension("spec2.ext_i")!;
  const extS = registry.getExtension("spec2.ext_s")!;
  const ours = P2.create({ req: 1n });
  assert.not.ok(hasExtension(ours, ext_i));
  assert.is(getExtension(ours, ext_i), undefined);
  assert.equal(getExtension(ours, ext_s), []);
  setExtension(ours, ext_i, 7);
  setExtension(ours, ext_s, ["a", "b"]);
  setExtension(ours, ext_i, 8);
  assert.ok(hasExtension(ours, ext_i));
  const theirs = fromBinary(d, P2.encode(ours));
  assert.equal([bufGetExtension(theirs, extI), bufGetExtension(theirs, extS)], [8, ["a", "b"]]);
  bufSetExtension(theirs, extI, -3);
  const back = P2.decode(toBinary(d, theirs));
  assert.equal([getExtension(back, ext_i), getExtension(back, ext_s)], [-3, ["a", "b"]]);
  clearExtension(back, ext_s);
  assert.equal(bufGetExtension(fromBinary(d, P2.encode(back)), extS), [], "bufbuild no longer finds it either");
  assert.not.ok(hasExtension(back, ext_s));
  assert.equal(getExtension(back, ext_i), -3, "the other extension stays");
});

test("run-time loaded types (loadMessageTypes) encode and decode exactly as generated code, on random messages", () => {
  const loaded = loadMessageTypes(["spec3", "spec2", "editions", "wkt", "test_messages_proto2", "test_messages_proto3"].map((f) => join(root, `test/fixtures/protos/spec/${f}.proto`)));
  for (const [name, ours] of [...TYPES, ["specwkt.Wkt", Wkt] as const]) {
    const type = loaded[name]!;
    fc.assert(
      fc.property(messageArb(desc(name)), (init) => {
        const bytes = ours.encode(init);
        assert.is(hex(type.encode(init)), hex(bytes), name);
        assert.equal(type.decode(new Uint8Array(bytes)), ours.decode(new Uint8Array(bytes)), name);
      }),
      { numRuns: 60 },
    );
  }
});

// protobufjs as the second peer: it writes fields in declaration order (not number order) and
// names underscored fields and groups its own way, so the comparison is by meaning: each side
// reads the other's bytes as what it would have encoded itself.
const pbRoot = new protobuf.Root();
pbRoot.loadSync(["test_messages_proto2", "test_messages_proto3", "spec3", "spec2"].map((f) => join(root, `test/fixtures/protos/spec/${f}.proto`)), { keepCase: true });
pbRoot.resolveAll();
const PB_OPTIONS = { longs: String, bytes: Array, defaults: false, arrays: false, objects: false };

for (const [name, ours] of TYPES.filter(([n]) => !n.startsWith("specedition"))) {
  test(`${name}: random messages, koala ↔ protobufjs, each reads the other's bytes as its own`, () => {
    const d = desc(name);
    const pb = pbRoot.lookupType(name);
    fc.assert(
      fc.property(messageArb(d), (full) => {
        const init = dropWkt(d, full);
        const ourBytes = ours.encode(init);
        const theirs = pb.fromObject(pbInit(d, pb as never, init));
        const theirBytes = pb.encode(theirs).finish();
        assert.is(hex(ours.encode(ours.decode(theirBytes))), hex(ourBytes), "koala reads protobufjs' bytes as the message");
        assert.equal(pb.toObject(pb.decode(ourBytes), PB_OPTIONS), pb.toObject(theirs, PB_OPTIONS), "protobufjs reads koala's bytes as the message");
      }),
      { numRuns: 100 },
    );
  });
}

// Cases named in issue 17 and failures the runs above shrank to, kept as fixtures.
const FIXTURES: [string, MessageType<any>, Record<string, unknown>][] = [
  // The double member of a proto2 oneof set to 0 (and -0), then later fields.
  ["protobuf_test_messages.proto2.TestAllTypesProto2", TestAllTypesProto2, { oneofField: { case: "oneofDouble", value: 0 }, defaultInt32: 1, fieldName2: 2, data: { groupInt32: 3 } }],
  ["protobuf_test_messages.proto2.TestAllTypesProto2", TestAllTypesProto2, { oneofField: { case: "oneofDouble", value: -0 }, optionalNestedMessage: { a: 1 }, FieldName18: 4 }],
  ["protobuf_test_messages.proto2.TestAllTypesProto2", TestAllTypesProto2, { oneofField: { case: "oneofEnum", value: 0 }, mapStringNestedEnum: { a: 2 } }],
  // The string member of a proto3 oneof set to "", then every field_name* field.
  [
    "protobuf_test_messages.proto3.TestAllTypesProto3",
    TestAllTypesProto3,
    {
      oneofField: { case: "oneofString", value: "" },
      ...Object.fromEntries(desc("protobuf_test_messages.proto3.TestAllTypesProto3").fields.filter((f) => f.number >= 401 && f.number <= 418).map((f) => [f.localName, f.number])),
    },
  ],
  ["protobuf_test_messages.proto3.TestAllTypesProto3", TestAllTypesProto3, { oneofField: { case: "oneofBytes", value: new Uint8Array(0) }, FieldName13: 1 }],
  // OpenTelemetry's Exemplar: a oneof interleaved with other fields.
  ["spec3.Interleaved", Interleaved, { value: { case: "asInt", value: 1n }, timeUnixNano: 2n, spanId: Uint8Array.of(3), traceId: Uint8Array.of(4), attrs: ["x"] }],
];

test("fixtures (issue 17's cases and shrunk failures): the same bytes as bufbuild, and both peers read them back", () => {
  for (const [name, ours, init] of FIXTURES) {
    const d = desc(name);
    const pb = pbRoot.lookupType(name);
    const ourBytes = ours.encode(init);
    assert.is(hex(ourBytes), hex(toBinary(d, create(d, bufInit(d, init) as never))), name);
    const decoded = ours.decode(new Uint8Array(ourBytes));
    const created = ours.create(init);
    for (const k of Object.keys(init)) assert.equal(decoded[k], created[k], `${name}: ${k} comes back`);
    assert.is(hex(ours.encode(ours.decode(pb.encode(pb.fromObject(pbInit(d, pb as never, init))).finish()))), hex(ourBytes), `${name}: from protobufjs`);
    assert.ok(agree(d, fromBinary(d, ourBytes), create(d, bufInit(d, init) as never)), `${name}: bufbuild reads it`);
  }
});

// ---------------------------------------------------------------------------------------------
// Malformed input: refused by both.

const CORPUS: [string, number[], RegExp][] = [
  ["empty truncated varint", [0x18], /truncated varint/],
  ["truncated varint value", [0x18, 0x80, 0x80], /truncated varint/],
  ["truncated tag", [0x80], /truncated varint/],
  ["11-byte varint", [0x18, ...new Array(10).fill(0xff), 0x01], /longer than 10 bytes/],
  ["string length past the end", [0x72, 0x05, 0x61], /needs 5 more bytes/],
  ["message length past the end", [0x8a, 0x01, 0x09, 0x0a], /runs past the end/],
  ["length above 32 bits", [0x72, 0xff, 0xff, 0xff, 0xff, 0x7f], /length above 32 bits/],
  ["fixed64 cut short", [0x51, 1, 2, 3], /needs \d more bytes/],
  ["fixed32 cut short", [0x4d, 1], /needs 4 more bytes/],
  ["wire type 6", [0x0e], /invalid wire type 6/],
  ["wire type 7", [0x0f], /invalid wire type 7/],
  ["field number 0", [0x00, 0x01], /field number 0/],
  ["end group outside a group", [0x0c], /outside any group/],
  ["unterminated unknown group", [0xfb, 0x06, 0x08, 0x01], /unterminated group/],
  ["mismatched group end", [0xfb, 0x06, 0xfc, 0x07], /ended by the end tag/],
  ["packed field cut inside", [0x8a, 0x02, 0x02, 0x80], /runs past the end/],
  ["invalid UTF-8", [0x72, 0x02, 0xc3, 0x28], /invalid UTF-8/],
];

test("a malformed-input corpus: koala refuses each with KOALA_ERR_PROTOCOL and the reason, and so does bufbuild", () => {
  const all = desc("spec3.All");
  for (const [what, bytes, why] of CORPUS) {
    const b = Uint8Array.from(bytes);
    try {
      All.decode(b);
      assert.unreachable(`${what}: koala decoded it`);
    } catch (err) {
      assert.ok(err instanceof KoalaError && err.code === "KOALA_ERR_PROTOCOL", `${what}: ${String(err)}`);
      assert.match((err as Error).message, why, what);
    }
    assert.throws(() => fromBinary(all, b), undefined, `${what}: bufbuild decoded it`);
  }
  // A packed varint running past its field's length: bufbuild reads on, koala (as protobuf C++) refuses.
  assert.throws(() => All.decode(Uint8Array.from([0x8a, 0x02, 0x01, 0x80, 0x01])), /packed field overran its length/);
  // Deep nesting: koala stops at 100 levels with a reason (bufbuild has no limit of its own).
  let deep = new Uint8Array(0);
  for (let i = 0; i < 200; i++) deep = Uint8Array.from([0x92, 0x01, ...varint(deep.length), ...deep]);
  assert.throws(() => All.decode(deep), /nested deeper than 100/);
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
