/**
 * The in-process transport: a pair of connected endpoints in one process, with the same
 * contract as the socket transports (message boundaries, size limit, backpressure, close
 * reasons, one-sided access), for tests of the layers above. Addresses: `memory:<name>`.
 */
import { ErrorCode, KoalaError } from "../errors.js";
import { Waiters } from "../fifo.js";
import { log } from "../log.js";
import { formatAddress } from "./address.js";
import { Inbox, InboxReader } from "./inbox.js";
import { RegionTable, checkRemoteAccess, type ByteSource, type RegionDescriptor, type RegisterRegionOptions, type RegisteredRegion } from "./regions.js";
import type { Address, Connection, Listener, ResolvedTransportOptions, Transport } from "./types.js";
import { QueuedListener } from "./accept-queue.js";

const listeners = new Map<string, MemoryListener>();
let nextPeerId = 1;

class MemoryConnection extends InboxReader implements Connection {
  readonly transport = "memory" as const;
  peer!: MemoryConnection;
  protected readonly inbox: Inbox;
  /** Bytes this side sent that the peer's reader has not taken yet. */
  private unread = 0;
  private readonly drainWaiters = new Waiters<void>();
  private closeReason: KoalaError | undefined;
  private resolveClosed!: (r: KoalaError) => void;
  readonly closed: Promise<KoalaError>;
  /** Messages in flight to the peer, delivered on the next turn so sends stay asynchronous. */
  private outbox: Uint8Array[] = [];
  private flushScheduled = false;
  private peerStopped = false;
  /** Regions this side shares with the peer. */
  readonly regions: RegionTable;

  constructor(
    readonly localAddress: string,
    readonly remoteAddress: string,
    readonly options: ResolvedTransportOptions,
  ) {
    super();
    this.closed = new Promise((r) => (this.resolveClosed = r));
    this.regions = new RegionTable(options.oneSided, `the connection with ${remoteAddress}`);
    this.inbox = new Inbox(
      options.receiveQueueMessages,
      options.receiveQueueBytes,
      () => (this.peer.peerStopped = true),
      () => {
        this.peer.peerStopped = false;
        this.peer.scheduleFlush();
      },
      (err) => {
        log("error", "transport", `the message receiver of ${localAddress} threw; closing that connection: ${(err as Error)?.stack ?? String(err)}`);
        this.drop(new KoalaError(ErrorCode.RECEIVER_FAILED, `the message receiver threw: ${(err as Error)?.message ?? String(err)}`, { cause: err }));
      },
    );
  }

  get isClosed(): boolean {
    return this.closeReason !== undefined;
  }

  get bufferedBytes(): number {
    return this.unread;
  }

  /** Where a reserved message starts in the buffer reserve() returned: always 0 (the buffer is the message). */
  readonly reservedOffset = 0;
  /** The buffer of the last reserve(), until commit() or a send() takes it away. */
  private reserved: Uint8Array | undefined;

  /**
   * Room for one message of `bytes`: the buffer that will be the message the peer receives
   * (what send() would copy into), so a message encoded there is not copied. Undefined over
   * `coalesceMaxBytes`, as on sockets (a larger message goes by send(), from the caller's
   * memory), and over `maxMessageBytes` (send() reports it).
   */
  reserve(bytes: number): Uint8Array | undefined {
    if (this.closeReason !== undefined) throw this.closedError("reserve()", this.closeReason);
    this.reserved = undefined;
    if (bytes > this.options.coalesceMaxBytes || bytes > this.options.maxMessageBytes) return undefined;
    this.reserved = new Uint8Array(bytes);
    return this.reserved;
  }

  /** Sends the message written into the last reserve()'s buffer; returns as send() does. */
  commit(): boolean {
    const m = this.reserved;
    if (m === undefined) throw new KoalaError(ErrorCode.INVALID_ARGUMENT, "commit() without a reservation (none made, or a send() came in between)");
    this.reserved = undefined;
    if (this.closeReason !== undefined) throw this.closedError("commit()", this.closeReason);
    return this.enqueue(m);
  }

  /** KOALA_ERR_CLOSED for `op` on this closed connection. */
  private closedError(op: string, reason: KoalaError): KoalaError {
    return new KoalaError(ErrorCode.CLOSED, `${op} on a closed connection: ${reason.message}`, { cause: reason });
  }

  /** Queues message `m` for the peer; false past the high-water mark. */
  private enqueue(m: Uint8Array): boolean {
    this.unread += m.byteLength;
    this.outbox.push(m);
    this.scheduleFlush();
    return this.unread <= this.options.highWaterMarkBytes;
  }

  send(parts: readonly Uint8Array[], onWritten?: () => void): boolean {
    this.reserved = undefined;
    if (this.closeReason !== undefined) throw this.closedError("send()", this.closeReason);
    let total = 0;
    for (const p of parts) total += p.byteLength;
    if (total > this.options.maxMessageBytes) {
      throw new KoalaError(ErrorCode.MESSAGE_TOO_LARGE, `message of ${total} bytes exceeds maxMessageBytes (${this.options.maxMessageBytes})`);
    }
    // The copy stands in for the wire: the receiver must never see the sender's later changes.
    const copy = new Uint8Array(total);
    let at = 0;
    for (const p of parts) {
      copy.set(p, at);
      at += p.byteLength;
    }
    this.enqueue(copy);
    // After the message is queued: a callback that throws must not lose a message already accepted.
    onWritten?.();
    return this.unread <= this.options.highWaterMarkBytes;
  }

  private scheduleFlush(): void {
    if (this.flushScheduled || this.outbox.length === 0) return;
    this.flushScheduled = true;
    setImmediate(() => this.flush());
  }

  private flush(): void {
    this.flushScheduled = false;
    const peer = this.peer;
    let i = 0;
    while (i < this.outbox.length && !this.peerStopped && !peer.isClosed) {
      const m = this.outbox[i++]!;
      peer.deliver(m, this);
    }
    this.outbox.splice(0, i);
    if (this.closeReason !== undefined && this.outbox.length === 0 && !peer.isClosed) {
      // Orderly close: the peer sees the end after every message sent before it.
      peer.terminate(new KoalaError(ErrorCode.PEER_CLOSED, "the peer closed the connection"), true);
    }
  }

  private deliver(message: Uint8Array, from: MemoryConnection): void {
    from.unread -= message.byteLength;
    from.checkDrain();
    if (message.byteLength > this.options.maxMessageBytes) {
      // As a socket receiver does with an oversized frame: this side refuses it and drops the connection.
      const err = new KoalaError(
        ErrorCode.MESSAGE_TOO_LARGE,
        `the peer sent a message of ${message.byteLength} bytes; the limit is ${this.options.maxMessageBytes} (maxMessageBytes)`,
      );
      log("warn", "transport", `closing ${this.remoteAddress}: ${err.message}`);
      this.drop(err);
      return;
    }
    this.inbox.push(message);
  }

  private checkDrain(): void {
    if (this.drainWaiters.length > 0 && this.unread <= this.options.highWaterMarkBytes / 2) this.drainWaiters.resolveAll();
  }

  drain(): Promise<void> {
    if (this.closeReason !== undefined) return Promise.reject(this.closeReason);
    if (this.unread <= this.options.highWaterMarkBytes / 2) return Promise.resolve();
    return this.drainWaiters.wait();
  }


  release(_message: Uint8Array): void {
    // Received messages are views of memory nobody reuses: nothing to hand back.
  }


  close(reason?: Error): void {
    if (this.closeReason !== undefined) return;
    if (reason === undefined) {
      this.terminate(new KoalaError(ErrorCode.CLOSED, "the connection was closed by this side"), true);
      this.scheduleFlush();
      if (this.outbox.length === 0) setImmediate(() => this.flush());
    } else {
      this.drop(new KoalaError(ErrorCode.CLOSED, `the connection was closed by this side: ${reason.message}`, { cause: reason }));
    }
  }

  /** Drops the connection at once with `reason`; the peer sees a reset. */
  private drop(reason: KoalaError): void {
    if (this.closeReason !== undefined) return;
    this.terminate(reason, false);
    this.outbox = [];
    this.unread = 0;
    if (!this.peer.isClosed) this.peer.terminate(new KoalaError(ErrorCode.CONNECTION_RESET, "the peer reset the connection"), false);
  }

  private terminate(reason: KoalaError, orderly: boolean): void {
    if (this.closeReason !== undefined) return;
    this.closeReason = reason;
    this.regions.clear();
    this.inbox.close(reason, orderly);
    this.drainWaiters.rejectAll(reason);
    this.resolveClosed(reason);
  }

  registerRegion(source: Uint8Array | ByteSource, options?: RegisterRegionOptions): RegisteredRegion {
    this.checkOpen();
    return this.regions.register(source, options);
  }

  async read(region: RegionDescriptor, offset: number, length: number): Promise<Uint8Array> {
    this.checkOpen();
    checkRemoteAccess(region, offset, length, false);
    if (length > this.options.maxMessageBytes) {
      throw new KoalaError(ErrorCode.MESSAGE_TOO_LARGE, `a read of ${length} bytes exceeds maxMessageBytes (${this.options.maxMessageBytes})`);
    }
    await this.roundTrip();
    const r = this.peer.serve(() => this.peer.regions.serveRead(region.key, offset, length));
    if (r instanceof KoalaError) throw r;
    r.done?.();
    return r.bytes.slice();
  }

  async write(region: RegionDescriptor, offset: number, data: Uint8Array): Promise<void> {
    this.checkOpen();
    checkRemoteAccess(region, offset, data.byteLength, true);
    if (data.byteLength > this.options.maxMessageBytes) {
      throw new KoalaError(ErrorCode.MESSAGE_TOO_LARGE, `a write of ${data.byteLength} bytes exceeds maxMessageBytes (${this.options.maxMessageBytes})`);
    }
    const copy = data.slice();
    await this.roundTrip();
    const err = this.peer.serve(() => this.peer.regions.serveWrite(region.key, offset, copy));
    if (err !== undefined) throw err;
  }

  /** Runs a one-sided request on this (the owner's) side; a peer guessing keys gets this connection dropped, as on sockets. */
  private serve<T>(op: () => T): T | KoalaError {
    try {
      return op();
    } catch (err) {
      const e = err as KoalaError;
      log("warn", "transport", `closing ${this.remoteAddress}: ${e.message}`);
      this.drop(e);
      return e;
    }
  }

  /** A one-sided access started after close fails with KOALA_ERR_CLOSED, as send() does. */
  private checkOpen(): void {
    if (this.closeReason !== undefined) {
      throw new KoalaError(ErrorCode.CLOSED, `connection closed: ${this.closeReason.message}`, { cause: this.closeReason });
    }
  }

  /** Stands in for the network round trip of a one-sided access; one in flight fails with the close reason. */
  private async roundTrip(): Promise<void> {
    await new Promise<void>((r) => setImmediate(r));
    const reason = this.closeReason ?? (this.peer.isClosed ? new KoalaError(ErrorCode.PEER_CLOSED, "the peer closed the connection") : undefined);
    if (reason !== undefined) throw new KoalaError(reason.code, `connection closed: ${reason.message}`, { cause: reason });
  }
}

class MemoryListener extends QueuedListener implements Listener {
  readonly transport = "memory" as const;

  constructor(
    readonly address: string,
    readonly name: string,
    readonly options: ResolvedTransportOptions,
  ) {
    super();
  }

  incoming(connection: Connection): void {
    this.queue.push(connection);
  }

  get isClosed(): boolean {
    return this.queue.isClosed;
  }

  async close(): Promise<void> {
    if (listeners.get(this.name) === this) listeners.delete(this.name);
    this.queue.close();
  }
}

/** The in-process transport. */
export const memoryTransport: Transport = {
  name: "memory",
  unavailableReason: () => undefined,
  async listen(address: Address, options: ResolvedTransportOptions): Promise<Listener> {
    let name = address.path;
    if (name.endsWith(":0")) name = `${name.slice(0, -2)}:${nextPeerId++}`;
    if (listeners.has(name)) throw new KoalaError(ErrorCode.ADDRESS_IN_USE, `memory:${name} already has a listener`);
    const listener = new MemoryListener(formatAddress("memory", "", 0, name), name, options);
    listeners.set(name, listener);
    return listener;
  },
  async connect(address: Address, options: ResolvedTransportOptions): Promise<Connection> {
    await new Promise<void>((r) => setImmediate(r));
    const listener = listeners.get(address.path);
    if (listener === undefined || listener.isClosed) {
      throw new KoalaError(ErrorCode.CONNECTION_REFUSED, `connection refused: nothing listens at ${address.uri}`);
    }
    const clientName = formatAddress("memory", "", 0, `client-${nextPeerId++}`);
    const client = new MemoryConnection(clientName, listener.address, options);
    const server = new MemoryConnection(listener.address, clientName, listener.options);
    client.peer = server;
    server.peer = client;
    listener.incoming(server);
    return client;
  },
};
