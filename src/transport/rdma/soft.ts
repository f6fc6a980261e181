/**
 * The software verbs provider (`KOALA_RDMA_PROVIDER=soft`): the Verbs interface in
 * TypeScript, with a stream socket between the two endpoints standing in for the fabric and
 * this module standing in for the NIC on each side. It is a test and development provider:
 * its speed does not matter, its strictness does.
 *
 * What it enforces, as a NIC does:
 * - receives are consumed in the order posted; a SEND (or WRITE_WITH_IMM) that finds no posted
 *   receive is answered "receiver not ready"; the sender retries `rnrRetry` times (default 7,
 *   {@link RNR_DELAY_MS} apart; never infinite), then the work request completes with
 *   RNR_RETRY_EXC_ERR and the queue pair goes to the error state;
 * - RDMA READ and WRITE are checked by the TARGET's provider against the rkey, the protection
 *   domain, the bounds and the access flags of the target's region, never by the caller;
 * - completions come in order per queue pair; when a queue pair goes to the error state or is
 *   destroyed, every outstanding work request completes with WR_FLUSH_ERR, in order;
 * - local keys, bounds and LOCAL_WRITE are checked for every scatter-gather entry.
 *
 * Port mapping: the soft connection manager listens on a Unix socket named after the port,
 * `<KOALA_SOFT_RDMA_DIR or the temporary folder>/koala-soft-rdma-<port>.sock`, so its port
 * space is separate from TCP's (as the RDMA CM port space is on a real NIC) and one process
 * can serve TCP and soft RDMA on the same port number. The host part of an address must name
 * this machine: the soft fabric reaches only local processes.
 */
import { randomBytes } from "node:crypto";
import { existsSync, unlinkSync } from "node:fs";
import net from "node:net";
import { networkInterfaces, tmpdir } from "node:os";
import { join } from "node:path";
import { ErrorCode, KoalaError } from "../../errors.js";
import { formatAddress } from "../address.js";
import { Pkt, SoftLink } from "./soft-link.js";
import {
  Access,
  Handle,
  Opcode,
  RWR,
  SGE,
  SWR,
  SendFlags,
  WC,
  WC_WITH_IMM,
  WcOpcode,
  WcStatus,
  type CmEvent,
  type CmId,
  type CmListener,
  type Cq,
  type DeviceInfo,
  type Mr,
  type Mw,
  type Pd,
  type Qp,
  type QpCaps,
  type VerbsContext,
  type VerbsProvider,
  type WorkBatch,
} from "./verbs.js";

/** Delay between retries of a SEND answered "receiver not ready", in milliseconds. */
export const RNR_DELAY_MS = 2;
/** Retries of such a SEND before it fails with RNR_RETRY_EXC_ERR. */
export const RNR_RETRY = 7;

const SOFT_DEVICE: DeviceInfo = Object.freeze({
  name: "soft0",
  provider: "soft",
  software: true,
  ports: Object.freeze([Object.freeze({ port: 1, state: "active" as const, linkLayer: "Ethernet" as const, mtu: 4096, gid: "fe80::50f7:ff:fe00:1" })]),
  maxSge: 8,
  maxQpWr: 4096,
  maxInlineData: 128,
  maxCqe: 4 * 1024 * 1024,
  maxMrBytes: 2 ** 40,
});

/** Counters of the soft provider in this thread, for tests and `koala info`. */
export const softCounters = {
  /** SENDs answered "receiver not ready". */
  rnrNaks: 0,
  /** SEND work requests posted (every provider-level message, for tests that count them). */
  sends: 0,
  /** RDMA READ / WRITE refused by a target's checks. */
  remoteAccessErrors: 0,
};

/** Fault injection for tests: the `failSendIn`-th send work request posted from now (1 = the next) fails with REM_OP_ERR. */
export const softFaults: { failSendIn: number } = { failSendIn: 0 };

/** The folder of the soft CM's socket files. */
function socketDir(): string {
  return process.env.KOALA_SOFT_RDMA_DIR || tmpdir();
}

/** The socket file that stands for soft RDMA port `port`. */
export function softPortPath(port: number): string {
  return join(socketDir(), `koala-soft-rdma-${port}.sock`);
}

let localHosts: Set<string> | undefined;
function isLocalHost(host: string): boolean {
  if (localHosts === undefined) {
    localHosts = new Set(["localhost", "0.0.0.0", "::", "::1"]);
    for (const list of Object.values(networkInterfaces())) for (const a of list ?? []) localHosts.add(a.address);
  }
  return localHosts.has(host) || host.startsWith("127.");
}

class SoftPd extends Handle {
  constructor() {
    super("pd");
  }
}

class SoftMr extends Handle implements Mr {
  constructor(
    readonly pd: SoftPd,
    readonly bytes: Uint8Array,
    readonly lkey: number,
    readonly rkey: number,
    readonly addr: number,
    readonly access: number,
  ) {
    super("mr");
  }
  get length(): number {
    return this.bytes.byteLength;
  }
}

class SoftMw extends Handle {
  constructor(
    readonly qp: SoftQp,
    readonly mr: SoftMr,
    readonly rkey: number,
    readonly addr: number,
    readonly length: number,
    readonly access: number,
  ) {
    super("mw");
  }
}

class SoftCq extends Handle {
  ring: Float64Array;
  head = 0;
  count = 0;
  armed = false;
  scheduled = false;
  overrun = false;
  constructor(
    public depth: number,
    readonly onNotify: () => void,
  ) {
    super("cq");
    this.ring = new Float64Array(depth * WC.STRIDE);
  }

  push(wrId: number, status: number, opcode: number, byteLen: number, imm: number, qpNum: number, flags: number): void {
    if (this.count === this.depth) {
      this.overrun = true;
      return;
    }
    const at = ((this.head + this.count) % this.depth) * WC.STRIDE;
    this.count++;
    const r = this.ring;
    r[at + WC.WR_ID] = wrId;
    r[at + WC.STATUS] = status;
    r[at + WC.OPCODE] = opcode;
    r[at + WC.BYTE_LEN] = byteLen;
    r[at + WC.IMM] = imm;
    r[at + WC.QP_NUM] = qpNum;
    r[at + WC.FLAGS] = flags;
    if (this.armed && !this.scheduled) {
      this.armed = false;
      this.scheduled = true;
      setImmediate(() => {
        this.scheduled = false;
        if (!this.destroyed) this.onNotify();
      });
    }
  }
}

/** A send work request the soft NIC has sent and not yet seen answered. */
interface Outstanding {
  seq: number;
  wrId: number;
  opcode: number;
  signaled: boolean;
  /** Packet type and parts, kept for a retransmission after "receiver not ready". */
  type: number;
  packet: Uint8Array[];
  byteLen: number;
  /** Local scatter-gather entries (addr, length, lkey triplets) a READ's data goes to. */
  readSges: number[] | undefined;
  rnrLeft: number;
  /** Set for a work request that failed a local check: it completes with this status in its turn. */
  localStatus?: number;
}

class SoftQp extends Handle implements Qp {
  state: "init" | "rts" | "error" = "init";
  readonly recvs: { wrId: number; sges: number[] }[] = [];
  recvHead = 0;
  readonly sends: Outstanding[] = [];
  nextSeq = 0;
  /** The sequence number the responder expects next. */
  expected = 0;
  /** Highest sequence number executed and not yet acknowledged, or -1. */
  ackPending = -1;
  ackScheduled = false;
  rnrTimer: NodeJS.Timeout | undefined;
  /** A work request failed locally: nothing after it goes on the wire; the error comes in its turn. */
  failing = false;
  constructor(
    readonly ctx: SoftContext,
    readonly qpNum: number,
    readonly id: SoftCmId,
    readonly pd: SoftPd,
    readonly sendCq: SoftCq,
    readonly recvCq: SoftCq,
    readonly caps: Readonly<QpCaps>,
    readonly rnrRetry: number,
  ) {
    super("qp");
  }
  get postedRecvs(): number {
    return this.recvs.length - this.recvHead;
  }
}

class SoftCmId extends Handle implements CmId {
  link: SoftLink | undefined;
  qp: SoftQp | undefined;
  state: "idle" | "connecting" | "requested" | "accepting" | "connected" | "done" = "idle";
  localAddress = "";
  remoteAddress = "";
  timer: NodeJS.Timeout | undefined;
  constructor(
    readonly ctx: SoftContext,
    public onEvent: (e: CmEvent) => void,
  ) {
    super("cm_id");
  }
}

class SoftCmListener extends Handle implements CmListener {
  constructor(
    readonly server: net.Server,
    readonly port: number,
    readonly path: string,
  ) {
    super("cm_listener");
  }
}

/** Opcode byte of an injected fault on the wire. */
const INJECTED = 0xee;

let nextQpNum = 0x100;
let nextSrcPort = 0;
let nextKey = 1;

function fail(op: string, why: string): never {
  throw new KoalaError(ErrorCode.VERBS, `${op}: ${why}`);
}

/** An opened soft device. */
class SoftContext extends Handle implements VerbsContext {
  readonly device = SOFT_DEVICE;
  readonly port = 1;
  private readonly byLkey = new Map<number, SoftMr>();
  private readonly byRkey = new Map<number, SoftMr | SoftMw>();
  private nextAddr = 0x1000_0000;

  constructor() {
    super("context");
  }

  allocPd(): Pd {
    this.check("allocPd()");
    this.use();
    return new SoftPd();
  }

  deallocPd(pd: Pd): void {
    const p = asPd(pd);
    p.markDestroyed("deallocPd()", "memory regions or queue pairs");
    this.unuse();
  }

  regMr(pd: Pd, bytes: Uint8Array, access: number): Mr {
    const p = asPd(pd);
    p.check("regMr()");
    if (!(bytes instanceof Uint8Array)) fail("regMr()", "bytes must be a Uint8Array");
    if (!Number.isInteger(access) || (access & ~(7 | Access.MW_BIND)) !== 0) fail("regMr()", `unknown access flags ${access}`);
    // Remote write needs local write, as ibv_reg_mr requires.
    if (access & Access.REMOTE_WRITE && !(access & Access.LOCAL_WRITE)) fail("regMr()", "REMOTE_WRITE requires LOCAL_WRITE");
    const addr = this.nextAddr;
    this.nextAddr += Math.ceil(Math.max(bytes.byteLength, 1) / 4096) * 4096 + 4096;
    const lkey = nextKey++;
    const rkey = this.newRkey();
    const mr = new SoftMr(p, bytes, lkey, rkey, addr, access);
    this.byLkey.set(lkey, mr);
    this.byRkey.set(rkey, mr);
    p.use();
    return mr;
  }

  /** A fresh remote key: 32 random bits, as hard to guess as a key of this size can be. */
  private newRkey(): number {
    let rkey: number;
    do rkey = randomBytes(4).readUInt32LE(0);
    while (rkey === 0 || this.byRkey.has(rkey));
    return rkey;
  }

  bindMw(q: Qp, mr: Mr, addr: number, length: number, access: number): Mw {
    const qp = asQp(q);
    const m = asMr(mr);
    qp.check("bindMw()");
    m.check("bindMw()");
    if (qp.pd !== m.pd) fail("bindMw()", "the memory region and the queue pair belong to different protection domains");
    if (!(m.access & Access.MW_BIND)) fail("bindMw()", "the memory region was not registered with MW_BIND");
    if ((access & ~(Access.REMOTE_READ | Access.REMOTE_WRITE)) !== 0) fail("bindMw()", `a window grants REMOTE_READ and REMOTE_WRITE only, got ${access}`);
    if (access & Access.REMOTE_WRITE && !(m.access & Access.LOCAL_WRITE)) fail("bindMw()", "REMOTE_WRITE needs a region with LOCAL_WRITE");
    const off = addr - m.addr;
    if (!(Number.isInteger(off) && off >= 0 && Number.isInteger(length) && length >= 0 && off + length <= m.length)) fail("bindMw()", "the window is not inside the memory region");
    const mw = new SoftMw(qp, m, this.newRkey(), addr, length, access);
    this.byRkey.set(mw.rkey, mw);
    m.use();
    qp.use();
    return mw;
  }

  deallocMw(w: Mw): void {
    const mw = own(w, SoftMw, "a memory window");
    mw.markDestroyed("deallocMw()", "users");
    this.byRkey.delete(mw.rkey);
    mw.mr.unuse();
    mw.qp.unuse();
  }

  deregMr(mr: Mr): void {
    const m = asMr(mr);
    m.markDestroyed("deregMr()", "memory windows bound");
    this.byLkey.delete(m.lkey);
    this.byRkey.delete(m.rkey);
    m.pd.unuse();
  }

  createCq(depth: number, onNotify: () => void): Cq {
    this.check("createCq()");
    if (!Number.isInteger(depth) || depth < 1 || depth > SOFT_DEVICE.maxCqe) fail("createCq()", `depth must be 1..${SOFT_DEVICE.maxCqe}, got ${depth}`);
    this.use();
    return new SoftCq(depth, onNotify);
  }

  resizeCq(cq: Cq, depth: number): void {
    const c = asCq(cq);
    c.check("resizeCq()");
    const least = Math.max(1, c.count);
    if (!Number.isInteger(depth) || depth < least || depth > SOFT_DEVICE.maxCqe) fail("resizeCq()", `depth must be ${least}..${SOFT_DEVICE.maxCqe} (the completions queued..max_cqe), got ${depth}`);
    const ring = new Float64Array(depth * WC.STRIDE);
    for (let i = 0; i < c.count; i++) {
      const from = ((c.head + i) % c.depth) * WC.STRIDE;
      ring.set(c.ring.subarray(from, from + WC.STRIDE), i * WC.STRIDE);
    }
    c.ring = ring;
    c.head = 0;
    c.depth = depth;
  }

  reqNotifyCq(cq: Cq): void {
    const c = asCq(cq);
    c.check("reqNotifyCq()");
    c.armed = true;
  }

  pollCq(cq: Cq, out: Float64Array, max: number): number {
    const c = asCq(cq);
    c.check("pollCq()");
    if (c.overrun) fail("pollCq()", "completion queue overrun (more completions than its depth)");
    const n = Math.min(max, c.count, Math.floor(out.length / WC.STRIDE));
    for (let i = 0; i < n; i++) {
      const from = c.head * WC.STRIDE;
      out.set(c.ring.subarray(from, from + WC.STRIDE), i * WC.STRIDE);
      c.head = (c.head + 1) % c.depth;
    }
    c.count -= n;
    return n;
  }

  destroyCq(cq: Cq): void {
    asCq(cq).markDestroyed("destroyCq()", "queue pairs attached");
    this.unuse();
  }

  createQp(id: CmId, pd: Pd, sendCq: Cq, recvCq: Cq, caps: QpCaps & { rnrRetry?: number }): Qp {
    const i = asId(id);
    const p = asPd(pd);
    const s = asCq(sendCq);
    const r = asCq(recvCq);
    for (const h of [i, p, s, r]) h.check("createQp()");
    if (i.qp !== undefined) fail("createQp()", "this CM identifier already has a queue pair");
    const d = SOFT_DEVICE;
    const within = (v: number, max: number) => Number.isInteger(v) && v >= 1 && v <= max;
    if (!within(caps.maxSendWr, d.maxQpWr) || !within(caps.maxRecvWr, d.maxQpWr)) fail("createQp()", `maxSendWr and maxRecvWr must be 1..${d.maxQpWr}`);
    if (!within(caps.maxSendSge, d.maxSge) || !within(caps.maxRecvSge, d.maxSge)) fail("createQp()", `maxSendSge and maxRecvSge must be 1..${d.maxSge}`);
    if (!Number.isInteger(caps.maxInlineData) || caps.maxInlineData < 0 || caps.maxInlineData > d.maxInlineData) fail("createQp()", `maxInlineData must be 0..${d.maxInlineData}`);
    const qp = new SoftQp(this, nextQpNum++, i, p, s, r, Object.freeze({ ...caps }), caps.rnrRetry ?? RNR_RETRY);
    i.qp = qp;
    i.use();
    p.use();
    s.use();
    r.use();
    return qp;
  }

  destroyQp(q: Qp): void {
    const qp = asQp(q);
    qp.check("destroyQp()");
    if (qp.users > 0) throw new KoalaError(ErrorCode.HANDLE_IN_USE, `destroyQp(): the queue pair still has ${qp.users} memory windows bound (deallocate them first)`);
    this.toError(qp, undefined);
    qp.markDestroyed("destroyQp()", "memory windows");
    qp.id.qp = undefined;
    qp.id.unuse();
    qp.pd.unuse();
    qp.sendCq.unuse();
    qp.recvCq.unuse();
  }

  postRecv(q: Qp, batch: WorkBatch): void {
    const qp = asQp(q);
    qp.check("postRecv()");
    if (qp.postedRecvs + batch.count > qp.caps.maxRecvWr) fail("postRecv()", `the receive queue holds at most ${qp.caps.maxRecvWr} work requests`);
    for (let k = 0; k < batch.count; k++) {
      const at = k * SWR.STRIDE;
      const n = batch.wr[at + RWR.SGE_COUNT]!;
      if (n > qp.caps.maxRecvSge) fail("postRecv()", `${n} scatter-gather entries; the queue pair allows ${qp.caps.maxRecvSge}`);
      const start = batch.wr[at + RWR.SGE_START]! * SGE.STRIDE;
      const sges = Array.from(batch.sge.subarray(start, start + n * SGE.STRIDE));
      const wrId = batch.wr[at + RWR.WR_ID]!;
      if (qp.state === "error") qp.recvCq.push(wrId, WcStatus.WR_FLUSH_ERR, WcOpcode.RECV, 0, 0, qp.qpNum, 0);
      else qp.recvs.push({ wrId, sges });
    }
  }

  postSend(q: Qp, batch: WorkBatch): void {
    const qp = asQp(q);
    qp.check("postSend()");
    if (qp.state === "init") fail("postSend()", "the queue pair is not connected yet");
    if (qp.state === "rts" && qp.sends.length + batch.count > qp.caps.maxSendWr) fail("postSend()", `the send queue holds at most ${qp.caps.maxSendWr} work requests`);
    const w = batch.wr;
    for (let k = 0; k < batch.count; k++) {
      const at = k * SWR.STRIDE;
      const wrId = w[at + SWR.WR_ID]!;
      const opcode = w[at + SWR.OPCODE]!;
      const flags = w[at + SWR.FLAGS]!;
      const n = w[at + SWR.SGE_COUNT]!;
      const sgeStart = w[at + SWR.SGE_START]! * SGE.STRIDE;
      const sges = batch.sge.subarray(sgeStart, sgeStart + n * SGE.STRIDE);
      const signaled = (flags & SendFlags.SIGNALED) !== 0;
      if (n > qp.caps.maxSendSge) fail("postSend()", `${n} scatter-gather entries; the queue pair allows ${qp.caps.maxSendSge}`);
      const wcOp = opcode === Opcode.RDMA_READ ? WcOpcode.RDMA_READ : opcode === Opcode.RDMA_WRITE || opcode === Opcode.RDMA_WRITE_WITH_IMM ? WcOpcode.RDMA_WRITE : WcOpcode.SEND;
      if (qp.state === "error") {
        qp.sendCq.push(wrId, WcStatus.WR_FLUSH_ERR, wcOp, 0, 0, qp.qpNum, 0);
        continue;
      }
      if (!(Object.values(Opcode) as number[]).includes(opcode)) fail("postSend()", `unknown opcode ${opcode}`);
      let total = 0;
      for (let j = 0; j < n; j++) total += sges[j * SGE.STRIDE + SGE.LENGTH]!;
      if (flags & SendFlags.INLINE && total > qp.caps.maxInlineData) fail("postSend()", `${total} bytes inline; the queue pair allows ${qp.caps.maxInlineData}`);
      const seq = qp.nextSeq++;
      if (opcode === Opcode.SEND || opcode === Opcode.SEND_WITH_IMM) softCounters.sends++;
      const out: Outstanding = { seq, wrId, opcode: wcOp, signaled, type: Pkt.SEND, packet: [], byteLen: total, readSges: undefined, rnrLeft: qp.rnrRetry };
      qp.sends.push(out);
      if (qp.failing) continue;
      const inject = softFaults.failSendIn > 0 && --softFaults.failSendIn === 0;
      const imm = w[at + SWR.IMM]! >>> 0;
      if (opcode === Opcode.RDMA_READ) {
        // The destination is checked now: a READ into memory without LOCAL_WRITE fails locally.
        const sgeList = Array.from(sges);
        if (this.gather(qp, sgeList, Access.LOCAL_WRITE) === undefined) {
          this.failLocal(qp, out, WcStatus.LOC_PROT_ERR);
          continue;
        }
        out.readSges = sgeList;
        const head = Buffer.allocUnsafe(20);
        head.writeUInt32LE(seq, 0);
        head.writeDoubleLE(w[at + SWR.REMOTE_ADDR]!, 4);
        head.writeUInt32LE(w[at + SWR.RKEY]! >>> 0, 12);
        head.writeUInt32LE(total, 16);
        out.type = Pkt.READ;
        out.packet = [head];
        qp.id.link!.send(Pkt.READ, head);
        continue;
      }
      // The payload is taken now (a NIC reads it by DMA any time before completion; taking it
      // at once is one of the allowed behaviours).
      const data = this.gather(qp, Array.from(sges), 0);
      if (data === undefined) {
        this.failLocal(qp, out, WcStatus.LOC_PROT_ERR);
        continue;
      }
      if (opcode === Opcode.SEND || opcode === Opcode.SEND_WITH_IMM || inject) {
        const head = Buffer.allocUnsafe(9);
        head.writeUInt32LE(seq, 0);
        // An injected fault is a SEND the responder refuses (REM_OP_ERR), in its turn.
        head[4] = inject ? INJECTED : opcode;
        head.writeUInt32LE(imm, 5);
        out.packet = [head, data];
        qp.id.link!.send(Pkt.SEND, head, data);
      } else {
        const head = Buffer.allocUnsafe(21);
        head.writeUInt32LE(seq, 0);
        head[4] = opcode;
        head.writeUInt32LE(imm, 5);
        head.writeDoubleLE(w[at + SWR.REMOTE_ADDR]!, 9);
        head.writeUInt32LE(w[at + SWR.RKEY]! >>> 0, 17);
        out.type = Pkt.WRITE;
        out.packet = [head, data];
        qp.id.link!.send(Pkt.WRITE, head, data);
      }
    }
  }

  /**
   * Resolves local scatter-gather entries. With `need` 0, returns a copy of their bytes joined;
   * with LOCAL_WRITE, checks that they may be written and returns an empty array. Undefined
   * when a key, bound or permission is wrong.
   */
  private gather(qp: SoftQp, sges: number[], need: number): Uint8Array | undefined {
    const views: Uint8Array[] = [];
    let total = 0;
    for (let j = 0; j < sges.length; j += SGE.STRIDE) {
      const v = this.localView(qp, sges[j + SGE.ADDR]!, sges[j + SGE.LENGTH]!, sges[j + SGE.LKEY]!, need);
      if (v === undefined) return undefined;
      views.push(v);
      total += v.byteLength;
    }
    if (need !== 0) return new Uint8Array(0);
    if (views.length === 1) return views[0]!.slice();
    const out = new Uint8Array(total);
    let at = 0;
    for (const v of views) {
      out.set(v, at);
      at += v.byteLength;
    }
    return out;
  }

  private localView(qp: SoftQp, addr: number, length: number, lkey: number, need: number): Uint8Array | undefined {
    const mr = this.byLkey.get(lkey);
    if (mr === undefined || mr.pd !== qp.pd || (mr.access & need) !== need) return undefined;
    const off = addr - mr.addr;
    if (!(off >= 0 && length >= 0 && off + length <= mr.length)) return undefined;
    return mr.bytes.subarray(off, off + length);
  }

  /** The target's check of an RDMA access: the region's bytes, or undefined (REM_ACCESS_ERR). */
  private remoteView(qp: SoftQp, addr: number, length: number, rkey: number, need: number): Uint8Array | undefined {
    const k = this.byRkey.get(rkey);
    // A window answers only on the queue pair it is bound to; a region only within its PD.
    const ok = k === undefined ? false : k instanceof SoftMw ? k.qp === qp : k.pd === qp.pd;
    const off = k === undefined ? -1 : addr - k.addr;
    if (k === undefined || !ok || (k.access & need) !== need || !(off >= 0 && length >= 0 && off + length <= k.length)) {
      softCounters.remoteAccessErrors++;
      return undefined;
    }
    const mr = k instanceof SoftMw ? k.mr : k;
    const at = addr - mr.addr;
    return mr.bytes.subarray(at, at + length);
  }

  /** Marks `out` as failed locally; it completes with `status` once everything before it has. */
  private failLocal(qp: SoftQp, out: Outstanding, status: number): void {
    out.localStatus = status;
    qp.failing = true;
    if (qp.sends[0] === out) this.complete(qp, out.seq, status);
  }

  /** Completes the outstanding send `seq` and everything before it with success (cumulative ACK), or `seq` with `status`. */
  private complete(qp: SoftQp, seq: number, status: number, readData?: Buffer): void {
    const sends = qp.sends;
    while (sends.length > 0 && sends[0]!.seq <= seq) {
      const o = sends.shift()!;
      if (o.seq === seq && status !== WcStatus.SUCCESS) {
        qp.sendCq.push(o.wrId, status, o.opcode, 0, 0, qp.qpNum, 0);
        this.toError(qp, status);
        return;
      }
      if (o.opcode === WcOpcode.RDMA_READ) {
        if (o.seq !== seq || readData === undefined) {
          // An ACK never answers a READ: the responder sends READ_RESP in order.
          sends.unshift(o);
          return;
        }
        let at = 0;
        const sg = o.readSges!;
        for (let j = 0; j < sg.length; j += SGE.STRIDE) {
          const v = this.localView(qp, sg[j]!, sg[j + 1]!, sg[j + 2]!, Access.LOCAL_WRITE);
          if (v === undefined) {
            qp.sendCq.push(o.wrId, WcStatus.LOC_PROT_ERR, o.opcode, 0, 0, qp.qpNum, 0);
            this.toError(qp, WcStatus.LOC_PROT_ERR);
            return;
          }
          v.set(readData.subarray(at, at + v.byteLength));
          at += v.byteLength;
        }
      }
      if (o.signaled) qp.sendCq.push(o.wrId, WcStatus.SUCCESS, o.opcode, o.byteLen, 0, qp.qpNum, 0);
    }
    const next = sends[0];
    if (next?.localStatus !== undefined) {
      sends.shift();
      qp.sendCq.push(next.wrId, next.localStatus, next.opcode, 0, 0, qp.qpNum, 0);
      this.toError(qp, next.localStatus);
    }
  }

  /** Moves `qp` to the error state: everything outstanding completes with WR_FLUSH_ERR, in order. */
  toError(qp: SoftQp, _status: number | undefined): void {
    if (qp.state === "error") return;
    qp.state = "error";
    if (qp.rnrTimer !== undefined) clearTimeout(qp.rnrTimer);
    for (const o of qp.sends.splice(0)) qp.sendCq.push(o.wrId, WcStatus.WR_FLUSH_ERR, o.opcode, 0, 0, qp.qpNum, 0);
    for (let i = qp.recvHead; i < qp.recvs.length; i++) qp.recvCq.push(qp.recvs[i]!.wrId, WcStatus.WR_FLUSH_ERR, WcOpcode.RECV, 0, 0, qp.qpNum, 0);
    qp.recvs.length = 0;
    qp.recvHead = 0;
  }

  // ---- the responder -----------------------------------------------------------------------

  /** Handles one data-path packet for `qp` (as its NIC would). */
  onDataPacket(qp: SoftQp, type: number, body: Buffer): void {
    if (qp.state !== "rts") return;
    switch (type) {
      case Pkt.SEND:
      case Pkt.WRITE:
      case Pkt.READ:
        return this.respond(qp, type, body);
      case Pkt.ACK:
        return this.complete(qp, body.readUInt32LE(0), WcStatus.SUCCESS);
      case Pkt.READ_RESP:
        return this.complete(qp, body.readUInt32LE(0), WcStatus.SUCCESS, body.subarray(4));
      case Pkt.NAK: {
        const seq = body.readUInt32LE(0);
        this.complete(qp, seq - 1, WcStatus.SUCCESS);
        return this.complete(qp, seq, body[4]!);
      }
      case Pkt.RNR_NAK:
        return this.onRnr(qp, body.readUInt32LE(0));
      default:
        return;
    }
  }

  private respond(qp: SoftQp, type: number, body: Buffer): void {
    const seq = body.readUInt32LE(0);
    // After a "receiver not ready", everything behind the refused packet is dropped until the
    // sender retransmits from it (go-back-N), so receives are still consumed in order.
    if (seq !== qp.expected) return;
    const link = qp.id.link!;
    const nak = (status: number) => {
      this.flushAck(qp);
      const b = Buffer.allocUnsafe(5);
      b.writeUInt32LE(seq, 0);
      b[4] = status;
      link.send(Pkt.NAK, b);
      qp.expected++;
    };
    if (type === Pkt.READ) {
      const src = this.remoteView(qp, body.readDoubleLE(4), body.readUInt32LE(16), body.readUInt32LE(12), Access.REMOTE_READ);
      if (src === undefined) return nak(WcStatus.REM_ACCESS_ERR);
      this.flushAck(qp);
      const head = Buffer.allocUnsafe(4);
      head.writeUInt32LE(seq, 0);
      link.send(Pkt.READ_RESP, head, src.slice());
      qp.expected++;
      return;
    }
    const opcode = body[4]!;
    if (opcode === INJECTED) return nak(WcStatus.REM_OP_ERR);
    const imm = body.readUInt32LE(5);
    const withImm = opcode === Opcode.SEND_WITH_IMM || opcode === Opcode.RDMA_WRITE_WITH_IMM;
    const consumes = type === Pkt.SEND || opcode === Opcode.RDMA_WRITE_WITH_IMM;
    if (consumes && qp.postedRecvs === 0) {
      softCounters.rnrNaks++;
      this.flushAck(qp);
      const b = Buffer.allocUnsafe(4);
      b.writeUInt32LE(seq, 0);
      link.send(Pkt.RNR_NAK, b);
      return;
    }
    let data: Buffer;
    if (type === Pkt.WRITE) {
      data = body.subarray(21);
      const dst = this.remoteView(qp, body.readDoubleLE(9), data.length, body.readUInt32LE(17), Access.REMOTE_WRITE);
      if (dst === undefined) return nak(WcStatus.REM_ACCESS_ERR);
      dst.set(data);
    } else {
      data = body.subarray(9);
    }
    if (consumes) {
      const r = qp.recvs[qp.recvHead]!;
      qp.recvs[qp.recvHead++] = undefined as never;
      if (qp.recvHead === qp.recvs.length) {
        qp.recvs.length = 0;
        qp.recvHead = 0;
      }
      let status: number = WcStatus.SUCCESS;
      if (type === Pkt.SEND) {
        let at = 0;
        for (let j = 0; j < r.sges.length && at < data.length; j += SGE.STRIDE) {
          const v = this.localView(qp, r.sges[j]!, r.sges[j + 1]!, r.sges[j + 2]!, Access.LOCAL_WRITE);
          if (v === undefined) {
            status = WcStatus.LOC_PROT_ERR;
            break;
          }
          const n = Math.min(v.byteLength, data.length - at);
          v.set(data.subarray(at, at + n));
          at += n;
        }
        if (status === WcStatus.SUCCESS && at < data.length) status = WcStatus.LOC_LEN_ERR;
      }
      if (status !== WcStatus.SUCCESS) {
        qp.recvCq.push(r.wrId, status, WcOpcode.RECV, 0, 0, qp.qpNum, 0);
        nak(WcStatus.REM_INV_REQ_ERR);
        this.toError(qp, status);
        return;
      }
      qp.recvCq.push(r.wrId, WcStatus.SUCCESS, type === Pkt.SEND ? WcOpcode.RECV : WcOpcode.RECV_RDMA_WITH_IMM, data.length, imm, qp.qpNum, withImm ? WC_WITH_IMM : 0);
    }
    qp.expected++;
    qp.ackPending = seq;
    if (!qp.ackScheduled) {
      qp.ackScheduled = true;
      process.nextTick(() => this.flushAck(qp));
    }
  }

  /** Sends the cumulative ACK owed, before any other answer so answers stay in order. */
  private flushAck(qp: SoftQp): void {
    qp.ackScheduled = false;
    if (qp.ackPending < 0 || qp.state !== "rts") return;
    const b = Buffer.allocUnsafe(4);
    b.writeUInt32LE(qp.ackPending, 0);
    qp.ackPending = -1;
    qp.id.link?.send(Pkt.ACK, b);
  }

  private onRnr(qp: SoftQp, seq: number): void {
    this.complete(qp, seq - 1, WcStatus.SUCCESS);
    const o = qp.sends[0];
    if (o === undefined || o.seq !== seq || qp.rnrTimer !== undefined) return;
    if (o.rnrLeft-- <= 0) {
      this.complete(qp, seq, WcStatus.RNR_RETRY_EXC_ERR);
      return;
    }
    qp.rnrTimer = setTimeout(() => {
      qp.rnrTimer = undefined;
      if (qp.state !== "rts") return;
      for (const s of qp.sends) qp.id.link?.send(s.type, ...s.packet);
    }, RNR_DELAY_MS);
    qp.rnrTimer.unref();
  }

  // ---- connection manager ------------------------------------------------------------------

  async listen(host: string, port: number, onEvent: (event: CmEvent) => void): Promise<CmListener> {
    this.check("listen()");
    if (!isLocalHost(host)) throw new KoalaError(ErrorCode.HOST_NOT_FOUND, `listen on rdma://${host}:${port}: the soft provider serves only addresses of this host`);
    const fixed = port !== 0;
    for (let attempt = 0; ; attempt++) {
      const p = fixed ? port : 20000 + Math.floor(Math.random() * 40000);
      const path = softPortPath(p);
      const server = net.createServer();
      try {
        await bindUnix(server, path);
      } catch (err) {
        if (!fixed && attempt < 64) continue;
        throw err;
      }
      const listener = new SoftCmListener(server, p, path);
      this.use();
      server.on("connection", (socket) => this.incoming(listener, socket, host, onEvent));
      return listener;
    }
  }

  private incoming(listener: SoftCmListener, socket: net.Socket, host: string, onEvent: (e: CmEvent) => void): void {
    const id = new SoftCmId(this, onEvent);
    this.use();
    id.state = "requested";
    id.localAddress = formatAddress("rdma", host === "0.0.0.0" || host === "::" ? "127.0.0.1" : host, listener.port, "");
    this.attach(id, socket);
  }

  closeListener(listener: CmListener): void {
    const l = asListener(listener);
    if (l.destroyed) return;
    l.markDestroyed("closeListener()", "users");
    l.server.close();
    this.unuse();
  }

  createId(onEvent: (event: CmEvent) => void): CmId {
    this.check("createId()");
    this.use();
    return new SoftCmId(this, onEvent);
  }

  /** Nothing to resolve on the soft fabric: a host it cannot reach is `unreachable` at connect, as before. */
  async resolve(cmId: CmId, _host: string, _port: number, _timeoutMs: number): Promise<void> {
    const id = asId(cmId);
    id.check("resolve()");
    if (id.state !== "idle") fail("resolve()", "the identifier is already in use");
  }

  connect(cmId: CmId, host: string, port: number, privateData: Uint8Array, timeoutMs: number): void {
    const id = asId(cmId);
    id.check("connect()");
    if (id.state !== "idle") fail("connect()", "the identifier is already in use");
    if (id.qp === undefined) fail("connect()", "create the queue pair first");
    id.state = "connecting";
    id.remoteAddress = formatAddress("rdma", host, port, "");
    // A source port for the address the peer sees, as the CM allocates one.
    const srcPort = 32768 + ((process.pid * 7919 + nextSrcPort++) % 28000);
    id.localAddress = formatAddress("rdma", "127.0.0.1", srcPort, "");
    const fire = (type: "rejected" | "unreachable", reason: string, data?: Uint8Array, timedOut = false) => {
      if (id.state !== "connecting") return;
      id.state = "done";
      clearTimeout(id.timer);
      id.link?.destroy();
      id.onEvent({ type, id, reason, ...(data === undefined ? {} : { privateData: data }), ...(timedOut ? { timedOut } : {}) });
    };
    if (!isLocalHost(host)) {
      setImmediate(() => fire("unreachable", `${host} is not this host; the soft provider reaches only local processes`));
      return;
    }
    id.timer = setTimeout(() => fire("unreachable", `no answer within ${timeoutMs} ms`, undefined, true), timeoutMs);
    id.timer.unref();
    const socket = net.connect({ path: softPortPath(port) });
    socket.once("error", (err) => {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === "ENOENT" || code === "ECONNREFUSED") fire("rejected", `no RDMA listener on port ${port}`);
      else fire("unreachable", err.message);
    });
    socket.once("connect", () => {
      if (id.state !== "connecting") {
        socket.destroy();
        return;
      }
      this.attach(id, socket);
      const head = Buffer.allocUnsafe(2);
      head.writeUInt16LE(srcPort, 0);
      id.link!.send(Pkt.CM_REQ, head, privateData.slice());
    });
    (id as SoftCmId & { fire?: typeof fire }).fire = fire;
  }

  /** Puts a socket under `id` and routes its packets. */
  private attach(id: SoftCmId, socket: net.Socket): void {
    id.link = new SoftLink(
      socket,
      (type, body) => this.onPacket(id, type, body),
      () => this.lost(id, "the peer's connection was lost"),
    );
  }

  private onPacket(id: SoftCmId, type: number, body: Buffer): void {
    if (id.destroyed) return;
    switch (type) {
      case Pkt.CM_REQ:
        if (id.state !== "requested" || body.length < 2) return;
        id.remoteAddress = formatAddress("rdma", "127.0.0.1", body.readUInt16LE(0), "");
        id.onEvent({ type: "connect_request", id, privateData: body.slice(2) });
        return;
      case Pkt.CM_ACCEPT:
        if (id.state !== "connecting") return;
        clearTimeout(id.timer);
        id.state = "connected";
        if (id.qp !== undefined) id.qp.state = "rts";
        id.link!.send(Pkt.CM_RTU);
        id.onEvent({ type: "established", id, privateData: body.slice() });
        return;
      case Pkt.CM_REJECT: {
        const fire = (id as SoftCmId & { fire?: (t: "rejected", r: string, d?: Uint8Array) => void }).fire;
        fire?.("rejected", "the peer rejected the connection", body.slice());
        return;
      }
      case Pkt.CM_RTU:
        if (id.state !== "accepting") return;
        id.state = "connected";
        id.onEvent({ type: "established", id });
        return;
      case Pkt.CM_DISCONNECT:
        this.lost(id, "the peer disconnected");
        return;
      default:
        if (id.qp !== undefined && id.state === "connected") this.onDataPacket(id.qp, type, body);
    }
  }

  /** The link ended or the peer disconnected: the QP goes to error, the application hears `disconnected` once. */
  private lost(id: SoftCmId, reason: string): void {
    if (id.state === "connecting") {
      (id as SoftCmId & { fire?: (t: "unreachable", r: string) => void }).fire?.("unreachable", reason);
      return;
    }
    const was = id.state;
    id.state = "done";
    if (id.qp !== undefined) this.toError(id.qp, undefined);
    id.link?.destroy();
    if ((was === "connected" || was === "accepting" || was === "requested") && !id.destroyed) id.onEvent({ type: "disconnected", id, reason });
  }

  accept(cmId: CmId, privateData: Uint8Array): void {
    const id = asId(cmId);
    id.check("accept()");
    if (id.state !== "requested") fail("accept()", "no connection request to accept");
    if (id.qp === undefined) fail("accept()", "create the queue pair first");
    id.state = "accepting";
    // The responder may take SENDs from here on: the initiator sends only after ACCEPT.
    id.qp.state = "rts";
    id.link!.send(Pkt.CM_ACCEPT, privateData.slice());
  }

  reject(cmId: CmId, privateData: Uint8Array): void {
    const id = asId(cmId);
    id.check("reject()");
    if (id.state !== "requested") fail("reject()", "no connection request to reject");
    id.state = "done";
    id.link!.send(Pkt.CM_REJECT, privateData.slice());
    id.link!.end();
  }

  disconnect(cmId: CmId): void {
    const id = asId(cmId);
    id.check("disconnect()");
    if (id.state === "done" || id.state === "idle") return;
    const was = id.state;
    id.state = "done";
    clearTimeout(id.timer);
    if (id.qp !== undefined) this.toError(id.qp, undefined);
    id.link?.send(Pkt.CM_DISCONNECT);
    id.link?.end();
    if (was === "connected" || was === "accepting") id.onEvent({ type: "disconnected", id, reason: "disconnected by this side" });
  }

  destroyId(cmId: CmId): void {
    const id = asId(cmId);
    id.markDestroyed("destroyId()", "queue pair (destroy it first)");
    clearTimeout(id.timer);
    id.state = "done";
    id.link?.destroy();
    this.unuse();
  }

  close(): void {
    this.markDestroyed("close()", "protection domains, completion queues or identifiers left");
  }
}

async function bindUnix(server: net.Server, path: string): Promise<void> {
  const tryListen = () =>
    new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen({ path, backlog: 4096 }, () => {
        server.off("error", reject);
        resolve();
      });
    });
  try {
    await tryListen();
    return;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "EADDRINUSE") throw new KoalaError(ErrorCode.SYSTEM, `soft RDMA listen on ${path}: ${(err as Error).message}`, { cause: err });
  }
  // A socket file left by a process that died is taken over; a live one is in use.
  const alive = await new Promise<boolean>((resolve) => {
    const probe = net.connect({ path });
    probe.once("connect", () => (probe.destroy(), resolve(true)));
    probe.once("error", (e) => resolve((e as NodeJS.ErrnoException).code === "EAGAIN"));
  });
  if (alive) throw new KoalaError(ErrorCode.ADDRESS_IN_USE, `the soft RDMA port of ${path} is in use by another listener`);
  if (existsSync(path)) unlinkSync(path);
  await tryListen();
}

/** The soft object behind a handle; a handle of another provider is refused (KOALA_ERR_VERBS). */
function own<T>(h: unknown, cls: abstract new (...args: never[]) => T, what: string): T {
  if (!(h instanceof cls)) fail("verbs", `not ${what} of the soft provider`);
  return h;
}
const asPd = (h: Pd) => own(h, SoftPd, "a protection domain");
const asMr = (h: Mr) => own(h, SoftMr, "a memory region");
const asCq = (h: Cq) => own(h, SoftCq, "a completion queue");
const asQp = (h: Qp) => own(h, SoftQp, "a queue pair");
const asId = (h: CmId) => own(h, SoftCmId, "a CM identifier");
const asListener = (h: CmListener) => own(h, SoftCmListener, "a CM listener");

/** The software provider. */
export const softProvider: VerbsProvider = {
  name: "soft",
  software: true,
  description: "software verbs provider over local sockets (tests and development; not for production)",
  unavailableReason: () => (process.platform === "win32" ? "the soft provider needs Unix-domain sockets" : undefined),
  devices: () => [SOFT_DEVICE],
  open(device: string, port: number): VerbsContext {
    if (device !== SOFT_DEVICE.name || port !== 1) throw new KoalaError(ErrorCode.VERBS, `open(): the soft provider has only device soft0, port 1 (asked for ${device}:${port})`);
    return new SoftContext();
  },
};
