/** The protobuf runtime that generated code calls: writer, reader and size helpers. */
export { ProtoWriter, SizeCounter, encodeMessage, encodeToBytes, encodedLength, varint32Size, varint64Size, sint32Size, sint64Size, utf8Size, stringSize } from "./writer.js";
export type { EncodeOptions, Encodable } from "./writer.js";
export { ProtoReader, decodeWith } from "./reader.js";

/** The empty byte array shared by defaults (never written to). */
export const EMPTY_BYTES: Uint8Array = new Uint8Array(0);

/** Bytes a `bytes` value takes with its length prefix. */
export function bytesSize(b: Uint8Array): number {
  const n = b.byteLength;
  return (n < 0x80 ? 1 : n < 0x4000 ? 2 : n < 0x200000 ? 3 : n < 0x10000000 ? 4 : 5) + n;
}

/**
 * Sets `key` in a decoded map object. A key named `__proto__` (a peer may send one) becomes an
 * ordinary own entry instead of replacing the object's prototype.
 */
export function setEntry<V>(map: { [key: string]: V }, key: string, value: V): void {
  if (key === "__proto__") Object.defineProperty(map, key, { value, enumerable: true, writable: true, configurable: true });
  else map[key] = value;
}
