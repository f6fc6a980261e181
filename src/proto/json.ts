/**
 * The protobuf JSON mapping (https://protobuf.dev/programming-guides/json/), driven by the
 * field tables generated types carry (`MessageType.fields`): json_name, enums by name,
 * 64-bit integers as strings, bytes as base64, NaN / ±Infinity as strings, and the special
 * forms of the well-known types (Timestamp, Duration, Any, Struct / Value / ListValue,
 * wrappers, FieldMask, Empty). `toJson` leaves out fields at their defaults (implicit
 * presence) and unset fields, unless told to write the defaults (`alwaysEmitImplicit`); it can
 * also write enums as numbers and key fields by their proto names; `fromJson` accepts JSON names and proto names, `null` as the
 * default, and refuses unknown keys unless told to ignore them.
 */
import { ErrorCode, KoalaError } from "../errors.js";
import { boolean, custom, resolveOptions, type OptionsSpec } from "../options.js";
import type { FieldDesc, FromJsonOptions, JsonValue, MessageType, ScalarName, ToJsonOptions } from "./definition.js";
import { decodeWith } from "./wire/reader.js";
import { encodeToBytes } from "./wire/writer.js";


const typeRegistry = custom<readonly MessageType<any>[]>([], "an array of message types", (v) => Array.isArray(v) && v.every((t) => typeof t === "object" && t !== null && typeof (t as MessageType<unknown>).typeName === "string"));
const toJsonSpec: OptionsSpec<Required<ToJsonOptions>> = { typeRegistry, alwaysEmitImplicit: boolean(false), enumAsInteger: boolean(false), useProtoFieldName: boolean(false) };
const fromJsonSpec: OptionsSpec<Required<FromJsonOptions>> = { typeRegistry, ignoreUnknownFields: boolean(false) };

function bad(what: string): KoalaError {
  return new KoalaError(ErrorCode.INVALID_ARGUMENT, `protobuf JSON: ${what}`);
}

function fieldsOf(type: MessageType<any>): readonly FieldDesc[] {
  if (type.fields === undefined) throw bad(`${type.typeName} has no field table (generate it again with this koala version)`);
  return type.fields;
}

const isEnumObject = (t: unknown): t is Record<string | number, string | number> => typeof t === "object" && t !== null && !("typeName" in (t as object));

// ---------------------------------------------------------------------------------------------
// To JSON.

/** `message` of `type` as a JSON value. Throws KOALA_ERR_INVALID_ARGUMENT for what JSON cannot carry (an Any of an unregistered type). */
export function toJson<T>(type: MessageType<T>, message: T, options?: ToJsonOptions): JsonValue {
  return messageToJson(type, message, options === undefined ? undefined : resolveOptions("toJson()", toJsonSpec, options));
}

function messageToJson<T>(type: MessageType<T>, message: T, options: ToJsonOptions | undefined): JsonValue {
  const special = WKT_TO_JSON[type.typeName];
  if (special !== undefined) return special(message as Record<string, unknown>, options);
  const out: { [key: string]: JsonValue } = {};
  const m = message as Record<string, unknown>;
  const all = options?.alwaysEmitImplicit === true;
  const protoNames = options?.useProtoFieldName === true;
  for (const f of fieldsOf(type)) {
    const key = protoNames ? f.proto : f.json;
    // Implicit presence: lists, maps, and singular scalars and enums outside a oneof without `optional`.
    const implicit = f.oneof === undefined && (f.repeated === true || f.map !== undefined || (!f.opt && f.kind !== "message"));
    let v: unknown;
    if (f.oneof !== undefined) {
      const o = m[f.oneof] as { case?: string; value?: unknown } | undefined;
      if (o?.case !== f.name) continue;
      v = o.value;
    } else {
      // A proto2 default read through the prototype is not set.
      if (f.opt && !Object.hasOwn(m, f.name)) continue;
      v = m[f.name];
      if (v === undefined) {
        if (!(all && implicit)) continue;
        v = f.map !== undefined ? {} : f.repeated === true ? [] : zeroOf(f);
      }
    }
    if (f.map !== undefined) {
      const entries = Object.entries(v as object);
      if (entries.length === 0 && !all) continue;
      const obj: { [key: string]: JsonValue } = {};
      for (const [k, x] of entries) obj[k] = fieldToJson(f, x, options);
      out[key] = obj;
    } else if (f.repeated) {
      const list = v as unknown[];
      if (list.length === 0 && !all) continue;
      out[key] = list.map((x) => fieldToJson(f, x, options));
    } else {
      // Implicit presence: the default is not written (unless asked to).
      if (implicit && !all && isZero(f, v)) continue;
      out[key] = fieldToJson(f, v, options);
    }
  }
  return out;
}

/** The default of a singular scalar or enum field. */
function zeroOf(f: FieldDesc): unknown {
  if (f.kind === "enum") return 0;
  switch (f.type!) {
    case "bytes":
      return new Uint8Array(0);
    case "string":
      return "";
    case "bool":
      return false;
    case "int64":
    case "uint64":
    case "sint64":
    case "fixed64":
    case "sfixed64":
      return 0n;
    default:
      return 0;
  }
}

function isZero(f: FieldDesc, v: unknown): boolean {
  if (f.kind === "enum") return v === 0;
  switch (f.type!) {
    case "bytes":
      return (v as Uint8Array).byteLength === 0;
    case "string":
      return v === "";
    case "bool":
      return v === false;
    case "double":
    case "float":
      return v === 0 && 1 / (v as number) > 0;
    default:
      return v === 0 || v === 0n;
  }
}

function fieldToJson(f: FieldDesc, v: unknown, options: ToJsonOptions | undefined): JsonValue {
  if (f.kind === "message") return messageToJson(f.T!() as MessageType<unknown>, v, options);
  if (f.kind === "enum") {
    if (f.enumType === "google.protobuf.NullValue") return null;
    if (options?.enumAsInteger === true) return v as number;
    const name = (f.T!() as Record<number, string>)[v as number];
    return typeof name === "string" ? name : (v as number);
  }
  return scalarToJson(f.type!, v);
}

function scalarToJson(t: ScalarName, v: unknown): JsonValue {
  switch (t) {
    case "double":
    case "float": {
      const n = v as number;
      return Number.isNaN(n) ? "NaN" : n === Infinity ? "Infinity" : n === -Infinity ? "-Infinity" : n;
    }
    case "int64":
    case "uint64":
    case "sint64":
    case "fixed64":
    case "sfixed64":
      return String(v);
    case "bytes":
      return Buffer.from((v as Uint8Array).buffer, (v as Uint8Array).byteOffset, (v as Uint8Array).byteLength).toString("base64");
    default:
      return v as JsonValue;
  }
}

// ---------------------------------------------------------------------------------------------
// From JSON.

/** A message of `type` from a JSON value. Throws KOALA_ERR_INVALID_ARGUMENT naming the field and the problem. */
export function fromJson<T>(type: MessageType<T>, json: JsonValue, options?: FromJsonOptions): T {
  return readMessage(type, json, options === undefined ? undefined : resolveOptions("fromJson()", fromJsonSpec, options), type.typeName);
}

function readMessage<T>(type: MessageType<T>, json: JsonValue, options: FromJsonOptions | undefined, path: string): T {
  const special = WKT_FROM_JSON[type.typeName];
  if (special !== undefined) return type.create(special(json, options, path) as never);
  if (typeof json !== "object" || json === null || Array.isArray(json)) throw bad(`${path}: expected an object, got ${describe(json)}`);
  const fields = fieldsOf(type);
  const m = type.create() as Record<string, unknown>;
  const seenOneof = new Set<string>();
  for (const [key, raw] of Object.entries(json)) {
    const f = fields.find((x) => x.json === key || x.proto === key);
    if (f === undefined) {
      if (options?.ignoreUnknownFields) continue;
      throw bad(`${path}: unknown field "${key}"`);
    }
    const at = `${path}.${f.proto}`;
    // null is the default, except where null is a value (google.protobuf.Value, NullValue).
    const nullIsValue = f.enumType === "google.protobuf.NullValue" || (f.kind === "message" && (f.T!() as MessageType<unknown>).typeName === "google.protobuf.Value");
    if (raw === null && !(nullIsValue && f.map === undefined && !f.repeated)) continue;
    if (f.map !== undefined) {
      if (typeof raw !== "object" || raw === null || Array.isArray(raw)) throw bad(`${at}: expected an object for a map, got ${describe(raw)}`);
      const map = m[f.name] as Record<string, unknown>;
      for (const [k, x] of Object.entries(raw)) {
        const key = mapKey(f.map, k, at);
        const value = readValue(f, x, options, `${at}["${k}"]`);
        if (value === SKIP) continue;
        if (key === "__proto__") Object.defineProperty(map, key, { value, enumerable: true, writable: true, configurable: true });
        else map[key] = value;
      }
    } else if (f.repeated) {
      if (!Array.isArray(raw)) throw bad(`${at}: expected an array, got ${describe(raw)}`);
      const list = m[f.name] as unknown[];
      raw.forEach((x, i) => {
        const value = readValue(f, x, options, `${at}[${i}]`);
        if (value !== SKIP) list.push(value);
      });
    } else {
      const value = readValue(f, raw, options, at);
      if (value === SKIP) continue;
      if (f.oneof !== undefined) {
        if (seenOneof.has(f.oneof)) throw bad(`${at}: a second field of oneof ${f.oneof}`);
        seenOneof.add(f.oneof);
        m[f.oneof] = { case: f.name, value };
      } else m[f.name] = value;
    }
  }
  return m as T;
}

const SKIP = Symbol("skip");

function readValue(f: FieldDesc, v: JsonValue, options: FromJsonOptions | undefined, at: string): unknown {
  if (f.kind === "message") return readMessage(f.T!() as MessageType<unknown>, v, options, at);
  if (f.kind === "enum") {
    if (f.enumType === "google.protobuf.NullValue") {
      if (v === null || v === "NULL_VALUE" || v === 0) return 0;
      throw bad(`${at}: expected null, got ${describe(v)}`);
    }
    const e = f.T!();
    if (typeof v === "string") {
      const n = isEnumObject(e) ? e[v] : undefined;
      if (typeof n === "number") return n;
      if (options?.ignoreUnknownFields) return SKIP;
      throw bad(`${at}: unknown enum value "${v}"`);
    }
    return int32(v, at, -(2 ** 31), 2 ** 31 - 1);
  }
  return scalarFromJson(f.type!, v, at);
}

function describe(v: unknown): string {
  return v === null ? "null" : Array.isArray(v) ? "an array" : typeof v === "string" ? JSON.stringify(v) : typeof v;
}

/** A number or decimal string that must be an integer in [lo, hi]. */
function int32(v: JsonValue, at: string, lo: number, hi: number): number {
  const n = typeof v === "number" ? v : typeof v === "string" && v.trim() === v && v !== "" ? Number(v) : NaN;
  if (!Number.isInteger(n) || n < lo || n > hi) throw bad(`${at}: expected an integer in [${lo}, ${hi}], got ${describe(v)}`);
  return n;
}

function int64(v: JsonValue, at: string, signed: boolean): bigint {
  let b: bigint | undefined;
  if (typeof v === "number" && Number.isInteger(v)) b = BigInt(v);
  else if (typeof v === "string" && /^-?\d+$/.test(v)) b = BigInt(v);
  else if (typeof v === "string" && /^-?\d+(\.\d+)?[eE][+-]?\d+$/.test(v) && Number.isInteger(Number(v))) b = BigInt(Number(v));
  const ok = b !== undefined && (signed ? b >= -(2n ** 63n) && b < 2n ** 63n : b >= 0n && b < 2n ** 64n);
  if (!ok) throw bad(`${at}: expected a ${signed ? "signed" : "unsigned"} 64-bit integer, got ${describe(v)}`);
  return b!;
}

function scalarFromJson(t: ScalarName, v: JsonValue, at: string): unknown {
  switch (t) {
    case "double":
    case "float": {
      let n: number;
      if (v === "NaN") n = NaN;
      else if (v === "Infinity") n = Infinity;
      else if (v === "-Infinity") n = -Infinity;
      else if (typeof v === "number") n = v;
      else if (typeof v === "string" && v.trim() === v && v !== "" && !Number.isNaN(Number(v))) n = Number(v);
      else throw bad(`${at}: expected a number, got ${describe(v)}`);
      if (t === "float" && Number.isFinite(n) && Math.abs(n) > 3.4028234663852886e38) throw bad(`${at}: ${n} is out of the float range`);
      return n;
    }
    case "int32":
    case "sint32":
    case "sfixed32":
      return int32(v, at, -(2 ** 31), 2 ** 31 - 1);
    case "uint32":
    case "fixed32":
      return int32(v, at, 0, 2 ** 32 - 1);
    case "int64":
    case "sint64":
    case "sfixed64":
      return int64(v, at, true);
    case "uint64":
    case "fixed64":
      return int64(v, at, false);
    case "bool":
      if (typeof v !== "boolean") throw bad(`${at}: expected true or false, got ${describe(v)}`);
      return v;
    case "string":
      if (typeof v !== "string") throw bad(`${at}: expected a string, got ${describe(v)}`);
      return v;
    case "bytes":
      if (typeof v !== "string" || !/^[A-Za-z0-9+/_-]*={0,2}$/.test(v)) throw bad(`${at}: expected base64, got ${describe(v)}`);
      return new Uint8Array(Buffer.from(v.replace(/-/g, "+").replace(/_/g, "/"), "base64"));
  }
}

/** A map key in its object form, checked against the key type. */
function mapKey(t: ScalarName, k: string, at: string): string {
  switch (t) {
    case "string":
      return k;
    case "bool":
      if (k !== "true" && k !== "false") throw bad(`${at}: map key "${k}" is not true or false`);
      return k;
    case "int64":
    case "sint64":
    case "sfixed64":
    case "uint64":
    case "fixed64":
      return String(scalarFromJson(t, k, at));
    default:
      return String(scalarFromJson(t, k, at));
  }
}

// ---------------------------------------------------------------------------------------------
// Well-known types.

type Plain = Record<string, unknown>;
type ToSpecial = (m: Plain, options: ToJsonOptions | undefined) => JsonValue;
type FromSpecial = (json: JsonValue, options: FromJsonOptions | undefined, path: string) => Plain;

const WRAPPERS: Record<string, ScalarName> = {
  DoubleValue: "double",
  FloatValue: "float",
  Int64Value: "int64",
  UInt64Value: "uint64",
  Int32Value: "int32",
  UInt32Value: "uint32",
  BoolValue: "bool",
  StringValue: "string",
  BytesValue: "bytes",
};

const WKT_TO_JSON: Record<string, ToSpecial> = {
  "google.protobuf.Timestamp": (m) => timestampString(BigInt((m.seconds as bigint | undefined) ?? 0n), Number(m.nanos ?? 0)),
  "google.protobuf.Duration": (m) => durationString(BigInt((m.seconds as bigint | undefined) ?? 0n), Number(m.nanos ?? 0)),
  "google.protobuf.Struct": (m) => structToJson(m),
  "google.protobuf.Value": (m) => valueToJson(m),
  "google.protobuf.ListValue": (m) => ((m.values as Plain[] | undefined) ?? []).map(valueToJson),
  "google.protobuf.FieldMask": (m) => ((m.paths as string[] | undefined) ?? []).map(pathToJson).join(","),
  "google.protobuf.Empty": () => ({}),
  "google.protobuf.Any": (m, options) => anyToJson(m, options),
};
const WKT_FROM_JSON: Record<string, FromSpecial> = {
  "google.protobuf.Timestamp": (json, _o, path) => parseTimestamp(json, path),
  "google.protobuf.Duration": (json, _o, path) => parseDuration(json, path),
  "google.protobuf.Struct": (json, _o, path) => structFromJson(json, path),
  "google.protobuf.Value": (json, _o, path) => valueFromJson(json, path),
  "google.protobuf.ListValue": (json, _o, path) => {
    if (!Array.isArray(json)) throw bad(`${path}: expected an array, got ${describe(json)}`);
    return { values: json.map((x, i) => valueFromJson(x, `${path}[${i}]`)) };
  },
  "google.protobuf.FieldMask": (json, _o, path) => {
    if (typeof json !== "string") throw bad(`${path}: expected a string, got ${describe(json)}`);
    return { paths: json === "" ? [] : json.split(",").map(pathFromJson) };
  },
  "google.protobuf.Empty": (json, _o, path) => {
    if (typeof json !== "object" || json === null || Array.isArray(json) || Object.keys(json).length > 0) throw bad(`${path}: expected {}`);
    return {};
  },
  "google.protobuf.Any": (json, options, path) => anyFromJson(json, options, path),
};
for (const [name, scalar] of Object.entries(WRAPPERS)) {
  WKT_TO_JSON[`google.protobuf.${name}`] = (m) => scalarToJson(scalar, m.value ?? (scalar === "string" ? "" : scalar === "bool" ? false : scalar === "bytes" ? new Uint8Array(0) : scalar.endsWith("64") ? 0n : 0));
  WKT_FROM_JSON[`google.protobuf.${name}`] = (json, _o, path) => ({ value: scalarFromJson(scalar, json, path) });
}

const MAX_SECONDS = 315576000000n;

function fraction(nanos: number): string {
  if (nanos === 0) return "";
  const s = String(Math.abs(nanos)).padStart(9, "0");
  return `.${s.endsWith("000000") ? s.slice(0, 3) : s.endsWith("000") ? s.slice(0, 6) : s}`;
}

function timestampString(seconds: bigint, nanos: number): string {
  // 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
  if (seconds < -62135596800n || seconds > 253402300799n || nanos < 0 || nanos > 999_999_999) throw bad(`Timestamp ${seconds}s ${nanos}ns is out of range`);
  const iso = new Date(Number(seconds) * 1000).toISOString();
  return `${iso.slice(0, 19)}${fraction(nanos)}Z`;
}

function parseTimestamp(json: JsonValue, path: string): Plain {
  const m = typeof json === "string" ? /^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})$/.exec(json) : null;
  if (m === null) throw bad(`${path}: expected an RFC 3339 timestamp, got ${describe(json)}`);
  const ms = Date.parse(`${m[1]}${m[3]}`);
  if (Number.isNaN(ms)) throw bad(`${path}: invalid timestamp ${describe(json)}`);
  const seconds = BigInt(Math.floor(ms / 1000));
  const nanos = m[2] === undefined ? 0 : Number(m[2].padEnd(9, "0"));
  if (seconds < -62135596800n || seconds > 253402300799n) throw bad(`${path}: timestamp out of range`);
  return { seconds, nanos };
}

function durationString(seconds: bigint, nanos: number): string {
  if (seconds < -MAX_SECONDS || seconds > MAX_SECONDS || Math.abs(nanos) > 999_999_999 || (seconds > 0n && nanos < 0) || (seconds < 0n && nanos > 0)) {
    throw bad(`Duration ${seconds}s ${nanos}ns is out of range`);
  }
  const negative = seconds < 0n || nanos < 0;
  const abs = seconds < 0n ? -seconds : seconds;
  return `${negative ? "-" : ""}${abs}${fraction(nanos)}s`;
}

function parseDuration(json: JsonValue, path: string): Plain {
  const m = typeof json === "string" ? /^(-)?(\d+)(?:\.(\d{1,9}))?s$/.exec(json) : null;
  if (m === null) throw bad(`${path}: expected a duration like "1.5s", got ${describe(json)}`);
  const sign = m[1] === "-" ? -1 : 1;
  const seconds = BigInt(m[2]!) * BigInt(sign);
  const nanos = m[3] === undefined ? 0 : Number(m[3].padEnd(9, "0")) * sign;
  if (seconds < -MAX_SECONDS || seconds > MAX_SECONDS) throw bad(`${path}: duration out of range`);
  return { seconds, nanos: nanos === 0 ? 0 : nanos };
}

function pathToJson(p: string): string {
  return p.replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase());
}

function pathFromJson(p: string): string {
  return p.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
}

/** A google.protobuf.Struct as a plain JSON object. */
export function structToJson(struct: { fields?: { [key: string]: unknown } }): { [key: string]: JsonValue } {
  const out: { [key: string]: JsonValue } = {};
  for (const [k, v] of Object.entries(struct.fields ?? {})) out[k] = valueToJson(v as Plain);
  return out;
}

/** A plain JSON object as a google.protobuf.Struct. */
export function structFromJson(json: JsonValue, path = "Struct"): { fields: { [key: string]: Plain } } {
  if (typeof json !== "object" || json === null || Array.isArray(json)) throw bad(`${path}: expected an object, got ${describe(json)}`);
  const fields: { [key: string]: Plain } = {};
  for (const [k, v] of Object.entries(json)) fields[k] = valueFromJson(v, `${path}.${k}`);
  return { fields };
}

/** A google.protobuf.Value as a plain JSON value. */
export function valueToJson(value: { kind?: { case?: string; value?: unknown } }): JsonValue {
  const k = value.kind;
  switch (k?.case) {
    case "nullValue":
      return null;
    case "numberValue": {
      const n = k.value as number;
      if (!Number.isFinite(n)) throw bad(`a Value holds ${n}, which JSON cannot carry`);
      return n;
    }
    case "stringValue":
    case "boolValue":
      return k.value as JsonValue;
    case "structValue":
      return structToJson(k.value as Plain);
    case "listValue":
      return (((k.value as Plain).values as Plain[] | undefined) ?? []).map(valueToJson);
    default:
      throw bad("a Value with no kind set");
  }
}

/** A plain JSON value as a google.protobuf.Value. */
export function valueFromJson(json: JsonValue, path = "Value"): Plain {
  if (json === null) return { kind: { case: "nullValue", value: 0 } };
  if (typeof json === "number") return { kind: { case: "numberValue", value: json } };
  if (typeof json === "string") return { kind: { case: "stringValue", value: json } };
  if (typeof json === "boolean") return { kind: { case: "boolValue", value: json } };
  if (Array.isArray(json)) return { kind: { case: "listValue", value: { values: json.map((x, i) => valueFromJson(x, `${path}[${i}]`)) } } };
  if (typeof json === "object") return { kind: { case: "structValue", value: structFromJson(json, path) } };
  throw bad(`${path}: ${describe(json)} is not JSON`);
}

function registryLookup(url: string, options: ToJsonOptions | undefined, path: string): MessageType<any> {
  const name = url.slice(url.lastIndexOf("/") + 1);
  const type = options?.typeRegistry?.find((t) => t.typeName === name);
  if (type === undefined) throw bad(`${path}: Any holds ${name || "(no type URL)"}, which is not in the typeRegistry option`);
  return type;
}

function anyToJson(m: Plain, options: ToJsonOptions | undefined): JsonValue {
  const url = (m.typeUrl as string | undefined) ?? "";
  if (url === "" && ((m.value as Uint8Array | undefined)?.byteLength ?? 0) === 0) return {};
  const type = registryLookup(url, options, "Any");
  const inner = messageToJson(type, decodeWith(type, (m.value as Uint8Array | undefined) ?? new Uint8Array(0)), options);
  if (WKT_TO_JSON[type.typeName] !== undefined) return { "@type": url, value: inner };
  return { "@type": url, ...(inner as object) };
}

function anyFromJson(json: JsonValue, options: FromJsonOptions | undefined, path: string): Plain {
  if (typeof json !== "object" || json === null || Array.isArray(json)) throw bad(`${path}: expected an object, got ${describe(json)}`);
  if (Object.keys(json).length === 0) return {};
  const url = json["@type"];
  if (typeof url !== "string" || url === "") throw bad(`${path}: an Any needs "@type"`);
  const type = registryLookup(url, options, path);
  const { "@type": _, ...rest } = json;
  const inner = readMessage(type, WKT_FROM_JSON[type.typeName] !== undefined ? (rest.value ?? null) : rest, options, path);
  return { typeUrl: url, value: encodeToBytes(type, inner) };
}
