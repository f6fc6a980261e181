/**
 * The socket datapath: the `tcp`, `tls` and `unix` transports over `node:net` and `node:tls`,
 * in TypeScript only. This module dials and listens; the live connection is {@link SocketConnection}.
 *
 * `tls` is `tcp` with a TLS handshake in front: the listener is a `tls.Server` (a `net.Server`)
 * that hands over a connection once its handshake completed (`secureConnection`), and a client
 * opens a TCP socket as for `tcp` and runs `tls.connect` over it (`secureConnect`). The koala
 * HELLO, framing and everything after run over the TLS socket unchanged.
 *
 * A connection is handed out only after both sides exchanged a HELLO, so a peer that is not a
 * koala endpoint fails `connect()` (or is dropped by the listener) with KOALA_ERR_PROTOCOL.
 */
import { chmodSync, lstatSync, unlinkSync } from "node:fs";
import net from "node:net";
import tls from "node:tls";
import { setTimeout as sleep } from "node:timers/promises";
import { ErrorCode, KoalaError } from "../errors.js";
import { log, logLimited } from "../log.js";
import { QueuedListener } from "./accept-queue.js";
import { formatAddress } from "./address.js";
import { errnoOf, fromSystemError } from "./errno.js";
import { checkFileDescriptors } from "./fd-watch.js";
import { SocketConnection } from "./socket-connection.js";
import type { Address, Connection, Listener, PeerCertificate, ResolvedTransportOptions, TlsPem, Transport } from "./types.js";

type SocketTransportName = "tcp" | "tls" | "unix";

/** Listen backlog: a burst of clients must queue, not fail (a full unix backlog answers EAGAIN). */
const BACKLOG = 4096;

/** Numbers the unnamed ends of unix connections in their addresses (`unix:/path#peer-3`). */
let unixPeers = 0;

/** The address of one end of an accepted or dialled socket: its IP and port, or for unix the listener's path with a tag. */
function endAddress(transport: SocketTransportName, socket: net.Socket, side: "local" | "remote", unixAddress: () => string): string {
  if (transport === "unix") return unixAddress();
  return side === "local"
    ? formatAddress(transport, socket.localAddress ?? "unknown", socket.localPort ?? 0, "")
    : formatAddress(transport, socket.remoteAddress ?? "unknown", socket.remotePort ?? 0, "");
}

/** PEM data as node:tls types it (it does not change the arrays it is given). */
const pem = (v: TlsPem | undefined): string | Buffer | (string | Buffer)[] | undefined => v as string | Buffer | (string | Buffer)[] | undefined;

/** What the peer of a TLS socket presented, or undefined when it presented no certificate. */
function peerCertificateOf(socket: tls.TLSSocket): PeerCertificate | undefined {
  const cert = socket.getPeerCertificate();
  if (cert === null || cert === undefined || Object.keys(cert).length === 0) return undefined;
  const cn: unknown = cert.subject?.CN;
  const subject = Array.isArray(cn) ? cn.join(", ") : typeof cn === "string" ? cn : "";
  const altNames = typeof cert.subjectaltname === "string" && cert.subjectaltname !== "" ? cert.subjectaltname.split(", ") : [];
  return Object.freeze({ authorized: socket.authorized, subject, altNames: Object.freeze(altNames) });
}

/**
 * The TCP socket under an accepted TLS socket, on which a reset can be sent (a TLSSocket's own
 * `resetAndDestroy()` throws ERR_INVALID_HANDLE_TYPE, and its `destroy()` looks to the peer like
 * an orderly end). Node keeps it as `_parent`; without it the connection is just destroyed.
 */
function tcpUnder(socket: tls.TLSSocket): net.Socket | undefined {
  const parent = (socket as unknown as { _parent?: unknown })._parent;
  return parent instanceof net.Socket ? parent : undefined;
}

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
    if (transport === "tls") {
      // A tls.Server hands over a socket once its handshake completed; a failed handshake (an
      // untrusted or missing client certificate, a plaintext client) only drops that socket.
      server.on("secureConnection", (socket: tls.TLSSocket) => this.incoming(socket, tcpUnder(socket), peerCertificateOf(socket)));
      server.on("tlsClientError", (err: Error, socket: tls.TLSSocket) => {
        logLimited("transport.tls-handshake", "debug", "transport", `dropped an incoming connection on ${address} from ${endAddress("tls", socket, "remote", () => "")}: ${fromSystemError(err, "TLS handshake").message}`);
      });
    } else server.on("connection", (socket: net.Socket) => this.incoming(socket, transport === "tcp" ? socket : undefined, undefined));
    server.on("error", (err) => {
      const errno = errnoOf(err);
      if (errno === "EMFILE" || errno === "ENFILE") {
        // The process (EMFILE) or the system (ENFILE) has no file descriptor left for the new
        // connection; the kernel's queue is drained and those clients see a reset. Serving goes
        // on, and new connections are taken again once others close.
        logLimited("transport.out-of-fds", "error", "transport", `out of file descriptors (${errno}) accepting on ${address}: new connections are refused until some close; raise the limit (ulimit -n) or lower the server's maxConnections`, 1);
      } else logLimited("transport.listener-error", "error", "transport", `listener ${address}: ${err.message}`, 1);
    });
  }

  /** `tcp` is the TCP socket under `socket` (itself on tcp, none on unix); `peer` what a TLS client presented. */
  private incoming(socket: net.Socket, tcp: net.Socket | undefined, peer: PeerCertificate | undefined): void {
    // A TLS handshake begun before close() can complete after it.
    if (this.queue.isClosed) {
      socket.destroy();
      return;
    }
    checkFileDescriptors(this.address);
    // The listener's own address may be a wildcard (0.0.0.0): each connection reports the real one.
    const local = endAddress(this.transport, socket, "local", () => this.address);
    const remote = endAddress(this.transport, socket, "remote", () => `${this.address}#peer-${++unixPeers}`);
    const conn = new SocketConnection(socket, this.transport, this.options, local, remote, tcp, peer);
    this.handshaking.add(conn);
    conn.greeting(this.options.connectTimeoutMs).then(
      () => {
        this.handshaking.delete(conn);
        this.queue.push(conn);
      },
      (err: unknown) => {
        // The connection closed itself (protocol error, reset, no HELLO in time); the listener goes on.
        this.handshaking.delete(conn);
        logLimited("transport.handshake", "debug", "transport", `dropped an incoming connection on ${this.address} from ${remote}: ${(err as Error).message}`);
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
  const server = transport === "tls" ? createTlsServer(address, options) : net.createServer();
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
  if (transport !== "unix") bound = formatAddress(transport, address.host, (server.address() as net.AddressInfo).port, "");
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
 * The server of a `tls` listener. It needs `tls.key` and `tls.cert` (KOALA_ERR_INVALID_ARGUMENT
 * naming them otherwise, or when Node cannot load them); a handshake gets `connectTimeoutMs`.
 */
function createTlsServer(address: Address, options: ResolvedTransportOptions): tls.Server {
  const { key, cert, ca, requestCert, rejectUnauthorized, minVersion } = options.tls;
  if (key === undefined || cert === undefined) {
    throw new KoalaError(ErrorCode.INVALID_ARGUMENT, `listen on ${address.uri}: a TLS listener needs the transport options "tls.key" and "tls.cert" (its certificate and private key), or the variables KOALA_TLS_KEY and KOALA_TLS_CERT naming their PEM files`);
  }
  try {
    return tls.createServer({ key: pem(key), cert: pem(cert), ca: pem(ca), requestCert, rejectUnauthorized, minVersion, handshakeTimeout: options.connectTimeoutMs });
  } catch (err) {
    throw new KoalaError(ErrorCode.INVALID_ARGUMENT, `listen on ${address.uri}: the transport options "tls.key", "tls.cert" or "tls.ca" cannot be loaded: ${(err as Error).message}`, { cause: err });
  }
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
  const local = endAddress(transport, socket, "local", () => `${address.uri}#client-${++unixPeers}`);
  let conn: SocketConnection;
  if (transport === "tls") {
    const secure = await secureClient(socket, address, options, deadline);
    conn = new SocketConnection(secure, transport, options, local, address.uri, socket, peerCertificateOf(secure));
  } else conn = new SocketConnection(socket, transport, options, local, address.uri, transport === "tcp" ? socket : undefined);
  try {
    await conn.greeting(Math.max(1, deadline - Date.now()));
  } catch (err) {
    conn.close(err as Error);
    const e = err as KoalaError;
    throw new KoalaError(e.code, `connect to ${address.uri}: ${e.message}${greetingHint(transport, e.code)}`, { cause: err });
  }
  return conn;
}

/** What the end of a connection before the server's HELLO may mean, for the error message (the bytes cannot tell). */
function greetingHint(transport: SocketTransportName, code: string): string {
  // With TLS 1.3 a client completes its handshake before the server has checked the client's
  // certificate: a server that refuses an untrusted one without an alert just ends the connection.
  if (transport === "tls" && (code === ErrorCode.PEER_CLOSED || code === ErrorCode.CONNECTION_RESET)) {
    return " (after the TLS handshake: the server may have refused this client's certificate)";
  }
  // A koala listener sends its HELLO as soon as it accepts: an end with no byte at all is
  // something else, such as a tls:// listener dropping a client that does not speak TLS.
  if (transport === "tcp" && code === ErrorCode.PEER_CLOSED) return " before sending a koala HELLO (is it a tls:// listener? dial it with tls://)";
  return "";
}

/**
 * Resolves once `socket` emits `event`; rejects with its error mapped by `mapError`, or with
 * KOALA_ERR_CONNECT_TIMEOUT at `deadline`. The socket is destroyed when it fails.
 */
function settle(socket: net.Socket, event: string, address: Address, options: ResolvedTransportOptions, deadline: number, mapError: (err: Error) => KoalaError): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new KoalaError(ErrorCode.CONNECT_TIMEOUT, `connect to ${address.uri}: no connection within ${options.connectTimeoutMs} ms`));
    }, Math.max(1, deadline - Date.now()));
    const onError = (err: Error) => {
      clearTimeout(timer);
      socket.destroy();
      reject(mapError(err));
    };
    socket.once("error", onError);
    socket.once(event, () => {
      clearTimeout(timer);
      socket.off("error", onError);
      resolve();
    });
  });
}

/** Opens the socket; rejects with a mapped system error, or KOALA_ERR_CONNECT_TIMEOUT at `deadline`. */
async function dial(transport: SocketTransportName, address: Address, options: ResolvedTransportOptions, deadline: number): Promise<net.Socket> {
  const socket = transport === "unix" ? net.connect({ path: address.path }) : net.connect({ host: address.host, port: address.port });
  await settle(socket, "connect", address, options, deadline, (err) => fromSystemError(err, `connect to ${address.uri}`));
  return socket;
}

/**
 * Runs the client's TLS handshake over the connected `socket`. The server's certificate is
 * checked against the host of the address; SNI carries `tls.servername`, or the host when it is
 * a name. Rejects with KOALA_ERR_TLS naming Node's code (an untrusted certificate, a host
 * mismatch, a server that does not speak TLS), or KOALA_ERR_CONNECT_TIMEOUT at `deadline`.
 */
async function secureClient(socket: net.Socket, address: Address, options: ResolvedTransportOptions, deadline: number): Promise<tls.TLSSocket> {
  const { key, cert, ca, servername, rejectUnauthorized, minVersion } = options.tls;
  let secure: tls.TLSSocket;
  try {
    secure = tls.connect({ socket, host: address.host, servername: servername ?? (net.isIP(address.host) === 0 ? address.host : undefined), key: pem(key), cert: pem(cert), ca: pem(ca), rejectUnauthorized, minVersion });
  } catch (err) {
    socket.destroy();
    throw new KoalaError(ErrorCode.INVALID_ARGUMENT, `connect to ${address.uri}: the transport options "tls.key", "tls.cert" or "tls.ca" cannot be loaded: ${(err as Error).message}`, { cause: err });
  }
  try {
    await settle(secure, "secureConnect", address, options, deadline, (err) => {
      const e = fromSystemError(err, `connect to ${address.uri}: TLS handshake`);
      // A koala server without TLS greets with its HELLO frame, which is no TLS record.
      const plaintext = errnoOf(err) === "ERR_SSL_WRONG_VERSION_NUMBER" || errnoOf(err) === "ERR_SSL_PACKET_LENGTH_TOO_LONG";
      return plaintext ? new KoalaError(e.code, `${e.message}; the server does not speak TLS (a plaintext tcp:// listener?)`, { cause: err }) : e;
    });
  } catch (err) {
    socket.destroy();
    throw err;
  }
  return secure;
}

/** The TCP transport (`tcp://host:port`). */
export const tcpTransport: Transport = {
  name: "tcp",
  unavailableReason: () => undefined,
  listen: (address, options) => listenSocket("tcp", address, options),
  connect: (address, options) => connectSocket("tcp", address, options),
};

/** The TLS transport (`tls://host:port`): TCP with TLS from `node:tls`, set up by the transport option `tls`. */
export const tlsTransport: Transport = {
  name: "tls",
  unavailableReason: () => undefined,
  listen: (address, options) => listenSocket("tls", address, options),
  connect: (address, options) => connectSocket("tls", address, options),
};

/** The Unix-domain socket transport (`unix:/path/to.sock`). */
export const unixTransport: Transport = {
  name: "unix",
  unavailableReason: () => (process.platform === "win32" ? "Unix-domain sockets are not supported on Windows" : undefined),
  listen: (address, options) => listenSocket("unix", address, options),
  connect: (address, options) => connectSocket("unix", address, options),
};
