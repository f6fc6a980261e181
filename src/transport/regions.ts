/**
 * Memory shared with one peer for one-sided access.
 *
 * A region is registered on a connection (`connection.registerRegion`) and is reachable only
 * through that connection: its peer sends the small {@link RegionDescriptor} back in
 * `connection.read` / `connection.write`, and the owner's side (here, for the socket and
 * memory transports; the NIC on RDMA) checks the key, the bounds and the access before it
 * touches a byte. Keys are 64 random bits, so a peer cannot guess its way into a region, and a
 * peer that keeps naming keys it was never given is cut off. Serving is opt-in: a connection
 * serves one-sided requests only when it was opened with the transport option `oneSided`.
 *
 * Memory safety: a read answer never refers to memory after the application released it. An
 * answer from a lease-like source holds a reference to the lease until the transport has
 * written it; an answer from a plain buffer is copied (see {@link RegionTable.serveRead}).
 */
import { randomBytes } from "node:crypto";
import { ErrorCode, KoalaError, check } from "../errors.js";

/** What a peer may do with a registered region. */
export type RemoteAccess = "read" | "readwrite";

/** The description of a registered region that a peer needs to access it. */
export interface RegionDescriptor {
  /** Key naming the region on the connection it was shared on: 64 random bits (on RDMA, rkey and a salt). */
  readonly key: bigint;
  /** The region's address in the owner's memory where the transport needs it (RDMA), else 0. */
  readonly address: bigint;
  /** Length of the region in bytes. */
  readonly length: number;
  /** What the peer may do. */
  readonly access: RemoteAccess;
}

/**
 * Something that holds bytes, such as a heap lease; its `bytes` are read at every access, so
 * releasing the holder revokes access. With `retain` / `release`, an answer being written
 * keeps it alive instead of copying it.
 */
export interface ByteSource {
  /** The bytes; may throw once the holder has been released. */
  readonly bytes: Uint8Array;
  /** Adds a reference (a heap lease's `retain`). */
  retain?(): unknown;
  /** Drops a reference taken by `retain`. */
  release?(): void;
}

/** A region registered for remote access on one connection. */
export interface RegisteredRegion {
  /** What to send to the peer. */
  readonly descriptor: RegionDescriptor;
  /** False once deregistered (explicitly, or because its connection closed). */
  readonly registered: boolean;
  /** Revokes remote access; later accesses fail with KOALA_ERR_REGION_NOT_FOUND. Idempotent. */
  deregister(): void;
}

/** Options of `connection.registerRegion`. */
export interface RegisterRegionOptions {
  /** What the peer may do: `"read"` (default) or `"readwrite"`. */
  access?: RemoteAccess;
}

/** Size of a descriptor written by {@link encodeDescriptor}, in bytes. */
export const DESCRIPTOR_BYTES = 32;
const DESCRIPTOR_MAGIC = 0x4b52; // "KR"
const DESCRIPTOR_VERSION = 2;

/** Requests naming an unknown key that a connection answers before it closes: guessing keys is an attack, not a mistake. */
export const MAX_UNKNOWN_KEY_REQUESTS = 64;

interface Entry {
  source: Uint8Array | ByteSource;
  access: RemoteAccess;
  length: number;
}

/** What {@link RegionTable.serveRead} hands back: the bytes to send, and what to call once they are written. */
export interface ReadAnswer {
  /** The bytes answering the read. */
  bytes: Uint8Array;
  /** Drops the reference that keeps `bytes` valid; call once they were written (or dropped). */
  done: (() => void) | undefined;
}

/**
 * The regions one connection shares with its peer, and the checks on the peer's requests.
 * Every transport that serves one-sided access in software keeps one per connection.
 */
export class RegionTable {
  private readonly entries = new Map<bigint, Entry>();
  private unknownKeyRequests = 0;
  private closed = false;

  /**
   * @param enabled whether this connection serves one-sided requests (transport option `oneSided`)
   * @param where names the connection in errors
   */
  constructor(
    readonly enabled: boolean,
    private readonly where: string,
  ) {}

  /** Registers `source` (see `Connection.registerRegion`). */
  register(source: Uint8Array | ByteSource, options?: RegisterRegionOptions): RegisteredRegion {
    if (!this.enabled) {
      throw new KoalaError(ErrorCode.INVALID_ARGUMENT, `registerRegion(): one-sided access is off on ${this.where}; open the connection or listener with the transport option oneSided: true`);
    }
    if (this.closed) throw new KoalaError(ErrorCode.CLOSED, `registerRegion(): ${this.where} is closed`);
    const access = options?.access ?? "read";
    check(access === "read" || access === "readwrite", `registerRegion(): option "access" must be "read" or "readwrite", got ${String(access)}`);
    const bytes = source instanceof Uint8Array ? source : source?.bytes;
    check(bytes instanceof Uint8Array, "registerRegion(): source must be a Uint8Array or hold one in .bytes");
    let key: bigint;
    do key = randomBytes(8).readBigUInt64LE(0);
    while (key === 0n || this.entries.has(key));
    const entry: Entry = { source, access, length: bytes.byteLength };
    this.entries.set(key, entry);
    const entries = this.entries;
    return {
      descriptor: Object.freeze({ key, address: 0n, length: entry.length, access }),
      get registered() {
        return entries.get(key) === entry;
      },
      deregister() {
        if (entries.get(key) === entry) entries.delete(key);
      },
    };
  }

  /** Revokes every region (the connection closed). */
  clear(): void {
    this.closed = true;
    this.entries.clear();
  }

  /**
   * Serves a peer's read: the answer, or the error to send back. Throws KOALA_ERR_PROTOCOL
   * once the peer named too many unknown keys (the connection should close).
   */
  serveRead(key: bigint, offset: number, length: number): ReadAnswer | KoalaError {
    const found = this.resolve(key, offset, length, false);
    if (found instanceof KoalaError) return found;
    const { entry, bytes } = found;
    const view = bytes.subarray(offset, offset + length);
    const src = entry.source;
    if (!(src instanceof Uint8Array) && typeof src.retain === "function" && typeof src.release === "function") {
      // The lease stays alive until the answer is written, so its memory cannot be handed to
      // someone else while these bytes still wait in the send queue.
      src.retain();
      return { bytes: view, done: () => src.release!() };
    }
    // A plain buffer may be reused by its owner the moment it deregisters: send a copy.
    return { bytes: Uint8Array.prototype.slice.call(view), done: undefined };
  }

  /** Serves a peer's write; returns the error to send back, or undefined when done. Throws like {@link serveRead}. */
  serveWrite(key: bigint, offset: number, data: Uint8Array): KoalaError | undefined {
    const found = this.resolve(key, offset, data.byteLength, true);
    if (found instanceof KoalaError) return found;
    found.bytes.set(data, offset);
    return undefined;
  }

  private resolve(key: bigint, offset: number, length: number, write: boolean): { entry: Entry; bytes: Uint8Array } | KoalaError {
    if (!this.enabled) return new KoalaError(ErrorCode.REMOTE_ACCESS_DENIED, `one-sided access is not enabled on ${this.where}`);
    const entry = this.entries.get(key);
    if (entry === undefined) {
      if (++this.unknownKeyRequests > MAX_UNKNOWN_KEY_REQUESTS) {
        throw new KoalaError(ErrorCode.PROTOCOL, `the peer named ${this.unknownKeyRequests} unknown region keys (more than ${MAX_UNKNOWN_KEY_REQUESTS}): closing`);
      }
      return new KoalaError(ErrorCode.REGION_NOT_FOUND, `remote region ${hexKey(key)} is not registered on this connection (never was, or was deregistered)`);
    }
    let bytes: Uint8Array;
    try {
      bytes = entry.source instanceof Uint8Array ? entry.source : entry.source.bytes;
    } catch (err) {
      return new KoalaError(ErrorCode.REGION_NOT_FOUND, `remote region ${hexKey(key)} is no longer usable: ${(err as Error).message}`);
    }
    if (write && entry.access !== "readwrite") return new KoalaError(ErrorCode.REMOTE_ACCESS_DENIED, `remote region ${hexKey(key)} is registered read-only`);
    if (!inBounds(offset, length, entry.length) || offset + length > bytes.byteLength) {
      return new KoalaError(ErrorCode.OUT_OF_BOUNDS, `access of ${length} bytes at offset ${offset} is outside remote region ${hexKey(key)} of ${entry.length} bytes`);
    }
    return { entry, bytes };
  }
}

function inBounds(offset: number, length: number, size: number): boolean {
  return Number.isSafeInteger(offset) && Number.isSafeInteger(length) && offset >= 0 && length >= 0 && offset + length <= size;
}

function hexKey(key: bigint): string {
  return `0x${key.toString(16).padStart(16, "0")}`;
}

/** Writes a descriptor into 32 bytes, to embed in a message. */
export function encodeDescriptor(d: RegionDescriptor, out: Uint8Array = new Uint8Array(DESCRIPTOR_BYTES)): Uint8Array {
  check(out.byteLength >= DESCRIPTOR_BYTES, `encodeDescriptor(): output shorter than ${DESCRIPTOR_BYTES} bytes`);
  const v = new DataView(out.buffer, out.byteOffset, DESCRIPTOR_BYTES);
  v.setUint16(0, DESCRIPTOR_MAGIC, true);
  v.setUint8(2, DESCRIPTOR_VERSION);
  v.setUint8(3, d.access === "readwrite" ? 1 : 0);
  v.setUint32(4, 0, true);
  v.setBigUint64(8, d.key, true);
  v.setBigUint64(16, d.address, true);
  v.setFloat64(24, d.length, true);
  return out;
}

/** Reads a descriptor written by {@link encodeDescriptor}; throws KOALA_ERR_INVALID_ARGUMENT on anything else. */
export function decodeDescriptor(bytes: Uint8Array): RegionDescriptor {
  check(bytes.byteLength >= DESCRIPTOR_BYTES, `decodeDescriptor(): need ${DESCRIPTOR_BYTES} bytes, got ${bytes.byteLength}`);
  const v = new DataView(bytes.buffer, bytes.byteOffset, DESCRIPTOR_BYTES);
  const flags = v.getUint8(3);
  const length = v.getFloat64(24, true);
  check(
    v.getUint16(0, true) === DESCRIPTOR_MAGIC && v.getUint8(2) === DESCRIPTOR_VERSION && flags <= 1 && v.getUint32(4, true) === 0 && Number.isSafeInteger(length) && length >= 0,
    "decodeDescriptor(): bytes are not a region descriptor",
  );
  return Object.freeze({ key: v.getBigUint64(8, true), address: v.getBigUint64(16, true), length, access: flags === 1 ? "readwrite" : "read" });
}

/**
 * Checks a request before it is sent, against what the descriptor says, so that an obviously
 * bad access fails on the caller's side without a round trip. The owner checks again. Throws KoalaError.
 */
export function checkRemoteAccess(d: RegionDescriptor, offset: number, length: number, write: boolean): void {
  check(d !== null && typeof d === "object" && typeof d.key === "bigint" && typeof d.length === "number", "a region descriptor (from registerRegion or decodeDescriptor) is required");
  if (write && d.access !== "readwrite") throw new KoalaError(ErrorCode.REMOTE_ACCESS_DENIED, `remote region ${hexKey(d.key)} is registered read-only`);
  if (!inBounds(offset, length, d.length)) {
    throw new KoalaError(ErrorCode.OUT_OF_BOUNDS, `access of ${length} bytes at offset ${offset} is outside remote region ${hexKey(d.key)} of ${d.length} bytes`);
  }
}
