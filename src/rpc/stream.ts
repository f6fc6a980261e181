/**
 * Stream plumbing shared by clients and servers: the receiving queue handed to application
 * code as an async iterable, the sending windows of byte credits, and the receive-side
 * accounting that enforces them.
 *
 * Flow control works as in HTTP/2, in body bytes: every stream has a window of
 * {@link STREAM_WINDOW_BYTES} and every connection one of {@link CONNECTION_WINDOW_BYTES}
 * shared by its streams. A sender may send a stream message while both its stream credit and
 * its connection credit are above zero (so it may overdraw each by one message); the receiver
 * grants credit back as the application consumes messages. The receiver checks the rule: a
 * message arriving while the sender had no credit left is a protocol violation that closes
 * the connection. Together these bound what one connection can make the receiver hold.
 */

import { Code, ErrorCode, KoalaError, RpcError } from "../errors.js";
import { Fifo } from "../fifo.js";

/** The window every stream starts with, in body bytes: part of the protocol, the same on both sides. */
export const STREAM_WINDOW_BYTES = 1024 * 1024;
/** The receiver grants stream credit back once its reader consumed this many bytes. */
export const STREAM_GRANT_BYTES = STREAM_WINDOW_BYTES / 4;
/** The window every connection starts with for the stream messages of all its calls, in body bytes. */
export const CONNECTION_WINDOW_BYTES = 8 * 1024 * 1024;
/** The receiver grants connection credit back once this many bytes were consumed or dropped. */
export const CONNECTION_GRANT_BYTES = CONNECTION_WINDOW_BYTES / 4;

/**
 * The receive side of one connection's window: counts stream bytes received and released,
 * refuses a message the sender had no credit for, and grants credit back.
 */
export class ReceiveWindow {
  private outstanding = 0;
  private released = 0;

  /**
   * @param window the window size in bytes
   * @param grantEvery credit is granted once this many bytes were released
   * @param grant sends `n` bytes of credit to the sender
   * @param violated the peer broke the window: the connection must close (KOALA_ERR_PROTOCOL)
   */
  constructor(
    private readonly window: number,
    private readonly grantEvery: number,
    private readonly grant: (n: number) => void,
    readonly violated: (error: KoalaError) => void,
  ) {}

  /**
   * A message of `bytes` arrived. False when the sender had no credit for it: then `violated`
   * was told (the connection closes) and the message must be dropped.
   */
  receive(bytes: number): boolean {
    if (this.outstanding >= this.window) {
      this.violated(new KoalaError(ErrorCode.PROTOCOL, `flow control violated: the peer sent a message with ${this.outstanding} bytes already unacknowledged in a window of ${this.window}`));
      return false;
    }
    this.outstanding += bytes;
    return true;
  }

  /** `bytes` of received messages were consumed or dropped: the memory is free again. */
  release(bytes: number): void {
    this.released += bytes;
    if (this.released >= this.grantEvery) {
      const n = this.released;
      this.released = 0;
      this.outstanding -= n;
      this.grant(n);
    }
  }

  /** Bytes received and not yet granted back. */
  get unacknowledged(): number {
    return this.outstanding;
  }
}

/**
 * Messages received on one stream, read with `for await`. Every message taken by the reader
 * (or dropped, when the stream ends unread) is released to the stream's and the connection's
 * receive windows, which grant credit back to the sender.
 */
export class IncomingStream<T> implements AsyncIterable<T> {
  private readonly items = new Fifo<T>();
  private readonly sizes = new Fifo<number>();
  private ended = false;
  private error: unknown;
  private waiter: { resolve: (r: IteratorResult<T>) => void; reject: (e: unknown) => void } | undefined;
  private iterated = false;
  private readonly window: ReceiveWindow;
  private connection: ReceiveWindow | undefined;
  /** Received messages behind the queued values, when the owner hands them back (see {@link setReleaser}). */
  private readonly messages = new Fifo<Uint8Array | undefined>();
  /** The message behind the value the reader took last: released when the reader asks for the next one. */
  private lastTaken: Uint8Array | undefined;
  private releaser: ((message: Uint8Array) => void) | undefined;

  /**
   * @param grant sends `n` bytes of stream credit to the sender
   * @param onReturn the reader stopped early (break / return): the call should be cancelled
   * @param connection the connection's receive window, shared by its streams (or later, with {@link bind})
   */
  constructor(
    grant: (n: number) => void,
    private readonly onReturn: () => void,
    connection?: ReceiveWindow,
  ) {
    this.connection = connection;
    this.window = new ReceiveWindow(
      STREAM_WINDOW_BYTES,
      STREAM_GRANT_BYTES,
      (n) => {
        if (!this.ended) grant(n);
      },
      (err) => this.connection!.violated(err),
    );
  }

  /**
   * Makes the stream hand each value's received message to `release` once the reader is done
   * with the value: when it asks for the next one, stops iterating, or the stream fails.
   */
  setReleaser(release: (message: Uint8Array) => void): void {
    this.releaser = release;
  }

  /** Releases every message still held (the call is over: nobody will read them). */
  releaseAll(): void {
    const r = this.releaser;
    if (r === undefined) return;
    if (this.lastTaken !== undefined) r(this.lastTaken);
    this.lastTaken = undefined;
    for (const m of this.messages.drain()) if (m !== undefined) r(m);
  }

  /** Sets the connection whose window this stream's messages count against (a client's call learns it when it is sent). */
  bind(connection: ReceiveWindow): void {
    this.connection = connection;
  }

  /**
   * Adds a received message whose body was `bytes` long. A message that breaks the stream's or
   * the connection's window is dropped (the windows have told the connection, which closes).
   */
  push(value: T, bytes: number, message?: Uint8Array): void {
    if (!this.window.receive(bytes) || !this.connection!.receive(bytes)) return;
    if (this.ended) {
      this.released(bytes);
      if (message !== undefined) this.releaser?.(message);
      return;
    }
    const w = this.waiter;
    if (w !== undefined && this.items.length === 0) {
      this.waiter = undefined;
      this.released(bytes);
      this.took(message);
      w.resolve({ value, done: false });
    } else {
      this.items.push(value);
      this.sizes.push(bytes);
      this.messages.push(message);
    }
  }

  /**
   * Counts a received message that will not be queued (it could not be decoded): the sender
   * spent credit on it, so its bytes go through the windows and are given back at once.
   */
  skip(bytes: number): void {
    if (this.window.receive(bytes) && this.connection!.receive(bytes)) this.released(bytes);
  }

  /** The reader took the value of `message`: the one before is done with. */
  private took(message: Uint8Array | undefined): void {
    if (this.lastTaken !== undefined) this.releaser?.(this.lastTaken);
    this.lastTaken = message;
  }

  /** The sender finished: the reader gets what is queued, then the end. */
  end(): void {
    if (this.ended) return;
    this.ended = true;
    this.wake();
  }

  /** The stream failed: queued messages are dropped, the reader gets `error`. */
  fail(error: unknown): void {
    if (this.ended && this.error !== undefined) return;
    this.ended = true;
    this.error = error;
    this.dropQueued();
    this.wake();
  }

  /** Bytes received and not yet consumed by the reader. */
  get queuedBytes(): number {
    let n = 0;
    for (const b of this.sizes) n += b;
    return n;
  }

  private released(bytes: number): void {
    this.window.release(bytes);
    this.connection!.release(bytes);
  }

  private dropQueued(): void {
    const n = this.queuedBytes;
    this.items.drain();
    this.sizes.drain();
    if (n > 0) this.connection?.release(n);
    // Queued messages were never seen by the reader; the one it took last may still be in use.
    const r = this.releaser;
    for (const m of this.messages.drain()) if (m !== undefined) r?.(m);
  }

  private wake(): void {
    const w = this.waiter;
    if (w === undefined) return;
    this.waiter = undefined;
    if (this.error !== undefined) w.reject(this.error);
    else w.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator](): AsyncIterator<T> {
    if (this.iterated) throw new RpcError(Code.FAILED_PRECONDITION, "a stream can be iterated only once");
    this.iterated = true;
    return {
      next: (): Promise<IteratorResult<T>> => {
        if (this.items.length > 0) {
          const value = this.items.shift() as T;
          const bytes = this.sizes.shift()!;
          this.took(this.messages.shift());
          this.released(bytes);
          return Promise.resolve({ value, done: false });
        }
        if (this.ended) {
          this.took(undefined);
          return this.error !== undefined ? Promise.reject(this.error) : Promise.resolve({ value: undefined, done: true });
        }
        this.took(undefined);
        return new Promise((resolve, reject) => (this.waiter = { resolve, reject }));
      },
      return: (): Promise<IteratorResult<T>> => {
        if (!this.ended) {
          this.ended = true;
          this.dropQueued();
          this.onReturn();
        } else this.dropQueued();
        return Promise.resolve({ value: undefined, done: true });
      },
    };
  }
}

/** Credits of a sending window (a stream's or a connection's): how many body bytes may still go out before the receiver grants more. */
export class SendWindow {
  private readonly waiters = new Fifo<{ resolve: () => void; reject: (e: unknown) => void; bytes: number }>();
  private failed: unknown;
  private credits: number;

  /** @param size the window in bytes (the protocol's constant for the kind of window) */
  constructor(size: number = STREAM_WINDOW_BYTES) {
    this.credits = size;
  }

  /**
   * Takes `bytes` of credit when the window is open (credit left), which may overdraw it: a
   * message larger than the window still goes out once the receiver caught up. False when
   * the window is closed, others wait already, or the window failed.
   */
  tryTake(bytes: number): boolean {
    if (this.credits > 0 && this.failed === undefined && this.waiters.length === 0) {
      this.credits -= bytes;
      return true;
    }
    return false;
  }

  /** Waits until the window opens, then takes `bytes`; rejects once the window failed. Try {@link tryTake} first: it costs no promise. */
  take(bytes: number): Promise<void> {
    if (this.failed !== undefined) return Promise.reject(this.failed);
    if (this.tryTake(bytes)) return Promise.resolve();
    return new Promise<void>((resolve, reject) => this.waiters.push({ resolve, reject, bytes }));
  }

  private wakeWaiters(): void {
    while (this.credits > 0 && this.waiters.length > 0) {
      const w = this.waiters.shift()!;
      this.credits -= w.bytes;
      w.resolve();
    }
  }

  /** The receiver granted `n` more bytes (or a sender gives back credit it took for a message it then did not send). */
  add(n: number): void {
    this.credits += n;
    this.wakeWaiters();
  }

  /** The window can no longer be used: waiting senders get `error`. */
  fail(error: unknown): void {
    this.failed ??= error;
    for (const w of this.waiters.drain()) w.reject(error);
  }
}
