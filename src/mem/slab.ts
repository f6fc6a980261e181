/**
 * Slabs: the large buffers a heap registers once with every registrar and cuts into equal
 * slots. Internal to src/mem; only {@link MemoryRegistrar} is public.
 */

/**
 * Registers memory with a transport, e.g. with an RDMA protection domain. A heap calls
 * `register` once for every slab (and every large allocation) when it is created and
 * `deregister` once when it is dropped, so registration stays off the per-message path.
 */
export interface MemoryRegistrar {
  /** Registers a whole slab; returns the handle (e.g. a memory region with its keys) that `deregister` gets back. */
  register(slab: Uint8Array): unknown;
  /** Deregisters a slab given the handle `register` returned for it. */
  deregister(handle: unknown): void;
}

/** What a slab hands its freed slots back to: the heap that made it. */
export interface SlabOwner {
  /** Takes back `slot` of `slab`, freed by the last release of a lease of `size` bytes (`lease` is its finalizer token). */
  releaseSlot(slab: Slab, slot: number, size: number, lease: object): void;
}

/** Free-list stand-in for a large allocation, whose single slot needs no list. */
const NO_SLOTS = new Int32Array(0);

/** One registered buffer cut into `slots` slots of `slotSize` bytes (one slot for a large allocation). */
export class Slab {
  /** Stack of free slot indices; `free[0 .. freeCount)` are free. */
  readonly free: Int32Array;
  freeCount: number;
  readonly slots: number;
  /** Handle each registrar returned for this slab. */
  readonly handles = new Map<MemoryRegistrar, unknown>();
  /** Position in its class's list of slabs with free slots, -1 when not on it. */
  availableIndex = -1;
  /** Set once the heap deregistered and let go of the slab (close, or freed): its slots never return to a free list. */
  dropped = false;

  constructor(
    readonly owner: SlabOwner,
    readonly bytes: Uint8Array,
    /** Bytes a slot: the size class, or the whole buffer for a large allocation. */
    readonly slotSize: number,
    /** Index of the size class, -1 for a large allocation. */
    readonly classIndex: number,
  ) {
    if (classIndex < 0) {
      this.free = NO_SLOTS;
      this.slots = 1;
      this.freeCount = 1;
      return;
    }
    const slots = Math.floor(bytes.byteLength / slotSize);
    this.slots = slots;
    this.free = new Int32Array(slots);
    // Slot 0 on top of the stack, so a fresh slab fills from its start.
    for (let i = 0; i < slots; i++) this.free[i] = slots - 1 - i;
    this.freeCount = slots;
  }

  /**
   * Registers the slab with each registrar. If one throws, those already done are undone and
   * the error is rethrown, so a failed registration leaves nothing half registered.
   */
  register(registrars: readonly MemoryRegistrar[]): void {
    try {
      for (const r of registrars) this.handles.set(r, r.register(this.bytes));
    } catch (err) {
      this.deregisterAll();
      throw err;
    }
  }

  /** Deregisters from every registrar; all are tried even if one throws, and the first error is rethrown. */
  deregisterAll(): void {
    let failure: { error: unknown } | undefined;
    for (const [r, h] of this.handles) {
      try {
        r.deregister(h);
      } catch (error) {
        failure ??= { error };
      }
    }
    this.handles.clear();
    if (failure !== undefined) throw failure.error;
  }
}
