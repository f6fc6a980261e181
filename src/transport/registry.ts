/**
 * Transports by name, and the choice of transport for an address. Transports are added by an
 * explicit `registerTransport` call (see `setupTransports` in index.ts), never as a side
 * effect of importing their module.
 */
import { ErrorCode, KoalaError } from "../errors.js";
import { bindAddress, parseAddress } from "./address.js";
import type { Address, Transport, TransportName } from "./types.js";

const transports = new Map<TransportName, Transport>();

/** Makes `transport` serve addresses of its scheme; replaces one registered under the same name. */
export function registerTransport(transport: Transport): void {
  transports.set(transport.name, transport);
}

/** The transport registered under `name`, if any. */
export function getTransport(name: TransportName): Transport | undefined {
  return transports.get(name);
}

/** Names of the registered transports. */
export function registeredTransports(): TransportName[] {
  return [...transports.keys()];
}

/**
 * Values `KOALA_TRANSPORT` accepts. `tls` takes its certificates from the transport option
 * `tls` or the `KOALA_TLS_*` variables (tls-env.ts).
 */
export const TRANSPORT_CHOICES = ["auto", "tcp", "unix", "rdma", "tls"] as const;

/** What a scheme-less address would use, and why. */
export interface TransportChoice {
  /** The transport picked. */
  transport: TransportName;
  /** The value of KOALA_TRANSPORT that led there. */
  mode: (typeof TRANSPORT_CHOICES)[number];
  /** Why, in one sentence (printed by `koala info` and logged at debug level). */
  reason: string;
}

/**
 * Picks the transport for an address without a scheme, from `KOALA_TRANSPORT`: `auto` uses
 * RDMA when it is available and TCP otherwise; an explicit choice is strict and throws
 * KOALA_ERR_TRANSPORT_UNAVAILABLE with the reason when that transport cannot be used.
 */
export function chooseTransport(env: NodeJS.ProcessEnv = process.env): TransportChoice {
  const raw = (env.KOALA_TRANSPORT ?? "auto").trim().toLowerCase() || "auto";
  if (!(TRANSPORT_CHOICES as readonly string[]).includes(raw)) {
    throw new KoalaError(
      ErrorCode.INVALID_ARGUMENT,
      `KOALA_TRANSPORT=${JSON.stringify(env.KOALA_TRANSPORT)} is not one of ${TRANSPORT_CHOICES.join(", ")}`,
    );
  }
  const mode = raw as TransportChoice["mode"];
  if (mode !== "auto") {
    requireAvailable(mode, env);
    return { transport: mode, mode, reason: `KOALA_TRANSPORT=${mode} asks for it` };
  }
  const rdmaWhyNot = whyUnavailable("rdma", env);
  if (rdmaWhyNot === undefined) {
    const what = transports.get("rdma")?.describe?.(env);
    return { transport: "rdma", mode, reason: what === undefined ? "an RDMA device is active" : `an RDMA device is active: ${what}` };
  }
  return { transport: "tcp", mode, reason: `RDMA is not used: ${rdmaWhyNot}` };
}

/** Why transport `name` cannot be used here (under the variables of `env`), or undefined when it can. */
export function whyUnavailable(name: TransportName, env: NodeJS.ProcessEnv = process.env): string | undefined {
  const t = transports.get(name);
  if (t === undefined) return `the ${name} transport is not registered`;
  return t.unavailableReason(env);
}

function requireAvailable(name: TransportName, env: NodeJS.ProcessEnv): Transport {
  const t = transports.get(name);
  const why = t === undefined ? `the ${name} transport is not registered` : t.unavailableReason(env);
  if (t === undefined || why !== undefined) {
    throw new KoalaError(ErrorCode.TRANSPORT_UNAVAILABLE, `${name} transport unavailable: ${why}`);
  }
  return t;
}

/** The transport and bound address for `address`, as written by the user. */
export function resolveAddress(address: string, env: NodeJS.ProcessEnv = process.env): { transport: Transport; address: Address; choice?: TransportChoice } {
  const parsed = parseAddress(address);
  if (parsed.scheme !== undefined) {
    return { transport: requireAvailable(parsed.scheme, env), address: bindAddress(parsed, parsed.scheme, address) };
  }
  const choice = chooseTransport(env);
  return { transport: requireAvailable(choice.transport, env), address: bindAddress(parsed, choice.transport, address), choice };
}
