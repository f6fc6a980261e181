/**
 * `KOALA_TRANSPORT=auto` when RDMA is available: a listener serves RDMA and TCP on the same
 * port number (the RDMA connection manager's port space is separate from TCP's), and a client
 * tries RDMA first and falls back to TCP, within a bounded time, when the peer has no RDMA
 * listener.
 */
import { ErrorCode, KoalaError } from "../errors.js";
import { log } from "../log.js";
import { QueuedListener } from "./accept-queue.js";
import { formatAddress } from "./address.js";
import { rdmaTransport } from "./rdma/transport.js";
import { tcpTransport } from "./socket.js";
import type { Address, Connection, Listener, ResolvedTransportOptions } from "./types.js";

/** Longest an `auto` client waits for an RDMA connection before it tries TCP, in milliseconds. */
export const AUTO_RDMA_CONNECT_MS = 2000;
/** Attempts at a port free in both TCP and RDMA port spaces when listening on port 0. */
const PORT_ATTEMPTS = 16;

function on(transport: "tcp" | "rdma", a: Address, port = a.port): Address {
  return { transport, host: a.host, port, path: "", uri: formatAddress(transport, a.host, port, "") };
}

/** A listener over an RDMA and a TCP listener on one port; connections of both come out of it. */
class DualListener extends QueuedListener implements Listener {
  readonly transport = "rdma" as const;

  constructor(
    /** `koala://host:port`: a client in `auto` mode dials RDMA first, then TCP. */
    readonly address: string,
    private readonly parts: Listener[],
  ) {
    super();
    for (const l of parts) l.onConnection((c) => this.queue.push(c));
  }

  async close(): Promise<void> {
    this.queue.close();
    await Promise.all(this.parts.map((l) => l.close()));
  }
}

/** Listens on TCP and RDMA at the same port number (port 0: one free in both). */
export async function listenAuto(address: Address, options: ResolvedTransportOptions): Promise<Listener> {
  for (let attempt = 1; ; attempt++) {
    const tcp = await tcpTransport.listen(on("tcp", address), options);
    const port = Number(tcp.address.slice(tcp.address.lastIndexOf(":") + 1));
    try {
      const rdma = await rdmaTransport.listen(on("rdma", address, port), options);
      log("info", "transport", `listening on ${address.host}:${port} with rdma and tcp (KOALA_TRANSPORT=auto)`);
      const host = address.host.includes(":") ? `[${address.host}]` : address.host;
      return new DualListener(`koala://${host}:${port}`, [rdma, tcp]);
    } catch (err) {
      await tcp.close();
      // Port 0: the free TCP port is taken in the RDMA port space; try another.
      if (address.port !== 0 || attempt >= PORT_ATTEMPTS || !(err instanceof KoalaError && err.code === ErrorCode.ADDRESS_IN_USE)) throw err;
    }
  }
}

/** Dials RDMA, then TCP when the peer has no RDMA listener or does not answer in time. */
export async function connectAuto(address: Address, options: ResolvedTransportOptions): Promise<Connection> {
  const started = Date.now();
  const rdmaMs = Math.min(AUTO_RDMA_CONNECT_MS, options.connectTimeoutMs);
  try {
    return await rdmaTransport.connect(on("rdma", address), Object.freeze({ ...options, connectTimeoutMs: rdmaMs }));
  } catch (err) {
    const fallback = err instanceof KoalaError && (err.code === ErrorCode.CONNECTION_REFUSED || err.code === ErrorCode.CONNECT_TIMEOUT || err.code === ErrorCode.HOST_NOT_FOUND);
    if (!fallback) throw err;
    log("info", "transport", `connect ${address.host}:${address.port}: no RDMA (${(err as Error).message}); using tcp`);
  }
  const left = Math.max(1, options.connectTimeoutMs - (Date.now() - started));
  return tcpTransport.connect(on("tcp", address), Object.freeze({ ...options, connectTimeoutMs: left }));
}
