/**
 * Helpers for the well-known types, on their generated shapes (any copy of the generated
 * `google/protobuf/*.ts` fits): Timestamp ↔ Date, Duration ↔ milliseconds, Any pack / unpack /
 * is, Struct / Value ↔ plain JSON (from json.ts), wrappers ↔ their value.
 */
import { ErrorCode, KoalaError } from "../errors.js";
import type { MessageType, PartialMessage } from "./definition.js";
import { decodeWith } from "./wire/reader.js";
import { encodeToBytes } from "./wire/writer.js";

export { structFromJson, structToJson, valueFromJson, valueToJson } from "./json.js";

/** The fields of google.protobuf.Timestamp and Duration. */
export interface SecondsNanos {
  /** Whole seconds (since the Unix epoch for a Timestamp). */
  seconds: bigint;
  /** Nanoseconds, 0 to 999,999,999 (a Duration's has the sign of its seconds). */
  nanos: number;
}

/** The fields of google.protobuf.Any. */
export interface AnyMessage {
  /** `type.googleapis.com/` then the packed message's full name. */
  typeUrl: string;
  /** The packed message's encoding. */
  value: Uint8Array;
}

/** A Timestamp for `date` (millisecond precision). Throws KOALA_ERR_INVALID_ARGUMENT for an invalid Date. */
export function timestampFromDate(date: Date): SecondsNanos {
  const ms = date.getTime();
  if (!Number.isFinite(ms)) throw new KoalaError(ErrorCode.INVALID_ARGUMENT, "timestampFromDate(): an invalid Date");
  const seconds = Math.floor(ms / 1000);
  return { seconds: BigInt(seconds), nanos: (ms - seconds * 1000) * 1_000_000 };
}

/** The Date of a Timestamp (nanoseconds below a millisecond are dropped). */
export function timestampToDate(t: PartialMessage<SecondsNanos>): Date {
  return new Date(Number(t.seconds ?? 0n) * 1000 + Math.floor((t.nanos ?? 0) / 1_000_000));
}

/** The Timestamp of now. */
export function timestampNow(): SecondsNanos {
  return timestampFromDate(new Date());
}

/** A Duration of `ms` milliseconds (fractions down to the nanosecond). */
export function durationFromMs(ms: number): SecondsNanos {
  if (!Number.isFinite(ms)) throw new KoalaError(ErrorCode.INVALID_ARGUMENT, `durationFromMs(): ${ms} is not a finite number of milliseconds`);
  const seconds = Math.trunc(ms / 1000);
  const nanos = Math.round((ms - seconds * 1000) * 1_000_000);
  return { seconds: BigInt(seconds), nanos: nanos === 0 ? 0 : nanos };
}

/** A Duration in milliseconds. */
export function durationToMs(d: PartialMessage<SecondsNanos>): number {
  return Number(d.seconds ?? 0n) * 1000 + (d.nanos ?? 0) / 1_000_000;
}

/** Packs `message` of `type` into an Any. */
export function anyPack<T>(type: MessageType<T>, message: PartialMessage<T>, urlPrefix = "type.googleapis.com/"): AnyMessage {
  return { typeUrl: `${urlPrefix}${type.typeName}`, value: encodeToBytes(type, message as T) };
}

/** Whether `any` holds a message of `type` (or of the type named `typeName`). */
export function anyIs(any: PartialMessage<AnyMessage>, type: MessageType<any> | string): boolean {
  const url = any.typeUrl ?? "";
  return url.slice(url.lastIndexOf("/") + 1) === (typeof type === "string" ? type : type.typeName);
}

/** The message `any` holds, when it is of `type`; undefined otherwise. Throws KOALA_ERR_PROTOCOL on malformed bytes. */
export function anyUnpack<T>(any: PartialMessage<AnyMessage>, type: MessageType<T>): T | undefined {
  return anyIs(any, type) ? decodeWith(type, any.value ?? new Uint8Array(0)) : undefined;
}

/** A wrapper message (google.protobuf.Int32Value, StringValue, …) for `value`; undefined stays undefined (no wrapper: unset). */
export function wrap<V>(value: V | undefined): { value: V } | undefined {
  return value === undefined ? undefined : { value };
}

/** The value of a wrapper message; undefined when the wrapper is unset. */
export function unwrap<V>(wrapper: { value?: V } | undefined): V | undefined {
  return wrapper === undefined ? undefined : wrapper.value;
}
