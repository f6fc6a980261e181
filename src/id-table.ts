/**
 * Entries by integer id (0 to 2^53), for ids that mostly grow — a connection's calls by call id
 * (the client numbers its calls in order; the server refuses an id that does not), the RDMA
 * transport's work requests by wr_id. A ring of slots indexed by the id's low bits holds nearly
 * every live entry: setting, finding and removing one costs a few array operations and
 * allocates nothing. (A `Map` did the same job with a new hash table every so many deletions:
 * with 256 calls in flight that cost the client more than a third of its CPU per call.) An id
 * whose slot is still taken by an older live entry (a long stream among many short calls) goes
 * to a small overflow map instead. The ring doubles when it is half full, so it stays at about
 * twice the most entries there were at once.
 */
export class IdTable<T> {
  private mask: number;
  /** The id in each slot (-1: free). */
  private ids: Float64Array;
  private calls: (T | undefined)[];
  /** Entries whose slot was taken by an older live one. */
  private readonly overflow = new Map<number, T>();
  private count = 0;

  /** @param slots initial ring size, rounded up to a power of two (at least 16) */
  constructor(slots = 16) {
    let n = 16;
    while (n < slots) n *= 2;
    this.mask = n - 1;
    this.ids = new Float64Array(n).fill(-1);
    this.calls = new Array<T | undefined>(n).fill(undefined);
  }

  /** How many entries are in the table. */
  get size(): number {
    return this.count;
  }

  /** The entry with `id`, if present. */
  get(id: number): T | undefined {
    const i = id & this.mask;
    if (this.ids[i] === id) return this.calls[i];
    return this.overflow.size === 0 ? undefined : this.overflow.get(id);
  }

  /** True when an entry with `id` is present. */
  has(id: number): boolean {
    return this.get(id) !== undefined;
  }

  /** Puts `call` under `id` (replacing the entry there, if any). */
  set(id: number, call: T): void {
    const i = id & this.mask;
    if (this.ids[i] === id) {
      this.calls[i] = call;
      return;
    }
    if (this.overflow.size !== 0 && this.overflow.has(id)) {
      this.overflow.set(id, call);
      return;
    }
    if (2 * (this.count + 1) > this.mask + 1) {
      this.grow();
      this.set(id, call);
      return;
    }
    if (this.ids[i] === -1) {
      this.ids[i] = id;
      this.calls[i] = call;
    } else this.overflow.set(id, call);
    this.count++;
  }

  /** Removes the entry with `id`; false when there was none. */
  delete(id: number): boolean {
    const i = id & this.mask;
    if (this.ids[i] === id) {
      this.ids[i] = -1;
      this.calls[i] = undefined;
      this.count--;
      return true;
    }
    if (this.overflow.size !== 0 && this.overflow.delete(id)) {
      this.count--;
      return true;
    }
    return false;
  }

  /** Every entry, as `[id, value]` pairs, in no particular order (a copy: the table may change while they are used). */
  entries(): [number, T][] {
    const out: [number, T][] = [];
    for (let i = 0; i <= this.mask; i++) if (this.ids[i] !== -1) out.push([this.ids[i]!, this.calls[i]!]);
    for (const e of this.overflow) out.push(e);
    return out;
  }

  /** Every value, in no particular order (a copy). */
  values(): T[] {
    return this.entries().map((e) => e[1]);
  }

  /** Removes every entry. */
  clear(): void {
    this.ids.fill(-1);
    this.calls.fill(undefined);
    this.overflow.clear();
    this.count = 0;
  }

  /** Doubles the ring and puts every entry back (overflowed ones too, where their slot is free now). */
  private grow(): void {
    const all = this.entries();
    const n = (this.mask + 1) * 2;
    this.mask = n - 1;
    this.ids = new Float64Array(n).fill(-1);
    this.calls = new Array<T | undefined>(n).fill(undefined);
    this.overflow.clear();
    this.count = 0;
    for (const [id, call] of all) {
      const i = id & this.mask;
      if (this.ids[i] === -1) {
        this.ids[i] = id;
        this.calls[i] = call;
      } else this.overflow.set(id, call);
      this.count++;
    }
  }
}
