/**
 * The two error classes every layer shares.
 *
 * - {@link KoalaError}: an internal failure (transport, memory, configuration) with a stable
 *   string code such as `KOALA_ERR_CONNECTION_REFUSED`. Code that reacts to a failure tests
 *   `err.code`, never the message text.
 * - {@link RpcError}: the failure of one call, with a gRPC status code number.
 *
 * Both answer `instanceof` through a `Symbol.for` brand, so an error made by one loaded copy
 * of the package is still recognised by another copy (two versions in one dependency tree).
 */

/** gRPC status codes, numbered exactly as gRPC numbers them. */
export enum Code {
  OK = 0,
  CANCELLED = 1,
  UNKNOWN = 2,
  INVALID_ARGUMENT = 3,
  DEADLINE_EXCEEDED = 4,
  NOT_FOUND = 5,
  ALREADY_EXISTS = 6,
  PERMISSION_DENIED = 7,
  RESOURCE_EXHAUSTED = 8,
  FAILED_PRECONDITION = 9,
  ABORTED = 10,
  OUT_OF_RANGE = 11,
  UNIMPLEMENTED = 12,
  INTERNAL = 13,
  UNAVAILABLE = 14,
  DATA_LOSS = 15,
  UNAUTHENTICATED = 16,
}

/** Stable codes of {@link KoalaError}. Values are part of the public API and never change. */
export const ErrorCode = {
  /** A caller passed an option or argument that is not valid. */
  INVALID_ARGUMENT: "KOALA_ERR_INVALID_ARGUMENT",
  /** An address could not be parsed or names an unknown scheme. */
  INVALID_ADDRESS: "KOALA_ERR_INVALID_ADDRESS",
  /** The requested transport cannot be used here (the reason is in the message). */
  TRANSPORT_UNAVAILABLE: "KOALA_ERR_TRANSPORT_UNAVAILABLE",
  /** The native addon could not be loaded. */
  ADDON_UNAVAILABLE: "KOALA_ERR_ADDON_UNAVAILABLE",
  /** Nobody listens at the address. */
  CONNECTION_REFUSED: "KOALA_ERR_CONNECTION_REFUSED",
  /** The peer reset or dropped the connection. */
  CONNECTION_RESET: "KOALA_ERR_CONNECTION_RESET",
  /** The peer closed the connection in an orderly way. */
  PEER_CLOSED: "KOALA_ERR_PEER_CLOSED",
  /** This side closed the connection (or listener); operations after that fail with it. */
  CLOSED: "KOALA_ERR_CLOSED",
  /** Connecting took longer than allowed. */
  CONNECT_TIMEOUT: "KOALA_ERR_CONNECT_TIMEOUT",
  /** The host or path does not exist. */
  HOST_NOT_FOUND: "KOALA_ERR_HOST_NOT_FOUND",
  /** The address is already in use by another listener. */
  ADDRESS_IN_USE: "KOALA_ERR_ADDRESS_IN_USE",
  /** The operating system denied access (socket file permissions, privileged port). */
  ACCESS_DENIED: "KOALA_ERR_ACCESS_DENIED",
  /**
   * A TLS handshake or TLS record failed: an untrusted or mismatched certificate, a client
   * certificate missing or refused, a peer that does not speak TLS, or one that does where
   * plaintext was expected. Node's own code (e.g. `UNABLE_TO_VERIFY_LEAF_SIGNATURE`) is in the message.
   */
  TLS: "KOALA_ERR_TLS",
  /** The peer sent bytes that are not a valid frame. */
  PROTOCOL: "KOALA_ERR_PROTOCOL",
  /** A message is larger than the configured maximum. */
  MESSAGE_TOO_LARGE: "KOALA_ERR_MESSAGE_TOO_LARGE",
  /** A one-sided access fell outside the registered region. */
  OUT_OF_BOUNDS: "KOALA_ERR_OUT_OF_BOUNDS",
  /** A one-sided access needs a permission the region was not registered with. */
  REMOTE_ACCESS_DENIED: "KOALA_ERR_REMOTE_ACCESS_DENIED",
  /** The remote region is unknown or was deregistered. */
  REGION_NOT_FOUND: "KOALA_ERR_REGION_NOT_FOUND",
  /** A lease was used or released after it had been released. */
  LEASE_RELEASED: "KOALA_ERR_LEASE_RELEASED",
  /** The heap cannot satisfy an allocation within its limits. */
  OUT_OF_MEMORY: "KOALA_ERR_OUT_OF_MEMORY",
  /** The application's message receiver threw; that connection was closed. */
  RECEIVER_FAILED: "KOALA_ERR_RECEIVER_FAILED",
  /** A verbs object (device, PD, MR, CQ, QP, CM identifier) was used after it was destroyed. */
  HANDLE_DESTROYED: "KOALA_ERR_HANDLE_DESTROYED",
  /** A verbs object cannot be destroyed while others depend on it (a PD with MRs or QPs, a CQ attached to a QP). */
  HANDLE_IN_USE: "KOALA_ERR_HANDLE_IN_USE",
  /** A verbs call was refused: a queue is full, a limit of the device is passed, or the queue pair is in the wrong state. */
  VERBS: "KOALA_ERR_VERBS",
  /** A SEND found no posted receive at the peer after every retry (receiver not ready); the queue pair went to the error state. */
  RECEIVER_NOT_READY: "KOALA_ERR_RECEIVER_NOT_READY",
  /** An RDMA work request completed with an error and its queue pair went to the error state (the status is in the message). */
  QP_ERROR: "KOALA_ERR_QP_ERROR",
  /** An operating-system error with no more specific code. */
  SYSTEM: "KOALA_ERR_SYSTEM",
  /** The configuration file (KOALA_CONFIG) or a variable overriding it is not valid; the message names the file, key and value. */
  CONFIG: "KOALA_ERR_CONFIG",
  /** A control request (koala ctl) failed: no such process, or the process refused or could not apply it. */
  CONTROL: "KOALA_ERR_CONTROL",
  /** A target's name could not be resolved to endpoints (no such name, no records, a resolver that failed); the message says why. */
  RESOLVE_FAILED: "KOALA_ERR_RESOLVE_FAILED",
  /** A target names a resolver scheme or a balancer that is not registered; the message names it and lists the registered ones. */
  UNKNOWN_NAME: "KOALA_ERR_UNKNOWN_NAME",
  /** An optional peer package a feature needs is not installed (xDS needs @grpc/grpc-js and @grpc/grpc-js-xds); the message names it. */
  DEPENDENCY_MISSING: "KOALA_ERR_DEPENDENCY_MISSING",
} as const;

/** One of the values of {@link ErrorCode}. */
export type ErrorCodeValue = (typeof ErrorCode)[keyof typeof ErrorCode];

const koalaBrand = Symbol.for("koala-rpc.KoalaError");
const rpcBrand = Symbol.for("koala-rpc.RpcError");

/** An internal failure with a stable string code (see {@link ErrorCode}). */
export class KoalaError extends Error {
  /** Stable code, e.g. `KOALA_ERR_CONNECTION_REFUSED`. */
  readonly code: ErrorCodeValue;

  constructor(code: ErrorCodeValue, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    Object.defineProperty(this, koalaBrand, { value: true });
  }

  override get name(): string {
    return "KoalaError";
  }

  /** True for a KoalaError from any loaded copy of koala-rpc. */
  static override [Symbol.hasInstance](value: unknown): boolean {
    return typeof value === "object" && value !== null && koalaBrand in value;
  }
}

/** Metadata of a call: lower-case keys, string values or, for keys ending in `-bin`, bytes. */
export type MetadataInit = Record<string, string | Uint8Array | readonly (string | Uint8Array)[]>;

/** The failure of one RPC, with a gRPC status code. */
export class RpcError extends Error {
  /** gRPC status code. */
  readonly code: Code;
  /**
   * The status text exactly as raised or as the server sent it, without the `[CODE] ` prefix
   * that `message` adds; empty when the status carried none.
   */
  readonly rawMessage: string;
  /** The same status text as {@link rawMessage}, under the name grpc-js users know (`err.details`). */
  readonly details: string;
  /** Trailing metadata the server attached to the failure (empty when none). */
  readonly metadata: MetadataInit;

  constructor(code: Code, message: string, options?: { cause?: unknown; metadata?: MetadataInit }) {
    super(`[${codeName(code)}] ${message}`, options?.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.rawMessage = message;
    this.details = message;
    this.metadata = options?.metadata ?? {};
    Object.defineProperty(this, rpcBrand, { value: true });
  }

  override get name(): string {
    return "RpcError";
  }

  /** True for an RpcError from any loaded copy of koala-rpc. */
  static override [Symbol.hasInstance](value: unknown): boolean {
    return typeof value === "object" && value !== null && rpcBrand in value;
  }

  /**
   * Turns anything thrown into an RpcError: an RpcError is returned as it is, a KoalaError is
   * mapped by its code, an error with a numeric gRPC `code` (0–16, as grpc-js users throw:
   * `{ code: status.NOT_FOUND, details: "…" }`) keeps that code and its `details` (or
   * message), an AbortError becomes CANCELLED, anything else UNKNOWN (or `fallback`).
   */
  static from(reason: unknown, fallback: Code = Code.UNKNOWN): RpcError {
    if (reason instanceof RpcError) return reason;
    if (reason instanceof KoalaError) return new RpcError(codeForKoalaError(reason.code), reason.message, { cause: reason });
    const numeric = grpcStyleCode(reason);
    if (numeric !== undefined) {
      const r = reason as { details?: unknown; message?: unknown };
      const text = typeof r.details === "string" ? r.details : typeof r.message === "string" ? r.message : "";
      return new RpcError(numeric, text, { cause: reason });
    }
    if (reason instanceof Error) {
      if (reason.name === "AbortError") return new RpcError(Code.CANCELLED, reason.message, { cause: reason });
      if (reason.name === "TimeoutError") return new RpcError(Code.DEADLINE_EXCEEDED, reason.message, { cause: reason });
      return new RpcError(fallback, reason.message, { cause: reason });
    }
    return new RpcError(fallback, String(reason), { cause: reason });
  }
}

/** The numeric gRPC code an error-like object carries in `code`, when it is one of 1–16. */
function grpcStyleCode(reason: unknown): Code | undefined {
  if (typeof reason !== "object" || reason === null) return undefined;
  const code = (reason as { code?: unknown }).code;
  return typeof code === "number" && Number.isInteger(code) && code >= 1 && code <= 16 ? (code as Code) : undefined;
}

/** A status code read from the wire: a known code as it is, anything else UNKNOWN (as gRPC clients do). */
export function clampCode(code: number): Code {
  return Number.isInteger(code) && code >= 0 && code <= 16 ? (code as Code) : Code.UNKNOWN;
}

/** The name of a status code (`"DEADLINE_EXCEEDED"`), or `"CODE_<n>"` for a number outside the table. */
export function codeName(code: number): string {
  return Code[code] ?? `CODE_${code}`;
}

/** The gRPC status that a transport-level failure means for the calls it touches. */
export function codeForKoalaError(code: ErrorCodeValue): Code {
  switch (code) {
    case ErrorCode.INVALID_ARGUMENT:
    case ErrorCode.INVALID_ADDRESS:
      return Code.INVALID_ARGUMENT;
    case ErrorCode.MESSAGE_TOO_LARGE:
    case ErrorCode.OUT_OF_MEMORY:
      return Code.RESOURCE_EXHAUSTED;
    case ErrorCode.CONNECT_TIMEOUT:
      return Code.DEADLINE_EXCEEDED;
    case ErrorCode.REMOTE_ACCESS_DENIED:
    case ErrorCode.ACCESS_DENIED:
      return Code.PERMISSION_DENIED;
    case ErrorCode.OUT_OF_BOUNDS:
      return Code.OUT_OF_RANGE;
    case ErrorCode.REGION_NOT_FOUND:
      return Code.NOT_FOUND;
    case ErrorCode.PROTOCOL:
    case ErrorCode.LEASE_RELEASED:
    case ErrorCode.HANDLE_DESTROYED:
    case ErrorCode.HANDLE_IN_USE:
    case ErrorCode.VERBS:
    case ErrorCode.RECEIVER_FAILED:
      return Code.INTERNAL;
    case ErrorCode.CLOSED:
      return Code.CANCELLED;
    default:
      return Code.UNAVAILABLE;
  }
}

/** Throws a KOALA_ERR_INVALID_ARGUMENT error naming `what` unless `ok` holds. */
export function check(ok: boolean, what: string): asserts ok {
  if (!ok) throw new KoalaError(ErrorCode.INVALID_ARGUMENT, what);
}
