/**
 * proto2 extensions. Generated code declares each extension (`extend Foo { … }`) as an
 * {@link Extension}; its values travel in the extended message's unknown fields (`$unknown`),
 * so they are kept and written back even by code that does not know them, and these functions
 * read and write them there — the model of @bufbuild/protobuf's getExtension / setExtension.
 */
import type { PartialMessage } from "./definition.js";
import { reflectMessageType, type CodecField, type LoadedMessage } from "./reflect.js";
import { ProtoReader } from "./wire/reader.js";

/** An extension of messages `E` with values `V`. */
export interface Extension<E, V> {
  /** Fully qualified name of the extension, e.g. `"spec2.ext_i"`. */
  readonly typeName: string;
  /** Fully qualified name of the extended message. */
  readonly extendee: string;
  /** The extension field. */
  readonly field: CodecField;
  /** Type marker only (never set). */
  readonly $types?: [E, V];
}

type WithUnknown = { $unknown?: Uint8Array[] | undefined };

const containers = new WeakMap<CodecField, ReturnType<typeof reflectMessageType>>();

/** A message type with the extension as its only field, named `value`. */
function container(ext: Extension<unknown, unknown>) {
  let c = containers.get(ext.field);
  if (c === undefined) {
    c = reflectMessageType(`${ext.typeName} (extension)`, [{ ...ext.field, name: "value", oneof: undefined } as CodecField]);
    containers.set(ext.field, c);
  }
  return c;
}

/** The field number of a kept unknown field. */
function numberOf(field: Uint8Array): number {
  return new ProtoReader(field).tag() >>> 3;
}

/** Whether `message` holds a value of `ext`. */
export function hasExtension<E extends object, V>(message: E, ext: Extension<E, V>): boolean {
  return ((message as WithUnknown).$unknown ?? []).some((f) => numberOf(f) === ext.field.no);
}

/** The value of `ext` in `message`: the extension's default (undefined for a message, [] when repeated) when absent. */
export function getExtension<E extends object, V>(message: E, ext: Extension<E, V>): V {
  const parts = ((message as WithUnknown).$unknown ?? []).filter((f) => numberOf(f) === ext.field.no);
  const bytes = parts.length === 1 ? parts[0]! : Buffer.concat(parts);
  const v = (container(ext).decode(bytes) as LoadedMessage).value as V | undefined;
  return (v === undefined && ext.field.defaultValue !== undefined ? ext.field.defaultValue : v) as V;
}

/** Sets `ext` in `message` to `value` (replacing what it held). */
export function setExtension<E extends object, V>(message: E, ext: Extension<E, V>, value: PartialMessage<V>): void {
  clearExtension(message, ext);
  const bytes = container(ext).encode({ value });
  if (bytes.byteLength > 0) ((message as WithUnknown).$unknown ??= []).push(bytes);
}

/** Removes `ext` from `message`. */
export function clearExtension<E extends object, V>(message: E, ext: Extension<E, V>): void {
  const m = message as WithUnknown;
  if (m.$unknown === undefined) return;
  m.$unknown = m.$unknown.filter((f) => numberOf(f) !== ext.field.no);
  if (m.$unknown.length === 0) delete m.$unknown;
}
