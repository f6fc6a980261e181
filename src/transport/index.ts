/**
 * The transport layer's entry: `listen()` and `connect()` for any address, after the
 * built-in transports are registered by {@link setupTransports}.
 */
import { log } from "../log.js";
import { chooseTransport, registerTransport, resolveAddress, whyUnavailable } from "./registry.js";
import { memoryTransport } from "./memory.js";
import { rdmaTransport } from "./rdma/transport.js";
import { resolveTransportOptions } from "./options.js";
import { tcpTransport, unixTransport } from "./socket.js";
import type { Connection, Listener, TransportName, TransportOptions } from "./types.js";

let ready = false;

/** Registers the built-in transports (tcp, unix, memory, rdma). Idempotent; `listen` and `connect` call it. */
export function setupTransports(): void {
  if (ready) return;
  ready = true;
  registerTransport(tcpTransport);
  registerTransport(unixTransport);
  registerTransport(memoryTransport);
  registerTransport(rdmaTransport);
}

/** Listens at `address` (`tcp://host:port`, `unix:/path`, `memory:name`, or `host:port` for KOALA_TRANSPORT's choice). */
export async function listen(address: string, options?: TransportOptions): Promise<Listener> {
  setupTransports();
  const resolved = resolveTransportOptions("listen()", options);
  const { transport, address: bound, choice } = resolveAddress(address);
  if (choice !== undefined) log("debug", "transport", `listen ${address}: ${choice.transport} (${choice.reason})`);
  return transport.listen(bound, resolved);
}

/** Connects to `address` (same forms as {@link listen}). */
export async function connect(address: string, options?: TransportOptions): Promise<Connection> {
  setupTransports();
  const resolved = resolveTransportOptions("connect()", options);
  const { transport, address: bound, choice } = resolveAddress(address);
  if (choice !== undefined) log("debug", "transport", `connect ${address}: ${choice.transport} (${choice.reason})`);
  return transport.connect(bound, resolved);
}

/** What `koala info` prints about transports: each one's availability and the `auto` choice. */
export function transportInfo(env: NodeJS.ProcessEnv = process.env): {
  transports: { name: TransportName; available: boolean; reason?: string }[];
  choice: { transport?: TransportName; reason: string; mode: string };
} {
  setupTransports();
  const names: TransportName[] = ["tcp", "unix", "rdma", "memory"];
  const transports = names.map((name) => {
    const why = whyUnavailable(name);
    return why === undefined ? { name, available: true } : { name, available: false, reason: why };
  });
  let choice: { transport?: TransportName; reason: string; mode: string };
  try {
    const c = chooseTransport(env);
    choice = { transport: c.transport, reason: c.reason, mode: c.mode };
  } catch (err) {
    choice = { reason: (err as Error).message, mode: env.KOALA_TRANSPORT ?? "auto" };
  }
  return { transports, choice };
}

export { registerTransport, chooseTransport, resolveAddress } from "./registry.js";
export { parseAddress, formatAddress } from "./address.js";
export { registerRegion, encodeDescriptor, decodeDescriptor, DESCRIPTOR_BYTES } from "./regions.js";
export type { RegionDescriptor, RegisteredRegion, RemoteAccess, ByteSource } from "./regions.js";
export type { Address, Connection, Listener, Transport, TransportName, TransportOptions, ResolvedTransportOptions } from "./types.js";
