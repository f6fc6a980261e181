/**
 * Call metadata (gRPC's headers and trailers): case-insensitive keys, several values a key;
 * values are strings, or bytes for keys ending in `-bin`.
 */
import { ErrorCode, KoalaError, type MetadataInit } from "../errors.js";

/** One metadata value. */
export type MetadataValue = string | Uint8Array;

const KEY = /^[0-9a-z_.-]+$/;

/** Headers or trailers of a call. */
export class Metadata implements Iterable<[string, MetadataValue]> {
  private readonly map = new Map<string, MetadataValue[]>();

  /** Builds metadata from a record (`{ "x-id": "1", "trace-bin": bytes }`) or copies another Metadata. */
  constructor(init?: MetadataInit | Metadata) {
    if (init instanceof Metadata) {
      for (const [k, v] of init.map) this.map.set(k, [...v]);
    } else if (init !== undefined) {
      for (const [k, v] of Object.entries(init)) {
        if (Array.isArray(v)) for (const x of v) this.append(k, x);
        else this.append(k, v as MetadataValue);
      }
    }
  }

  /** Number of keys. */
  get size(): number {
    return this.map.size;
  }

  /** Replaces the values of `key` with `value`. */
  set(key: string, value: MetadataValue): this {
    const k = checkEntry(key, value);
    this.map.set(k, [value]);
    return this;
  }

  /** Adds `value` to the values of `key`. */
  append(key: string, value: MetadataValue): this {
    const k = checkEntry(key, value);
    const list = this.map.get(k);
    if (list === undefined) this.map.set(k, [value]);
    else list.push(value);
    return this;
  }

  /** The first value of `key`, or undefined. */
  get(key: string): MetadataValue | undefined {
    return this.map.get(key.toLowerCase())?.[0];
  }

  /** Every value of `key`. */
  getAll(key: string): MetadataValue[] {
    return [...(this.map.get(key.toLowerCase()) ?? [])];
  }

  /** True when `key` has a value. */
  has(key: string): boolean {
    return this.map.has(key.toLowerCase());
  }

  /** Removes `key`. */
  delete(key: string): boolean {
    return this.map.delete(key.toLowerCase());
  }

  /** Each (key, value) pair, a key with several values once per value. */
  *[Symbol.iterator](): Iterator<[string, MetadataValue]> {
    for (const [k, list] of this.map) for (const v of list) yield [k, v];
  }

  /** A plain record: single values as they are, several as arrays. */
  toRecord(): MetadataInit {
    const out: Record<string, MetadataValue | MetadataValue[]> = {};
    for (const [k, list] of this.map) out[k] = list.length === 1 ? list[0]! : [...list];
    return out;
  }
}

function checkEntry(key: string, value: MetadataValue): string {
  const k = key.toLowerCase();
  if (!KEY.test(k)) throw new KoalaError(ErrorCode.INVALID_ARGUMENT, `metadata key ${JSON.stringify(key)} may hold only 0-9 a-z _ . -`);
  if (k.endsWith("-bin")) {
    if (!(value instanceof Uint8Array)) throw new KoalaError(ErrorCode.INVALID_ARGUMENT, `metadata key "${k}" ends in -bin, so its value must be a Uint8Array`);
  } else if (typeof value !== "string") {
    throw new KoalaError(ErrorCode.INVALID_ARGUMENT, `metadata key "${k}" takes string values (use a key ending in -bin for bytes)`);
  }
  return k;
}

/** Bytes `encodeMetadata` will write for `md`. */
export function metadataLength(md: Metadata): number {
  let n = 2;
  for (const [k, v] of md) n += 2 + Buffer.byteLength(k) + 4 + (typeof v === "string" ? Buffer.byteLength(v) : v.byteLength);
  return n;
}

/**
 * Writes `md` at `at` in `out`: u16 count, then per entry u16 key length, key, u32 value
 * length, value. Returns the offset after it.
 */
export function encodeMetadata(md: Metadata, out: Buffer, at: number): number {
  let count = 0;
  const countAt = at;
  at += 2;
  for (const [k, v] of md) {
    count++;
    const klen = out.write(k, at + 2, "latin1");
    out.writeUInt16LE(klen, at);
    at += 2 + klen;
    if (typeof v === "string") {
      const vlen = out.write(v, at + 4, "utf8");
      out.writeUInt32LE(vlen, at);
      at += 4 + vlen;
    } else {
      out.writeUInt32LE(v.byteLength, at);
      out.set(v, at + 4);
      at += 4 + v.byteLength;
    }
  }
  out.writeUInt16LE(count, countAt);
  return at;
}

/** Reads metadata written by {@link encodeMetadata}; throws KOALA_ERR_PROTOCOL on malformed bytes. */
export function decodeMetadata(bytes: Uint8Array): Metadata {
  const md = new Metadata();
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const bad = (why: string) => new KoalaError(ErrorCode.PROTOCOL, `malformed metadata: ${why}`);
  if (buf.length < 2) throw bad("shorter than its count");
  const count = buf.readUInt16LE(0);
  let at = 2;
  for (let i = 0; i < count; i++) {
    if (at + 2 > buf.length) throw bad("truncated key length");
    const klen = buf.readUInt16LE(at);
    at += 2;
    if (at + klen + 4 > buf.length) throw bad("truncated key");
    const key = buf.toString("latin1", at, at + klen);
    at += klen;
    const vlen = buf.readUInt32LE(at);
    at += 4;
    if (at + vlen > buf.length) throw bad("truncated value");
    if (!KEY.test(key)) throw bad(`invalid key ${JSON.stringify(key)}`);
    // Binary values are copied: metadata outlives the receive buffer.
    md.append(key, key.endsWith("-bin") ? buf.subarray(at, at + vlen).slice() : buf.toString("utf8", at, at + vlen));
    at += vlen;
  }
  if (at !== buf.length) throw bad("trailing bytes");
  return md;
}
