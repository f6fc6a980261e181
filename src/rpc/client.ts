/**
 * The client side: a Channel keeps one connection to an address (reconnecting for the next
 * call after a loss), multiplexes calls over it and runs keepalive; `createClient` builds a
 * typed client object from a service definition.
 */
import diagnostics from "node:diagnostics_channel";
import { Code, ErrorCode, KoalaError, RpcError, clampCode, codeName, type MetadataInit } from "../errors.js";
import { Fifo } from "../fifo.js";
import { log, logLimited } from "../log.js";
import { connect } from "../transport/index.js";
import { createConnectionSource, type CallRoute, type ConnectionSource, type Endpoint, type EndpointState, type PooledConnection, type RoutedCall } from "../cluster/index.js";
import type { Connection, PeerCertificate } from "../transport/types.js";
import type { MethodDefinition, MethodKind, PartialMessage, ServiceDefinition } from "../proto/definition.js";
import { FrameFlag, FrameType, type Frame } from "./frame.js";
import { decodeRange } from "../proto/wire/reader.js";
import { RpcEndpoint } from "./endpoint.js";
import { IdTable } from "../id-table.js";
import { CallInfoBase, EndpointChains, runChain, runEndChain, runMessageChain, whenReleased, type CallInfo, type Interceptor } from "./interceptor.js";
import { Metadata, decodeMetadata } from "./metadata.js";
import { heapFor, resolveChannelOptions, transportOptionsFor, type ChannelOptions, type ResolvedChannelOptions } from "./options.js";
import { buildFrame, encodeFrame, encodeSettings, type EncodeSettings } from "./outgoing.js";
import { IncomingStream, SendWindow } from "./stream.js";
import { encodedLength } from "../proto/wire/writer.js";
import { PREVIOUS_ATTEMPTS_KEY, ReplayBuffer, RetryThrottle, pushbackOf, retryBackoffMs, type HedgingPolicy, type RetryPolicy } from "./retry.js";

/** Per-call options. */
export interface CallOptions {
  /** Time the call may take, in milliseconds, sent to the server; exceeding it fails with DEADLINE_EXCEEDED. */
  timeoutMs?: number;
  /** Absolute deadline (a Date or epoch milliseconds); the earlier of this and `timeoutMs` counts. */
  deadline?: Date | number;
  /** Cancels the call when aborted (CANCELLED on the client; the server handler's signal aborts too). */
  signal?: AbortSignal;
  /** Request headers. */
  metadata?: MetadataInit | Metadata;
  /** Called with the response headers when they arrive. */
  onHeader?: (headers: Metadata) => void;
  /** Called with the response trailers when the call ends (also on failure). */
  onTrailer?: (trailers: Metadata) => void;
  /**
   * When the server cannot be reached, wait (until the deadline or cancellation) for the
   * channel to connect instead of failing with UNAVAILABLE at once. Default false.
   */
  waitForReady?: boolean;
}

/** A request message given to a client: the message type itself or any part of it, at any depth (absent fields take their defaults). */
export type RequestInit<I> = I | PartialMessage<I>;

/** The client function of one method, typed by its call kind. */
export type ClientMethod<M> =
  M extends MethodDefinition<infer I, infer O, infer K>
    ? K extends "unary"
      ? (request: RequestInit<I>, options?: CallOptions) => Promise<O>
      : K extends "server_streaming"
        ? (request: RequestInit<I>, options?: CallOptions) => AsyncIterable<O>
        : K extends "client_streaming"
          ? (requests: AsyncIterable<RequestInit<I>> | Iterable<RequestInit<I>>, options?: CallOptions) => Promise<O>
          : (requests: AsyncIterable<RequestInit<I>> | Iterable<RequestInit<I>>, options?: CallOptions) => AsyncIterable<O>
    : never;

/** A typed client of service `S`: one function per method, named as in `S.methods`. */
export type Client<S extends ServiceDefinition> = { readonly [K in keyof S["methods"]]: ClientMethod<S["methods"][K]> };

const channelOf = new WeakMap<object, { channel: Channel; owned: boolean }>();

/** One open call on a connection, as the connection sees it. */
interface PendingCall {
  onFrame(frame: Frame): void;
  fail(error: RpcError): void;
  /** The server's GOAWAY says it never processed this call: try it elsewhere if that is safe, else fail with `error`. */
  refused(error: RpcError): void;
}

/** Streams a server allows per connection until its SETTINGS say otherwise (the protocol's default). */
const DEFAULT_MAX_STREAMS = 100;

/** One transport connection and the calls multiplexed on it. */
class ClientConnection extends RpcEndpoint implements PooledConnection {
  private readonly calls = new IdTable<PendingCall>();
  private nextCallId = 1;
  /** Method ids by path; `announced` once a CALL defining it was handed to the transport. */
  private readonly methodIds = new Map<string, { id: number; announced: boolean }>();
  /** Set by GOAWAY: no new calls go here. */
  draining = false;
  dead = false;
  protected readonly releasesMessages = false;
  /** Calls the server allows at once on this connection (from its SETTINGS). */
  private maxStreams = DEFAULT_MAX_STREAMS;
  /** Calls waiting for a free stream, oldest first. */
  private readonly waiting = new Fifo<() => void>();
  private settled: (() => void) | undefined;
  /** Resolves when the server's SETTINGS arrived (the connection is ready for calls). */
  readonly ready: Promise<void>;
  /** Set by the cluster layer when it detects outliers: hears the end of every call made here (see PooledConnection). */
  callEnded: ((failed: boolean) => void) | undefined = undefined;

  constructor(
    conn: Connection,
    /** The channel this connection belongs to. */
    readonly channel: Channel,
  ) {
    super(conn, channel.options, "client");
    this.ready = new Promise<void>((resolve) => (this.settled = resolve));
    this.start();
  }

  /** Calls open on this connection (least-outstanding balancing reads it). */
  get outstanding(): number {
    return this.calls.size;
  }

  /** The transport the connection runs on. */
  get transport(): string {
    return this.conn.transport;
  }

  /** True once the transport connection closed. */
  get isClosed(): boolean {
    return this.conn.isClosed;
  }

  /** Settles once the transport connection closed. */
  get closed(): Promise<unknown> {
    return this.conn.closed;
  }

  /** Closes the transport connection. */
  close(): void {
    this.conn.close();
  }

  /** No new calls; closes once the calls open on it ended (an endpoint removed from its target). */
  drain(): void {
    this.draining = true;
    if (this.calls.size === 0) this.conn.close();
    this.admitWaiting();
  }

  get usable(): boolean {
    return !this.dead && !this.draining && !this.conn.isClosed && this.nextCallId < 0xffff_fff0;
  }

  /** True when a call may be opened at once (no call waits, and the server allows another). */
  get hasRoom(): boolean {
    return this.calls.size < this.maxStreams && this.waiting.length === 0;
  }

  /**
   * Runs `start` now when the server allows another call on this connection, or once one ends
   * (calls past the server's maxConcurrentStreams wait here, in order, instead of failing).
   * When the connection goes away, waiting starts run at once and find it unusable.
   */
  admit(start: () => void): void {
    if (this.calls.size < this.maxStreams && this.waiting.length === 0) start();
    else this.waiting.push(start);
  }

  private admitWaiting(): void {
    const all = !this.usable;
    while (this.waiting.length > 0 && (all || this.calls.size < this.maxStreams)) this.waiting.shift()!();
  }

  /** Registers a call; returns its id. */
  open(call: PendingCall): number {
    const callId = this.nextCallId++;
    this.calls.set(callId, call);
    return callId;
  }

  /**
   * The id of method `path` on this connection, with `announced` false until a CALL that names
   * the path was actually sent ({@link announced}): a first call that fails before it is sent
   * must not leave the method bound to an id the server never heard of.
   */
  method(path: string): { readonly id: number; readonly announced: boolean } {
    let m = this.methodIds.get(path);
    if (m === undefined) {
      m = { id: this.methodIds.size + 1, announced: false };
      this.methodIds.set(path, m);
    }
    return m;
  }

  /** A CALL defining `path` was handed to the transport: later calls send its id alone. */
  announced(path: string): void {
    const m = this.methodIds.get(path);
    if (m !== undefined) m.announced = true;
  }

  /** Forgets a finished call (or one moved to another connection). */
  finish(callId: number): void {
    if (!this.calls.delete(callId)) return;
    if (this.draining && this.calls.size === 0) this.conn.close();
    if (this.waiting.length > 0) this.admitWaiting();
  }

  protected onFrame(frame: Frame): boolean {
    switch (frame.type) {
      case FrameType.SETTINGS:
        this.maxStreams = Math.max(1, frame.arg);
        this.settled?.();
        this.settled = undefined;
        this.admitWaiting();
        return true;
      case FrameType.DATA:
      case FrameType.STATUS:
      case FrameType.CREDIT: {
        const call = this.calls.get(frame.callId);
        if (call === undefined) {
          this.discard(frame);
          return true;
        }
        try {
          call.onFrame(frame);
        } catch (err) {
          // Whatever goes wrong in one call (an application callback that throws) ends that call only.
          call.fail(RpcError.from(err, Code.INTERNAL));
        }
        return true;
      }
      case FrameType.GOAWAY:
        this.draining = true;
        logLimited("client.goaway", "debug", "client", `server ${this.conn.remoteAddress} is going away: ${frame.text}`);
        for (const [id, call] of this.calls.entries()) {
          if (id > frame.arg) call.refused(new RpcError(Code.UNAVAILABLE, `server is going away (${frame.text || "GOAWAY"}) and did not process the call`));
        }
        if (this.calls.size === 0) this.conn.close();
        this.admitWaiting();
        return true;
      default:
        return false;
    }
  }

  protected onClosed(reason: KoalaError): void {
    this.dead = true;
    this.settled?.();
    this.settled = undefined;
    this.admitWaiting();
    if (this.calls.size === 0) return;
    const err = new RpcError(Code.UNAVAILABLE, `connection to ${this.conn.remoteAddress} lost: ${reason.message}`, { cause: reason });
    const calls = this.calls.values();
    this.calls.clear();
    for (const c of calls) c.fail(err);
  }
}

/**
 * A client's link to a target: connects on first use, shares its connections among all calls
 * and clients made from it, and reconnects for the next call after a connection is lost. Which
 * connection a call takes is the cluster layer's choice (see src/cluster/index.ts): for a
 * single address it is the one connection there is.
 */
export class Channel {
  /** The resolved options. */
  readonly options: ResolvedChannelOptions;
  /** @internal The interceptor chains of this channel's calls, by method path. */
  readonly chains: EndpointChains;
  /** @internal encoding settings of this channel's calls */
  readonly encode: EncodeSettings;
  private readonly source: ConnectionSource<ClientConnection>;
  /** @internal The retry throttle of the service config's `retryThrottling`, shared by every call of the channel. */
  readonly throttle: RetryThrottle | undefined;

  constructor(
    /** The target calls go to (an address, or a name for a resolver). */
    readonly address: string,
    options?: ChannelOptions,
  ) {
    this.options = resolveChannelOptions(options);
    this.encode = encodeSettings(this.options.maxMessageBytes, this.options.externalBytesThreshold, heapFor(options));
    this.chains = new EndpointChains(this.options.interceptors, "client", undefined);
    const o = this.options;
    const t = o.serviceConfig?.throttling;
    this.throttle = t === undefined ? undefined : new RetryThrottle(t.maxTokens, t.tokenRatio);
    try {
      this.source = createConnectionSource<ClientConnection>(address, (endpoint) => this.dial(endpoint), {
        backoff: { initialMs: o.reconnectBackoffInitialMs, maxMs: o.reconnectBackoffMaxMs, multiplier: 1.6, jitter: 0.2 },
        endpointBackoff: { initialMs: o.endpointBackoffInitialMs, maxMs: o.endpointBackoffMaxMs, multiplier: 1.6, jitter: 0.2 },
        balancer: o.loadBalancing,
        balancerOptions: o.loadBalancingOptions,
        minResolveIntervalMs: o.minResolveIntervalMs,
        ...(o.healthCheck === null ? {} : { healthCheckServiceName: o.healthCheck.serviceName }),
        ...(o.outlierDetection === null ? {} : { outlierDetection: o.outlierDetection }),
      });
    } catch (err) {
      if (err instanceof KoalaError && err.code === ErrorCode.UNKNOWN_NAME) {
        throw new KoalaError(err.code, `createChannel(): option "loadBalancing" = ${JSON.stringify(o.loadBalancing)}: ${err.message}`, { cause: err });
      }
      throw err;
    }
  }

  /**
   * The connection for the next call, connecting if there is none (or it was lost). While a
   * failed connect is backing off, fails at once with that failure — unless `waitForReady` is
   * given: then it waits for the next attempts for as long as `waitForReady()` says. `call` is
   * what a target that routes per call (xDS) routes by: its method path and metadata.
   */
  connection(waitForReady?: () => boolean, call?: RoutedCall): ClientConnection | Promise<ClientConnection> {
    const c = this.source.pick(call);
    return c !== undefined ? c : this.source.wait(waitForReady, call);
  }

  /**
   * The connection for an attempt of a retried or hedged call: one not in `avoid` (where earlier
   * attempts went) when the balancer offers one within a few picks, else whatever it picks.
   */
  connectionAvoiding(avoid: readonly ClientConnection[], waitForReady?: () => boolean, call?: RoutedCall): ClientConnection | Promise<ClientConnection> {
    let c = this.source.pick(call);
    for (let i = 0; i < 4 && c !== undefined && avoid.includes(c); i++) c = this.source.pick(call);
    return c !== undefined ? c : this.source.wait(waitForReady, call);
  }

  /** Dials one endpoint: the transport connection, then the server's SETTINGS (a peer that sends none within the connect timeout is not a koala server). */
  private async dial(endpoint: Endpoint): Promise<ClientConnection> {
    const conn = await connect(endpoint.address, {
      connectTimeoutMs: this.options.connectTimeoutMs,
      ...transportOptionsFor(this.options.maxMessageBytes, this.options.transport),
    });
    const cc = new ClientConnection(conn, this);
    let timer: NodeJS.Timeout | undefined;
    const settled = await Promise.race([cc.ready.then(() => true), new Promise<boolean>((r) => (timer = setTimeout(() => r(false), this.options.connectTimeoutMs)))]);
    clearTimeout(timer);
    if (!settled || cc.dead) {
      const why = settled ? "the connection closed before the server's SETTINGS" : `no SETTINGS from the server within ${this.options.connectTimeoutMs} ms`;
      conn.close(new Error(why));
      throw new KoalaError(ErrorCode.PROTOCOL, why);
    }
    return cc;
  }

  /** The target's endpoints now, each with its connectivity state and calls open (one entry for a single address). */
  endpoints(): EndpointState[] {
    return this.source.endpoints();
  }

  /** Connects now instead of at the first call. Rejects with UNAVAILABLE when the address cannot be reached. */
  async ready(): Promise<void> {
    await this.connection();
  }

  /** Closes the connections; calls still open on them fail with UNAVAILABLE. Later calls fail too. */
  close(): void {
    this.source.close();
  }
}

/** Creates a channel to `address` (see {@link ChannelOptions}). */
export function createChannel(address: string, options?: ChannelOptions): Channel {
  return new Channel(address, options);
}

/** Absolute deadline (epoch ms) from call options, or undefined. */
function deadlineOf(options: CallOptions | undefined): number | undefined {
  if (options === undefined) return undefined;
  let d: number | undefined;
  if (options.timeoutMs !== undefined) {
    if (typeof options.timeoutMs !== "number" || !(options.timeoutMs >= 0)) {
      throw new RpcError(Code.INVALID_ARGUMENT, `call option "timeoutMs" must be a number ≥ 0, got ${String(options.timeoutMs)}`);
    }
    d = Date.now() + options.timeoutMs;
  }
  if (options.deadline !== undefined) {
    const abs = options.deadline instanceof Date ? options.deadline.getTime() : options.deadline;
    if (typeof abs !== "number" || Number.isNaN(abs)) throw new RpcError(Code.INVALID_ARGUMENT, `call option "deadline" must be a Date or epoch milliseconds`);
    d = d === undefined ? abs : Math.min(d, abs);
  }
  return d;
}

/** Longest delay a Node timer takes, in milliseconds. */
const MAX_TIMER_MS = 2 ** 31 - 1;

const CALL_OPTION_KEYS = new Set(["timeoutMs", "deadline", "signal", "metadata", "onHeader", "onTrailer", "waitForReady"]);

function checkCallOptions(options: CallOptions | undefined): void {
  if (options === undefined) return;
  if (typeof options !== "object" || options === null) throw new RpcError(Code.INVALID_ARGUMENT, "call options must be an object");
  for (const k of Object.keys(options)) {
    if (!CALL_OPTION_KEYS.has(k)) throw new RpcError(Code.INVALID_ARGUMENT, `unknown call option "${k}"; known: ${[...CALL_OPTION_KEYS].join(", ")}`);
  }
}

/** What interceptors see of a client call besides {@link CallInfo}: the metrics engine labels client calls with the transport. */
export interface ClientCallInfo extends CallInfo {
  /** The transport of the connection the call went on; undefined when it never had one. */
  readonly transport: string | undefined;
}

/** How one attempt of a call with a retry or hedging policy ended, as the `koala:rpc.attempt` diagnostics channel reports it. */
export type AttemptOutcome = "ok" | "failed" | "retried" | "transparent" | "cancelled";

/** An event of the `koala:rpc.attempt` diagnostics channel: one attempt of a call with a retry or hedging policy ended. */
export interface AttemptEvent {
  /** The method path. */
  readonly path: string;
  /** The attempt's number, 0 for the first (transparent retries count too). */
  readonly attempt: number;
  /**
   * `ok` / `failed`: it was the call's outcome; `retried`: it failed and the call went on (a retry,
   * or the other hedges); `transparent`: it never reached the application on the server and was
   * sent again; `cancelled`: another attempt won, or the call ended while it ran.
   */
  readonly outcome: AttemptOutcome;
  /** Its status (OK for `ok`). */
  readonly code: Code;
}

/** The diagnostics channel of attempts: the metrics engine subscribes to it. Published only while someone listens. */
export const ATTEMPT_CHANNEL = "koala:rpc.attempt";
const attemptChannel = diagnostics.channel(ATTEMPT_CHANNEL);

/** Transparent retries of one call at most (an attempt that never reached the server's application, sent again at once). */
const MAX_TRANSPARENT_RETRIES = 5;

const NO_INTERCEPTORS: readonly Interceptor[] = [];

/** The attempts of a call with a retry or hedging policy (only such calls have one). */
class Attempts<I, O> {
  /** Attempts running now. */
  live: ClientCall<I, O>[] = [];
  /** Attempts started that count against maxAttempts. */
  started = 0;
  /** Attempts started in all (transparent ones too): the next attempt's number. */
  numbered = 0;
  /** Retries since the first attempt or the last server pushback: the exponent of the next backoff (a pushback starts it again from initialBackoff). */
  backoffRetries = 0;
  transparentLeft = MAX_TRANSPARENT_RETRIES;
  /** The attempt whose answer is the call's, once there is one. */
  committed: ClientCall<I, O> | undefined;
  /** The backoff before the next retry, or the delay before the next hedge. */
  timer: NodeJS.Timeout | undefined;
  /** Hedging: no more attempts (a pushback said stop). */
  stopped = false;
  /** The single request (unary, server streaming). */
  request: RequestInit<I> | undefined;
  /** The streamed request, kept for the attempts. */
  buffer: ReplayBuffer<RequestInit<I>> | undefined;
  /** Connections earlier attempts went to (a retry prefers another). */
  readonly tried: ClientConnection[] = [];

  constructor(readonly policy: RetryPolicy | HedgingPolicy) {}
}

/** See ClientCall.x. */
class CallExtras<I, O> {
  /** A call with a retry or hedging policy: its attempts. */
  retry: Attempts<I, O> | undefined;
  /** On an attempt: the call it is an attempt of. */
  parent: ClientCall<I, O> | undefined;
  /** On an attempt: its number, 0 for the first. */
  attemptNo = 0;
  /** On an attempt: it never reached the server's application (refused by a GOAWAY, or its connection was lost before it was sent). */
  transparent = false;

  constructor(
    /** Wait for the channel to connect instead of failing fast. */
    readonly waitReady: boolean,
  ) {}
}

/**
 * The client half of one call. Sends the request side, receives the response side, and ends
 * exactly once: with the response (unary / client streaming), at the end of the response
 * stream, or with an RpcError.
 */
class ClientCall<I, O> extends CallInfoBase implements PendingCall, CallInfo {
  private cc: ClientConnection | undefined;
  private callId = 0;
  private done = false;
  private timer: NodeJS.Timeout | undefined;
  private abortListener: (() => void) | undefined;
  /** The single response, once received (the interceptors see it at client-receive). */
  response: O | undefined;
  private gotResponse = false;
  private resolveUnary: ((o: O) => void) | undefined;
  private rejectUnary: ((e: unknown) => void) | undefined;
  /** Responses of a streaming response side. */
  readonly stream: IncomingStream<O> | undefined;
  /** Credits for the request side of a streaming request side. */
  private readonly window: SendWindow | undefined;
  /** Epoch ms, or undefined; an xDS route's timeout may make it earlier once (see {@link limitDeadline}). */
  deadline: number | undefined;
  /** The call's xDS route once the channel's source chose it (see RoutedCall.route); on an attempt, its parent holds it. */
  route: CallRoute | undefined = undefined;
  /** Outcome of a call that ended before `result()` was asked for: null for OK. */
  private early: RpcError | null | undefined;
  /** The single request, kept until the server answers so that a call its GOAWAY refused can go elsewhere. */
  private resendable: RequestInit<I> | undefined;
  /** For the interceptors: the single request of a unary or server-streaming call. */
  request: RequestInit<I> | undefined = undefined;
  private md: Metadata | undefined = undefined;
  private answered = false;
  /** Interceptors of this call (the channel's, then the process's); empty on the fast path. */
  private readonly chain: readonly Interceptor[];
  /**
   * What a call of a method in the service config, or an attempt of a retried call, has besides:
   * one field, undefined on the fast path (a call of a method with no config grows by 8 bytes).
   */
  private readonly x: CallExtras<I, O> | undefined;
  /** True once the call is over (for senders waiting on credit). */
  get ended(): boolean {
    return this.done;
  }

  constructor(
    private readonly channel: Channel,
    readonly method: MethodDefinition<I, O>,
    private readonly options: CallOptions | undefined,
    /** A connection the call must go on (a health check of that endpoint), instead of the channel's pick. */
    private readonly pinned?: ClientConnection,
    /** Set on an attempt of a call with a retry or hedging policy: that call (it owns the deadline, the signal, the interceptors and the response side). */
    parent?: ClientCall<I, O>,
  ) {
    super();
    const kind = method.kind;
    if (parent !== undefined) {
      this.deadline = parent.deadline;
      this.x = new CallExtras<I, O>(parent.waitReady);
      this.x.parent = parent;
      this.chain = NO_INTERCEPTORS;
      if (kind === "client_streaming" || kind === "bidi_streaming") this.window = new SendWindow();
      return;
    }
    checkCallOptions(options);
    let deadline = deadlineOf(options);
    const sc = channel.options.serviceConfig;
    const mc = sc !== null && pinned === undefined ? sc.lookup(method.path) : undefined;
    if (mc !== undefined) {
      if (mc.timeoutMs !== undefined) deadline = Math.min(deadline ?? Infinity, Date.now() + mc.timeoutMs);
      this.x = new CallExtras<I, O>(options?.waitForReady ?? mc.waitForReady ?? false);
      if (mc.policy !== undefined) this.x.retry = new Attempts<I, O>(mc.policy);
    }
    this.deadline = deadline;
    this.chain = channel.chains.of(method.path);
    if (this.chain.length !== 0) this.markStart();
    if (kind === "server_streaming" || kind === "bidi_streaming") this.stream = this.responseStream();
    if (kind === "client_streaming" || kind === "bidi_streaming") this.window = new SendWindow();
  }

  /** Wait for the channel to connect instead of failing fast (the call option, or the service config's default). */
  private get waitReady(): boolean {
    return this.x === undefined ? this.options?.waitForReady === true : this.x.waitReady;
  }

  /** A call with a retry or hedging policy: its attempts (each an attempt call of its own, `parent` set). */
  private get retry(): Attempts<I, O> | undefined {
    return this.x?.retry;
  }

  /** On an attempt: the call it is an attempt of. */
  private get parent(): ClientCall<I, O> | undefined {
    return this.x?.parent;
  }

  /** On an attempt: its number, 0 for the first. */
  private get attemptNo(): number {
    return this.x?.attemptNo ?? 0;
  }

  // Closures live in small methods of their own, off the unary path: a closure in a method makes
  // V8 allocate a context on every call of that method, whether the closure is made or not.

  /** The stream of responses of a server- or bidi-streaming call. */
  private responseStream(): IncomingStream<O> {
    return new IncomingStream<O>(
      (n) => this.sendControl(FrameType.CREDIT, n),
      () => this.cancel(new RpcError(Code.CANCELLED, "the response stream was closed by the client")),
    );
  }

  /** Cancels the call when `signal` aborts. */
  private watchSignal(signal: AbortSignal): void {
    this.abortListener = () => this.cancel(new RpcError(Code.CANCELLED, `call cancelled: ${describeAbort(signal.reason)}`, { cause: signal.reason }));
    signal.addEventListener("abort", this.abortListener, { once: true });
  }

  /** Fails the call with DEADLINE_EXCEEDED in `left` ms. */
  private armDeadline(left: number): void {
    this.timer = setTimeout(() => this.cancel(new RpcError(Code.DEADLINE_EXCEEDED, `deadline exceeded after ${this.options?.timeoutMs ?? left} ms`)), left);
  }

  /**
   * The call's route has a timeout (xDS, gRPC's A31): the deadline becomes the earlier of the
   * call's and `timeoutMs` from now, as a service-config timeout, and the timer follows. On a
   * call with attempts, the attempts running take the new deadline too.
   */
  limitDeadline(timeoutMs: number): void {
    const d = Date.now() + timeoutMs;
    if (this.done || (this.deadline !== undefined && this.deadline <= d)) return;
    this.deadline = d;
    const r = this.retry;
    if (r !== undefined) for (const a of r.live) a.deadline = d;
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = timeoutMs <= MAX_TIMER_MS ? setTimeout(() => this.cancel(new RpcError(Code.DEADLINE_EXCEEDED, `deadline exceeded after ${timeoutMs} ms (the timeout of the call's xDS route)`)), timeoutMs) : undefined;
  }

  /** Goes on with `next` once a held verdict settles (or ends the call with the rejection). */
  private afterHold(v: Promise<undefined | RpcError>, next: () => void): void {
    whenReleased(v, this, (e) => this.end(RpcError.from(e, Code.INTERNAL)), next);
  }

  /** Dispatches the call once a held client-send verdict settles. */
  private dispatchAfterHold(v: Promise<undefined | RpcError>, request: RequestInit<I> | undefined, requests: AsyncIterable<RequestInit<I>> | Iterable<RequestInit<I>> | undefined): void {
    this.afterHold(v, () => this.dispatch(request, requests));
  }

  /** Opens the call on `cc` when the server allows another stream there. */
  private openWhenAdmitted(cc: ClientConnection, request: RequestInit<I> | undefined, requests: AsyncIterable<RequestInit<I>> | Iterable<RequestInit<I>> | undefined): void {
    cc.admit(() => this.open(cc, request, requests));
  }

  /** Opens the call once the channel has a connection. */
  private openWhenConnected(c: Promise<ClientConnection>, request: RequestInit<I> | undefined, requests: AsyncIterable<RequestInit<I>> | Iterable<RequestInit<I>> | undefined): void {
    c.then(
      (conn) => this.openWhenAdmitted(conn, request, requests),
      (err: unknown) => this.end(RpcError.from(err, Code.UNAVAILABLE)),
    );
  }

  /** Ends the call with OK (after a held client-receive verdict). */
  private endOk(): () => void {
    return () => this.end(undefined);
  }

  /** For waitForReady: keep trying while the call has not ended. */
  private stillWaiting(): () => boolean {
    return () => !this.done;
  }

  /** Starts the call; `request` is the single request for unary and server-streaming calls. */
  start(request: RequestInit<I> | undefined, requests: AsyncIterable<RequestInit<I>> | Iterable<RequestInit<I>> | undefined): void {
    const signal = this.options?.signal;
    if (signal !== undefined) {
      if (signal.aborted) {
        this.end(new RpcError(Code.CANCELLED, `call cancelled: ${describeAbort(signal.reason)}`, { cause: signal.reason }));
        return;
      }
      this.watchSignal(signal);
    }
    if (this.deadline !== undefined) {
      const left = this.deadline - Date.now();
      if (left <= 0) {
        this.end(new RpcError(Code.DEADLINE_EXCEEDED, "deadline exceeded before the call started"));
        return;
      }
      // Node timers top out at 2^31-1 ms (~24.8 days; longer ones fire at once): beyond, no timer.
      if (left <= MAX_TIMER_MS) this.armDeadline(left);
    }
    if (this.chain.length === 0) {
      this.dispatch(request, requests);
      return;
    }
    // Interceptors see the call before it is sent; a held call keeps its deadline and can be cancelled.
    this.request = request;
    const v = runChain(this.chain, this, "client-send");
    if (v === undefined) this.dispatch(request, requests);
    else if (v instanceof RpcError) this.end(v);
    else this.dispatchAfterHold(v, request, requests);
  }

  get side(): "client" {
    return "client";
  }

  get peer(): string {
    return this.channel.address;
  }

  get peerCertificate(): PeerCertificate | undefined {
    return this.cc?.conn.peerCertificate;
  }

  /** The transport of the connection the call went on (for a retried call, the committed attempt's); undefined before it had one. */
  get transport(): string | undefined {
    return this.cc?.conn.transport;
  }

  /** The request metadata (from the call options; the interceptors may add to it before it is sent). */
  get metadata(): Metadata {
    if (this.md === undefined) {
      const md = this.options?.metadata;
      this.md = md instanceof Metadata ? md : new Metadata(md);
    }
    return this.md;
  }

  /** Finds the channel's connection and opens the call there once the server allows another stream. */
  private dispatch(request: RequestInit<I> | undefined, requests: AsyncIterable<RequestInit<I>> | Iterable<RequestInit<I>> | undefined): void {
    if (this.retry !== undefined) {
      this.startAttempts(request, requests);
      return;
    }
    const p = this.parent;
    // An attempt routes as its call: the call's route is chosen once, for all its attempts.
    const c =
      p !== undefined && p.retry!.tried.length > 0
        ? this.channel.connectionAvoiding(p.retry!.tried, this.waitReady ? this.stillWaiting() : undefined, p)
        : (this.pinned ?? this.channel.connection(this.waitReady ? this.stillWaiting() : undefined, p ?? this));
    if (c instanceof ClientConnection) {
      if (c.hasRoom) this.open(c, request, requests);
      else this.openWhenAdmitted(c, request, requests);
    } else this.openWhenConnected(c, request, requests);
  }

  refused(error: RpcError): void {
    if (this.done) return;
    if (this.parent !== undefined) {
      // The server never processed it: the call sends another attempt (the request is kept).
      this.x!.transparent = this.parent.retry?.committed !== this;
      this.end(error);
      return;
    }
    const cc = this.cc;
    // Only a call whose whole request was in its CALL frame can be sent again as it was.
    if (this.answered || this.resendable === undefined || this.method.kind === "client_streaming" || this.method.kind === "bidi_streaming") {
      this.end(error);
      return;
    }
    this.cc = undefined;
    cc?.finish(this.callId);
    this.dispatch(this.resendable, undefined);
  }

  private open(cc: ClientConnection, request: RequestInit<I> | undefined, requests: AsyncIterable<RequestInit<I>> | Iterable<RequestInit<I>> | undefined): void {
    if (this.done) return;
    if (!cc.usable) {
      // Lost between the lookup and now (a GOAWAY or a close in the meantime): try the next connection once.
      const next = this.pinned === undefined ? this.channel.connection(undefined, this.parent ?? this) : undefined;
      if (next instanceof ClientConnection && next !== cc) return this.openWhenAdmitted(next, request, requests);
      if (this.x !== undefined) this.x.transparent = true;
      this.end(new RpcError(Code.UNAVAILABLE, `connection to ${this.channel.address} is not usable`));
      return;
    }
    const callId = cc.open(this);
    const m = cc.method(this.method.path);
    const methodId = m.id;
    const define = !m.announced;
    this.cc = cc;
    this.callId = callId;
    this.stream?.bind(cc.receiveWindow);
    if (this.parent !== undefined) this.parent.retry!.tried.push(cc);
    const metadata = this.md !== undefined || this.options?.metadata !== undefined ? this.metadata : undefined;
    const timeout = this.deadline === undefined ? 0 : Math.max(1, Math.min(0xffff_fff0, this.deadline - Date.now()));
    let flags = define ? FrameFlag.DEFINE_METHOD : 0;
    const single = requests === undefined;
    if (single) flags |= FrameFlag.END_STREAM;
    if (single) this.resendable = request ?? ({} as RequestInit<I>);
    try {
      const text = define ? this.method.path : "";
      const bodyType = single ? this.method.input : undefined;
      const body = single ? asMessage(request) : undefined;
      // Encoded straight into the transport's send buffer where it offers one (small frames on
      // sockets), else into a frame of its own.
      if (!cc.sendFrameInPlace(this.channel.encode, FrameType.CALL, flags, callId, methodId, timeout, metadata, undefined, text, bodyType, body, Infinity)) {
        cc.send(encodeFrame(this.channel.encode, FrameType.CALL, flags, callId, methodId, timeout, metadata, undefined, text, bodyType, body));
      }
      if (define) cc.announced(this.method.path);
    } catch (err) {
      this.end(RpcError.from(err, Code.INTERNAL));
      return;
    }
    if (!single) void this.pump(requests);
  }

  /** Sends the request stream, honouring stream credits and the connection's backpressure. */
  private async pump(requests: AsyncIterable<RequestInit<I>> | Iterable<RequestInit<I>>): Promise<void> {
    try {
      for await (const r of requests as AsyncIterable<RequestInit<I>>) {
        if (this.done) return;
        if (this.chain.length !== 0) {
          const v = runMessageChain(this.chain, this, "client-send", r);
          const verdict = v instanceof Promise ? await v : v;
          if (verdict instanceof RpcError) throw verdict;
          if (this.done) return;
        }
        const body = asMessage(r);
        // Encoded straight into the transport's send buffer where it can be, else into a frame of its own.
        const sent = this.cc!.sendStreamMessageInPlace(this.channel.encode, this.callId, this.method.input, body, this.window!, Infinity);
        if (sent !== false) {
          if (sent !== undefined) await sent;
          continue;
        }
        const frame = encodeFrame(this.channel.encode, FrameType.DATA, 0, this.callId, 0, 0, undefined, undefined, "", this.method.input, body);
        const waiting = this.cc!.sendStreamMessage(frame, this.window!, this);
        if (waiting !== undefined) await waiting;
      }
      if (this.done) return;
      this.cc!.send(buildFrame(this.channel.encode, { type: FrameType.DATA, flags: FrameFlag.END_STREAM, callId: this.callId }));
    } catch (err) {
      if (this.done) return;
      const e = err instanceof RpcError ? err : new RpcError(Code.CANCELLED, `request stream failed: ${(err as Error)?.message ?? String(err)}`, { cause: err });
      this.cancel(e);
    }
  }

  private sendControl(type: FrameType, arg: number): void {
    if (this.done || this.cc === undefined) return;
    this.cc.control(type, this.callId, arg);
  }

  onFrame(frame: Frame): void {
    if (this.done) return;
    if (frame.type === FrameType.CREDIT) {
      this.window?.add(frame.arg);
      return;
    }
    if (this.parent !== undefined) {
      this.attemptFrame(this.parent, frame);
      return;
    }
    this.answered = true;
    this.resendable = undefined;
    let counted = false;
    try {
      const mdBytes = (frame.metadata?.byteLength ?? 0) + (frame.trailers?.byteLength ?? 0);
      const mdLimit = this.channel.options.maxMetadataBytes;
      if (mdBytes > mdLimit) {
        throw new RpcError(Code.RESOURCE_EXHAUSTED, `response metadata of ${mdBytes} bytes exceeds the client's limit of ${mdLimit} bytes (maxMetadataBytes)`);
      }
      if (frame.metadata !== undefined) {
        const headers = decodeMetadata(frame.metadata);
        this.callback("onHeader", headers);
      }
      if (frame.bodyAt >= 0) {
        const limit = this.channel.options.maxMessageBytes;
        if (frame.bodyBytes > limit) {
          throw new RpcError(Code.RESOURCE_EXHAUSTED, `response of ${frame.bodyBytes} bytes exceeds the client's limit of ${limit} bytes (maxMessageBytes)`);
        }
        const msg = decodeRange(this.method.output, frame.message, frame.bodyAt, frame.bodyAt + frame.bodyBytes);
        if (this.stream !== undefined) {
          counted = true;
          this.stream.push(msg, frame.bodyBytes);
          if (this.chain.length !== 0) {
            const v = runMessageChain(this.chain, this, "client-receive", msg);
            if (v instanceof RpcError) throw v;
          }
        }
        else if (this.gotResponse) throw new RpcError(Code.INTERNAL, "server sent more than one response to a call that takes one");
        else {
          this.response = msg;
          this.gotResponse = true;
        }
      }
    } catch (err) {
      // The server spent credit on a stream message this call could not take: give it back.
      if (!counted) this.cc?.discard(frame);
      const e = err instanceof RpcError ? err : new RpcError(Code.INTERNAL, `cannot decode ${this.method.output.typeName}: ${(err as Error).message}`, { cause: err });
      this.cancel(e);
      return;
    }
    if (frame.type === FrameType.STATUS) {
      let trailers: Metadata | undefined;
      try {
        trailers = frame.trailers === undefined ? undefined : decodeMetadata(frame.trailers);
      } catch (err) {
        this.end(RpcError.from(err, Code.INTERNAL));
        return;
      }
      if (this.options?.onTrailer !== undefined) {
        try {
          this.callback("onTrailer", trailers ?? new Metadata());
        } catch (err) {
          this.end(err as RpcError);
          return;
        }
      }
      const code = clampCode(frame.arg);
      if (code === Code.OK && this.chain.length !== 0) {
        const v = runChain(this.chain, this, "client-receive");
        if (v === undefined) this.end(undefined);
        else if (v instanceof RpcError) this.end(v);
        else this.afterHold(v, this.endOk());
      } else if (code === Code.OK) this.end(undefined);
      else {
        const text = code === frame.arg ? frame.text : `the server sent status code ${frame.arg}, which gRPC does not define${frame.text === "" ? "" : `: ${frame.text}`}`;
        this.end(new RpcError(code, text, { metadata: trailers?.toRecord() ?? {} }));
      }
    }
  }

  /** Calls the application's onHeader / onTrailer; one that throws fails this call (INTERNAL, the error as cause) and nothing else. */
  private callback(name: "onHeader" | "onTrailer", md: Metadata): void {
    const cb = this.options?.[name];
    if (cb === undefined) return;
    try {
      cb(md);
    } catch (err) {
      throw new RpcError(Code.INTERNAL, `the ${name} callback threw: ${(err as Error)?.message ?? String(err)}`, { cause: err });
    }
  }

  fail(error: RpcError): void {
    this.end(error);
  }

  /** Ends the call locally and tells the server. */
  cancel(error: RpcError): void {
    if (this.done) return;
    this.sendControl(FrameType.CANCEL, error.code);
    this.end(error);
  }

  private end(error: RpcError | undefined): void {
    if (this.done) return;
    if (this.parent !== undefined) {
      this.endAttempt(this.parent, error);
      return;
    }
    this.done = true;
    if (this.retry !== undefined) this.settleAttempts(error);
    if (this.chain.length !== 0) runEndChain(this.chain, this, error, interceptorFailed);
    if (this.timer !== undefined) clearTimeout(this.timer);
    if (this.abortListener !== undefined) this.options!.signal!.removeEventListener("abort", this.abortListener);
    const cc = this.cc;
    if (cc !== undefined) {
      cc.finish(this.callId);
      if (cc.callEnded !== undefined && this.pinned === undefined) reportOutcome(cc.callEnded, error);
    }
    this.window?.fail(error ?? new RpcError(Code.CANCELLED, "call ended"));
    if (this.stream !== undefined) {
      if (error === undefined) this.stream.end();
      else this.stream.fail(error);
    }
    if (this.resolveUnary !== undefined) {
      if (error !== undefined) this.rejectUnary!(error);
      else if (!this.gotResponse) this.rejectUnary!(new RpcError(Code.INTERNAL, `server ended ${this.method.path} with OK but sent no response`));
      else this.resolveUnary(this.response as O);
    } else if (this.stream === undefined) {
      // A unary-style call that ended before anyone awaited it: keep the outcome for result().
      this.early = error ?? null;
    }
  }

  // ── Retries and hedging (calls whose method has a policy in the service config) ──────────
  // The call itself (the parent) never goes on a connection: each attempt is a call of its own
  // with `parent` set, registered on a connection. An attempt that is not committed keeps its
  // frames to itself; the first header or message commits it, and from then on it hands every
  // frame to the parent, which answers the application as a call without a policy does.

  /** Starts the first attempt (and, for a streamed request, the buffer that replays it to later ones). */
  private startAttempts(request: RequestInit<I> | undefined, requests: AsyncIterable<RequestInit<I>> | Iterable<RequestInit<I>> | undefined): void {
    const r = this.retry!;
    r.request = request;
    if (requests !== undefined) r.buffer = new ReplayBuffer(this.requestPuller(requests));
    this.startAttempt(true);
  }

  /** Reads the application's request stream for the buffer, through the client-send interceptors. */
  private requestPuller(requests: AsyncIterable<RequestInit<I>> | Iterable<RequestInit<I>>): () => Promise<{ done: true } | { done: false; value: RequestInit<I>; bytes: number }> {
    const it: Iterator<RequestInit<I>> | AsyncIterator<RequestInit<I>> =
      Symbol.asyncIterator in requests ? (requests as AsyncIterable<RequestInit<I>>)[Symbol.asyncIterator]() : (requests as Iterable<RequestInit<I>>)[Symbol.iterator]();
    return async () => {
      try {
        const next = await it.next();
        if (next.done === true || this.done) return { done: true };
        const value = await next.value;
        if (this.chain.length !== 0) {
          const v = runMessageChain(this.chain, this, "client-send", value);
          const verdict = v instanceof Promise ? await v : v;
          if (verdict instanceof RpcError) throw verdict;
        }
        const bytes = encodedLength(this.method.input, asMessage(value));
        const r = this.retry!;
        // Past the buffer limit the call commits to the attempt furthest along: it cannot be replayed.
        if (r.committed === undefined && r.buffer!.bytes + bytes > this.channel.options.retryBufferBytes) {
          const a = r.live.find((x) => x.cc !== undefined);
          if (a !== undefined) this.commitTo(a);
        }
        return { done: false, value, bytes };
      } catch (err) {
        if (!this.done) this.cancel(err instanceof RpcError ? err : new RpcError(Code.CANCELLED, `request stream failed: ${(err as Error)?.message ?? String(err)}`, { cause: err }));
        return { done: true };
      }
    };
  }

  /** Starts one attempt; `counted` false for a transparent retry (it does not count against maxAttempts). */
  private startAttempt(counted: boolean): void {
    const r = this.retry!;
    r.timer = undefined;
    if (this.done || r.committed !== undefined) return;
    const n = r.numbered++;
    if (counted) r.started++;
    const a = new ClientCall<I, O>(this.channel, this.method, undefined, undefined, this);
    a.x!.attemptNo = n;
    if (n > 0 || this.md !== undefined || this.options?.metadata !== undefined) {
      const md = new Metadata(this.metadata);
      if (n > 0) md.set(PREVIOUS_ATTEMPTS_KEY, String(n));
      a.md = md;
    }
    r.live.push(a);
    const p = r.policy;
    if (p.kind === "hedging" && !r.stopped && r.started < p.maxAttempts) this.scheduleHedge(p.hedgingDelayMs);
    a.dispatch(r.request, r.buffer?.reader());
  }

  /** Sends the next hedge after `ms` (replacing a hedge already scheduled). */
  private scheduleHedge(ms: number): void {
    const r = this.retry!;
    if (r.timer !== undefined) clearTimeout(r.timer);
    r.timer = setTimeout(() => this.nextHedge(), ms);
  }

  private nextHedge(): void {
    const r = this.retry!;
    r.timer = undefined;
    if (this.done || r.committed !== undefined || r.stopped || r.started >= r.policy.maxAttempts) return;
    const t = this.channel.throttle;
    if (t !== undefined && !t.allows) return;
    this.startAttempt(true);
  }

  /** A frame for an attempt (`this`) of `p`. */
  private attemptFrame(p: ClientCall<I, O>, frame: Frame): void {
    const r = p.retry!;
    if (r.committed !== this) {
      if (frame.type === FrameType.STATUS && frame.bodyAt < 0 && clampCode(frame.arg) !== Code.OK) {
        // A failure with nothing before it: the call may go on with another attempt.
        let trailers: MetadataInit = {};
        try {
          if (frame.trailers !== undefined) trailers = decodeMetadata(frame.trailers).toRecord();
        } catch {
          // Undecodable trailers: the parent decodes them again below and fails the call with why.
        }
        const code = clampCode(frame.arg);
        const error = new RpcError(code, frame.text, { metadata: trailers });
        if (p.goesOn(this, error)) {
          const cc = this.cc;
          this.finishAttempt(code);
          if (cc !== undefined && cc.callEnded !== undefined) reportOutcome(cc.callEnded, error);
          return;
        }
      }
      p.commitTo(this);
    }
    p.onFrame(frame);
  }

  /** Commits the call to attempt `a`: its answer is the call's; the others are cancelled. */
  private commitTo(a: ClientCall<I, O>): void {
    const r = this.retry!;
    if (r.committed !== undefined) return;
    r.committed = a;
    if (r.timer !== undefined) clearTimeout(r.timer);
    r.timer = undefined;
    r.buffer?.commit();
    const others = r.live.filter((x) => x !== a);
    r.live = [a];
    for (const o of others) o.abandon();
    if (a.cc !== undefined) {
      this.cc = a.cc;
      this.callId = a.callId;
      this.stream?.bind(a.cc.receiveWindow);
    }
  }

  /** Cancels an attempt that lost (or whose call ended), and says so on the attempt channel. */
  private abandon(): void {
    if (this.done) return;
    this.sendControl(FrameType.CANCEL, Code.CANCELLED);
    this.finishAttempt(Code.CANCELLED, "cancelled");
  }

  /** Takes the attempt off its connection without telling the parent. */
  private finishAttempt(code: Code, outcome?: AttemptOutcome): void {
    this.done = true;
    const cc = this.cc;
    if (cc !== undefined) cc.finish(this.callId);
    this.window?.fail(new RpcError(Code.CANCELLED, "attempt ended"));
    if (outcome !== undefined) publishAttempt(this.method.path, this.attemptNo, outcome, code);
  }

  /** An attempt ended on its own (its connection failed, it was refused, it was cancelled locally). */
  private endAttempt(p: ClientCall<I, O>, error: RpcError | undefined): void {
    const cc = this.cc;
    this.finishAttempt(error?.code ?? Code.OK);
    const r = p.retry!;
    // The committed attempt's end is the call's: the call reports it to outlier detection.
    if (r.committed === this && !p.done) {
      p.end(error);
      return;
    }
    if (cc !== undefined && cc.callEnded !== undefined) reportOutcome(cc.callEnded, error);
    if (p.done) return;
    if (r.committed !== undefined) return;
    const e = error ?? new RpcError(Code.INTERNAL, "attempt ended without a status");
    if (!p.goesOn(this, e)) {
      r.committed = this;
      p.end(e);
    }
  }

  /**
   * Attempt `a` failed with `error` before the call committed: returns true when the call goes
   * on (a retry is scheduled, another hedge is sent or still runs), false when `error` is the
   * call's outcome.
   */
  private goesOn(a: ClientCall<I, O>, error: RpcError): boolean {
    const r = this.retry!;
    r.live = r.live.filter((x) => x !== a);
    const p = r.policy;
    const path = this.method.path;
    if (this.deadline !== undefined && Date.now() >= this.deadline) return false;
    if (a.x!.transparent && r.transparentLeft > 0) {
      r.transparentLeft--;
      publishAttempt(path, a.attemptNo, "transparent", error.code);
      log("debug", "client", `${path}: attempt ${a.attemptNo + 1} never reached the server's application (${error.message}): sending it again`);
      this.startAttempt(false);
      return true;
    }
    if (!p.codes.has(error.code)) return this.othersGoOn(a, error);
    const throttle = this.channel.throttle;
    throttle?.failed();
    const pushback = pushbackOf(error.metadata);
    const why = `${codeName(error.code)}: ${error.message}`;
    if (pushback === "stop") {
      r.stopped = true;
      log("debug", "client", `${path}: attempt ${a.attemptNo + 1} failed (${why}); the server's pushback says not to retry`);
      return this.othersGoOn(a, error);
    }
    if (r.started >= p.maxAttempts) return this.othersGoOn(a, error);
    if (throttle !== undefined && !throttle.allows) {
      log("debug", "client", `${path}: attempt ${a.attemptNo + 1} failed (${why}); retries are throttled (${throttle.level.toFixed(3)} of ${throttle.maxTokens} tokens)`);
      return this.othersGoOn(a, error);
    }
    if (p.kind === "retry") {
      // As grpc-js does it: a retry the server's pushback delayed resets the backoff, so the
      // next retry without one waits initialBackoff again, growing from there.
      let delay: number;
      if (pushback !== undefined) {
        delay = pushback;
        r.backoffRetries = 0;
      } else delay = retryBackoffMs(p, ++r.backoffRetries);
      publishAttempt(path, a.attemptNo, "retried", error.code);
      log("debug", "client", `${path}: attempt ${a.attemptNo + 1} of ${p.maxAttempts} failed (${why}); retrying in ${delay.toFixed(1)} ms${pushback === undefined ? "" : " (server pushback)"}`);
      r.timer = setTimeout(() => this.startAttempt(true), delay);
      return true;
    }
    // Hedging: a non-fatal failure sends the next hedge now (or after the server's pushback).
    publishAttempt(path, a.attemptNo, "retried", error.code);
    log("debug", "client", `${path}: hedge ${a.attemptNo + 1} of ${p.maxAttempts} failed (${why}); ${pushback === undefined ? "sending the next one now" : `next one in ${pushback} ms (server pushback)`}`);
    if (pushback !== undefined) this.scheduleHedge(pushback);
    else this.nextHedge();
    return r.live.length > 0 || r.timer !== undefined;
  }

  /** No more attempts after `a`'s failure: hedges still running may yet answer. */
  private othersGoOn(a: ClientCall<I, O>, error: RpcError): boolean {
    const r = this.retry!;
    if (r.policy.kind !== "hedging" || r.live.length === 0) return false;
    if (!r.policy.codes.has(error.code)) return false;
    publishAttempt(this.method.path, a.attemptNo, "retried", error.code);
    return true;
  }

  /** The call ended: its attempts end with it (the committed one says how it went). */
  private settleAttempts(error: RpcError | undefined): void {
    const r = this.retry!;
    if (r.timer !== undefined) clearTimeout(r.timer);
    r.timer = undefined;
    const code = error?.code ?? Code.OK;
    if (error === undefined) this.channel.throttle?.succeeded();
    for (const a of r.live) {
      if (a === r.committed) a.finishAttempt(code);
      else a.abandon();
    }
    r.live = [];
    const c = r.committed;
    if (c !== undefined) publishAttempt(this.method.path, c.attemptNo, error === undefined ? "ok" : "failed", code);
  }

  /** The single response of a unary or client-streaming call. */
  result(): Promise<O> {
    if (this.early !== undefined) {
      if (this.early !== null) return Promise.reject(this.early);
      return this.gotResponse ? Promise.resolve(this.response as O) : Promise.reject(new RpcError(Code.INTERNAL, `server ended ${this.method.path} with OK but sent no response`));
    }
    const p = new Promise<O>(captureResolvers);
    this.resolveUnary = capturedResolve as (o: O) => void;
    this.rejectUnary = capturedReject;
    capturedResolve = capturedReject = undefined;
    return p;
  }
}

let capturedResolve: ((value: never) => void) | undefined;
let capturedReject: ((reason: unknown) => void) | undefined;

/** A promise executor that makes no closure: it leaves the resolvers where the caller picks them up at once. */
function captureResolvers(resolve: (value: never) => void, reject: (reason: unknown) => void): void {
  capturedResolve = resolve;
  capturedReject = reject;
}

/** An interceptor's onEnd threw: logged, never fatal. */
function interceptorFailed(message: string): void {
  logLimited("client.interceptor-error", "warn", "client", message);
}

function describeAbort(reason: unknown): string {
  if (reason instanceof Error) return reason.message;
  return reason === undefined ? "aborted" : String(reason);
}

/** A request as given: encoders take partial messages (absent fields are defaults), so no copy is made. */
function asMessage<I>(init: RequestInit<I> | undefined): I {
  return (init ?? {}) as I;
}

/** Publishes an attempt's end on {@link ATTEMPT_CHANNEL} (nothing is built while no one listens). */
function publishAttempt(path: string, attempt: number, outcome: AttemptOutcome, code: Code): void {
  if (attemptChannel.hasSubscribers) attemptChannel.publish({ path, attempt, outcome, code } satisfies AttemptEvent);
}

/** Tells outlier detection how a call ended: UNAVAILABLE fails, a status the server chose succeeds, cancellation and deadlines say nothing. */
function reportOutcome(callEnded: (failed: boolean) => void, error: RpcError | undefined): void {
  const code = error?.code;
  if (code === Code.CANCELLED || code === Code.DEADLINE_EXCEEDED) return;
  callEnded(code === Code.UNAVAILABLE);
}

/**
 * @internal Starts one call of `method` on the connection `connection` and nowhere else (the
 * health check of that endpoint); it fails with UNAVAILABLE when that connection cannot take it.
 */
export function invokeOn(connection: PooledConnection, method: MethodDefinition, input: unknown, options?: CallOptions): unknown {
  if (!(connection instanceof ClientConnection)) throw new KoalaError(ErrorCode.INVALID_ARGUMENT, "invokeOn(): not a connection made by a koala channel");
  return invoke(connection.channel, method, input, options, connection);
}

/** Starts one call of `method` on `channel` (on `pinned` alone when given: see invokeOn); what it returns depends on the call kind (see ClientMethod). */
export function invoke(channel: Channel, method: MethodDefinition, input: unknown, options?: CallOptions, pinned?: ClientConnection): unknown {
  const kind: MethodKind = method.kind;
  let call: ClientCall<unknown, unknown>;
  try {
    call = new ClientCall(channel, method, options, pinned);
  } catch (err) {
    const e = RpcError.from(err, Code.INVALID_ARGUMENT);
    if (kind === "unary" || kind === "client_streaming") return Promise.reject(e);
    return failingStream(e);
  }
  switch (kind) {
    case "unary":
      call.start(input, undefined);
      return call.result();
    case "server_streaming":
      call.start(input, undefined);
      return call.stream;
    case "client_streaming":
      call.start(undefined, input as Iterable<unknown>);
      return call.result();
    default:
      call.start(undefined, input as Iterable<unknown>);
      return call.stream;
  }
}

function failingStream(error: RpcError): AsyncIterable<never> {
  return {
    [Symbol.asyncIterator]: () => ({ next: () => Promise.reject(error) }),
  };
}

/**
 * Creates a typed client of `service`. `target` is an address (the client gets a channel of
 * its own, closed by {@link closeClient}) or a Channel shared with other clients.
 */
export function createClient<S extends ServiceDefinition>(service: S, target: string | Channel, options?: ChannelOptions): Client<S> {
  if (service === null || typeof service !== "object" || typeof service.methods !== "object") {
    throw new KoalaError(ErrorCode.INVALID_ARGUMENT, "createClient(): the first argument must be a service definition (generated, or from loadProto())");
  }
  const owned = typeof target === "string";
  if (!owned && options !== undefined) throw new KoalaError(ErrorCode.INVALID_ARGUMENT, "createClient(): options go to createChannel() when a channel is given");
  const channel = typeof target === "string" ? new Channel(target, options) : target;
  const client: Record<string, unknown> = {};
  for (const [name, method] of Object.entries(service.methods)) {
    client[name] = (input: unknown, callOptions?: CallOptions) => invoke(channel, method, input, callOptions);
  }
  channelOf.set(client, { channel, owned });
  return client as Client<S>;
}

/** The channel a client sends its calls on. */
export function clientChannel(client: object): Channel {
  const c = channelOf.get(client);
  if (c === undefined) throw new KoalaError(ErrorCode.INVALID_ARGUMENT, "not a client made by createClient()");
  return c.channel;
}

/** Closes a client: its own channel is closed; a shared channel is left to its owner. */
export function closeClient(client: object): void {
  const c = channelOf.get(client);
  if (c !== undefined && c.owned) c.channel.close();
}
