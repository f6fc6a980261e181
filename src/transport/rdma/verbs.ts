/**
 * The Verbs interface: a thin, typed mirror of libibverbs and librdmacm, which the RDMA
 * transport is written against and every provider implements (the software provider in
 * soft.ts; the native addon over libibverbs and librdmacm in native-context.ts). Nothing above
 * this module may know which provider runs it.
 *
 * Work requests and completions cross this interface in batches through typed arrays, never
 * as one JavaScript object per operation: a {@link WorkBatch} holds work-request records and
 * scatter-gather entries in Float64Arrays (addresses are up to 2^53, exact in a double), and
 * `pollCq` fills a Float64Array with completion records. The field layouts ({@link SWR},
 * {@link RWR}, {@link SGE}, {@link WC}) are part of the interface.
 *
 * Numbering follows libibverbs (`ibv_wc_status`, `ibv_access_flags`, `ibv_send_flags`), so a
 * native provider passes the numbers through unchanged.
 */
import { ErrorCode, KoalaError } from "../../errors.js";

/** Work-request opcodes of a send queue (ibv_wr_opcode). */
export const Opcode = {
  RDMA_WRITE: 0,
  RDMA_WRITE_WITH_IMM: 1,
  SEND: 2,
  SEND_WITH_IMM: 3,
  RDMA_READ: 4,
} as const;

/** Opcodes of a work completion (ibv_wc_opcode). */
export const WcOpcode = {
  SEND: 0,
  RDMA_WRITE: 1,
  RDMA_READ: 2,
  RECV: 128,
  RECV_RDMA_WITH_IMM: 129,
} as const;

/** Status of a work completion (ibv_wc_status numbering). */
export const WcStatus = {
  SUCCESS: 0,
  LOC_LEN_ERR: 1,
  LOC_QP_OP_ERR: 2,
  LOC_PROT_ERR: 4,
  WR_FLUSH_ERR: 5,
  REM_INV_REQ_ERR: 9,
  REM_ACCESS_ERR: 10,
  REM_OP_ERR: 11,
  RETRY_EXC_ERR: 12,
  RNR_RETRY_EXC_ERR: 13,
} as const;

/** The name of a completion status, e.g. `"RNR_RETRY_EXC_ERR"`. */
export function wcStatusName(status: number): string {
  for (const [k, v] of Object.entries(WcStatus)) if (v === status) return k;
  return `STATUS_${status}`;
}

/** Access flags of a memory region (ibv_access_flags). */
export const Access = {
  LOCAL_WRITE: 1,
  REMOTE_WRITE: 2,
  REMOTE_READ: 4,
  /** Memory windows may be bound over the region (IBV_ACCESS_MW_BIND). */
  MW_BIND: 16,
} as const;

/** Flags of a send work request (ibv_send_flags). */
export const SendFlags = {
  SIGNALED: 2,
  INLINE: 8,
} as const;

/** Flags of a work completion: `WC_WITH_IMM` when `IMM` is valid (ibv_wc_flags). */
export const WC_WITH_IMM = 2;

/** Slots of one send work-request record in {@link WorkBatch.wr}. */
export const SWR = { WR_ID: 0, OPCODE: 1, FLAGS: 2, IMM: 3, SGE_START: 4, SGE_COUNT: 5, REMOTE_ADDR: 6, RKEY: 7, STRIDE: 8 } as const;
/** Slots of one receive work-request record in {@link WorkBatch.wr} (same stride as a send record). */
export const RWR = { WR_ID: 0, SGE_START: 4, SGE_COUNT: 5 } as const;
/** Slots of one scatter-gather entry in {@link WorkBatch.sge}: address, length in bytes, local key. */
export const SGE = { ADDR: 0, LENGTH: 1, LKEY: 2, STRIDE: 3 } as const;
/** Slots of one completion record that `pollCq` writes. */
export const WC = { WR_ID: 0, STATUS: 1, OPCODE: 2, BYTE_LEN: 3, IMM: 4, QP_NUM: 5, FLAGS: 6, STRIDE: 7 } as const;

/**
 * A batch of work requests (send or receive) and their scatter-gather entries, in typed
 * arrays that grow as needed and are reused after {@link WorkBatch.reset}.
 */
export class WorkBatch {
  /** Work-request records, {@link SWR.STRIDE} slots each. */
  wr: Float64Array;
  /** Scatter-gather entries, {@link SGE.STRIDE} slots each. */
  sge: Float64Array;
  /** Records in `wr`. */
  count = 0;
  /** Entries in `sge`. */
  sgeCount = 0;

  /** @param capacity work requests before the arrays first grow. Default 64. */
  constructor(capacity = 64) {
    this.wr = new Float64Array(capacity * SWR.STRIDE);
    this.sge = new Float64Array(capacity * 2 * SGE.STRIDE);
  }

  /** Empties the batch, keeping its arrays. */
  reset(): void {
    this.count = 0;
    this.sgeCount = 0;
  }

  /** Appends a scatter-gather entry to the work request being built (call before `addSend` / `addRecv`). */
  addSge(addr: number, length: number, lkey: number): void {
    if ((this.sgeCount + 1) * SGE.STRIDE > this.sge.length) this.sge = grow(this.sge);
    const at = this.sgeCount++ * SGE.STRIDE;
    this.sge[at + SGE.ADDR] = addr;
    this.sge[at + SGE.LENGTH] = length;
    this.sge[at + SGE.LKEY] = lkey;
  }

  /** Appends a send work request over the `sgeCount` entries added last. */
  addSend(wrId: number, opcode: number, flags: number, sgeCount: number, imm = 0, remoteAddr = 0, rkey = 0): void {
    const at = this.next();
    const w = this.wr;
    w[at + SWR.WR_ID] = wrId;
    w[at + SWR.OPCODE] = opcode;
    w[at + SWR.FLAGS] = flags;
    w[at + SWR.IMM] = imm;
    w[at + SWR.SGE_START] = this.sgeCount - sgeCount;
    w[at + SWR.SGE_COUNT] = sgeCount;
    w[at + SWR.REMOTE_ADDR] = remoteAddr;
    w[at + SWR.RKEY] = rkey;
  }

  /** Appends a receive work request over the `sgeCount` entries added last. */
  addRecv(wrId: number, sgeCount: number): void {
    const at = this.next();
    this.wr[at + RWR.WR_ID] = wrId;
    this.wr[at + RWR.SGE_START] = this.sgeCount - sgeCount;
    this.wr[at + RWR.SGE_COUNT] = sgeCount;
  }

  private next(): number {
    if ((this.count + 1) * SWR.STRIDE > this.wr.length) this.wr = grow(this.wr);
    return this.count++ * SWR.STRIDE;
  }
}

function grow(a: Float64Array): Float64Array {
  const b = new Float64Array(a.length * 2);
  b.set(a);
  return b;
}

/** State of a device port (ibv_port_state, by name). */
export type PortState = "down" | "init" | "armed" | "active";

/** One port of a device. */
export interface PortInfo {
  /** Port number, from 1. */
  readonly port: number;
  /** Port state; only an `active` port can carry connections. */
  readonly state: PortState;
  /** `InfiniBand` or `Ethernet` (RoCE). */
  readonly linkLayer: "InfiniBand" | "Ethernet";
  /** Active MTU in bytes. */
  readonly mtu: number;
  /** GID at index 0, written as IPv6. */
  readonly gid: string;
}

/** One RDMA device and its limits (ibv_device_attr / ibv_port_attr). */
export interface DeviceInfo {
  /** Device name, e.g. `mlx5_0` or `soft0`. */
  readonly name: string;
  /** Name of the provider that serves it. */
  readonly provider: string;
  /** True for a software device (no NIC). */
  readonly software: boolean;
  /** Its ports. */
  readonly ports: readonly PortInfo[];
  /** Most scatter-gather entries a work request may have. */
  readonly maxSge: number;
  /** Most outstanding work requests a queue (send or receive) may hold. */
  readonly maxQpWr: number;
  /** Most bytes a send may carry inline. */
  readonly maxInlineData: number;
  /** Most entries a completion queue may hold. */
  readonly maxCqe: number;
  /** Largest memory region in bytes. */
  readonly maxMrBytes: number;
}

/** Kinds of handle. */
export type HandleKind = "context" | "pd" | "mr" | "mw" | "cq" | "qp" | "cm_id" | "cm_listener";

/**
 * Every verbs object is a handle that is checked on use: using a destroyed one, or destroying
 * one that others still depend on (a PD with MRs or QPs, a CQ attached to a QP), throws a
 * KoalaError with a stable code instead of doing something undefined.
 */
export class Handle {
  #destroyed = false;
  #users = 0;

  constructor(
    /** What kind of object this is. */
    readonly kind: HandleKind,
  ) {}

  /** True once destroyed. */
  get destroyed(): boolean {
    return this.#destroyed;
  }

  /** Objects that depend on this one (MRs and QPs of a PD, QPs of a CQ). */
  get users(): number {
    return this.#users;
  }

  /** Throws KOALA_ERR_HANDLE_DESTROYED when destroyed. */
  check(op: string): void {
    if (this.#destroyed) throw new KoalaError(ErrorCode.HANDLE_DESTROYED, `${op}: the ${this.kind} was destroyed`);
  }

  /** Counts a dependant. */
  use(): void {
    this.#users++;
  }

  /** Drops a dependant. */
  unuse(): void {
    this.#users--;
  }

  /** Marks this destroyed; throws KOALA_ERR_HANDLE_IN_USE while dependants remain (`what` names them). */
  markDestroyed(op: string, what: string): void {
    this.check(op);
    if (this.#users > 0) throw new KoalaError(ErrorCode.HANDLE_IN_USE, `${op}: the ${this.kind} still has ${this.#users} ${what}`);
    this.#destroyed = true;
  }
}

/** A protection domain. */
export type Pd = Handle;

/** A registered memory region: the keys and address work requests and peers use. */
export interface Mr extends Handle {
  /** Key for local scatter-gather entries. */
  readonly lkey: number;
  /** Key a peer names in RDMA READ / WRITE. */
  readonly rkey: number;
  /** Address of the first registered byte in the provider's address space. */
  readonly addr: number;
  /** Registered bytes. */
  readonly length: number;
  /** Access flags ({@link Access}). */
  readonly access: number;
}

/**
 * A type-2 memory window: remote access to a range of a memory region through ONE queue pair.
 * Its rkey is refused on any other queue pair, so a region shared this way is scoped to the
 * connection it was shared on.
 */
export interface Mw extends Handle {
  /** Key the peer names in RDMA READ / WRITE. */
  readonly rkey: number;
  /** Address of the window's first byte. */
  readonly addr: number;
  /** Bytes in the window. */
  readonly length: number;
  /** Remote access flags ({@link Access}). */
  readonly access: number;
}

/** A completion queue. */
export type Cq = Handle;

/** Capacities of a queue pair (ibv_qp_cap); checked against the device's limits. */
export interface QpCaps {
  /** Outstanding send work requests. */
  maxSendWr: number;
  /** Outstanding receive work requests. */
  maxRecvWr: number;
  /** Scatter-gather entries of a send. */
  maxSendSge: number;
  /** Scatter-gather entries of a receive. */
  maxRecvSge: number;
  /** Bytes a send may carry inline. */
  maxInlineData: number;
}

/** A reliable-connected queue pair. */
export interface Qp extends Handle {
  /** Queue pair number; completions name it in {@link WC.QP_NUM}. */
  readonly qpNum: number;
  /** Its capacities. */
  readonly caps: Readonly<QpCaps>;
}

/** Events of the connection manager (rdma_cm_event_type, the ones koala acts on). */
export type CmEventType = "connect_request" | "established" | "rejected" | "unreachable" | "disconnected";

/** One connection-manager event. */
export interface CmEvent {
  /** What happened. */
  readonly type: CmEventType;
  /** The connection it concerns (for `connect_request`, a new one to accept or reject). */
  readonly id: CmId;
  /** Private data of the request, accept or reject, when the peer sent some. */
  readonly privateData?: Uint8Array;
  /** Why, for `rejected`, `unreachable` and `disconnected`. */
  readonly reason?: string;
  /** For `unreachable`: the peer did not answer within the connect timeout (ETIMEDOUT). */
  readonly timedOut?: boolean;
}

/** A connection-manager identifier (rdma_cm_id): one connection, with at most one queue pair. */
export interface CmId extends Handle {
  /** This end's address, e.g. `rdma://127.0.0.1:4000`. */
  readonly localAddress: string;
  /** The other end's address. */
  readonly remoteAddress: string;
}

/** A listening connection-manager identifier. */
export interface CmListener extends Handle {
  /** The port actually bound. */
  readonly port: number;
}

/** An opened device (ibv_context) with the connection manager of its port. */
export interface VerbsContext extends Handle {
  /** The device. */
  readonly device: DeviceInfo;
  /** The port used. */
  readonly port: number;

  /** Allocates a protection domain. */
  allocPd(): Pd;
  /** Deallocates a PD; KOALA_ERR_HANDLE_IN_USE while MRs or QPs use it. */
  deallocPd(pd: Pd): void;
  /** Registers `bytes` (a range of an ArrayBuffer) with `access` flags. */
  regMr(pd: Pd, bytes: Uint8Array, access: number): Mr;
  /** Deregisters; later uses of its keys fail (locally LOC_PROT_ERR, remotely REM_ACCESS_ERR). KOALA_ERR_HANDLE_IN_USE while windows are bound over it. */
  deregMr(mr: Mr): void;
  /**
   * Binds a type-2 memory window over `length` bytes at `addr` of `mr` (registered with
   * MW_BIND) to `qp`, with remote `access`. (ibv_alloc_mw + a bind work request; bound when
   * this returns.)
   */
  bindMw(qp: Qp, mr: Mr, addr: number, length: number, access: number): Mw;
  /** Invalidates and frees a window; its rkey is refused from then on. */
  deallocMw(mw: Mw): void;

  /** Creates a completion queue of `depth` entries; `onNotify` is called (asynchronously, once) after {@link reqNotifyCq} when a completion arrives. */
  createCq(depth: number, onNotify: () => void): Cq;
  /** Grows or shrinks a CQ to `depth` entries, keeping the completions queued in order; KOALA_ERR_VERBS below those queued or above the device's max_cqe. */
  resizeCq(cq: Cq, depth: number): void;
  /** Arms the CQ's notification for the next completion. */
  reqNotifyCq(cq: Cq): void;
  /** Moves up to `max` completions into `out` ({@link WC} layout); returns how many. */
  pollCq(cq: Cq, out: Float64Array, max: number): number;
  /** Destroys a CQ; KOALA_ERR_HANDLE_IN_USE while a QP is attached. */
  destroyCq(cq: Cq): void;

  /** Creates an RC queue pair on connection `id`, with its send and receive completion queues. */
  createQp(id: CmId, pd: Pd, sendCq: Cq, recvCq: Cq, caps: QpCaps): Qp;
  /** Destroys a QP: outstanding work requests are flushed (WR_FLUSH_ERR) into its CQs first. KOALA_ERR_HANDLE_IN_USE while windows are bound to it. */
  destroyQp(qp: Qp): void;
  /** Posts the receive work requests of `batch`. */
  postRecv(qp: Qp, batch: WorkBatch): void;
  /** Posts the send work requests of `batch`. */
  postSend(qp: Qp, batch: WorkBatch): void;

  /** Listens on `host:port` (port 0: any free one); connection requests reach `onEvent`. */
  listen(host: string, port: number, onEvent: (event: CmEvent) => void): Promise<CmListener>;
  /** Stops listening. */
  closeListener(listener: CmListener): void;
  /** A new, unconnected identifier whose events go to `onEvent`. */
  createId(onEvent: (event: CmEvent) => void): CmId;
  /**
   * Resolves a new identifier to the device and route that reach `host:port` (rdma_resolve_addr
   * and rdma_resolve_route): the queue pair of an outgoing connection can only be created after
   * this, on that device. Rejects with KOALA_ERR_HOST_NOT_FOUND when no device reaches the
   * host, KOALA_ERR_CONNECT_TIMEOUT after `timeoutMs`.
   */
  resolve(id: CmId, host: string, port: number, timeoutMs: number): Promise<void>;
  /** Connects `id` (resolved, with its QP created) to `host:port`, sending `privateData`; ends in `established`, `rejected` or `unreachable` within `timeoutMs`. */
  connect(id: CmId, host: string, port: number, privateData: Uint8Array, timeoutMs: number): void;
  /** Accepts a `connect_request` (its QP created first), sending `privateData`. */
  accept(id: CmId, privateData: Uint8Array): void;
  /** Rejects a `connect_request`, sending `privateData`. */
  reject(id: CmId, privateData: Uint8Array): void;
  /** Disconnects: the local QP goes to the error state (flushing), the peer gets `disconnected`. */
  disconnect(id: CmId): void;
  /** Destroys an identifier; KOALA_ERR_HANDLE_IN_USE while its QP exists. */
  destroyId(id: CmId): void;
  /** Closes the device; KOALA_ERR_HANDLE_IN_USE while PDs, CQs or identifiers remain. */
  close(): void;
}

/** A provider of the Verbs interface. */
export interface VerbsProvider {
  /** Its name, the value of KOALA_RDMA_PROVIDER that selects it. */
  readonly name: string;
  /** True for a software provider (no NIC; for tests and development). */
  readonly software: boolean;
  /** One line for `koala info`. */
  readonly description: string;
  /** Why it cannot be used here, or undefined when it can. */
  unavailableReason(): string | undefined;
  /** Its devices: those it could list, also when it is unavailable (empty when it cannot list any). */
  devices(): DeviceInfo[];
  /** Opens `device` on `port`. */
  open(device: string, port: number): VerbsContext;
}
