/**
 * Stream plumbing shared by clients and servers: the receiving queue handed to application
 * code as an async iterable, and the sending window of byte credits. Together they bound
 * memory: a sender may have at most {@link STREAM_WINDOW_BYTES} (plus one message) of body
 * bytes unconsumed at the receiver, however small or large its messages.
 */

import { Code, RpcError } from "../errors.js";

/** The window every stream starts with, in body bytes: part of the protocol, the same on both sides. */
export const STREAM_WINDOW_BYTES = 1024 * 1024;
/** The receiver grants credit back once its reader consumed this many bytes. */
export const STREAM_GRANT_BYTES = STREAM_WINDOW_BYTES / 4;

/**
 * Messages received on one stream, read with `for await`. Every message taken by the reader
 * counts towards a credit grant sent back to the sender (half a window at a time).
 */
export class IncomingStream<T> implements AsyncIterable<T> {
  private readonly items: T[] = [];
  private readonly sizes: number[] = [];
  private head = 0;
  private ended = false;
  private error: unknown;
  private waiter: { resolve: (r: IteratorResult<T>) => void; reject: (e: unknown) => void } | undefined;
  private consumed = 0;
  private iterated = false;

  /**
   * @param grantEvery credits are returned once this many bytes were taken
   * @param grant sends `n` bytes of credit to the sender
   * @param onReturn the reader stopped early (break / return): the call should be cancelled
   */
  constructor(
    private readonly grantEvery: number,
    private readonly grant: (n: number) => void,
    private readonly onReturn: () => void,
  ) {}

  /** Adds a received message whose body was `bytes` long. */
  push(value: T, bytes: number): void {
    if (this.ended) return;
    const w = this.waiter;
    if (w !== undefined && this.head === this.items.length) {
      this.waiter = undefined;
      this.taken(bytes);
      w.resolve({ value, done: false });
    } else {
      this.items.push(value);
      this.sizes.push(bytes);
    }
  }

  /** The sender finished: the reader gets what is queued, then the end. */
  end(): void {
    if (this.ended) return;
    this.ended = true;
    this.wake();
  }

  /** The stream failed: the reader gets what is queued, then `error`. */
  fail(error: unknown): void {
    if (this.ended) return;
    this.ended = true;
    this.error = error;
    this.wake();
  }

  private wake(): void {
    const w = this.waiter;
    if (w === undefined) return;
    this.waiter = undefined;
    if (this.error !== undefined) w.reject(this.error);
    else w.resolve({ value: undefined, done: true });
  }

  private taken(bytes: number): void {
    this.consumed += bytes;
    if (this.consumed >= this.grantEvery && !this.ended) {
      const n = this.consumed;
      this.consumed = 0;
      this.grant(n);
    }
  }

  [Symbol.asyncIterator](): AsyncIterator<T> {
    if (this.iterated) throw new RpcError(Code.FAILED_PRECONDITION, "a stream can be iterated only once");
    this.iterated = true;
    return {
      next: (): Promise<IteratorResult<T>> => {
        if (this.head < this.items.length) {
          const value = this.items[this.head]!;
          const bytes = this.sizes[this.head]!;
          this.items[this.head++] = undefined as T;
          if (this.head === this.items.length) {
            this.items.length = 0;
            this.sizes.length = 0;
            this.head = 0;
          }
          this.taken(bytes);
          return Promise.resolve({ value, done: false });
        }
        if (this.ended) return this.error !== undefined ? Promise.reject(this.error) : Promise.resolve({ value: undefined, done: true });
        return new Promise((resolve, reject) => (this.waiter = { resolve, reject }));
      },
      return: (): Promise<IteratorResult<T>> => {
        if (!this.ended) {
          this.ended = true;
          this.items.length = 0;
          this.sizes.length = 0;
          this.head = 0;
          this.onReturn();
        }
        return Promise.resolve({ value: undefined, done: true });
      },
    };
  }
}

/** Credits of a sending stream: how many body bytes may still go out before the receiver grants more. */
export class SendWindow {
  private waiters: { resolve: () => void; reject: (e: unknown) => void }[] = [];
  private failed: unknown;
  private credits = STREAM_WINDOW_BYTES;

  /**
   * Takes `bytes` of credit when the window is open (credit left), which may overdraw it: a
   * message larger than the window still goes out once the receiver caught up. False when
   * the window is closed or the stream failed.
   */
  tryTake(bytes: number): boolean {
    if (this.credits > 0 && this.failed === undefined) {
      this.credits -= bytes;
      return true;
    }
    return false;
  }

  /** Waits until the window opens, then takes `bytes`; rejects once the stream failed. Try {@link tryTake} first: it costs no promise. */
  take(bytes: number): Promise<void> {
    if (this.failed !== undefined) return Promise.reject(this.failed);
    if (this.tryTake(bytes)) return Promise.resolve();
    return new Promise<void>((resolve, reject) =>
      this.waiters.push({
        resolve: () => {
          this.credits -= bytes;
          resolve();
        },
        reject,
      }),
    );
  }

  /** The receiver granted `n` more bytes. */
  add(n: number): void {
    this.credits += n;
    while (this.credits > 0 && this.waiters.length > 0) this.waiters.shift()!.resolve();
  }

  /** The stream ended: waiting senders get `error`. */
  fail(error: unknown): void {
    this.failed ??= error;
    for (const w of this.waiters.splice(0)) w.reject(error);
  }
}
