/**
 * A transport {@link Connection} over a shared ring pair (ring.ts) and a Unix socket that
 * carries only wake-up bytes (PROTOCOL.md §7). Both ends use it: the application writes ring 0
 * and reads ring 1, the daemon the other way round.
 *
 * Sending copies a message's parts into the ring once (as a socket transport copies them into
 * the kernel) and calls `onWritten` at once, or lends the ring itself to encode into
 * (`reserve` / `commit`: no copy at all); when the ring is full the message waits in a queue
 * here, and `send` reports backpressure past `highWaterMarkBytes`. The peer is woken once per
 * tick that wrote, and only if it sleeps: after a tick that wrote, an end keeps looking at its
 * receive ring for the answer a while (poll.ts), so a call and its reply cost no wake-up at all. Receiving hands out views of the ring (`copyReceived: false`, the daemon,
 * which releases every message) or copies, a batch of records into one buffer (`true`, the
 * application: its RPC client never releases a response, PROTOCOL.md §4).
 */
import type { Socket } from "node:net";
import { ErrorCode, KoalaError } from "../errors.js";
import { Waiters } from "../fifo.js";
import { log } from "../log.js";
import { Inbox, InboxReader } from "../transport/inbox.js";
import type { Connection, ResolvedTransportOptions } from "../transport/index.js";
import { shmNative, socketFd, type ShmBinding } from "./native.js";
import { PollWindow, READ, WRITE, type PollSettings } from "./poll.js";
import { RingReader, RingWriter } from "./ring.js";

const WAKE = Buffer.from([1]);
/** Ring bytes a copying reader copies out at once before it looks at its inbox again (the inbox may overshoot its limit by this much). */
const COPY_BATCH_BYTES = 64 * 1024;

function tooLarge(bytes: number, limit: number): KoalaError {
  return new KoalaError(ErrorCode.MESSAGE_TOO_LARGE, `the peer sent a message of ${bytes} bytes; the limit is ${limit} (maxMessageBytes)`);
}

interface Queued {
  parts: readonly Uint8Array[];
  bytes: number;
  onWritten: (() => void) | undefined;
}

/** Settings of one end. */
export interface ShmConnectionInit {
  /** The mapping holding the ring pair. */
  readonly memory: ArrayBuffer;
  /** Bytes of each ring. */
  readonly ringBytes: number;
  /** "app" writes ring 0 and reads ring 1; "daemon" the other way. */
  readonly side: "app" | "daemon";
  /** The set-up socket, past the set-up exchange; `leftover` is what arrived after the answer line (wake-ups). */
  readonly socket: Socket;
  /** Copy each received record out of the ring and release it at once (for a reader that never releases). */
  readonly copyReceived: boolean;
  /** How long to keep looking at the empty receive ring before sleeping (poll.ts). */
  readonly poll: PollSettings;
  readonly localAddress: string;
  readonly remoteAddress: string;
  readonly options: ResolvedTransportOptions;
}

/** One end of a managed-mode connection. */
export class ShmConnection extends InboxReader implements Connection {
  readonly transport = "shm" as const;
  readonly localAddress: string;
  readonly remoteAddress: string;
  readonly options: ResolvedTransportOptions;
  protected readonly inbox: Inbox;
  private readonly writer: RingWriter;
  private readonly reader: RingReader;
  private readonly socket: Socket;
  private readonly copyReceived: boolean;
  private readonly poll: PollWindow;
  private readonly queue: Queued[] = [];
  private queuedBytes = 0;
  private readonly drainWaiters = new Waiters<void>();
  private closeReason: KoalaError | undefined;
  private resolveClosed!: (r: KoalaError) => void;
  readonly closed: Promise<KoalaError>;
  /** Reading from the ring stopped: the inbox is full. */
  private stopped = false;
  private pumping = false;
  /** A setImmediate turn that looks at the receive ring is scheduled. */
  private pollScheduled = false;
  /** Largest message either way: the ring's record limit, or maxMessageBytes if lower. */
  readonly maxMessageBytes: number;
  /** Wake-up bytes written (for tests and the benchmark: a busy ring writes few). */
  wakeupsSent = 0;
  /** Looks at the receive ring from a setImmediate turn (for tests: an idle end makes none). */
  pollTurns = 0;
  private readonly native: ShmBinding;
  private readonly fd: number;

  constructor(init: ShmConnectionInit) {
    super();
    this.localAddress = init.localAddress;
    this.remoteAddress = init.remoteAddress;
    this.options = init.options;
    const out = init.side === "app" ? 0 : 1;
    this.writer = new RingWriter(init.memory, out, init.ringBytes);
    this.reader = new RingReader(init.memory, out === 0 ? 1 : 0, init.ringBytes);
    this.maxMessageBytes = Math.min(init.options.maxMessageBytes, this.writer.maxRecordBytes);
    this.socket = init.socket;
    this.native = shmNative();
    this.fd = socketFd(init.socket);
    this.copyReceived = init.copyReceived;
    this.poll = new PollWindow(init.poll);
    this.closed = new Promise((r) => (this.resolveClosed = r));
    this.inbox = new Inbox(
      init.options.receiveQueueMessages,
      init.options.receiveQueueBytes,
      () => (this.stopped = true),
      () => {
        this.stopped = false;
        this.pump();
      },
      (err) => {
        log("error", "managed", `the message receiver of ${this.localAddress} threw; closing that connection: ${(err as Error)?.stack ?? String(err)}`);
        this.finish(new KoalaError(ErrorCode.RECEIVER_FAILED, `the message receiver threw: ${(err as Error)?.message ?? String(err)}`, { cause: err }), false);
      },
    );
    this.socket.on("data", this.onWake);
    this.socket.on("end", () => this.peerEnded());
    this.socket.on("error", (err) => this.peerEnded(err));
    this.socket.on("close", () => this.peerEnded());
    // Read what the peer published before this end existed, then sleep (telling the peer to wake it).
    this.pump();
  }

  /** Bytes free in the ring this end writes (the ring's available count). */
  get sendAvailable(): number {
    return this.writer.available;
  }

  /** Bytes published in the ring this end reads and not read yet. */
  get receiveAvailable(): number {
    return this.reader.available;
  }

  get isClosed(): boolean {
    return this.closeReason !== undefined;
  }

  get bufferedBytes(): number {
    return this.queuedBytes;
  }

  private readonly onWake = (): void => {
    if (this.closeReason !== undefined) return;
    this.flushQueue();
    this.pump();
  };

  private wakeScheduled = false;
  /** Records written since the last end-of-tick wake-up (the poll window hears of each tick's count). */
  private writtenThisTick = 0;

  /**
   * The peer hears of what this end wrote at the end of the tick (process.nextTick), not at each
   * record: everything a tick writes (the calls a batch of responses starts, the replies one
   * socket read carries) costs the peer one wake-up and is there in one piece when it looks.
   * Waking later than the tail store is still never a lost wake-up (the flag is taken after it).
   */
  private wakePeer(records = 1): void {
    this.writtenThisTick += records;
    if (this.wakeScheduled) return;
    this.wakeScheduled = true;
    process.nextTick(this.wakeNow);
  }

  private readonly wakeNow = (): void => {
    this.wakeScheduled = false;
    const written = this.writtenThisTick;
    this.writtenThisTick = 0;
    if (this.closeReason !== undefined) return;
    if (this.writer.takeConsumerAsleep()) this.sendWake();
    if (this.poll.off) return;
    // A tick that wrote expects an answer: look for it instead of sleeping on the wake-up byte.
    const now = performance.now();
    this.poll.note(WRITE, written, now);
    if (!this.pollScheduled && !this.pumping && !this.stopped && now < this.poll.deadline) {
      this.reader.awake();
      this.pollScheduled = true;
      setImmediate(this.pollAgain);
    }
  };

  /** One wake-up byte, unless the socket is gone (the peer then reads what is left as it closes). */
  private sendWake(): void {
    if (this.socket.writableEnded || this.socket.destroyed) return;
    this.wakeupsSent++;
    // One send(2) straight on the descriptor: Node's stream write costs several times more, per
    // wake-up. Nothing else is ever written on this socket after set-up, so bytes cannot interleave.
    if (this.fd >= 0) this.native.wake(this.fd);
    else this.socket.write(WAKE);
  }

  send(parts: readonly Uint8Array[], onWritten?: () => void): boolean {
    if (this.closeReason !== undefined) throw new KoalaError(ErrorCode.CLOSED, `send() on a closed connection: ${this.closeReason.message}`, { cause: this.closeReason });
    this.reserved = false;
    let bytes = 0;
    for (const p of parts) bytes += p.byteLength;
    if (bytes > this.maxMessageBytes) {
      throw new KoalaError(ErrorCode.MESSAGE_TOO_LARGE, `message of ${bytes} bytes exceeds ${bytes > this.writer.maxRecordBytes ? `the shared ring's record limit (${this.writer.maxRecordBytes}; raise ringBytes)` : `maxMessageBytes (${this.options.maxMessageBytes})`}`);
    }
    if (this.queue.length === 0) {
      let wrote: boolean;
      try {
        wrote = this.writer.write(parts);
      } catch (err) {
        this.finish(err as KoalaError, false);
        throw err;
      }
      if (wrote) {
        this.wakePeer();
        onWritten?.();
        return true;
      }
    }
    this.queue.push({ parts, bytes, onWritten });
    this.queuedBytes += bytes;
    if (this.queue.length === 1 && !this.writer.waitForSpace(this.writer.cost(bytes))) this.flushQueue();
    return this.queuedBytes <= this.options.highWaterMarkBytes;
  }

  /** Where the message of the last {@link reserve} starts in the buffer it returned (the ring). */
  reservedOffset = 0;
  private reserved = false;

  /**
   * Room for one message of `bytes` in the ring itself (Connection.reserve): the caller encodes
   * there, {@link commit} publishes it, and the message is never copied on this side. Undefined
   * (use `send()`) when messages wait for room, the ring has no room now, or the message is over
   * the limit (`send()` then says so).
   */
  reserve(bytes: number): Uint8Array | undefined {
    if (this.closeReason !== undefined) throw new KoalaError(ErrorCode.CLOSED, `reserve() on a closed connection: ${this.closeReason.message}`, { cause: this.closeReason });
    this.reserved = false;
    if (this.queue.length > 0 || bytes > this.maxMessageBytes) return undefined;
    let at: number;
    try {
      at = this.writer.reserveAt(bytes);
    } catch (err) {
      this.finish(err instanceof KoalaError ? err : new KoalaError(ErrorCode.PROTOCOL, String(err)), false);
      throw err;
    }
    if (at < 0) return undefined;
    this.reserved = true;
    this.reservedOffset = at;
    return this.writer.buffer;
  }

  /** Publishes the message written into the last {@link reserve}'s room. */
  commit(): boolean {
    if (!this.reserved) throw new KoalaError(ErrorCode.INVALID_ARGUMENT, "commit() without a reservation (none made, or a send() came in between)");
    this.reserved = false;
    if (this.closeReason !== undefined) throw new KoalaError(ErrorCode.CLOSED, `commit() on a closed connection: ${this.closeReason.message}`, { cause: this.closeReason });
    this.writer.commit();
    this.wakePeer();
    return true;
  }

  private flushQueue(): void {
    let wrote = 0;
    try {
      while (this.queue.length > 0) {
        const q = this.queue[0]!;
        if (!this.writer.write(q.parts)) {
          if (this.writer.waitForSpace(this.writer.cost(q.bytes))) break;
          continue;
        }
        wrote++;
        this.queue.shift();
        this.queuedBytes -= q.bytes;
        q.onWritten?.();
      }
    } catch (err) {
      this.finish(err instanceof KoalaError ? err : new KoalaError(ErrorCode.PROTOCOL, String(err)), false);
      return;
    }
    if (wrote > 0) {
      this.wakePeer(wrote);
      if (this.drainWaiters.length > 0 && this.queuedBytes <= this.options.highWaterMarkBytes / 2) this.drainWaiters.resolveAll(undefined);
    }
  }

  drain(): Promise<void> {
    if (this.closeReason !== undefined) return Promise.reject(this.closeReason);
    if (this.queuedBytes <= this.options.highWaterMarkBytes / 2) return Promise.resolve();
    return this.drainWaiters.wait();
  }

  /** Reads every published record into the inbox, then goes to sleep (or keeps looking, see `poll`). */
  private pump(): void {
    if (this.pumping || this.closeReason !== undefined && !this.draining) return;
    this.pumping = true;
    try {
      for (;;) {
        const before = this.readCount;
        if (this.copyReceived) {
          // Copied out in batches (one buffer per batch), a batch between two looks at the inbox.
          while (!this.stopped) {
            const copies = this.reader.copyOut(COPY_BATCH_BYTES);
            if (copies.length === 0) break;
            for (let i = 0; i < copies.length; i++) {
              const m = copies[i]!;
              if (m.byteLength > this.options.maxMessageBytes) throw tooLarge(m.byteLength, this.options.maxMessageBytes);
              this.inbox.push(m);
            }
            this.readCount += copies.length;
          }
        } else {
          while (!this.stopped) {
            const view = this.reader.read();
            if (view === undefined) break;
            if (view.byteLength > this.options.maxMessageBytes) throw tooLarge(view.byteLength, this.options.maxMessageBytes);
            this.readCount++;
            this.inbox.push(view);
          }
        }
        if (this.copyReceived && this.reader.takeProducerWaiting()) this.sendWake();
        if (this.stopped || this.closeReason !== undefined) break;
        if (!this.poll.off) {
          const now = performance.now();
          if (this.readCount !== before) this.poll.note(READ, this.readCount - before, now);
          if (now < this.poll.deadline) {
            if (!this.pollScheduled) {
              this.pollScheduled = true;
              setImmediate(this.pollAgain);
            }
            break;
          }
        }
        if (this.reader.sleep()) {
          this.poll.slept();
          break;
        }
      }
    } catch (err) {
      const reason = err instanceof KoalaError ? err : new KoalaError(ErrorCode.PROTOCOL, String(err));
      log("warn", "managed", `closing ${this.remoteAddress}: ${reason.message}`);
      this.pumping = false;
      this.finish(reason, false);
      return;
    }
    this.pumping = false;
  }

  /** Records read so far (the poll window hears of each batch). */
  private readCount = 0;

  private readonly pollAgain = (): void => {
    this.pollScheduled = false;
    this.pollTurns++;
    this.pump();
  };

  release(message: Uint8Array): void {
    if (this.copyReceived || this.closeReason !== undefined) return;
    this.reader.release(message);
    if (this.reader.takeProducerWaiting()) this.sendWake();
  }

  private draining = false;

  /** The socket ended: read what the peer published before it went, then close in order. */
  private peerEnded(err?: Error): void {
    if (this.closeReason !== undefined) return;
    this.draining = true;
    this.pump();
    this.draining = false;
    if (err !== undefined) this.finish(new KoalaError(ErrorCode.CONNECTION_RESET, `the daemon's set-up socket failed: ${err.message}`, { cause: err }), false);
    else this.finish(new KoalaError(ErrorCode.PEER_CLOSED, "the peer closed the connection"), true);
  }

  close(reason?: Error): void {
    if (this.closeReason !== undefined) return;
    // Records already in the ring are the peer's to read (it drains on the socket's end); only
    // messages still queued here are flushed first.
    if (reason === undefined && this.queue.length > 0) {
      void this.drainThenClose();
      return;
    }
    this.finish(reason === undefined ? new KoalaError(ErrorCode.CLOSED, "closed") : new KoalaError(ErrorCode.CLOSED, `closed: ${reason.message}`, { cause: reason }), reason === undefined);
  }

  private async drainThenClose(): Promise<void> {
    const deadline = Date.now() + this.options.closeLingerMs;
    while (this.queue.length > 0 && this.closeReason === undefined && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 1));
      this.flushQueue();
    }
    this.finish(new KoalaError(ErrorCode.CLOSED, "closed"), true);
  }

  private finish(reason: KoalaError, orderly: boolean): void {
    if (this.closeReason !== undefined) return;
    this.closeReason = reason;
    for (const q of this.queue.splice(0)) q.onWritten?.();
    this.queuedBytes = 0;
    this.drainWaiters.rejectAll(reason);
    this.inbox.close(reason, orderly);
    this.socket.off("data", this.onWake);
    if (orderly) this.socket.end();
    else this.socket.destroy();
    this.resolveClosed(reason);
  }

  registerRegion(): never {
    throw new KoalaError(ErrorCode.INVALID_ARGUMENT, "one-sided access is not offered over a managed-mode (shm) connection");
  }

  read(): Promise<Uint8Array> {
    return Promise.reject(new KoalaError(ErrorCode.INVALID_ARGUMENT, "one-sided access is not offered over a managed-mode (shm) connection"));
  }

  write(): Promise<void> {
    return Promise.reject(new KoalaError(ErrorCode.INVALID_ARGUMENT, "one-sided access is not offered over a managed-mode (shm) connection"));
  }
}
