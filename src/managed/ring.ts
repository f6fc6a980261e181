/**
 * A pair of single-producer single-consumer rings in one shared mapping (PROTOCOL.md §7): the
 * application writes its messages into ring 0 and reads the daemon's from ring 1; the daemon the
 * other way round. Nothing here blocks or makes a system call: a write that does not fit returns
 * false, a read of an empty ring returns undefined, and the two "tell me when" flags
 * (consumer asleep, producer waiting for space) say when the other side needs a wake-up byte on
 * the set-up socket.
 *
 * Memory ordering: positions and flags are read and written only with `Atomics` on an
 * Int32Array; payload bytes with plain typed-array stores. V8 compiles `Atomics.store`,
 * `Atomics.load` and `Atomics.compareExchange` as sequentially consistent operations whether the
 * buffer is shared or not (x86-64: a locked instruction / plain load under TSO; arm64:
 * stlr / ldar), and never moves plain typed-array accesses across them. So a producer's payload
 * stores happen before its `Atomics.store` of the tail, and a consumer that loaded that tail with
 * `Atomics.load` sees the payload; the same holds for the head and the memory it hands back. The
 * sleep / wake flags follow the store-then-recheck pattern on both sides, which needs the
 * sequential consistency (not only acquire / release) that these operations give: a wake-up is
 * never lost. test/managed/ring.test.ts checks this across two processes.
 *
 * Positions count bytes since the start, modulo 2^32 (the capacity is a power of two, so
 * `position & (capacity - 1)` is the index and wrap-around of the counter is harmless).
 */
import { ErrorCode, KoalaError } from "../errors.js";

/** "KRNG", little-endian, at offset 0 of the mapping. */
export const RING_MAGIC = 0x474e524b;
/** Version of the layout below. */
export const RING_VERSION = 1;
/** Bytes before the first ring's data: the header and the four control blocks. */
export const RING_HEADER_BYTES = 4096;
/** Smallest and largest capacity of one ring, in bytes (powers of two). */
export const MIN_RING_BYTES = 4096;
export const MAX_RING_BYTES = 2 ** 30;
/** Length word of a record that says "the rest of the ring up to its end is skipped". */
const WRAP = 0xffffffff;
/** Bytes of a record's length word; records start on multiples of 8. */
const LENGTH_BYTES = 4;

// Int32 indices of the header and of each ring's control block; each counter on its own
// 64-byte cache line, so producer and consumer do not share a line they both write.
const H_MAGIC = 0;
const H_VERSION = 1;
const H_RING_BYTES = 2;
const CONTROL = [64 / 4, 320 / 4] as const;
const TAIL = 0; // written by the producer
const HEAD = 16; // written by the consumer (+64 bytes)
const CONSUMER_ASLEEP = 32; // set by the consumer, cleared by whoever wakes it (+128)
const PRODUCER_WAITING = 48; // set by the producer, cleared by whoever wakes it (+192)

/** Bytes of the mapping that holds two rings of `ringBytes` each. */
export function ringPairBytes(ringBytes: number): number {
  return RING_HEADER_BYTES + 2 * ringBytes;
}

/** Checks a ring capacity; throws a validation error naming `option`. */
export function checkRingBytes(option: string, value: unknown): number {
  if (typeof value !== "number" || !Number.isInteger(value) || value < MIN_RING_BYTES || value > MAX_RING_BYTES || (value & (value - 1)) !== 0) {
    throw new KoalaError(ErrorCode.INVALID_ARGUMENT, `${option} must be a power of two in ${MIN_RING_BYTES}..${MAX_RING_BYTES}, got ${String(value)}`);
  }
  return value;
}

/** Writes the header of a fresh mapping (the creator does this once, before the peer maps it). */
export function formatRingPair(memory: ArrayBuffer, ringBytes: number): void {
  checkRingBytes("ringBytes", ringBytes);
  if (memory.byteLength !== ringPairBytes(ringBytes)) throw new KoalaError(ErrorCode.INVALID_ARGUMENT, `formatRingPair(): the mapping is ${memory.byteLength} bytes, two rings of ${ringBytes} need ${ringPairBytes(ringBytes)}`);
  const words = new Int32Array(memory, 0, RING_HEADER_BYTES / 4);
  words.fill(0);
  words[H_VERSION] = RING_VERSION;
  words[H_RING_BYTES] = ringBytes;
  Atomics.store(words, H_MAGIC, RING_MAGIC);
}

/** Reads a mapping's header; throws KOALA_ERR_PROTOCOL unless it is a ring pair of `ringBytes` rings. */
export function checkRingPair(memory: ArrayBuffer, ringBytes: number): void {
  const words = new Int32Array(memory, 0, RING_HEADER_BYTES / 4);
  const magic = Atomics.load(words, H_MAGIC) >>> 0;
  if (magic !== RING_MAGIC || words[H_VERSION] !== RING_VERSION || words[H_RING_BYTES] !== ringBytes || memory.byteLength !== ringPairBytes(ringBytes)) {
    throw new KoalaError(ErrorCode.PROTOCOL, `not a version ${RING_VERSION} ring pair of ${ringBytes}-byte rings (magic ${magic.toString(16)}, version ${String(words[H_VERSION])}, ring bytes ${String(words[H_RING_BYTES])})`);
  }
}

function corrupt(what: string): KoalaError {
  return new KoalaError(ErrorCode.PROTOCOL, `shared ring corrupt: ${what}`);
}

/** Shared parts of both ends of one ring. */
abstract class RingEnd {
  protected readonly words: Int32Array;
  /** The ring's bytes (a Buffer, so that encoders writing strings into it need no view of their own). */
  protected readonly data: Buffer;
  /** The same bytes as a plain Uint8Array: what {@link RingReader.read} hands out views of. */
  protected readonly plain: Uint8Array;
  /** The same bytes, for the records' length words. */
  protected readonly lengths: DataView;
  protected readonly control: number;
  /** Capacity in bytes. */
  readonly capacity: number;
  protected readonly mask: number;
  /** The largest payload one record can carry: half the ring less the length word, so an empty ring always has room for it after at most one wrap. */
  readonly maxRecordBytes: number;

  constructor(memory: ArrayBuffer, ring: 0 | 1, ringBytes: number) {
    checkRingPair(memory, ringBytes);
    this.words = new Int32Array(memory, 0, RING_HEADER_BYTES / 4);
    this.data = Buffer.from(memory, RING_HEADER_BYTES + ring * ringBytes, ringBytes);
    this.lengths = new DataView(memory, RING_HEADER_BYTES + ring * ringBytes, ringBytes);
    this.plain = new Uint8Array(memory, RING_HEADER_BYTES + ring * ringBytes, ringBytes);
    this.control = CONTROL[ring];
    this.capacity = ringBytes;
    this.mask = ringBytes - 1;
    this.maxRecordBytes = ringBytes / 2 - LENGTH_BYTES - 8;
  }

  protected load(field: number): number {
    return Atomics.load(this.words, this.control + field) >>> 0;
  }

  protected store(field: number, value: number): void {
    Atomics.store(this.words, this.control + field, value | 0);
  }

  /** Atomically clears `field` if it is set; true when this call cleared it (then the caller sends the wake-up). */
  protected takeFlag(field: number): boolean {
    return Atomics.compareExchange(this.words, this.control + field, 1, 0) === 1;
  }
}

function recordBytes(payload: number): number {
  return (LENGTH_BYTES + payload + 7) & ~7;
}

/** The producing end of a ring. */
export class RingWriter extends RingEnd {
  private tail: number;

  constructor(memory: ArrayBuffer, ring: 0 | 1, ringBytes: number) {
    super(memory, ring, ringBytes);
    this.tail = this.load(TAIL);
  }

  /** Bytes free now (what the consumer has released); throws KOALA_ERR_PROTOCOL when the consumer's head is impossible. */
  get available(): number {
    const used = (this.tail - this.load(HEAD)) >>> 0;
    if (used > this.capacity || (used & 7) !== 0) throw corrupt(`the consumer's head is ${used} bytes behind the tail of a ${this.capacity}-byte ring`);
    return this.capacity - used;
  }

  /** Ring bytes a record of `payload` bytes written now takes (its padding and a wrap included), or -1 when it can never fit. */
  cost(payload: number): number {
    if (payload > this.maxRecordBytes) return -1;
    const size = recordBytes(payload);
    const toEnd = this.capacity - (this.tail & this.mask);
    return size <= toEnd ? size : toEnd + size;
  }

  /**
   * Copies `parts` into the ring as one record and publishes it. Returns false (and writes
   * nothing) when there is not room now; throws KOALA_ERR_MESSAGE_TOO_LARGE for a record over
   * {@link maxRecordBytes}.
   */
  write(parts: readonly Uint8Array[]): boolean {
    let payload = 0;
    for (let i = 0; i < parts.length; i++) payload += parts[i]!.byteLength;
    let at = this.reserveAt(payload);
    if (at < 0) return false;
    const data = this.data;
    for (let i = 0; i < parts.length; i++) {
      const p = parts[i]!;
      data.set(p, at);
      at += p.byteLength;
    }
    this.commit();
    return true;
  }

  private pending = -1;
  private pendingPayload = 0;

  /**
   * A view of `payload` bytes in the ring to encode into in place, or undefined when there is not
   * room now. Nothing is visible to the consumer until {@link commit}; one reservation at a time.
   */
  reserve(payload: number): Uint8Array | undefined {
    const at = this.reserveAt(payload);
    return at < 0 ? undefined : this.plain.subarray(at, at + payload);
  }

  /** The ring's bytes: what {@link reserveAt}'s offsets index. */
  get buffer(): Buffer {
    return this.data;
  }

  /** {@link reserve} as an offset into {@link buffer} (no view made), or -1 when there is not room now. */
  reserveAt(payload: number): number {
    if (payload > this.maxRecordBytes) throw new KoalaError(ErrorCode.MESSAGE_TOO_LARGE, `a ${payload}-byte message does not fit a ${this.capacity}-byte shared ring (at most ${this.maxRecordBytes}; raise ringBytes)`);
    const cost = this.cost(payload);
    if (cost > this.available) return -1;
    let index = this.tail & this.mask;
    const size = recordBytes(payload);
    if (size > this.capacity - index) {
      this.lengths.setUint32(index, WRAP, true);
      index = 0;
    }
    this.pending = index;
    this.pendingPayload = payload;
    this.pendingCost = cost;
    return index + LENGTH_BYTES;
  }

  private pendingCost = 0;

  /** Publishes the record {@link reserve} handed out. */
  commit(): void {
    if (this.pending < 0) throw new KoalaError(ErrorCode.INVALID_ARGUMENT, "RingWriter.commit(): nothing reserved");
    this.lengths.setUint32(this.pending, this.pendingPayload, true);
    this.tail = (this.tail + this.pendingCost) >>> 0;
    this.pending = -1;
    this.store(TAIL, this.tail);
  }

  /** True when the consumer had said it is going to sleep: this call clears the flag, and the caller must send it one wake-up byte. */
  takeConsumerAsleep(): boolean {
    return this.takeFlag(CONSUMER_ASLEEP);
  }

  /**
   * Says "wake me when `bytes` are free". Returns false when they are free already (then the flag
   * is cleared again and the caller writes at once); true: wait for a wake-up byte.
   */
  waitForSpace(bytes: number): boolean {
    this.store(PRODUCER_WAITING, 1);
    if (this.available >= bytes) {
      this.store(PRODUCER_WAITING, 0);
      return false;
    }
    return true;
  }
}

/** The consuming end of a ring: records are read in order and handed back (released) in any order. */
export class RingReader extends RingEnd {
  /** Where the next record is read (local: the shared head moves only on release). */
  private readAt: number;
  private head: number;
  // Records read and not yet released, in ring order from `first`: their views (undefined once
  // released) and end positions. Release is looked up by identity: the oldest record first (the
  // usual case), else a scan (records released out of order are few: large frames in flight).
  private views: (Uint8Array | undefined)[] = [];
  private ends: number[] = [];
  private first = 0;

  constructor(memory: ArrayBuffer, ring: 0 | 1, ringBytes: number) {
    super(memory, ring, ringBytes);
    this.head = this.load(HEAD);
    this.readAt = this.head;
  }

  /** Bytes written by the producer and not read yet (records, padding and wraps); throws KOALA_ERR_PROTOCOL when the producer's tail is impossible. */
  get available(): number {
    const ready = (this.load(TAIL) - this.readAt) >>> 0;
    const held = (this.readAt - this.head) >>> 0;
    if (ready + held > this.capacity || (ready & 7) !== 0) throw corrupt(`the producer's tail is ${ready} bytes past the read position of a ${this.capacity}-byte ring`);
    return ready;
  }

  /** Records read and not released. */
  get held(): number {
    return this.views.length - this.first;
  }

  // The record at readAt (with `ready` bytes published from there): sets `nextIndex` (ring index
  // of its payload), `nextLength` and `nextEnd` (position after it). Throws on a corrupt record.
  private nextIndex = 0;
  private nextLength = 0;
  private nextEnd = 0;

  private locate(readyIn: number): void {
    let ready = readyIn;
    let index = this.readAt & this.mask;
    let length = this.lengths.getUint32(index, true);
    let start = this.readAt;
    if (length === WRAP) {
      const skip = this.capacity - index;
      if (skip >= ready) throw corrupt(`a wrap marker with nothing written after it`);
      ready -= skip;
      start = (this.readAt + skip) >>> 0;
      index = 0;
      length = this.lengths.getUint32(0, true);
    }
    if (length > this.maxRecordBytes) throw corrupt(`a record of ${length} bytes (the limit is ${this.maxRecordBytes})`);
    const size = recordBytes(length);
    if (size > ready) throw corrupt(`a record of ${length} bytes where ${ready - LENGTH_BYTES} are written`);
    this.nextIndex = index + LENGTH_BYTES;
    this.nextLength = length;
    this.nextEnd = (start + size) >>> 0;
  }

  /**
   * The next record as a view into the ring, valid until {@link release}; undefined when the ring
   * is empty. Throws KOALA_ERR_PROTOCOL for a record the ring cannot hold (a length past what was
   * written, or over the record limit): the producer is broken or hostile.
   */
  read(): Uint8Array | undefined {
    const ready = this.available;
    if (ready === 0) return undefined;
    this.locate(ready);
    this.readAt = this.nextEnd;
    const view = this.plain.subarray(this.nextIndex, this.nextIndex + this.nextLength);
    this.views.push(view);
    this.ends.push(this.nextEnd);
    return view;
  }

  /**
   * Copies the records published now out of the ring, in order, into one new buffer, and releases
   * them: one allocation and one or two copies for the lot (a reader that keeps every message,
   * the application's RPC client, takes them this way). Stops after the record that takes the
   * copied bytes past `maxBytes`. Returns the copies (empty when the ring is empty). Only while
   * no record is held ({@link read} without {@link release}): KOALA_ERR_INVALID_ARGUMENT otherwise.
   * Throws KOALA_ERR_PROTOCOL as {@link read} does, having taken nothing.
   */
  copyOut(maxBytes: number): Uint8Array[] {
    if (this.views.length !== this.first) throw new KoalaError(ErrorCode.INVALID_ARGUMENT, "RingReader.copyOut(): records are held");
    let ready = this.available;
    const out: Uint8Array[] = [];
    if (ready === 0) return out;
    const from = this.readAt;
    // Pass 1: walk the records (checking each), noting payload offsets relative to `from`.
    const starts: number[] = [];
    const lengths: number[] = [];
    let span = 0;
    while (ready > 0 && span <= maxBytes) {
      this.locate(ready);
      const consumed = (this.nextEnd - this.readAt) >>> 0;
      starts.push(((this.nextEnd - recordBytes(this.nextLength) - from) >>> 0) + LENGTH_BYTES);
      lengths.push(this.nextLength);
      this.readAt = this.nextEnd;
      ready -= consumed;
      span += consumed;
    }
    // Pass 2: the span [from, readAt) in at most two pieces (it may run over the ring's end).
    const copy = Buffer.allocUnsafe(span);
    const index = from & this.mask;
    const toEnd = this.capacity - index;
    if (span <= toEnd) {
      this.data.copy(copy, 0, index, index + span);
    } else {
      this.data.copy(copy, 0, index, this.capacity);
      this.data.copy(copy, toEnd, 0, span - toEnd);
    }
    for (let i = 0; i < starts.length; i++) out.push(copy.subarray(starts[i]!, starts[i]! + lengths[i]!));
    this.head = this.readAt;
    this.store(HEAD, this.head);
    return out;
  }

  /**
   * Hands a record back; the producer may reuse its bytes once every record before it is back
   * too. Throws KOALA_ERR_INVALID_ARGUMENT for a view that is not an unreleased record of this ring.
   */
  release(view: Uint8Array): void {
    const views = this.views;
    let at = this.first;
    if (views[at] !== view) {
      at = view === undefined ? -1 : views.indexOf(view, at + 1);
      if (at < 0) throw new KoalaError(ErrorCode.INVALID_ARGUMENT, "RingReader.release(): not a record of this ring, or released already");
    }
    views[at] = undefined;
    if (at !== this.first) return;
    let first = this.first;
    while (first < views.length && views[first] === undefined) first++;
    this.head = this.ends[first - 1]!;
    if (first === views.length) {
      views.length = 0;
      this.ends.length = 0;
      this.first = 0;
    } else if (first >= 1024 && first * 2 >= views.length) {
      // Long-held records keep the lists from emptying: drop the released prefix now and then.
      views.splice(0, first);
      this.ends.splice(0, first);
      this.first = 0;
    } else {
      this.first = first;
    }
    this.store(HEAD, this.head);
  }

  /** True when the producer had said it waits for space: this call clears the flag, and the caller must send it one wake-up byte. */
  takeProducerWaiting(): boolean {
    return this.takeFlag(PRODUCER_WAITING);
  }

  /**
   * Takes back a {@link sleep}: the consumer looks at the ring again by itself, so a producer
   * need send no wake-up byte (one it sends anyway, having raced this store, is harmless).
   */
  awake(): void {
    this.store(CONSUMER_ASLEEP, 0);
  }

  /**
   * Says "I am going to sleep: wake me at the next record". Returns false when a record is there
   * already (then the flag is cleared again and the caller reads on); true: wait for a wake-up.
   */
  sleep(): boolean {
    this.store(CONSUMER_ASLEEP, 1);
    if (this.available > 0) {
      this.store(CONSUMER_ASLEEP, 0);
      return false;
    }
    return true;
  }
}
