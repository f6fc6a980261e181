/**
 * The RPC frame: one transport message is one frame, a fixed 24-byte header followed by
 * optional sections (metadata, trailers, text) and the protobuf body, which runs to the end
 * of the message so it needs no length and no copy.
 *
 * ```
 *  0 u8  type          1 u8 flags        2 u16 reserved (0)
 *  4 u32 call id
 *  8 u32 arg           CALL: method id · STATUS: code · CREDIT: bytes · PING/PONG: sequence · GOAWAY: last call id · SETTINGS: max concurrent streams
 * 12 u32 arg2          CALL: timeout in ms (0: none) · STATUS: trailers length · SETTINGS: max message bytes
 * 16 u32 metadata length
 * 20 u32 text length   CALL: method path (with DEFINE_METHOD) · STATUS: status message · GOAWAY: reason
 * 24 metadata | trailers | text | body
 * ```
 */
import { ErrorCode, KoalaError } from "../errors.js";

/** Header size in bytes. */
export const HEADER_BYTES = 24;

/** Frame types. */
export const FrameType = {
  /** Client opens a call. */
  CALL: 1,
  /** A message of an open call, either way; END_STREAM from the client half-closes. */
  DATA: 2,
  /** Server ends a call with a status (may carry the last response and the headers). */
  STATUS: 3,
  /** Client cancels a call. */
  CANCEL: 4,
  /** Receiver lets the sender send `arg` more body bytes on a stream (call id 0: on the connection). */
  CREDIT: 5,
  /** Keepalive probe. */
  PING: 6,
  /** Keepalive answer. */
  PONG: 7,
  /** Server accepts no calls above `arg` on this connection (graceful shutdown, idle, age). */
  GOAWAY: 8,
  /** Server's first frame: its limits (`arg` concurrent streams, `arg2` message bytes). */
  SETTINGS: 9,
} as const;
/** One of the values of {@link FrameType}. */
export type FrameType = (typeof FrameType)[keyof typeof FrameType];

/** Frame flags. */
export const FrameFlag = {
  /** The frame carries a message body. */
  MESSAGE: 1,
  /** The sender sends nothing more on this call. */
  END_STREAM: 2,
  /** A CALL that also names its method's path, binding it to the method id for this connection. */
  DEFINE_METHOD: 4,
  /** The metadata section holds the (request or response) headers. */
  METADATA: 8,
} as const;
/** One of the values of {@link FrameFlag}. */
export type FrameFlag = (typeof FrameFlag)[keyof typeof FrameFlag];

const MAX_TYPE = FrameType.SETTINGS;
const ALL_FLAGS = 15;

/** A decoded frame. Sections are views into the received message. */
export interface Frame {
  type: FrameType;
  flags: number;
  callId: number;
  arg: number;
  arg2: number;
  metadata: Uint8Array | undefined;
  trailers: Uint8Array | undefined;
  text: string;
  /**
   * The received message, or the buffer the message is a range of (see decodeFrame's `start`):
   * the sections are views of it, the body is `[bodyAt, bodyAt + bodyBytes)`.
   */
  message: Uint8Array;
  /** Where the body starts in `message` (it runs to the frame's end); -1 without a body. No view is made: most bodies are decoded in place. */
  bodyAt: number;
  /** The body's length in bytes; 0 without a body. */
  bodyBytes: number;
}

/** The frame's body as a view of its message (made on request), or undefined. */
export function frameBody(f: Frame): Uint8Array | undefined {
  return f.bodyAt < 0 ? undefined : f.message.subarray(f.bodyAt, f.bodyAt + f.bodyBytes);
}

function protocolError(why: string): KoalaError {
  return new KoalaError(ErrorCode.PROTOCOL, `malformed RPC frame: ${why}`);
}

/**
 * Decodes one frame; throws KOALA_ERR_PROTOCOL naming what is wrong, never anything else.
 * With `into`, fills and returns that object instead of a new one (for callers that finish with
 * a frame before decoding the next, which saves an allocation per message). With `start` and
 * `end`, the frame is `message[start, end)` (a message delivered as a range of a larger buffer);
 * the frame's offsets are then offsets into `message`.
 */
export function decodeFrame(message: Uint8Array, into?: Frame, start = 0, end = message.byteLength): Frame {
  const n = end - start;
  if (n < HEADER_BYTES) throw protocolError(`${n} bytes is shorter than the ${HEADER_BYTES}-byte header`);
  const b = message;
  const type = b[start]!;
  const flags = b[start + 1]!;
  if (type === 0 || type > MAX_TYPE) throw protocolError(`unknown frame type ${type}`);
  if ((flags & ~ALL_FLAGS) !== 0) throw protocolError(`unknown flags 0x${flags.toString(16)}`);
  if (b[start + 2] !== 0 || b[start + 3] !== 0) throw protocolError("reserved bytes are not zero");
  const callId = u32(b, start + 4);
  const arg = u32(b, start + 8);
  const arg2 = u32(b, start + 12);
  const mdLen = u32(b, start + 16);
  const textLen = u32(b, start + 20);
  const trLen = type === FrameType.STATUS ? arg2 : 0;
  const sections = mdLen + trLen + textLen;
  if (HEADER_BYTES + sections > n) throw protocolError(`sections of ${sections} bytes overrun a ${n}-byte frame`);
  if (mdLen !== 0 && (flags & FrameFlag.METADATA) === 0) throw protocolError("metadata section without the METADATA flag");
  let at = start + HEADER_BYTES;
  const metadata = mdLen === 0 ? undefined : b.subarray(at, (at += mdLen));
  const trailers = trLen === 0 ? undefined : b.subarray(at, (at += trLen));
  let text = "";
  if (textLen !== 0) {
    text = Buffer.from(b.buffer, b.byteOffset + at, textLen).toString("utf8");
    at += textLen;
  }
  const hasBody = (flags & FrameFlag.MESSAGE) !== 0;
  if (!hasBody && at !== end) throw protocolError(`${end - at} bytes of body without the MESSAGE flag`);
  if (type === FrameType.CALL && (flags & FrameFlag.DEFINE_METHOD) !== 0 && textLen === 0) throw protocolError("DEFINE_METHOD without a method path");
  const bodyAt = hasBody ? at : -1;
  const bodyBytes = hasBody ? end - at : 0;
  if (into === undefined) return { type: type as FrameType, flags, callId, arg, arg2, metadata, trailers, text, message, bodyAt, bodyBytes };
  into.type = type as FrameType;
  into.flags = flags;
  into.callId = callId;
  into.arg = arg;
  into.arg2 = arg2;
  into.metadata = metadata;
  into.trailers = trailers;
  into.text = text;
  into.message = message;
  into.bodyAt = bodyAt;
  into.bodyBytes = bodyBytes;
  return into;
}

function u32(b: Uint8Array, at: number): number {
  return (b[at]! | (b[at + 1]! << 8) | (b[at + 2]! << 16)) + b[at + 3]! * 0x1000000;
}

/** Writes a header into `out` at `at` (default its start; `out` must have room for it). */
export function writeHeader(
  out: Uint8Array,
  type: FrameType,
  flags: number,
  callId: number,
  arg: number,
  arg2: number,
  metadataLength: number,
  textLength: number,
  at = 0,
): void {
  out[at] = type;
  out[at + 1] = flags;
  out[at + 2] = 0;
  out[at + 3] = 0;
  put32(out, at + 4, callId);
  put32(out, at + 8, arg);
  put32(out, at + 12, arg2);
  put32(out, at + 16, metadataLength);
  put32(out, at + 20, textLength);
}

function put32(b: Uint8Array, at: number, v: number): void {
  b[at] = v;
  b[at + 1] = v >>> 8;
  b[at + 2] = v >>> 16;
  b[at + 3] = v >>> 24;
}

/** A frame with no sections and no body (CANCEL, CREDIT, PING, PONG). */
export function controlFrame(type: FrameType, callId: number, arg: number): Uint8Array {
  const out = new Uint8Array(HEADER_BYTES);
  writeHeader(out, type, 0, callId, arg, 0, 0, 0);
  return out;
}
