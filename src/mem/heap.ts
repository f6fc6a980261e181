/**
 * A heap of registered memory. Memory comes in large slabs, each registered once with every
 * registrar (the RDMA transport registers them with the NIC) and cut into equal slots by size
 * class; an allocation gets a {@link Lease} on a slot of the smallest class that fits, or a
 * dedicated, separately registered buffer above the largest class. Free slots are stacks of
 * slot indices in typed arrays and the slabs with free slots a list per class, so `alloc` and
 * `release` are O(1) and allocate nothing but the lease itself (and its view, on first use).
 *
 * After a burst, a class keeps at most one fully free slab as a spare; any other slab that
 * becomes free is deregistered and dropped, so memory does not stay at its peak forever.
 *
 * Leaks: a lease that is garbage-collected without being released is reported through the
 * `onLeak` option. Its slot is never reused, because a view of its bytes may still be alive
 * somewhere; reporting is all the finalizer does. (`trackLeaks: "off"` turns this off for the
 * hottest paths: registering every lease with the finalizer is most of the cost of a lease.)
 */
import { ErrorCode, KoalaError, check } from "../errors.js";
import { boolean, custom, integer, oneOf, resolveOptions, type OptionsSpec } from "../options.js";
import { Lease, newLease } from "./lease.js";
import { Slab, type MemoryRegistrar, type SlabOwner } from "./slab.js";

/** What `onLeak` receives for a lease garbage-collected without release. */
export interface LeakReport {
  /** Bytes the lease was allocated with. */
  size: number;
  /** Bytes of the slot it held (its size class; `size` for a large allocation). */
  capacity: number;
  /** A few stack frames of the `alloc` call; only with `trackLeaks: "stack"`. */
  allocatedAt?: string;
}

/** Options of {@link createHeap}. */
export interface HeapOptions {
  /** Bytes of each slab. Default 4 MiB. */
  slabBytes?: number;
  /** Slot sizes in bytes, ascending; the largest must fit in a slab. Default the powers of two from 64 B to 1 MiB. */
  sizeClasses?: number[];
  /** Most bytes the heap may hold in slabs and large allocations together; an allocation past it fails with KOALA_ERR_OUT_OF_MEMORY. Default 1 GiB. */
  maxBytes?: number;
  /** Registrars every slab and large allocation is registered with. Default none. */
  registrars?: MemoryRegistrar[];
  /** Fill released memory with the byte 0xDE, so a view kept past its release reads garbage rather than the next lease's data (a debugging aid; costs a fill per release). Default false. */
  poisonOnRelease?: boolean;
  /**
   * `"count"` reports the sizes of leaked leases; `"stack"` also records where each lease was
   * allocated (a stack capture per `alloc`: for debugging); `"off"` detects no leaks, which
   * makes `alloc` + `release` about three times cheaper (the finalization registry is most of
   * their cost). Default `"count"`.
   */
  trackLeaks?: "count" | "stack" | "off";
  /** Called for each lease garbage-collected without release. Default: `process.emitWarning` with code `KOALA_LEAK`. */
  onLeak?: (report: LeakReport) => void;
}

/** Statistics of one size class. */
export interface ClassStats {
  /** Slot size in bytes. */
  size: number;
  /** Slabs held by the class (including its spare). */
  slabs: number;
  /** Slots leased (including those of leaked leases, which are never reused). */
  slotsInUse: number;
  /** Slots free in the class's slabs. */
  slotsFree: number;
}

/** What {@link Heap.stats} returns. */
export interface HeapStats {
  /** Sum of the sizes of live leases, in bytes (what callers asked for, not slot sizes). */
  inUseBytes: number;
  /** Bytes held in slabs and large allocations. */
  reservedBytes: number;
  /** Highest `inUseBytes` seen. */
  peakInUseBytes: number;
  /** Live leases (leaked ones are counted in `leaked` instead). */
  leases: number;
  /** Slabs held, over all classes. */
  slabs: number;
  /** Allocations above the largest class, each in its own buffer. */
  large: { count: number; bytes: number };
  /** Leases garbage-collected without release so far; `bytes` is the memory they pin (slot sizes). */
  leaked: { count: number; bytes: number };
  /** One entry per size class, smallest first. */
  classes: ClassStats[];
}

const MiB = 1024 * 1024;
const POISON = 0xde;

function powersOfTwo(from: number, to: number): number[] {
  const out: number[] = [];
  for (let s = from; s <= to; s *= 2) out.push(s);
  return out;
}

const isRegistrar = (r: unknown): r is MemoryRegistrar =>
  typeof r === "object" && r !== null && typeof (r as MemoryRegistrar).register === "function" && typeof (r as MemoryRegistrar).deregister === "function";

const isAscendingSizes = (v: unknown) =>
  Array.isArray(v) && v.length > 0 && v.every((x, i) => Number.isSafeInteger(x) && x > 0 && (i === 0 || x > v[i - 1]));

function defaultOnLeak(r: LeakReport): void {
  const where = r.allocatedAt !== undefined ? `; allocated at\n${r.allocatedAt}` : ' (the heap option trackLeaks: "stack" records where)';
  process.emitWarning(
    `a heap lease of ${r.size} bytes was garbage-collected without release(); its ${r.capacity}-byte slot is never reused${where}`,
    { code: "KOALA_LEAK" },
  );
}

const spec: OptionsSpec<Required<HeapOptions>> = {
  slabBytes: integer(4 * MiB, 1, 2 ** 31),
  sizeClasses: custom(powersOfTwo(64, MiB), "a non-empty ascending array of positive integers", isAscendingSizes),
  maxBytes: integer(1024 * MiB, 1),
  registrars: custom<MemoryRegistrar[]>(
    [],
    "an array of distinct { register, deregister } objects",
    (v) => Array.isArray(v) && v.every(isRegistrar) && new Set(v).size === v.length,
  ),
  poisonOnRelease: boolean(false),
  trackLeaks: oneOf("count", ["count", "stack", "off"] as const),
  onLeak: custom<(r: LeakReport) => void>(defaultOnLeak, "a function", (v) => typeof v === "function"),
};

/** The slabs of one size class. */
class SizeClass {
  /** Slabs with a free slot that are in use too; allocation takes the last one. */
  readonly available: Slab[] = [];
  /** One fully free slab kept for the next burst. */
  spare: Slab | undefined = undefined;
  slabs = 0;
  /** Slots leased, leaked ones included. */
  slotsInUse = 0;

  constructor(
    readonly index: number,
    readonly size: number,
    readonly slotsPerSlab: number,
  ) {}

  addAvailable(slab: Slab): void {
    slab.availableIndex = this.available.length;
    this.available.push(slab);
  }

  removeAvailable(slab: Slab): void {
    const last = this.available.pop()!;
    if (last !== slab) {
      this.available[slab.availableIndex] = last;
      last.availableIndex = slab.availableIndex;
    }
    slab.availableIndex = -1;
  }
}

/** A heap of registered memory; see the module comment. Made by {@link createHeap}. */
export class Heap {
  readonly #slabBytes: number;
  readonly #maxBytes: number;
  readonly #poison: boolean;
  readonly #tracks: boolean;
  readonly #stacks: boolean;
  readonly #onLeak: (report: LeakReport) => void;
  readonly #classes: SizeClass[];
  readonly #largest: number;
  readonly #registrars: MemoryRegistrar[];
  /** Every slab and large allocation held, for registrars added or removed later and for close. */
  readonly #slabs = new Set<Slab>();
  readonly #owner: SlabOwner;
  readonly #finalizer: FinalizationRegistry<number | LeakReport>;
  #reserved = 0;
  #inUse = 0;
  #peak = 0;
  #leases = 0;
  #largeCount = 0;
  #largeBytes = 0;
  #leakedCount = 0;
  #leakedBytes = 0;
  #closed = false;

  /** Prefer {@link createHeap}. Throws KOALA_ERR_INVALID_ARGUMENT naming a misspelled or bad option. */
  constructor(options?: HeapOptions) {
    const o = resolveOptions("createHeap()", spec, options);
    this.#slabBytes = o.slabBytes;
    this.#maxBytes = o.maxBytes;
    this.#poison = o.poisonOnRelease;
    this.#tracks = o.trackLeaks !== "off";
    this.#stacks = o.trackLeaks === "stack";
    this.#onLeak = o.onLeak;
    this.#largest = o.sizeClasses[o.sizeClasses.length - 1]!;
    check(
      this.#largest <= o.slabBytes,
      `createHeap(): option "sizeClasses" has a class of ${this.#largest} bytes, larger than a slab (slabBytes: ${o.slabBytes})`,
    );
    this.#classes = o.sizeClasses.map((size, i) => new SizeClass(i, size, Math.floor(o.slabBytes / size)));
    this.#registrars = [...o.registrars];
    this.#owner = { releaseSlot: (slab, slot, size, lease) => this.#releaseSlot(slab, slot, size, lease) };
    this.#finalizer = new FinalizationRegistry((held) => this.#leaked(held));
  }

  /** True once {@link Heap.close} was called. */
  get closed(): boolean {
    return this.#closed;
  }

  /**
   * Leases `size` bytes: a slot of the smallest size class that fits, or a buffer of its own
   * above the largest class. Throws KOALA_ERR_INVALID_ARGUMENT unless `size` is a positive
   * integer, KOALA_ERR_OUT_OF_MEMORY when new memory would pass `maxBytes`, KOALA_ERR_CLOSED
   * after close, and whatever a registrar's `register` throws for a new slab.
   */
  alloc(size: number): Lease {
    if (this.#closed) throw new KoalaError(ErrorCode.CLOSED, "alloc(): the heap is closed");
    if (!Number.isSafeInteger(size) || size <= 0) {
      throw new KoalaError(ErrorCode.INVALID_ARGUMENT, `alloc(): size must be a positive integer, got ${String(size)}`);
    }
    let slab: Slab;
    let slot: number;
    if (size > this.#largest) {
      slab = this.#newSlab(size, size, -1);
      slab.freeCount = 0;
      slot = 0;
      this.#largeCount++;
      this.#largeBytes += size;
    } else {
      const cls = this.#classFor(size);
      const available = cls.available;
      slab = available.length > 0 ? available[available.length - 1]! : this.#refill(cls, size);
      slot = slab.free[--slab.freeCount]!;
      if (slab.freeCount === 0) {
        available.pop();
        slab.availableIndex = -1;
      }
      cls.slotsInUse++;
    }
    this.#leases++;
    this.#inUse += size;
    if (this.#inUse > this.#peak) this.#peak = this.#inUse;
    const lease = newLease(slab, slot, size);
    // A plain number as the held value keeps the common case to one registry cell per lease.
    if (this.#tracks) this.#finalizer.register(lease, this.#stacks ? { size, capacity: slab.slotSize, allocatedAt: callerStack() } : size, lease);
    return lease;
  }

  /**
   * Registers every slab, present and future, with `registrar`; the function returned removes
   * it again, deregistering every slab from it. If `register` throws for a slab, the slabs
   * already registered are deregistered and the error is rethrown.
   */
  addRegistrar(registrar: MemoryRegistrar): () => void {
    if (this.#closed) throw new KoalaError(ErrorCode.CLOSED, "addRegistrar(): the heap is closed");
    check(isRegistrar(registrar), "addRegistrar(): expects an object with register() and deregister() methods");
    check(!this.#registrars.includes(registrar), "addRegistrar(): this registrar was already added");
    const done: Slab[] = [];
    try {
      for (const slab of this.#slabs) {
        slab.handles.set(registrar, registrar.register(slab.bytes));
        done.push(slab);
      }
    } catch (err) {
      for (const slab of done) {
        try {
          registrar.deregister(slab.handles.get(registrar));
        } catch {
          // The registration error is the one worth reporting.
        }
        slab.handles.delete(registrar);
      }
      throw err;
    }
    this.#registrars.push(registrar);
    let removed = false;
    return () => {
      if (removed) return;
      removed = true;
      this.#registrars.splice(this.#registrars.indexOf(registrar), 1);
      let failure: { error: unknown } | undefined;
      for (const slab of this.#slabs) {
        if (!slab.handles.has(registrar)) continue;
        const handle = slab.handles.get(registrar);
        slab.handles.delete(registrar);
        try {
          registrar.deregister(handle);
        } catch (error) {
          failure ??= { error };
        }
      }
      if (failure !== undefined) throw failure.error;
    };
  }

  /** Current statistics; O(number of size classes). */
  stats(): HeapStats {
    let slabs = 0;
    const classes: ClassStats[] = [];
    for (const c of this.#classes) {
      slabs += c.slabs;
      classes.push({ size: c.size, slabs: c.slabs, slotsInUse: c.slotsInUse, slotsFree: c.slabs * c.slotsPerSlab - c.slotsInUse });
    }
    return {
      inUseBytes: this.#inUse,
      reservedBytes: this.#reserved,
      peakInUseBytes: this.#peak,
      leases: this.#leases,
      slabs,
      large: { count: this.#largeCount, bytes: this.#largeBytes },
      leaked: { count: this.#leakedCount, bytes: this.#leakedBytes },
      classes,
    };
  }

  /**
   * Deregisters every slab from every registrar and lets go of them; later `alloc` throws
   * KOALA_ERR_CLOSED. Leases still live keep working as plain memory (no longer registered) and
   * may still be released; leaks are no longer reported. Idempotent. Every deregistration is
   * tried; the first that throws is rethrown at the end.
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    let failure: { error: unknown } | undefined;
    for (const slab of this.#slabs) {
      slab.dropped = true;
      try {
        slab.deregisterAll();
      } catch (error) {
        failure ??= { error };
      }
    }
    this.#slabs.clear();
    this.#reserved = 0;
    this.#largeCount = 0;
    this.#largeBytes = 0;
    for (const c of this.#classes) {
      c.available.length = 0;
      c.spare = undefined;
      c.slabs = 0;
      c.slotsInUse = 0;
    }
    if (failure !== undefined) throw failure.error;
  }

  #classFor(size: number): SizeClass {
    const cs = this.#classes;
    let lo = 0;
    let hi = cs.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (cs[mid]!.size >= size) hi = mid;
      else lo = mid + 1;
    }
    return cs[lo]!;
  }

  /** A slab with a free slot for a class that has none in use: its spare, or a new one. */
  #refill(cls: SizeClass, size: number): Slab {
    let slab = cls.spare;
    if (slab !== undefined) cls.spare = undefined;
    else slab = this.#newSlab(size, this.#slabBytes, cls.index);
    cls.addAvailable(slab);
    return slab;
  }

  #newSlab(requested: number, bytes: number, classIndex: number): Slab {
    if (this.#reserved + bytes > this.#maxBytes) {
      throw new KoalaError(
        ErrorCode.OUT_OF_MEMORY,
        `alloc(${requested}): ${bytes} more bytes would pass the heap's maxBytes of ${this.#maxBytes} ` +
          `(${this.#reserved} bytes reserved, ${this.#inUse} in use)`,
      );
    }
    let buffer: Uint8Array;
    try {
      buffer = new Uint8Array(bytes);
    } catch (cause) {
      throw new KoalaError(ErrorCode.OUT_OF_MEMORY, `alloc(${requested}): cannot allocate a buffer of ${bytes} bytes`, { cause });
    }
    const slab = new Slab(this.#owner, buffer, classIndex < 0 ? bytes : this.#classes[classIndex]!.size, classIndex);
    slab.register(this.#registrars);
    this.#reserved += bytes;
    this.#slabs.add(slab);
    if (classIndex >= 0) this.#classes[classIndex]!.slabs++;
    return slab;
  }

  #releaseSlot(slab: Slab, slot: number, size: number, lease: object): void {
    if (this.#tracks) this.#finalizer.unregister(lease);
    this.#leases--;
    this.#inUse -= size;
    if (this.#poison) slab.bytes.fill(POISON, slot * slab.slotSize, (slot + 1) * slab.slotSize);
    if (slab.dropped) return; // the heap was closed under the lease
    if (slab.classIndex < 0) {
      this.#largeCount--;
      this.#largeBytes -= slab.slotSize;
      this.#drop(slab);
      return;
    }
    const cls = this.#classes[slab.classIndex]!;
    cls.slotsInUse--;
    const wasFull = slab.freeCount === 0;
    slab.free[slab.freeCount++] = slot;
    if (slab.freeCount < slab.slots) {
      if (wasFull) cls.addAvailable(slab);
      return;
    }
    if (!wasFull) cls.removeAvailable(slab);
    if (cls.spare === undefined) {
      cls.spare = slab;
      return;
    }
    cls.slabs--;
    this.#drop(slab);
  }

  #drop(slab: Slab): void {
    slab.dropped = true;
    this.#slabs.delete(slab);
    this.#reserved -= slab.bytes.byteLength;
    slab.deregisterAll();
  }

  #leaked(held: number | LeakReport): void {
    const report = typeof held === "number" ? { size: held, capacity: held > this.#largest ? held : this.#classFor(held).size } : held;
    this.#leases--;
    this.#inUse -= report.size;
    this.#leakedCount++;
    this.#leakedBytes += report.capacity;
    if (!this.#closed) this.#onLeak(report);
  }
}

/** A few frames of the caller of `alloc` (the frames of this module skipped). */
function callerStack(): string {
  const lines = new Error().stack?.split("\n") ?? [];
  // Line 0 is "Error", 1 is callerStack, 2 is alloc.
  return lines
    .slice(3, 8)
    .map((l) => l.trim())
    .join("\n");
}

/** Creates a heap of registered memory (see {@link HeapOptions} for the options and their defaults). */
export function createHeap(options?: HeapOptions): Heap {
  return new Heap(options);
}

let shared: Heap | undefined;

/** The process-wide heap that clients and servers encode into unless given another (maxBytes 4 GiB). Created on first use. */
export function sharedHeap(): Heap {
  return (shared ??= new Heap({ maxBytes: 4 * 1024 * MiB }));
}
