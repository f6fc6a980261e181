/**
 * The socket datapath: the `tcp` and `unix` transports over `node:net`, in TypeScript only.
 * This module dials and listens; the live connection is {@link SocketConnection}.
 *
 * A connection is handed out only after both sides exchanged a HELLO, so a peer that is not a
 * koala endpoint fails `connect()` (or is dropped by the listener) with KOALA_ERR_PROTOCOL.
 */
import { chmodSync, lstatSync, unlinkSync } from "node:fs";
import net from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { ErrorCode, KoalaError } from "../errors.js";
import { log, logLimited } from "../log.js";
import { QueuedListener } from "./accept-queue.js";
import { formatAddress } from "./address.js";
import { errnoOf, fromSystemError } from "./errno.js";
import { checkFileDescriptors } from "./fd-watch.js";
import { SocketConnection } from "./socket-connection.js";
import type { Address, Connection, Listener, ResolvedTransportOptions, Transport } from "./types.js";

type SocketTransportName = "tcp" | "unix";

/** Listen backlog: a burst of clients must queue, not fail (a full unix backlog answers EAGAIN). */
const BACKLOG = 4096;

/** Numbers the unnamed ends of unix connections in their addresses (`unix:/path#peer-3`). */
let unixPeers = 0;

class SocketListener extends QueuedListener implements Listener {
  /** Incoming connections whose HELLO has not arrived yet. */
  private readonly handshaking = new Set<SocketConnection>();

  constructor(
    readonly transport: SocketTransportName,
    private readonly server: net.Server,
    readonly address: string,
    private readonly options: ResolvedTransportOptions,
  ) {
    super();
    server.on("connection", (socket) => this.incoming(socket));
    server.on("error", (err) => {
      const errno = errnoOf(err);
      if (errno === "EMFILE" || errno === "ENFILE") {
        // The process (EMFILE) or the system (ENFILE) has no file descriptor left for the new
        // connection; the kernel's queue is drained and those clients see a reset. Serving goes
        // on, and new connections are taken again once others close.
        logLimited(`fds:${address}`, "error", "transport", `out of file descriptors (${errno}) accepting on ${address}: new connections are refused until some close; raise the limit (ulimit -n) or lower the server's maxConnections`);
      } else logLimited(`listener:${address}:${errno ?? err.message}`, "error", "transport", `listener ${address}: ${err.message}`);
    });
  }

  private incoming(socket: net.Socket): void {
    checkFileDescriptors(this.address);
    const tcp = this.transport === "tcp";
    // The listener's own address may be a wildcard (0.0.0.0): each connection reports the real one.
    const local = tcp ? formatAddress("tcp", socket.localAddress ?? "unknown", socket.localPort ?? 0, "") : this.address;
    const remote = tcp ? formatAddress("tcp", socket.remoteAddress ?? "unknown", socket.remotePort ?? 0, "") : `${this.address}#peer-${++unixPeers}`;
    const conn = new SocketConnection(socket, this.transport, this.options, local, remote);
    this.handshaking.add(conn);
    conn.greeting(this.options.connectTimeoutMs).then(
      () => {
        this.handshaking.delete(conn);
        this.queue.push(conn);
      },
      (err: unknown) => {
        // The connection closed itself (protocol error, reset, no HELLO in time); the listener goes on.
        this.handshaking.delete(conn);
        log("debug", "transport", `dropped an incoming connection on ${this.address} from ${remote}: ${(err as Error).message}`);
      },
    );
  }

  async close(): Promise<void> {
    if (this.queue.isClosed) return;
    this.queue.close();
    for (const c of this.handshaking) c.close(new Error("the listener closed during the handshake"));
    this.handshaking.clear();
    // The server stops accepting at once (and removes a unix socket file). It would report
    // "closed" only after every accepted socket ended; accepted connections outlive their
    // listener by contract, so that is not waited for.
    this.server.close();
  }
}

async function listenSocket(transport: SocketTransportName, address: Address, options: ResolvedTransportOptions): Promise<Listener> {
  if (transport === "unix") await removeStaleSocketFile(address);
  const server = net.createServer();
  const listenOptions = transport === "unix" ? { path: address.path, backlog: BACKLOG } : { host: address.host, port: address.port, backlog: BACKLOG };
  await new Promise<void>((resolve, reject) => {
    const onError = (err: Error) => reject(fromSystemError(err, `listen on ${address.uri}`));
    server.once("error", onError);
    server.listen(listenOptions, () => {
      server.off("error", onError);
      resolve();
    });
  });
  let bound = address.uri;
  if (transport === "tcp") bound = formatAddress("tcp", address.host, (server.address() as net.AddressInfo).port, "");
  else {
    try {
      chmodSync(address.path, options.socketFileMode);
    } catch (err) {
      server.close();
      throw fromSystemError(err, `listen on ${address.uri}: set the socket file's mode`);
    }
  }
  return new SocketListener(transport, server, bound, options);
}

/**
 * A socket file left behind by a process that died is removed; one that someone listens on is
 * in use. A path that is not a socket is left alone (listen then fails with ADDRESS_IN_USE).
 */
async function removeStaleSocketFile(address: Address): Promise<void> {
  try {
    if (!lstatSync(address.path).isSocket()) return;
  } catch {
    return; // nothing there
  }
  const alive = await new Promise<boolean>((resolve) => {
    const probe = net.connect({ path: address.path });
    probe.once("connect", () => {
      probe.destroy();
      resolve(true);
    });
    probe.once("error", (err) => resolve(errnoOf(err) === "EAGAIN")); // EAGAIN: a listener with a full backlog
  });
  if (alive) throw new KoalaError(ErrorCode.ADDRESS_IN_USE, `listen on ${address.uri}: another process listens on this socket file`);
  try {
    unlinkSync(address.path);
    log("debug", "transport", `removed the stale socket file ${address.path}`);
  } catch (err) {
    if (errnoOf(err) !== "ENOENT") throw fromSystemError(err, `listen on ${address.uri}: remove the stale socket file`);
  }
}

async function connectSocket(transport: SocketTransportName, address: Address, options: ResolvedTransportOptions): Promise<Connection> {
  const deadline = Date.now() + options.connectTimeoutMs;
  let socket: net.Socket;
  for (let attempt = 0; ; attempt++) {
    try {
      socket = await dial(transport, address, options, deadline);
      break;
    } catch (err) {
      // A unix listener whose backlog is full answers EAGAIN at once: try again shortly.
      const again = err instanceof KoalaError && errnoOf(err.cause) === "EAGAIN";
      if (!again || Date.now() >= deadline) throw err;
      await sleep(Math.min(50, 1 + attempt * 2));
    }
  }
  const local = transport === "tcp" ? formatAddress("tcp", socket.localAddress ?? "unknown", socket.localPort ?? 0, "") : `${address.uri}#client-${++unixPeers}`;
  const conn = new SocketConnection(socket, transport, options, local, address.uri);
  try {
    await conn.greeting(Math.max(1, deadline - Date.now()));
  } catch (err) {
    conn.close(err as Error);
    const e = err as KoalaError;
    throw new KoalaError(e.code, `connect to ${address.uri}: ${e.message}`, { cause: err });
  }
  return conn;
}

/** Opens the socket; rejects with a mapped system error, or KOALA_ERR_CONNECT_TIMEOUT at `deadline`. */
function dial(transport: SocketTransportName, address: Address, options: ResolvedTransportOptions, deadline: number): Promise<net.Socket> {
  const socket = transport === "unix" ? net.connect({ path: address.path }) : net.connect({ host: address.host, port: address.port });
  return new Promise<net.Socket>((resolve, reject) => {
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new KoalaError(ErrorCode.CONNECT_TIMEOUT, `connect to ${address.uri}: no connection within ${options.connectTimeoutMs} ms`));
    }, Math.max(1, deadline - Date.now()));
    const onError = (err: Error) => {
      clearTimeout(timer);
      reject(fromSystemError(err, `connect to ${address.uri}`));
    };
    socket.once("error", onError);
    socket.once("connect", () => {
      clearTimeout(timer);
      socket.off("error", onError);
      resolve(socket);
    });
  });
}

/** The TCP transport (`tcp://host:port`). */
export const tcpTransport: Transport = {
  name: "tcp",
  unavailableReason: () => undefined,
  listen: (address, options) => listenSocket("tcp", address, options),
  connect: (address, options) => connectSocket("tcp", address, options),
};

/** The Unix-domain socket transport (`unix:/path/to.sock`). */
export const unixTransport: Transport = {
  name: "unix",
  unavailableReason: () => (process.platform === "win32" ? "Unix-domain sockets are not supported on Windows" : undefined),
  listen: (address, options) => listenSocket("unix", address, options),
  connect: (address, options) => connectSocket("unix", address, options),
};
