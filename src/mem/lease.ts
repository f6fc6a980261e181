/**
 * Leases: a caller's hold on one slot of a heap slab (or one large allocation), with a
 * reference count. Everything a transport needs to use the memory in place is here: the bytes,
 * the slab they live in, the offset and the registration handle of the slab.
 */
import { ErrorCode, KoalaError, check } from "../errors.js";
import type { MemoryRegistrar, Slab } from "./slab.js";

let construct: (slab: Slab, slot: number, size: number) => Lease;

/**
 * A lease on `size` bytes of a heap, held until its last {@link Lease.release}.
 *
 * After the release every member but `size`, `capacity` and `released` throws
 * KOALA_ERR_LEASE_RELEASED, and a release too many throws it too (the free list is left
 * untouched). Views already taken from `bytes` (or its `subarray`s) cannot be revoked in
 * JavaScript: they keep pointing at memory that the next lease of the slot will own. Do not
 * keep them past the release; to catch code that does, create the heap with
 * `poisonOnRelease: true`, which fills released memory with 0xDE so a stale view reads garbage
 * instead of another lease's data.
 *
 * Memory is not cleared between leases (like `Buffer.allocUnsafe`): a new lease may hold the
 * bytes of an earlier one.
 */
export class Lease {
  static {
    construct = (slab, slot, size) => new Lease(slab, slot, size);
  }

  /** Bytes asked for: `bytes.byteLength`. */
  readonly size: number;
  readonly #slab: Slab;
  readonly #slot: number;
  /** References held; 0 once released. */
  #refs = 1;
  /** Made on first use of `bytes`: transports that address the slab directly never need it. */
  #view: Uint8Array | undefined = undefined;

  private constructor(slab: Slab, slot: number, size: number) {
    this.#slab = slab;
    this.#slot = slot;
    this.size = size;
  }

  /** The leased bytes, exactly `size` long. Throws KOALA_ERR_LEASE_RELEASED after release. */
  get bytes(): Uint8Array {
    if (this.#refs === 0) throw released("bytes");
    if (this.#view === undefined) {
      const start = this.#slot * this.#slab.slotSize;
      this.#view = this.#slab.bytes.subarray(start, start + this.size);
    }
    return this.#view;
  }

  /** Bytes of the slot behind the lease: its size class, or `size` for a large allocation. */
  get capacity(): number {
    return this.#slab.slotSize;
  }

  /** True once the last reference was released. */
  get released(): boolean {
    return this.#refs === 0;
  }

  /** The whole slab the lease lives in (the buffer that was registered), for transports that address memory by registration and offset. */
  get slab(): Uint8Array {
    if (this.#refs === 0) throw released("slab");
    return this.#slab.bytes;
  }

  /** Offset of the lease's first byte in {@link Lease.slab}. */
  get offset(): number {
    if (this.#refs === 0) throw released("offset");
    return this.#slot * this.#slab.slotSize;
  }

  /**
   * The handle `registrar.register` returned for this lease's slab. Throws
   * KOALA_ERR_INVALID_ARGUMENT for a registrar the heap does not have, and KOALA_ERR_CLOSED
   * once the heap is closed (the slab is no longer registered).
   */
  registration(registrar: MemoryRegistrar): unknown {
    if (this.#refs === 0) throw released("registration");
    const slab = this.#slab;
    if (slab.dropped) throw new KoalaError(ErrorCode.CLOSED, "registration(): the heap was closed; the lease's slab is no longer registered");
    const handle = slab.handles.get(registrar);
    if (handle === undefined && !slab.handles.has(registrar)) {
      throw new KoalaError(ErrorCode.INVALID_ARGUMENT, "registration(): this registrar is not registered with the lease's heap");
    }
    return handle;
  }

  /** A copy of `length` bytes from `offset` of the lease. Throws KOALA_ERR_OUT_OF_BOUNDS for any byte outside it. */
  read(offset: number, length: number): Uint8Array {
    if (this.#refs === 0) throw released("read");
    outOfBounds(offset, length, this.size);
    const start = this.#slot * this.#slab.slotSize + offset;
    return this.#slab.bytes.slice(start, start + length);
  }

  /** Copies `data` to `offset` of the lease. Throws KOALA_ERR_OUT_OF_BOUNDS for any byte outside it. */
  write(offset: number, data: Uint8Array): void {
    if (this.#refs === 0) throw released("write");
    check(data instanceof Uint8Array, "write(): data must be a Uint8Array");
    outOfBounds(offset, data.byteLength, this.size);
    this.#slab.bytes.set(data, this.#slot * this.#slab.slotSize + offset);
  }

  /** Adds a reference: the memory returns to the heap only when every reference is released. Returns this lease. */
  retain(): this {
    if (this.#refs === 0) throw released("retain");
    this.#refs++;
    return this;
  }

  /** Drops a reference; the last one returns the memory to the heap. A release too many throws KOALA_ERR_LEASE_RELEASED ("double release"). */
  release(): void {
    if (this.#refs === 0) throw new KoalaError(ErrorCode.LEASE_RELEASED, "double release of a heap lease");
    if (--this.#refs > 0) return;
    this.#view = undefined;
    this.#slab.owner.releaseSlot(this.#slab, this.#slot, this.size, this);
  }
}

/** Makes a lease on `slot` of `slab` (for the heap; leases are not made any other way). */
export function newLease(slab: Slab, slot: number, size: number): Lease {
  return construct(slab, slot, size);
}

function released(what: string): KoalaError {
  return new KoalaError(ErrorCode.LEASE_RELEASED, `${what}: use of a released heap lease`);
}

function outOfBounds(offset: number, length: number, size: number): void {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > size) {
    throw new KoalaError(ErrorCode.OUT_OF_BOUNDS, `access of ${length} bytes at offset ${offset} is outside a lease of ${size} bytes`);
  }
}
