/**
 * Framing of the socket transports: every frame is an 8-byte header (u32 little-endian
 * payload length, u8 kind, 3 reserved zero bytes) and its payload. The decoder needs no
 * socket: it is fed chunks and hands out whole frames — as views of the chunk when a frame
 * lies inside one, otherwise assembled into one buffer allocated once at its final size.
 */
import { ErrorCode, KoalaError } from "../errors.js";

/** Bytes of a frame header. */
export const FRAME_HEADER_BYTES = 8;

/** Frame kinds. */
export const FrameKind = {
  /** First frame each side sends: magic, protocol version. */
  HELLO: 1,
  /** An application message. */
  MESSAGE: 2,
  /** One-sided read request: id, key, offset, length. */
  READ_REQUEST: 3,
  /** Answer to a read: id, then the bytes. */
  READ_RESPONSE: 4,
  /** One-sided write request: id, key, offset, then the bytes. */
  WRITE_REQUEST: 5,
  /** Answer to a write: id. */
  WRITE_RESPONSE: 6,
  /** A one-sided request failed: id, error code, message. */
  ACCESS_ERROR: 7,
} as const;
/** One of the values of {@link FrameKind}. */
export type FrameKind = (typeof FrameKind)[keyof typeof FrameKind];
const MAX_KIND = 7;

/** Room one-sided frames need beyond the message limit (their own headers). */
export const ONE_SIDED_SLACK = 64;

/** Protocol version spoken in HELLO. */
export const PROTOCOL_VERSION = 1;
const MAGIC = Buffer.from("KOALA", "latin1");
/** Payload bytes of a HELLO frame. */
export const HELLO_BYTES = 8;

/** The HELLO frame, header included. */
export function helloFrame(): Buffer {
  const b = Buffer.alloc(FRAME_HEADER_BYTES + HELLO_BYTES);
  writeFrameHeader(b, 0, HELLO_BYTES, FrameKind.HELLO);
  MAGIC.copy(b, FRAME_HEADER_BYTES);
  b[FRAME_HEADER_BYTES + 5] = PROTOCOL_VERSION;
  return b;
}

/** Checks a HELLO payload; throws KOALA_ERR_PROTOCOL naming what is wrong. */
export function checkHello(payload: Uint8Array): void {
  if (payload.byteLength !== HELLO_BYTES || !Buffer.from(payload.buffer, payload.byteOffset, 5).equals(MAGIC)) {
    throw new KoalaError(ErrorCode.PROTOCOL, "the peer does not speak the koala protocol (bad HELLO)");
  }
  const version = payload[5]!;
  if (version !== PROTOCOL_VERSION) {
    throw new KoalaError(ErrorCode.PROTOCOL, `the peer speaks koala protocol version ${version}; this side speaks ${PROTOCOL_VERSION}`);
  }
}

/** Writes a frame header at `at`. */
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

/** Receives whole frames from a {@link FrameDecoder}. */
export type FrameSink = (kind: FrameKind, payload: Uint8Array) => void;

const EMPTY = new Uint8Array(0);

/** Splits a byte stream into frames. */
export class FrameDecoder {
  private readonly header = Buffer.alloc(FRAME_HEADER_BYTES);
  private headerFill = 0;
  private body: Buffer | undefined;
  private bodyKind: FrameKind = FrameKind.MESSAGE;
  private bodyFill = 0;
  private failed: KoalaError | undefined;
  /** Buffers allocated to assemble frames that spanned chunks (for tests and stats). */
  assembled = 0;

  /**
   * @param maxPayload largest payload accepted; a longer one fails as soon as its header is read
   * @param sink receives each frame, in order
   */
  constructor(
    private readonly maxPayload: number,
    private readonly sink: FrameSink,
  ) {}

  /** Feeds bytes. Throws KOALA_ERR_PROTOCOL or KOALA_ERR_MESSAGE_TOO_LARGE; after that the decoder stays failed. */
  push(chunk: Uint8Array): void {
    if (this.failed !== undefined) throw this.failed;
    const n = chunk.byteLength;
    let at = 0;
    while (at < n) {
      if (this.body === undefined) {
        let length: number;
        let kind: number;
        let hb: Uint8Array;
        let ho: number;
        if (this.headerFill === 0 && n - at >= FRAME_HEADER_BYTES) {
          hb = chunk;
          ho = at;
          at += FRAME_HEADER_BYTES;
        } else {
          const take = Math.min(FRAME_HEADER_BYTES - this.headerFill, n - at);
          this.header.set(chunk.subarray(at, at + take), this.headerFill);
          this.headerFill += take;
          at += take;
          if (this.headerFill < FRAME_HEADER_BYTES) return;
          this.headerFill = 0;
          hb = this.header;
          ho = 0;
        }
        length = (hb[ho]! | (hb[ho + 1]! << 8) | (hb[ho + 2]! << 16)) + hb[ho + 3]! * 0x1000000;
        kind = hb[ho + 4]!;
        if (kind === 0 || kind > MAX_KIND) throw this.fail(ErrorCode.PROTOCOL, `unknown frame kind ${kind}`);
        if (hb[ho + 5] !== 0 || hb[ho + 6] !== 0 || hb[ho + 7] !== 0) throw this.fail(ErrorCode.PROTOCOL, "reserved header bytes are not zero");
        const limit = kind === FrameKind.MESSAGE ? this.maxPayload : this.maxPayload + ONE_SIDED_SLACK;
        if (length > limit) {
          throw this.fail(ErrorCode.MESSAGE_TOO_LARGE, `the peer sent a frame of ${length} bytes; the limit is ${limit} (maxMessageBytes)`);
        }
        if (length === 0) {
          this.sink(kind as FrameKind, EMPTY);
          continue;
        }
        if (n - at >= length) {
          const payload = chunk.subarray(at, at + length);
          at += length;
          this.sink(kind as FrameKind, payload);
          continue;
        }
        this.body = Buffer.allocUnsafe(length);
        this.assembled++;
        this.bodyKind = kind as FrameKind;
        this.bodyFill = 0;
      }
      const body = this.body;
      const take = Math.min(body.length - this.bodyFill, n - at);
      body.set(chunk.subarray(at, at + take), this.bodyFill);
      this.bodyFill += take;
      at += take;
      if (this.bodyFill === body.length) {
        this.body = undefined;
        this.sink(this.bodyKind, body);
      }
    }
  }

  /** True while a frame is only partly received (a peer that stops here was cut off mid-message). */
  get midFrame(): boolean {
    return this.body !== undefined || this.headerFill > 0;
  }

  private fail(code: typeof ErrorCode.PROTOCOL | typeof ErrorCode.MESSAGE_TOO_LARGE, message: string): KoalaError {
    this.failed = new KoalaError(code, message);
    this.body = undefined;
    return this.failed;
  }
}
