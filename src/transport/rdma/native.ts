/**
 * The one place that loads the native verbs addon (`addons/rdma`, built by
 * `npm run build:rdma`). Loading is lazy (the first call of {@link nativeVerbs}, never at
 * import), cached for the process, and never fatal: a missing addon, a missing libibverbs or
 * librdmacm, or `KOALA_NO_NATIVE=1` is a reason string, which `koala info`, the
 * `KOALA_TRANSPORT=rdma` error and `auto`'s fallback to TCP report.
 *
 * Where the addon is looked for, first match wins:
 * 1. `KOALA_NATIVE_ADDON`: the path of a `.node` file (an override; nothing else is tried);
 * 2. the local build, `addons/rdma/build/Release/koala_rdma.node` (a build made here is
 *    newer and made for this host, so it beats a shipped binary, as node-gyp-build does);
 * 3. a prebuilt binary, `prebuilds/<platform>-<arch>/*.node` tagged `napi` and, when tagged,
 *    with this host's C library (`glibc` / `musl`): the prebuildify / node-gyp-build naming,
 *    made by `npm run package:rdma`, shipped in the npm tarball, never committed.
 *
 * The addon itself opens `libibverbs.so.1` and `librdmacm.so.1` (or `KOALA_VERBS_LIB` /
 * `KOALA_RDMACM_LIB`) with dlopen; it links neither.
 */
import { existsSync, readdirSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { ErrorCode, KoalaError, type ErrorCodeValue } from "../../errors.js";

/** The binding's ABI version this module speaks; the addon exports the same number. */
export const NATIVE_ABI_VERSION = 2;

/** One port as the addon reports it (numbers are libibverbs enum values). */
export interface RawPort {
  /** Port number, from 1. */
  readonly port: number;
  /** `ibv_port_state`: 1 down, 2 init, 3 armed, 4 active, 5 active-defer. */
  readonly state?: number;
  /** `IBV_LINK_LAYER_*`: 0 unspecified, 1 InfiniBand, 2 Ethernet. */
  readonly linkLayer?: number;
  /** `ibv_mtu`: 1 = 256 bytes … 5 = 4096 bytes. */
  readonly activeMtu?: number;
  /** Local identifier (InfiniBand). */
  readonly lid?: number;
  /** Entries of the GID table. */
  readonly gidTableLen?: number;
  /** GID at index 0, as IPv6 text, when the table has one. */
  readonly gid?: string;
  /** Why the port could not be queried (then nothing else is set). */
  readonly error?: string;
}

/** One device as the addon reports it (`ibv_device_attr` fields, renamed). */
export interface RawDevice {
  /** Device name, e.g. `mlx5_0`. */
  readonly name: string;
  /** Why the device could not be opened or queried (then only `name` is set). */
  readonly error?: string;
  /** Firmware version text. */
  readonly fwVer?: string;
  /** IEEE vendor id. */
  readonly vendorId?: number;
  /** Vendor part id. */
  readonly vendorPartId?: number;
  /** Most queue pairs. */
  readonly maxQp?: number;
  /** Most outstanding work requests per queue. */
  readonly maxQpWr?: number;
  /** Most scatter-gather entries per work request. */
  readonly maxSge?: number;
  /** Most completion queues. */
  readonly maxCq?: number;
  /** Most entries per completion queue. */
  readonly maxCqe?: number;
  /** Most memory regions. */
  readonly maxMr?: number;
  /** Largest memory region, bytes. */
  readonly maxMrSize?: number;
  /** Most protection domains. */
  readonly maxPd?: number;
  /** Largest inline send of an RC queue pair, probed with a throw-away QP; -1 when not probed or no QP could be made. */
  readonly maxInlineData?: number;
  /** Its ports. */
  readonly ports?: readonly RawPort[];
}

/** What `addons/rdma/src/addon.cc` exports. Every function validates its arguments again in C++. */
export interface NativeBinding {
  /** Must equal {@link NATIVE_ABI_VERSION}. */
  readonly abiVersion: number;
  /** Hands the addon the factory of every error it throws. Called once per thread by the loader. */
  init(makeError: (code: string, message: string) => Error): void;
  /** Opens libibverbs and librdmacm (once per process); undefined, or why they cannot be used. */
  load(verbsPath: string, rdmacmPath: string): string | undefined;
  /** Every device libibverbs lists, opened, queried and closed; `probeInline` also probes max_inline_data. Throws KOALA_ERR_VERBS when libibverbs cannot list devices. */
  devices(probeInline?: boolean): RawDevice[];
  /**
   * Opens the device named `name`; returns its context handle. With `forCm`, the context is
   * librdmacm's (rdma_get_devices), the one identifiers resolve to, which queue pairs of the
   * connection manager need; otherwise ibv_open_device's.
   */
  openDevice(name: string, forCm?: boolean): number;
  /** Closes a device context; KOALA_ERR_HANDLE_IN_USE while protection domains remain. */
  closeDevice(context: number): void;
  /** Allocates a protection domain on a device context; returns its handle. */
  allocPd(context: number): number;
  /** Deallocates a protection domain; KOALA_ERR_HANDLE_IN_USE while memory regions remain. */
  deallocPd(pd: number): void;
  /**
   * Registers `length` bytes at `offset` of `buffer` with `access` flags (ibv_access_flags:
   * LOCAL_WRITE, REMOTE_WRITE, REMOTE_READ, REMOTE_ATOMIC, MW_BIND). The buffer is held
   * alive until {@link NativeBinding.deregMr}.
   */
  regMr(pd: number, buffer: ArrayBuffer, offset: number, length: number, access: number): NativeMr;
  /** Deregisters a memory region and lets its buffer go. */
  deregMr(mr: number): void;
  /**
   * Creates a completion queue of `depth` entries with its own completion channel, watched by
   * libuv: after {@link NativeBinding.reqNotifyCq}, the next completion calls `onNotify` once
   * (from the event loop, never while JavaScript runs). The watch does not keep the process alive.
   */
  createCq(context: number, depth: number, onNotify: () => void): number;
  /**
   * Resizes a completion queue to hold at least `depth` completions (ibv_resize_cq), keeping
   * those queued; returns the entries granted (may exceed `depth`). KOALA_ERR_VERBS (with the
   * errno) when `depth` is below what is queued or above the device's max_cqe.
   */
  resizeCq(cq: number, depth: number): number;
  /** Arms the CQ's notification for the next completion. */
  reqNotifyCq(cq: number): void;
  /** Moves up to `max` completions into `out` (WC layout of verbs.ts); returns how many. */
  pollCq(cq: number, out: Float64Array, max: number): number;
  /** Destroys a completion queue and its channel; KOALA_ERR_HANDLE_IN_USE while a QP uses it. */
  destroyCq(cq: number): void;
  /** Creates an RC queue pair (ibv_create_qp); returns its handle, number and the capacities granted. */
  createQp(pd: number, sendCq: number, recvCq: number, maxSendWr: number, maxRecvWr: number, maxSendSge: number, maxRecvSge: number, maxInlineData: number): NativeQpInfo;
  /** Destroys a queue pair. */
  destroyQp(qp: number): void;
  /** Posts `count` send work requests (SWR records of `wr`, SGE records of `sge`) as one chain; every entry must lie in a registered region. */
  postSend(qp: number, wr: Float64Array, count: number, sge: Float64Array, sgeCount: number): void;
  /** Posts `count` receive work requests (RWR records). */
  postRecv(qp: number, wr: Float64Array, count: number, sge: Float64Array, sgeCount: number): void;
  /**
   * Allocates a type-2 memory window on the QP's PD and binds it over `length` bytes at `addr`
   * of `mr` (registered with MW_BIND) with remote `access`, by an unsignaled bind work request
   * on the QP's send queue (ordered before what is posted after it). Only this QP accepts the rkey.
   */
  bindMw(qp: number, mr: number, addr: number, length: number, access: number): { readonly handle: number; readonly rkey: number };
  /** Invalidates and frees a memory window (ibv_dealloc_mw). */
  deallocMw(mw: number): void;
  /** Posts an unsignaled local invalidate (IBV_WR_LOCAL_INV) of the window's rkey on its QP; the window must still be deallocated. */
  invalidateMw(mw: number): void;
  /**
   * Creates this thread's CM event channel (once; later calls replace `onEvent`). Every event is
   * copied and acknowledged, then `onEvent` gets its `rdma_cm_event_type` number, the identifier's
   * handle (a new one for a connect request), its status, a copy of the private data of a
   * request, accept or reject, and for a request the listener's handle. The channel's watch
   * does not keep the process (or thread) alive until {@link NativeBinding.cmRef}.
   */
  cmInit(onEvent: (type: number, id: number, status: number, privateData: Uint8Array | undefined, listener: number | undefined) => void): void;
  /** Whether the CM event channel's watch keeps the event loop alive. */
  cmRef(on: boolean): void;
  /** Listens on IPv4 `host`:`port` (0: any free port) through device context `context`'s connection manager; the port bound comes back. */
  listen(context: number, host: string, port: number, backlog: number): { readonly handle: number; readonly port: number };
  /** Stops listening (rdma_destroy_id of the listener). */
  closeListener(listener: number): void;
  /** A new identifier for an outgoing connection. */
  createId(context: number): number;
  /** rdma_resolve_addr to IPv4 `host`:`port`: ADDR_RESOLVED or ADDR_ERROR follows. */
  resolveAddr(id: number, host: string, port: number, timeoutMs: number): void;
  /** rdma_resolve_route: ROUTE_RESOLVED or ROUTE_ERROR follows. */
  resolveRoute(id: number, timeoutMs: number): void;
  /** An RC queue pair on a resolved (or requested) identifier (rdma_create_qp); PD and CQs of its device. */
  createCmQp(id: number, pd: number, sendCq: number, recvCq: number, maxSendWr: number, maxRecvWr: number, maxSendSge: number, maxRecvSge: number, maxInlineData: number): NativeQpInfo;
  /** rdma_connect with up to 56 bytes of private data. */
  connect(id: number, privateData: Uint8Array): void;
  /** rdma_accept of a connect request with up to 56 bytes of private data. */
  accept(id: number, privateData: Uint8Array): void;
  /** rdma_reject of a connect request with up to 56 bytes of private data. */
  reject(id: number, privateData: Uint8Array): void;
  /** rdma_disconnect: the QP goes to the error state; both ends get DISCONNECTED. */
  disconnect(id: number): void;
  /** rdma_destroy_id; KOALA_ERR_HANDLE_IN_USE while its queue pair exists. */
  destroyId(id: number): void;
  /** `[local, remote]` addresses of an identifier as `a.b.c.d:port` ("" when not known). */
  cmAddresses(id: number): [string, string];
  /** rdma_event_str of an event type number. */
  cmEventName(type: number): string;
}

/** `rdma_cm_event_type` numbers (rdma/rdma_cma.h) that the native context acts on. */
export const CmEventCode = {
  ADDR_RESOLVED: 0,
  ADDR_ERROR: 1,
  ROUTE_RESOLVED: 2,
  ROUTE_ERROR: 3,
  CONNECT_REQUEST: 4,
  CONNECT_RESPONSE: 5,
  CONNECT_ERROR: 6,
  UNREACHABLE: 7,
  REJECTED: 8,
  ESTABLISHED: 9,
  DISCONNECTED: 10,
  DEVICE_REMOVAL: 11,
  TIMEWAIT_EXIT: 15,
} as const;

/** A queue pair created by the addon, with the capacities the provider granted. */
export interface NativeQpInfo {
  /** Its handle. */
  readonly handle: number;
  /** Queue pair number. */
  readonly qpNum: number;
  /** Outstanding send work requests. */
  readonly maxSendWr: number;
  /** Outstanding receive work requests. */
  readonly maxRecvWr: number;
  /** Scatter-gather entries of a send. */
  readonly maxSendSge: number;
  /** Scatter-gather entries of a receive. */
  readonly maxRecvSge: number;
  /** Bytes a send may carry inline. */
  readonly maxInlineData: number;
}

/** A memory region registered by the addon. */
export interface NativeMr {
  /** Its handle. */
  readonly handle: number;
  /** Local key. */
  readonly lkey: number;
  /** Remote key. */
  readonly rkey: number;
  /** Address of its first byte in this process. */
  readonly addr: number;
}

/** The loaded binding, or why there is none. */
export type NativeState = { readonly binding: NativeBinding; readonly path: string } | { readonly reason: string; readonly path?: string };

/** Where and how to load; the defaults are this package's folder and `process.env`. */
export interface NativeLoadOptions {
  /** Package root holding `addons/` and `prebuilds/`. Default: this package's. */
  root?: string;
  /** Environment read for KOALA_NO_NATIVE, KOALA_NATIVE_ADDON, KOALA_VERBS_LIB, KOALA_RDMACM_LIB. Default `process.env`. */
  env?: NodeJS.ProcessEnv;
}

/** The reason given when no addon binary exists. */
export const NOT_BUILT = "native verbs addon not built (npm run build:rdma)";

// src/transport/rdma/native.ts and dist/transport/rdma/native.js are both three folders down.
const packageRoot = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");

/** The addon binary to load under `root` (local build first, then a prebuilt one), or undefined. */
export function locateAddon(root: string): string | undefined {
  const local = join(root, "addons", "rdma", "build", "Release", "koala_rdma.node");
  if (existsSync(local)) return local;
  const dir = join(root, "prebuilds", `${process.platform}-${process.arch}`);
  let files: string[];
  try {
    files = readdirSync(dir);
  } catch {
    return undefined;
  }
  const glibc = (process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined)?.header?.glibcVersionRuntime !== undefined;
  const prebuilt = files
    .filter((f) => {
      const tags = f.split(".");
      return f.endsWith(".node") && tags.includes("napi") && !tags.includes(glibc ? "musl" : "glibc");
    })
    .sort();
  return prebuilt.length > 0 ? join(dir, prebuilt[0]!) : undefined;
}

function libraryPath(env: NodeJS.ProcessEnv, name: string, fallback: string): string | { reason: string } {
  const value = env[name];
  if (value === undefined || value === "") return fallback;
  if (value.includes("\0") || Buffer.byteLength(value) > 4095) return { reason: `${name} is not a usable path` };
  return value;
}

const makeError = (code: string, message: string): Error => {
  const known = Object.values(ErrorCode) as string[];
  return new KoalaError((known.includes(code) ? code : ErrorCode.VERBS) as ErrorCodeValue, message);
};

/** Loads the addon and its libraries now, uncached. Prefer {@link nativeVerbs}. */
export function loadNative(options: NativeLoadOptions = {}): NativeState {
  const env = options.env ?? process.env;
  if (env.KOALA_NO_NATIVE === "1") return { reason: "KOALA_NO_NATIVE=1 forbids loading the native verbs addon" };
  if (process.platform !== "linux") return { reason: `the native verbs addon is Linux only (this is ${process.platform})` };
  const override = env.KOALA_NATIVE_ADDON;
  let path: string | undefined;
  if (override !== undefined && override !== "") {
    if (!existsSync(override)) return { reason: `native verbs addon not found at ${override} (KOALA_NATIVE_ADDON)` };
    path = override;
  } else {
    path = locateAddon(options.root ?? packageRoot);
    if (path === undefined) return { reason: NOT_BUILT };
  }
  let binding: NativeBinding;
  try {
    binding = createRequire(import.meta.url)(path) as NativeBinding;
  } catch (err) {
    return { reason: `native verbs addon at ${path} failed to load: ${(err as Error).message}`, path };
  }
  if (binding.abiVersion !== NATIVE_ABI_VERSION) {
    return { reason: `native verbs addon at ${path} speaks ABI ${String(binding.abiVersion)}, this code ${NATIVE_ABI_VERSION} (npm run build:rdma)`, path };
  }
  binding.init(makeError);
  const verbs = libraryPath(env, "KOALA_VERBS_LIB", "libibverbs.so.1");
  if (typeof verbs !== "string") return { ...verbs, path };
  const rdmacm = libraryPath(env, "KOALA_RDMACM_LIB", "librdmacm.so.1");
  if (typeof rdmacm !== "string") return { ...rdmacm, path };
  const why = binding.load(verbs, rdmacm);
  if (why !== undefined) return { reason: why, path };
  return { binding, path };
}

let cached: NativeState | undefined;

/**
 * The native binding for this process (this thread), loaded at the first call and cached,
 * or the reason it cannot be used. `KOALA_NO_NATIVE=1` is honoured at every call.
 */
export function nativeVerbs(): NativeState {
  if (process.env.KOALA_NO_NATIVE === "1") return { reason: "KOALA_NO_NATIVE=1 forbids loading the native verbs addon" };
  cached ??= loadNative();
  return cached;
}
