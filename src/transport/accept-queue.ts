/**
 * Incoming connections of a listener, handed to a callback, to `accept()` callers or to an
 * async iterator, whichever the server uses.
 */
import { ErrorCode, KoalaError } from "../errors.js";
import { Fifo, Waiters } from "../fifo.js";
import { logLimited } from "../log.js";
import type { Connection } from "./types.js";

/** Queue of accepted connections of one listener. */
export class AcceptQueue implements AsyncIterable<Connection> {
  private readonly ready = new Fifo<Connection>();
  private readonly waiters = new Waiters<Connection>();
  private handler: ((c: Connection) => void) | null = null;
  private closed = false;

  /** True once closed. */
  get isClosed(): boolean {
    return this.closed;
  }

  /**
   * Hands over a new connection (closed at once when the listener is closed). One that closed
   * already after its HELLO (its next frame was malformed, or it reset) is handed over too, so
   * that the application can read why from `closed`; users of a connection check `isClosed`.
   */
  push(connection: Connection): void {
    if (this.closed) {
      connection.close(new Error("the listener is closed"));
      return;
    }
    if (this.handler !== null) this.handOver(this.handler, connection);
    else if (!this.waiters.resolveNext(connection)) this.ready.push(connection);
  }

  /**
   * Calls the connection handler. Application code that throws there must not unwind into the
   * transport (where it would become an unhandled rejection): that one connection is closed.
   */
  private handOver(handler: (c: Connection) => void, connection: Connection): void {
    try {
      handler(connection);
    } catch (err) {
      if (connection.isClosed) {
        // It closed while the handler set it up (the transport logged why): the handler's
        // failure to use it is a consequence, not an error of its own.
        logLimited("transport.closed-during-handover", "debug", "transport", `a connection from ${connection.remoteAddress} closed during its hand-over: ${(err as Error)?.message ?? String(err)}`);
        return;
      }
      logLimited("transport.handler-error", "error", "transport", `the onConnection handler threw; closing that connection: ${(err as Error)?.stack ?? String(err)}`);
      connection.close(
        new KoalaError(ErrorCode.RECEIVER_FAILED, `the onConnection handler threw: ${(err as Error)?.message ?? String(err)}`, { cause: err }),
      );
    }
  }

  /** Next connection; rejects with KOALA_ERR_CLOSED once closed. */
  accept(): Promise<Connection> {
    const c = this.ready.shift();
    if (c !== undefined) return Promise.resolve(c);
    if (this.closed) return Promise.reject(new KoalaError(ErrorCode.CLOSED, "the listener is closed"));
    return this.waiters.wait();
  }

  /** Sets the callback that takes every new connection (and those already waiting). */
  setHandler(handler: ((c: Connection) => void) | null): void {
    this.handler = handler;
    if (handler !== null) for (let c = this.ready.shift(); c !== undefined; c = this.ready.shift()) this.handOver(handler, c);
  }

  /** Stops accepting: waiting `accept()` calls reject, iteration ends. Connections not yet taken are closed. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    const err = new KoalaError(ErrorCode.CLOSED, "the listener is closed");
    this.waiters.rejectAll(err);
    for (const c of this.ready.drain()) c.close(new Error("the listener closed before the connection was accepted"));
  }

  /** Iterates incoming connections until the listener closes. */
  async *[Symbol.asyncIterator](): AsyncIterator<Connection> {
    for (;;) {
      try {
        yield await this.accept();
      } catch (err) {
        if (this.closed) return;
        throw err;
      }
    }
  }
}

/** A listener's delivery of connections through an {@link AcceptQueue}, for listeners to extend. */
export abstract class QueuedListener {
  /** Where new connections go. */
  protected readonly queue = new AcceptQueue();

  /** Resolves with the next connection (see `Listener.accept`). */
  accept(): Promise<Connection> {
    return this.queue.accept();
  }

  /** Sets the connection callback (see `Listener.onConnection`). */
  onConnection(handler: ((connection: Connection) => void) | null): void {
    this.queue.setHandler(handler);
  }

  /** Iterates incoming connections (see `Listener`). */
  [Symbol.asyncIterator](): AsyncIterator<Connection> {
    return this.queue[Symbol.asyncIterator]();
  }
}
