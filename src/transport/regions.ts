/**
 * Memory registered for one-sided access by peers.
 *
 * A process registers a buffer (or a heap lease) and sends the small {@link RegionDescriptor}
 * to a peer, which then calls `connection.read` / `connection.write` on it. Socket transports
 * serve those requests from this process-wide table, with bounds and permission checks, so
 * the same code runs where RDMA does it in the NIC. Deregistering revokes access at once.
 */
import { randomInt } from "node:crypto";
import { ErrorCode, KoalaError, check } from "../errors.js";

/** What a peer may do with a registered region. */
export type RemoteAccess = "read" | "readwrite";

/** The description of a registered region that a peer needs to access it. */
export interface RegionDescriptor {
  /** Key naming the region in the owner's table (the RDMA rkey where RDMA serves it). */
  readonly key: number;
  /** Length of the region in bytes. */
  readonly length: number;
  /** What the peer may do. */
  readonly access: RemoteAccess;
}

/** Something that holds bytes, such as a heap lease; read every time a peer accesses it. */
export interface ByteSource {
  /** The bytes; may throw once the holder has been released. */
  readonly bytes: Uint8Array;
}

/** A region registered for remote access. */
export interface RegisteredRegion {
  /** What to send to the peer. */
  readonly descriptor: RegionDescriptor;
  /** False once deregistered. */
  readonly registered: boolean;
  /** Revokes remote access; later accesses fail with KOALA_ERR_REGION_NOT_FOUND. Idempotent. */
  deregister(): void;
}

/** Size of a descriptor written by {@link encodeDescriptor}, in bytes. */
export const DESCRIPTOR_BYTES = 16;
const DESCRIPTOR_MAGIC = 0x4b52; // "KR"

interface Entry {
  source: Uint8Array | ByteSource;
  access: RemoteAccess;
  length: number;
}

const table = new Map<number, Entry>();

/**
 * Registers `source` for one-sided access by peers. `access` defaults to `"read"`.
 * A lease-like source is read at every access, so releasing it revokes access as well.
 */
export function registerRegion(source: Uint8Array | ByteSource, options?: { access?: RemoteAccess }): RegisteredRegion {
  const access = options?.access ?? "read";
  check(access === "read" || access === "readwrite", `registerRegion(): option "access" must be "read" or "readwrite", got ${String(access)}`);
  const bytes = source instanceof Uint8Array ? source : source.bytes;
  check(bytes instanceof Uint8Array, "registerRegion(): source must be a Uint8Array or hold one in .bytes");
  let key: number;
  do key = randomInt(1, 0xffffffff);
  while (table.has(key));
  const entry: Entry = { source, access, length: bytes.byteLength };
  table.set(key, entry);
  const descriptor: RegionDescriptor = Object.freeze({ key, length: entry.length, access });
  return {
    descriptor,
    get registered() {
      return table.get(key) === entry;
    },
    deregister() {
      if (table.get(key) === entry) table.delete(key);
    },
  };
}

/** Writes a descriptor into 16 bytes, to embed in a message. */
export function encodeDescriptor(d: RegionDescriptor, out: Uint8Array = new Uint8Array(DESCRIPTOR_BYTES)): Uint8Array {
  check(out.byteLength >= DESCRIPTOR_BYTES, "encodeDescriptor(): output shorter than 16 bytes");
  const v = new DataView(out.buffer, out.byteOffset, DESCRIPTOR_BYTES);
  v.setUint16(0, DESCRIPTOR_MAGIC, true);
  v.setUint8(2, d.access === "readwrite" ? 1 : 0);
  v.setUint8(3, 0);
  v.setUint32(4, d.key, true);
  v.setFloat64(8, d.length, true);
  return out;
}

/** Reads a descriptor written by {@link encodeDescriptor}; throws KOALA_ERR_INVALID_ARGUMENT on anything else. */
export function decodeDescriptor(bytes: Uint8Array): RegionDescriptor {
  check(bytes.byteLength >= DESCRIPTOR_BYTES, `decodeDescriptor(): need ${DESCRIPTOR_BYTES} bytes, got ${bytes.byteLength}`);
  const v = new DataView(bytes.buffer, bytes.byteOffset, DESCRIPTOR_BYTES);
  const flags = v.getUint8(2);
  const length = v.getFloat64(8, true);
  check(
    v.getUint16(0, true) === DESCRIPTOR_MAGIC && flags <= 1 && Number.isSafeInteger(length) && length >= 0,
    "decodeDescriptor(): bytes are not a region descriptor",
  );
  return Object.freeze({ key: v.getUint32(4, true), length, access: flags === 1 ? "readwrite" : "read" });
}

/** Checks a one-sided request against the local table; returns the target bytes or the error to report to the peer. */
function resolveAccess(key: number, offset: number, length: number, write: boolean): Uint8Array | KoalaError {
  const entry = table.get(key);
  if (entry === undefined) return new KoalaError(ErrorCode.REGION_NOT_FOUND, `remote region ${key} is not registered (never was, or was deregistered)`);
  let bytes: Uint8Array;
  try {
    bytes = entry.source instanceof Uint8Array ? entry.source : entry.source.bytes;
  } catch (err) {
    return new KoalaError(ErrorCode.REGION_NOT_FOUND, `remote region ${key} is no longer usable: ${(err as Error).message}`);
  }
  if (write && entry.access !== "readwrite") return new KoalaError(ErrorCode.REMOTE_ACCESS_DENIED, `remote region ${key} is registered read-only`);
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > entry.length) {
    return new KoalaError(
      ErrorCode.OUT_OF_BOUNDS,
      `access of ${length} bytes at offset ${offset} is outside remote region ${key} of ${entry.length} bytes`,
    );
  }
  return bytes.subarray(offset, offset + length);
}

/** Serves a peer's one-sided read: the bytes (a view, not a copy) or the error to send back. */
export function serveRemoteRead(key: number, offset: number, length: number): Uint8Array | KoalaError {
  return resolveAccess(key, offset, length, false);
}

/** Serves a peer's one-sided write; returns the error to send back, or undefined when done. */
export function serveRemoteWrite(key: number, offset: number, data: Uint8Array): KoalaError | undefined {
  const target = resolveAccess(key, offset, data.byteLength, true);
  if (target instanceof KoalaError) return target;
  target.set(data);
  return undefined;
}

/**
 * Checks a request before it is sent, against what the descriptor says, so that an obviously
 * bad access fails on the caller's side without a round trip. Throws KoalaError.
 */
export function checkRemoteAccess(d: RegionDescriptor, offset: number, length: number, write: boolean): void {
  if (write && d.access !== "readwrite") throw new KoalaError(ErrorCode.REMOTE_ACCESS_DENIED, `remote region ${d.key} is registered read-only`);
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > d.length) {
    throw new KoalaError(ErrorCode.OUT_OF_BOUNDS, `access of ${length} bytes at offset ${offset} is outside remote region ${d.key} of ${d.length} bytes`);
  }
}
