/**
 * Building outgoing frames: header, sections and protobuf body written in place, the body
 * encoded straight into the frame's memory (behind the header) and large `bytes` fields left
 * as their own scatter-gather parts.
 */
import { Code, ErrorCode, KoalaError, RpcError } from "../errors.js";
import { logLimited } from "../log.js";
import type { Heap, Lease } from "../mem/index.js";
import type { MessageType } from "../proto/definition.js";
import { FrameFlag, FrameType, HEADER_BYTES, writeHeader } from "./frame.js";
import { encodeMetadata, metadataLength, type Metadata } from "./metadata.js";
import { encodeParts, sizeForWrite, writeSized } from "../proto/wire/writer.js";
import type { Connection } from "../transport/types.js";

/** Frames from this size up are encoded into heap leases (the transports' coalescing limit). */
export const HEAP_MIN_BYTES = 16 * 1024;

/**
 * Memory for frame bodies: plain pooled buffers below {@link HEAP_MIN_BYTES} (the transport
 * copies those into its per-tick batch at once, so a lease would only add cost), heap leases
 * above. Encoding is synchronous, so the lease taken for a frame is picked up with
 * {@link takeLease} right after encoding it. A full heap is not a failure: the frame is encoded
 * into plain memory instead (the per-connection budgets, not the heap cap, bound memory), so one
 * client filling the heap cannot fail another client's reply.
 */
class FrameAllocator {
  private lease: Lease | undefined;
  /** Passed to the encoder as its allocator. */
  readonly alloc = (n: number): Uint8Array => {
    if (n < HEAP_MIN_BYTES) return Buffer.allocUnsafe(n);
    try {
      return (this.lease = this.heap.alloc(n)).bytes;
    } catch (err) {
      if (!(err instanceof KoalaError) || err.code !== ErrorCode.OUT_OF_MEMORY) throw err;
      logLimited("rpc.heap-full", "warn", "rpc", `the heap is full; frames are encoded into plain memory meanwhile: ${err.message}`, 1);
      return Buffer.allocUnsafe(n);
    }
  };

  constructor(private readonly heap: Heap) {}

  /** The lease taken while encoding the last frame, if any (and forgets it). */
  takeLease(): Lease | undefined {
    const l = this.lease;
    this.lease = undefined;
    return l;
  }
}

/** How bodies are encoded: limits and where their memory comes from (see {@link encodeSettings}). */
export interface EncodeSettings {
  /** Largest body allowed, in bytes. */
  maxMessageBytes: number;
  /** `bytes` fields at least this long are sent as their own part, not copied. */
  externalBytesThreshold: number;
  /** Heap memory for large frames; undefined: plain buffers only. */
  allocator: FrameAllocator | undefined;
}

/** Settings that encode frames of at least {@link HEAP_MIN_BYTES} into leases of `heap` (null: plain buffers only). */
export function encodeSettings(maxMessageBytes: number, externalBytesThreshold: number, heap: Heap | null): EncodeSettings {
  return { maxMessageBytes, externalBytesThreshold, allocator: heap === null ? undefined : new FrameAllocator(heap) };
}

/** An encoded frame ready for `Connection.send`. */
export interface OutgoingFrame {
  parts: Uint8Array[];
  /** Body length in bytes (0 without a body). */
  bodyBytes: number;
  /** Returns the frame's memory to the heap; pass it to `Connection.send` as `onWritten`. */
  release: (() => void) | undefined;
}

/** What goes into a frame (see frame.ts for the meaning of each header field per type). */
export interface FrameSpec<T = unknown> {
  type: FrameType;
  /** Flags besides METADATA and MESSAGE, which are set from the sections given. */
  flags?: number;
  callId: number;
  arg?: number;
  /** Set from the trailers for STATUS. */
  arg2?: number;
  /** Headers section. */
  metadata?: Metadata | undefined;
  /** Trailers section (STATUS). */
  trailers?: Metadata | undefined;
  /** Method path, status message or GOAWAY reason. */
  text?: string;
  /** The body's message type; no body without it. */
  bodyType?: MessageType<T> | undefined;
  /** The body (a whole or partial message). */
  body?: T | undefined;
}

/**
 * Encodes a frame. Throws RpcError RESOURCE_EXHAUSTED when the body is over the limit,
 * INTERNAL when encoding fails; no memory is kept then.
 */
export function buildFrame<T>(settings: EncodeSettings, spec: FrameSpec<T>): OutgoingFrame {
  return encodeFrame(settings, spec.type, spec.flags ?? 0, spec.callId, spec.arg ?? 0, spec.arg2 ?? 0, spec.metadata, spec.trailers, spec.text ?? "", spec.bodyType, spec.body);
}

/**
 * {@link buildFrame} with the spec's fields as arguments, for the paths taken on every call or
 * stream message (a spec object literal there costs about 100 bytes of garbage per frame).
 */
export function encodeFrame<T>(
  settings: EncodeSettings,
  type: FrameType,
  flagsIn: number,
  callId: number,
  arg: number,
  arg2In: number,
  metadata: Metadata | undefined,
  trailers: Metadata | undefined,
  text: string,
  bodyType: MessageType<T> | undefined,
  body: T | undefined,
): OutgoingFrame {
  let flags = flagsIn;
  const mdLen = metadata !== undefined && metadata.size > 0 ? metadataLength(metadata) : 0;
  const trLen = trailers !== undefined && trailers.size > 0 ? metadataLength(trailers) : 0;
  const textLen = text === "" ? 0 : Buffer.byteLength(text);
  const headroom = HEADER_BYTES + mdLen + trLen + textLen;
  if (mdLen > 0) flags |= FrameFlag.METADATA;
  let parts: Uint8Array[];
  let bodyBytes = 0;
  let lease: Lease | undefined;
  if (bodyType !== undefined) {
    flags |= FrameFlag.MESSAGE;
    const allocator = settings.allocator;
    try {
      parts = encodeParts(bodyType, body as T, headroom, allocator?.alloc, settings.externalBytesThreshold, settings.maxMessageBytes);
      lease = allocator?.takeLease();
    } catch (err) {
      const taken = allocator?.takeLease();
      if (taken !== undefined && !taken.released) taken.release();
      throw encodeError(bodyType, err);
    }
    for (const p of parts) bodyBytes += p.byteLength;
    bodyBytes -= headroom;
  } else {
    parts = [Buffer.allocUnsafe(headroom)];
  }
  writeHead(parts[0]!, 0, type, flags, callId, arg, arg2In, metadata, trailers, text, mdLen, trLen, textLen);
  return { parts, bodyBytes, release: lease === undefined ? undefined : releaserOf(lease) };
}

/** Writes a frame's header and sections (the lengths measured by the caller) at `out[at]`. */
function writeHead(
  out: Uint8Array,
  at: number,
  type: FrameType,
  flags: number,
  callId: number,
  arg: number,
  arg2In: number,
  metadata: Metadata | undefined,
  trailers: Metadata | undefined,
  text: string,
  mdLen: number,
  trLen: number,
  textLen: number,
): void {
  writeHeader(out, type, flags, callId, arg, type === FrameType.STATUS ? trLen : arg2In, mdLen, textLen, at);
  if (mdLen > 0 || trLen > 0 || textLen > 0) {
    const buf = Buffer.isBuffer(out) ? out : Buffer.from(out.buffer, out.byteOffset, out.byteLength);
    let p = at + HEADER_BYTES;
    if (mdLen > 0) p = encodeMetadata(metadata!, buf, p);
    if (trLen > 0) p = encodeMetadata(trailers!, buf, p);
    if (textLen > 0) buf.write(text, p, "utf8");
  }
}

/** The RpcError for a body that failed to encode: RESOURCE_EXHAUSTED over the limit, INTERNAL otherwise. */
function encodeError(bodyType: { readonly typeName: string }, err: unknown): RpcError {
  if (err instanceof KoalaError && err.code === ErrorCode.MESSAGE_TOO_LARGE) {
    return new RpcError(Code.RESOURCE_EXHAUSTED, `${bodyType.typeName} of ${err.message} (maxMessageBytes)`, { cause: err });
  }
  return new RpcError(Code.INTERNAL, `cannot encode ${bodyType.typeName}: ${(err as Error).message}`, { cause: err });
}

/**
 * {@link encodeFrame} and `conn.send` in one, the frame encoded straight into the connection's
 * send buffer ({@link Connection.reserve}): no memory of its own, no parts array, no copy.
 * Returns undefined, having sent nothing, when that cannot be done: the transport has no such
 * buffer, the frame is too large for it, a `bytes` field would go out as a part of its own, or
 * the body is over `room` bytes (the caller's memory budget: its general path then fails the
 * call as it should). Otherwise returns what `send()` would. Throws as encodeFrame does, and
 * KOALA_ERR_CLOSED from a closed connection; nothing is sent then.
 */
export function sendInPlace<T>(
  conn: Connection,
  settings: EncodeSettings,
  type: FrameType,
  flagsIn: number,
  callId: number,
  arg: number,
  arg2In: number,
  metadata: Metadata | undefined,
  trailers: Metadata | undefined,
  text: string,
  bodyType: MessageType<T> | undefined,
  body: T | undefined,
  room: number,
): boolean | undefined {
  if (conn.reserve === undefined) return undefined;
  let flags = flagsIn;
  const mdLen = metadata !== undefined && metadata.size > 0 ? metadataLength(metadata) : 0;
  const trLen = trailers !== undefined && trailers.size > 0 ? metadataLength(trailers) : 0;
  const textLen = text === "" ? 0 : Buffer.byteLength(text);
  const headroom = HEADER_BYTES + mdLen + trLen + textLen;
  if (mdLen > 0) flags |= FrameFlag.METADATA;
  let bodyBytes = 0;
  if (bodyType !== undefined) {
    flags |= FrameFlag.MESSAGE;
    bodyBytes = bodySizeInPlace(settings, bodyType, body as T);
    if (bodyBytes < 0 || bodyBytes > room) return undefined;
  }
  const buf = conn.reserve(headroom + bodyBytes);
  if (buf === undefined) return undefined;
  const at = conn.reservedOffset!;
  if (bodyType !== undefined) {
    try {
      writeSized(bodyType, body as T, buf, at + headroom, bodyBytes);
    } catch (err) {
      // Never committed: the reservation is dropped with the bytes written into it.
      throw encodeError(bodyType, err);
    }
  }
  writeHead(buf, at, type, flags, callId, arg, arg2In, metadata, trailers, text, mdLen, trLen, textLen);
  return conn.commit!();
}

/**
 * The size a body would take when written in place ({@link sendInPlace}, {@link sendDataInPlace}):
 * -1 when it cannot be (a `bytes` field would go out as a part of its own). Throws as
 * encodeFrame does for a body over the limit or one that cannot be encoded.
 */
export function bodySizeInPlace<T>(settings: EncodeSettings, bodyType: MessageType<T>, body: T): number {
  try {
    return sizeForWrite(bodyType, body, settings.externalBytesThreshold, settings.maxMessageBytes);
  } catch (err) {
    throw encodeError(bodyType, err);
  }
}

/**
 * A DATA frame with a body and no sections (every stream message after the first), written
 * straight into the connection's send buffer: `bodyBytes` is what {@link bodySizeInPlace}
 * measured. Returns undefined, having sent nothing, when the transport has no such buffer or no
 * room in it for this frame; otherwise what `send()` would.
 */
export function sendDataInPlace<T>(conn: Connection, callId: number, bodyType: MessageType<T>, body: T, bodyBytes: number): boolean | undefined {
  const buf = conn.reserve!(HEADER_BYTES + bodyBytes);
  if (buf === undefined) return undefined;
  const at = conn.reservedOffset!;
  try {
    writeSized(bodyType, body, buf, at + HEADER_BYTES, bodyBytes);
  } catch (err) {
    throw encodeError(bodyType, err);
  }
  writeHeader(buf, FrameType.DATA, FrameFlag.MESSAGE, callId, 0, 0, 0, 0, at);
  return conn.commit!();
}

/**
 * `lease.release` as a function of no argument. Made here, not inline in {@link buildFrame}:
 * a closure there would make V8 allocate a context on every frame built, leased or not.
 */
function releaserOf(lease: Lease): () => void {
  return () => lease.release();
}
