/**
 * The native {@link VerbsContext}: a device opened through the native addon (libibverbs and
 * librdmacm, or the software RNIC srnic standing in for both), with protection domains, memory
 * regions, type-2 memory windows, completion queues, queue pairs and the connection manager.
 * Every argument is checked here, before the addon (which checks again), with the same Handle
 * rules as every provider (use after destroy, destroy order).
 *
 * Connection-manager events come from the addon's one event channel per thread and are mapped
 * onto {@link CmEvent} as the software provider (soft.ts) produces them: `connect_request`,
 * `established`, `rejected` (by the peer, or no listener), `unreachable` (with `timedOut` when
 * the peer did not answer in time) and `disconnected` (once, by either side or a lost peer).
 */
import { lookup } from "node:dns/promises";
import { isIPv4 } from "node:net";
import { ErrorCode, KoalaError } from "../../errors.js";
import { log, logLimited } from "../../log.js";
import { formatAddress } from "../address.js";
import { CmEventCode, type NativeBinding } from "./native.js";
import {
  Access,
  Handle,
  WC,
  WorkBatch,
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
} from "./verbs.js";

const ACCESS_MASK = Access.LOCAL_WRITE | Access.REMOTE_WRITE | Access.REMOTE_READ | Access.MW_BIND;
/** Largest CQ depth asked of the addon (which checks the same); the device's max_cqe may be lower. */
const MAX_CQ_DEPTH = 4194304;

/**
 * Send work requests a queue pair gets beyond those asked for: room for the unsignaled window
 * binds, which occupy the send queue until a later signaled request completes and which the
 * caller does not count.
 */
export const BIND_HEADROOM = 256;

/** Most bytes of private data a connect, accept or reject carries (rdma_conn_param). */
export const MAX_PRIVATE_DATA = 56;

/** rdma_cm_event status of a reject by the peer's application (IB_CM_REJ_CONSUMER_DEFINED). */
const REJECT_CONSUMER = 28;
/** Status of a connect to a port nothing listens on (IB_CM_REJ_INVALID_SERVICE_ID; ECONNREFUSED on iWARP). */
const REJECT_NO_LISTENER = new Set([8, 111, -111]);
const ETIMEDOUT = 110;
/** Backlog of every listener (as the software provider's). */
const BACKLOG = 4096;

const NO_DATA = new Uint8Array(0);

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
    /** Entries last asked for. */
    public depth: number,
    /** Entries the device granted at the last resize (cq->cqe, at least `depth`); as asked before any. */
    public capacity: number,
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
    /** The identifier it was created on; undefined for a queue pair outside the connection manager. */
    readonly cmId: NativeCmId | undefined,
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

class NativeMw extends Handle implements Mw {
  constructor(
    readonly qp: NativeQp,
    readonly mr: NativeMrHandle,
    readonly id: number,
    readonly rkey: number,
    readonly addr: number,
    readonly length: number,
    readonly access: number,
  ) {
    super("mw");
  }
}

type IdState = "idle" | "resolving" | "resolved" | "connecting" | "requested" | "accepting" | "connected" | "done";

/** States in which an identifier keeps the thread alive, as a socket would: something is under way or up. */
const ACTIVE: ReadonlySet<IdState> = new Set(["resolving", "resolved", "connecting", "requested", "accepting", "connected"]);

class NativeCmId extends Handle implements CmId {
  #state: IdState = "idle";
  /** Counted in {@link keepAlive}. */
  active = false;
  localAddress = "";
  remoteAddress = "";
  qp: NativeQp | undefined;
  timer: NodeJS.Timeout | undefined;
  /** The pending {@link NativeContext.resolve}. */
  resolving: { resolve: () => void; reject: (err: Error) => void; host: string; port: number; deadline: number } | undefined;
  /** The port connected to (for reasons). */
  port = 0;
  constructor(
    readonly context: NativeContext,
    readonly id: number,
    public onEvent: (event: CmEvent) => void,
  ) {
    super("cm_id");
  }

  get state(): IdState {
    return this.#state;
  }

  set state(s: IdState) {
    this.#state = s;
    keepAlive(this, ACTIVE.has(s));
  }
}

class NativeCmListener extends Handle implements CmListener {
  constructor(
    readonly context: NativeContext,
    readonly id: number,
    readonly host: string,
    readonly port: number,
    readonly onEvent: (event: CmEvent) => void,
  ) {
    super("cm_listener");
  }
  /** Counted in {@link keepAlive}. */
  active = false;
}

// ---- the connection manager of this thread ---------------------------------------------------

/** Identifiers and listeners of this thread by addon handle (events name them by handle). */
const cmObjects = new Map<number, NativeCmId | NativeCmListener>();
/** The binding whose event channel this thread set up. */
let cmBinding: NativeBinding | undefined;

/** Listeners and identifiers under way or up in this thread: while there are any, the CM watch keeps the thread alive. */
let cmActive = 0;

/** Counts `o` as keeping the thread alive (`on`) or not; the CM watch is referenced while the count is above 0. */
function keepAlive(o: { active: boolean }, on: boolean): void {
  if (o.active === on || cmBinding === undefined) return;
  o.active = on;
  cmActive += on ? 1 : -1;
  if (cmActive === (on ? 1 : 0)) cmBinding.cmRef(on);
}

function cmSetup(binding: NativeBinding): void {
  if (cmBinding === binding) return;
  binding.cmInit(onCmEvent);
  cmBinding = binding;
}

/** Every CM event of this thread, from the addon (in order, already acknowledged). Nothing may escape. */
function onCmEvent(type: number, handle: number, status: number, data: Uint8Array | undefined, listener: number | undefined): void {
  try {
    if (type === CmEventCode.CONNECT_REQUEST) {
      const l = listener === undefined ? undefined : cmObjects.get(listener);
      if (l instanceof NativeCmListener && !l.destroyed) {
        l.context.incoming(l, handle, data);
        return;
      }
      // A request through a listener that is gone: refused and forgotten.
      cmBinding!.reject(handle, NO_DATA);
      cmBinding!.destroyId(handle);
      return;
    }
    const id = cmObjects.get(handle);
    if (id instanceof NativeCmId && !id.destroyed) id.context.onCmEvent(id, type, status, data);
  } catch (err) {
    logLimited("rdma.cm-event-error", "error", "transport", `RDMA connection manager event ${type}: ${(err as Error)?.stack ?? String(err)}`);
  }
}

/** `host` as the dotted IPv4 address the connection manager takes. */
async function ipv4(host: string, op: string): Promise<string> {
  if (typeof host !== "string") fail(op, "host must be a string");
  if (host === "localhost" || host === "::1") return "127.0.0.1";
  if (host === "::" || host === "") return "0.0.0.0";
  if (isIPv4(host)) return host;
  try {
    return (await lookup(host, { family: 4 })).address;
  } catch (err) {
    throw new KoalaError(ErrorCode.HOST_NOT_FOUND, `${op}: cannot resolve ${host}: ${(err as Error).message}`, { cause: err });
  }
}

function checkPort(op: string, port: number): void {
  if (!Number.isInteger(port) || port < 0 || port > 65535) fail(op, `port must be 0..65535, got ${String(port)}`);
}

function checkTimeout(op: string, ms: number): void {
  if (!Number.isInteger(ms) || ms < 1 || ms > 2 ** 31 - 1) fail(op, `timeoutMs must be a positive integer, got ${String(ms)}`);
}

function checkPrivateData(op: string, data: Uint8Array): void {
  if (!(data instanceof Uint8Array) || data.byteLength > MAX_PRIVATE_DATA) fail(op, `privateData must be a Uint8Array of at most ${MAX_PRIVATE_DATA} bytes`);
}

/** `a.b.c.d:port` from the addon as an rdma:// address, or "" when the CM did not know it. */
function cmAddress(text: string): string {
  const at = text.lastIndexOf(":");
  if (at < 0) return "";
  const port = Number(text.slice(at + 1));
  if (!(port > 0)) return "";
  return formatAddress("rdma", text.slice(0, at), port, "");
}

function stubDevice(name: string): DeviceInfo {
  return { name, provider: "verbs", software: false, ports: [], maxSge: 0, maxQpWr: 0, maxInlineData: 0, maxCqe: 0, maxMrBytes: 0 };
}

/** Options of {@link NativeContext.open}. */
export interface NativeOpenOptions {
  /** The device's description (its limits size the bind headroom). */
  device?: DeviceInfo;
  /** The port used. Default 1. */
  port?: number;
  /** Take librdmacm's context of the device (needed for the connection manager). Default: true when `device` is given. */
  forCm?: boolean;
}

/** A device opened through the native addon: the full {@link VerbsContext}. */
export class NativeContext extends Handle implements VerbsContext {
  readonly #binding: NativeBinding;
  readonly #id: number;

  private constructor(
    binding: NativeBinding,
    id: number,
    /** The device. */
    readonly device: DeviceInfo,
    /** The port used. */
    readonly port: number,
  ) {
    super("context");
    this.#binding = binding;
    this.#id = id;
  }

  /** The device's name. */
  get name(): string {
    return this.device.name;
  }

  /** Opens device `name` through `binding` (loaded, with its libraries). */
  static open(binding: NativeBinding, name: string, options: NativeOpenOptions = {}): NativeContext {
    if (typeof name !== "string" || name.length === 0 || name.length > 63 || name.includes("\0")) fail("open()", "a device name is 1 to 63 characters");
    const forCm = options.forCm ?? options.device !== undefined;
    return new NativeContext(binding, binding.openDevice(name, forCm), options.device ?? stubDevice(name), options.port ?? 1);
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

  /** Deregisters a memory region; KOALA_ERR_HANDLE_IN_USE while windows are bound over it. */
  deregMr(mr: Mr): void {
    const m = this.#mr(mr, "deregMr()");
    m.markDestroyed("deregMr()", "memory windows bound");
    this.#binding.deregMr(m.id);
    m.pd.unuse();
  }

  /**
   * Binds a type-2 memory window over `length` bytes at `addr` of `mr` (registered with
   * MW_BIND) to `qp`, with remote `access` (REMOTE_READ, REMOTE_WRITE): the bind work request is
   * posted, unsignaled, on `qp`'s send queue, so it takes effect before anything posted after it.
   */
  bindMw(qp: Qp, mr: Mr, addr: number, length: number, access: number): Mw {
    const q = this.#qp(qp, "bindMw()");
    const m = this.#mr(mr, "bindMw()");
    m.check("bindMw()");
    if (q.pd !== m.pd) fail("bindMw()", "the memory region and the queue pair belong to different protection domains");
    if (!(m.access & Access.MW_BIND)) fail("bindMw()", "the memory region was not registered with MW_BIND");
    if (!Number.isInteger(access) || (access & ~(Access.REMOTE_READ | Access.REMOTE_WRITE)) !== 0) fail("bindMw()", `a window grants REMOTE_READ and REMOTE_WRITE only, got ${String(access)}`);
    if (access & Access.REMOTE_WRITE && !(m.access & Access.LOCAL_WRITE)) fail("bindMw()", "REMOTE_WRITE needs a region with LOCAL_WRITE");
    const off = addr - m.addr;
    if (!(Number.isInteger(off) && off >= 0 && Number.isInteger(length) && length >= 0 && off + length <= m.length)) fail("bindMw()", "the window is not inside the memory region");
    const w = this.#binding.bindMw(q.id, m.id, addr, length, access);
    q.use();
    m.use();
    return new NativeMw(q, m, w.handle, w.rkey, addr, length, access);
  }

  /**
   * Revokes a window's key in send-queue order: an unsignaled local invalidate posted on the
   * window's queue pair, so the key stays valid for what was posted before it and is refused
   * once it has executed. The window must still be deallocated ({@link deallocMw}).
   */
  invalidateMw(mw: Mw): void {
    this.check("invalidateMw()");
    if (!(mw instanceof NativeMw) || mw.qp.pd.context !== this) fail("invalidateMw()", "not a memory window of this device");
    mw.check("invalidateMw()");
    this.#binding.invalidateMw(mw.id);
  }

  /** Invalidates and frees a window; its rkey is refused from then on. */
  deallocMw(mw: Mw): void {
    this.check("deallocMw()");
    if (!(mw instanceof NativeMw) || mw.qp.pd.context !== this) fail("deallocMw()", "not a memory window of this device");
    mw.markDestroyed("deallocMw()", "users");
    this.#binding.deallocMw(mw.id);
    mw.qp.unuse();
    mw.mr.unuse();
  }

  /**
   * Creates a completion queue of `depth` entries (grown or shrunk later by {@link resizeCq});
   * `onNotify` is called (asynchronously, once) after {@link reqNotifyCq} when a completion
   * arrives, by the addon's watch of the completion channel's fd (no polling loop).
   */
  createCq(depth: number, onNotify: () => void): Cq {
    this.check("createCq()");
    if (!Number.isInteger(depth) || depth < 1 || depth > MAX_CQ_DEPTH) fail("createCq()", `depth must be 1..${MAX_CQ_DEPTH}, got ${depth}`);
    if (typeof onNotify !== "function") fail("createCq()", "onNotify must be a function");
    const cq = new NativeCq(this, this.#binding.createCq(this.#id, depth, onNotify), depth, depth);
    this.use();
    return cq;
  }

  /**
   * Makes a CQ hold `depth` completions (ibv_resize_cq), keeping those queued. Growing within
   * what the device already granted (cq->cqe may exceed what was asked) needs no call; any other
   * change resizes. KOALA_ERR_VERBS (with the errno) when the device refuses: `depth` below the
   * completions queued, or above its max_cqe.
   */
  resizeCq(cq: Cq, depth: number): void {
    const c = this.#cq(cq, "resizeCq()");
    if (!Number.isInteger(depth) || depth < 1 || depth > MAX_CQ_DEPTH) fail("resizeCq()", `depth must be 1..${MAX_CQ_DEPTH}, got ${String(depth)}`);
    if (depth === c.depth) return;
    if (depth > c.depth && depth <= c.capacity) {
      c.depth = depth;
      return;
    }
    c.capacity = this.#binding.resizeCq(c.id, depth);
    c.depth = depth;
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

  /**
   * Creates an RC queue pair on connection `id` (rdma_create_qp): `id` must be resolved
   * ({@link resolve}) or be a `connect_request`'s. The send queue gets {@link BIND_HEADROOM}
   * more work requests than `caps` asks, for window binds; `caps` reports what the caller may use.
   */
  createQp(id: CmId, pd: Pd, sendCq: Cq, recvCq: Cq, caps: QpCaps): Qp {
    const i = this.#cmId(id, "createQp()");
    const p = this.#pd(pd, "createQp()");
    const s = this.#cq(sendCq, "createQp()");
    const r = this.#cq(recvCq, "createQp()");
    this.#checkCaps(caps, "createQp()");
    if (i.qp !== undefined) fail("createQp()", "this CM identifier already has a queue pair");
    if (i.state !== "resolved" && i.state !== "requested") fail("createQp()", i.state === "idle" || i.state === "resolving" ? "resolve the identifier first" : "the identifier is past the point of creating its queue pair");
    const room = this.device.maxQpWr > 0 ? Math.max(0, Math.min(BIND_HEADROOM, this.device.maxQpWr - caps.maxSendWr)) : 0;
    const q = this.#binding.createCmQp(i.id, p.id, s.id, r.id, caps.maxSendWr + room, caps.maxRecvWr, caps.maxSendSge, caps.maxRecvSge, caps.maxInlineData);
    p.use();
    s.use();
    r.use();
    i.use();
    const granted = { maxSendWr: Math.min(caps.maxSendWr, q.maxSendWr - room), maxRecvWr: q.maxRecvWr, maxSendSge: q.maxSendSge, maxRecvSge: q.maxRecvSge, maxInlineData: q.maxInlineData };
    const qp = new NativeQp(p, s, r, q.handle, q.qpNum, Object.freeze(granted), i);
    i.qp = qp;
    return qp;
  }

  /**
   * Creates an RC queue pair outside the connection manager (ibv_create_qp), on a context opened
   * without `forCm`. A NIC never connects it (the addon does not call ibv_modify_qp); the
   * software RNIC loops it back to itself, which the addon's tests use.
   */
  createUnconnectedQp(pd: Pd, sendCq: Cq, recvCq: Cq, caps: QpCaps): Qp {
    const p = this.#pd(pd, "createQp()");
    const s = this.#cq(sendCq, "createQp()");
    const r = this.#cq(recvCq, "createQp()");
    this.#checkCaps(caps, "createQp()");
    const q = this.#binding.createQp(p.id, s.id, r.id, caps.maxSendWr, caps.maxRecvWr, caps.maxSendSge, caps.maxRecvSge, caps.maxInlineData);
    p.use();
    s.use();
    r.use();
    const granted = { maxSendWr: q.maxSendWr, maxRecvWr: q.maxRecvWr, maxSendSge: q.maxSendSge, maxRecvSge: q.maxRecvSge, maxInlineData: q.maxInlineData };
    return new NativeQp(p, s, r, q.handle, q.qpNum, Object.freeze(granted), undefined);
  }

  /** Destroys a queue pair; KOALA_ERR_HANDLE_IN_USE while windows are bound to it. */
  destroyQp(qp: Qp): void {
    const q = this.#qp(qp, "destroyQp()");
    q.markDestroyed("destroyQp()", "memory windows bound");
    this.#binding.destroyQp(q.id);
    q.pd.unuse();
    q.sendCq.unuse();
    q.recvCq.unuse();
    if (q.cmId !== undefined) {
      q.cmId.qp = undefined;
      q.cmId.unuse();
    }
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

  // ---- connection manager ------------------------------------------------------------------

  /** Listens on `host:port` (port 0: any free one); connection requests reach `onEvent`. */
  async listen(host: string, port: number, onEvent: (event: CmEvent) => void): Promise<CmListener> {
    this.check("listen()");
    checkPort("listen()", port);
    if (typeof onEvent !== "function") fail("listen()", "onEvent must be a function");
    const ip = await ipv4(host, "listen()");
    this.check("listen()");
    cmSetup(this.#binding);
    const l = this.#binding.listen(this.#id, ip, port, BACKLOG);
    const listener = new NativeCmListener(this, l.handle, ip, l.port, onEvent);
    cmObjects.set(l.handle, listener);
    keepAlive(listener, true);
    this.use();
    return listener;
  }

  /** Stops listening (a second call does nothing). */
  closeListener(listener: CmListener): void {
    if (!(listener instanceof NativeCmListener) || listener.context !== this) fail("closeListener()", "not a listener of this device");
    if (listener.destroyed) return;
    listener.markDestroyed("closeListener()", "users");
    keepAlive(listener, false);
    cmObjects.delete(listener.id);
    this.#binding.closeListener(listener.id);
    this.unuse();
  }

  /** A connect request through `l`: a new identifier, handed to the listener's `onEvent`. */
  incoming(l: NativeCmListener, handle: number, data: Uint8Array | undefined): void {
    const id = new NativeCmId(this, handle, l.onEvent);
    id.state = "requested";
    cmObjects.set(handle, id);
    this.use();
    id.localAddress = formatAddress("rdma", l.host === "0.0.0.0" ? "127.0.0.1" : l.host, l.port, "");
    id.remoteAddress = cmAddress(this.#binding.cmAddresses(handle)[1]);
    id.onEvent({ type: "connect_request", id, privateData: data ?? NO_DATA });
  }

  /** A new, unconnected identifier whose events go to `onEvent`. */
  createId(onEvent: (event: CmEvent) => void): CmId {
    this.check("createId()");
    if (typeof onEvent !== "function") fail("createId()", "onEvent must be a function");
    cmSetup(this.#binding);
    const handle = this.#binding.createId(this.#id);
    const id = new NativeCmId(this, handle, onEvent);
    cmObjects.set(handle, id);
    this.use();
    return id;
  }

  /**
   * Resolves `id` to the device and route that reach `host:port` (rdma_resolve_addr, then
   * rdma_resolve_route), as its queue pair needs before {@link createQp}. Rejects with
   * KOALA_ERR_HOST_NOT_FOUND when no device reaches the host, KOALA_ERR_CONNECT_TIMEOUT after
   * `timeoutMs`.
   */
  async resolve(id: CmId, host: string, port: number, timeoutMs: number): Promise<void> {
    const i = this.#cmId(id, "resolve()");
    checkPort("resolve()", port);
    checkTimeout("resolve()", timeoutMs);
    if (i.state !== "idle") fail("resolve()", "the identifier is already in use");
    i.state = "resolving";
    let ip: string;
    try {
      ip = await ipv4(host, "resolve()");
    } catch (err) {
      if (i.state === "resolving") i.state = "idle";
      throw err;
    }
    i.check("resolve()");
    if (i.state !== "resolving") throw new KoalaError(ErrorCode.CLOSED, "resolve(): the identifier was closed while resolving");
    return new Promise<void>((resolve, reject) => {
      i.resolving = { resolve, reject, host, port, deadline: performance.now() + timeoutMs };
      i.timer = setTimeout(() => this.#resolved(i, new KoalaError(ErrorCode.CONNECT_TIMEOUT, `resolving rdma://${host}:${port} took longer than ${timeoutMs} ms`)), timeoutMs);
      i.timer.unref();
      try {
        this.#binding.resolveAddr(i.id, ip, port, timeoutMs);
      } catch (err) {
        this.#resolved(i, err as Error);
      }
    });
  }

  /** Ends a pending resolve: with success (`err` undefined) or `err`. */
  #resolved(i: NativeCmId, err: Error | undefined): void {
    const r = i.resolving;
    if (r === undefined) return;
    i.resolving = undefined;
    clearTimeout(i.timer);
    if (err !== undefined) {
      i.state = "done";
      r.reject(err);
      return;
    }
    i.state = "resolved";
    r.resolve();
  }

  /** Connects `id` (resolved, with its QP created) to `host:port`, sending `privateData`; ends in `established`, `rejected` or `unreachable` within `timeoutMs`. */
  connect(id: CmId, host: string, port: number, privateData: Uint8Array, timeoutMs: number): void {
    const i = this.#cmId(id, "connect()");
    checkPort("connect()", port);
    checkTimeout("connect()", timeoutMs);
    checkPrivateData("connect()", privateData);
    if (i.state === "idle" || i.state === "resolving") fail("connect()", "resolve the identifier first");
    if (i.state !== "resolved") fail("connect()", "the identifier is already in use");
    if (i.qp === undefined) fail("connect()", "create the queue pair first");
    i.state = "connecting";
    i.port = port;
    i.remoteAddress = formatAddress("rdma", host, port, "");
    i.localAddress = cmAddress(this.#binding.cmAddresses(i.id)[0]);
    i.timer = setTimeout(() => this.#settle(i, "unreachable", `no answer within ${timeoutMs} ms`, undefined, true), timeoutMs);
    i.timer.unref();
    try {
      this.#binding.connect(i.id, privateData);
    } catch (err) {
      // As every outcome of a connect: an event, never a throw from here.
      setImmediate(() => this.#settle(i, "unreachable", (err as Error).message));
    }
  }

  /** Ends a connect with `type` (once). */
  #settle(i: NativeCmId, type: "rejected" | "unreachable", reason: string, data?: Uint8Array, timedOut = false): void {
    if (i.state !== "connecting") return;
    i.state = "done";
    clearTimeout(i.timer);
    i.onEvent({ type, id: i, reason, ...(data === undefined ? {} : { privateData: data }), ...(timedOut ? { timedOut } : {}) });
  }

  /** One CM event of identifier `i` (from this thread's event channel). */
  onCmEvent(i: NativeCmId, type: number, status: number, data: Uint8Array | undefined): void {
    switch (type) {
      case CmEventCode.ADDR_RESOLVED: {
        const r = i.resolving;
        if (r === undefined) return;
        try {
          this.#binding.resolveRoute(i.id, Math.max(1, Math.ceil(r.deadline - performance.now())));
        } catch (err) {
          this.#resolved(i, err as Error);
        }
        return;
      }
      case CmEventCode.ROUTE_RESOLVED:
        i.localAddress = cmAddress(this.#binding.cmAddresses(i.id)[0]);
        this.#resolved(i, undefined);
        return;
      case CmEventCode.ADDR_ERROR:
      case CmEventCode.ROUTE_ERROR: {
        const r = i.resolving;
        if (r === undefined) return;
        const what = type === CmEventCode.ADDR_ERROR ? "address" : "route";
        const code = Math.abs(status) === ETIMEDOUT ? ErrorCode.CONNECT_TIMEOUT : ErrorCode.HOST_NOT_FOUND;
        this.#resolved(i, new KoalaError(code, `no RDMA ${what} to ${r.host}:${r.port} (${this.#eventName(type)}, status ${status})`));
        return;
      }
      case CmEventCode.ESTABLISHED:
        if (i.state === "connecting") {
          i.state = "connected";
          clearTimeout(i.timer);
          const local = cmAddress(this.#binding.cmAddresses(i.id)[0]);
          if (local !== "") i.localAddress = local;
          i.onEvent({ type: "established", id: i, privateData: data ?? NO_DATA });
        } else if (i.state === "accepting") {
          i.state = "connected";
          i.onEvent({ type: "established", id: i });
        }
        return;
      case CmEventCode.REJECTED:
        if (status === REJECT_CONSUMER) this.#settle(i, "rejected", "the peer rejected the connection", data ?? NO_DATA);
        else if (REJECT_NO_LISTENER.has(status)) this.#settle(i, "rejected", `no RDMA listener on port ${i.port}`);
        else this.#settle(i, "rejected", `the connection manager refused the connection (status ${status})`, data);
        return;
      case CmEventCode.UNREACHABLE:
      case CmEventCode.CONNECT_ERROR:
        if (Math.abs(status) === ETIMEDOUT) this.#settle(i, "unreachable", `the peer did not answer (${this.#eventName(type)})`, undefined, true);
        else this.#settle(i, "unreachable", `${this.#eventName(type)} (status ${status})`);
        return;
      case CmEventCode.DISCONNECTED:
        this.#lost(i, "the peer disconnected");
        return;
      case CmEventCode.DEVICE_REMOVAL:
        this.#lost(i, "the RDMA device was removed");
        return;
      default:
        return;
    }
  }

  /** The peer went (or the device): the QP goes to the error state, the application hears `disconnected` once. */
  #lost(i: NativeCmId, reason: string): void {
    if (i.state === "connecting") {
      this.#settle(i, "unreachable", reason);
      return;
    }
    const was = i.state;
    if (was !== "connected" && was !== "accepting" && was !== "requested") return;
    i.state = "done";
    // Our side of the disconnect: the QP goes to the error state and flushes what is outstanding.
    if (was !== "requested") {
      try {
        this.#binding.disconnect(i.id);
      } catch {
        // Already disconnected by the CM: nothing more to do.
      }
    }
    i.onEvent({ type: "disconnected", id: i, reason });
  }

  /** Accepts a `connect_request` (its QP created first), sending `privateData`. */
  accept(id: CmId, privateData: Uint8Array): void {
    const i = this.#cmId(id, "accept()");
    checkPrivateData("accept()", privateData);
    if (i.state !== "requested") fail("accept()", "no connection request to accept");
    if (i.qp === undefined) fail("accept()", "create the queue pair first");
    this.#binding.accept(i.id, privateData);
    i.state = "accepting";
  }

  /** Rejects a `connect_request`, sending `privateData`. */
  reject(id: CmId, privateData: Uint8Array): void {
    const i = this.#cmId(id, "reject()");
    checkPrivateData("reject()", privateData);
    if (i.state !== "requested") fail("reject()", "no connection request to reject");
    i.state = "done";
    this.#binding.reject(i.id, privateData);
  }

  /** Disconnects: the local QP goes to the error state (flushing), the peer gets `disconnected`. */
  disconnect(id: CmId): void {
    const i = this.#cmId(id, "disconnect()");
    const was = i.state;
    if (was === "done" || was === "idle" || was === "resolving" || was === "resolved") return;
    i.state = "done";
    clearTimeout(i.timer);
    try {
      this.#binding.disconnect(i.id);
    } catch (err) {
      // A connect still in progress or a request never accepted has nothing to disconnect.
      log("debug", "transport", `rdma_disconnect: ${(err as Error).message}`);
    }
    if (was === "connected" || was === "accepting") i.onEvent({ type: "disconnected", id: i, reason: "disconnected by this side" });
  }

  /** Destroys an identifier; KOALA_ERR_HANDLE_IN_USE while its QP exists. */
  destroyId(id: CmId): void {
    const i = this.#cmId(id, "destroyId()");
    i.markDestroyed("destroyId()", "queue pair (destroy it first)");
    clearTimeout(i.timer);
    this.#resolved(i, new KoalaError(ErrorCode.CLOSED, "the identifier was destroyed while resolving"));
    i.state = "done";
    cmObjects.delete(i.id);
    this.#binding.destroyId(i.id);
    this.unuse();
  }

  /** Closes the device; KOALA_ERR_HANDLE_IN_USE while PDs, CQs, identifiers or listeners remain. */
  close(): void {
    this.markDestroyed("close()", "protection domains, completion queues or identifiers");
    this.#binding.closeDevice(this.#id);
  }

  #eventName(type: number): string {
    try {
      return this.#binding.cmEventName(type);
    } catch {
      return `event ${type}`;
    }
  }

  #checkCaps(caps: QpCaps, op: string): void {
    for (const [k, max] of [["maxSendWr", 1 << 20], ["maxRecvWr", 1 << 20], ["maxSendSge", 64], ["maxRecvSge", 64], ["maxInlineData", 1 << 16]] as const) {
      const v = caps?.[k];
      if (!Number.isInteger(v) || v < (k === "maxInlineData" ? 0 : 1) || v > max) fail(op, `caps.${k} must be an integer up to ${max}, got ${String(v)}`);
    }
  }

  #cmId(id: CmId, op: string): NativeCmId {
    this.check(op);
    if (!(id instanceof NativeCmId) || id.context !== this) fail(op, "not a CM identifier of this device");
    id.check(op);
    return id;
  }

  #mr(mr: Mr, op: string): NativeMrHandle {
    this.check(op);
    if (!(mr instanceof NativeMrHandle) || mr.pd.context !== this) fail(op, "not a memory region of this device");
    return mr;
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
