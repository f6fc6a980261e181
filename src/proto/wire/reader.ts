/**
 * Protobuf decoding. `bytes` fields come out as views of the input (no copy); 64-bit integers
 * as bigint. Malformed input — a truncated varint, a length or tag above 32 bits, a length
 * past the end, an invalid wire type, invalid UTF-8 in a validated string, nesting deeper than
 * {@link MAX_DEPTH} — throws KOALA_ERR_PROTOCOL; it never loops or reads past the end.
 */
import { isUtf8 } from "node:buffer";
import { ErrorCode, KoalaError } from "../../errors.js";

/** Messages (and groups) nest at most this deep below the top-level message, on decode and on encode. */
export const MAX_DEPTH = 100;
/*
 * Node's own UTF-8 slicer, called on any Uint8Array: invalid sequences become U+FFFD and a
 * leading U+FEFF is kept (unlike TextDecoder's default); several times faster than
 * TextDecoder on short strings.
 */
const utf8Slice = (Buffer.prototype as unknown as { utf8Slice(this: Uint8Array, start: number, end: number): string }).utf8Slice;
const latin1Slice = (Buffer.prototype as unknown as { latin1Slice(this: Uint8Array, start: number, end: number): string }).latin1Slice;

/*
 * A call into Node's slicer costs ~60 ns, several times the JavaScript work of a short field.
 * Once a message has shown it holds many short ASCII strings (one every TEXT_DENSITY bytes of
 * its range so far), its whole range is sliced once as Latin-1 and each later ASCII string is a
 * substring of that text: a byte check and a V8 substring, no call. V8 copies substrings under
 * 13 characters and keeps longer ones as slices of the text, so such a string keeps the
 * message's text (one byte per input byte, ranges up to TEXT_MAX_RANGE) alive, as `bytes` views
 * keep the input alive.
 */
const TEXT_DENSITY = 512;
/**
 * Short ASCII strings a message must have shown before it gets a text: with fewer the text
 * costs more than it saves (a message with one or two strings, the common RPC request, would
 * allocate its whole range again as a string; bench:alloc showed ~190 B more per unary call).
 */
const TEXT_MIN_STRINGS = 4;
/** Ranges longer than this never get a text: one kept string would keep that much alive. */
const TEXT_MAX_RANGE = 256 * 1024;
/** Strings at most this long are checked for ASCII (longer ones go to Node's slicer at once). */
const TEXT_MAX = 64;
// Scratch memory for floats (no DataView per value); `flip` reverses the byte order on a big-endian host.
const f32 = new Float32Array(1);
const f32b = new Uint8Array(f32.buffer);
const f64 = new Float64Array(1);
const f64b = new Uint8Array(f64.buffer);
const flip = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1 ? 0 : 7;

function malformed(why: string): KoalaError {
  return new KoalaError(ErrorCode.PROTOCOL, `malformed protobuf: ${why}`);
}

/** Reads protobuf wire data from a Uint8Array. */
export class ProtoReader {
  /** Read position. */
  pos: number;
  /** End of the readable bytes. */
  end: number;
  /** The bytes being read. */
  buf: Uint8Array;
  private depth = 0;
  /** A DataView of `buf`, made on the first fixed64. */
  private view: DataView | undefined;
  /** Start of the range being decoded (where `text` starts). */
  private textBase = 0;
  /** Short ASCII strings read so far (decides when `text` is made). */
  private asciiCount = 0;
  /** The range decoded as Latin-1, once it has shown many short ASCII strings (see TEXT_DENSITY). */
  private text: string | undefined;

  constructor(buf: Uint8Array, pos = 0, end = buf.byteLength) {
    this.buf = buf;
    this.pos = pos;
    this.end = end;
    this.textBase = pos;
  }

  /** Starts over on other bytes (a reader is reused rather than made per message). */
  reset(buf: Uint8Array, pos: number, end: number): void {
    this.buf = buf;
    this.pos = pos;
    this.end = end;
    this.depth = 0;
    this.view = undefined;
    this.textBase = pos;
    this.asciiCount = 0;
    this.text = undefined;
  }

  /** Unsigned 32-bit varint (longer varints are truncated to their low 32 bits, as protobuf does). */
  uint32(): number {
    const b = this.buf;
    let p = this.pos;
    const end = this.end;
    if (p < end) {
      const c = b[p]!;
      if (c < 0x80) {
        this.pos = p + 1;
        return c;
      }
    }
    let v = 0;
    for (let shift = 0; shift < 70; shift += 7) {
      if (p >= end) throw malformed("truncated varint");
      const c = b[p++]!;
      if (shift < 32) v |= (c & 0x7f) << shift;
      if (c < 0x80) {
        this.pos = p;
        return v >>> 0;
      }
    }
    throw malformed("varint longer than 10 bytes");
  }

  /** Signed 32-bit varint. */
  int32(): number {
    return this.uint32() | 0;
  }

  /** Zigzag 32-bit varint. */
  sint32(): number {
    const v = this.uint32();
    return (v >>> 1) ^ -(v & 1);
  }

  /** 64-bit varint as an unsigned bigint. */
  uint64(): bigint {
    const b = this.buf;
    let p = this.pos;
    let lo = 0;
    let hi = 0;
    for (let i = 0; i < 10; i++) {
      if (p >= this.end) throw malformed("truncated varint");
      const c = b[p++]!;
      const bits = c & 0x7f;
      if (i < 4) lo |= bits << (7 * i);
      else if (i === 4) {
        lo |= (bits & 0x0f) << 28;
        hi |= bits >>> 4;
      } else hi |= bits << (7 * i - 32);
      if (c < 0x80) {
        this.pos = p;
        return hi === 0 ? BigInt(lo >>> 0) : (BigInt(hi >>> 0) << 32n) | BigInt(lo >>> 0);
      }
    }
    throw malformed("varint longer than 10 bytes");
  }

  /** 64-bit varint as a signed bigint. */
  int64(): bigint {
    return BigInt.asIntN(64, this.uint64());
  }

  /** Zigzag 64-bit varint. */
  sint64(): bigint {
    const v = this.uint64();
    return (v >> 1n) ^ -(v & 1n);
  }

  /** Boolean varint: true when any of its (up to 64) bits is set. */
  bool(): boolean {
    const b = this.buf;
    let p = this.pos;
    const end = this.end;
    let any = 0;
    for (let i = 0; i < 10; i++) {
      if (p >= end) throw malformed("truncated varint");
      const c = b[p++]!;
      any |= c & 0x7f;
      if (c < 0x80) {
        this.pos = p;
        return any !== 0;
      }
    }
    throw malformed("varint longer than 10 bytes");
  }

  /** A varint that must fit in 32 unsigned bits (a tag or a length); anything above is malformed, never truncated. */
  private strict32(what: string): number {
    const b = this.buf;
    let p = this.pos;
    const end = this.end;
    if (p < end) {
      const c = b[p]!;
      if (c < 0x80) {
        this.pos = p + 1;
        return c;
      }
    }
    let v = 0;
    for (let i = 0; i < 10; i++) {
      if (p >= end) throw malformed("truncated varint");
      const c = b[p++]!;
      // Byte 5 carries bits 28–34; bits from 32 up make the value too large, as does any later nonzero byte.
      if (i < 4) v |= (c & 0x7f) << (7 * i);
      else if (i === 4) {
        if ((c & 0x70) !== 0) throw malformed(`${what} above 32 bits at offset ${this.pos}`);
        v |= (c & 0x0f) << 28;
      } else if ((c & 0x7f) !== 0) throw malformed(`${what} above 32 bits at offset ${this.pos}`);
      if (c < 0x80) {
        this.pos = p;
        return v >>> 0;
      }
    }
    throw malformed("varint longer than 10 bytes");
  }

  private need(n: number): number {
    const p = this.pos;
    if (p + n > this.end) throw malformed(`needs ${n} more bytes at offset ${p}, only ${this.end - p} left`);
    this.pos = p + n;
    return p;
  }

  /** Little-endian unsigned 32 bits. */
  fixed32(): number {
    const p = this.need(4);
    const b = this.buf;
    return (b[p]! | (b[p + 1]! << 8) | (b[p + 2]! << 16)) + b[p + 3]! * 0x1000000;
  }

  /** Little-endian signed 32 bits. */
  sfixed32(): number {
    return this.fixed32() | 0;
  }

  /** Little-endian unsigned 64 bits. */
  fixed64(): bigint {
    const p = this.need(8);
    const b = this.buf;
    return (this.view ??= new DataView(b.buffer, b.byteOffset, b.byteLength)).getBigUint64(p, true);
  }

  /** Little-endian signed 64 bits. */
  sfixed64(): bigint {
    return BigInt.asIntN(64, this.fixed64());
  }

  /** IEEE 754 single precision. */
  float(): number {
    const p = this.need(4);
    const b = this.buf;
    const x = flip & 3;
    for (let i = 0; i < 4; i++) f32b[i ^ x] = b[p + i]!;
    return f32[0]!;
  }

  /** IEEE 754 double precision. */
  double(): number {
    const p = this.need(8);
    const b = this.buf;
    for (let i = 0; i < 8; i++) f64b[i ^ flip] = b[p + i]!;
    return f64[0]!;
  }

  /**
   * Reads a length prefix and checks it fits; returns the start of the value, whose end is then
   * `pos` (no pair is allocated: where V8 does not inline this, a tuple cost 75 bytes a field).
   */
  private delimited(): number {
    const n = this.strict32("length");
    return this.need(n);
  }

  /** Length-prefixed bytes, as a view of the input (a plain Uint8Array, whatever the input's class). */
  bytes(): Uint8Array {
    const s = this.delimited();
    const b = this.buf;
    return new Uint8Array(b.buffer, b.byteOffset + s, this.pos - s);
  }

  /** Length-prefixed UTF-8 string; invalid UTF-8 is malformed (proto3 and editions' `utf8_validation = VERIFY`). */
  string(): string {
    const s = this.delimited();
    const e = this.pos;
    if (s === e) return "";
    const b = this.buf;
    if (e - s <= TEXT_MAX) {
      let i = s;
      while (i < e && b[i]! < 0x80) i++;
      if (i === e) return this.ascii(s, e);
    }
    const str = utf8Slice.call(b, s, e);
    // Invalid UTF-8 always decodes with a U+FFFD in it: only then is the input checked.
    if (str.indexOf("\ufffd") !== -1 && !isUtf8(b.subarray(s, e))) throw malformed("invalid UTF-8 in a string field");
    return str;
  }

  /** The ASCII string of `buf[s, e)`: a substring of `text`, made once the message has enough of them. */
  private ascii(s: number, e: number): string {
    let text = this.text;
    if (text === undefined) {
      const n = ++this.asciiCount;
      if (n < TEXT_MIN_STRINGS || n * TEXT_DENSITY < e - this.textBase || this.end - this.textBase > TEXT_MAX_RANGE) return latin1Slice.call(this.buf, s, e);
      text = this.text = latin1Slice.call(this.buf, this.textBase, this.end);
    }
    return text.substring(s - this.textBase, e - this.textBase);
  }

  /** Length-prefixed string whose invalid UTF-8 sequences become U+FFFD (proto2, `utf8_validation = NONE`). */
  stringLax(): string {
    const s = this.delimited();
    return utf8Slice.call(this.buf, s, this.pos);
  }

  /** Reads a length prefix and returns where that value ends; the position stays at its start. */
  lengthEnd(): number {
    const n = this.strict32("length");
    const e = this.pos + n;
    if (e > this.end) throw malformed(`length ${n} at offset ${this.pos} runs past the end`);
    return e;
  }

  /** Enters a nested message: returns where it ends. Fails past {@link MAX_DEPTH} levels. */
  enter(): number {
    const e = this.lengthEnd();
    if (++this.depth > MAX_DEPTH) throw malformed(`messages nested deeper than ${MAX_DEPTH}`);
    return e;
  }

  /** Enters a group (its start tag just read). Fails past {@link MAX_DEPTH} levels. */
  enterGroup(): void {
    if (++this.depth > MAX_DEPTH) throw malformed(`messages nested deeper than ${MAX_DEPTH}`);
  }

  /** Leaves a group after its end tag `t`, checking the end tag's field number against `field` (undefined: not in a group). */
  endGroup(t: number, field: number | undefined): void {
    if (field === undefined) throw malformed(`an end-group tag of field ${t >>> 3} outside any group`);
    if (t >>> 3 !== field) throw malformed(`group ${field} ended by the end tag of field ${t >>> 3}`);
    this.depth--;
  }

  /** Throws for a group of field `field` whose end tag never came. */
  unterminated(field: number): never {
    throw malformed(`group ${field} has no end tag`);
  }

  /** Keeps the field read since `start` (its tag included) in `message.$unknown`: a closed enum's unknown value. */
  keep(message: { $unknown?: Uint8Array[] | undefined }, start: number): void {
    (message.$unknown ??= []).push(this.buf.subarray(start, this.pos));
  }

  /** Keeps a varint field `field` = `value` in `message.$unknown`: an unknown value of a packed closed enum. */
  keepVarint(message: { $unknown?: Uint8Array[] | undefined }, field: number, value: number): void {
    const out: number[] = [];
    let v = field * 8;
    while (v >= 0x80) {
      out.push((v % 0x80) | 0x80);
      v = Math.floor(v / 0x80);
    }
    out.push(v);
    // int32 values are sign-extended to 64 bits.
    let x = BigInt.asUintN(64, BigInt(value));
    while (x >= 0x80n) {
      out.push(Number(x & 0x7fn) | 0x80);
      x >>= 7n;
    }
    out.push(Number(x));
    (message.$unknown ??= []).push(Uint8Array.from(out));
  }

  /**
   * A field the type did not read (tag `t` at `start`): an end-group tag ends the group of
   * field `group` being read (true: stop reading), any other field is kept as unknown.
   */
  other(message: { $unknown?: Uint8Array[] | undefined }, t: number, start: number, group: number | undefined): boolean {
    if ((t & 7) === 4) {
      this.endGroup(t, group);
      return true;
    }
    this.unknown(message, t, start);
    return false;
  }

  /**
   * Skips the value of an unknown field whose tag `t` started at `start`, and keeps the whole
   * field (tag included, a view of the input) in `message.$unknown`, to be written back on encode.
   */
  unknown(message: { $unknown?: Uint8Array[] | undefined }, t: number, start: number): void {
    this.skip(t & 7, t >>> 3);
    (message.$unknown ??= []).push(this.buf.subarray(start, this.pos));
  }

  /** Checks that a packed field ended exactly at `end`. */
  expectEnd(end: number): void {
    if (this.pos !== end) throw malformed("a packed field overran its length");
  }

  /** Leaves a nested message entered with {@link enter}. */
  leave(end: number): void {
    if (this.pos !== end) throw malformed("a nested message overran its length");
    this.depth--;
  }

  /** Skips a field value of wire type `wireType`. */
  skip(wireType: number, field = 0): void {
    switch (wireType) {
      case 0: {
        const b = this.buf;
        const end = Math.min(this.end, this.pos + 10);
        for (let p = this.pos; p < end; p++) {
          if (b[p]! < 0x80) {
            this.pos = p + 1;
            return;
          }
        }
        throw malformed(end === this.end ? "truncated varint" : "varint longer than 10 bytes");
      }
      case 1:
        this.need(8);
        return;
      case 2:
        this.delimited();
        return;
      case 5:
        this.need(4);
        return;
      case 3: {
        // Group: skip until its end tag.
        this.enterGroup();
        for (;;) {
          if (this.pos >= this.end) throw malformed("unterminated group");
          const t = this.tag();
          if ((t & 7) === 4) {
            this.endGroup(t, field);
            return;
          }
          this.skip(t & 7, t >>> 3);
        }
      }
      default:
        throw malformed(`invalid wire type ${wireType}`);
    }
  }

  /** Reads a tag, checking its field number; a tag above 32 bits is malformed. */
  tag(): number {
    const t = this.strict32("tag");
    if (t >>> 3 === 0) throw malformed("field number 0");
    return t;
  }
}


const NOTHING = new Uint8Array(0);
/** A reader between decodes (undefined while one is running: a decode inside a decode makes its own). */
let spare: ProtoReader | undefined = new ProtoReader(NOTHING);

/** Decodes a whole message of `type` from `bytes`. */
export function decodeWith<T>(type: { read(r: ProtoReader, end: number, into?: T): T }, bytes: Uint8Array): T {
  return decodeRange(type, bytes, 0, bytes.byteLength);
}

/** Decodes a whole message of `type` from `buf[start, end)` (no view of the range is made; `bytes` fields are views of `buf`). */
export function decodeRange<T>(type: { read(r: ProtoReader, end: number, into?: T): T }, buf: Uint8Array, start: number, end: number): T {
  const r = spare ?? new ProtoReader(NOTHING);
  spare = undefined;
  r.reset(buf, start, end);
  const m = type.read(r, end);
  if (r.pos !== end) throw malformed("trailing bytes after the message");
  // Kept for the next decode, holding no message's memory. After a throw it is dropped instead.
  r.reset(NOTHING, 0, 0);
  spare = r;
  return m;
}
