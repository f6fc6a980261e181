/**
 * One RDMA connection: an RC queue pair speaking the koala RDMA protocol (PROTOCOL.md
 * section 6) over the Verbs interface only.
 *
 * - Receive: `RECV_DEPTH` buffers of `16 + KOALA_RNDV_THRESH` bytes, one lease of the context
 *   heap, all posted at start. Once the reader has called `release()`, a DATA message is handed
 *   up as a view of its buffer and the buffer is posted again on `release()`; before that, and
 *   while half the buffers are held by messages not yet released, messages are copied out and
 *   their buffers posted at once.
 * - Credits: a side sends only into buffers the peer has posted. Every message carries the
 *   credits its sender returns; a CREDIT message returns them when nothing else goes out.
 *   A message other than CREDIT is sent only while at least 2 credits remain, so the last one
 *   is always there for a CREDIT; CREDIT messages never cause a CREDIT in return unless the
 *   peer is out of credits and waiting. So receiver-not-ready does not happen.
 * - Messages up to the threshold are eager (inline when they fit); larger ones go by
 *   rendezvous: an RTS names the registered segments, the receiver RDMA-READs them into a
 *   lease of its own heap and answers DONE, and the sender then lets go of them.
 */
import { ErrorCode, KoalaError, check } from "../../errors.js";
import { log, logLimited } from "../../log.js";
import { IdTable } from "../../id-table.js";
import type { Lease } from "../../mem/lease.js";
import { randomBytes } from "node:crypto";
import { Inbox, InboxReader } from "../inbox.js";
import { checkRemoteAccess, type ByteSource, type RegionDescriptor, type RegisterRegionOptions, type RegisteredRegion } from "../regions.js";
import type { Connection, ResolvedTransportOptions } from "../types.js";
import type { CompletionSink, RdmaContext } from "./context.js";
import { Access, Opcode, SWR, SendFlags, WcOpcode, WcStatus, WorkBatch, wcStatusName, type CmId, type Mr, type Mw, type Qp } from "./verbs.js";

/** Bytes of the header in front of every message. */
export const HEADER_BYTES = 16;
/** Receive buffers each side posts. */
export const RECV_DEPTH = 16;
/** Most registered segments one RTS names; a message in more parts is copied into one lease. */
export const MAX_RNDV_SEGMENTS = 16;
/** Bytes of rendezvous messages a connection reads ahead of its reader (one message may be larger). */
export const RNDV_READ_AHEAD_BYTES = 16 * 1024 * 1024;
/** Inline sends one flush builds in the connection's inline area; more go through staging leases. */
const INLINE_SLOTS = 32;
/** One unsignaled inline send in this many is signaled (a quarter of the send queue). */
const SIGNAL_EVERY = 16;
/** Most RDMA READs a connection keeps outstanding. */
const MAX_READS = 32;
const RNDV_SEGMENT_BYTES = 16;

/** Message types (byte 0 of the header). */
export const MsgType = {
  DATA: 1,
  RTS: 2,
  DONE: 3,
  CREDIT: 4,
  CLOSE: 5,
  PACK: 6,
} as const;

/** Largest message packed with others into one SEND (a PACK); larger ones go alone. */
export const PACK_MESSAGE_MAX = 1024;
/** Bytes in front of each message inside a PACK: its u32 length. */
const PACK_ENTRY_BYTES = 4;

const MAGIC = 0x3144524b; // "KRD1"
const VERSION = 2;

/** What each side sends in the CM private data: protocol version, receive depth and buffer size. */
export function encodeHello(recvDepth: number, bufferBytes: number): Uint8Array {
  const b = Buffer.alloc(16);
  b.writeUInt32LE(MAGIC, 0);
  b.writeUInt16LE(VERSION, 4);
  b.writeUInt16LE(recvDepth, 6);
  b.writeUInt32LE(bufferBytes, 8);
  return b;
}

/** Reads a peer's private data; throws KOALA_ERR_PROTOCOL when it is not a koala RDMA hello. */
export function decodeHello(data: Uint8Array | undefined): { recvDepth: number; bufferBytes: number } {
  const b = data === undefined ? undefined : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  if (b === undefined || b.length < 16 || b.readUInt32LE(0) !== MAGIC) throw new KoalaError(ErrorCode.PROTOCOL, "the peer is not a koala RDMA endpoint (no koala hello in the CM private data)");
  if (b.readUInt16LE(4) !== VERSION) throw new KoalaError(ErrorCode.PROTOCOL, `the peer speaks koala RDMA protocol version ${b.readUInt16LE(4)}; this side speaks ${VERSION}`);
  const recvDepth = b.readUInt16LE(6);
  const bufferBytes = b.readUInt32LE(8);
  if (recvDepth < 4 || bufferBytes < HEADER_BYTES + 64) throw new KoalaError(ErrorCode.PROTOCOL, `the peer's receive depth ${recvDepth} or buffer size ${bufferBytes} is too small`);
  return { recvDepth, bufferBytes };
}

interface Outgoing {
  type: number;
  parts: readonly Uint8Array[];
  total: number;
  onWritten: (() => void) | undefined;
  /** Rendezvous or one-sided request id. */
  id: number;
  /** Bytes counted in bufferedBytes (DATA only). */
  counted: number;
  /** A PACK filled in place by commit() (type RUN): the lease holding its wire image, header room first. */
  lease?: Lease;
}

/** Send-queue entry of a PACK filled in place by reserve() / commit() (never on the wire: it goes out as a PACK). */
const RUN = 0x80;
const NO_PARTS: readonly Uint8Array[] = [];

interface SendOp {
  lease: Lease | undefined;
  onWritten: (() => void) | undefined;
  /** Bytes counted in bufferedBytes that this completion ends (unsignaled inline sends leave it when posted). */
  counted: number;
  read: Incoming | undefined;
  close: boolean;
  oneSided?: OneSidedOp;
  /** Unsignaled work requests posted before this one, since the last signaled one: its completion ends them too (the send queue completes in order). */
  covers: number;
}

/** A `read` / `write` on a peer's region: one RDMA READ or WRITE. */
interface OneSidedOp {
  opcode: number;
  /** Registered memory the data comes from or goes to (a copy, or the caller's bytes in place). */
  lease: Lease | undefined;
  addr: number;
  lkey: number;
  length: number;
  raddr: number;
  rkey: number;
  settle(err: KoalaError | undefined): void;
}

/** A region shared with the peer: a registration of its bytes and a window bound to this QP. */
interface Window {
  mr: Mr;
  mw: Mw;
}

/** A rendezvous message being read from the peer. */
interface Incoming {
  type: number;
  id: number;
  total: number;
  /** Where the message is read to; allocated when its first READ is posted. */
  lease: Lease | undefined;
  /** The receive buffer of the RTS, posted again (its credit returned) once the message is handed up. */
  slot: number;
  segments: number[];
  nextSegment: number;
  readsLeft: number;
  /** Its place in the arrival order. */
  arrival: Arrival | undefined;
}

interface Arrival {
  type: number;
  /** The receive buffer holding it (for a copied message of a PACK, posted again when it is handed up), or -1. */
  slot: number;
  /** A message of a PACK, already copied out of its buffer. */
  copied?: boolean;
  view: Uint8Array | undefined;
  rndv: Incoming | undefined;
  ready: boolean;
}

/** A sent rendezvous message waiting for the peer's DONE. */
interface Advertised {
  lease: Lease | undefined;
  onWritten: (() => void) | undefined;
  counted: number;
  /** The windows the peer reads through, one per segment, bound to this connection's QP. */
  windows: Mw[];
}

function callWritten(cb: (() => void) | undefined): void {
  if (cb === undefined) return;
  try {
    cb();
  } catch (err) {
    logLimited("transport.on-written-error", "error", "transport", `an onWritten callback threw: ${(err as Error)?.stack ?? String(err)}`);
  }
}

const noop = (): void => undefined;

/** Writes `v` as 4 little-endian bytes at `at`. */
function put32(into: Uint8Array, at: number, v: number): void {
  into[at] = v & 0xff;
  into[at + 1] = (v >>> 8) & 0xff;
  into[at + 2] = (v >>> 16) & 0xff;
  into[at + 3] = v >>> 24;
}

/** Copies `parts` one after another into `into` from `at`; returns where they end. */
function copyParts(into: Uint8Array, at: number, parts: readonly Uint8Array[]): number {
  for (let i = 0; i < parts.length; i++) {
    into.set(parts[i]!, at);
    at += parts[i]!.byteLength;
  }
  return at;
}

const CREDIT_MESSAGE: Outgoing = { type: MsgType.CREDIT, parts: [], total: 0, onWritten: undefined, id: 0, counted: 0 };

/** An RDMA connection (see the module comment). */
export class RdmaConnection extends InboxReader implements Connection, CompletionSink {
  readonly transport = "rdma" as const;
  readonly closed: Promise<KoalaError>;
  private resolveClosed!: (r: KoalaError) => void;
  private reason: KoalaError | undefined;
  private tornDown = false;
  protected readonly inbox: Inbox;
  private inboxFull = false;
  private closeArrived = false;

  // Receive side.
  private readonly area: Lease;
  private readonly areaBytes: Uint8Array;
  /** Over the whole receive area: headers are read through it, with no view per message. */
  private readonly areaView: DataView;
  private readonly areaAddr: number;
  private readonly areaLkey: number;
  private readonly slotBytes: number;
  private heldSlots = 0;
  /**
   * Whether messages are handed up as views of receive memory: only once the reader has called
   * release(). Before that they are copies, so a reader that never releases pins nothing.
   */
  private lending = false;
  /** The view lent to the reader for each receive buffer, until released. */
  private readonly lent: (Uint8Array | undefined)[] = new Array<Uint8Array | undefined>(RECV_DEPTH).fill(undefined);
  private readonly ownedLeases = new Map<Uint8Array, Lease>();
  private readonly arrivals: Arrival[] = [];
  private arrivalHead = 0;
  private readonly recvBatch = new WorkBatch(RECV_DEPTH);
  private readonly reading: Incoming[] = [];
  private readsOut = 0;
  /** Bytes of rendezvous messages being read or read and not yet handed up. */
  private readAhead = 0;

  // Credits.
  private credits: number;
  private owed = 0;
  private owedData = 0;
  /** The peer's credits for this side's buffers, as far as this side knows. */
  private peerView = RECV_DEPTH;
  private peerBufferBytes: number;

  // Send side.
  private readonly outq: Outgoing[] = [];
  private outHead = 0;
  private readonly sendBatch = new WorkBatch(64);
  private readonly sendOps = new IdTable<SendOp>();
  /**
   * Registered memory for the inline sends of one flush: a header and a small message copied
   * into a slot, which the provider copies again at post time, so every slot is free once the
   * batch is posted. No lease per message, and no completion: inline sends go unsignaled and
   * the next signaled work request's completion ends them.
   */
  private readonly inlineArea: Lease | undefined;
  private readonly inlineBytes: Uint8Array | undefined;
  private readonly inlineAddr: number = 0;
  private readonly inlineLkey: number = 0;
  /** Bytes of an inline slot (0: the queue pair has no inline room for a header and a byte). */
  private readonly inlineSlotBytes: number = 0;
  private inlineUsed = 0;
  /**
   * Unsignaled work requests posted or being built that no signaled one after them covers yet.
   * They may span batches: one in SIGNAL_EVERY is signaled, so a lone small call does not wake
   * the event loop a second time for its send's completion.
   */
  private unsignaled = 0;
  /** Counted bytes of the inline sends of the batch being built: out of bufferedBytes once it is posted (the provider copied them). */
  private postedBytes = 0;
  /** SIGNAL_EVERY, or a quarter of a smaller send queue. */
  private readonly signalEvery: number;
  /** onWritten of inline sends: called once their batch is posted (the provider has copied the bytes). */
  private readonly postedCallbacks: (() => void)[] = [];
  private nextWrId = RECV_DEPTH;
  private sqUsed = 0;
  private readonly maxSendWr: number;
  private buffered = 0;
  private flushScheduled = false;
  /** Set while flush() runs: a send from a callback it calls only queues (the running flush takes it). */
  private flushing = false;
  /** Bytes of small (packable) messages queued since the last flush (the eager flush rule in enqueue). */
  private queuedBytes = 0;
  private readonly flushBound = (): void => this.flush();
  private drainWaiters: { resolve: () => void; reject: (e: unknown) => void }[] = [];
  private readonly advertised = new IdTable<Advertised>();
  private nextId = 1;
  private closeSent = false;
  private readonly windows = new Set<Window>();
  private readonly oneSidedQueue: OneSidedOp[] = [];
  private disconnectSeen = false;
  private lingerTimer: NodeJS.Timeout | undefined;

  /** Rendezvous threshold in bytes: larger messages go by RTS. */
  readonly rndvThreshBytes: number;

  /**
   * Takes over `qp` on connection `id`; posts every receive buffer at once (call before the
   * connection is accepted or connected). `peer` comes from the peer's hello (set later with
   * {@link RdmaConnection.setPeer} on the connecting side).
   */
  constructor(
    private readonly ctx: RdmaContext,
    readonly id: CmId,
    readonly qp: Qp,
    readonly options: ResolvedTransportOptions,
    private readonly localFallback: string,
    private readonly remoteFallback: string,
    peer: { recvDepth: number; bufferBytes: number } | undefined,
  ) {
    super();
    this.closed = new Promise((r) => (this.resolveClosed = r));
    this.rndvThreshBytes = ctx.selection.config.rndvThreshBytes;
    this.slotBytes = HEADER_BYTES + this.rndvThreshBytes;
    this.maxSendWr = qp.caps.maxSendWr;
    this.signalEvery = Math.max(1, Math.min(SIGNAL_EVERY, Math.floor(this.maxSendWr / 4)));
    this.credits = peer?.recvDepth ?? 0;
    this.peerBufferBytes = peer?.bufferBytes ?? this.slotBytes;
    this.area = ctx.receiveHeap.alloc(RECV_DEPTH * this.slotBytes);
    this.areaBytes = this.area.bytes;
    this.areaView = new DataView(this.areaBytes.buffer, this.areaBytes.byteOffset, this.areaBytes.byteLength);
    const where = ctx.locate(this.areaBytes)!;
    this.areaAddr = where.addr;
    this.areaLkey = where.lkey;
    const inlineSlot = Math.min(qp.caps.maxInlineData, HEADER_BYTES + this.rndvThreshBytes) & ~7;
    if (inlineSlot > HEADER_BYTES) {
      this.inlineArea = ctx.heap.alloc(INLINE_SLOTS * inlineSlot);
      this.inlineBytes = this.inlineArea.bytes;
      const at = ctx.locate(this.inlineBytes)!;
      this.inlineAddr = at.addr;
      this.inlineLkey = at.lkey;
      this.inlineSlotBytes = inlineSlot;
    }
    this.inbox = new Inbox(
      options.receiveQueueMessages,
      options.receiveQueueBytes,
      () => (this.inboxFull = true),
      () => {
        this.inboxFull = false;
        setImmediate(() => {
          this.processArrivals();
          this.scheduleFlush();
        });
      },
      (err) => {
        logLimited("transport.receiver-error", "error", "transport", `the message receiver of ${this.localAddress} threw; closing that connection: ${(err as Error)?.stack ?? String(err)}`);
        this.abort(new KoalaError(ErrorCode.RECEIVER_FAILED, `the message receiver threw: ${(err as Error)?.message ?? String(err)}`, { cause: err }));
      },
    );
    // Refused here (the thread's CQ cannot grow, receives cannot be posted): nothing of this
    // connection stays behind in the context; the caller destroys the QP and identifier.
    let attached = false;
    try {
      ctx.attach(qp.qpNum, this, qp.caps.maxSendWr + qp.caps.maxRecvWr);
      attached = true;
      for (let slot = 0; slot < RECV_DEPTH; slot++) this.addRecv(slot);
      ctx.verbs.postRecv(qp, this.recvBatch);
      this.recvBatch.reset();
    } catch (err) {
      if (attached) ctx.detach(qp.qpNum, qp.caps.maxSendWr + qp.caps.maxRecvWr);
      this.area.release();
      this.inlineArea?.release();
      throw err;
    }
  }

  /** Completes the connecting side's setup with the peer's hello (credits and buffer size). */
  setPeer(peer: { recvDepth: number; bufferBytes: number }): void {
    this.credits = peer.recvDepth;
    this.peerBufferBytes = peer.bufferBytes;
  }

  /** This end's address: what the connection manager reports, once known. */
  get localAddress(): string {
    return this.id.localAddress || this.localFallback;
  }

  /** The other end's address. */
  get remoteAddress(): string {
    return this.id.remoteAddress || this.remoteFallback;
  }

  get isClosed(): boolean {
    return this.reason !== undefined;
  }

  get bufferedBytes(): number {
    return this.buffered;
  }

  // ---- send ---------------------------------------------------------------------------

  send(parts: readonly Uint8Array[], onWritten?: () => void): boolean {
    if (this.reason !== undefined) throw this.closedError("send()");
    let total = 0;
    for (let i = 0; i < parts.length; i++) total += parts[i]!.byteLength;
    if (total > this.options.maxMessageBytes) {
      throw new KoalaError(ErrorCode.MESSAGE_TOO_LARGE, `message of ${total} bytes exceeds maxMessageBytes (${this.options.maxMessageBytes})`);
    }
    // Received memory sent on (an echo, a forward) is made safe now: its reader may release it
    // the moment send() returns, and the transport would reuse it before the message leaves.
    let ps = parts;
    for (let i = 0; i < parts.length; i++) {
      const p = parts[i]!;
      if (p.byteLength === 0 || !this.ctx.isReceiveMemory(p)) continue;
      if (ps === parts) ps = parts.slice();
      const lease = this.ctx.lentLeases.get(p);
      if (lease === undefined) {
        (ps as Uint8Array[])[i] = p.slice();
        continue;
      }
      // A whole rendezvous message: hold its lease until written instead of copying it.
      lease.retain();
      const caller = onWritten;
      onWritten = () => {
        lease.release();
        caller?.();
      };
    }
    this.buffered += total;
    this.enqueue(MsgType.DATA, ps, total, onWritten, 0, total);
    return this.buffered <= this.options.highWaterMarkBytes;
  }

  // In-place sends: a small message is encoded straight into the PACK being filled, a lease of
  // the registered heap whose bytes are that PACK's wire image (each message behind its u32
  // length, room for the header in front). No frame buffer, send-queue entry or copy per message:
  // the PACK joins the send queue as one entry when it is full or something else is queued, and
  // goes out from where it is (or, when it fits, copied once into the inline area).
  private run: Lease | undefined;
  private runBytes: Uint8Array | undefined;
  /** Bytes of the run used so far, header room included. */
  private runLen = 0;
  private runCount = 0;
  private runCounted = 0;
  private reserving = false;
  private reservedBytes = 0;
  /** Where the reserved message starts in the buffer reserve() returned. */
  reservedOffset = 0;

  reserve(bytes: number): Uint8Array | undefined {
    if (this.reason !== undefined) throw this.closedError("reserve()");
    this.reserving = false;
    if (bytes > PACK_MESSAGE_MAX || bytes > this.options.maxMessageBytes || HEADER_BYTES + PACK_ENTRY_BYTES + bytes > this.peerBufferBytes) return undefined;
    if (this.run !== undefined && this.runLen + PACK_ENTRY_BYTES + bytes > this.peerBufferBytes) {
      this.cutRun();
      // A full PACK goes out now, as a burst of sent messages does (see enqueue).
      if (!this.flushing && !this.tornDown) this.flush();
      if (this.reason !== undefined) throw this.closedError("reserve()");
    }
    if (this.run === undefined) {
      try {
        this.run = this.ctx.heap.alloc(this.peerBufferBytes);
      } catch {
        return undefined; // no heap memory now (or it is closing): send() takes the message and reports what is wrong
      }
      this.runBytes = this.run.bytes;
      this.runLen = HEADER_BYTES;
      this.runCount = 0;
      this.runCounted = 0;
    }
    this.reserving = true;
    this.reservedBytes = bytes;
    this.reservedOffset = this.runLen + PACK_ENTRY_BYTES;
    return this.runBytes;
  }

  commit(): boolean {
    if (!this.reserving) throw new KoalaError(ErrorCode.INVALID_ARGUMENT, "commit() without a reservation (none made, or a send() came in between)");
    this.reserving = false;
    if (this.reason !== undefined) throw this.closedError("commit()");
    const bytes = this.reservedBytes;
    put32(this.runBytes!, this.runLen, bytes);
    this.runLen += PACK_ENTRY_BYTES + bytes;
    this.runCount++;
    this.runCounted += bytes;
    this.buffered += bytes;
    this.scheduleFlush();
    return this.buffered <= this.options.highWaterMarkBytes;
  }

  /** Moves the PACK being filled into the send queue, so that what is queued after it goes after it. */
  private cutRun(): void {
    const lease = this.run;
    if (lease === undefined) return;
    this.reserving = false; // a reservation in it is cancelled
    this.run = this.runBytes = undefined;
    if (this.runCount === 0) {
      lease.release();
      return;
    }
    this.outq.push({ type: RUN, parts: NO_PARTS, total: this.runLen, onWritten: undefined, id: this.runCount, counted: this.runCounted, lease });
  }

  private enqueue(type: number, parts: readonly Uint8Array[], total: number, onWritten: (() => void) | undefined, id: number, counted: number): void {
    this.reserving = false;
    this.cutRun();
    this.outq.push({ type, parts, total, onWritten, id, counted });
    // A burst of small messages that already fills a PACK goes out now, not at the tick's end:
    // the peer starts on it while this side produces the rest (as writeEagerBytes does on
    // sockets). Larger messages go one per SEND anyway; flushing early for them only adds posts
    // (a 4 KiB echo lost half its rate).
    if (total <= PACK_MESSAGE_MAX) this.queuedBytes += PACK_ENTRY_BYTES + total;
    if (this.queuedBytes >= this.peerBufferBytes && !this.flushing && !this.tornDown) this.flush();
    else this.scheduleFlush();
  }

  private scheduleFlush(): void {
    if (this.flushScheduled || this.tornDown) return;
    this.flushScheduled = true;
    process.nextTick(this.flushBound);
  }

  drain(): Promise<void> {
    if (this.reason !== undefined) {
      const p = Promise.reject(this.reason);
      p.catch(noop);
      return p;
    }
    if (this.buffered <= this.options.highWaterMarkBytes / 2) return Promise.resolve();
    return new Promise((resolve, reject) => this.drainWaiters.push({ resolve, reject }));
  }

  private unbuffer(bytes: number): void {
    if (bytes === 0) return;
    this.buffered -= bytes;
    if (this.drainWaiters.length > 0 && this.buffered <= this.options.highWaterMarkBytes / 2) {
      const ws = this.drainWaiters;
      this.drainWaiters = [];
      for (const w of ws) w.resolve();
    }
  }

  /** Posts the receives and sends of this tick, as credits and the send queue allow. */
  private flush(): void {
    this.flushScheduled = false;
    if (this.tornDown) return;
    const v = this.ctx.verbs;
    this.flushing = true;
    this.queuedBytes = 0;
    this.cutRun();
    try {
      if (this.recvBatch.count > 0) {
        // Receives first: the credits that go out below count them.
        v.postRecv(this.qp, this.recvBatch);
        this.recvBatch.reset();
      }
      const batch = this.sendBatch;
      let sent = 0;
      while (this.outHead < this.outq.length && this.credits >= 2 && this.sqUsed < this.maxSendWr) {
        if (this.outHead + 1 < this.outq.length && this.packable(this.outq[this.outHead]!) && this.packable(this.outq[this.outHead + 1]!)) {
          this.buildPack();
        } else {
          const m = this.outq[this.outHead]!;
          this.outq[this.outHead++] = undefined as never;
          this.build(m);
        }
        sent++;
      }
      if (this.outHead === this.outq.length) {
        this.outq.length = 0;
        this.outHead = 0;
      }
      this.startReads();
      this.startOneSided();
      if (sent === 0 && this.shouldReturnCredits()) this.build(CREDIT_MESSAGE);
      if (batch.count > 0) {
        if (this.unsignaled >= this.signalEvery) this.signalLast();
        v.postSend(this.qp, batch);
        batch.reset();
        this.inlineUsed = 0;
        if (this.postedCallbacks.length > 0) for (const cb of this.postedCallbacks.splice(0)) callWritten(cb);
        const posted = this.postedBytes;
        this.postedBytes = 0;
        this.unbuffer(posted);
      }
    } catch (err) {
      this.sendBatch.reset();
      this.inlineUsed = 0;
      this.postedBytes = 0;
      this.abort(err instanceof KoalaError ? err : new KoalaError(ErrorCode.SYSTEM, `RDMA send path failed: ${(err as Error).message}`, { cause: err }));
    } finally {
      this.flushing = false;
    }
  }

  /**
   * Whether to send a CREDIT message now: credits are owed for data the peer sent and either
   * enough have gathered or the peer is running out; or the peer has none at all while this
   * side waits for credits itself.
   */
  private shouldReturnCredits(): boolean {
    if (this.owed === 0 || this.credits < 1 || this.sqUsed >= this.maxSendWr) return false;
    if (this.owedData > 0 && (this.owed >= RECV_DEPTH / 4 || this.peerView <= 2)) return true;
    return this.outHead < this.outq.length && this.peerView === 0;
  }

  /** Writes the header of a message of `type` into `into` at `at` (little-endian, byte by byte: no view per message). */
  private header(into: Uint8Array, type: number, length: number, id: number, aux: number, at = 0): void {
    const give = Math.min(this.owed, 0xffff);
    this.owed -= give;
    this.peerView += give;
    if (this.owed === 0) this.owedData = 0;
    into[at] = type;
    into[at + 1] = 0;
    into[at + 2] = give & 0xff;
    into[at + 3] = give >>> 8;
    put32(into, at + 4, length);
    put32(into, at + 8, id);
    put32(into, at + 12, aux);
  }

  /**
   * Records a signaled work request: it covers the unsignaled ones built before it since the
   * last signaled one (their send-queue slots end with its completion).
   */
  private track(wrId: number, op: SendOp): void {
    op.covers = this.unsignaled;
    this.unsignaled = 0;
    this.sendOps.set(wrId, op);
  }

  /**
   * SIGNAL_EVERY unsignaled sends are waiting, the last of them in this batch: that one is
   * signaled after all, and its completion frees their send-queue slots.
   */
  private signalLast(): void {
    const b = this.sendBatch;
    const at = (b.count - 1) * SWR.STRIDE;
    b.wr[at + SWR.FLAGS] = b.wr[at + SWR.FLAGS]! | SendFlags.SIGNALED;
    // The last one is itself one of the unsignaled: it covers the others.
    this.unsignaled--;
    this.track(b.wr[at + SWR.WR_ID]!, { lease: undefined, onWritten: undefined, counted: 0, read: undefined, close: false, covers: 0 });
  }

  /** Turns one outgoing message into a work request of the send batch. */
  private build(m: Outgoing): void {
    const heap = this.ctx.heap;
    const batch = this.sendBatch;
    const wrId = this.nextWrId++;
    this.credits--;
    this.sqUsed++;
    if (m.type === RUN) {
      this.buildRun(m, wrId);
      return;
    }
    if (HEADER_BYTES + m.total > this.peerBufferBytes || m.total > this.rndvThreshBytes) {
      this.buildRts(m, wrId);
      return;
    }
    const size = HEADER_BYTES + m.total;
    if (size <= this.inlineSlotBytes && this.inlineUsed < INLINE_SLOTS && m.type !== MsgType.CLOSE) {
      // Small: copied into the inline area, sent inline and unsignaled (see inlineArea).
      const at = this.inlineUsed++ * this.inlineSlotBytes;
      this.header(this.inlineBytes!, m.type, m.total, m.id, 0, at);
      copyParts(this.inlineBytes!, at + HEADER_BYTES, m.parts);
      this.addInline(wrId, at, size, m.counted);
      if (m.onWritten !== undefined) this.postedCallbacks.push(m.onWritten);
      return;
    }
    const op: SendOp = { lease: undefined, onWritten: m.onWritten, counted: m.counted, read: undefined, close: m.type === MsgType.CLOSE, covers: 0 };
    // Scatter-gather: the header from a staging lease, then each part in place when every
    // part lies in registered memory and they fit in max_sge; otherwise one copy.
    const direct = m.parts.length > 0 && m.parts.length + 1 <= this.qp.caps.maxSendSge && size > this.qp.caps.maxInlineData && m.parts.every((p) => this.inPlace(p));
    const staging = heap.alloc(direct ? HEADER_BYTES : size);
    const bytes = staging.bytes;
    this.header(bytes, m.type, m.total, m.id, 0);
    const head = this.ctx.locate(bytes)!;
    batch.addSge(head.addr, bytes.byteLength, head.lkey);
    let sges = 1;
    if (direct) {
      for (const p of m.parts) {
        if (p.byteLength === 0) continue;
        const where = this.ctx.locate(p)!;
        batch.addSge(where.addr, p.byteLength, where.lkey);
        sges++;
      }
    } else {
      copyParts(bytes, HEADER_BYTES, m.parts);
    }
    // Inline when it fits (a CLOSE, or the inline area full this flush): the staging lease goes at the completion.
    const flags = !direct && size <= this.qp.caps.maxInlineData ? SendFlags.SIGNALED | SendFlags.INLINE : SendFlags.SIGNALED;
    op.lease = staging;
    if (!direct) {
      // Copied: the caller's parts are free now.
      callWritten(m.onWritten);
      op.onWritten = undefined;
    }
    batch.addSend(wrId, Opcode.SEND, flags, sges);
    this.track(wrId, op);
  }

  /**
   * Whether a part can be sent from where it is: it lies in registered memory that the sender
   * owns. Received memory (a message being sent on) is copied: its reader may release it as
   * soon as send() returns, and the buffer would be reused under the transfer.
   */
  private inPlace(p: Uint8Array): boolean {
    return p.byteLength === 0 || (this.ctx.locate(p) !== undefined && !this.ctx.isReceiveMemory(p));
  }

  /** Whether `m` may share a SEND with other small messages (a PACK). */
  private packable(m: Outgoing): boolean {
    return m.type === MsgType.DATA && m.total <= PACK_MESSAGE_MAX && HEADER_BYTES + PACK_ENTRY_BYTES + m.total <= this.peerBufferBytes;
  }

  /**
   * Sends the queued small DATA messages from `outHead` on, as many as fit the peer's buffer,
   * in one SEND: a PACK whose payload is each message behind its u32 length. One credit, one
   * work request and at most one completion for all of them; the bytes are copied, so each
   * message's onWritten runs at once (inline: once the batch is posted).
   */
  private buildPack(): void {
    const q = this.outq;
    let end = this.outHead;
    let size = HEADER_BYTES;
    while (end < q.length && this.packable(q[end]!) && size + PACK_ENTRY_BYTES + q[end]!.total <= this.peerBufferBytes) {
      size += PACK_ENTRY_BYTES + q[end]!.total;
      end++;
    }
    const count = end - this.outHead;
    const wrId = this.nextWrId++;
    this.credits--;
    this.sqUsed++;
    const inline = size <= this.inlineSlotBytes && this.inlineUsed < INLINE_SLOTS;
    const staging = inline ? undefined : this.ctx.heap.alloc(size);
    const into = inline ? this.inlineBytes! : staging!.bytes;
    const base = inline ? this.inlineUsed++ * this.inlineSlotBytes : 0;
    this.header(into, MsgType.PACK, size - HEADER_BYTES, count, 0, base);
    let at = base + HEADER_BYTES;
    let counted = 0;
    for (let k = this.outHead; k < end; k++) {
      const m = q[k]!;
      q[k] = undefined as never;
      put32(into, at, m.total);
      at = copyParts(into, at + PACK_ENTRY_BYTES, m.parts);
      counted += m.counted;
      // Copied: free once posted (inline), or now.
      if (m.onWritten !== undefined) {
        if (inline) this.postedCallbacks.push(m.onWritten);
        else callWritten(m.onWritten);
      }
    }
    this.outHead = end;
    if (inline) return this.addInline(wrId, base, size, counted);
    const w = this.ctx.locate(into)!;
    this.sendBatch.addSge(w.addr, size, w.lkey);
    this.sendBatch.addSend(wrId, Opcode.SEND, size <= this.qp.caps.maxInlineData ? SendFlags.SIGNALED | SendFlags.INLINE : SendFlags.SIGNALED, 1);
    this.track(wrId, { lease: staging, onWritten: undefined, counted, read: undefined, close: false, covers: 0 });
  }

  /** Sends a PACK filled in place (see reserve): its header now (it carries the credits returned), then from its lease, or inline. */
  private buildRun(m: Outgoing, wrId: number): void {
    const lease = m.lease!;
    const bytes = lease.bytes;
    const size = m.total;
    this.header(bytes, MsgType.PACK, size - HEADER_BYTES, m.id, 0, 0);
    if (size <= this.inlineSlotBytes && this.inlineUsed < INLINE_SLOTS) {
      const at = this.inlineUsed++ * this.inlineSlotBytes;
      this.inlineBytes!.set(new Uint8Array(bytes.buffer, bytes.byteOffset, size), at);
      lease.release();
      this.addInline(wrId, at, size, m.counted);
      return;
    }
    const w = this.ctx.locate(bytes)!;
    this.sendBatch.addSge(w.addr, size, w.lkey);
    this.sendBatch.addSend(wrId, Opcode.SEND, size <= this.qp.caps.maxInlineData ? SendFlags.SIGNALED | SendFlags.INLINE : SendFlags.SIGNALED, 1);
    this.track(wrId, { lease, onWritten: undefined, counted: m.counted, read: undefined, close: false, covers: 0 });
  }

  /** Adds the inline send of `size` bytes at `at` of the inline area, unsignaled; its `counted` bytes leave bufferedBytes once posted. */
  private addInline(wrId: number, at: number, size: number, counted: number): void {
    this.sendBatch.addSge(this.inlineAddr + at, size, this.inlineLkey);
    this.sendBatch.addSend(wrId, Opcode.SEND, SendFlags.INLINE, 1);
    this.unsignaled++;
    this.postedBytes += counted;
  }

  /** Sends `m` by rendezvous: an RTS naming registered segments the peer reads. */
  private buildRts(m: Outgoing, wrId: number): void {
    const ctx = this.ctx;
    const segs: { addr: number; len: number; mr: Mr }[] = [];
    let lease: Lease | undefined;
    let onWritten = m.onWritten;
    const inPlace = m.parts.length <= MAX_RNDV_SEGMENTS && m.parts.every((p) => this.inPlace(p));
    if (inPlace) {
      // Zero copy: the parts already live in registered memory; they stay untouched until DONE.
      for (const p of m.parts) {
        if (p.byteLength === 0) continue;
        const w = ctx.locate(p)!;
        segs.push({ addr: w.addr, len: p.byteLength, mr: w.mr });
      }
    } else {
      lease = ctx.heap.alloc(m.total);
      const bytes = lease.bytes;
      copyParts(bytes, 0, m.parts);
      const w = ctx.locate(bytes)!;
      segs.push({ addr: w.addr, len: m.total, mr: w.mr });
      callWritten(onWritten);
      onWritten = undefined;
    }
    const id = this.nextId++;
    // Each segment is exposed through a window over exactly its bytes, on this QP only, until
    // DONE: the peer can read nothing else of the slab, and no other connection can read it.
    const windows = segs.map((s) => ctx.verbs.bindMw(this.qp, s.mr, s.addr, s.len, Access.REMOTE_READ));
    this.advertised.set(id, { lease, onWritten, counted: m.counted, windows });
    const size = HEADER_BYTES + 4 + segs.length * RNDV_SEGMENT_BYTES;
    const staging = ctx.heap.alloc(size);
    const b = staging.bytes;
    this.header(b, MsgType.RTS, m.total, id, m.type);
    const v = new DataView(b.buffer, b.byteOffset, size);
    v.setUint32(HEADER_BYTES, segs.length, true);
    segs.forEach((s, i) => {
      const at = HEADER_BYTES + 4 + i * RNDV_SEGMENT_BYTES;
      v.setFloat64(at, s.addr, true);
      v.setUint32(at + 8, windows[i]!.rkey, true);
      v.setUint32(at + 12, s.len, true);
    });
    const w = ctx.locate(b)!;
    this.sendBatch.addSge(w.addr, size, w.lkey);
    this.sendBatch.addSend(wrId, Opcode.SEND, SendFlags.SIGNALED, 1);
    // The RTS itself stays counted until DONE through `advertised`; its staging lease goes at its completion.
    this.track(wrId, { lease: staging, onWritten: undefined, counted: 0, read: undefined, close: false, covers: 0 });
  }

  /** Posts RDMA READs for rendezvous messages, as the send queue allows. */
  private startReads(): void {
    const batch = this.sendBatch;
    // A reader that has stopped reading gets no more rendezvous data either (memory stays bounded).
    if (this.inboxFull && !this.closeArrived) return;
    while (this.reading.length > 0 && this.readsOut < MAX_READS && this.sqUsed < this.maxSendWr) {
      const inc = this.reading[0]!;
      if (inc.lease === undefined) {
        // Memory taken for messages read but not yet handed up stays bounded, whatever the peer announces.
        if (this.readAhead > 0 && this.readAhead + inc.total > RNDV_READ_AHEAD_BYTES) return;
        this.readAhead += inc.total;
        try {
          inc.lease = this.ctx.receiveHeap.alloc(inc.total);
        } catch (err) {
          throw new KoalaError(ErrorCode.OUT_OF_MEMORY, `no registered memory for a ${inc.total}-byte message from ${this.remoteAddress}: ${(err as Error).message}`, { cause: err });
        }
      }
      const k = inc.nextSegment++;
      const seg = inc.segments;
      const addr = seg[k * 3]!;
      const rkey = seg[k * 3 + 1]!;
      const len = seg[k * 3 + 2]!;
      let offset = 0;
      for (let j = 0; j < k; j++) offset += seg[j * 3 + 2]!;
      const dst = inc.lease.bytes.subarray(offset, offset + len);
      const w = this.ctx.locate(dst)!;
      const wrId = this.nextWrId++;
      batch.addSge(w.addr, len, w.lkey);
      batch.addSend(wrId, Opcode.RDMA_READ, SendFlags.SIGNALED, 1, 0, addr, rkey);
      this.track(wrId, { lease: undefined, onWritten: undefined, counted: 0, read: inc, close: false, covers: 0 });
      this.sqUsed++;
      this.readsOut++;
      if (inc.nextSegment * 3 >= seg.length) this.reading.shift();
    }
  }

  // ---- completions --------------------------------------------------------------------

  onCompletion(wrId: number, status: number, opcode: number, byteLen: number, _imm: number): void {
    if (this.tornDown) return;
    if (opcode === WcOpcode.RECV || opcode === WcOpcode.RECV_RDMA_WITH_IMM || (status !== WcStatus.SUCCESS && wrId < RECV_DEPTH)) {
      if (status !== WcStatus.SUCCESS) return this.completionError(status, "receive", wrId);
      this.onReceive(wrId, byteLen);
      return;
    }
    const op = this.sendOps.get(wrId);
    // A failed work request stays listed: the teardown that follows releases it with the rest,
    // after the close reason is set (so drain() waiters see the reason, not a drained queue).
    // An unsignaled one (not listed) reports its failure too: errors always complete.
    if (status !== WcStatus.SUCCESS) return this.completionError(status, op?.read !== undefined ? "RDMA READ" : op?.oneSided !== undefined ? "one-sided" : "send", wrId);
    if (op === undefined) return;
    this.sendOps.delete(wrId);
    this.sqUsed -= 1 + op.covers;
    op.lease?.release();
    callWritten(op.onWritten);
    this.unbuffer(op.counted);
    op.oneSided?.settle(undefined);
    if (op.read !== undefined) {
      this.readsOut--;
      if (--op.read.readsLeft === 0) this.readDone(op.read);
    }
    if (op.close) {
      this.closeSent = true;
      this.maybeFinishClose();
    }
    if (this.outHead < this.outq.length || this.reading.length > 0) this.scheduleFlush();
  }

  private completionError(status: number, what: string, wrId = -1): void {
    if (status === WcStatus.WR_FLUSH_ERR) {
      // A flush follows the cause: this side's teardown, an error already reported, or the
      // peer's disconnect, whose event decides how the connection ended.
      if (this.reason === undefined) this.onDisconnected("the queue pair went to the error state");
      return;
    }
    const op = this.sendOps.get(wrId);
    const err =
      status === WcStatus.REM_ACCESS_ERR && op?.oneSided !== undefined
        ? new KoalaError(
            ErrorCode.REMOTE_ACCESS_DENIED,
            `the peer's NIC refused an RDMA ${op.oneSided.opcode === Opcode.RDMA_READ ? "READ" : "WRITE"} of ${op.oneSided.length} bytes (REM_ACCESS_ERR: a key unknown on this connection or revoked, outside the region, or not permitted); the queue pair is in the error state and the connection is closed`,
          )
        : status === WcStatus.RNR_RETRY_EXC_ERR
        ? new KoalaError(ErrorCode.RECEIVER_NOT_READY, `a SEND to ${this.remoteAddress} found no posted receive after every retry (receiver not ready); the queue pair went to the error state`)
        : new KoalaError(ErrorCode.QP_ERROR, `a ${what} work request with ${this.remoteAddress} completed with ${wcStatusName(status)}; the queue pair went to the error state`);
    logLimited("rdma.qp-error", "warn", "transport", `closing the RDMA connection with ${this.remoteAddress}: ${err.message}`);
    this.abort(err);
  }

  private addRecv(slot: number): void {
    this.recvBatch.addSge(this.areaAddr + slot * this.slotBytes, this.slotBytes, this.areaLkey);
    this.recvBatch.addRecv(slot, 1);
  }

  /** Posts buffer `slot` again and owes the peer its credit. */
  private repost(slot: number, data: boolean): void {
    if (this.tornDown) return;
    this.addRecv(slot);
    this.owed++;
    if (data) this.owedData++;
    this.scheduleFlush();
  }

  private onReceive(slot: number, byteLen: number): void {
    const base = slot * this.slotBytes;
    const buf = this.areaBytes;
    const v = this.areaView;
    if (byteLen < HEADER_BYTES) return this.protocolError(`a message of ${byteLen} bytes, shorter than the header`);
    const type = buf[base]!;
    this.credits += v.getUint16(base + 2, true);
    this.peerView--;
    const length = v.getUint32(base + 4, true);
    if (type === MsgType.DATA && this.arrivalHead === this.arrivals.length && !this.inboxFull && this.reason === undefined) {
      // The common case, nothing queued before it: handed up at once, with no arrival record.
      if (length !== byteLen - HEADER_BYTES) return this.protocolError(`a message whose header says ${length} bytes arrived with ${byteLen - HEADER_BYTES}`);
      if (length > this.options.maxMessageBytes) return this.tooLarge(length);
      this.deliver(slot, buf.subarray(base + HEADER_BYTES, base + byteLen));
      this.scheduleFlush();
      return;
    }
    const id = v.getUint32(base + 8, true);
    const aux = v.getUint32(base + 12, true);
    const payload = buf.subarray(base + HEADER_BYTES, base + byteLen);
    switch (type) {
      case MsgType.CREDIT:
        this.repost(slot, false);
        break;
      case MsgType.DONE:
        this.repost(slot, true);
        this.onDone(id);
        break;
      case MsgType.RTS:
        this.onRts(slot, payload, length, id, aux);
        break;
      case MsgType.PACK:
        if (!this.onPack(slot, payload, length, id)) return;
        break;
      case MsgType.CLOSE:
        this.repost(slot, true);
        this.closeArrived = true;
        this.arrivals.push({ type, slot: -1, view: undefined, rndv: undefined, ready: true });
        break;
      case MsgType.DATA:
        if (length !== payload.byteLength) return this.protocolError(`a message whose header says ${length} bytes arrived with ${payload.byteLength}`);
        if (length > this.options.maxMessageBytes) return this.tooLarge(length);
        this.arrivals.push({ type, slot, view: payload, rndv: undefined, ready: true });
        break;
      default:
        return this.protocolError(`unknown message type ${type}`);
    }
    this.processArrivals();
    this.scheduleFlush();
  }

  /**
   * The messages of a PACK, each copied out of the buffer (they are small). With nothing queued
   * before them and a reader with room, they are handed up now and the buffer posted again at
   * once; otherwise they queue in order and the buffer (so its credit) stays held until the
   * last of them is handed up, as an eager message's would. False after a protocol error.
   */
  private onPack(slot: number, payload: Uint8Array, length: number, count: number): boolean {
    if (length !== payload.byteLength || count < 1) {
      this.protocolError(`a PACK of ${count} messages whose header says ${length} bytes arrived with ${payload.byteLength}`);
      return false;
    }
    // The whole PACK is checked before any of it is handed up: a malformed one delivers nothing.
    const v = this.areaView;
    const first = payload.byteOffset - this.areaBytes.byteOffset;
    let at = 0;
    for (let k = 0; k < count; k++) {
      if (at + PACK_ENTRY_BYTES > payload.byteLength) {
        this.protocolError(`a PACK that ends inside the length of its message ${k + 1} of ${count}`);
        return false;
      }
      const len = v.getUint32(first + at, true);
      at += PACK_ENTRY_BYTES;
      if (len > this.options.maxMessageBytes) {
        this.tooLarge(len);
        return false;
      }
      if (at + len > payload.byteLength) {
        this.protocolError(`a PACK whose message ${k + 1} of ${count} (${len} bytes) runs past its end`);
        return false;
      }
      at += len;
    }
    if (at !== payload.byteLength) {
      this.protocolError(`a PACK with ${payload.byteLength - at} bytes after its ${count} messages`);
      return false;
    }
    const direct = this.arrivalHead === this.arrivals.length && !this.inboxFull && this.reason === undefined;
    at = 0;
    for (let k = 0; k < count; k++) {
      const len = v.getUint32(first + at, true);
      const copy = payload.slice(at + PACK_ENTRY_BYTES, at + PACK_ENTRY_BYTES + len);
      at += PACK_ENTRY_BYTES + len;
      // A reader with room gets them all now: at most one buffer's worth past its limit.
      if (direct) this.inbox.push(copy);
      else this.arrivals.push({ type: MsgType.DATA, slot: k === count - 1 ? slot : -1, copied: true, view: copy, rndv: undefined, ready: true });
    }
    if (direct) this.repost(slot, true);
    return true;
  }

  private onRts(slot: number, payload: Uint8Array, total: number, id: number, type: number): void {
    const v = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
    const n = payload.byteLength >= 4 ? v.getUint32(0, true) : 0;
    if (n < 1 || n > MAX_RNDV_SEGMENTS || payload.byteLength < 4 + n * RNDV_SEGMENT_BYTES) return this.protocolError("a malformed RTS");
    if (type !== MsgType.DATA) return this.protocolError(`an RTS for a message of type ${type}`);
    if (total > this.options.maxMessageBytes) return this.tooLarge(total);
    const segments: number[] = [];
    let sum = 0;
    for (let i = 0; i < n; i++) {
      const at = 4 + i * RNDV_SEGMENT_BYTES;
      const len = v.getUint32(at + 12, true);
      segments.push(v.getFloat64(at, true), v.getUint32(at + 8, true), len);
      sum += len;
    }
    if (sum !== total) return this.protocolError(`an RTS whose segments hold ${sum} bytes for a message of ${total}`);
    // The RTS keeps its buffer (and so its credit) until the message is handed up: a reader
    // that does not read holds the sender back, as with eager messages.
    const inc: Incoming = { type, id, total, lease: undefined, slot, segments, nextSegment: 0, readsLeft: n, arrival: undefined };
    this.reading.push(inc);
    inc.arrival = { type, slot: -1, view: undefined, rndv: inc, ready: false };
    this.arrivals.push(inc.arrival);
    this.scheduleFlush();
  }

  private readDone(inc: Incoming): void {
    inc.arrival!.ready = true;
    // The peer may let go of its memory now.
    const head = new Uint8Array(0);
    this.enqueueControl(MsgType.DONE, [head], inc.id);
    this.processArrivals();
  }

  /** Queues a protocol message (DONE, one-sided) even while this side is closing. */
  private enqueueControl(type: number, parts: readonly Uint8Array[], id: number): void {
    if (this.tornDown) return;
    let total = 0;
    for (const p of parts) total += p.byteLength;
    // After the messages committed before it (a one-sided request may follow the data it announces).
    this.cutRun();
    this.outq.push({ type, parts, total, onWritten: undefined, id, counted: 0 });
    this.scheduleFlush();
  }

  private onDone(id: number): void {
    const a = this.advertised.get(id);
    if (a === undefined) return this.protocolError(`DONE for rendezvous ${id}, which is not pending`);
    this.advertised.delete(id);
    for (const w of a.windows) this.ctx.verbs.deallocMw(w);
    a.lease?.release();
    callWritten(a.onWritten);
    this.unbuffer(a.counted);
    this.maybeFinishClose();
  }

  /** Hands arrivals up in order, as far as they are complete and the reader has room. */
  private processArrivals(): void {
    while (this.arrivalHead < this.arrivals.length && !this.tornDown) {
      const a = this.arrivals[this.arrivalHead]!;
      if (!a.ready) return;
      if (a.type === MsgType.DATA && this.inboxFull && !this.closeArrived && this.reason === undefined) return;
      this.arrivals[this.arrivalHead++] = undefined as never;
      if (this.arrivalHead === this.arrivals.length) {
        this.arrivals.length = 0;
        this.arrivalHead = 0;
      }
      this.handleArrival(a);
    }
  }

  private handleArrival(a: Arrival): void {
    if (a.type === MsgType.CLOSE) return this.onPeerClose();
    let message: Uint8Array;
    if (a.rndv !== undefined) {
      const lease = a.rndv.lease!;
      a.rndv.lease = undefined;
      this.readAhead -= a.rndv.total;
      this.scheduleFlush();
      message = lease.bytes;
      this.repost(a.rndv.slot, true);
      if (this.reason !== undefined || !this.lending) {
        // Dropped, or for a reader that does not release: a copy, and the lease goes back now.
        if (this.reason === undefined) message = message.slice();
        lease.release();
        if (this.reason !== undefined) return;
      } else {
        this.ownedLeases.set(message, lease);
        this.ctx.lentLeases.set(message, lease);
      }
    } else if (a.copied === true) {
      // A message of a PACK: its buffer goes back with the last of them.
      if (a.slot >= 0) this.repost(a.slot, true);
      if (this.reason !== undefined) return;
      message = a.view!;
    } else {
      if (this.reason !== undefined) {
        this.repost(a.slot, true);
        return;
      }
      this.deliver(a.slot, a.view!);
      return;
    }
    this.inbox.push(message);
  }

  /** Hands up the eager message in receive buffer `slot`: lent as a view, or copied out. */
  private deliver(slot: number, view: Uint8Array): void {
    if (!this.lending || this.heldSlots >= RECV_DEPTH / 2) {
      // A reader that has never released, or one holding many buffers: copy this one out.
      this.repost(slot, true);
      this.inbox.push(view.slice());
    } else {
      this.lent[slot] = view;
      this.heldSlots++;
      this.inbox.push(view);
    }
  }


  release(message: Uint8Array): void {
    // A reader that releases gets views of the receive buffers from now on (zero copy).
    this.lending = true;
    // A lent view is found by where it lies in the receive area, and must be the very view lent.
    const off = message.byteOffset - this.areaBytes.byteOffset;
    const slot = message.buffer === this.areaBytes.buffer && off >= 0 ? Math.floor(off / this.slotBytes) : -1;
    if (slot >= 0 && slot < RECV_DEPTH && this.lent[slot] === message) {
      this.lent[slot] = undefined;
      this.heldSlots--;
      if (this.tornDown) {
        if (this.heldSlots === 0) this.area.release();
      } else {
        this.repost(slot, true);
      }
      return;
    }
    const lease = this.ownedLeases.get(message);
    if (lease !== undefined) {
      this.ownedLeases.delete(message);
      this.ctx.lentLeases.delete(message);
      lease.release();
    }
  }


  // ---- one-sided: RDMA READ / WRITE, checked by the peer's NIC --------------------------

  registerRegion(source: Uint8Array | ByteSource, options?: RegisterRegionOptions): RegisteredRegion {
    if (this.reason !== undefined) throw this.closedError("registerRegion()");
    if (!this.options.oneSided) {
      throw new KoalaError(ErrorCode.INVALID_ARGUMENT, `registerRegion(): one-sided access is off on the connection with ${this.remoteAddress}; open the connection or listener with the transport option oneSided: true`);
    }
    const access = options?.access ?? "read";
    check(access === "read" || access === "readwrite", `registerRegion(): option "access" must be "read" or "readwrite", got ${String(access)}`);
    const bytes = source instanceof Uint8Array ? source : source?.bytes;
    check(bytes instanceof Uint8Array, "registerRegion(): source must be a Uint8Array or hold one in .bytes");
    const v = this.ctx.verbs;
    // The region's own registration grants no remote access; a window bound to this queue
    // pair does, so the peer of another connection is refused by the NIC.
    const mr = v.regMr(this.ctx.pd, bytes, Access.LOCAL_WRITE | Access.MW_BIND);
    let mw: Mw;
    try {
      mw = v.bindMw(this.qp, mr, mr.addr, bytes.byteLength, Access.REMOTE_READ | (access === "readwrite" ? Access.REMOTE_WRITE : 0));
    } catch (err) {
      v.deregMr(mr);
      throw err;
    }
    const w: Window = { mr, mw };
    this.windows.add(w);
    // 64 bits as the contract asks: the rkey (what the NIC checks) and 32 random bits beside it.
    const key = (BigInt(randomBytes(4).readUInt32LE(0)) << 32n) | BigInt(mw.rkey);
    const windows = this.windows;
    return {
      descriptor: Object.freeze({ key, address: BigInt(mw.addr), length: bytes.byteLength, access }),
      get registered() {
        return windows.has(w);
      },
      deregister: () => this.dropWindow(w),
    };
  }

  private dropWindow(w: Window): void {
    if (!this.windows.delete(w)) return;
    this.ctx.verbs.deallocMw(w.mw);
    this.ctx.verbs.deregMr(w.mr);
  }

  read(region: RegionDescriptor, offset: number, length: number): Promise<Uint8Array> {
    try {
      this.checkOneSided(region, offset, length, false);
    } catch (err) {
      return Promise.reject(err);
    }
    const lease = this.ctx.heap.alloc(Math.max(1, length));
    return new Promise<Uint8Array>((resolve, reject) => {
      this.postOneSided(Opcode.RDMA_READ, region, offset, length, lease, lease.bytes, (err) => (err === undefined ? resolve(lease.bytes.slice(0, length)) : reject(err)));
    });
  }

  write(region: RegionDescriptor, offset: number, data: Uint8Array): Promise<void> {
    try {
      this.checkOneSided(region, offset, data.byteLength, true);
    } catch (err) {
      return Promise.reject(err);
    }
    // Bytes already in registered memory go in place (unchanged until write() settles); others are copied.
    let lease: Lease | undefined;
    let from = data;
    if (this.ctx.locate(data) === undefined) {
      lease = this.ctx.heap.alloc(Math.max(1, data.byteLength));
      lease.bytes.set(data);
      from = lease.bytes;
    }
    return new Promise<void>((resolve, reject) => {
      this.postOneSided(Opcode.RDMA_WRITE, region, offset, data.byteLength, lease, from, (err) => (err === undefined ? resolve() : reject(err)));
    });
  }

  private postOneSided(opcode: number, region: RegionDescriptor, offset: number, length: number, lease: Lease | undefined, local: Uint8Array, done: (err: KoalaError | undefined) => void): void {
    const where = this.ctx.locate(local)!;
    let settled = false;
    this.oneSidedQueue.push({
      opcode,
      lease,
      addr: where.addr,
      lkey: where.lkey,
      length,
      raddr: Number(region.address) + offset,
      rkey: Number(region.key & 0xffff_ffffn),
      settle: (err) => {
        if (settled) return;
        settled = true;
        done(err);
        lease?.release();
      },
    });
    this.scheduleFlush();
  }

  private checkOneSided(region: RegionDescriptor, offset: number, length: number, write: boolean): void {
    if (this.reason !== undefined) throw this.closedError(write ? "write()" : "read()");
    checkRemoteAccess(region, offset, length, write);
    if (length > this.options.maxMessageBytes) {
      throw new KoalaError(ErrorCode.MESSAGE_TOO_LARGE, `a one-sided ${write ? "write" : "read"} of ${length} bytes exceeds maxMessageBytes (${this.options.maxMessageBytes})`);
    }
  }

  /** Posts queued RDMA READs / WRITEs of `read` / `write`, as the send queue allows. */
  private startOneSided(): void {
    const batch = this.sendBatch;
    while (this.oneSidedQueue.length > 0 && this.sqUsed < this.maxSendWr) {
      const op = this.oneSidedQueue.shift()!;
      const wrId = this.nextWrId++;
      batch.addSge(op.addr, op.length, op.lkey);
      batch.addSend(wrId, op.opcode, SendFlags.SIGNALED, 1, 0, op.raddr, op.rkey);
      this.track(wrId, { lease: undefined, onWritten: undefined, counted: 0, read: undefined, close: false, oneSided: op, covers: 0 });
      this.sqUsed++;
    }
  }

  // ---- close --------------------------------------------------------------------------

  close(reason?: Error): void {
    if (this.reason !== undefined) return;
    if (reason !== undefined) {
      this.abort(new KoalaError(ErrorCode.CLOSED, `the connection was closed by this side: ${reason.message}`, { cause: reason }));
      return;
    }
    this.setClosed(new KoalaError(ErrorCode.CLOSED, "the connection was closed by this side"), true);
    // CLOSE goes after every message queued before it; the QP is torn down once it is delivered
    // and the peer has read every rendezvous message.
    this.reserving = false;
    this.cutRun();
    this.outq.push({ type: MsgType.CLOSE, parts: [], total: 0, onWritten: undefined, id: 0, counted: 0 });
    this.scheduleFlush();
    // A peer that never returns credits or never reads its rendezvous messages cannot hold the
    // connection open: after closeLingerMs (transport option) it is dropped (queued messages with it).
    this.lingerTimer = setTimeout(() => this.teardown(), this.options.closeLingerMs);
    this.lingerTimer.unref();
  }

  private maybeFinishClose(): void {
    if (this.closeSent && this.advertised.size === 0) this.teardown();
  }

  /** The peer's CLOSE, after every message it sent before it. */
  private onPeerClose(): void {
    if (this.reason === undefined) {
      this.setClosed(new KoalaError(ErrorCode.PEER_CLOSED, `${this.remoteAddress} closed the connection`), true);
    }
    this.teardown();
  }

  /** The CM reports the connection gone (peer disconnected, killed, or the link failed). */
  onDisconnected(why: string): void {
    if (this.tornDown || this.disconnectSeen) return;
    this.disconnectSeen = true;
    setImmediate(() => {
      // Completions already queued (the peer's last messages, its CLOSE) count first.
      this.ctx.drain();
      if (this.tornDown) return;
      if (this.reason === undefined) this.setClosed(new KoalaError(ErrorCode.CONNECTION_RESET, `the RDMA connection with ${this.remoteAddress} was lost: ${why}`), false);
      this.teardown();
    });
  }

  /** The context can no longer serve this connection (see {@link CompletionSink.onFatal}). */
  onFatal(reason: KoalaError): void {
    this.abort(reason);
  }

  private abort(reason: KoalaError): void {
    if (this.reason === undefined) this.setClosed(reason, false);
    this.teardown();
  }

  private protocolError(what: string): void {
    const err = new KoalaError(ErrorCode.PROTOCOL, `${this.remoteAddress} broke the koala RDMA protocol: ${what}`);
    logLimited("rdma.protocol", "warn", "transport", `closing the connection with ${this.remoteAddress}: ${err.message}`);
    this.abort(err);
  }

  private tooLarge(length: number): void {
    const err = new KoalaError(ErrorCode.MESSAGE_TOO_LARGE, `the peer sent a message of ${length} bytes; the limit is ${this.options.maxMessageBytes} (maxMessageBytes)`);
    logLimited("rdma.message-too-large", "warn", "transport", `closing ${this.remoteAddress}: ${err.message}`);
    this.abort(err);
  }

  private setClosed(reason: KoalaError, orderly: boolean): void {
    if (this.reason !== undefined) return;
    this.reason = reason;
    this.inbox.close(reason, orderly);
    for (const op of this.oneSidedQueue.splice(0)) op.settle(this.closedError(op.opcode === Opcode.RDMA_READ ? "read()" : "write()"));
    const ws = this.drainWaiters;
    this.drainWaiters = [];
    for (const w of ws) w.reject(reason);
    // Messages not sent yet are dropped (an orderly close keeps them: they go before CLOSE).
    if (!orderly || reason.code === ErrorCode.PEER_CLOSED) this.dropQueued();
  }

  private dropQueued(): void {
    this.reserving = false;
    this.cutRun();
    const q = this.outq.splice(this.outHead);
    this.outq.length = 0;
    this.outHead = 0;
    for (const m of q) {
      m.lease?.release();
      callWritten(m.onWritten);
      this.unbuffer(m.counted);
    }
  }

  /** Disconnects and releases every resource of the connection; `closed` resolves. */
  private teardown(): void {
    if (this.tornDown) return;
    this.tornDown = true;
    clearTimeout(this.lingerTimer);
    this.dropQueued();
    const v = this.ctx.verbs;
    this.ctx.detach(this.qp.qpNum, this.qp.caps.maxSendWr + this.qp.caps.maxRecvWr);
    try {
      v.disconnect(this.id);
      for (const w of [...this.windows]) this.dropWindow(w);
      for (const a of this.advertised.values()) for (const w of a.windows.splice(0)) v.deallocMw(w);
      v.destroyQp(this.qp);
      v.destroyId(this.id);
    } catch (err) {
      log("error", "transport", `releasing the RDMA connection with ${this.remoteAddress}: ${(err as Error).message}`);
    }
    if (this.reason === undefined) this.reason = new KoalaError(ErrorCode.CONNECTION_RESET, `the RDMA connection with ${this.remoteAddress} ended`);
    for (const op of this.sendOps.values()) {
      op.lease?.release();
      callWritten(op.onWritten);
      this.unbuffer(op.counted);
      op.oneSided?.settle(this.reason.code === ErrorCode.REMOTE_ACCESS_DENIED ? this.reason : this.closedError("a one-sided access"));
    }
    this.sendOps.clear();
    for (const a of this.advertised.values()) {
      a.lease?.release();
      callWritten(a.onWritten);
      this.unbuffer(a.counted);
    }
    this.advertised.clear();
    for (const a of this.arrivals.slice(this.arrivalHead)) a?.rndv?.lease?.release();
    this.arrivals.length = 0;
    this.reading.length = 0;
    for (const cb of this.postedCallbacks.splice(0)) callWritten(cb);
    this.inlineArea?.release();
    this.recvBatch.reset();
    // The receive area goes back to the heap once no delivered message points into it.
    if (this.heldSlots === 0) this.area.release();
    this.buffered = 0;
    this.resolveClosed(this.reason);
  }

  private closedError(what: string): KoalaError {
    const reason = this.reason!;
    return new KoalaError(ErrorCode.CLOSED, `${what} on a closed connection (${reason.message})`, { cause: reason });
  }
}
