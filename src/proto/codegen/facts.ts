/**
 * What a `.proto` field means for koala's message shape and codec, read from protobufjs
 * reflection: shared by the generator (which writes it out as TypeScript) and run-time
 * loading (which interprets it), so both give the same messages.
 */
import { Buffer, isUtf8 } from "node:buffer";
import protobuf from "protobufjs";
import type { ScalarName } from "../definition.js";

/** The features protobufjs resolved for an object (proto2 / proto3 are mapped to their editions equivalents). */
export function features(o: protobuf.ReflectionObject): Record<string, string | undefined> {
  return (o as unknown as { _features?: Record<string, string> })._features ?? {};
}

/**
 * protoc's lowerCamelCase name of a field (its JSON name unless `json_name` says otherwise):
 * underscores dropped, the character after each one upper-cased — `field__name4_` → `fieldName4`.
 */
export function protoCamelCase(name: string): string {
  let out = "";
  let upper = false;
  for (const ch of name) {
    if (ch === "_") upper = true;
    else {
      out += upper ? ch.toUpperCase() : ch;
      upper = false;
    }
  }
  return out;
}

const SCALAR_NAMES = new Set(["double", "float", "int32", "int64", "uint32", "uint64", "sint32", "sint64", "fixed32", "fixed64", "sfixed32", "sfixed64", "bool", "string", "bytes"]);

/*
 * protobufjs turns each escape of a string literal into one character (`\376` → U+00FE), while
 * protoc reads escapes as bytes: a bytes default of "\376" is the byte 0xFE (protobufjs gives
 * its UTF-8, C3 BE), a string default of "\341\210\264" is the UTF-8 of U+1234. The literal
 * itself is gone by then, so these undo it where the text allows only that reading.
 */

/** A bytes `[default]`: characters up to U+00FF are the bytes escapes wrote; text beyond them was UTF-8 in the file. */
function defaultBytes(text: unknown, parsed: Uint8Array): Uint8Array {
  if (typeof text === "string" && [...text].every((c) => c.charCodeAt(0) <= 0xff)) return Uint8Array.from(text, (c) => c.charCodeAt(0));
  return Uint8Array.from(parsed);
}

/** A string `[default]`: characters up to U+00FF that spell valid UTF-8 with a byte above 0x7F are escaped UTF-8 bytes. */
function defaultString(text: string): string {
  if (!/[\u0080-\u00ff]/.test(text) || /[^\u0000-\u00ff]/.test(text)) return text;
  const bytes = Buffer.from(text, "latin1");
  return isUtf8(bytes) ? bytes.toString("utf8") : text;
}

/** One field's meaning. */
export interface FieldFacts {
  /** The protobufjs field. */
  f: protobuf.Field;
  /** Property name (protoc's lowerCamelCase). */
  name: string;
  /** Name as written in the `.proto` (protoc's, for a group). */
  protoName: string;
  /** JSON name. */
  jsonName: string;
  /** Field number. */
  number: number;
  /** Scalar type of the value (of map values, of elements); undefined for messages and enums. */
  scalar: ScalarName | undefined;
  /** Message type of the value. */
  message: protobuf.Type | undefined;
  /** Enum type of the value. */
  enumType: protobuf.Enum | undefined;
  /** The values of a closed enum, sorted (proto2, `enum_type = CLOSED`): others go to the unknown fields. */
  closed: number[] | undefined;
  /** A repeated field. */
  repeated: boolean;
  /** Written packed (repeated numeric scalars and enums only). */
  packed: boolean;
  /** Tag-delimited encoding (a proto2 group, editions `DELIMITED`). */
  group: boolean;
  /** proto2 `required` / editions `LEGACY_REQUIRED`. */
  required: boolean;
  /** A map field. */
  map: protobuf.MapField | undefined;
  /** Key type of a map field. */
  mapKey: ScalarName | undefined;
  /** Explicit presence on a singular non-message field outside a oneof (proto3 `optional`, proto2). */
  optional: boolean;
  /** Property of the (real) oneof the field belongs to. */
  oneof: string | undefined;
  /** Strings not validated as UTF-8 (proto2, `utf8_validation = NONE`). */
  lax: boolean;
  /** The `[default = …]` of a proto2 field, as a JavaScript value. */
  defaultValue: number | bigint | boolean | string | Uint8Array | undefined;
}

/** The facts of field `f`. Throws KOALA_ERR_INVALID_ARGUMENT-worthy `Error`s for types it cannot map (the caller names the file). */
export function fieldFacts(f: protobuf.Field): FieldFacts {
  f.resolve();
  const rt = f.resolvedType;
  const message = rt instanceof protobuf.Type ? rt : undefined;
  const enumType = rt instanceof protobuf.Enum ? rt : undefined;
  const scalar = message || enumType ? undefined : SCALAR_NAMES.has(f.type) ? (f.type as ScalarName) : undefined;
  if (!message && !enumType && !scalar) throw new Error(`field ${f.fullName.slice(1)} has unsupported type ${f.type}`);
  const map = f instanceof protobuf.MapField ? f : undefined;
  const oneofObj = f.partOf;
  const synthetic = oneofObj !== null && oneofObj.isProto3Optional;
  // protoc names a proto2 group's field after its type, all lower case (protobufjs may keep the type's case).
  const protoName = message !== undefined && f.delimited && f.name.toLowerCase() === message.name.toLowerCase() ? f.name.toLowerCase() : f.name;
  const singular = !f.repeated && map === undefined;
  const d = (f.options as { default?: unknown } | undefined)?.default;
  let defaultValue: FieldFacts["defaultValue"];
  if (d !== undefined && singular && oneofObj === null && !message) {
    const v: unknown = f.typeDefault;
    defaultValue =
      scalar?.endsWith("64") ? BigInt(String(v)) : scalar === "bytes" ? defaultBytes(d, v as Uint8Array) : scalar === "string" && typeof d === "string" ? defaultString(d) : (v as number | boolean | string);
  }
  return {
    f,
    name: protoCamelCase(protoName),
    protoName,
    jsonName: (f.options as { json_name?: string } | undefined)?.json_name ?? protoCamelCase(protoName),
    number: f.id,
    scalar,
    message,
    enumType,
    closed: enumType && features(enumType).enum_type === "CLOSED" ? [...new Set(Object.values(enumType.values))].sort((a, b) => a - b) : undefined,
    repeated: f.repeated,
    // protobufjs reports every repeated field of a proto3 file as packed; only numbers and enums pack.
    packed: f.packed && (enumType !== undefined || (scalar !== undefined && scalar !== "string" && scalar !== "bytes")),
    // Map entries are length-prefixed whatever the file's features say.
    group: message !== undefined && map === undefined && f.delimited,
    required: f.required,
    map,
    mapKey: map ? (map.keyType as ScalarName) : undefined,
    optional: synthetic || (oneofObj === null && !message && singular && f.hasPresence),
    oneof: oneofObj !== null && !synthetic ? protoCamelCase(oneofObj.name) : undefined,
    lax: scalar === "string" && features(f).utf8_validation === "NONE",
    defaultValue,
  };
}

/** Fields that are part of the message itself (protobufjs also lists extensions declared elsewhere), by number. */
export function ownFields(t: protobuf.Type): protobuf.Field[] {
  return t.fieldsArray.filter((f) => !f.name.startsWith(".") && f.declaringField === null).sort((a, b) => a.id - b.id);
}
