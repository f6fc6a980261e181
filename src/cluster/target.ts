/**
 * Targets: what a channel is created for. A target is either one transport address, exactly as
 * `connect()` takes it (`tcp://host:port`, `unix:/path`, `host:port`, …), or a name for a
 * resolver registered by scheme, written as gRPC writes them: `scheme:///path`,
 * `scheme://authority/path` (the authority says which server to ask, e.g. a DNS server) or
 * `scheme:path`.
 */
import { ErrorCode, KoalaError } from "../errors.js";

/** A parsed target. */
export interface Target {
  /** The target as given. */
  readonly raw: string;
  /** The resolver's scheme (lower case), or undefined when the target is one transport address. */
  readonly scheme: string | undefined;
  /** What stood between `//` and the next `/` (empty when absent). */
  readonly authority: string;
  /** The resolver's name to resolve; the whole address when `scheme` is undefined. */
  readonly path: string;
}

/**
 * Splits `target`. A scheme that `isResolverScheme` rejects (a transport scheme such as `tcp:`,
 * or none) makes the whole string one address for the transport layer to check, as grpc-js's
 * passthrough does. Throws KOALA_ERR_INVALID_ADDRESS for what is no target at all.
 */
export function parseTarget(target: string, isResolverScheme: (scheme: string) => boolean): Target {
  if (typeof target !== "string" || target.trim() === "") {
    throw new KoalaError(ErrorCode.INVALID_ADDRESS, `a target must be a non-empty string, got ${JSON.stringify(target)}`);
  }
  const m = /^([a-z][a-z0-9+.-]*):(.*)$/is.exec(target);
  const scheme = m?.[1]?.toLowerCase();
  if (m === null || scheme === undefined || !isResolverScheme(scheme)) return { raw: target, scheme: undefined, authority: "", path: target };
  const rest = m[2]!;
  if (!rest.startsWith("//")) return { raw: target, scheme, authority: "", path: rest };
  const slash = rest.indexOf("/", 2);
  if (slash < 0) throw new KoalaError(ErrorCode.INVALID_ADDRESS, `invalid target ${JSON.stringify(target)}: expected ${scheme}:///name or ${scheme}://authority/name`);
  return { raw: target, scheme, authority: rest.slice(2, slash), path: rest.slice(slash + 1) };
}
