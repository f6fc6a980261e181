/**
 * An opened device of the native addon, with the verbs objects built on it so far: protection
 * domains, memory regions and completion queues. It validates every argument here, before the addon (which checks
 * again), with the same Handle rules as every provider (use after destroy, destroy order).
 *
 * It is the start of the native VerbsContext. Queue pairs are created with ibv_create_qp and
 * not connected (the connection manager, which creates and connects them, is still to come),
 * so the `verbs` provider does not hand it out yet.
 */
import { ErrorCode, KoalaError } from "../../errors.js";
import type { NativeBinding } from "./native.js";
import { Access, Handle, WC, WorkBatch, type Cq, type Mr, type Pd, type Qp, type QpCaps } from "./verbs.js";

const ACCESS_MASK = Access.LOCAL_WRITE | Access.REMOTE_WRITE | Access.REMOTE_READ | Access.MW_BIND;

function fail(op: string, why: string): never {
  throw new KoalaError(ErrorCode.INVALID_ARGUMENT, `${op}: ${why}`);
}

class NativePd extends Handle {
  constructor(
    readonly context: NativeContext,
    readonly id: number,
  ) {
    super("pd");
  }
}

class NativeCq extends Handle {
  constructor(
    readonly context: NativeContext,
    readonly id: number,
    readonly depth: number,
  ) {
    super("cq");
  }
}

class NativeQp extends Handle implements Qp {
  constructor(
    readonly pd: NativePd,
    readonly sendCq: NativeCq,
    readonly recvCq: NativeCq,
    readonly id: number,
    readonly qpNum: number,
    readonly caps: Readonly<QpCaps>,
  ) {
    super("qp");
  }
}

class NativeMrHandle extends Handle implements Mr {
  constructor(
    readonly pd: NativePd,
    readonly id: number,
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

/** A device opened through the native addon (PDs and MRs so far). */
export class NativeContext extends Handle {
  readonly #binding: NativeBinding;
  readonly #id: number;

  private constructor(
    binding: NativeBinding,
    id: number,
    /** The device's name. */
    readonly name: string,
  ) {
    super("context");
    this.#binding = binding;
    this.#id = id;
  }

  /** Opens device `name` through `binding` (loaded, with its libraries). */
  static open(binding: NativeBinding, name: string): NativeContext {
    if (typeof name !== "string" || name.length === 0 || name.length > 63 || name.includes("\0")) fail("open()", "a device name is 1 to 63 characters");
    return new NativeContext(binding, binding.openDevice(name), name);
  }

  /** Allocates a protection domain. */
  allocPd(): Pd {
    this.check("allocPd()");
    const pd = new NativePd(this, this.#binding.allocPd(this.#id));
    this.use();
    return pd;
  }

  /** Deallocates a PD; KOALA_ERR_HANDLE_IN_USE while MRs use it. */
  deallocPd(pd: Pd): void {
    const p = this.#pd(pd, "deallocPd()");
    p.markDestroyed("deallocPd()", "memory regions or queue pairs");
    this.#binding.deallocPd(p.id);
    this.unuse();
  }

  /**
   * Registers `bytes` (a range of an ArrayBuffer, not a SharedArrayBuffer) with `access` flags.
   * The ArrayBuffer is kept alive by the addon until {@link deregMr}.
   */
  regMr(pd: Pd, bytes: Uint8Array, access: number): Mr {
    const p = this.#pd(pd, "regMr()");
    if (!(bytes instanceof Uint8Array)) fail("regMr()", "bytes must be a Uint8Array");
    if (!(bytes.buffer instanceof ArrayBuffer)) fail("regMr()", "bytes must view an ArrayBuffer (a SharedArrayBuffer cannot be held alive by one thread)");
    if (bytes.byteLength === 0) fail("regMr()", "bytes is empty");
    if (!Number.isInteger(access) || (access & ~ACCESS_MASK) !== 0) fail("regMr()", `unknown access flags ${access}`);
    if (access & Access.REMOTE_WRITE && !(access & Access.LOCAL_WRITE)) fail("regMr()", "REMOTE_WRITE requires LOCAL_WRITE");
    const r = this.#binding.regMr(p.id, bytes.buffer, bytes.byteOffset, bytes.byteLength, access);
    p.use();
    return new NativeMrHandle(p, r.handle, bytes, r.lkey, r.rkey, r.addr, access);
  }

  /** Deregisters a memory region. */
  deregMr(mr: Mr): void {
    if (!(mr instanceof NativeMrHandle) || mr.pd.context !== this) fail("deregMr()", "not a memory region of this device");
    mr.markDestroyed("deregMr()", "memory windows bound");
    this.#binding.deregMr(mr.id);
    mr.pd.unuse();
  }

  /**
   * Creates a completion queue of `depth` entries; `onNotify` is called (asynchronously, once)
   * after {@link reqNotifyCq} when a completion arrives, by the addon's watch of the completion
   * channel's fd (no polling loop).
   */
  createCq(depth: number, onNotify: () => void): Cq {
    this.check("createCq()");
    if (!Number.isInteger(depth) || depth < 1 || depth > 4194304) fail("createCq()", `depth must be 1..4194304, got ${depth}`);
    if (typeof onNotify !== "function") fail("createCq()", "onNotify must be a function");
    const cq = new NativeCq(this, this.#binding.createCq(this.#id, depth, onNotify), depth);
    this.use();
    return cq;
  }

  /** Arms the CQ's notification for the next completion. */
  reqNotifyCq(cq: Cq): void {
    this.#binding.reqNotifyCq(this.#cq(cq, "reqNotifyCq()").id);
  }

  /** Moves up to `max` completions into `out` ({@link WC} layout); returns how many. */
  pollCq(cq: Cq, out: Float64Array, max: number): number {
    const c = this.#cq(cq, "pollCq()");
    if (!(out instanceof Float64Array)) fail("pollCq()", "out must be a Float64Array");
    if (!Number.isInteger(max) || max < 0 || max * WC.STRIDE > out.length) fail("pollCq()", `max must be 0..${Math.floor(out.length / WC.STRIDE)} (out's capacity), got ${max}`);
    return this.#binding.pollCq(c.id, out, max);
  }

  /** Destroys a CQ; KOALA_ERR_HANDLE_IN_USE while a QP is attached. */
  destroyCq(cq: Cq): void {
    const c = this.#cq(cq, "destroyCq()");
    c.markDestroyed("destroyCq()", "queue pairs attached");
    this.#binding.destroyCq(c.id);
    this.unuse();
  }

  /** Creates an RC queue pair with its send and receive CQs; `caps` are checked by the provider, which may grant more. */
  createQp(pd: Pd, sendCq: Cq, recvCq: Cq, caps: QpCaps): Qp {
    const p = this.#pd(pd, "createQp()");
    const s = this.#cq(sendCq, "createQp()");
    const r = this.#cq(recvCq, "createQp()");
    for (const [k, max] of [["maxSendWr", 1 << 20], ["maxRecvWr", 1 << 20], ["maxSendSge", 64], ["maxRecvSge", 64], ["maxInlineData", 1 << 16]] as const) {
      const v = caps?.[k];
      if (!Number.isInteger(v) || v < (k === "maxInlineData" ? 0 : 1) || v > max) fail("createQp()", `caps.${k} must be an integer up to ${max}, got ${String(v)}`);
    }
    const q = this.#binding.createQp(p.id, s.id, r.id, caps.maxSendWr, caps.maxRecvWr, caps.maxSendSge, caps.maxRecvSge, caps.maxInlineData);
    p.use();
    s.use();
    r.use();
    const granted = { maxSendWr: q.maxSendWr, maxRecvWr: q.maxRecvWr, maxSendSge: q.maxSendSge, maxRecvSge: q.maxRecvSge, maxInlineData: q.maxInlineData };
    return new NativeQp(p, s, r, q.handle, q.qpNum, Object.freeze(granted));
  }

  /** Destroys a queue pair. */
  destroyQp(qp: Qp): void {
    const q = this.#qp(qp, "destroyQp()");
    q.markDestroyed("destroyQp()", "memory windows bound");
    this.#binding.destroyQp(q.id);
    q.pd.unuse();
    q.sendCq.unuse();
    q.recvCq.unuse();
  }

  /** Posts the receive work requests of `batch`. */
  postRecv(qp: Qp, batch: WorkBatch): void {
    const q = this.#qp(qp, "postRecv()");
    if (!(batch instanceof WorkBatch)) fail("postRecv()", "batch must be a WorkBatch");
    this.#binding.postRecv(q.id, batch.wr, batch.count, batch.sge, batch.sgeCount);
  }

  /** Posts the send work requests of `batch`. */
  postSend(qp: Qp, batch: WorkBatch): void {
    const q = this.#qp(qp, "postSend()");
    if (!(batch instanceof WorkBatch)) fail("postSend()", "batch must be a WorkBatch");
    this.#binding.postSend(q.id, batch.wr, batch.count, batch.sge, batch.sgeCount);
  }

  /** Closes the device; KOALA_ERR_HANDLE_IN_USE while PDs or CQs remain. */
  close(): void {
    this.markDestroyed("close()", "protection domains or completion queues");
    this.#binding.closeDevice(this.#id);
  }

  #qp(qp: Qp, op: string): NativeQp {
    this.check(op);
    if (!(qp instanceof NativeQp) || qp.pd.context !== this) fail(op, "not a queue pair of this device");
    qp.check(op);
    return qp;
  }

  #cq(cq: Cq, op: string): NativeCq {
    this.check(op);
    if (!(cq instanceof NativeCq) || cq.context !== this) fail(op, "not a completion queue of this device");
    cq.check(op);
    return cq;
  }

  #pd(pd: Pd, op: string): NativePd {
    this.check(op);
    if (!(pd instanceof NativePd) || pd.context !== this) fail(op, "not a protection domain of this device");
    pd.check(op);
    return pd;
  }
}
