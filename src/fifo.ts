/**
 * The one first-in-first-out queue every layer uses (receive queues, accept queues, stream
 * queues, waiters for credit or drain, calls waiting for a stream): an array read from a moving
 * head, so that `shift()` is O(1), compacted when the consumed part dominates.
 */
export class Fifo<T> implements Iterable<T> {
  private items: (T | undefined)[] = [];
  private head = 0;

  /** Items in the queue. */
  get length(): number {
    return this.items.length - this.head;
  }

  /** Adds `item` at the end. */
  push(item: T): void {
    this.items.push(item);
  }

  /** The first item, without removing it. */
  peek(): T | undefined {
    return this.head < this.items.length ? this.items[this.head] : undefined;
  }

  /** Removes and returns the first item (undefined when empty). */
  shift(): T | undefined {
    if (this.head >= this.items.length) return undefined;
    const item = this.items[this.head];
    this.items[this.head++] = undefined;
    if (this.head === this.items.length) {
      this.items.length = 0;
      this.head = 0;
    } else if (this.head >= 1024 && this.head * 2 >= this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    return item;
  }

  /** Removes every item and returns them in order. */
  drain(): T[] {
    const out = this.items.slice(this.head) as T[];
    this.items = [];
    this.head = 0;
    return out;
  }

  *[Symbol.iterator](): Iterator<T> {
    for (let i = this.head; i < this.items.length; i++) yield this.items[i] as T;
  }
}

/** A promise's settle functions, as waiters keep them. */
export interface Waiter<T> {
  resolve(value: T): void;
  reject(reason: unknown): void;
}

/**
 * Callers waiting for something (a connection, credit, a drain), settled in the order they
 * came. `settleAll` is the one place where a close or failure reaches all of them.
 */
export class Waiters<T> {
  private readonly queue = new Fifo<Waiter<T>>();

  /** Callers waiting. */
  get length(): number {
    return this.queue.length;
  }

  /** A promise settled by a later `resolveNext`, `resolveAll` or `rejectAll`. */
  wait(): Promise<T> {
    return new Promise<T>((resolve, reject) => this.queue.push({ resolve, reject }));
  }

  /** Resolves the longest waiting caller with `value`; false when nobody waits. */
  resolveNext(value: T): boolean {
    const w = this.queue.shift();
    if (w === undefined) return false;
    w.resolve(value);
    return true;
  }

  /** Resolves every waiting caller with `value`. */
  resolveAll(value: T): void {
    for (const w of this.queue.drain()) w.resolve(value);
  }

  /** Rejects every waiting caller with `reason`. */
  rejectAll(reason: unknown): void {
    for (const w of this.queue.drain()) w.reject(reason);
  }
}
