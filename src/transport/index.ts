/**
 * The transport layer's entry: `listen()` and `connect()` for any address, after the
 * built-in transports are registered by {@link setupTransports}.
 */
import { log } from "../log.js";
import { connectAuto, listenAuto } from "./auto.js";
import { chooseTransport, registerTransport, resolveAddress, whyUnavailable, type TransportChoice } from "./registry.js";
import { memoryTransport } from "./memory.js";
import { rdmaTransport } from "./rdma/transport.js";
import { rdmaInfo, type RdmaInfo } from "./rdma/providers.js";
import { resolveTransportOptions } from "./options.js";
import { tcpTransport, tlsTransport, unixTransport } from "./socket.js";
import { withTlsEnv } from "./tls-env.js";
import type { Connection, Listener, TransportName, TransportOptions } from "./types.js";

let ready = false;

/** Registers the built-in transports (tcp, tls, unix, memory, rdma). Idempotent; `listen` and `connect` call it. */
export function setupTransports(): void {
  if (ready) return;
  ready = true;
  registerTransport(tcpTransport);
  registerTransport(tlsTransport);
  registerTransport(unixTransport);
  registerTransport(memoryTransport);
  registerTransport(rdmaTransport);
}

/**
 * Listens at `address` (`tcp://host:port`, `tls://host:port`, `unix:/path`, `memory:name`, or
 * `host:port` for KOALA_TRANSPORT's choice). Over tls, settings missing from `options.tls` come
 * from the `KOALA_TLS_*` variables (see {@link withTlsEnv}).
 */
export async function listen(address: string, options?: TransportOptions): Promise<Listener> {
  setupTransports();
  let resolved = resolveTransportOptions("listen()", options);
  const { transport, address: bound, choice } = resolveAddress(address);
  if (choice !== undefined) logChoice(`listen ${address}`, choice);
  if (choice?.mode === "auto" && choice.transport === "rdma") return listenAuto(bound, resolved);
  if (transport.name === "tls") resolved = withTlsEnv(`listen on ${bound.uri}`, "listen", resolved);
  return transport.listen(bound, resolved);
}

/** Connects to `address` (same forms as {@link listen}, `KOALA_TLS_*` included). */
export async function connect(address: string, options?: TransportOptions): Promise<Connection> {
  setupTransports();
  let resolved = resolveTransportOptions("connect()", options);
  const { transport, address: bound, choice } = resolveAddress(address);
  if (choice !== undefined) logChoice(`connect ${address}`, choice);
  if (choice?.mode === "auto" && choice.transport === "rdma") return connectAuto(bound, resolved);
  if (transport.name === "tls") resolved = withTlsEnv(`connect to ${bound.uri}`, "connect", resolved);
  return transport.connect(bound, resolved);
}

let lastAutoReason: string | undefined;

/** Logs the choice for a scheme-less address: what `auto` picks and why at info level, once per change; the rest at debug level. */
function logChoice(what: string, choice: TransportChoice): void {
  const text = `${what}: ${choice.transport} (${choice.reason})`;
  if (choice.mode === "auto" && choice.reason !== lastAutoReason) {
    lastAutoReason = choice.reason;
    log("info", "transport", `KOALA_TRANSPORT=auto uses ${choice.transport}: ${choice.reason}`);
  }
  log("debug", "transport", text);
}

/** What `koala info` prints about transports: each one's availability, RDMA providers and devices, and the `auto` choice. */
export function transportInfo(env: NodeJS.ProcessEnv = process.env): {
  transports: { name: TransportName; available: boolean; reason?: string }[];
  rdma: RdmaInfo;
  choice: { transport?: TransportName; reason: string; mode: string };
} {
  setupTransports();
  const names: TransportName[] = ["tcp", "tls", "unix", "rdma", "memory"];
  const transports = names.map((name) => {
    let why: string | undefined;
    try {
      why = whyUnavailable(name, env);
    } catch (err) {
      why = (err as Error).message;
    }
    return why === undefined ? { name, available: true } : { name, available: false, reason: why };
  });
  let choice: { transport?: TransportName; reason: string; mode: string };
  try {
    const c = chooseTransport(env);
    choice = { transport: c.transport, reason: c.reason, mode: c.mode };
  } catch (err) {
    choice = { reason: (err as Error).message, mode: env.KOALA_TRANSPORT ?? "auto" };
  }
  return { transports, rdma: rdmaInfo(env), choice };
}

export { registerTransport, chooseTransport, resolveAddress } from "./registry.js";
export { withTlsEnv, TLS_ENV } from "./tls-env.js";
export { parseAddress, formatAddress } from "./address.js";
export { encodeDescriptor, decodeDescriptor, DESCRIPTOR_BYTES, RegionTable } from "./regions.js";
export type { RegionDescriptor, RegisteredRegion, RemoteAccess, ByteSource, RegisterRegionOptions, ReadAnswer } from "./regions.js";
export type {
  Address,
  Connection,
  Listener,
  PeerCertificate,
  ResolvedTlsOptions,
  ResolvedTransportOptions,
  TlsOptions,
  TlsPem,
  Transport,
  TransportName,
  TransportOptions,
} from "./types.js";
