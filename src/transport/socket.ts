/**
 * The socket datapath: the `tcp` and `unix` transports over `node:net`.
 *
 * Send: messages up to `coalesceMaxBytes` are copied, header and all, into a per-tick batch
 * buffer, so everything sent in one tick leaves in one write; larger messages go out as their
 * own parts (header, then the caller's views) between cork/uncork, never joined.
 * Receive: {@link FrameDecoder} hands out whole messages as views of the read chunk where it
 * can, and the {@link Inbox} pauses the socket when the reader falls behind.
 */
import net from "node:net";
import { existsSync, unlinkSync } from "node:fs";
import { ErrorCode, KoalaError } from "../errors.js";
import { log } from "../log.js";
import { AcceptQueue } from "./accept-queue.js";
import { formatAddress } from "./address.js";
import { errnoOf, fromSystemError } from "./errno.js";
import { FRAME_HEADER_BYTES, FrameDecoder, FrameKind, checkHello, helloFrame, writeFrameHeader } from "./framing.js";
import { Inbox } from "./inbox.js";
import { checkRemoteAccess, serveRemoteRead, serveRemoteWrite, type RegionDescriptor } from "./regions.js";
import type { Address, Connection, Listener, ResolvedTransportOptions, Transport, TransportName } from "./types.js";

// Below half of Buffer.poolSize, so a small batch comes from Node's buffer pool instead of a fresh allocation.
const BATCH_MIN = 2048;
const BATCH_MAX = 64 * 1024;

interface PendingOp {
  resolve: (bytes: Uint8Array) => void;
  reject: (err: unknown) => void;
}


/** One socket connection speaking koala framing. */
class SocketConnection implements Connection {
  readonly closed: Promise<KoalaError>;
  private resolveClosed!: (r: KoalaError) => void;
  private reason: KoalaError | undefined;
  private settled = false;
  private readonly inbox: Inbox;
  private readonly decoder: FrameDecoder;
  /** Set once the peer's HELLO arrived; until then frames are refused. */
  private greeted = false;
  private onGreeted: ((err?: KoalaError) => void) | undefined;

  // Send state.
  private batch: Buffer | undefined;
  private batchLen = 0;
  private readonly chunks: Uint8Array[] = [];
  private readonly chunkCallbacks: ((() => void) | undefined)[] = [];
  private queued = 0;
  private flushScheduled = false;
  private readonly flushNow = () => this.flush();
  private drainWaiters: { resolve: () => void; reject: (e: unknown) => void }[] = [];

  // One-sided operations in flight, by id.
  private readonly ops = new Map<number, PendingOp>();
  private nextOpId = 1;

  constructor(
    private readonly socket: net.Socket,
    readonly transport: TransportName,
    readonly options: ResolvedTransportOptions,
    readonly localAddress: string,
    readonly remoteAddress: string,
  ) {
    this.closed = new Promise((r) => (this.resolveClosed = r));
    this.inbox = new Inbox(
      options.receiveQueueMessages,
      () => socket.pause(),
      () => socket.resume(),
      (err) => {
        log("error", "transport", `the message receiver of ${remoteAddress} threw; closing that connection: ${(err as Error)?.stack ?? String(err)}`);
        this.abort(new KoalaError(ErrorCode.RECEIVER_FAILED, `the message receiver threw: ${(err as Error)?.message ?? String(err)}`, { cause: err }));
      },
    );
    this.decoder = new FrameDecoder(options.maxMessageBytes, (kind, payload) => this.onFrame(kind, payload));
    if (transport === "tcp") socket.setNoDelay(options.noDelay);
    socket.on("data", (chunk: Buffer) => {
      try {
        this.decoder.push(chunk);
      } catch (err) {
        if (err instanceof KoalaError && (err.code === ErrorCode.PROTOCOL || err.code === ErrorCode.MESSAGE_TOO_LARGE)) {
          log("warn", "transport", `closing ${remoteAddress}: ${err.message}`);
          this.abort(err);
        } else throw err;
      }
    });
    socket.on("end", () => {
      const midMessage = this.decoder.midFrame;
      this.end(
        new KoalaError(
          midMessage ? ErrorCode.CONNECTION_RESET : ErrorCode.PEER_CLOSED,
          midMessage ? "the peer closed the connection in the middle of a message" : "the peer closed the connection",
        ),
        !midMessage,
      );
    });
    socket.on("error", (err) => this.end(fromSystemError(err, `connection ${remoteAddress}`), false));
    socket.on("close", () => {
      this.end(new KoalaError(ErrorCode.CONNECTION_RESET, "the connection closed"), false);
      this.settle();
    });
    socket.on("drain", () => this.checkDrain());
    socket.write(helloFrame());
  }

  /** Resolves once the peer's HELLO arrives; rejects with the close reason or a protocol error. */
  greeting(timeoutMs: number): Promise<void> {
    if (this.greeted) return Promise.resolve();
    if (this.reason !== undefined) return Promise.reject(this.reason);
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        const err = new KoalaError(ErrorCode.CONNECT_TIMEOUT, `no koala HELLO from ${this.remoteAddress} within ${timeoutMs} ms`);
        this.abort(err);
      }, timeoutMs);
      this.onGreeted = (err) => {
        clearTimeout(timer);
        this.onGreeted = undefined;
        if (err === undefined) resolve();
        else reject(err);
      };
    });
  }

  get isClosed(): boolean {
    return this.reason !== undefined;
  }

  get bufferedBytes(): number {
    return this.queued + this.socket.writableLength;
  }

  // ---- send ---------------------------------------------------------------------------

  send(parts: readonly Uint8Array[], onWritten?: () => void): boolean {
    if (this.reason !== undefined) throw new KoalaError(ErrorCode.CLOSED, `send() on a closed connection: ${this.reason.message}`, { cause: this.reason });
    let total = 0;
    for (let i = 0; i < parts.length; i++) total += parts[i]!.byteLength;
    if (total > this.options.maxMessageBytes) {
      throw new KoalaError(ErrorCode.MESSAGE_TOO_LARGE, `message of ${total} bytes exceeds maxMessageBytes (${this.options.maxMessageBytes})`);
    }
    this.enqueue(FrameKind.MESSAGE, parts, total, onWritten);
    return this.queued + this.socket.writableLength <= this.options.highWaterMarkBytes;
  }

  /** Queues one frame of `kind` whose payload is `parts` (`total` bytes long). */
  private enqueue(kind: FrameKind, parts: readonly Uint8Array[], total: number, onWritten: (() => void) | undefined): void {
    const size = FRAME_HEADER_BYTES + total;
    if (total <= this.options.coalesceMaxBytes) {
      let batch = this.batch;
      if (batch === undefined || this.batchLen + size > batch.length) {
        if (batch !== undefined) this.pushChunk(batch.subarray(0, this.batchLen), undefined);
        batch = this.batch = Buffer.allocUnsafe(Math.max(size, batch === undefined ? BATCH_MIN : Math.min(BATCH_MAX, batch.length * 2)));
        this.batchLen = 0;
      }
      let at = this.batchLen;
      writeFrameHeader(batch, at, total, kind);
      at += FRAME_HEADER_BYTES;
      for (let i = 0; i < parts.length; i++) {
        const p = parts[i]!;
        batch.set(p, at);
        at += p.byteLength;
      }
      this.batchLen = at;
      onWritten?.();
    } else {
      if (this.batch !== undefined && this.batchLen > 0) {
        this.pushChunk(this.batch.subarray(0, this.batchLen), undefined);
        this.batch = undefined;
        this.batchLen = 0;
      }
      const header = Buffer.allocUnsafe(FRAME_HEADER_BYTES);
      writeFrameHeader(header, 0, total, kind);
      this.pushChunk(header, undefined);
      for (let i = 0; i < parts.length; i++) {
        const p = parts[i]!;
        if (p.byteLength > 0 || i === parts.length - 1) this.pushChunk(p, i === parts.length - 1 ? onWritten : undefined);
      }
      if (parts.length === 0) onWritten?.();
    }
    this.queued += size;
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      process.nextTick(this.flushNow);
    }
  }

  private pushChunk(chunk: Uint8Array, cb: (() => void) | undefined): void {
    this.chunks.push(chunk);
    this.chunkCallbacks.push(cb);
  }

  private flush(): void {
    this.flushScheduled = false;
    if (this.batch !== undefined && this.batchLen > 0) {
      const used = this.batch.subarray(0, this.batchLen);
      // Keep the rest of a large batch buffer for the next tick only when little was used.
      this.batch = undefined;
      this.batchLen = 0;
      this.pushChunk(used, undefined);
    }
    const chunks = this.chunks;
    const cbs = this.chunkCallbacks;
    this.queued = 0;
    if (chunks.length === 0) return;
    if (this.reason !== undefined && this.socket.destroyed) {
      for (const cb of cbs) cb?.();
      chunks.length = 0;
      cbs.length = 0;
      return;
    }
    const socket = this.socket;
    if (chunks.length === 1) {
      const cb = cbs[0];
      socket.write(chunks[0]!, cb === undefined ? undefined : () => cb());
    } else {
      socket.cork();
      for (let i = 0; i < chunks.length; i++) {
        const cb = cbs[i];
        socket.write(chunks[i]!, cb === undefined ? undefined : () => cb());
      }
      socket.uncork();
    }
    chunks.length = 0;
    cbs.length = 0;
  }

  drain(): Promise<void> {
    if (this.reason !== undefined) return Promise.reject(this.reason);
    if (this.bufferedBytes <= this.options.highWaterMarkBytes / 2) return Promise.resolve();
    return new Promise((resolve, reject) => this.drainWaiters.push({ resolve, reject }));
  }

  private checkDrain(): void {
    if (this.drainWaiters.length === 0 || this.bufferedBytes > this.options.highWaterMarkBytes / 2) return;
    const ws = this.drainWaiters;
    this.drainWaiters = [];
    for (const w of ws) w.resolve();
  }

  // ---- receive ------------------------------------------------------------------------

  private onFrame(kind: FrameKind, payload: Uint8Array): void {
    if (!this.greeted) {
      if (kind !== FrameKind.HELLO) throw new KoalaError(ErrorCode.PROTOCOL, "the peer does not speak the koala protocol (no HELLO)");
      checkHello(payload);
      this.greeted = true;
      this.onGreeted?.();
      return;
    }
    switch (kind) {
      case FrameKind.MESSAGE:
        this.inbox.push(payload);
        return;
      case FrameKind.READ_REQUEST:
      case FrameKind.WRITE_REQUEST:
        this.serve(kind, payload);
        return;
      case FrameKind.READ_RESPONSE:
      case FrameKind.WRITE_RESPONSE:
      case FrameKind.ACCESS_ERROR:
        this.answer(kind, payload);
        return;
      default:
        throw new KoalaError(ErrorCode.PROTOCOL, `unexpected frame kind ${kind} after HELLO`);
    }
  }

  onMessage(receiver: ((message: Uint8Array) => void) | null): void {
    this.inbox.setReceiver(receiver);
  }

  pause(): void {
    this.inbox.pause();
  }

  resume(): void {
    this.inbox.resume();
  }

  [Symbol.asyncIterator](): AsyncIterator<Uint8Array> {
    return this.inbox[Symbol.asyncIterator]();
  }

  // ---- one-sided ----------------------------------------------------------------------

  read(region: RegionDescriptor, offset: number, length: number): Promise<Uint8Array> {
    try {
      checkRemoteAccess(region, offset, length, false);
      if (length > this.options.maxMessageBytes) throw new KoalaError(ErrorCode.MESSAGE_TOO_LARGE, `a read of ${length} bytes exceeds maxMessageBytes (${this.options.maxMessageBytes})`);
    } catch (err) {
      return Promise.reject(err);
    }
    const req = Buffer.allocUnsafe(20);
    return this.request(FrameKind.READ_REQUEST, req, region.key, offset, length, undefined);
  }

  async write(region: RegionDescriptor, offset: number, data: Uint8Array): Promise<void> {
    checkRemoteAccess(region, offset, data.byteLength, true);
    if (data.byteLength > this.options.maxMessageBytes) throw new KoalaError(ErrorCode.MESSAGE_TOO_LARGE, `a write of ${data.byteLength} bytes exceeds maxMessageBytes (${this.options.maxMessageBytes})`);
    await this.request(FrameKind.WRITE_REQUEST, Buffer.allocUnsafe(16), region.key, offset, data.byteLength, data);
  }

  private request(kind: FrameKind, head: Buffer, key: number, offset: number, length: number, data: Uint8Array | undefined): Promise<Uint8Array> {
    if (this.reason !== undefined) return Promise.reject(new KoalaError(ErrorCode.CLOSED, `connection closed: ${this.reason.message}`, { cause: this.reason }));
    const id = this.nextOpId++;
    if (this.nextOpId > 0xffff_fff0) this.nextOpId = 1;
    head.writeUInt32LE(id, 0);
    head.writeUInt32LE(key, 4);
    head.writeDoubleLE(offset, 8);
    if (data === undefined) head.writeUInt32LE(length, 16);
    return new Promise<Uint8Array>((resolve, reject) => {
      this.ops.set(id, { resolve, reject });
      this.enqueue(kind, data === undefined ? [head] : [head, data], head.length + (data?.byteLength ?? 0), undefined);
    });
  }

  /** Serves a peer's one-sided request against this process's registered regions. */
  private serve(kind: FrameKind, payload: Uint8Array): void {
    const p = Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength);
    if (p.length < (kind === FrameKind.READ_REQUEST ? 20 : 16)) throw new KoalaError(ErrorCode.PROTOCOL, "truncated one-sided request");
    const key = p.readUInt32LE(4);
    const offset = p.readDoubleLE(8);
    const idBytes = p.subarray(0, 4);
    if (kind === FrameKind.READ_REQUEST) {
      const r = serveRemoteRead(key, offset, p.readUInt32LE(16));
      if (r instanceof KoalaError) this.sendAccessError(idBytes, r);
      else this.enqueue(FrameKind.READ_RESPONSE, [idBytes, r], 4 + r.byteLength, undefined);
    } else {
      const err = serveRemoteWrite(key, offset, p.subarray(16));
      if (err !== undefined) this.sendAccessError(idBytes, err);
      else this.enqueue(FrameKind.WRITE_RESPONSE, [idBytes], 4, undefined);
    }
  }

  private sendAccessError(idBytes: Uint8Array, err: KoalaError): void {
    const code = Buffer.from(err.code, "latin1");
    const msg = Buffer.from(err.message, "utf8");
    const head = Buffer.allocUnsafe(5);
    head.set(idBytes, 0);
    head[4] = code.length;
    this.enqueue(FrameKind.ACCESS_ERROR, [head, code, msg], 5 + code.length + msg.length, undefined);
  }

  private answer(kind: FrameKind, payload: Uint8Array): void {
    if (payload.byteLength < 4) throw new KoalaError(ErrorCode.PROTOCOL, "truncated one-sided answer");
    const p = Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength);
    const id = p.readUInt32LE(0);
    const op = this.ops.get(id);
    if (op === undefined) throw new KoalaError(ErrorCode.PROTOCOL, `answer to unknown one-sided request ${id}`);
    this.ops.delete(id);
    if (kind === FrameKind.ACCESS_ERROR) {
      const codeLen = p[4] ?? 0;
      const code = p.toString("latin1", 5, 5 + codeLen);
      const known = Object.values(ErrorCode) as string[];
      op.reject(new KoalaError((known.includes(code) ? code : ErrorCode.PROTOCOL) as typeof ErrorCode.PROTOCOL, p.toString("utf8", 5 + codeLen)));
    } else if (kind === FrameKind.READ_RESPONSE) {
      // Copied: the caller owns the result, and it must not pin the whole receive chunk.
      op.resolve(Uint8Array.prototype.slice.call(payload, 4));
    } else op.resolve(payload.subarray(0, 0));
  }

  // ---- close --------------------------------------------------------------------------

  close(reason?: Error): void {
    if (this.reason !== undefined) return;
    if (reason === undefined) {
      this.end(new KoalaError(ErrorCode.CLOSED, "the connection was closed by this side"), true);
      this.flush();
      this.socket.end();
    } else {
      this.abort(new KoalaError(ErrorCode.CLOSED, `the connection was closed by this side: ${reason.message}`, { cause: reason }));
    }
  }

  /** Drops the connection at once (a reset where the transport has one). */
  private abort(reason: KoalaError): void {
    if (this.reason !== undefined) return;
    // Reset before recording the reason: end() would otherwise close with a FIN first.
    if (this.transport === "tcp" && this.socket.readyState !== "opening") this.socket.resetAndDestroy();
    else this.socket.destroy();
    this.end(reason, false);
    this.chunks.length = 0;
    for (const cb of this.chunkCallbacks.splice(0)) cb?.();
    this.batch = undefined;
    this.batchLen = 0;
  }

  /** Records the first reason the connection ended and fails everything waiting on it. */
  private end(reason: KoalaError, orderly: boolean): void {
    if (this.reason !== undefined) return;
    this.reason = reason;
    this.inbox.close(reason, orderly);
    const err = new KoalaError(reason.code === ErrorCode.CLOSED ? ErrorCode.CLOSED : reason.code, `connection closed: ${reason.message}`, { cause: reason });
    for (const op of this.ops.values()) op.reject(err);
    this.ops.clear();
    const ws = this.drainWaiters;
    this.drainWaiters = [];
    for (const w of ws) w.reject(reason);
    this.onGreeted?.(reason);
    if (!orderly && !this.socket.destroyed) this.socket.destroy();
    if (this.socket.destroyed) this.settle();
  }

  private settle(): void {
    if (this.settled || this.reason === undefined) return;
    this.settled = true;
    this.resolveClosed(this.reason);
  }
}

class SocketListener implements Listener {
  private readonly queue = new AcceptQueue();
  private readonly pending = new Set<net.Socket>();

  constructor(
    readonly transport: TransportName,
    private readonly server: net.Server,
    readonly address: string,
    private readonly options: ResolvedTransportOptions,
    private readonly unixPath: string | undefined,
  ) {
    server.on("connection", (socket) => this.incoming(socket));
  }

  private incoming(socket: net.Socket): void {
    const remote =
      this.transport === "tcp" ? formatAddress("tcp", socket.remoteAddress ?? "?", socket.remotePort ?? 0, "") : `${this.address}#peer`;
    const conn = new SocketConnection(socket, this.transport, this.options, this.address, remote);
    this.pending.add(socket);
    conn.greeting(this.options.connectTimeoutMs).then(
      () => {
        this.pending.delete(socket);
        this.queue.push(conn);
      },
      (err: unknown) => {
        this.pending.delete(socket);
        log("debug", "transport", `dropped an incoming connection on ${this.address}: ${(err as Error).message}`);
      },
    );
  }

  accept(): Promise<Connection> {
    return this.queue.accept();
  }

  onConnection(handler: ((connection: Connection) => void) | null): void {
    this.queue.setHandler(handler);
  }

  [Symbol.asyncIterator](): AsyncIterator<Connection> {
    return this.queue[Symbol.asyncIterator]();
  }

  async close(): Promise<void> {
    if (this.queue.isClosed) return;
    this.queue.close();
    for (const s of this.pending) s.destroy();
    // net.Server.close() stops accepting at once but reports "closed" only after every accepted
    // connection ends; a listener's close must not wait for those (they stay open by contract).
    this.server.close();
    if (this.unixPath !== undefined) {
      try {
        unlinkSync(this.unixPath);
      } catch {
        /* already gone */
      }
    }
  }
}

async function listenSocket(transport: TransportName, address: Address, options: ResolvedTransportOptions): Promise<Listener> {
  const server = net.createServer({ noDelay: options.noDelay });
  if (transport === "unix") await removeStaleSocket(address);
  // A deep backlog: a burst of clients must queue, not fail (a full unix backlog is EAGAIN).
  const backlog = 4096;
  const listenOptions = transport === "unix" ? { path: address.path, backlog } : { host: address.host, port: address.port, backlog };
  await new Promise<void>((resolve, reject) => {
    server.once("error", (err) => reject(fromSystemError(err, `listen on ${address.uri}`)));
    server.listen(listenOptions, () => resolve());
  });
  server.on("error", (err) => log("error", "transport", `listener ${address.uri}: ${err.message}`));
  let bound = address.uri;
  if (transport === "tcp") {
    const a = server.address() as net.AddressInfo;
    bound = formatAddress("tcp", address.host, a.port, "");
  }
  return new SocketListener(transport, server, bound, options, transport === "unix" ? address.path : undefined);
}

/** A socket file left behind by a process that died is removed; one that someone listens on is in use. */
async function removeStaleSocket(address: Address): Promise<void> {
  if (!existsSync(address.path)) return;
  const alive = await new Promise<boolean>((resolve) => {
    const probe = net.connect({ path: address.path });
    probe.once("connect", () => {
      probe.destroy();
      resolve(true);
    });
    probe.once("error", () => resolve(false));
  });
  if (alive) throw new KoalaError(ErrorCode.ADDRESS_IN_USE, `listen on ${address.uri}: another process listens on this socket`);
  try {
    unlinkSync(address.path);
  } catch (err) {
    throw fromSystemError(err, `remove stale socket file ${address.path}`);
  }
}

async function connectSocket(transport: TransportName, address: Address, options: ResolvedTransportOptions): Promise<Connection> {
  const started = Date.now();
  let socket: net.Socket;
  for (let attempt = 0; ; attempt++) {
    try {
      socket = await dial(transport, address, options, Math.max(1, options.connectTimeoutMs - (Date.now() - started)));
      break;
    } catch (err) {
      // A unix listener whose backlog is full answers EAGAIN: wait a little and try again.
      const again = (err as KoalaError).cause !== undefined && errnoOf((err as KoalaError).cause) === "EAGAIN";
      if (!again || Date.now() - started > options.connectTimeoutMs) throw err;
      await new Promise((r) => setTimeout(r, Math.min(50, 1 + attempt * 2)));
    }
  }
  const local = transport === "tcp" ? formatAddress("tcp", socket.localAddress ?? "?", socket.localPort ?? 0, "") : `${address.uri}#client`;
  const conn = new SocketConnection(socket, transport, options, local, address.uri);
  const left = Math.max(1, options.connectTimeoutMs - (Date.now() - started));
  try {
    await conn.greeting(left);
  } catch (err) {
    conn.close(err as Error);
    const e = err as KoalaError;
    throw new KoalaError(e.code ?? ErrorCode.PROTOCOL, `connect to ${address.uri}: ${e.message}`, { cause: err });
  }
  return conn;
}

function dial(transport: TransportName, address: Address, options: ResolvedTransportOptions, timeoutMs: number): Promise<net.Socket> {
  const socket = transport === "unix" ? net.connect({ path: address.path }) : net.connect({ host: address.host, port: address.port, noDelay: options.noDelay });
  return new Promise<net.Socket>((resolve, reject) => {
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new KoalaError(ErrorCode.CONNECT_TIMEOUT, `connect to ${address.uri}: no answer within ${options.connectTimeoutMs} ms`));
    }, timeoutMs);
    socket.once("connect", () => {
      clearTimeout(timer);
      socket.removeAllListeners("error");
      resolve(socket);
    });
    socket.once("error", (err) => {
      clearTimeout(timer);
      reject(fromSystemError(err, `connect to ${address.uri}`));
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

/** The Unix-socket transport (`unix:/path`). */
export const unixTransport: Transport = {
  name: "unix",
  unavailableReason: () => (process.platform === "win32" ? "Unix sockets are not supported on Windows" : undefined),
  listen: (address, options) => listenSocket("unix", address, options),
  connect: (address, options) => connectSocket("unix", address, options),
};

