/**
 * Building outgoing frames: header, sections and protobuf body written in place, the body
 * encoded straight into the frame's memory (behind the header) and large `bytes` fields left
 * as their own scatter-gather parts.
 */
import { Code, ErrorCode, KoalaError, RpcError } from "../errors.js";
import type { Heap, Lease } from "../mem/index.js";
import type { MessageType } from "../proto/definition.js";
import { FrameFlag, FrameType, HEADER_BYTES, writeHeader } from "./frame.js";
import { encodeMetadata, metadataLength, type Metadata } from "./metadata.js";
import { encodeParts } from "../proto/wire/writer.js";

/** How bodies are encoded: limits and where their memory comes from (see {@link encodeSettings}). */
export interface EncodeSettings {
  /** Largest body allowed, in bytes. */
  maxMessageBytes: number;
  /** `bytes` fields at least this long are sent as their own part, not copied. */
  externalBytesThreshold: number;
  /** Memory for a frame; undefined: plain buffers. */
  alloc: ((n: number) => Uint8Array) | undefined;
}

/** The lease taken by the last `alloc` of an {@link encodeSettings} allocator (encoding is synchronous). */
let lastLease: Lease | undefined;

/**
 * Settings whose allocator encodes frames of at least {@link HEAP_MIN_BYTES} into leases of
 * `heap` (null: plain buffers only). Smaller frames use plain pooled buffers: the transport
 * copies them into its per-tick write batch at once, so a lease would only add cost.
 */
export function encodeSettings(maxMessageBytes: number, externalBytesThreshold: number, heap: Heap | null): EncodeSettings {
  const alloc = heap === null ? undefined : (n: number) => (n < HEAP_MIN_BYTES ? Buffer.allocUnsafe(n) : (lastLease = heap.alloc(n)).bytes);
  return { maxMessageBytes, externalBytesThreshold, alloc };
}

/** Frames from this size up are encoded into heap leases (the transports' coalescing limit). */
export const HEAP_MIN_BYTES = 16 * 1024;

/** An encoded frame ready for `Connection.send`. */
export interface OutgoingFrame {
  parts: Uint8Array[];
  /** Body length in bytes (0 without a body). */
  bodyBytes: number;
  /** Returns the frame's memory to the heap; pass it to `Connection.send` as `onWritten`. */
  release: (() => void) | undefined;
}

/**
 * Encodes a frame. `message`/`type` are optional (no body without them). Throws RpcError
 * RESOURCE_EXHAUSTED when the body is over the limit, INTERNAL when encoding fails.
 */
export function buildFrame<T>(
  settings: EncodeSettings,
  frameType: FrameType,
  flags: number,
  callId: number,
  arg: number,
  arg2: number,
  metadata: Metadata | undefined,
  trailers: Metadata | undefined,
  text: string,
  type: MessageType<T> | undefined,
  message: T | undefined,
): OutgoingFrame {
  const mdLen = metadata !== undefined && metadata.size > 0 ? metadataLength(metadata) : 0;
  const trLen = trailers !== undefined && trailers.size > 0 ? metadataLength(trailers) : 0;
  const textLen = text === "" ? 0 : Buffer.byteLength(text);
  const headroom = HEADER_BYTES + mdLen + trLen + textLen;
  if (mdLen > 0) flags |= FrameFlag.METADATA;
  let parts: Uint8Array[];
  let bodyBytes = 0;
  let lease: Lease | undefined;
  if (type !== undefined) {
    flags |= FrameFlag.MESSAGE;
    lastLease = undefined;
    try {
      parts = encodeParts(type, message as T, headroom, settings.alloc, settings.externalBytesThreshold, settings.maxMessageBytes);
      lease = lastLease;
    } catch (err) {
      releaseLease(lastLease);
      if (err instanceof KoalaError && err.code === ErrorCode.MESSAGE_TOO_LARGE) {
        throw new RpcError(Code.RESOURCE_EXHAUSTED, `${type.typeName} of ${err.message} (maxMessageBytes)`, { cause: err });
      }
      throw new RpcError(Code.INTERNAL, `cannot encode ${type.typeName}: ${(err as Error).message}`, { cause: err });
    }
    for (const p of parts) bodyBytes += p.byteLength;
    bodyBytes -= headroom;
  } else {
    parts = [Buffer.allocUnsafe(headroom)];
  }
  const first = parts[0]!;
  if (frameType === FrameType.STATUS) arg2 = trLen;
  writeHeader(first, frameType, flags, callId, arg, arg2, mdLen, textLen);
  if (mdLen > 0 || trLen > 0 || textLen > 0) {
    const buf = Buffer.from(first.buffer, first.byteOffset, headroom);
    let at = HEADER_BYTES;
    if (mdLen > 0) at = encodeMetadata(metadata!, buf, at);
    if (trLen > 0) at = encodeMetadata(trailers!, buf, at);
    if (textLen > 0) buf.write(text, at, "utf8");
  }
  const held = lease;
  return { parts, bodyBytes, release: held === undefined ? undefined : () => held.release() };
}

function releaseLease(lease: Lease | undefined): void {
  if (lease !== undefined && !lease.released) lease.release();
}
