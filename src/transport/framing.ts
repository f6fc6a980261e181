/**
 * Framing of the socket transports, usable without a socket.
 *
 * A frame is an 8-byte header — u32 little-endian payload length, u8 kind, 3 reserved bytes
 * that must be zero — followed by the payload. Each side's first frame is a HELLO; anything
 * else first (an HTTP request, a port scanner, a stray client) is refused at its header.
 *
 * One-sided payloads (integers little-endian; offsets are f64 so any safe integer fits):
 *
 * | kind           | payload                                                       |
 * |----------------|---------------------------------------------------------------|
 * | HELLO          | "KOALA", u8 version, u8 flags (none defined yet), u8 reserved |
 * | READ_REQUEST   | u32 id, u64 key, f64 offset, u32 length                       |
 * | READ_RESPONSE  | u32 id, the bytes                                             |
 * | WRITE_REQUEST  | u32 id, u64 key, f64 offset, the bytes                        |
 * | WRITE_RESPONSE | u32 id                                                        |
 * | ACCESS_ERROR   | u32 id, u8 code length, code (latin1), message (utf8)         |
 */
import { ErrorCode, KoalaError, type ErrorCodeValue } from "../errors.js";

/** Bytes of a frame header. */
export const FRAME_HEADER_BYTES = 8;

/** Frame kinds (the header's fifth byte). */
export const FrameKind = {
  /** First frame of each side: magic, protocol version, flags. */
  HELLO: 1,
  /** An application message. */
  MESSAGE: 2,
  /** One-sided read request. */
  READ_REQUEST: 3,
  /** Bytes answering a read request. */
  READ_RESPONSE: 4,
  /** One-sided write request, with the bytes to write. */
  WRITE_REQUEST: 5,
  /** A write request was carried out. */
  WRITE_RESPONSE: 6,
  /** A one-sided request was refused by the region's owner. */
  ACCESS_ERROR: 7,
} as const;
/** One of the values of {@link FrameKind}. */
export type FrameKind = (typeof FrameKind)[keyof typeof FrameKind];

const KIND_NAMES = ["", "HELLO", "MESSAGE", "READ_REQUEST", "READ_RESPONSE", "WRITE_REQUEST", "WRITE_RESPONSE", "ACCESS_ERROR"];

/** Protocol version this side speaks in HELLO. */
export const PROTOCOL_VERSION = 1;
/** Payload bytes of a HELLO frame. */
export const HELLO_BYTES = 8;
/** Payload bytes of a READ_REQUEST frame. */
export const READ_REQUEST_BYTES = 24;
/** Bytes before the data in a WRITE_REQUEST payload. */
export const WRITE_REQUEST_HEAD_BYTES = 20;
/** Bytes before the data in a READ_RESPONSE payload, and the whole WRITE_RESPONSE payload. */
export const RESPONSE_HEAD_BYTES = 4;
/** Largest ACCESS_ERROR payload; longer error texts are cut when encoded. */
export const MAX_ACCESS_ERROR_BYTES = 4096;

const MAGIC = [0x4b, 0x4f, 0x41, 0x4c, 0x41]; // "KOALA"

/** Writes a frame header at `at` of `out`. */
export function writeFrameHeader(out: Uint8Array, at: number, length: number, kind: FrameKind): void {
  out[at] = length;
  out[at + 1] = length >>> 8;
  out[at + 2] = length >>> 16;
  out[at + 3] = length >>> 24;
  out[at + 4] = kind;
  out[at + 5] = 0;
  out[at + 6] = 0;
  out[at + 7] = 0;
}

/** A whole HELLO frame, header included. */
export function helloFrame(flags = 0): Buffer {
  const b = Buffer.alloc(FRAME_HEADER_BYTES + HELLO_BYTES);
  writeFrameHeader(b, 0, HELLO_BYTES, FrameKind.HELLO);
  b.set(MAGIC, FRAME_HEADER_BYTES);
  b[FRAME_HEADER_BYTES + 5] = PROTOCOL_VERSION;
  b[FRAME_HEADER_BYTES + 6] = flags;
  return b;
}

/**
 * Checks a HELLO payload and returns the peer's flags. Throws KOALA_ERR_PROTOCOL naming what
 * is wrong. Unknown flags are accepted, so that a later version can offer features.
 */
export function checkHello(payload: Uint8Array): number {
  let magic = payload.byteLength === HELLO_BYTES;
  for (let i = 0; magic && i < MAGIC.length; i++) magic = payload[i] === MAGIC[i];
  if (!magic) throw new KoalaError(ErrorCode.PROTOCOL, "the peer does not speak the koala protocol (bad HELLO magic)");
  const version = payload[5]!;
  if (version !== PROTOCOL_VERSION) {
    throw new KoalaError(ErrorCode.PROTOCOL, `the peer speaks koala protocol version ${version}; this side speaks version ${PROTOCOL_VERSION}`);
  }
  if (payload[7] !== 0) throw new KoalaError(ErrorCode.PROTOCOL, "the reserved byte of the peer's HELLO is not zero");
  return payload[6]!;
}

/** A READ_REQUEST payload. */
export function encodeReadRequest(id: number, key: bigint, offset: number, length: number): Buffer {
  const b = Buffer.allocUnsafe(READ_REQUEST_BYTES);
  b.writeUInt32LE(id, 0);
  b.writeBigUInt64LE(key, 4);
  b.writeDoubleLE(offset, 12);
  b.writeUInt32LE(length, 20);
  return b;
}

/** The head of a WRITE_REQUEST payload; the data follows as its own part. */
export function encodeWriteRequestHead(id: number, key: bigint, offset: number): Buffer {
  const b = Buffer.allocUnsafe(WRITE_REQUEST_HEAD_BYTES);
  b.writeUInt32LE(id, 0);
  b.writeBigUInt64LE(key, 4);
  b.writeDoubleLE(offset, 12);
  return b;
}

/** The head of a READ_RESPONSE (the bytes follow as their own part) or a whole WRITE_RESPONSE. */
export function encodeResponseHead(id: number): Buffer {
  const b = Buffer.allocUnsafe(RESPONSE_HEAD_BYTES);
  b.writeUInt32LE(id, 0);
  return b;
}

/** An ACCESS_ERROR payload carrying `err`'s code and message (cut to fit). */
export function encodeAccessError(id: number, err: KoalaError): Buffer {
  const code = Buffer.from(err.code, "latin1");
  const b = Buffer.allocUnsafe(MAX_ACCESS_ERROR_BYTES);
  b.writeUInt32LE(id, 0);
  b[4] = code.length;
  code.copy(b, 5);
  const textAt = 5 + code.length;
  const written = b.write(err.message, textAt, "utf8");
  return b.subarray(0, textAt + written);
}

/** A one-sided request as decoded from its payload. */
export interface OneSidedRequest {
  /** Request id, echoed in the answer. */
  id: number;
  /** Region key on the connection. */
  key: bigint;
  /** Byte offset into the region. */
  offset: number;
  /** Bytes to read (READ_REQUEST) or the length of `data` (WRITE_REQUEST). */
  length: number;
  /** The bytes to write (a view into the payload); empty for a read. */
  data: Uint8Array;
}

/** Decodes a READ_REQUEST or WRITE_REQUEST payload (the decoder already checked its size). */
export function decodeRequest(kind: FrameKind, payload: Uint8Array): OneSidedRequest {
  const v = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  const id = v.getUint32(0, true);
  const key = v.getBigUint64(4, true);
  const offset = v.getFloat64(12, true);
  if (kind === FrameKind.READ_REQUEST) return { id, key, offset, length: v.getUint32(20, true), data: payload.subarray(0, 0) };
  const data = payload.subarray(WRITE_REQUEST_HEAD_BYTES);
  return { id, key, offset, length: data.byteLength, data };
}

/** The request id at the start of a response or ACCESS_ERROR payload. */
export function responseId(payload: Uint8Array): number {
  return (payload[0]! | (payload[1]! << 8) | (payload[2]! << 16)) + payload[3]! * 0x1000000;
}

const KNOWN_CODES = new Set<string>(Object.values(ErrorCode));

/** The error an ACCESS_ERROR payload carries; an unknown code becomes KOALA_ERR_PROTOCOL. */
export function decodeAccessError(payload: Uint8Array): KoalaError {
  const b = Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength);
  const codeEnd = 5 + b[4]!;
  const code = b.toString("latin1", 5, codeEnd);
  const message = b.toString("utf8", codeEnd);
  if (!KNOWN_CODES.has(code)) return new KoalaError(ErrorCode.PROTOCOL, `the peer refused a one-sided request with unknown code ${JSON.stringify(code)}: ${message}`);
  return new KoalaError(code as ErrorCodeValue, message);
}

/** Receives whole frames from a {@link FrameDecoder}, in order. */
export type FrameSink = (kind: FrameKind, payload: Uint8Array) => void;

/** Receives a MESSAGE frame that lies inside one chunk as the range `chunk[start, end)` (no view made for it). */
export type MessageRangeSink = (chunk: Uint8Array, start: number, end: number) => void;

const EMPTY = Buffer.alloc(0);

/**
 * Splits a byte stream into frames and checks each header before taking its payload.
 *
 * A frame that lies inside one pushed chunk is handed out as a view of that chunk (no copy);
 * a frame spread over chunks is gathered into one buffer allocated once, at its final size,
 * as soon as its header is known — so a large message costs one copy, never a quadratic one.
 */
export class FrameDecoder {
  private readonly header = Buffer.alloc(FRAME_HEADER_BYTES);
  private headerFill = 0;
  private body: Buffer | undefined;
  private bodyKind: FrameKind = FrameKind.MESSAGE;
  private bodyFill = 0;
  private failed: KoalaError | undefined;
  private helloSeen = false;
  /** Buffers allocated to gather frames that spanned chunks (one per such frame). */
  assembled = 0;

  /**
   * @param maxMessageBytes largest MESSAGE payload accepted (one-sided frames get room for
   *   their own heads on top); a longer frame fails as soon as its header is read
   * @param sink receives each frame, HELLO included (already checked)
   * @param rangeSink when given, receives the MESSAGE frames that lie inside one pushed chunk,
   *   as ranges of it, in place of the sink (the others still go to the sink)
   */
  constructor(
    private readonly maxMessageBytes: number,
    private readonly sink: FrameSink,
    private readonly rangeSink?: MessageRangeSink,
  ) {}

  /** True once a valid HELLO was decoded. */
  get greeted(): boolean {
    return this.helloSeen;
  }

  /** True while a frame is only partly received (a peer that stops here was cut off mid-frame). */
  get midFrame(): boolean {
    return this.body !== undefined || this.headerFill > 0;
  }

  /**
   * Feeds bytes; frames are passed to the sink before this returns. Throws KOALA_ERR_PROTOCOL
   * or KOALA_ERR_MESSAGE_TOO_LARGE (and an error thrown by the sink); after a protocol or size
   * error the decoder stays failed. The chunk must not change afterwards: frames are views of it.
   */
  push(chunk: Uint8Array): void {
    if (this.failed !== undefined) throw this.failed;
    const n = chunk.byteLength;
    let at = 0;
    while (at < n) {
      if (this.body === undefined) {
        let hb: Uint8Array;
        let ho: number;
        if (this.headerFill === 0 && n - at >= FRAME_HEADER_BYTES) {
          hb = chunk;
          ho = at;
          at += FRAME_HEADER_BYTES;
        } else {
          // A header split across chunks: gather its 8 bytes first.
          const take = Math.min(FRAME_HEADER_BYTES - this.headerFill, n - at);
          for (let i = 0; i < take; i++) this.header[this.headerFill + i] = chunk[at + i]!;
          this.headerFill += take;
          at += take;
          if (this.headerFill < FRAME_HEADER_BYTES) return;
          this.headerFill = 0;
          hb = this.header;
          ho = 0;
        }
        const length = (hb[ho]! | (hb[ho + 1]! << 8) | (hb[ho + 2]! << 16)) + hb[ho + 3]! * 0x1000000;
        const kind = hb[ho + 4]! as FrameKind;
        if (!this.helloSeen) this.checkFirstHeader(hb, ho, kind, length);
        else if (hb[ho + 5] !== 0 || hb[ho + 6] !== 0 || hb[ho + 7] !== 0) {
          throw this.fail(ErrorCode.PROTOCOL, `reserved header bytes are not zero (frame kind ${kind}, length ${length})`);
        }
        if (kind !== FrameKind.MESSAGE) this.checkHeader(kind, length);
        else if (length > this.maxMessageBytes) {
          throw this.fail(ErrorCode.MESSAGE_TOO_LARGE, `the peer sent a message of ${length} bytes; the limit is ${this.maxMessageBytes} (maxMessageBytes)`);
        }
        if (n - at >= length) {
          if (kind === FrameKind.MESSAGE && length !== 0 && this.rangeSink !== undefined) {
            const start = at;
            at += length;
            this.rangeSink(chunk, start, at);
            continue;
          }
          // A plain Uint8Array view: half the cost of Buffer#subarray (no FastBuffer constructor).
          const payload = length === 0 ? EMPTY : new Uint8Array(chunk.buffer, chunk.byteOffset + at, length);
          at += length;
          this.deliver(kind, payload);
          continue;
        }
        this.body = Buffer.allocUnsafe(length);
        this.assembled++;
        this.bodyKind = kind;
        this.bodyFill = 0;
      }
      const body = this.body;
      const take = Math.min(body.length - this.bodyFill, n - at);
      body.set(at === 0 && take === n ? chunk : chunk.subarray(at, at + take), this.bodyFill);
      this.bodyFill += take;
      at += take;
      if (this.bodyFill === body.length) {
        this.body = undefined;
        this.deliver(this.bodyKind, body);
      }
    }
  }

  private deliver(kind: FrameKind, payload: Uint8Array): void {
    if (kind === FrameKind.HELLO) {
      try {
        checkHello(payload);
      } catch (err) {
        this.failed = err as KoalaError;
        throw err;
      }
      this.helloSeen = true;
    }
    this.sink(kind, payload);
  }

  /** The first header must be a HELLO's: this is where a peer speaking something else is caught. */
  private checkFirstHeader(hb: Uint8Array, ho: number, kind: FrameKind, length: number): void {
    if (kind === FrameKind.HELLO && length === HELLO_BYTES && hb[ho + 5] === 0 && hb[ho + 6] === 0 && hb[ho + 7] === 0) return;
    const bytes = Array.from(hb.subarray(ho, ho + FRAME_HEADER_BYTES), (b) => b.toString(16).padStart(2, "0")).join(" ");
    // A TLS handshake record (0x16, version 3.x) is a client that dialled tls:// on a plaintext listener.
    const tls = hb[ho] === 0x16 && hb[ho + 1] === 0x03 ? "; it starts a TLS handshake: a tls:// client on a plaintext listener" : "";
    throw this.fail(ErrorCode.PROTOCOL, `the peer does not speak the koala protocol: its first frame is not a HELLO (header bytes ${bytes})${tls}`);
  }

  /** Checks the header of any frame but MESSAGE: known kind, a single HELLO, plausible size. */
  private checkHeader(kind: FrameKind, length: number): void {
    if ((kind as number) === 0 || kind > FrameKind.ACCESS_ERROR) throw this.fail(ErrorCode.PROTOCOL, `unknown frame kind ${kind}`);
    let ok: boolean;
    let max = 0;
    switch (kind) {
      case FrameKind.HELLO:
        if (this.helloSeen) throw this.fail(ErrorCode.PROTOCOL, "the peer sent a second HELLO");
        ok = length === HELLO_BYTES;
        break;
      case FrameKind.READ_REQUEST:
        ok = length === READ_REQUEST_BYTES;
        break;
      case FrameKind.WRITE_RESPONSE:
        ok = length === RESPONSE_HEAD_BYTES;
        break;
      case FrameKind.READ_RESPONSE:
        ok = length >= RESPONSE_HEAD_BYTES;
        max = this.maxMessageBytes + RESPONSE_HEAD_BYTES;
        break;
      case FrameKind.WRITE_REQUEST:
        ok = length >= WRITE_REQUEST_HEAD_BYTES;
        max = this.maxMessageBytes + WRITE_REQUEST_HEAD_BYTES;
        break;
      default: // ACCESS_ERROR
        ok = length >= 5 && length <= MAX_ACCESS_ERROR_BYTES;
    }
    if (max > 0 && length > max) {
      throw this.fail(ErrorCode.MESSAGE_TOO_LARGE, `the peer sent a ${KIND_NAMES[kind]} frame of ${length} bytes; the limit is ${max} (maxMessageBytes and its head)`);
    }
    if (!ok) throw this.fail(ErrorCode.PROTOCOL, `a ${KIND_NAMES[kind]} frame cannot be ${length} bytes long`);
  }

  private fail(code: typeof ErrorCode.PROTOCOL | typeof ErrorCode.MESSAGE_TOO_LARGE, message: string): KoalaError {
    this.failed = new KoalaError(code, message);
    this.body = undefined;
    return this.failed;
  }
}
