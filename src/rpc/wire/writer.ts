/**
 * Protobuf encoding straight into caller-provided memory.
 *
 * Encoding takes two passes. The size pass (`MessageType.sizeOf`) computes the exact encoded
 * length and records the length of every nested message in pre-order in a {@link SizeCounter};
 * the write pass (`MessageType.write`) consumes those lengths in the same order, so no
 * length prefix is ever patched or moved and the total work is linear. The memory is asked
 * for once, at its final size. `bytes` fields at least `externalBytesThreshold` long are not
 * copied: their tag and length are written, and the caller's array becomes a part of its own
 * in the scatter-gather list that {@link encodeMessage} returns.
 */
import { ErrorCode, KoalaError } from "../../errors.js";
/** Bytes a varint takes for an unsigned 32-bit value (negative int32 values take 10). */
export function varint32Size(v: number): number {
  if (v < 0) return 10;
  return v < 0x80 ? 1 : v < 0x4000 ? 2 : v < 0x200000 ? 3 : v < 0x10000000 ? 4 : 5;
}

/** Bytes a varint takes for a 64-bit value (two's complement for negatives). */
export function varint64Size(v: bigint): number {
  let x = BigInt.asUintN(64, v);
  let n = 1;
  while (x >= 0x80n) {
    x >>= 7n;
    n++;
  }
  return n;
}

/** Bytes a zigzag varint takes (sint32). */
export function sint32Size(v: number): number {
  return varint32Size(((v << 1) ^ (v >> 31)) >>> 0);
}

/** Bytes a zigzag varint takes (sint64). */
export function sint64Size(v: bigint): number {
  return varint64Size(BigInt.asUintN(64, (v << 1n) ^ (v >> 63n)));
}

/** UTF-8 length of `s`. */
export function utf8Size(s: string): number {
  const n = s.length;
  if (n < 32) {
    let ascii = true;
    for (let i = 0; i < n; i++) {
      if (s.charCodeAt(i) >= 0x80) {
        ascii = false;
        break;
      }
    }
    if (ascii) return n;
  }
  return Buffer.byteLength(s, "utf8");
}

/** Bytes a length-delimited string field value takes (length prefix included). */
export function stringSize(s: string): number {
  const n = utf8Size(s);
  return varint32Size(n) + n;
}

/** State of the size pass: nested message lengths in pre-order, and bytes left external. */
export class SizeCounter {
  /** Nested message lengths, in pre-order. */
  readonly sizes: number[] = [];
  /** Bytes of `bytes` fields that will be sent as parts of their own. */
  external = 0;
  /** `bytes` fields at least this long are external. */
  threshold = Infinity;

  /** Empties the counter for a new message. */
  reset(threshold: number): void {
    this.sizes.length = 0;
    this.external = 0;
    this.threshold = threshold <= 0 ? Infinity : threshold;
  }

  /** Reserves the slot of a nested message's length; fill it with {@link setSlot} once known. */
  slot(): number {
    return this.sizes.push(0) - 1;
  }

  /** Records the length of the nested message of slot `i`. */
  setSlot(i: number, size: number): void {
    this.sizes[i] = size;
  }

  /** Bytes a `bytes` field value takes (length prefix included); counts it as external when large. */
  bytes(b: Uint8Array): number {
    const n = b.byteLength;
    if (n >= this.threshold) this.external += n;
    return varint32Size(n) + n;
  }
}

const f32 = new Float32Array(1);
const f32b = new Uint8Array(f32.buffer);
const f64 = new Float64Array(1);
const f64b = new Uint8Array(f64.buffer);

/** Writes protobuf wire data into a buffer of known size; see the module comment. */
export class ProtoWriter {
  /** Buffer being written. */
  buf: Uint8Array = new Uint8Array(0);
  /** Write position in `buf`. */
  pos = 0;
  private partStart = 0;
  private sizeAt = 0;
  private parts: Uint8Array[] = [];
  private sizes: number[] = [];
  private threshold = Infinity;

  /** Starts writing into `buf` at `pos`, with the nested sizes of a finished size pass. */
  begin(buf: Uint8Array, pos: number, counter: SizeCounter): void {
    this.buf = buf;
    this.pos = pos;
    this.partStart = 0;
    this.sizeAt = 0;
    this.parts = [];
    this.sizes = counter.sizes;
    this.threshold = counter.threshold;
  }

  /** Ends writing: the parts whose concatenation is everything written. */
  finish(): Uint8Array[] {
    const parts = this.parts;
    // The buffer was sized exactly, so the common case is the whole buffer: no view to make.
    if (this.partStart === 0 && this.pos === this.buf.byteLength) parts.push(this.buf);
    else if (this.pos > this.partStart || parts.length === 0) parts.push(this.buf.subarray(this.partStart, this.pos));
    this.parts = [];
    this.buf = new Uint8Array(0);
    return parts;
  }

  /** The length of the next nested message, from the size pass. */
  nextSize(): number {
    return this.sizes[this.sizeAt++]!;
  }

  /** A field tag. */
  tag(field: number, wireType: number): this {
    return this.uint32(((field << 3) | wireType) >>> 0);
  }

  /** Unsigned 32-bit varint. */
  uint32(v: number): this {
    const b = this.buf;
    let p = this.pos;
    v >>>= 0;
    while (v >= 0x80) {
      b[p++] = (v & 0x7f) | 0x80;
      v >>>= 7;
    }
    b[p++] = v;
    this.pos = p;
    return this;
  }

  /** Signed 32-bit varint (a negative value takes 10 bytes, as protobuf requires). */
  int32(v: number): this {
    if (v >= 0) return this.uint32(v);
    return this.uint64(BigInt(v | 0));
  }

  /** Zigzag 32-bit varint. */
  sint32(v: number): this {
    return this.uint32(((v << 1) ^ (v >> 31)) >>> 0);
  }

  /** 64-bit varint (int64 and uint64; negatives as two's complement). */
  uint64(v: bigint): this {
    const x = BigInt.asUintN(64, v);
    let lo = Number(x & 0xffffffffn);
    let hi = Number(x >> 32n);
    const b = this.buf;
    let p = this.pos;
    while (hi > 0 || lo >= 0x80) {
      b[p++] = (lo & 0x7f) | 0x80;
      lo = ((lo >>> 7) | (hi << 25)) >>> 0;
      hi >>>= 7;
    }
    b[p++] = lo;
    this.pos = p;
    return this;
  }

  /** Signed 64-bit varint. */
  int64(v: bigint): this {
    return this.uint64(v);
  }

  /** Zigzag 64-bit varint. */
  sint64(v: bigint): this {
    return this.uint64(BigInt.asUintN(64, (v << 1n) ^ (v >> 63n)));
  }

  /** Boolean varint. */
  bool(v: boolean): this {
    this.buf[this.pos++] = v ? 1 : 0;
    return this;
  }

  /** Little-endian 32 bits (fixed32, sfixed32). */
  fixed32(v: number): this {
    const b = this.buf;
    const p = this.pos;
    b[p] = v;
    b[p + 1] = v >>> 8;
    b[p + 2] = v >>> 16;
    b[p + 3] = v >>> 24;
    this.pos = p + 4;
    return this;
  }

  /** Little-endian signed 32 bits. */
  sfixed32(v: number): this {
    return this.fixed32(v);
  }

  /** Little-endian 64 bits (fixed64, sfixed64). */
  fixed64(v: bigint): this {
    const x = BigInt.asUintN(64, v);
    this.fixed32(Number(x & 0xffffffffn));
    return this.fixed32(Number(x >> 32n));
  }

  /** Little-endian signed 64 bits. */
  sfixed64(v: bigint): this {
    return this.fixed64(v);
  }

  /** IEEE 754 single precision. */
  float(v: number): this {
    f32[0] = v;
    this.buf.set(f32b, this.pos);
    this.pos += 4;
    return this;
  }

  /** IEEE 754 double precision. */
  double(v: number): this {
    f64[0] = v;
    this.buf.set(f64b, this.pos);
    this.pos += 8;
    return this;
  }

  /** A length-prefixed UTF-8 string. */
  string(s: string): this {
    const n = s.length;
    if (n < 0x80) {
      // Short strings are mostly ASCII: write them directly, fall back on the first other character.
      const b = this.buf;
      const start = this.pos;
      let p = start + 1;
      let i = 0;
      for (; i < n; i++) {
        const c = s.charCodeAt(i);
        if (c >= 0x80) break;
        b[p++] = c;
      }
      if (i === n) {
        b[start] = n;
        this.pos = p;
        return this;
      }
    }
    const len = Buffer.byteLength(s, "utf8");
    this.uint32(len);
    const b = this.buf;
    const view = Buffer.isBuffer(b) ? b : Buffer.from(b.buffer, b.byteOffset, b.byteLength);
    view.write(s, this.pos, len, "utf8");
    this.pos += len;
    return this;
  }

  /** Bytes copied as they are (already encoded protobuf, for run-time loaded types). */
  raw(v: Uint8Array): this {
    this.buf.set(v, this.pos);
    this.pos += v.byteLength;
    return this;
  }

  /** Length-prefixed bytes; large ones become a part of their own instead of being copied. */
  bytes(v: Uint8Array): this {
    const n = v.byteLength;
    this.uint32(n);
    if (n >= this.threshold) {
      if (this.pos > this.partStart) this.parts.push(this.buf.subarray(this.partStart, this.pos));
      this.parts.push(v);
      this.partStart = this.pos;
    } else {
      this.buf.set(v, this.pos);
      this.pos += n;
    }
    return this;
  }
}

/** What {@link encodeMessage} needs of a message type (generated types provide it). */
export interface Encodable<T> {
  /** Size pass. */
  sizeOf(message: T, counter: SizeCounter): number;
  /** Write pass. */
  write(message: T, writer: ProtoWriter): void;
}

/** Options of {@link encodeMessage}. */
export interface EncodeOptions {
  /** Bytes reserved at the start of the first part for the caller (e.g. a frame header). Default 0. */
  headroom?: number;
  /** Memory for the encoded bytes; called once with the exact size (headroom included). Default `Buffer.allocUnsafe`. */
  alloc?: (n: number) => Uint8Array;
  /** `bytes` fields at least this long are sent from the caller's memory; 0 or Infinity never. Default 64 KiB. */
  externalBytesThreshold?: number;
}

const counter = new SizeCounter();
const writer = new ProtoWriter();

/**
 * Encodes `message` and returns the parts whose concatenation is `headroom` reserved bytes
 * followed by the protobuf encoding. The first part always starts with the headroom.
 */
export function encodeMessage<T>(type: Encodable<T>, message: T, options?: EncodeOptions): Uint8Array[] {
  return encodeParts(type, message, options?.headroom ?? 0, options?.alloc, options?.externalBytesThreshold ?? 64 * 1024);
}

/** {@link encodeMessage} with positional arguments, for the per-message path (no options object); a message over `maxBytes` throws KOALA_ERR_MESSAGE_TOO_LARGE. */
export function encodeParts<T>(
  type: Encodable<T>,
  message: T,
  headroom: number,
  alloc: ((n: number) => Uint8Array) | undefined,
  externalBytesThreshold: number,
  maxBytes = Infinity,
): Uint8Array[] {
  counter.reset(externalBytesThreshold);
  const size = type.sizeOf(message, counter);
  // Refused before any memory is taken for it.
  if (size > maxBytes) throw new KoalaError(ErrorCode.MESSAGE_TOO_LARGE, `${size} bytes exceeds the limit of ${maxBytes} bytes`);
  const inline = headroom + size - counter.external;
  const buf = alloc === undefined ? Buffer.allocUnsafe(inline) : alloc(inline);
  // The writer and counter are shared: generated encoders are synchronous and never re-entered.
  writer.begin(buf, headroom, counter);
  type.write(message, writer);
  return writer.finish();
}

/** Encodes `message` into one new buffer (no headroom, nothing external). */
export function encodeToBytes<T>(type: Encodable<T>, message: T): Uint8Array {
  return encodeMessage(type, message, { externalBytesThreshold: 0 })[0]!;
}
