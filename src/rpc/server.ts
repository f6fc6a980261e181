/**
 * The server side: services are added to a Server, which listens on any number of addresses,
 * runs one handler per call, and shuts down gracefully (finish in-flight calls, refuse new
 * ones) or at once.
 */
import { Code, ErrorCode, KoalaError, RpcError } from "../errors.js";
import { log, logLimited } from "../log.js";
import { listen } from "../transport/index.js";
import type { Connection, Listener, PeerCertificate } from "../transport/types.js";
import type { MethodDefinition, PartialMessage, ServiceDefinition } from "../proto/definition.js";
import { FrameFlag, FrameType, type Frame } from "./frame.js";
import { decodeRange } from "../proto/wire/reader.js";
import { RpcEndpoint } from "./endpoint.js";
import { IdTable } from "../id-table.js";
import { CallInfoBase, EndpointChains, runChain, runEndChain, runMessageChain, whenReleased, type CallInfo, type Interceptor } from "./interceptor.js";
import { Metadata, decodeMetadata } from "./metadata.js";
import { heapFor, resolveServerOptions, transportOptionsFor, type ResolvedServerOptions, type ServerOptions } from "./options.js";
import { buildFrame, encodeFrame, encodeSettings, type EncodeSettings, type OutgoingFrame } from "./outgoing.js";
import { IncomingStream, SendWindow } from "./stream.js";

/** What a handler knows about its call. */
export interface CallContext {
  /** The method called. */
  readonly method: MethodDefinition;
  /** The client's address. */
  readonly peer: string;
  /** On tls under mutual TLS (`requestCert`), the client's certificate and whether it was verified; undefined otherwise. */
  readonly peerCertificate: PeerCertificate | undefined;
  /** Request headers. */
  readonly requestMetadata: Metadata;
  /** Absolute deadline in epoch milliseconds, or undefined when the client set none. */
  readonly deadline: number | undefined;
  /** Milliseconds left until the deadline (Infinity without one). */
  timeRemainingMs(): number;
  /** Aborted when the client cancels, the deadline passes, the client goes away, or the server is forced down. */
  readonly signal: AbortSignal;
  /** Response headers: change them before the first response is sent. */
  readonly responseHeaders: Metadata;
  /** Response trailers: sent with the status at the end of the call. */
  readonly responseTrailers: Metadata;
  /**
   * Per-call values the interceptors left (`call.state` is this same map: the handler's context
   * is the call object the interceptors see), e.g. the user an auth interceptor found.
   */
  readonly state: Map<object, unknown>;
}

/** A response a handler gives: the message type itself or any part of it, at any depth (absent fields take their defaults). */
export type ResponseInit<O> = O | PartialMessage<O>;
/** A unary handler. */
export type UnaryHandler<I, O> = (request: I, context: CallContext) => Promise<ResponseInit<O>> | ResponseInit<O>;
/** A server-streaming handler. */
export type ServerStreamingHandler<I, O> = (request: I, context: CallContext) => AsyncIterable<ResponseInit<O>> | Iterable<ResponseInit<O>>;
/** A client-streaming handler. */
export type ClientStreamingHandler<I, O> = (requests: AsyncIterable<I>, context: CallContext) => Promise<ResponseInit<O>> | ResponseInit<O>;
/** A bidirectional-streaming handler. */
export type BidiStreamingHandler<I, O> = (requests: AsyncIterable<I>, context: CallContext) => AsyncIterable<ResponseInit<O>> | Iterable<ResponseInit<O>>;

/** The handler of one method, typed by its call kind. */
export type MethodHandler<M> =
  M extends MethodDefinition<infer I, infer O, infer K>
    ? K extends "unary"
      ? UnaryHandler<I, O>
      : K extends "server_streaming"
        ? ServerStreamingHandler<I, O>
        : K extends "client_streaming"
          ? ClientStreamingHandler<I, O>
          : BidiStreamingHandler<I, O>
    : never;

/** An implementation of service `S`: one handler per method. */
export type ServiceImplementation<S extends ServiceDefinition> = { [K in keyof S["methods"]]: MethodHandler<S["methods"][K]> };

interface Route {
  method: MethodDefinition;
  handler: (...args: never[]) => unknown;
}

const serverHooks = new Set<(server: Server) => void>();

/**
 * Calls `hook` with every server created from now on (the layers above the RPC core use it,
 * e.g. to list servers for `koala ctl`); returns a function that removes the hook.
 */
export function onServerCreated(hook: (server: Server) => void): () => void {
  serverHooks.add(hook);
  return () => serverHooks.delete(hook);
}

/** A snapshot of what a server holds (see {@link Server.stats}). */
export interface ServerStats {
  /** Connections being served. */
  connections: number;
  /** Calls in flight. */
  calls: number;
  /** Request bodies held by calls in flight, in bytes. */
  heldRequestBytes: number;
  /** Reply bytes queued on connections and not yet written, in bytes. */
  unsentBytes: number;
  /** Stream messages received and not yet consumed by handlers (nor credited back), in bytes. */
  unconsumedStreamBytes: number;
}

/** A server: add services, listen, shut down. */
export class Server {
  /** The resolved options. */
  readonly options: ResolvedServerOptions;
  /** @internal */
  readonly routes = new Map<string, Route>();
  /** @internal */
  readonly encode: EncodeSettings;
  /** @internal The interceptor chains of this server's calls, by method path. */
  readonly chains: EndpointChains;
  private readonly listeners: Listener[] = [];
  private readonly connections = new Set<ServerConnection>();
  private state: "serving" | "draining" | "stopped" = "serving";
  private shuttingDown: Promise<void> | undefined;

  constructor(options?: ServerOptions) {
    this.options = resolveServerOptions(options);
    this.encode = encodeSettings(this.options.maxMessageBytes, this.options.externalBytesThreshold, heapFor(options));
    this.chains = new EndpointChains(this.options.interceptors, "server", this.options.name);
    for (const hook of serverHooks) hook(this);
  }

  /**
   * Adds the handlers of `service`. A method without a handler answers UNIMPLEMENTED (as
   * grpc-js does); a name that is not a method of the service, or a method some other service
   * added already, is an error, and then nothing of `service` is added.
   */
  add<S extends ServiceDefinition>(service: S, implementation: Partial<ServiceImplementation<S>>): this {
    if (service === null || typeof service !== "object" || typeof service.methods !== "object") {
      throw new KoalaError(ErrorCode.INVALID_ARGUMENT, "server.add(): the first argument must be a service definition");
    }
    if (implementation === null || typeof implementation !== "object") {
      throw new KoalaError(ErrorCode.INVALID_ARGUMENT, `server.add(${service.typeName}): the second argument must be an object of handlers`);
    }
    const impl = implementation as Record<string, unknown>;
    for (const key of Object.keys(impl)) {
      if (!(key in service.methods)) {
        throw new KoalaError(ErrorCode.INVALID_ARGUMENT, `server.add(${service.typeName}): "${key}" is not a method of the service (methods: ${Object.keys(service.methods).join(", ")})`);
      }
    }
    const routes: [string, Route][] = [];
    for (const [name, method] of Object.entries(service.methods)) {
      const handler = impl[name];
      if (handler !== undefined && typeof handler !== "function") {
        throw new KoalaError(ErrorCode.INVALID_ARGUMENT, `server.add(${service.typeName}): the handler of "${name}" is a ${typeof handler}, not a function`);
      }
      if (this.routes.has(method.path)) throw new KoalaError(ErrorCode.INVALID_ARGUMENT, `server.add(): ${method.path} is already served`);
      const bound = handler === undefined ? unimplemented(method.path) : (handler as (...a: never[]) => unknown).bind(implementation);
      routes.push([method.path, { method, handler: bound }]);
    }
    for (const [path, route] of routes) this.routes.set(path, route);
    return this;
  }

  /** Listens at `address` and returns the address actually bound (port 0 replaced by the real port). */
  async listen(address: string): Promise<string> {
    if (this.state !== "serving") throw new KoalaError(ErrorCode.CLOSED, "the server is shut down");
    const listener = await listen(address, transportOptionsFor(this.options.maxMessageBytes, this.options.transport));
    this.listeners.push(listener);
    listener.onConnection((conn) => this.accept(conn));
    log("info", "server", `listening on ${listener.address}`);
    return listener.address;
  }

  /** Addresses the server listens on. */
  get addresses(): string[] {
    return this.listeners.map((l) => l.address);
  }

  /** What the server holds now, summed over its connections (for metrics and for checking budgets). */
  stats(): ServerStats {
    const st: ServerStats = { connections: this.connections.size, calls: 0, heldRequestBytes: 0, unsentBytes: 0, unconsumedStreamBytes: 0 };
    for (const c of this.connections) {
      st.calls += c.callCount;
      st.heldRequestBytes += c.heldBytes;
      st.unsentBytes += c.conn.bufferedBytes;
      st.unconsumedStreamBytes += c.receiveWindow.unacknowledged;
    }
    return st;
  }

  private accept(conn: Connection): void {
    if (this.state !== "serving") {
      conn.close();
      return;
    }
    // The transport closed it right after the handshake (a malformed frame in the same write as
    // the HELLO, a reset) and logged why; there is nothing to serve, and nothing more to say.
    if (conn.isClosed) {
      logLimited("server.closed-before-handover", "debug", "server", `skipped a connection from ${conn.remoteAddress} that closed before it was served`);
      return;
    }
    if (this.connections.size >= this.options.maxConnections) {
      logLimited("server.max-connections", "warn", "server", `refusing a connection from ${conn.remoteAddress}: ${this.connections.size} connections are open (maxConnections)`, 1);
      conn.close(new KoalaError(ErrorCode.CLOSED, "the server has reached maxConnections"));
      return;
    }
    const sc = new ServerConnection(this, conn);
    this.connections.add(sc);
    void conn.closed.then(() => this.connections.delete(sc));
  }

  /**
   * Graceful shutdown: stops listening, refuses new calls (UNAVAILABLE), lets calls in flight
   * finish, then closes the connections. With `timeoutMs`, calls still running then are
   * cancelled as by {@link forceShutdown}. Calling it again returns the same promise;
   * `forceShutdown()` ends it at once.
   */
  shutdown(options?: { timeoutMs?: number }): Promise<void> {
    if (this.shuttingDown !== undefined) return this.shuttingDown;
    if (this.state === "stopped") return Promise.resolve();
    this.runShutdownHooks();
    this.state = "draining";
    this.shuttingDown = (async () => {
      await Promise.all(this.listeners.splice(0).map((l) => l.close()));
      const drained = Promise.all([...this.connections].map((c) => c.drain("server shutdown")));
      let timer: NodeJS.Timeout | undefined;
      const limit = options?.timeoutMs;
      const timedOut = await Promise.race([
        drained.then(() => false),
        limit === undefined ? new Promise<boolean>(() => undefined) : new Promise<boolean>((r) => (timer = setTimeout(() => r(true), limit))),
        new Promise<boolean>((r) => (this.forced = () => r(true))),
      ]);
      clearTimeout(timer);
      if (timedOut) this.forceShutdown();
      this.state = "stopped";
    })();
    return this.shuttingDown;
  }

  private forced: (() => void) | undefined;
  private readonly shutdownHooks: (() => void)[] = [];

  /**
   * Calls `hook` once when the server begins to shut down (`shutdown()` or `forceShutdown()`),
   * before it stops listening: e.g. the health service reports NOT_SERVING to its watchers.
   */
  onShutdown(hook: () => void): void {
    this.shutdownHooks.push(hook);
  }

  private runShutdownHooks(): void {
    for (const hook of this.shutdownHooks.splice(0)) {
      try {
        hook();
      } catch (err) {
        logLimited("server.shutdown-hook-error", "warn", "server", `a shutdown hook threw: ${(err as Error)?.stack ?? String(err)}`);
      }
    }
  }

  /** Immediate shutdown: stops listening, cancels every call in flight and closes every connection (also during a graceful shutdown). */
  forceShutdown(): void {
    this.runShutdownHooks();
    this.state = "stopped";
    for (const l of this.listeners.splice(0)) void l.close();
    const all = [...this.connections];
    this.connections.clear();
    for (const c of all) c.kill(new RpcError(Code.UNAVAILABLE, "the server was shut down"));
    const f = this.forced;
    this.forced = undefined;
    f?.();
  }
}

/** The handler of a method the implementation left out: every call fails with UNIMPLEMENTED. */
function unimplemented(path: string): (...a: never[]) => never {
  return () => {
    throw new RpcError(Code.UNIMPLEMENTED, `${path} is not implemented by this server`);
  };
}

/** Creates a server (see {@link ServerOptions}). */
export function createServer(options?: ServerOptions): Server {
  return new Server(options);
}

/** The server side of one connection. */
class ServerConnection extends RpcEndpoint {
  protected readonly releasesMessages = true;
  private readonly calls = new IdTable<ServerCall>();
  private readonly methods = new Map<number, Route>();
  private lastCallId = 0;
  private goaway: number | undefined;
  private draining: Promise<void> | undefined;
  private drained: (() => void) | undefined;
  /** Request bytes held by calls in flight (their bodies back the decoded requests). */
  heldBytes = 0;

  /** Calls in flight. */
  get callCount(): number {
    return this.calls.size;
  }
  private paused = false;
  private idleTimer: NodeJS.Timeout | undefined;
  private ageTimer: NodeJS.Timeout | undefined;
  private sendTimer: NodeJS.Timeout | undefined;
  readonly options: ResolvedServerOptions;

  constructor(
    readonly server: Server,
    conn: Connection,
  ) {
    super(conn, server.options, "server");
    const o = (this.options = server.options);
    // The client waits for these limits before its first call (Server.accept skipped a connection already closed).
    this.send(buildFrame(server.encode, { type: FrameType.SETTINGS, callId: 0, arg: o.maxConcurrentStreams, arg2: o.maxMessageBytes }));
    if (o.maxConnectionAgeMs > 0) {
      const age = Math.round(o.maxConnectionAgeMs * (0.9 + Math.random() * 0.2));
      this.ageTimer = unrefTimer(() => this.retire(), age);
    }
    this.armIdle();
    this.start();
  }

  protected onFrame(frame: Frame): boolean {
    switch (frame.type) {
      case FrameType.CALL:
        this.onCall(frame);
        return true;
      case FrameType.DATA:
      case FrameType.CANCEL:
      case FrameType.CREDIT: {
        const call = this.calls.get(frame.callId);
        if (call === undefined) this.discard(frame);
        else call.onFrame(frame);
        return true;
      }
      default:
        return false;
    }
  }

  private onCall(frame: Frame): void {
    const id = frame.callId;
    if (id <= this.lastCallId || this.calls.has(id)) throw new KoalaError(ErrorCode.PROTOCOL, `call id ${id} reused`);
    this.lastCallId = id;
    let route: Route | undefined;
    if ((frame.flags & FrameFlag.DEFINE_METHOD) !== 0) {
      route = this.server.routes.get(frame.text);
      if (route === undefined) {
        this.status(id, Code.UNIMPLEMENTED, `unknown method ${frame.text}`);
        return;
      }
      this.methods.set(frame.arg, route);
    } else {
      route = this.methods.get(frame.arg);
      if (route === undefined) {
        this.status(id, Code.UNIMPLEMENTED, `unknown method id ${frame.arg}`);
        return;
      }
    }
    if (this.goaway !== undefined) {
      this.status(id, Code.UNAVAILABLE, "the server is shutting down");
      return;
    }
    const o = this.options;
    if (this.calls.size >= o.maxConcurrentStreams) {
      this.status(id, Code.RESOURCE_EXHAUSTED, `more than ${o.maxConcurrentStreams} concurrent calls on one connection (maxConcurrentStreams)`);
      return;
    }
    const mdBytes = frame.metadata?.byteLength ?? 0;
    if (mdBytes > o.maxMetadataBytes) {
      this.status(id, Code.RESOURCE_EXHAUSTED, `request metadata of ${mdBytes} bytes exceeds the server's limit of ${o.maxMetadataBytes} bytes (maxMetadataBytes)`);
      return;
    }
    const held = frame.bodyBytes;
    if (this.heldBytes + this.conn.bufferedBytes + held > o.connectionBudgetBytes) {
      this.status(id, Code.RESOURCE_EXHAUSTED, `the connection's memory budget of ${o.connectionBudgetBytes} bytes is used up (connectionBudgetBytes)`);
      return;
    }
    const call = new ServerCall(this, id, route, frame, held);
    this.calls.set(id, call);
    this.heldBytes += held;
    call.run(frame);
  }

  /** Takes over the message of the frame being handled (see RpcEndpoint.keepMessage); give it back with `conn.release`. */
  takeMessage(): Uint8Array {
    return this.keepMessage();
  }

  /** Bytes a reply may take now within the connection's memory budget. */
  room(): number {
    return this.options.connectionBudgetBytes - this.heldBytes - this.conn.bufferedBytes;
  }

  /** Whether a reply of `bytes` fits the connection's memory budget now. */
  fits(bytes: number): boolean {
    return this.heldBytes + this.conn.bufferedBytes + bytes <= this.options.connectionBudgetBytes;
  }

  /** Sends a status for a call that never started. */
  private status(callId: number, code: Code, message: string): void {
    try {
      this.send(buildFrame(this.server.encode, { type: FrameType.STATUS, callId, arg: code, text: message }));
    } catch {
      /* the connection is going away */
    }
  }

  /** A call ended; `held` request bytes are free again. */
  finish(callId: number, held: number): void {
    if (!this.calls.delete(callId)) return;
    this.heldBytes -= held;
    if (this.goaway !== undefined && this.calls.size === 0) {
      this.conn.close();
      this.drained?.();
    } else if (this.calls.size === 0) this.idleSince = Date.now();
  }

  /** When the connection last became idle (no calls). */
  private idleSince = Date.now();

  /**
   * One timer per connection, never re-created per call: when it fires it closes the connection
   * if it has been idle long enough, or sleeps again for the rest of the idle time.
   */
  private armIdle(delayMs = this.options.idleTimeoutMs): void {
    if (this.options.idleTimeoutMs === 0) return;
    this.idleTimer = unrefTimer(() => {
      this.idleTimer = undefined;
      if (this.goaway !== undefined || this.conn.isClosed) return;
      const ms = this.options.idleTimeoutMs;
      const idleFor = Date.now() - this.idleSince;
      if (this.calls.size > 0) this.armIdle(ms);
      else if (idleFor >= ms) {
        logLimited("server.idle-close", "debug", "server", `closing the idle connection with ${this.conn.remoteAddress} (idleTimeoutMs)`);
        void this.drain("idle");
      } else this.armIdle(ms - idleFor);
    }, delayMs);
  }

  /** Max connection age reached: GOAWAY, and with a grace period, cancel what still runs after it. */
  private retire(): void {
    logLimited("server.max-age", "debug", "server", `connection with ${this.conn.remoteAddress} reached maxConnectionAgeMs`);
    void this.drain("max connection age");
    const grace = this.options.maxConnectionAgeGraceMs;
    if (grace > 0 && this.calls.size > 0) {
      unrefTimer(() => this.kill(new RpcError(Code.UNAVAILABLE, "the connection reached its maximum age and grace period")), grace);
    }
  }

  /** Sends GOAWAY and resolves once every call in flight is done and the connection closed. Calling it again returns the same promise. */
  drain(reason: string): Promise<void> {
    if (this.draining !== undefined) return this.draining;
    if (this.conn.isClosed) return Promise.resolve();
    this.goaway = this.lastCallId;
    if (this.idleTimer !== undefined) clearTimeout(this.idleTimer);
    try {
      this.send(buildFrame(this.server.encode, { type: FrameType.GOAWAY, callId: 0, arg: this.lastCallId, text: reason }));
    } catch {
      /* closing anyway */
    }
    if (this.calls.size === 0) this.conn.close();
    const closed = this.conn.closed.then(() => undefined);
    this.draining = this.calls.size === 0 ? closed : new Promise<void>((resolve) => (this.drained = resolve)).then(() => closed);
    return this.draining;
  }

  /** Cancels every call and drops the connection. */
  kill(error: RpcError): void {
    for (const c of this.calls.values()) c.abort(error, true);
    this.conn.close(error);
  }

  /**
   * Replies cannot be written as fast as they are made (the client reads slowly or not at all):
   * stop reading requests from this connection until they drain, and give up on the connection
   * when nothing drains for `sendTimeoutMs`.
   */
  protected override onBackpressure(): void {
    // A reply or two over the high-water mark is normal traffic (a 1 MiB reply is one); stop
    // reading only when several marks' worth waits, so that requests keep flowing meanwhile.
    if (this.paused || this.conn.isClosed || this.conn.bufferedBytes < PAUSE_AT_MARKS * this.conn.options.highWaterMarkBytes) return;
    this.paused = true;
    this.conn.pause();
    const ms = this.options.sendTimeoutMs;
    if (ms > 0) {
      this.sendTimer = unrefTimer(() => {
        logLimited("server.send-timeout", "warn", "server", `closing the connection with ${this.conn.remoteAddress}: ${this.conn.bufferedBytes} bytes of replies not written for ${ms} ms (sendTimeoutMs)`);
        this.kill(new RpcError(Code.UNAVAILABLE, `the client did not read its replies for ${ms} ms (sendTimeoutMs)`));
      }, ms);
    }
    this.conn.drain().then(
      () => {
        if (this.sendTimer !== undefined) clearTimeout(this.sendTimer);
        this.sendTimer = undefined;
        this.paused = false;
        this.conn.resume();
      },
      () => undefined,
    );
  }

  protected onClosed(reason: KoalaError): void {
    for (const t of [this.idleTimer, this.ageTimer, this.sendTimer]) if (t !== undefined) clearTimeout(t);
    const err = new RpcError(Code.CANCELLED, `client connection lost: ${reason.message}`, { cause: reason });
    for (const c of this.calls.values()) c.abort(err, false);
    this.calls.clear();
    this.heldBytes = 0;
    this.drained?.();
  }
}

/** The server stops reading a connection once this many high-water marks of replies wait to be written. */
const PAUSE_AT_MARKS = 4;

/** A timer that does not keep the process alive. */
function unrefTimer(fn: () => void, ms: number): NodeJS.Timeout {
  const t = setTimeout(fn, ms);
  t.unref();
  return t;
}

/** The server half of one call. */
/**
 * One call on the server: the handler's context and, when interceptors apply, the
 * {@link CallInfo} they see (the same object, so that the pass path allocates nothing).
 */
class ServerCall extends CallInfoBase implements CallContext, CallInfo {
  readonly method: MethodDefinition;
  readonly deadline: number | undefined;
  private controller: AbortController | undefined;
  private abortReason: RpcError | undefined;
  private md: Metadata | undefined;
  private readonly mdBytes: Uint8Array | undefined;
  private headers: Metadata | undefined;
  private trailers: Metadata | undefined;
  private headersSent = false;
  private done = false;
  private timer: NodeJS.Timeout | undefined;
  private readonly requests: IncomingStream<unknown> | undefined;
  private readonly window: SendWindow | undefined;
  private iterator: AsyncIterator<unknown> | Iterator<unknown> | undefined;
  /** True once the call is over (for senders waiting on credit). */
  get ended(): boolean {
    return this.done;
  }
  /** The CALL message: its metadata and request are views into it until the call ends and the handler is done. */
  private callMessage: Uint8Array | undefined;
  /** True while the application's handler may still use the request (it runs, or its response stream does). */
  private handlerRunning = false;
  /** Interceptors of this call (the server's, then the process's); empty on the fast path. */
  private readonly chain: readonly Interceptor[];
  /** For the interceptors: the single request, once decoded. */
  request: unknown = undefined;
  /** For the interceptors: the single response, before it is sent. */
  response: unknown = undefined;

  constructor(
    private readonly sc: ServerConnection,
    private readonly id: number,
    private readonly route: Route,
    frame: Frame,
    /** Request bytes this call holds against the connection's budget until it ends. */
    private readonly held: number,
  ) {
    super();
    this.method = route.method;
    this.chain = sc.server.chains.of(route.method.path);
    if (this.chain.length !== 0) this.markStart();
    this.mdBytes = frame.metadata;
    if (frame.metadata !== undefined || frame.bodyAt >= 0) this.callMessage = sc.takeMessage();
    this.deadline = frame.arg2 === 0 ? undefined : Date.now() + frame.arg2;
    const kind = this.method.kind;
    if (kind === "client_streaming" || kind === "bidi_streaming") this.requests = this.requestStream();
    if (kind === "server_streaming" || kind === "bidi_streaming") this.window = new SendWindow();
  }

  // Closures live in small methods of their own, off the unary path: a closure in a method makes
  // V8 allocate a context on every call of that method, whether the closure is made or not.

  /** The stream of requests of a client- or bidi-streaming call. */
  private requestStream(): IncomingStream<unknown> {
    const requests = new IncomingStream(
      (n) => this.sc.control(FrameType.CREDIT, this.id, n),
      () => {
        /* the handler stopped reading requests; the call goes on */
      },
      this.sc.receiveWindow,
    );
    requests.setReleaser((m) => this.sc.conn.release(m));
    return requests;
  }

  /** Fails the call with DEADLINE_EXCEEDED in `left` ms. */
  private armDeadline(left: number): void {
    this.timer = setTimeout(() => this.expire(), left);
  }

  /** Goes on with `next` once a held verdict settles (or fails the call with the rejection). */
  private afterHold(v: Promise<undefined | RpcError>, next: () => void): void {
    whenReleased(v, this, (e) => this.fail(e), next);
  }

  /** Runs the handler once a held server-receive verdict settles. */
  private invokeAfterHold(v: Promise<undefined | RpcError>, request: unknown): void {
    this.afterHold(v, () => this.invoke(request));
  }

  /** Sends the reply once a held server-send verdict settles. */
  private replyAfterHold(v: Promise<undefined | RpcError>, response: unknown): void {
    this.afterHold(v, () => this.sendReply(response));
  }

  /** Replies when the handler's promise settles. */
  private replyWhenSettled(result: PromiseLike<unknown>): void {
    result.then(
      (r) => {
        this.handlerSettled();
        this.reply(r);
      },
      (err: unknown) => {
        this.handlerSettled();
        this.fail(err);
      },
    );
  }

  get peer(): string {
    return this.sc.conn.remoteAddress;
  }

  get peerCertificate(): PeerCertificate | undefined {
    return this.sc.conn.peerCertificate;
  }

  /** The transport of the connection the call came on (`tcp`, `rdma`, …): the metrics engine counts served calls by it. */
  get transport(): string {
    return this.sc.conn.transport;
  }

  get side(): "server" {
    return "server";
  }

  /** The request metadata (for the interceptors; decoded on first use). */
  get metadata(): Metadata {
    return this.requestMetadata;
  }

  get requestMetadata(): Metadata {
    if (this.md === undefined) this.md = this.mdBytes === undefined ? new Metadata() : decodeMetadata(this.mdBytes);
    return this.md;
  }

  get responseHeaders(): Metadata {
    return (this.headers ??= new Metadata());
  }

  get responseTrailers(): Metadata {
    return (this.trailers ??= new Metadata());
  }

  get signal(): AbortSignal {
    if (this.controller === undefined) {
      this.controller = new AbortController();
      if (this.abortReason !== undefined) this.controller.abort(this.abortReason);
    }
    return this.controller.signal;
  }

  timeRemainingMs(): number {
    return this.deadline === undefined ? Infinity : Math.max(0, this.deadline - Date.now());
  }

  run(frame: Frame): void {
    if (this.deadline !== undefined) {
      const left = this.deadline - Date.now();
      // Node timers top out at 2^31-1 ms; a longer deadline needs no timer in practice.
      if (left < 2 ** 31) this.armDeadline(left);
    }
    try {
      if (this.mdBytes !== undefined) this.checkMetadata(); // malformed metadata fails the call here, not in the handler
      const kind = this.method.kind;
      if (kind === "unary" || kind === "server_streaming") {
        if (frame.bodyAt < 0 || (frame.flags & FrameFlag.END_STREAM) === 0) {
          throw new RpcError(Code.INTERNAL, `${this.method.path} takes exactly one request`);
        }
        const request = this.decode(frame);
        if (this.chain.length === 0) this.invoke(request);
        else this.intercept(request);
      } else {
        if (frame.bodyAt >= 0) this.push(frame, false);
        if ((frame.flags & FrameFlag.END_STREAM) !== 0) this.requests!.end();
        if (this.chain.length === 0) this.invoke(undefined);
        else this.intercept(undefined);
      }
    } catch (err) {
      this.fail(err);
    }
  }

  /** Runs the handler: with the single request, or with the request stream. */
  private invoke(request: unknown): void {
    switch (this.method.kind) {
      case "unary":
        this.unary(this.route.handler as UnaryHandler<unknown, unknown>, request);
        return;
      case "server_streaming":
        this.startServerStream(request);
        return;
      case "client_streaming":
        this.unary(this.route.handler as unknown as UnaryHandler<unknown, unknown>, this.requests!);
        return;
      default:
        this.startBidiStream();
    }
  }

  /** Runs the interceptors at `server-receive`; the handler starts when they pass (a held call's deadline keeps running). */
  private intercept(request: unknown): void {
    this.request = request;
    const v = runChain(this.chain, this, "server-receive");
    if (v === undefined) this.invoke(request);
    else if (v instanceof RpcError) this.fail(v);
    else this.invokeAfterHold(v, request);
  }

  /** Decodes a request of a stream and queues it (a flow-control violation closes the connection through the windows). */
  private push(frame: Frame, fromData: boolean): void {
    let request: unknown;
    try {
      request = this.decode(frame);
    } catch (err) {
      // The bytes still count against the windows: the sender spent credit on them.
      this.requests!.skip(frame.bodyBytes);
      throw err;
    }
    this.requests!.push(request, frame.bodyBytes, fromData ? this.sc.takeMessage() : undefined);
    if (this.chain.length !== 0) {
      const v = runMessageChain(this.chain, this, "server-receive", request);
      if (v instanceof RpcError) throw v;
    }
  }

  /** Decodes the request headers; malformed ones fail the call with INTERNAL and one rate-limited log line (no stack: it is the peer's fault). */
  private checkMetadata(): void {
    try {
      void this.requestMetadata;
    } catch (err) {
      logLimited("server.bad-metadata", "warn", "server", `${this.peer} sent malformed request metadata for ${this.method.path}: ${(err as Error).message}`);
      throw new RpcError(Code.INTERNAL, `malformed request metadata: ${(err as Error).message}`, { cause: err });
    }
  }

  /** Decodes the frame's body (which it must have) as a request. */
  private decode(frame: Frame): unknown {
    if (frame.bodyBytes > this.sc.options.maxMessageBytes) {
      throw new RpcError(Code.RESOURCE_EXHAUSTED, `request of ${frame.bodyBytes} bytes exceeds the server's limit of ${this.sc.options.maxMessageBytes} bytes`);
    }
    try {
      return decodeRange(this.method.input, frame.message, frame.bodyAt, frame.bodyAt + frame.bodyBytes);
    } catch (err) {
      throw new RpcError(Code.INVALID_ARGUMENT, `cannot decode ${this.method.input.typeName}: ${(err as Error).message}`, { cause: err });
    }
  }

  private unary(handler: UnaryHandler<unknown, unknown>, request: unknown): void {
    this.handlerRunning = true;
    let result: unknown;
    try {
      result = handler(request, this);
    } catch (err) {
      this.handlerSettled();
      throw err;
    }
    if (result !== null && typeof result === "object" && typeof (result as PromiseLike<unknown>).then === "function") {
      this.replyWhenSettled(result as PromiseLike<unknown>);
    } else {
      this.handlerSettled();
      this.reply(result);
    }
  }

  private startServerStream(request: unknown): void {
    this.startStream(() => (this.route.handler as ServerStreamingHandler<unknown, unknown>)(request, this));
  }

  private startBidiStream(): void {
    this.startStream(() => (this.route.handler as BidiStreamingHandler<unknown, unknown>)(this.requests!, this));
  }

  /** Calls a streaming handler and sends what it yields; the handler counts as running until its stream is done. */
  private startStream(call: () => AsyncIterable<unknown> | Iterable<unknown>): void {
    this.handlerRunning = true;
    let responses: AsyncIterable<unknown> | Iterable<unknown>;
    try {
      responses = call();
    } catch (err) {
      this.handlerSettled();
      throw err;
    }
    void this.streamOut(responses).finally(() => this.handlerSettled());
  }

  /** The handler will not touch its request any more: once the call is over too, its received messages go back to the transport. */
  private handlerSettled(): void {
    this.handlerRunning = false;
    if (this.done) this.releaseMessages();
  }

  private releaseMessages(): void {
    this.requests?.releaseAll();
    const m = this.callMessage;
    this.callMessage = undefined;
    if (m !== undefined) this.sc.conn.release(m);
  }

  private reply(response: unknown): void {
    if (this.done) return;
    if (response === undefined || response === null) {
      this.fail(new RpcError(Code.INTERNAL, `handler of ${this.method.path} returned no response`));
      return;
    }
    if (this.chain.length !== 0) {
      this.response = response;
      const v = runChain(this.chain, this, "server-send");
      if (v === undefined) this.sendReply(response);
      else if (v instanceof RpcError) this.fail(v);
      else this.replyAfterHold(v, response);
    } else this.sendReply(response);
  }

  private sendReply(response: unknown): void {
    // The status frame is encoded straight into the connection's send buffer where it can be.
    // Interceptors' onEnd then runs (in finish()) just after the frame is queued instead of just
    // before: the same tick, and in the common case before the tick's batch is written.
    if (!this.done && !this.sc.conn.isClosed) {
      let sent: boolean;
      try {
        sent = this.sc.sendFrameInPlace(this.sc.server.encode, FrameType.STATUS, 0, this.id, Code.OK, 0, this.headersSent ? undefined : this.headers, this.trailers, "", this.method.output, response, this.sc.room());
      } catch (err) {
        this.fail(err);
        return;
      }
      if (sent) {
        this.finish(undefined);
        return;
      }
    }
    let frame: OutgoingFrame;
    try {
      frame = encodeFrame(this.sc.server.encode, FrameType.STATUS, 0, this.id, Code.OK, 0, this.headersSent ? undefined : this.headers, this.trailers, "", this.method.output, response);
      this.checkBudget(frame);
    } catch (err) {
      this.fail(err);
      return;
    }
    this.finish(frame);
  }

  /** A reply that would pass the connection's memory budget fails this call (its memory is released at once). */
  private checkBudget(frame: OutgoingFrame): void {
    if (this.sc.fits(frame.bodyBytes)) return;
    frame.release?.();
    const budget = this.sc.options.connectionBudgetBytes;
    throw new RpcError(Code.RESOURCE_EXHAUSTED, `a reply of ${frame.bodyBytes} bytes would pass the connection's memory budget of ${budget} bytes (connectionBudgetBytes; the client reads its replies too slowly)`);
  }

  private async streamOut(responses: AsyncIterable<unknown> | Iterable<unknown>): Promise<void> {
    try {
      const it = (Symbol.asyncIterator in responses ? (responses as AsyncIterable<unknown>)[Symbol.asyncIterator]() : (responses as Iterable<unknown>)[Symbol.iterator]());
      this.iterator = it;
      for (;;) {
        const r = await it.next();
        if (this.done) return;
        if (r.done === true) break;
        if (this.chain.length !== 0) {
          const v = runMessageChain(this.chain, this, "server-send", r.value);
          const verdict = v instanceof Promise ? await v : v;
          if (verdict instanceof RpcError) throw verdict;
          if (this.done) return;
        }
        if (this.headersSent || this.headers === undefined || this.headers.size === 0) {
          // No headers to carry: encoded straight into the transport's send buffer where it can be.
          const sent = this.sc.sendStreamMessageInPlace(this.sc.server.encode, this.id, this.method.output, r.value, this.window!, this.sc.room());
          if (sent !== false) {
            this.headersSent = true;
            if (sent !== undefined) await sent;
            if (this.done) return;
            continue;
          }
        }
        // The first response carries the headers (buildFrame flags the section when there is one).
        const frame = encodeFrame(this.sc.server.encode, FrameType.DATA, 0, this.id, 0, 0, this.headersSent ? undefined : this.headers, undefined, "", this.method.output, r.value);
        this.checkBudget(frame);
        this.headersSent = true;
        const waiting = this.sc.sendStreamMessage(frame, this.window!, this);
        if (waiting !== undefined) await waiting;
        if (this.done) return;
      }
      if (this.done) return;
      if (this.chain.length !== 0) {
        const v = runChain(this.chain, this, "server-send");
        const verdict = v instanceof Promise ? await v : v;
        if (verdict instanceof RpcError) throw verdict;
        if (this.done) return;
      }
      this.finish(buildFrame(this.sc.server.encode, { type: FrameType.STATUS, callId: this.id, arg: Code.OK, metadata: this.headersSent ? undefined : this.headers, trailers: this.trailers }));
    } catch (err) {
      this.fail(err);
    }
  }

  onFrame(frame: Frame): void {
    switch (frame.type) {
      case FrameType.DATA:
        if (this.requests === undefined) {
          this.fail(new RpcError(Code.INTERNAL, `${this.method.path} takes exactly one request`));
          return;
        }
        if (frame.bodyAt >= 0) {
          try {
            this.push(frame, true);
          } catch (err) {
            this.fail(err);
            return;
          }
        }
        if ((frame.flags & FrameFlag.END_STREAM) !== 0) this.requests.end();
        return;
      case FrameType.CREDIT:
        this.window?.add(frame.arg);
        return;
      case FrameType.CANCEL:
        this.abort(new RpcError(Code.CANCELLED, "the client cancelled the call"), false);
        return;
      default:
        return;
    }
  }

  private expire(): void {
    this.abort(new RpcError(Code.DEADLINE_EXCEEDED, `deadline exceeded while running ${this.method.path}`), true);
  }

  /** Ends the call without a response: aborts the handler's signal, stops its response iterator; with `tell`, sends the status. */
  abort(error: RpcError, tell: boolean): void {
    if (this.done) return;
    this.abortReason = error;
    this.controller?.abort(error);
    this.requests?.fail(error);
    this.window?.fail(error);
    const it = this.iterator;
    this.iterator = undefined;
    if (it?.return !== undefined) {
      try {
        const r = it.return();
        if (r instanceof Promise) r.catch(() => undefined);
      } catch {
        /* the handler's iterator failed while stopping: nothing left to tell */
      }
    }
    if (tell) this.sendStatus(error);
    else this.finish(undefined, error);
  }

  private fail(err: unknown): void {
    if (this.done) return;
    if (this.sc.options.logHandlerErrors && !(err instanceof RpcError)) {
      logLimited("server.handler-error", "warn", "server", `${this.method.path} failed: ${(err as Error)?.stack ?? String(err)}`);
    }
    this.abort(RpcError.from(err), true);
  }

  private sendStatus(e: RpcError): void {
    const trailers = this.trailers ?? new Metadata();
    for (const [k, v] of new Metadata(e.metadata)) trailers.append(k, v);
    const base = { type: FrameType.STATUS, callId: this.id, arg: e.code, text: e.rawMessage } as const;
    let frame: OutgoingFrame;
    try {
      frame = buildFrame(this.sc.server.encode, { ...base, metadata: this.headersSent ? undefined : this.headers, trailers });
    } catch {
      // Headers or trailers that cannot be encoded must not hide the status itself.
      frame = buildFrame(this.sc.server.encode, base);
    }
    this.finish(frame, e);
  }

  private finish(frame: OutgoingFrame | undefined, outcome?: RpcError): void {
    if (this.done) {
      frame?.release?.();
      return;
    }
    this.done = true;
    if (this.chain.length !== 0) runEndChain(this.chain, this, outcome, logInterceptorError);
    if (this.timer !== undefined) clearTimeout(this.timer);
    // A request stream nobody will read any more gives its bytes back to the connection window,
    // and every received message of the call goes back to the transport.
    this.requests?.fail(new RpcError(Code.CANCELLED, "the call ended"));
    if (!this.handlerRunning) this.releaseMessages();
    if (frame !== undefined) {
      if (this.sc.conn.isClosed) frame.release?.();
      else {
        try {
          this.sc.send(frame);
        } catch (err) {
          logLimited("server.status-unsent", "warn", "server", `cannot send the status of ${this.method.path}: ${(err as Error).message}`);
        }
      }
    }
    this.sc.finish(this.id, this.held);
  }
}

/** Logs an interceptor that threw in `onEnd`. */
function logInterceptorError(message: string): void {
  logLimited("server.interceptor-error", "warn", "server", message);
}
