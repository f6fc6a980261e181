/**
 * The transport contract. A transport moves whole messages (never a byte stream) between two
 * endpoints. Dialing (`Transport.connect`) is kept apart from the live `Connection`.
 */
import type { KoalaError } from "../errors.js";
import type { ByteSource, RegionDescriptor, RegisterRegionOptions, RegisteredRegion } from "./regions.js";

/** Names of the transports koala-rpc knows (`shm`: managed mode's shared rings to the daemon, registered by src/managed). */
export type TransportName = "tcp" | "tls" | "unix" | "rdma" | "memory" | "shm";

/** An address split into its parts; produced by `parseAddress`. */
export interface Address {
  /** Transport that serves this address. */
  readonly transport: TransportName;
  /** Host name or IP (tcp, tls, rdma), empty otherwise. */
  readonly host: string;
  /** Port (tcp, tls, rdma); 0 asks the system for a free one when listening. */
  readonly port: number;
  /** Socket path (unix), name (memory) or set-up socket and target (shm), empty otherwise. */
  readonly path: string;
  /** The address written as a URI, e.g. `tcp://127.0.0.1:5000`. */
  readonly uri: string;
}

/** PEM data as `node:tls` takes it: one string or Buffer, or several. */
export type TlsPem = string | Buffer | readonly (string | Buffer)[];

/**
 * TLS settings of the `tls` transport (ignored by the others); they are passed to `node:tls`.
 * A listener needs `key` and `cert`; a client needs `ca` unless the server's certificate is
 * signed by a CA that Node trusts by default.
 */
export interface TlsOptions {
  /** Private key(s) in PEM: required to listen; a client sends `cert` with it for mutual TLS. */
  key?: TlsPem;
  /** Certificate chain(s) in PEM matching `key`. */
  cert?: TlsPem;
  /** Certificate authorities to trust instead of Node's default list (the peer's certificate must chain to one). */
  ca?: TlsPem;
  /** Client: the name sent in SNI. Default: the host of the address when it is a name (not an IP). The certificate is checked against the address's host. */
  servername?: string;
  /** Refuse a peer whose certificate is not valid or not trusted (and, on a client, not issued for the host). Default true. */
  rejectUnauthorized?: boolean;
  /** Server: ask every client for a certificate (mutual TLS); with `rejectUnauthorized`, a client without a trusted one is refused. Default false. */
  requestCert?: boolean;
  /** Oldest TLS version accepted. Default "TLSv1.2". */
  minVersion?: "TLSv1.2" | "TLSv1.3";
}

/** {@link TlsOptions} with the defaults of `rejectUnauthorized`, `requestCert` and `minVersion` filled in. */
export type ResolvedTlsOptions = Readonly<TlsOptions & Required<Pick<TlsOptions, "rejectUnauthorized" | "requestCert" | "minVersion">>>;

/** The certificate the peer of a TLS connection presented. */
export interface PeerCertificate {
  /** True when the certificate chains to a trusted CA (and, seen from a client, names the host dialled). */
  readonly authorized: boolean;
  /** The subject's common name (CN), empty when it has none. */
  readonly subject: string;
  /** The subjectAltName entries as Node writes them, e.g. `DNS:localhost`, `IP Address:127.0.0.1`. */
  readonly altNames: readonly string[];
}

/** Options shared by listeners and connections of every transport. */
export interface TransportOptions {
  /** Largest message accepted in either direction, in bytes. Default 64 MiB. */
  maxMessageBytes?: number;
  /** `send()` returns false once more than this many bytes wait to be written. Default 1 MiB. */
  highWaterMarkBytes?: number;
  /** Time allowed for `connect()` to complete, in milliseconds. Default 10 000. */
  connectTimeoutMs?: number;
  /** Messages the receive side buffers for a reader that has paused before it stops reading from the peer. Default 1024. */
  receiveQueueMessages?: number;
  /** Bytes of messages the receive side buffers for a reader that has paused before it stops reading from the peer. Default 8 MiB. */
  receiveQueueBytes?: number;
  /** Largest message copied into the per-tick coalescing buffer instead of written on its own, in bytes. Default 16 KiB. */
  coalesceMaxBytes?: number;
  /**
   * Bytes queued within one tick past which they are written at once instead of at the tick's
   * end (tcp, tls, unix): the peer starts on the first messages of a burst while this side still
   * produces the rest. Default 16 KiB.
   */
  writeEagerBytes?: number;
  /**
   * After an orderly `close()` has flushed, how long to wait for the peer's end before the
   * connection is dropped anyway, in milliseconds (a peer that never closes cannot keep it
   * open, nor a graceful server shutdown waiting). Default 10 000.
   */
  closeLingerMs?: number;
  /** Disable Nagle's algorithm on TCP sockets. Default true. */
  noDelay?: boolean;
  /**
   * Permission bits of the socket file a unix listener creates (the process umask is not used).
   * Only the owner and group may connect by default. Default 0o660.
   */
  socketFileMode?: number;
  /**
   * Serve one-sided read / write requests from the peer on regions registered on this
   * connection (`registerRegion`). Off by default: a connection that shares no memory
   * refuses every one-sided request. Default false.
   */
  oneSided?: boolean;
  /** TLS settings of the `tls` transport (see {@link TlsOptions}); the other transports ignore them. */
  tls?: TlsOptions;
}

/** {@link TransportOptions} with every default filled in. */
export type ResolvedTransportOptions = Readonly<Required<Omit<TransportOptions, "tls">> & { tls: ResolvedTlsOptions }>;

/**
 * A live, message-oriented connection.
 *
 * Closing: `closed` resolves (it never rejects) with the reason as a KoalaError whose code says
 * who closed and why: `KOALA_ERR_CLOSED` for a local `close()`, `KOALA_ERR_PEER_CLOSED` for
 * an orderly close by the peer, `KOALA_ERR_CONNECTION_RESET`, `KOALA_ERR_PROTOCOL`, ...
 */
export interface Connection extends AsyncIterable<Uint8Array> {
  /** The transport this connection runs on. */
  readonly transport: TransportName;
  /** This end's address as a URI. */
  readonly localAddress: string;
  /** The other end's address as a URI. */
  readonly remoteAddress: string;
  /** The resolved options of this connection. */
  readonly options: ResolvedTransportOptions;
  /**
   * On `tls`, the certificate the peer presented and whether it was verified; undefined on the
   * other transports and when the peer presented none (a client the server did not ask for one).
   */
  readonly peerCertificate?: PeerCertificate;

  /**
   * Queues one message made of `parts`, sent back to back without being joined into one
   * buffer. The parts must not change until the transport is done with them: `onWritten` is
   * called then (at once when the transport copied them, e.g. into the coalescing buffer;
   * after the operating system took them otherwise; on close when they were dropped): exactly
   * once, so a caller can release the memory behind them there.
   * Returns false when more than `highWaterMarkBytes` wait to be written: the caller should
   * `await drain()` before sending more. Throws KOALA_ERR_CLOSED after close and
   * KOALA_ERR_MESSAGE_TOO_LARGE for a message over `maxMessageBytes` (the connection stays up).
   */
  send(parts: readonly Uint8Array[], onWritten?: () => void): boolean;
  /**
   * Optional fast path for a small message: room for one message of `bytes` in the
   * connection's own send buffer, so the caller encodes it there instead of into memory of its
   * own that `send()` would copy. Returns the buffer to write into at {@link reservedOffset}, or
   * undefined when this connection cannot take the message that way (too large for its
   * coalescing buffer): then use `send()`. The message goes out with {@link commit}; one that
   * is never committed is never sent, and any `send()` or `reserve()` in between cancels it
   * (commit then throws). Throws KOALA_ERR_CLOSED after close.
   */
  reserve?(bytes: number): Uint8Array | undefined;
  /** Where the message of the last {@link reserve} starts in the buffer it returned. */
  readonly reservedOffset?: number;
  /**
   * Sends the message written into the last {@link reserve}'s room; returns as `send()` does.
   * Throws KOALA_ERR_INVALID_ARGUMENT when there is no reservation (none made, or cancelled by a send).
   */
  commit?(): boolean;
  /** Bytes queued by `send()` and not yet handed to the operating system or peer. */
  readonly bufferedBytes: number;
  /** Resolves once `bufferedBytes` has fallen to at most half the high-water mark; rejects with the close reason if the connection closes first. */
  drain(): Promise<void>;

  /**
   * Sets the receiver, called once per whole message, in order. Messages that arrive while no
   * receiver is set (or while paused) are queued, and reading from the peer stops once
   * `receiveQueueMessages` are queued, so a slow reader slows the writer instead of growing memory.
   * Ownership: a received message belongs to the transport until it is handed back with
   * {@link Connection.release}; it stays valid after the callback returns, until then.
   * Setting a receiver and iterating with `for await` are exclusive.
   */
  onMessage(receiver: ((message: Uint8Array) => void) | null): void;
  /**
   * Optional (socket transports have it): also sets a receiver that gets a message as the range
   * `[start, end)` of `buf` instead of a view made for it, when the message can be delivered at
   * once (a receiver is set, the connection is not paused, nothing is queued before it); other
   * messages still go to the `onMessage` receiver. `buf` then stands for the message: hand it to
   * {@link Connection.release}. It saves a view per message on the receive path.
   */
  onMessageRange?(receiver: ((buf: Uint8Array, start: number, end: number) => void) | null): void;
  /**
   * Hands a received message back to the transport, which may then reuse its memory (on RDMA
   * the receive buffer is posted again; on sockets this costs nothing). The view must be the
   * one delivered, released at most once, and not read afterwards. A message that is never
   * released stays valid; a transport that runs short of receive memory because of that copies
   * new messages out of its buffers instead of stalling, so release is what makes the
   * zero-copy path work, not what keeps a connection alive.
   */
  release(message: Uint8Array): void;
  /** Stops delivering messages until `resume()`. */
  pause(): void;
  /** Delivers queued messages again. */
  resume(): void;

  /** Closes the connection: data already queued is flushed, then the connection ends. With `reason`, it is dropped at once and `closed` carries a KOALA_ERR_CLOSED error whose cause is `reason`. */
  close(reason?: Error): void;
  /** True once the connection is closed or closing. */
  readonly isClosed: boolean;
  /** Resolves with the reason once the connection is closed. Never rejects. */
  readonly closed: Promise<KoalaError>;

  /**
   * Shares `source` with this connection's peer for one-sided access and returns the region,
   * whose `descriptor` the peer passes to its `read` / `write`. The region is reachable through
   * this connection only, until `deregister()` or the connection closes. Needs the transport
   * option `oneSided: true` (KOALA_ERR_INVALID_ARGUMENT otherwise). A lease-like source is
   * read at every access, so releasing it revokes access too.
   */
  registerRegion(source: Uint8Array | ByteSource, options?: RegisterRegionOptions): RegisteredRegion;
  /** Reads `length` bytes at `offset` of a region the peer registered (one-sided). */
  read(region: RegionDescriptor, offset: number, length: number): Promise<Uint8Array>;
  /** Writes `data` at `offset` of a region the peer registered with write access (one-sided). */
  write(region: RegionDescriptor, offset: number, data: Uint8Array): Promise<void>;
}

/** Accepts incoming connections on one address. */
export interface Listener extends AsyncIterable<Connection> {
  /** The transport this listener runs on. */
  readonly transport: TransportName;
  /** The address actually bound, as a URI (a port of 0 is replaced by the real one). */
  readonly address: string;
  /** Resolves with the next incoming connection; rejects with KOALA_ERR_CLOSED once the listener is closed. */
  accept(): Promise<Connection>;
  /**
   * Sets a callback for incoming connections, the fast path for servers. While it is set,
   * `accept()` and iteration get nothing.
   */
  onConnection(handler: ((connection: Connection) => void) | null): void;
  /** Stops accepting; connections already accepted stay open. */
  close(): Promise<void>;
}

/** A datapath that can listen and dial addresses of its scheme. */
export interface Transport {
  /** Its name, which is also the URI scheme it serves. */
  readonly name: TransportName;
  /** Why the transport cannot be used on this machine under the variables of `env` (default `process.env`), or undefined when it can. */
  unavailableReason(env?: NodeJS.ProcessEnv): string | undefined;
  /** What the transport would run on, in a few words (e.g. the RDMA device and provider), for logs and `koala info`. Optional. */
  describe?(env?: NodeJS.ProcessEnv): string;
  /** Listens at `address`. */
  listen(address: Address, options: ResolvedTransportOptions): Promise<Listener>;
  /** Dials `address`. */
  connect(address: Address, options: ResolvedTransportOptions): Promise<Connection>;
}
