/** Small helpers of generated and interpreted message code. */
import { ErrorCode, KoalaError } from "../../errors.js";

/**
 * Throws for a message missing some of its `required` fields (proto2, editions
 * `LEGACY_REQUIRED`): KOALA_ERR_PROTOCOL when decoding, KOALA_ERR_INVALID_ARGUMENT when encoding.
 */
export function missingRequired(typeName: string, message: object, fields: readonly string[], decoding: boolean): never {
  const absent = fields.filter((f) => !Object.hasOwn(message, f) || (message as Record<string, unknown>)[f] === undefined);
  const what = `${typeName}: required field${absent.length > 1 ? "s" : ""} ${absent.join(", ")} not set`;
  throw new KoalaError(decoding ? ErrorCode.PROTOCOL : ErrorCode.INVALID_ARGUMENT, decoding ? `malformed protobuf: ${what}` : `cannot encode ${what}`);
}

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
