/**
 * A heap of registered memory. Large slabs are allocated once, registered once with every
 * registrar (the RDMA transport registers them with the NIC), and carved into fixed-size slots
 * by size class; an allocation gets a {@link Lease} on the smallest slot that fits, or a
 * dedicated buffer above the largest class. Free slots are kept on per-slab stacks of slot
 * indices, so allocating and releasing are O(1) and allocate nothing but the lease itself.
 *
 * Safety: a released lease refuses every use (KOALA_ERR_LEASE_RELEASED) and a second release is
 * an error that leaves the free lists untouched; checked accessors refuse out-of-bounds access.
 * Views taken from `lease.bytes` before a release cannot be revoked in JavaScript: with
 * `poisonOnRelease` the released memory is filled with 0xDE so a stale view shows garbage rather
 * than another lease's data. A lease that is garbage-collected unreleased is reported through
 * `onLeak`; its slot is not reused, since a stale view of it may still be alive.
 */
import { ErrorCode, KoalaError, check } from "../errors.js";
import { boolean, custom, integer, oneOf, resolveOptions, type OptionsSpec } from "../options.js";

/** Registers memory with a transport (e.g. an RDMA protection domain). */
export interface MemoryRegistrar {
  /** Registers a slab; returns the handle to deregister it with. */
  register(slab: Uint8Array): unknown;
  /** Deregisters a slab registered by `register`. */
  deregister(handle: unknown): void;
}

/** What `onLeak` receives for a lease garbage-collected without release. */
export interface LeakReport {
  /** Bytes asked for. */
  size: number;
  /** Bytes of the slot. */
  capacity: number;
  /** Where it was allocated (with `trackLeaks: "stack"`). */
  allocatedAt?: string;
}

/** Options of {@link createHeap}. */
export interface HeapOptions {
  /** Size of each slab, in bytes. Default 4 MiB. */
  slabBytes?: number;
  /** Slot sizes, ascending, in bytes. Default powers of two from 64 B to 1 MiB. */
  sizeClasses?: number[];
  /** Most memory the heap may hold (slabs and large allocations), in bytes. Default 1 GiB. */
  maxBytes?: number;
  /** Registrars every slab is registered with. Default none. */
  registrars?: MemoryRegistrar[];
  /** Fill released memory with 0xDE. Default false. */
  poisonOnRelease?: boolean;
  /** `"count"` reports leaked sizes only; `"stack"` also records where each lease was allocated (slower). Default "count". */
  trackLeaks?: "count" | "stack";
  /** Called for each leaked lease. Default: a process warning with code KOALA_LEAK. */
  onLeak?: (report: LeakReport) => void;
}

/** Per-class statistics. */
export interface ClassStats {
  size: number;
  slabs: number;
  slotsInUse: number;
  slotsFree: number;
}

/** Heap statistics. */
export interface HeapStats {
  /** Sum of the sizes of live leases. */
  inUseBytes: number;
  /** Highest `inUseBytes` seen. */
  peakInUseBytes: number;
  /** Bytes held in slabs and large allocations. */
  reservedBytes: number;
  /** Live leases. */
  leases: number;
  /** Slabs held. */
  slabs: number;
  /** Large allocations. */
  large: { count: number; bytes: number };
  /** Per size class. */
  classes: ClassStats[];
}

const MiB = 1024 * 1024;
const POISON = 0xde;

function defaultClasses(): number[] {
  const out: number[] = [];
  for (let s = 64; s <= MiB; s *= 2) out.push(s);
  return out;
}

const isRegistrarList = (v: unknown) =>
  Array.isArray(v) && v.every((r) => typeof r === "object" && r !== null && typeof r.register === "function" && typeof r.deregister === "function");

const spec: OptionsSpec<Required<HeapOptions>> = {
  slabBytes: integer(4 * MiB, 4096, 2 ** 31),
  sizeClasses: custom(defaultClasses(), "an ascending array of positive integers", (v) => Array.isArray(v) && v.length > 0 && v.every((x, i) => Number.isInteger(x) && x > 0 && (i === 0 || x > v[i - 1]))),
  maxBytes: integer(1024 * MiB, 1, Number.MAX_SAFE_INTEGER),
  registrars: custom<MemoryRegistrar[]>([], "an array of { register, deregister } objects", isRegistrarList),
  poisonOnRelease: boolean(false),
  trackLeaks: oneOf("count", ["count", "stack"] as const),
  onLeak: custom<(r: LeakReport) => void>((r) => process.emitWarning(`a heap lease of ${r.size} bytes was garbage-collected without release()${r.allocatedAt ? `; allocated at ${r.allocatedAt}` : ""}`, { code: "KOALA_LEAK" }), "a function", (v) => typeof v === "function"),
};

/** A slab: one registered buffer cut into equal slots. */
class Slab {
  readonly free: Int32Array;
  freeCount: number;
  readonly handles = new Map<MemoryRegistrar, unknown>();

  constructor(
    readonly bytes: Uint8Array,
    readonly slotSize: number,
    readonly cls: SizeClass | undefined,
  ) {
    const slots = cls === undefined ? 1 : Math.floor(bytes.byteLength / slotSize);
    this.free = new Int32Array(slots);
    for (let i = 0; i < slots; i++) this.free[i] = slots - 1 - i;
    this.freeCount = slots;
  }

  get slots(): number {
    return this.free.length;
  }
}

class SizeClass {
  /** Slabs with at least one free slot. */
  readonly available: Slab[] = [];
  readonly slabs = new Set<Slab>();
  inUse = 0;

  constructor(readonly size: number) {}
}

/** A view into a slab slot, held until released. */
export class Lease {
  private refs = 1;
  private view: Uint8Array | undefined;

  /** @internal */
  constructor(
    private readonly heap: Heap,
    /** @internal */ readonly slabRef: Slab,
    /** @internal */ readonly slot: number,
    /** Bytes asked for. */
    readonly size: number,
    view: Uint8Array,
  ) {
    this.view = view;
  }

  /** The leased bytes (exactly `size` long). Throws KOALA_ERR_LEASE_RELEASED after release. */
  get bytes(): Uint8Array {
    const v = this.view;
    if (v === undefined) throw released("bytes");
    return v;
  }

  /** Bytes of the slot behind the lease (its size class). */
  get capacity(): number {
    return this.slabRef.slotSize;
  }

  /** True once released. */
  get released(): boolean {
    return this.view === undefined;
  }

  /** The whole slab this lease lives in, for registration-based transports. */
  get slab(): Uint8Array {
    if (this.view === undefined) throw released("slab");
    return this.slabRef.bytes;
  }

  /** Offset of the lease in its slab. */
  get offset(): number {
    if (this.view === undefined) throw released("offset");
    return this.slot * this.slabRef.slotSize;
  }

  /** The handle `registrar` returned when it registered this lease's slab. */
  registration(registrar: MemoryRegistrar): unknown {
    if (this.view === undefined) throw released("registration");
    return this.slabRef.handles.get(registrar);
  }

  /** A copy of `length` bytes at `offset`; throws KOALA_ERR_OUT_OF_BOUNDS outside the lease. */
  read(offset: number, length: number): Uint8Array {
    const v = this.bytes;
    bounds(offset, length, v.byteLength);
    return v.slice(offset, offset + length);
  }

  /** Copies `data` to `offset`; throws KOALA_ERR_OUT_OF_BOUNDS outside the lease. */
  write(offset: number, data: Uint8Array): void {
    const v = this.bytes;
    bounds(offset, data.byteLength, v.byteLength);
    v.set(data, offset);
  }

  /** Adds a reference: the lease is freed when every reference is released. Returns this lease. */
  retain(): this {
    if (this.view === undefined) throw released("retain");
    this.refs++;
    return this;
  }

  /** Drops a reference; the last one returns the memory. A release too many throws KOALA_ERR_LEASE_RELEASED. */
  release(): void {
    if (this.view === undefined) throw new KoalaError(ErrorCode.LEASE_RELEASED, "double release of a heap lease");
    if (--this.refs > 0) return;
    this.view = undefined;
    this.heap.free(this);
  }
}

function released(what: string): KoalaError {
  return new KoalaError(ErrorCode.LEASE_RELEASED, `use of a released heap lease (${what})`);
}

function bounds(offset: number, length: number, size: number): void {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > size) {
    throw new KoalaError(ErrorCode.OUT_OF_BOUNDS, `access of ${length} bytes at offset ${offset} is outside a lease of ${size} bytes`);
  }
}

/** A heap of registered memory; see the module comment. */
export class Heap {
  private readonly opts: Readonly<Required<HeapOptions>>;
  private readonly classes: SizeClass[];
  private readonly registrars: MemoryRegistrar[] = [];
  private readonly large = new Set<Slab>();
  private reserved = 0;
  private inUse = 0;
  private peak = 0;
  private leases = 0;
  private closed = false;
  private readonly finalizer: FinalizationRegistry<LeakReport | number>;

  constructor(options?: HeapOptions) {
    this.opts = resolveOptions("createHeap()", spec, options);
    this.classes = this.opts.sizeClasses.map((s) => new SizeClass(s));
    const largest = this.classes[this.classes.length - 1]!.size;
    check(largest <= this.opts.slabBytes, `createHeap(): the largest size class (${largest}) must fit in a slab (${this.opts.slabBytes})`);
    this.finalizer = new FinalizationRegistry((r) => {
      if (typeof r !== "number") this.opts.onLeak(r);
      else this.opts.onLeak({ size: r, capacity: this.classFor(r)?.size ?? r });
    });
    for (const r of this.opts.registrars) this.registrars.push(r);
  }

  /** Registers every slab, existing and future, with `registrar`; the returned function removes it again. */
  addRegistrar(registrar: MemoryRegistrar): () => void {
    check(isRegistrarList([registrar]), "addRegistrar(): expects an object with register() and deregister()");
    this.registrars.push(registrar);
    for (const slab of this.allSlabs()) slab.handles.set(registrar, registrar.register(slab.bytes));
    return () => {
      const i = this.registrars.indexOf(registrar);
      if (i < 0) return;
      this.registrars.splice(i, 1);
      for (const slab of this.allSlabs()) {
        if (slab.handles.has(registrar)) registrar.deregister(slab.handles.get(registrar));
        slab.handles.delete(registrar);
      }
    };
  }

  private *allSlabs(): Iterable<Slab> {
    for (const c of this.classes) yield* c.slabs;
    yield* this.large;
  }

  /** Leases `size` bytes. Throws KOALA_ERR_INVALID_ARGUMENT for a bad size, KOALA_ERR_OUT_OF_MEMORY past `maxBytes`. */
  alloc(size: number): Lease {
    if (this.closed) throw new KoalaError(ErrorCode.CLOSED, "alloc() on a closed heap");
    if (!Number.isSafeInteger(size) || size <= 0) throw new KoalaError(ErrorCode.INVALID_ARGUMENT, `alloc(): size must be a positive integer, got ${String(size)}`);
    const cls = this.classFor(size);
    let slab: Slab;
    if (cls === undefined) {
      slab = this.newSlab(size, undefined);
      this.large.add(slab);
    } else {
      slab = cls.available[cls.available.length - 1] ?? this.newSlab(this.opts.slabBytes, cls);
      cls.inUse++;
    }
    const slot = slab.free[--slab.freeCount]!;
    if (slab.freeCount === 0 && cls !== undefined) cls.available.pop();
    const start = slot * slab.slotSize;
    const lease = new Lease(this, slab, slot, size, slab.bytes.subarray(start, start + size));
    this.inUse += size;
    if (this.inUse > this.peak) this.peak = this.inUse;
    this.leases++;
    // The lease is its own unregister token; a plain number as held value keeps this cheap.
    const held = this.opts.trackLeaks === "stack" ? { size, capacity: slab.slotSize, allocatedAt: new Error().stack?.split("\n").slice(2, 6).join("\n") ?? "" } : size;
    this.finalizer.register(lease, held, lease);
    return lease;
  }

  private classFor(size: number): SizeClass | undefined {
    const cs = this.classes;
    let lo = 0;
    let hi = cs.length - 1;
    if (size > cs[hi]!.size) return undefined;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (cs[mid]!.size >= size) hi = mid;
      else lo = mid + 1;
    }
    return cs[lo];
  }

  private newSlab(bytes: number, cls: SizeClass | undefined): Slab {
    if (this.reserved + bytes > this.opts.maxBytes) {
      throw new KoalaError(
        ErrorCode.OUT_OF_MEMORY,
        `heap limit reached: ${bytes} more bytes would exceed maxBytes (${this.opts.maxBytes}); ${this.reserved} bytes are reserved, ${this.inUse} in use`,
      );
    }
    const slab = new Slab(new Uint8Array(bytes), cls?.size ?? bytes, cls);
    for (const r of this.registrars) slab.handles.set(r, r.register(slab.bytes));
    this.reserved += bytes;
    if (cls !== undefined) {
      cls.slabs.add(slab);
      cls.available.push(slab);
    }
    return slab;
  }

  /** @internal Returns a released lease's slot. */
  free(lease: Lease): void {
    this.finalizer.unregister(lease);
    const slab = lease.slabRef;
    this.inUse -= lease.size;
    this.leases--;
    if (this.opts.poisonOnRelease) {
      const start = lease.slot * slab.slotSize;
      slab.bytes.fill(POISON, start, start + slab.slotSize);
    }
    const cls = slab.cls;
    if (cls === undefined) {
      this.large.delete(slab);
      this.dropSlab(slab);
      return;
    }
    cls.inUse--;
    slab.free[slab.freeCount++] = lease.slot;
    if (slab.freeCount === 1) cls.available.push(slab);
    if (slab.freeCount === slab.slots && cls.slabs.size > 1) {
      // Keep one spare slab per class: a burst must not pin its peak forever.
      let spares = 0;
      for (const s of cls.slabs) if (s.freeCount === s.slots) spares++;
      if (spares > 1) {
        cls.slabs.delete(slab);
        cls.available.splice(cls.available.indexOf(slab), 1);
        this.dropSlab(slab);
      }
    }
  }

  private dropSlab(slab: Slab): void {
    this.reserved -= slab.bytes.byteLength;
    for (const [r, h] of slab.handles) r.deregister(h);
    slab.handles.clear();
  }

  /** Current statistics. */
  stats(): HeapStats {
    let largeBytes = 0;
    for (const s of this.large) largeBytes += s.bytes.byteLength;
    let slabs = 0;
    const classes = this.classes.map((c) => {
      let free = 0;
      let total = 0;
      for (const s of c.slabs) {
        free += s.freeCount;
        total += s.slots;
      }
      slabs += c.slabs.size;
      return { size: c.size, slabs: c.slabs.size, slotsInUse: total - free, slotsFree: free };
    });
    return {
      inUseBytes: this.inUse,
      peakInUseBytes: this.peak,
      reservedBytes: this.reserved,
      leases: this.leases,
      slabs,
      large: { count: this.large.size, bytes: largeBytes },
      classes,
    };
  }

  /** Deregisters and drops every slab; later `alloc()` throws KOALA_ERR_CLOSED. Live leases keep their (now unregistered) memory. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const slab of [...this.allSlabs()]) this.dropSlab(slab);
    for (const c of this.classes) {
      c.slabs.clear();
      c.available.length = 0;
    }
    this.large.clear();
  }
}

/** Creates a heap (see {@link HeapOptions}). */
export function createHeap(options?: HeapOptions): Heap {
  return new Heap(options);
}

let shared: Heap | undefined;

/** The process-wide heap that clients and servers encode into unless given another. Created on first use. */
export function sharedHeap(): Heap {
  return (shared ??= new Heap({ maxBytes: 4 * 1024 * MiB }));
}
