/**
 * The server side: services are added to a Server, which listens on any number of addresses,
 * runs one handler per call, and shuts down gracefully (finish in-flight calls, refuse new
 * ones) or at once.
 */
import { Code, ErrorCode, KoalaError, RpcError } from "../errors.js";
import { log } from "../log.js";
import { listen } from "../transport/index.js";
import type { Connection, Listener } from "../transport/types.js";
import type { MethodDefinition, ServiceDefinition } from "./definition.js";
import { FrameFlag, FrameType, controlFrame, type Frame } from "./frame.js";
import { RpcEndpoint } from "./endpoint.js";
import { Metadata, decodeMetadata } from "./metadata.js";
import { heapFor, resolveServerOptions, transportOptionsFor, type ResolvedServerOptions, type ServerOptions } from "./options.js";
import { buildFrame, encodeSettings, type EncodeSettings, type OutgoingFrame } from "./outgoing.js";
import { IncomingStream, STREAM_GRANT_BYTES, SendWindow } from "./stream.js";

/** What a handler knows about its call. */
export interface CallContext {
  /** The method called. */
  readonly method: MethodDefinition;
  /** The client's address. */
  readonly peer: string;
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
}

/** A response a handler gives: the message type itself or any part of it (absent fields take their defaults). */
export type ResponseInit<O> = O | Partial<O>;
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

/** A server: add services, listen, shut down. */
export class Server {
  /** The resolved options. */
  readonly options: ResolvedServerOptions;
  /** @internal */
  readonly routes = new Map<string, Route>();
  /** @internal */
  readonly encode: EncodeSettings;
  private readonly listeners: Listener[] = [];
  private readonly connections = new Set<ServerConnection>();
  private state: "serving" | "draining" | "stopped" = "serving";

  constructor(options?: ServerOptions) {
    this.options = resolveServerOptions(options);
    this.encode = encodeSettings(this.options.maxMessageBytes, this.options.externalBytesThreshold, heapFor(options));
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

  private accept(conn: Connection): void {
    if (this.state !== "serving") {
      conn.close();
      return;
    }
    const sc = new ServerConnection(this, conn);
    this.connections.add(sc);
    void conn.closed.then(() => this.connections.delete(sc));
  }

  /**
   * Graceful shutdown: stops listening, refuses new calls (UNAVAILABLE), lets calls in flight
   * finish, then closes the connections. With `timeoutMs`, calls still running then are
   * cancelled as by {@link forceShutdown}.
   */
  async shutdown(options?: { timeoutMs?: number }): Promise<void> {
    if (this.state === "stopped") return;
    this.state = "draining";
    await Promise.all(this.listeners.splice(0).map((l) => l.close()));
    const all = [...this.connections];
    const drained = Promise.all(all.map((c) => c.drain()));
    if (options?.timeoutMs === undefined) await drained;
    else {
      let timer: NodeJS.Timeout | undefined;
      const timedOut = await Promise.race([drained.then(() => false), new Promise<boolean>((r) => (timer = setTimeout(() => r(true), options.timeoutMs)))]);
      clearTimeout(timer);
      if (timedOut) this.forceShutdown();
    }
    this.state = "stopped";
  }

  /** Immediate shutdown: stops listening, cancels every call in flight and closes every connection. */
  forceShutdown(): void {
    this.state = "stopped";
    for (const l of this.listeners.splice(0)) void l.close();
    for (const c of this.connections) c.kill(new RpcError(Code.UNAVAILABLE, "the server was shut down"));
    this.connections.clear();
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
  private readonly calls = new Map<number, ServerCall>();
  private readonly methods = new Map<number, Route>();
  private lastCallId = 0;
  private goaway: number | undefined;
  private drained: (() => void) | undefined;

  constructor(
    readonly server: Server,
    conn: Connection,
  ) {
    super(conn, server.options, "server");
    this.start();
  }

  protected onFrame(frame: Frame): boolean {
    switch (frame.type) {
      case FrameType.CALL:
        this.onCall(frame);
        return true;
      case FrameType.DATA:
      case FrameType.CANCEL:
      case FrameType.CREDIT:
        this.calls.get(frame.callId)?.onFrame(frame);
        return true;
      default:
        return false;
    }
  }

  private onCall(frame: Frame): void {
    const id = frame.callId;
    if (id <= this.lastCallId || this.calls.has(id)) {
      this.conn.close(new KoalaError(ErrorCode.PROTOCOL, `call id ${id} reused`));
      return;
    }
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
    if (this.calls.size >= this.server.options.maxConcurrentCallsPerConnection) {
      this.status(id, Code.RESOURCE_EXHAUSTED, `more than ${this.server.options.maxConcurrentCallsPerConnection} concurrent calls on one connection`);
      return;
    }
    const call = new ServerCall(this, id, route, frame);
    this.calls.set(id, call);
    call.run(frame);
  }

  /** Sends a status for a call that never started. */
  private status(callId: number, code: Code, message: string): void {
    try {
      this.send(buildFrame(this.server.encode, FrameType.STATUS, 0, callId, code, 0, undefined, undefined, message, undefined, undefined));
    } catch {
      /* the connection is going away */
    }
  }

  finish(callId: number): void {
    this.calls.delete(callId);
    if (this.goaway !== undefined && this.calls.size === 0) {
      this.conn.close();
      this.drained?.();
    }
  }

  /** Sends GOAWAY and resolves once every call in flight is done and the connection closed. */
  drain(): Promise<void> {
    if (this.conn.isClosed) return Promise.resolve();
    this.goaway = this.lastCallId;
    try {
      this.send(buildFrame(this.server.encode, FrameType.GOAWAY, 0, 0, this.lastCallId, 0, undefined, undefined, "server shutdown", undefined, undefined));
    } catch {
      /* closing anyway */
    }
    if (this.calls.size === 0) {
      this.conn.close();
      return this.conn.closed.then(() => undefined);
    }
    return new Promise<void>((resolve) => (this.drained = resolve)).then(() => this.conn.closed).then(() => undefined);
  }

  /** Cancels every call and drops the connection. */
  kill(error: RpcError): void {
    for (const c of [...this.calls.values()]) c.abort(error, true);
    this.conn.close(error);
  }

  protected onClosed(reason: KoalaError): void {
    const err = new RpcError(Code.CANCELLED, `client connection lost: ${reason.message}`, { cause: reason });
    for (const c of [...this.calls.values()]) c.abort(err, false);
    this.calls.clear();
    this.drained?.();
  }
}

/** The server half of one call. */
class ServerCall implements CallContext {
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

  constructor(
    private readonly sc: ServerConnection,
    private readonly id: number,
    private readonly route: Route,
    frame: Frame,
  ) {
    this.method = route.method;
    this.mdBytes = frame.metadata;
    this.deadline = frame.arg2 === 0 ? undefined : Date.now() + frame.arg2;
    const kind = this.method.kind;
    if (kind === "client_streaming" || kind === "bidi_streaming") {
      this.requests = new IncomingStream(
        STREAM_GRANT_BYTES,
        (n) => this.control(FrameType.CREDIT, n),
        () => {
          /* the handler stopped reading requests; the call goes on */
        },
      );
    }
    if (kind === "server_streaming" || kind === "bidi_streaming") this.window = new SendWindow();
  }

  get peer(): string {
    return this.sc.conn.remoteAddress;
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
      if (left < 2 ** 31) this.timer = setTimeout(() => this.expire(), left);
    }
    try {
      if (this.mdBytes !== undefined) this.requestMetadata; // malformed metadata fails the call here, not in the handler
      const kind = this.method.kind;
      if (kind === "unary" || kind === "server_streaming") {
        if (frame.body === undefined || (frame.flags & FrameFlag.END_STREAM) === 0) {
          throw new RpcError(Code.INTERNAL, `${this.method.path} takes exactly one request`);
        }
        const request = this.decode(frame.body);
        if (kind === "unary") this.unary(this.route.handler as UnaryHandler<unknown, unknown>, request);
        else void this.streamOut((this.route.handler as ServerStreamingHandler<unknown, unknown>)(request, this));
      } else {
        if (frame.body !== undefined) this.requests!.push(this.decode(frame.body), frame.body.byteLength);
        if ((frame.flags & FrameFlag.END_STREAM) !== 0) this.requests!.end();
        if (kind === "client_streaming") this.unary(this.route.handler as unknown as UnaryHandler<unknown, unknown>, this.requests!);
        else void this.streamOut((this.route.handler as BidiStreamingHandler<unknown, unknown>)(this.requests!, this));
      }
    } catch (err) {
      this.fail(err);
    }
  }

  private decode(body: Uint8Array): unknown {
    if (body.byteLength > this.sc.server.options.maxMessageBytes) {
      throw new RpcError(Code.RESOURCE_EXHAUSTED, `request of ${body.byteLength} bytes exceeds the server's limit of ${this.sc.server.options.maxMessageBytes} bytes`);
    }
    try {
      return this.method.input.decode(body);
    } catch (err) {
      throw new RpcError(Code.INVALID_ARGUMENT, `cannot decode ${this.method.input.typeName}: ${(err as Error).message}`, { cause: err });
    }
  }

  private unary(handler: UnaryHandler<unknown, unknown>, request: unknown): void {
    const result = handler(request, this);
    if (result !== null && typeof result === "object" && typeof (result as PromiseLike<unknown>).then === "function") {
      (result as PromiseLike<unknown>).then(
        (r) => this.reply(r),
        (err: unknown) => this.fail(err),
      );
    } else this.reply(result);
  }

  private reply(response: unknown): void {
    if (this.done) return;
    if (response === undefined || response === null) {
      this.fail(new RpcError(Code.INTERNAL, `handler of ${this.method.path} returned no response`));
      return;
    }
    let frame;
    try {
      frame = buildFrame(
        this.sc.server.encode,
        FrameType.STATUS,
        0,
        this.id,
        Code.OK,
        0,
        this.headersSent ? undefined : this.headers,
        this.trailers,
        "",
        this.method.output,
        response,
      );
    } catch (err) {
      this.fail(err);
      return;
    }
    this.finish(frame);
  }

  private async streamOut(responses: AsyncIterable<unknown> | Iterable<unknown>): Promise<void> {
    try {
      const it = (Symbol.asyncIterator in responses ? (responses as AsyncIterable<unknown>)[Symbol.asyncIterator]() : (responses as Iterable<unknown>)[Symbol.iterator]());
      this.iterator = it;
      for (;;) {
        const r = await it.next();
        if (this.done) return;
        if (r.done === true) break;
        // The first response carries the headers (buildFrame flags the section when there is one).
        const frame = buildFrame(this.sc.server.encode, FrameType.DATA, 0, this.id, 0, 0, this.headersSent ? undefined : this.headers, undefined, "", this.method.output, r.value);
        if (!this.window!.tryTake(frame.bodyBytes)) await this.window!.take(frame.bodyBytes).catch((err: unknown) => (frame.release?.(), Promise.reject(err)));
        if (this.done) {
          frame.release?.();
          return;
        }
        this.headersSent = true;
        if (!this.sc.send(frame)) await this.sc.conn.drain();
      }
      if (this.done) return;
      this.finish(buildFrame(this.sc.server.encode, FrameType.STATUS, 0, this.id, Code.OK, 0, this.headersSent ? undefined : this.headers, this.trailers, "", undefined, undefined));
    } catch (err) {
      this.fail(err);
    }
  }

  onFrame(frame: Frame): void {
    if (this.done) return;
    switch (frame.type) {
      case FrameType.DATA:
        if (this.requests === undefined) {
          this.fail(new RpcError(Code.INTERNAL, `${this.method.path} takes exactly one request`));
          return;
        }
        if (frame.body !== undefined) {
          try {
            this.requests.push(this.decode(frame.body), frame.body.byteLength);
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

  private control(type: FrameType, arg: number): void {
    if (this.done) return;
    try {
      this.sc.conn.send([controlFrame(type, this.id, arg)]);
    } catch {
      /* closing */
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
    else this.finish(undefined);
  }

  private fail(err: unknown): void {
    if (this.done) return;
    if (this.sc.server.options.logHandlerErrors && !(err instanceof RpcError)) {
      log("warn", "server", `${this.method.path} failed: ${(err as Error)?.stack ?? String(err)}`);
    }
    this.abort(RpcError.from(err), true);
  }


  private sendStatus(e: RpcError): void {
    const trailers = this.trailers ?? new Metadata();
    for (const [k, v] of new Metadata(e.metadata)) trailers.append(k, v);
    let frame: OutgoingFrame;
    try {
      frame = buildFrame(this.sc.server.encode, FrameType.STATUS, 0, this.id, e.code, 0, this.headersSent ? undefined : this.headers, trailers, e.rawMessage, undefined, undefined);
    } catch {
      // Headers or trailers that cannot be encoded must not hide the status itself.
      frame = buildFrame(this.sc.server.encode, FrameType.STATUS, 0, this.id, e.code, 0, undefined, undefined, e.rawMessage, undefined, undefined);
    }
    this.finish(frame);
  }

  private finish(frame: OutgoingFrame | undefined): void {
    if (this.done) {
      frame?.release?.();
      return;
    }
    this.done = true;
    if (this.timer !== undefined) clearTimeout(this.timer);
    if (frame !== undefined) {
      if (this.sc.conn.isClosed) frame.release?.();
      else {
        try {
          this.sc.send(frame);
        } catch (err) {
          log("warn", "server", `cannot send the status of ${this.method.path}: ${(err as Error).message}`);
        }
      }
    }
    this.sc.finish(this.id);
  }

}
