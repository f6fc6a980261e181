/**
 * The receive side shared by transports: delivers whole messages to a callback or to an
 * async iterator, queues them while nobody reads (or while paused), and tells the transport
 * when to stop and restart reading from the peer so that a slow reader slows the writer.
 */
import { ErrorCode, KoalaError } from "../errors.js";
import { Fifo } from "../fifo.js";

/**
 * The receive-side calls of a connection that reads through an {@link Inbox}, for connections
 * to extend (socket, memory and RDMA connections all do the same with theirs).
 */
export abstract class InboxReader {
  /** Where received messages wait for the reader. */
  protected abstract readonly inbox: Inbox;

  /** Sets the message callback (see `Connection.onMessage`). */
  onMessage(receiver: ((message: Uint8Array) => void) | null): void {
    this.inbox.setReceiver(receiver);
  }

  /** Sets the range receiver (see `Connection.onMessageRange`). */
  onMessageRange(receiver: ((buf: Uint8Array, start: number, end: number) => void) | null): void {
    this.inbox.setRangeReceiver(receiver);
  }

  /** Stops delivering messages until {@link resume} (see `Connection.pause`). */
  pause(): void {
    this.inbox.pause();
  }

  /** Delivers messages again (see `Connection.resume`). */
  resume(): void {
    this.inbox.resume();
  }

  /** Iterates received messages (see `Connection`). */
  [Symbol.asyncIterator](): AsyncIterator<Uint8Array> {
    return this.inbox[Symbol.asyncIterator]();
  }
}

/** Receive-side queue of one connection. */
export class Inbox implements AsyncIterable<Uint8Array> {
  private readonly queue = new Fifo<Uint8Array>();
  private receiver: ((message: Uint8Array) => void) | null = null;
  private rangeReceiver: ((buf: Uint8Array, start: number, end: number) => void) | null = null;
  private paused = false;
  private delivering = false;
  /** Set once the receiver threw: the connection is going down and nothing more is delivered. */
  private failed = false;
  private closedWith: KoalaError | undefined;
  private waiter: ((r: IteratorResult<Uint8Array>) => void) | undefined;
  private waiterReject: ((e: unknown) => void) | undefined;
  private iterating = false;
  private orderlyEnd = true;

  /** Bytes of the queued messages. */
  private queuedBytes = 0;
  /** True between `onFull` and `onRoom`. */
  private full = false;

  /**
   * @param capacity messages queued before `onFull` is called
   * @param capacityBytes bytes queued before `onFull` is called (a few huge messages fill it as many small ones do)
   * @param onFull stop reading from the peer
   * @param onRoom start reading from the peer again
   * @param onReceiverError the receiver callback threw `error` (the transport closes the connection)
   */
  constructor(
    private readonly capacity: number,
    private readonly capacityBytes: number,
    private readonly onFull: () => void,
    private readonly onRoom: () => void,
    private readonly onReceiverError: (error: unknown) => void,
  ) {}

  /** Calls the receiver; an exception from application code must not unwind into the transport. */
  private deliver(receiver: (message: Uint8Array) => void, message: Uint8Array): void {
    try {
      receiver(message);
    } catch (err) {
      this.receiverFailed(err);
    }
  }

  /** A receiver that threw has lost track of the stream: later messages must not reach it, and the transport is told. */
  private receiverFailed(err: unknown): void {
    this.failed = true;
    this.queue.drain();
    this.queuedBytes = 0;
    this.onReceiverError(err);
  }

  /** Messages waiting to be delivered. */
  get length(): number {
    return this.queue.length;
  }

  /** Hands one received message to the reader, or queues it. */
  push(message: Uint8Array): void {
    if (this.closedWith !== undefined || this.failed) return;
    if (this.receiver !== null && !this.paused && this.length === 0 && !this.delivering) {
      this.deliver(this.receiver, message);
      return;
    }
    if (this.waiter !== undefined && !this.paused && this.length === 0) {
      const w = this.waiter;
      this.waiter = this.waiterReject = undefined;
      w({ value: message, done: false });
      return;
    }
    this.queue.push(message);
    this.queuedBytes += message.byteLength;
    if (!this.full && (this.length >= this.capacity || this.queuedBytes >= this.capacityBytes)) {
      this.full = true;
      this.onFull();
    }
  }

  /**
   * Hands the message `buf[start, end)` to the range receiver when it can go at once (see
   * `Connection.onMessageRange`), else makes it a view and goes on as {@link push}.
   */
  pushRange(buf: Uint8Array, start: number, end: number): void {
    const r = this.rangeReceiver;
    if (r !== null && this.receiver !== null && !this.paused && this.queue.length === 0 && !this.delivering && this.closedWith === undefined && !this.failed) {
      try {
        r(buf, start, end);
      } catch (err) {
        this.receiverFailed(err);
      }
      return;
    }
    this.push(new Uint8Array(buf.buffer, buf.byteOffset + start, end - start));
  }

  /** Sets the range receiver (null removes it); it takes messages only while a receiver is set too. */
  setRangeReceiver(receiver: ((buf: Uint8Array, start: number, end: number) => void) | null): void {
    this.rangeReceiver = receiver;
  }

  /** Bytes of the messages waiting to be delivered. */
  get bytes(): number {
    return this.queuedBytes;
  }

  /** Sets the callback receiver (null removes it). */
  setReceiver(receiver: ((message: Uint8Array) => void) | null): void {
    if (receiver !== null && this.iterating) throw new KoalaError(ErrorCode.INVALID_ARGUMENT, "onMessage() cannot be used while the connection is iterated with for await");
    this.receiver = receiver;
    this.flush();
  }

  /** Stops delivery until `resume()`. */
  pause(): void {
    this.paused = true;
  }

  /** Restarts delivery. */
  resume(): void {
    this.paused = false;
    this.flush();
    if (this.waiter !== undefined) {
      if (this.length > 0) {
        const w = this.waiter;
        this.waiter = this.waiterReject = undefined;
        w({ value: this.take(), done: false });
      } else if (this.closedWith !== undefined) {
        this.finishWaiter();
      }
    }
  }

  /**
   * Ends delivery. Messages already queued are still delivered, to a callback receiver or to
   * the iterator, in order (also after a pause, once resumed); then an iterator ends, or throws
   * `reason` when the close was not orderly.
   */
  close(reason: KoalaError, orderly: boolean): void {
    if (this.closedWith !== undefined) return;
    this.flush();
    this.closedWith = reason;
    this.orderlyEnd = orderly;
    // A waiting iterator has nothing queued unless it is paused; then resume() hands the rest over.
    if (this.waiter !== undefined && this.length === 0) this.finishWaiter();
  }

  /** Ends a waiting `next()` with the close: done for an orderly close, the reason otherwise. */
  private finishWaiter(): void {
    const w = this.waiter!;
    const rej = this.waiterReject!;
    this.waiter = this.waiterReject = undefined;
    this.iterating = false;
    if (this.orderlyEnd) w({ value: undefined, done: true });
    else rej(this.closedWith);
  }

  private take(): Uint8Array {
    const m = this.queue.shift()!;
    this.queuedBytes -= m.byteLength;
    // Reading stopped when the queue reached a capacity; room below both starts it again.
    if (this.full && this.length < this.capacity && this.queuedBytes < this.capacityBytes) {
      this.full = false;
      this.onRoom();
    }
    return m;
  }

  private flush(): void {
    if (this.delivering) return;
    this.delivering = true;
    try {
      while (this.receiver !== null && !this.paused && !this.failed && this.length > 0) this.deliver(this.receiver, this.take());
    } finally {
      this.delivering = false;
    }
  }

  /** Iterates received messages; ends when the connection closes in order, throws its reason otherwise. */
  [Symbol.asyncIterator](): AsyncIterator<Uint8Array> {
    if (this.receiver !== null) throw new KoalaError(ErrorCode.INVALID_ARGUMENT, "a connection with an onMessage() receiver cannot also be iterated");
    if (this.iterating) throw new KoalaError(ErrorCode.INVALID_ARGUMENT, "a connection can be iterated only once at a time");
    this.iterating = true;
    return {
      next: () => {
        if (this.length > 0 && !this.paused) return Promise.resolve({ value: this.take(), done: false });
        // Paused with messages queued: wait for resume() even when the connection is closed.
        if (this.closedWith !== undefined && this.length === 0) {
          // for await calls no return() after the last next(), so the iteration ends here.
          this.iterating = false;
          if (this.orderlyEnd) return Promise.resolve({ value: undefined, done: true });
          return Promise.reject(this.closedWith);
        }
        return new Promise<IteratorResult<Uint8Array>>((resolve, reject) => {
          this.waiter = resolve;
          this.waiterReject = reject;
        });
      },
      return: () => {
        this.iterating = false;
        return Promise.resolve({ value: undefined, done: true });
      },
    };
  }
}
