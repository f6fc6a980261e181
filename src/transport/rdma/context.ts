/**
 * One RDMA context per thread and device: the opened device, one protection domain, one
 * completion queue shared by every connection, and a heap of memory registered with the PD.
 * Completions are drained in batches (a typed array of {@link WC} records per poll) and routed
 * to the connection that owns the queue pair. The JavaScript thread never spins without bound:
 * after the queue runs empty it keeps polling for at most KOALA_RDMA_BUSY_POLL_US microseconds
 * (default 0, off), then re-arms the completion notification and returns to the event loop.
 */
import { ErrorCode, KoalaError } from "../../errors.js";
import { log, logLimited } from "../../log.js";
import { createHeap, sharedHeap, type Heap } from "../../mem/heap.js";
import type { Lease } from "../../mem/lease.js";
import type { MemoryRegistrar } from "../../mem/slab.js";
import { selectRdma, type RdmaSelection } from "./providers.js";
import { Access, WC, type Cq, type Mr, type Pd, type VerbsContext } from "./verbs.js";

/** Receives the completions of one queue pair. */
export interface CompletionSink {
  /** One completion, in the queue pair's order. */
  onCompletion(wrId: number, status: number, opcode: number, byteLen: number, imm: number): void;
  /** The context cannot deliver this queue pair's completions any more (a failed poll, or `onCompletion` threw): close with `reason`. */
  onFatal(reason: KoalaError): void;
}

/** Where bytes in registered memory are, for a scatter-gather entry or a peer's RDMA READ. */
export interface Located {
  /** Address in the provider's address space. */
  addr: number;
  /** Local key of the region. */
  lkey: number;
  /** The registration, for binding a memory window over the bytes. */
  mr: Mr;
}

const POLL_BATCH = 64;
const GiB = 1024 * 1024 * 1024;

/** Entries of a thread's CQ before any connection, and the least it shrinks back to. */
const FIRST_CQ_DEPTH = 1024;

/** The per-thread RDMA state (see the module comment). Made by {@link rdmaContext}. */
export class RdmaContext {
  readonly verbs: VerbsContext;
  readonly pd: Pd;
  readonly cq: Cq;
  /** Registered memory for what this side sends: staging, copies of parts, one-sided transfers. */
  readonly heap: Heap;
  /** Registered memory lent to readers: receive buffers and rendezvous destinations. */
  readonly receiveHeap: Heap;
  /** Rendezvous messages handed to readers, by the view handed out (to hold one that is sent on). */
  readonly lentLeases = new WeakMap<Uint8Array, Lease>();
  /** The receive heap's slabs: memory a reader may release at any time, so never sent from in place. */
  private readonly receiveBuffers = new WeakSet<ArrayBufferLike>();
  /** Registrations of the heaps' slabs, by their ArrayBuffer. */
  private readonly regions = new Map<ArrayBufferLike, { mr: Mr; offset: number; length: number }>();
  private readonly sinks = new Map<number, CompletionSink>();
  private cqDepth = FIRST_CQ_DEPTH;
  private cqNeeded = 0;
  /** Set when connections closed and the CQ is four times what the rest need: the next drain shrinks it. */
  private shrinkWanted = false;
  private readonly wc = new Float64Array(POLL_BATCH * WC.STRIDE);
  private draining = false;
  private again = false;

  constructor(readonly selection: RdmaSelection, recvAreaBytes: number) {
    this.verbs = selection.provider.open(selection.device!.name, selection.port!);
    this.pd = this.verbs.allocPd();
    this.cq = this.verbs.createCq(this.cqDepth, () => this.drain());
    this.verbs.reqNotifyCq(this.cq);
    const registrar = (receive: boolean): MemoryRegistrar => ({
      register: (slab) => {
        // Written by the NIC (receives, READ destinations). No remote access: a rendezvous
        // source is exposed through a memory window over its own bytes, bound to one queue pair.
        const mr = this.verbs.regMr(this.pd, slab, Access.LOCAL_WRITE | Access.MW_BIND);
        this.regions.set(slab.buffer, { mr, offset: slab.byteOffset, length: slab.byteLength });
        if (receive) this.receiveBuffers.add(slab.buffer);
        return { mr, buffer: slab.buffer };
      },
      deregister: (handle) => {
        const { mr, buffer } = handle as { mr: Mr; buffer: ArrayBufferLike };
        this.regions.delete(buffer);
        this.verbs.deregMr(mr);
      },
    });
    const classes: number[] = [];
    for (let s = 64; s <= 1024 * 1024; s *= 2) classes.push(s);
    // Every connection's receive area is one lease of exactly its size.
    if (recvAreaBytes <= 1024 * 1024 && !classes.includes(recvAreaBytes)) classes.push(recvAreaBytes);
    classes.sort((a, b) => a - b);
    this.heap = createHeap({ registrars: [registrar(false)], maxBytes: 16 * GiB, trackLeaks: "off" });
    this.receiveHeap = createHeap({ registrars: [registrar(true)], sizeClasses: classes, maxBytes: 16 * GiB, trackLeaks: "off" });
    // The RPC core encodes large frames into the shared heap: registered here as well, they go
    // out in place (scatter-gather, rendezvous) instead of being copied.
    sharedHeap().addRegistrar(registrar(false));
  }

  /** True for memory lent to a reader (a receive buffer, a rendezvous destination): sent on by copy, never in place. */
  isReceiveMemory(bytes: Uint8Array): boolean {
    return this.receiveBuffers.has(bytes.buffer);
  }

  /** Where `bytes` are when they lie in memory registered here (the heap's slabs), else undefined. */
  locate(bytes: Uint8Array): Located | undefined {
    const r = this.regions.get(bytes.buffer);
    if (r === undefined) return undefined;
    const off = bytes.byteOffset - r.offset;
    if (off < 0 || off + bytes.byteLength > r.length) return undefined;
    return { addr: r.mr.addr + off, lkey: r.mr.lkey, mr: r.mr };
  }

  /**
   * Routes the completions of queue pair `qpNum` to `sink`, growing the CQ by `entries` (its
   * depth doubles as needed, up to the device's max_cqe). When the CQ would need more than
   * max_cqe entries, or the device refuses to grow it, throws KOALA_ERR_VERBS (naming the limit) and
   * changes nothing: that queue pair is refused, the others go on.
   */
  attach(qpNum: number, sink: CompletionSink, entries: number): void {
    const needed = this.cqNeeded + entries;
    const maxCqe = this.selection.device!.maxCqe;
    if (needed > this.cqDepth) {
      if (needed > maxCqe) {
        throw new KoalaError(
          ErrorCode.VERBS,
          `this thread's RDMA completion queue would need ${needed} entries for ${this.sinks.size + 1} connections; the device ${this.selection.device!.name} allows ${maxCqe} (max_cqe)`,
        );
      }
      let depth = this.cqDepth;
      while (depth < needed) depth *= 2;
      depth = Math.min(depth, maxCqe);
      try {
        this.verbs.resizeCq(this.cq, depth);
      } catch (err) {
        throw new KoalaError(ErrorCode.VERBS, `this thread's RDMA completion queue cannot grow to ${depth} entries: ${(err as Error).message}`, { cause: err });
      }
      this.cqDepth = depth;
    }
    this.sinks.set(qpNum, sink);
    this.cqNeeded = needed;
  }

  /** Stops routing `qpNum`'s completions (any still queued are dropped). */
  detach(qpNum: number, entries: number): void {
    if (!this.sinks.delete(qpNum)) return;
    this.cqNeeded -= entries;
    // Memory back once the connections left need a quarter of the CQ or less (not on every
    // close, so connections that come and go do not resize it each time). Not here: the queue
    // pair is still flushing into the CQ. The next drain shrinks it, once it has polled the CQ
    // empty: by then every detached queue pair is destroyed and none of its completions is left.
    if (this.cqDepth > FIRST_CQ_DEPTH && this.cqNeeded * 4 <= this.cqDepth) this.shrinkWanted = true;
  }

  /** Queue pairs routed here. */
  get connections(): number {
    return this.sinks.size;
  }

  /**
   * Polls the CQ until empty, in batches, and hands each completion to its queue pair.
   * Re-entrant calls fold into the running one. Runs from the event loop, so nothing may
   * escape: a failed poll closes every connection of the context, a sink that throws its own.
   */
  drain(): void {
    if (this.draining) {
      this.again = true;
      return;
    }
    this.draining = true;
    try {
      this.pollAll();
    } catch (err) {
      const reason = new KoalaError(ErrorCode.SYSTEM, `the RDMA completion queue failed: ${(err as Error).message}`, { cause: err });
      log("error", "transport", reason.message);
      for (const sink of [...this.sinks.values()]) sink.onFatal(reason);
    } finally {
      this.draining = false;
    }
  }

  /**
   * Shrinks the CQ (polled empty just now) to the smallest power of two from 1024 up that holds
   * twice what the attached queue pairs need. A device that refuses keeps it as it is.
   */
  private shrink(): void {
    this.shrinkWanted = false;
    let depth = FIRST_CQ_DEPTH;
    while (depth < this.cqNeeded * 2) depth *= 2;
    if (depth >= this.cqDepth) return;
    try {
      this.verbs.resizeCq(this.cq, depth);
      this.cqDepth = depth;
    } catch (err) {
      log("debug", "transport", `the RDMA completion queue stays at ${this.cqDepth} entries: ${(err as Error).message}`);
    }
  }

  private pollAll(): void {
    const v = this.verbs;
    const wc = this.wc;
    const spinNs = BigInt(this.selection.config.busyPollUs) * 1000n;
    for (;;) {
      this.again = false;
      let n = v.pollCq(this.cq, wc, POLL_BATCH);
      if (n === 0 && spinNs > 0n) {
        const end = process.hrtime.bigint() + spinNs;
        while (n === 0 && process.hrtime.bigint() < end) n = v.pollCq(this.cq, wc, POLL_BATCH);
      }
      if (n === 0) {
        if (this.shrinkWanted) this.shrink();
        v.reqNotifyCq(this.cq);
        // A completion that came between the last poll and the arming is caught here.
        n = v.pollCq(this.cq, wc, POLL_BATCH);
        if (n === 0 && !this.again) return;
      }
      for (let i = 0; i < n; i++) {
        const at = i * WC.STRIDE;
        const sink = this.sinks.get(wc[at + WC.QP_NUM]!);
        if (sink === undefined) continue;
        try {
          sink.onCompletion(wc[at + WC.WR_ID]!, wc[at + WC.STATUS]!, wc[at + WC.OPCODE]!, wc[at + WC.BYTE_LEN]!, wc[at + WC.IMM]!);
        } catch (err) {
          logLimited("rdma.completion-error", "error", "transport", `an RDMA connection failed on a completion: ${(err as Error)?.stack ?? String(err)}`);
          sink.onFatal(new KoalaError(ErrorCode.SYSTEM, `internal error on an RDMA completion: ${(err as Error)?.message ?? String(err)}`, { cause: err }));
        }
      }
    }
  }
}

const contexts = new Map<string, RdmaContext>();

/**
 * The context of this thread for the RDMA selection in force (KOALA_RDMA_PROVIDER,
 * KOALA_RDMA_DEVICES). Throws KOALA_ERR_TRANSPORT_UNAVAILABLE with the reason when no
 * provider has an active port.
 */
export function rdmaContext(recvAreaBytes: number, env: NodeJS.ProcessEnv = process.env): RdmaContext {
  const sel = selectRdma(env);
  if (sel.unavailable !== undefined) throw new KoalaError(ErrorCode.TRANSPORT_UNAVAILABLE, `rdma transport unavailable: ${sel.unavailable}`);
  const key = `${sel.provider.name}/${sel.device!.name}:${sel.port}/${sel.config.rndvThreshBytes}/${sel.config.busyPollUs}`;
  let ctx = contexts.get(key);
  if (ctx === undefined) {
    ctx = new RdmaContext(sel, recvAreaBytes);
    contexts.set(key, ctx);
  }
  return ctx;
}

/** Every context opened in this thread (for tests and `koala info`). */
export function openRdmaContexts(): RdmaContext[] {
  return [...contexts.values()];
}
