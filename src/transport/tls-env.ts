/**
 * TLS settings from the environment: `KOALA_TLS_CERT`, `KOALA_TLS_KEY`, `KOALA_TLS_CA` (paths
 * of PEM files) and `KOALA_TLS_SERVERNAME`, so that `KOALA_TRANSPORT=tls` (or a `tls://`
 * address) works without code. The transport option `tls` wins over them: `key`/`cert` as a
 * pair, `ca` and `servername` each on its own.
 */
import { readFileSync } from "node:fs";
import { ErrorCode, KoalaError } from "../errors.js";
import type { ResolvedTransportOptions } from "./types.js";

/** The variables read by {@link withTlsEnv}. */
export const TLS_ENV = ["KOALA_TLS_CERT", "KOALA_TLS_KEY", "KOALA_TLS_CA", "KOALA_TLS_SERVERNAME"] as const;

type TlsVariable = (typeof TLS_ENV)[number];

/** The value of `name` in `env`, trimmed; undefined when unset or blank. */
function value(env: NodeJS.ProcessEnv, name: TlsVariable): string | undefined {
  const v = env[name]?.trim();
  return v === undefined || v === "" ? undefined : v;
}

/** The contents of the PEM file that `name` points at; KOALA_ERR_INVALID_ARGUMENT naming the variable and path otherwise. */
function readPem(where: string, name: TlsVariable, path: string): Buffer {
  let data: Buffer;
  try {
    data = readFileSync(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === "ENOENT" ? "no such file" : code === "EACCES" ? "permission denied" : code === "EISDIR" ? "is a directory" : (err as Error).message;
    throw new KoalaError(ErrorCode.INVALID_ARGUMENT, `${where}: ${name}=${JSON.stringify(path)} cannot be read: ${why}`, { cause: err });
  }
  if (!data.includes("-----BEGIN ")) {
    throw new KoalaError(ErrorCode.INVALID_ARGUMENT, `${where}: ${name}=${JSON.stringify(path)} is not a PEM file (no "-----BEGIN" line)`);
  }
  return data;
}

/**
 * `options` with the TLS settings it lacks taken from `KOALA_TLS_*` of `env` (read at each
 * listen or connect, so a renewed certificate is picked up by the next connection). A listener
 * uses `KOALA_TLS_CERT`/`KOALA_TLS_KEY` as its certificate and `KOALA_TLS_CA` to check client
 * certificates; a client uses `KOALA_TLS_CA` as the CAs it trusts (unset: Node's default list),
 * `KOALA_TLS_CERT`/`KOALA_TLS_KEY` as its client certificate and `KOALA_TLS_SERVERNAME` for SNI
 * and the host check. Throws KOALA_ERR_INVALID_ARGUMENT naming the variable (and the path) when
 * a file is missing, unreadable or not PEM, or when only one of CERT and KEY is set.
 */
export function withTlsEnv(where: string, side: "listen" | "connect", options: ResolvedTransportOptions, env: NodeJS.ProcessEnv = process.env): ResolvedTransportOptions {
  const given = options.tls;
  const changes: { key?: Buffer; cert?: Buffer; ca?: Buffer; servername?: string } = {};
  if (given.key === undefined && given.cert === undefined) {
    const cert = value(env, "KOALA_TLS_CERT");
    const key = value(env, "KOALA_TLS_KEY");
    if ((cert === undefined) !== (key === undefined)) {
      const [set, unset] = cert === undefined ? ["KOALA_TLS_KEY", "KOALA_TLS_CERT"] : ["KOALA_TLS_CERT", "KOALA_TLS_KEY"];
      throw new KoalaError(ErrorCode.INVALID_ARGUMENT, `${where}: ${set} is set without ${unset}; a certificate needs its private key`);
    }
    if (cert !== undefined && key !== undefined) {
      changes.cert = readPem(where, "KOALA_TLS_CERT", cert);
      changes.key = readPem(where, "KOALA_TLS_KEY", key);
    }
  }
  const ca = given.ca === undefined ? value(env, "KOALA_TLS_CA") : undefined;
  if (ca !== undefined) changes.ca = readPem(where, "KOALA_TLS_CA", ca);
  const servername = side === "connect" && given.servername === undefined ? value(env, "KOALA_TLS_SERVERNAME") : undefined;
  if (servername !== undefined) {
    if (/\s/.test(servername)) throw new KoalaError(ErrorCode.INVALID_ARGUMENT, `${where}: KOALA_TLS_SERVERNAME=${JSON.stringify(servername)} is not a host name`);
    changes.servername = servername;
  }
  if (Object.keys(changes).length === 0) return options;
  return Object.freeze({ ...options, tls: Object.freeze({ ...given, ...changes }) });
}
