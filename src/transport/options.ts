/** The validated form of {@link TransportOptions}. */
import { ErrorCode, KoalaError } from "../errors.js";
import { boolean, custom, integer, oneOf, resolveOptions, type OptionsSpec } from "../options.js";
import type { ResolvedTlsOptions, ResolvedTransportOptions, TlsOptions, TlsPem, TransportOptions } from "./types.js";

const MiB = 1024 * 1024;

/** Largest message size a socket frame header can describe (4-byte length, less the header). */
export const MAX_FRAME_PAYLOAD = 0xffff_ffff - 16;

const isObject = (v: unknown): boolean => typeof v === "object" && v !== null && !Array.isArray(v);
const isPemItem = (v: unknown): boolean => (typeof v === "string" && v !== "") || (Buffer.isBuffer(v) && v.byteLength > 0);
const isPem = (v: unknown): boolean => isPemItem(v) || (Array.isArray(v) && v.length > 0 && v.every(isPemItem));
const PEM = "a non-empty PEM string or Buffer, or an array of them";

const tlsSpec: OptionsSpec<TlsOptions> = {
  key: custom<TlsPem | undefined>(undefined, PEM, isPem),
  cert: custom<TlsPem | undefined>(undefined, PEM, isPem),
  ca: custom<TlsPem | undefined>(undefined, PEM, isPem),
  servername: custom<string | undefined>(undefined, "a non-empty host name", (v) => typeof v === "string" && v !== "" && !/\s/.test(v)),
  rejectUnauthorized: boolean(true),
  requestCert: boolean(false),
  minVersion: oneOf<"TLSv1.2" | "TLSv1.3">("TLSv1.2", ["TLSv1.2", "TLSv1.3"]),
};

const NO_TLS: ResolvedTlsOptions = resolveOptions("", tlsSpec, {}) as ResolvedTlsOptions;

const spec: OptionsSpec<Required<TransportOptions>> = {
  maxMessageBytes: integer(64 * MiB, 1, MAX_FRAME_PAYLOAD),
  highWaterMarkBytes: integer(1 * MiB, 1, 2 ** 31),
  connectTimeoutMs: integer(10_000, 1, 2 ** 31 - 1),
  receiveQueueMessages: integer(1024, 1, 2 ** 24),
  receiveQueueBytes: integer(8 * MiB, 1, Number.MAX_SAFE_INTEGER),
  coalesceMaxBytes: integer(16 * 1024, 0, 1 * MiB),
  writeEagerBytes: integer(16 * 1024, 1, 2 ** 31),
  closeLingerMs: integer(10_000, 0, 2 ** 31 - 1),
  noDelay: boolean(true),
  oneSided: boolean(false),
  socketFileMode: integer(0o660, 0, 0o777),
  tls: custom<TlsOptions>(NO_TLS, "an object of TLS options (key, cert, ca, servername, rejectUnauthorized, requestCert, minVersion)", isObject),
};

/**
 * Checks transport options (a misspelled key is an error naming it, in `tls` too) and fills in
 * defaults. `key` and `cert` of `tls` go together: one without the other is an error.
 */
export function resolveTransportOptions(where: string, input: TransportOptions | undefined): ResolvedTransportOptions {
  const resolved = resolveOptions(where, spec, input);
  if (resolved.tls === NO_TLS) return resolved as ResolvedTransportOptions;
  const tls = resolveOptions(`${where}: option "tls"`, tlsSpec, resolved.tls);
  if ((tls.key === undefined) !== (tls.cert === undefined)) {
    const [given, missing] = tls.key === undefined ? ["cert", "key"] : ["key", "cert"];
    throw new KoalaError(ErrorCode.INVALID_ARGUMENT, `${where}: option "tls": "${given}" is given without "${missing}"; a certificate needs its private key`);
  }
  return Object.freeze({ ...resolved, tls }) as ResolvedTransportOptions;
}
