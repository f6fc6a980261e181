/**
 * The one place where operating-system errors become KoalaErrors with stable codes. The
 * original error stays as `cause`; the message names what was being done, where, and the errno.
 */
import { ErrorCode, KoalaError, type ErrorCodeValue } from "../errors.js";

const byErrno: Record<string, ErrorCodeValue> = {
  ECONNREFUSED: ErrorCode.CONNECTION_REFUSED,
  ECONNRESET: ErrorCode.CONNECTION_RESET,
  EPIPE: ErrorCode.CONNECTION_RESET,
  ECONNABORTED: ErrorCode.CONNECTION_RESET,
  ERR_STREAM_DESTROYED: ErrorCode.CONNECTION_RESET,
  ERR_SOCKET_CLOSED: ErrorCode.CONNECTION_RESET,
  ETIMEDOUT: ErrorCode.CONNECT_TIMEOUT,
  ENOTFOUND: ErrorCode.HOST_NOT_FOUND,
  EAI_AGAIN: ErrorCode.HOST_NOT_FOUND,
  EAI_NONAME: ErrorCode.HOST_NOT_FOUND,
  // A unix socket path that does not exist.
  ENOENT: ErrorCode.HOST_NOT_FOUND,
  EHOSTUNREACH: ErrorCode.HOST_NOT_FOUND,
  ENETUNREACH: ErrorCode.HOST_NOT_FOUND,
  EADDRINUSE: ErrorCode.ADDRESS_IN_USE,
  // No such local address to bind, or no local port left to connect from.
  EADDRNOTAVAIL: ErrorCode.ADDRESS_IN_USE,
  EACCES: ErrorCode.ACCESS_DENIED,
  EPERM: ErrorCode.ACCESS_DENIED,
};

/** The errno string of a Node system error (`"ECONNRESET"`), if it has one. */
export function errnoOf(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null | undefined)?.code;
  return typeof code === "string" ? code : undefined;
}

/**
 * Node's codes of certificate verification failures (OpenSSL's X509_V_ERR_* names without
 * the prefix) that can end a TLS handshake; `ERR_SSL_*` and `ERR_TLS_*` codes are TLS too.
 */
const certificateErrors = new Set([
  "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
  "UNABLE_TO_GET_ISSUER_CERT",
  "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
  "DEPTH_ZERO_SELF_SIGNED_CERT",
  "SELF_SIGNED_CERT_IN_CHAIN",
  "CERT_HAS_EXPIRED",
  "CERT_NOT_YET_VALID",
  "CERT_SIGNATURE_FAILURE",
  "CERT_CHAIN_TOO_LONG",
  "CERT_REVOKED",
  "CERT_UNTRUSTED",
  "CERT_REJECTED",
  "INVALID_CA",
  "INVALID_PURPOSE",
  "PATH_LENGTH_EXCEEDED",
  "HOSTNAME_MISMATCH",
]);

/** True for the code of a TLS failure: a certificate Node refused, or an `ERR_SSL_*` / `ERR_TLS_*` error. */
export function isTlsErrno(errno: string | undefined): boolean {
  return errno !== undefined && (errno.startsWith("ERR_SSL_") || errno.startsWith("ERR_TLS_") || certificateErrors.has(errno));
}

/**
 * Maps a Node system error to a KoalaError: ECONNREFUSED → CONNECTION_REFUSED; ECONNRESET,
 * EPIPE, ECONNABORTED → CONNECTION_RESET; ETIMEDOUT → CONNECT_TIMEOUT; ENOTFOUND, EAI_AGAIN,
 * ENOENT → HOST_NOT_FOUND; EADDRINUSE → ADDRESS_IN_USE; EACCES, EPERM → ACCESS_DENIED; a TLS failure
 * (see {@link isTlsErrno}) → TLS; any other → SYSTEM. `context` says what failed and where, e.g. `"connect to tcp://127.0.0.1:5000"`.
 * A KoalaError is returned unchanged.
 */
export function fromSystemError(err: unknown, context: string): KoalaError {
  if (err instanceof KoalaError) return err;
  const errno = errnoOf(err);
  const code = (errno !== undefined ? byErrno[errno] : undefined) ?? (isTlsErrno(errno) ? ErrorCode.TLS : ErrorCode.SYSTEM);
  let detail = err instanceof Error ? err.message : String(err);
  // OpenSSL's message is a whole error-queue line; its reason ("tlsv13 alert certificate required") says it.
  const reason = (err as { reason?: unknown } | null)?.reason;
  if (code === ErrorCode.TLS && typeof reason === "string" && reason !== "" && /:error:/.test(detail)) detail = reason;
  if (errno !== undefined && !detail.includes(errno)) detail += ` (${errno})`;
  return new KoalaError(code, `${context}: ${detail}`, { cause: err });
}
