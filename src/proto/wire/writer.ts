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
import { custom, integer, resolveOptions, type OptionsSpec } from "../../options.js";
import { MAX_DEPTH } from "./reader.js";

/*
 * Every size function below agrees with the writer method it stands for on *any* JavaScript
 * value it may be given (NaN, fractions, negative or too large numbers), not only on valid
 * ones: the size pass decides nested length prefixes and the buffer size, so a disagreement
 * would not fail, it would send corrupt bytes.
 */

/**
 * Bytes a 32-bit varint takes, as {@link ProtoWriter.uint32} and {@link ProtoWriter.int32}
 * write it: a negative value takes 10 (sign-extended to 64 bits, as protobuf requires for
 * int32), anything else its low 32 bits.
 */
export function varint32Size(v: number): number {
  if (v < 0) return 10;
  v >>>= 0;
  return v < 0x80 ? 1 : v < 0x4000 ? 2 : v < 0x200000 ? 3 : v < 0x10000000 ? 4 : 5;
}

/**
 * Bytes a 64-bit varint takes (int64, uint64: negatives as two's complement take 10). Like the
 * 64-bit writer methods it takes a bigint, or an integral number (a fraction throws RangeError).
 */
export function varint64Size(v: bigint): number {
  if (v >= 0n && v < 0x80000000n) return varint32Size(Number(v)); // bigint literals: a mixed bigint/number comparison is several times slower
  return wideVarintSize(v);
}

/*
 * Slow paths (this one, ProtoWriter's wideVarint, shortString and longString) are functions
 * of their own so that the fast paths stay small enough to be inlined into generated code:
 * a payload that reaches them (non-ASCII text, long strings, large 64-bit values) then leaves
 * the fast paths as fast for the messages that do not. Measured: with the slow paths inlined,
 * encoding such a payload once made the encoding of ASCII messages 2-3x slower afterwards.
 */

/** {@link varint64Size} of a value that does not fit in 31 bits. */
function wideVarintSize(v: bigint): number {
  const x = BigInt.asUintN(64, BigInt(v));
  const hi = Number(x >> 32n);
  if (hi === 0) return 5;
  // 32 + the bit length of `hi`, seven bits a byte.
  return Math.ceil((64 - Math.clz32(hi)) / 7);
}

/** Bytes a zigzag varint takes (sint32). */
export function sint32Size(v: number): number {
  return varint32Size(((v << 1) ^ (v >> 31)) >>> 0);
}

/** Bytes a zigzag varint takes (sint64). */
export function sint64Size(v: bigint): number {
  const x = BigInt(v);
  return varint64Size(BigInt.asUintN(64, (x << 1n) ^ (x >> 63n)));
}

/** Bytes the unknown fields kept in a message take. */
export function unknownSize(fields: readonly Uint8Array[]): number {
  let n = 0;
  for (const f of fields) n += f.byteLength;
  return n;
}

/** Bytes a field tag takes (field numbers up to 2^29 − 1). */
export function tagSize(field: number, wireType: number): number {
  return varint32Size(field * 8 + wireType);
}

/**
 * Strings shorter than this are written by a JavaScript loop, longer ones by Node's native
 * encoder (a call into C++ costs more than the loop on a short string, less on a long one).
 * At most 3 bytes a UTF-16 unit, so a string this short always takes a one-byte length prefix
 * (42 × 3 < 128): the writer encodes it first and writes its length after.
 */
const SHORT_STRING = 43;

/**
 * UTF-8 length of `s`, as {@link ProtoWriter.string} writes it: a lone surrogate becomes
 * U+FFFD (3 bytes), as Node's encoder does.
 */
export function utf8Size(s: string): number {
  // Node's native count (a V8 fast call) beats a JavaScript loop even on short ASCII strings,
  // and by far on strings that are still concatenations (a template literal's result).
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
  /** Slots used in `sizes` (the array keeps its capacity from one message to the next). */
  count = 0;
  /** Bytes of `bytes` fields that will be sent as parts of their own. */
  external = 0;
  /** Nesting depth of the message being sized (0: the top-level message). */
  depth = 0;
  /** `bytes` fields at least this long are external. */
  threshold = Infinity;

  /** Empties the counter for a new message. */
  reset(threshold: number): void {
    this.count = 0;
    this.external = 0;
    this.depth = 0;
    this.threshold = threshold <= 0 ? Infinity : threshold;
  }

  /** Reserves the slot of a nested message's length; fill it with {@link setSlot} once known. */
  slot(): number {
    const i = this.count++;
    this.sizes[i] = 0;
    return i;
  }

  /** Records the length of the nested message of slot `i`. */
  setSlot(i: number, size: number): void {
    this.sizes[i] = size;
  }

  /**
   * Enters a nested message (or group): one level deeper, refused past {@link MAX_DEPTH} as the
   * decoder refuses it — so a cyclic or absurdly deep object fails cleanly instead of
   * overflowing the stack. Pair with {@link leave}.
   */
  enter(): void {
    if (++this.depth > MAX_DEPTH) throw new KoalaError(ErrorCode.INVALID_ARGUMENT, `cannot encode: messages nested deeper than ${MAX_DEPTH} levels (a cycle?)`);
  }

  /** Leaves a nested message entered with {@link enter}. */
  leave(): void {
    this.depth--;
  }

  /** {@link enter}, then a slot for the nested message's length. */
  nested(): number {
    this.enter();
    const i = this.count++;
    this.sizes[i] = 0;
    return i;
  }

  /** Records the nested message's length in slot `i` and leaves it (pairs with {@link nested}). */
  done(i: number, size: number): void {
    this.sizes[i] = size;
    this.depth--;
  }

  /** Bytes a `bytes` field value takes (length prefix included); counts it as external when large. */
  bytes(b: Uint8Array): number {
    // Anything else with a byteLength (an ArrayBuffer, an Int32Array) would copy wrongly and
    // leave uninitialised memory in the message.
    if (!(b instanceof Uint8Array)) throw new KoalaError(ErrorCode.INVALID_ARGUMENT, `a bytes field needs a Uint8Array, got ${describe(b)}`);
    const n = b.byteLength;
    if (n >= this.threshold) this.external += n;
    return varint32Size(n) + n;
  }
}

function describe(v: unknown): string {
  if (v === null) return "null";
  if (typeof v === "object") return (v as object).constructor?.name ?? "an object";
  return typeof v;
}

const f32 = new Float32Array(1);
const f32b = new Uint8Array(f32.buffer);
const f64 = new Float64Array(1);
const f64b = new Uint8Array(f64.buffer);
// Reverses the byte order of floats on a big-endian host.
const flip = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1 ? 0 : 7;
const EMPTY = new Uint8Array(0);

/**
 * Writes the `n` units of `s` at `start + 1` and `n` at `start` when `s` is all ASCII and
 * returns the end; returns -1 at its first other unit (what was written is then garbage).
 * A function of its own, not a method: measured in this class's `string()`, the same loop ran
 * 3x slower (9 ns a character against 3 on the realistic payload's short strings).
 */
function asciiString(b: Uint8Array, start: number, s: string, n: number): number {
  let p = start + 1;
  for (let i = 0; i < n; i++) {
    const c = s.charCodeAt(i);
    if (c >= 0x80) return -1;
    b[p++] = c;
  }
  b[start] = n;
  return p;
}

/** Node's Buffer with its (untyped) UTF-8 writer: returns the bytes written. */
interface NodeBuffer {
  utf8Write(s: string, offset: number, length?: number): number;
}

/**
 * Writes protobuf wire data into a buffer of known size; see the module comment. The 64-bit
 * methods take a bigint, or an integral number.
 */
export class ProtoWriter {
  /** Buffer being written. */
  buf: Uint8Array = EMPTY;
  /** Write position in `buf`. */
  pos = 0;
  private partStart = 0;
  private sizeAt = 0;
  /** Parts finished so far; made only when a `bytes` field goes out as its own part (an empty `[]` grows to 17 slots on its first push). */
  private parts: Uint8Array[] | undefined;
  private sizes: number[] = [];
  private threshold = Infinity;
  /** `buf` as a Buffer, made on the first long string when the memory is not a Buffer already. */
  private nodeBuf: Buffer | undefined;
  /** A DataView of `buf`, made on the first fixed64. */
  private view: DataView | undefined;

  /** Starts writing into `buf` at `pos`, with the nested sizes of a finished size pass. */
  begin(buf: Uint8Array, pos: number, counter: SizeCounter): void {
    this.buf = buf;
    this.pos = pos;
    this.partStart = 0;
    this.sizeAt = 0;
    this.parts = undefined;
    this.sizes = counter.sizes;
    this.threshold = counter.threshold;
    this.nodeBuf = undefined;
    this.view = undefined;
  }

  /** Ends writing: the parts whose concatenation is everything written. */
  finish(): Uint8Array[] {
    let parts = this.parts;
    // The buffer was sized exactly, so the common case is the whole buffer: no view to make.
    if (parts === undefined) parts = [this.partStart === 0 && this.pos === this.buf.byteLength ? this.buf : this.buf.subarray(this.partStart, this.pos)];
    else if (this.pos > this.partStart) parts.push(this.buf.subarray(this.partStart, this.pos));
    this.parts = undefined;
    this.buf = EMPTY;
    this.nodeBuf = undefined;
    return parts;
  }

  /** Ends writing into a caller's memory without making the parts list (nothing was left external). */
  end(): void {
    this.buf = EMPTY;
    this.nodeBuf = undefined;
    this.view = undefined;
  }

  /** The length of the next nested message, from the size pass. */
  nextSize(): number {
    return this.sizes[this.sizeAt++]!;
  }

  /** A field tag (field numbers up to 2^29 − 1: no signed shift). */
  tag(field: number, wireType: number): this {
    return this.uint32(field * 8 + wireType);
  }

  /** One byte (a one-byte tag, precomputed by generated code). */
  byte(v: number): this {
    this.buf[this.pos++] = v;
    return this;
  }

  /** Unknown fields kept by the decoder (whole fields, tags included), written back as they came. */
  unknown(fields: readonly Uint8Array[]): this {
    for (const f of fields) this.raw(f);
    return this;
  }

  /** Unsigned 32-bit varint: the low 32 bits of `v`; a negative `v` is written as {@link int32} writes it. */
  uint32(v: number): this {
    if (v < 0) return this.negative32(v);
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
    return this.uint32(v);
  }

  /** The low 32 bits of a negative `v`, sign-extended to a 10-byte varint (no bigint on this path). */
  private negative32(v: number): this {
    let lo = v >>> 0;
    const b = this.buf;
    let p = this.pos;
    for (let i = 0; i < 4; i++) {
      b[p++] = (lo & 0x7f) | 0x80;
      lo >>>= 7;
    }
    // Bits 28–31 of the value, then bits 32–63, all ones.
    b[p++] = lo | 0xf0;
    b[p++] = 0xff;
    b[p++] = 0xff;
    b[p++] = 0xff;
    b[p++] = 0xff;
    b[p++] = 0x01;
    this.pos = p;
    return this;
  }

  /** Zigzag 32-bit varint. */
  sint32(v: number): this {
    return this.uint32(((v << 1) ^ (v >> 31)) >>> 0);
  }

  /** 64-bit varint (int64 and uint64; negatives as two's complement). */
  uint64(v: bigint): this {
    if (v >= 0n && v < 0x80000000n) return this.uint32(Number(v));
    return this.wideVarint(v);
  }

  /** {@link uint64} of a value that does not fit in 31 bits. */
  private wideVarint(v: bigint): this {
    const x = BigInt.asUintN(64, BigInt(v));
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
    const x = BigInt(v);
    return this.uint64(BigInt.asUintN(64, (x << 1n) ^ (x >> 63n)));
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

  /** Little-endian 64 bits (fixed64, sfixed64); values outside 64 bits wrap, as two's complement. */
  fixed64(v: bigint): this {
    // DataView's BigInt store is a builtin: no intermediate bigints.
    const dv = (this.view ??= new DataView(this.buf.buffer, this.buf.byteOffset, this.buf.byteLength));
    dv.setBigUint64(this.pos, typeof v === "bigint" ? v : BigInt(v), true);
    this.pos += 8;
    return this;
  }

  /** Little-endian signed 64 bits. */
  sfixed64(v: bigint): this {
    return this.fixed64(v);
  }

  /** IEEE 754 single precision. */
  float(v: number): this {
    f32[0] = v;
    const b = this.buf;
    const p = this.pos;
    const x = flip & 3;
    for (let i = 0; i < 4; i++) b[p + i] = f32b[i ^ x]!;
    this.pos = p + 4;
    return this;
  }

  /** IEEE 754 double precision. */
  double(v: number): this {
    f64[0] = v;
    const b = this.buf;
    const p = this.pos;
    for (let i = 0; i < 8; i++) b[p + i] = f64b[i ^ flip]!;
    this.pos = p + 8;
    return this;
  }

  /** A length-prefixed UTF-8 string (a lone surrogate becomes U+FFFD, as in Node's encoder). */
  string(s: string): this {
    const n = s.length;
    if (n >= SHORT_STRING) return this.longString(s);
    // Encoded in one pass, the one-byte length written after (see SHORT_STRING).
    const start = this.pos;
    const end = asciiString(this.buf, start, s, n);
    if (end < 0) return this.shortString(s, start);
    this.pos = end;
    return this;
  }

  /**
   * {@link string} of a short string that is not all ASCII, through Node's native encoder: on the
   * realistic payload's short non-ASCII strings it took 20 µs where a JavaScript loop took 50.
   * It writes exactly the bytes the size pass counted (Buffer.byteLength), the length byte first.
   */
  private shortString(s: string, start: number): this {
    const len = this.node().utf8Write(s, start + 1);
    this.buf[start] = len;
    this.pos = start + 1 + len;
    return this;
  }

  /** `buf` as a Buffer (Node's string writers), made once per message when it is not one already. */
  private node(): NodeBuffer {
    let view = this.nodeBuf;
    if (view === undefined) {
      const b = this.buf;
      view = this.nodeBuf = Buffer.isBuffer(b) ? b : Buffer.from(b.buffer, b.byteOffset, b.byteLength);
    }
    return view as unknown as NodeBuffer;
  }

  /** {@link string} of a long string, through Node's native encoder. */
  private longString(s: string): this {
    const len = Buffer.byteLength(s, "utf8");
    this.uint32(len);
    this.node().utf8Write(s, this.pos, len);
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
      const parts = (this.parts ??= []);
      if (this.pos > this.partStart) parts.push(this.buf.subarray(this.partStart, this.pos));
      parts.push(v);
      this.partStart = this.pos;
    } else if (n <= 32) {
      // A loop beats set() on small arrays (ids, hashes).
      const b = this.buf;
      let p = this.pos;
      for (let i = 0; i < n; i++) b[p++] = v[i]!;
      this.pos = p;
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

const encodeOptionsSpec: OptionsSpec<Required<EncodeOptions>> = {
  headroom: integer(0, 0),
  alloc: custom<(n: number) => Uint8Array>((n) => Buffer.allocUnsafe(n), "a function", (v) => typeof v === "function"),
  externalBytesThreshold: custom(64 * 1024, "a number of bytes, 0 or more (0 or Infinity: never)", (v) => typeof v === "number" && v >= 0),
};

const counter = new SizeCounter();
const writer = new ProtoWriter();

/**
 * Encodes `message` and returns the parts whose concatenation is `headroom` reserved bytes
 * followed by the protobuf encoding. The first part always starts with the headroom, and is
 * never one of the caller's `bytes` values (it may hold nothing but the headroom).
 */
export function encodeMessage<T>(type: Encodable<T>, message: T, options?: EncodeOptions): Uint8Array[] {
  if (options === undefined) return encodeParts(type, message, 0, undefined, 64 * 1024);
  const o = resolveOptions("encodeMessage()", encodeOptionsSpec, options);
  return encodeParts(type, message, o.headroom, o.alloc, o.externalBytesThreshold);
}

/**
 * {@link encodeMessage} with positional arguments and no option checks, for the per-message
 * path; a message over `maxBytes` throws KOALA_ERR_MESSAGE_TOO_LARGE before any memory is
 * taken. `alloc` undefined means `Buffer.allocUnsafe`.
 */
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
  if (size > maxBytes) throw new KoalaError(ErrorCode.MESSAGE_TOO_LARGE, `${size} bytes exceeds the limit of ${maxBytes} bytes`);
  const inline = headroom + size - counter.external;
  const buf = alloc === undefined ? Buffer.allocUnsafe(inline) : alloc(inline);
  if (buf.byteLength < inline) throw new KoalaError(ErrorCode.INVALID_ARGUMENT, `alloc(${inline}) returned only ${buf.byteLength} bytes`);
  // The writer and counter are shared: generated encoders are synchronous and never re-entered.
  writer.begin(buf, headroom, counter);
  type.write(message, writer);
  const end = writer.pos;
  const parts = writer.finish();
  if (end !== inline) {
    throw new KoalaError(
      ErrorCode.INVALID_ARGUMENT,
      `the write pass produced ${end - headroom} bytes where the size pass counted ${inline - headroom}: a field changed during encoding or holds a value of the wrong type`,
    );
  }
  return parts;
}

/**
 * The size pass alone, for a caller that finds the memory itself and then calls
 * {@link writeSized} at once (the two share module state: nothing may be encoded between them).
 * Returns the encoded length, or -1 when some `bytes` field is at least `externalBytesThreshold`
 * long (such a message needs {@link encodeParts}). A message over `maxBytes` throws
 * KOALA_ERR_MESSAGE_TOO_LARGE.
 */
export function sizeForWrite<T>(type: Encodable<T>, message: T, externalBytesThreshold: number, maxBytes: number): number {
  counter.reset(externalBytesThreshold);
  const size = type.sizeOf(message, counter);
  if (size > maxBytes) throw new KoalaError(ErrorCode.MESSAGE_TOO_LARGE, `${size} bytes exceeds the limit of ${maxBytes} bytes`);
  return counter.external === 0 ? size : -1;
}

/**
 * The write pass after {@link sizeForWrite} returned `size`: writes the encoding into
 * `buf[pos, pos + size)`. Throws (KOALA_ERR_INVALID_ARGUMENT) when the write pass disagrees
 * with the size pass; the bytes written are then garbage the caller must not send.
 */
export function writeSized<T>(type: Encodable<T>, message: T, buf: Uint8Array, pos: number, size: number): void {
  writer.begin(buf, pos, counter);
  type.write(message, writer);
  const end = writer.pos;
  writer.end();
  if (end !== pos + size) {
    throw new KoalaError(
      ErrorCode.INVALID_ARGUMENT,
      `the write pass produced ${end - pos} bytes where the size pass counted ${size}: a field changed during encoding or holds a value of the wrong type`,
    );
  }
}

/** Encodes `message` into one new buffer (no headroom, nothing external). */
export function encodeToBytes<T>(type: Encodable<T>, message: T): Uint8Array {
  return encodeParts(type, message, 0, undefined, 0)[0]!;
}

/** The length of `message`'s protobuf encoding in bytes (the size pass alone). */
export function encodedLength<T>(type: Encodable<T>, message: T): number {
  counter.reset(0);
  return type.sizeOf(message, counter);
}
