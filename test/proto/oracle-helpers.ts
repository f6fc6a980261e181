/**
 * The oracle's side of the tests: the spec fixtures' descriptors as @bufbuild/protobuf sees
 * them (built by `buf`), and random messages drawn from those descriptors as plain objects
 * that koala and bufbuild both accept as input.
 */
import { execFileSync } from "node:child_process";
import { join } from "node:path";
import fc from "fast-check";
import { ScalarType, create, createFileRegistry, equals, fromBinary, toBinary, type DescField, type DescMessage, type Message } from "@bufbuild/protobuf";
import { FeatureSet_FieldPresence, FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";

const root = new URL("../..", import.meta.url).pathname;
const set = execFileSync(join(root, "node_modules/.bin/buf"), ["build", join(root, "test/fixtures/protos/spec"), "--as-file-descriptor-set", "-o", "-"], { maxBuffer: 1 << 24 });
/** The spec fixtures (and the well-known types they import) as bufbuild descriptors. */
export const registry = createFileRegistry(fromBinary(FileDescriptorSetSchema, set));
/** The descriptor of message `name`. */
export function desc(name: string): DescMessage {
  const d = registry.getMessage(name);
  if (d === undefined) throw new Error(`no ${name} in the descriptors`);
  return d;
}

/** Hex of bytes, for comparisons that print well. */
export const hex = (b: Uint8Array) => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString("hex");

// ---------------------------------------------------------------------------------------------
// Random messages from a descriptor, as plain objects both runtimes accept as input.

const INT32 = fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 });
const UINT32 = fc.integer({ min: 0, max: 2 ** 32 - 1 });
const INT64 = fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n });
const UINT64 = fc.bigInt({ min: 0n, max: 2n ** 64n - 1n });

function scalarArb(t: ScalarType): fc.Arbitrary<unknown> {
  switch (t) {
    case ScalarType.DOUBLE:
      return fc.double();
    case ScalarType.FLOAT:
      return fc.float();
    case ScalarType.INT32:
    case ScalarType.SINT32:
    case ScalarType.SFIXED32:
      return INT32;
    case ScalarType.UINT32:
    case ScalarType.FIXED32:
      return UINT32;
    case ScalarType.INT64:
    case ScalarType.SINT64:
    case ScalarType.SFIXED64:
      return INT64;
    case ScalarType.UINT64:
    case ScalarType.FIXED64:
      return UINT64;
    case ScalarType.BOOL:
      return fc.boolean();
    case ScalarType.STRING:
      return fc.oneof(fc.string({ maxLength: 8 }), fc.string({ unit: "grapheme", maxLength: 6 }), fc.constant("\ufeff"));
    case ScalarType.BYTES:
      return fc.uint8Array({ maxLength: 12 });
  }
}

function enumArb(e: { open: boolean; values: { number: number }[] }): fc.Arbitrary<number> {
  const known = fc.constantFrom(...e.values.map((v) => v.number));
  return e.open ? fc.oneof(known, INT32) : known;
}

const MAX_DEPTH = 3;

/** Well-known types with values valid in JSON (in range timestamps, finite Value numbers, …). */
const WKT_ARBS: Record<string, () => fc.Arbitrary<Record<string, unknown>>> = {
  "google.protobuf.Timestamp": () => fc.record({ seconds: fc.bigInt({ min: -62135596800n, max: 253402300799n }), nanos: fc.integer({ min: 0, max: 999_999_999 }) }),
  "google.protobuf.Duration": () =>
    fc.tuple(fc.bigInt({ min: 0n, max: 315576000000n }), fc.integer({ min: 0, max: 999_999_999 }), fc.boolean()).map(([s, n, neg]) => ({ seconds: neg ? -s : s, nanos: neg && n !== 0 ? -n : n })),
  "google.protobuf.Any": () => fc.constant({}),
  "google.protobuf.Struct": () => fc.dictionary(fc.string({ maxLength: 5 }), jsonValue(), { maxKeys: 3 }).map((o) => ({ fields: Object.fromEntries(Object.entries(o).map(([k, v]) => [k, plainToValue(v)])) })),
  "google.protobuf.Value": () => jsonValue().map(plainToValue),
  "google.protobuf.ListValue": () => fc.array(jsonValue(), { maxLength: 3 }).map((a) => ({ values: a.map(plainToValue) })),
  "google.protobuf.FieldMask": () => fc.array(fc.stringMatching(/^[a-z]{1,4}(_[a-z]{1,4}){0,2}$/), { maxLength: 3 }).map((paths) => ({ paths })),
};

function jsonValue(): fc.Arbitrary<unknown> {
  return fc.jsonValue({ maxDepth: 2 }).filter((v) => !JSON.stringify(v).includes("__proto__"));
}

function plainToValue(v: unknown): Record<string, unknown> {
  if (v === null) return { kind: { case: "nullValue", value: 0 } };
  if (typeof v === "number") return { kind: { case: "numberValue", value: v } };
  if (typeof v === "string") return { kind: { case: "stringValue", value: v } };
  if (typeof v === "boolean") return { kind: { case: "boolValue", value: v } };
  if (Array.isArray(v)) return { kind: { case: "listValue", value: { values: v.map(plainToValue) } } };
  return { kind: { case: "structValue", value: { fields: Object.fromEntries(Object.entries(v as object).map(([k, x]) => [k, plainToValue(x)])) } } };
}
const cache = new Map<string, fc.Arbitrary<Record<string, unknown>>>();

function singleArb(f: DescField, depth: number): fc.Arbitrary<unknown> | undefined {
  switch (f.fieldKind) {
    case "scalar":
      return scalarArb(f.scalar);
    case "enum":
      return enumArb(f.enum);
    case "message":
      return depth < MAX_DEPTH ? messageArb(f.message, depth + 1) : undefined;
    case "list": {
      const elem = f.listKind === "scalar" ? scalarArb(f.scalar) : f.listKind === "enum" ? enumArb(f.enum) : depth < MAX_DEPTH ? messageArb(f.message, depth + 1) : undefined;
      return elem && fc.array(elem, { maxLength: 4 });
    }
    case "map": {
      const key = scalarArb(f.mapKey).map(String);
      const value = f.mapKind === "scalar" ? scalarArb(f.scalar) : f.mapKind === "enum" ? enumArb(f.enum) : depth < MAX_DEPTH ? messageArb(f.message, depth + 1) : undefined;
      return value && fc.dictionary(key, value, { maxKeys: 3 });
    }
  }
}

/** Random messages of `d` (required fields always set, recursion bounded). */
export function messageArb(d: DescMessage, depth = 0): fc.Arbitrary<Record<string, unknown>> {
  const id = `${d.typeName}@${depth}`;
  const hit = cache.get(id);
  if (hit) return hit;
  const wkt = WKT_ARBS[d.typeName];
  if (wkt !== undefined) return wkt();
  const model: Record<string, fc.Arbitrary<unknown>> = {};
  const required: string[] = [];
  for (const f of d.fields) {
    if (f.oneof) continue;
    const arb = singleArb(f, depth);
    if (arb === undefined) continue;
    model[f.localName] = arb;
    if (f.presence === FeatureSet_FieldPresence.LEGACY_REQUIRED) required.push(f.localName);
  }
  for (const o of d.oneofs) {
    const cases = o.fields.flatMap((f) => {
      const arb = singleArb(f, depth);
      return arb ? [arb.map((value) => ({ case: f.localName, value }))] : [];
    });
    model[o.localName] = fc.oneof(fc.constant({ case: undefined }), ...cases);
  }
  const arb = fc.record(model, { requiredKeys: required });
  cache.set(id, arb);
  return arb;
}

function valueToPlain(v: Record<string, unknown>): unknown {
  const kind = v.kind as { case?: string; value?: unknown } | undefined;
  switch (kind?.case) {
    case "nullValue":
      return null;
    case "listValue":
      return ((kind.value as { values?: Record<string, unknown>[] }).values ?? []).map(valueToPlain);
    case "structValue":
      return structToPlain(kind.value as Record<string, unknown>);
    case undefined:
      return null;
    default:
      return kind!.value;
  }
}

function structToPlain(s: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(Object.entries((s.fields ?? {}) as Record<string, Record<string, unknown>>).map(([k, v]) => [k, valueToPlain(v)]));
}

/**
 * A random message (koala's shape) as bufbuild's `create` wants it: bufbuild unwraps a
 * singular wrapper field outside a oneof (`{ value: 3 }` → `3`) and holds a Struct field as
 * a plain JSON object; everything else is the same shape.
 */
export function bufInit(d: DescMessage, init: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...init };
  const one = (f: DescField, m: DescMessage, v: unknown, singular: boolean): unknown => {
    if (v === undefined || v === null) return v;
    const r = v as Record<string, unknown>;
    if (singular && m.typeName.startsWith("google.protobuf.") && m.typeName.endsWith("Value") && m.fields.length === 1 && m.fields[0]!.name === "value") {
      return r.value ?? (create(m) as unknown as Record<string, unknown>).value;
    }
    if (m.typeName === "google.protobuf.Struct" && f.parent.typeName !== "google.protobuf.Value") return structToPlain(r);
    return bufInit(m, r);
  };
  for (const f of d.fields) {
    if (f.oneof) continue;
    const v = init[f.localName];
    if (v === undefined) continue;
    if (f.fieldKind === "message") out[f.localName] = one(f, f.message, v, true);
    else if (f.fieldKind === "list" && f.listKind === "message") out[f.localName] = (v as unknown[]).map((x) => one(f, f.message, x, false));
    else if (f.fieldKind === "map" && f.mapKind === "message") out[f.localName] = Object.fromEntries(Object.entries(v as Record<string, unknown>).map(([k, x]) => [k, one(f, f.message, x, false)]));
  }
  for (const o of d.oneofs) {
    const v = init[o.localName] as { case?: string; value?: unknown } | undefined;
    const f = o.fields.find((x) => x.localName === v?.case);
    if (f?.fieldKind === "message") out[o.localName] = { case: v!.case, value: one(f, f.message, v!.value, false) };
  }
  return out;
}

/** `init` (koala's shape) without its fields of well-known types, at every depth. */
export function dropWkt(d: DescMessage, init: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...init };
  for (const f of d.fields) {
    const v = f.oneof ? (init[f.oneof.localName] as { case?: string; value?: unknown } | undefined) : init[f.localName];
    if (v === undefined) continue;
    const m = f.fieldKind === "message" || (f.fieldKind === "list" && f.listKind === "message") || (f.fieldKind === "map" && f.mapKind === "message") ? f.message : undefined;
    if (m === undefined) continue;
    const wkt = m.typeName.startsWith("google.protobuf.");
    if (f.oneof) {
      const o = v as { case?: string; value?: unknown };
      if (o.case === f.localName) out[f.oneof.localName] = wkt ? { case: undefined } : { case: o.case, value: dropWkt(m, o.value as Record<string, unknown>) };
    } else if (wkt) delete out[f.localName];
    else if (f.fieldKind === "list") out[f.localName] = (v as Record<string, unknown>[]).map((x) => dropWkt(m, x));
    else if (f.fieldKind === "map") out[f.localName] = Object.fromEntries(Object.entries(v as Record<string, Record<string, unknown>>).map(([k, x]) => [k, dropWkt(m, x)]));
    else out[f.localName] = dropWkt(m, v as Record<string, unknown>);
  }
  return out;
}

/** Whether `v` is the implicit default of a field without presence (which encoders leave out; -0.0 is not). */
function implicitDefault(v: unknown): boolean {
  return v === false || v === "" || v === 0n || (typeof v === "number" && Object.is(v, 0)) || (v instanceof Uint8Array && v.byteLength === 0);
}

/**
 * A random message (koala's shape) as protobufjs' `fromObject` takes it, for the protobufjs
 * type `pb` loaded with `keepCase`: fields by protobufjs' name for the same number (protobufjs
 * names groups and underscored fields its own way), a oneof's member as a field of its own,
 * 64-bit integers as decimal strings, implicit-presence fields at their default left out (as
 * koala and protoc leave them out). Fields of well-known types are left out (protobufjs maps
 * some of them to JSON-like objects).
 */
export function pbInit(d: DescMessage, pb: { fieldsById: Record<number, { name: string; resolvedType: unknown }> }, init: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  const value = (f: DescField, v: unknown, sub: (typeof pb) | undefined, m: DescMessage | undefined): unknown => {
    if (typeof v === "bigint") return String(v);
    if (m !== undefined) return pbInit(m, sub!, v as Record<string, unknown>);
    void f;
    return v;
  };
  const put = (f: DescField, v: unknown) => {
    const target = pb.fieldsById[f.number]!;
    const sub = target.resolvedType as typeof pb | undefined;
    if (f.fieldKind === "message" || (f.fieldKind === "list" && f.listKind === "message") || (f.fieldKind === "map" && f.mapKind === "message")) {
      if (f.message!.typeName.startsWith("google.protobuf.")) return;
    }
    const m = f.fieldKind === "message" ? f.message : f.fieldKind === "list" && f.listKind === "message" ? f.message : f.fieldKind === "map" && f.mapKind === "message" ? f.message : undefined;
    if (f.fieldKind === "list") out[target.name] = (v as unknown[]).map((x) => value(f, x, sub, m));
    else if (f.fieldKind === "map") out[target.name] = Object.fromEntries(Object.entries(v as object).map(([k, x]) => [k, value(f, x, sub, m)]));
    else out[target.name] = value(f, v, sub, m);
  };
  for (const f of d.fields) {
    if (f.oneof) continue;
    const v = init[f.localName];
    if (v === undefined) continue;
    if (f.fieldKind === "scalar" || f.fieldKind === "enum") {
      if (f.presence === FeatureSet_FieldPresence.IMPLICIT && implicitDefault(v)) continue;
    }
    put(f, v);
  }
  for (const o of d.oneofs) {
    const v = init[o.localName] as { case?: string; value?: unknown } | undefined;
    const f = o.fields.find((x) => x.localName === v?.case);
    if (f !== undefined) put(f, v!.value);
  }
  return out;
}

/** bufbuild's `equals`, except that NaN equals NaN (the same message encodes to the same bytes). */
export function agree(d: DescMessage, a: Message, b: Message): boolean {
  return equals(d, a, b) || hex(toBinary(d, a)) === hex(toBinary(d, b));
}

// ---------------------------------------------------------------------------------------------

