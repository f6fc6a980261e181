/**
 * The connection source of a resolved target: a resolver's endpoints, one subchannel each, and a
 * balancer that picks among the ready ones. Endpoints come and go live: a new one gets a
 * subchannel, a removed one is shut down gracefully (no new calls; its calls in flight finish,
 * then its connection closes), and the others are not touched.
 */
import { Code, ErrorCode, KoalaError, RpcError } from "../errors.js";
import { log, logLimited } from "../log.js";
import { OutlierDetector, type OutlierDetectionSettings } from "./outlier.js";
import type { BackoffOptions } from "./backoff.js";
import { EndpointSubchannel } from "./subchannel.js";
import type { Target } from "./target.js";
import type { Balancer, ConnectionSource, Dialer, Endpoint, EndpointState, HealthChecker, PooledConnection, Resolver, ResolverFactory } from "./types.js";

interface Waiter<C> {
  resolve(c: C): void;
  reject(err: unknown): void;
  waitForReady: (() => boolean) | undefined;
}

/** Settings of a {@link ClusterSource}. */
export interface ClusterSourceOptions {
  /** Reconnect backoff of each endpoint. */
  readonly backoff: BackoffOptions;
  /** Fewest ms between two resolutions. */
  readonly minResolveIntervalMs: number;
  /** Client-side health checking: each ready endpoint watches this service and is picked only while SERVING. Off when undefined. */
  readonly healthCheck?: { readonly serviceName: string; readonly checker: HealthChecker };
  /** Outlier ejection on consecutive failures. Off when undefined. */
  readonly outlierDetection?: OutlierDetectionSettings;
}

/** Connections to the endpoints a resolver reports, picked by a balancer. */
export class ClusterSource<C extends PooledConnection> implements ConnectionSource<C> {
  private readonly subchannels = new Map<string, EndpointSubchannel<C>>();
  private readonly resolver: Resolver;
  private waiters: Waiter<C>[] = [];
  private closed = false;
  /** True once the resolver reported endpoints or an error. */
  private resolved = false;
  private resolveError: KoalaError | undefined;
  /** False until the first call: endpoints are only dialled once the channel is used (as gRPC channels start idle). */
  private active = false;
  private pending: readonly Endpoint[] | undefined;
  private readonly outlier: OutlierDetector<C> | undefined;

  constructor(
    private readonly target: Target,
    resolverFactory: ResolverFactory,
    private readonly balancer: Balancer<C>,
    private readonly dialer: Dialer<C>,
    private readonly options: ClusterSourceOptions,
  ) {
    if (options.outlierDetection !== undefined) {
      this.outlier = new OutlierDetector<C>(options.outlierDetection, () => this.subchannels.values(), (s) => this.onPickableChange(s));
    }
    this.resolver = resolverFactory(target, { onEndpoints: (e) => this.onEndpoints(e), onError: (e) => this.onResolveError(e) }, { minResolveIntervalMs: options.minResolveIntervalMs });
  }

  pick(): C | undefined {
    return this.balancer.pick();
  }

  wait(waitForReady?: () => boolean): Promise<C> {
    if (this.closed) return Promise.reject(new RpcError(Code.UNAVAILABLE, "the channel is closed"));
    if (!this.active) {
      this.active = true;
      const p = this.pending;
      this.pending = undefined;
      if (p !== undefined) this.onEndpoints(p);
    }
    // Connections that got a GOAWAY stay open for their calls; their endpoints connect again.
    for (const s of this.subchannels.values()) s.retireUnusable();
    const c = this.balancer.pick();
    if (c !== undefined) return Promise.resolve(c);
    const failure = this.failFastReason();
    if (failure !== undefined && (waitForReady === undefined || !waitForReady())) return Promise.reject(failure);
    return new Promise<C>((resolve, reject) => this.waiters.push({ resolve, reject, waitForReady }));
  }

  endpoints(): EndpointState[] {
    return [...this.subchannels.values()].map((s) => ({
      address: s.endpoint.address,
      state: s.state,
      outstanding: s.connection?.outstanding ?? 0,
      ...(s.serving === undefined ? {} : { health: s.serving === null ? ("unknown" as const) : s.serving ? ("serving" as const) : ("not_serving" as const) }),
      ...(this.outlier === undefined ? {} : { ejected: s.ejected }),
      ...(s.endpoint.weight === undefined ? {} : { weight: s.endpoint.weight }),
      ...(s.endpoint.locality === undefined ? {} : { locality: { name: s.endpoint.locality, weight: s.endpoint.localityWeight ?? 1, priority: s.endpoint.priority ?? 0 } }),
      ...(s.connection?.transport === undefined ? {} : { transport: s.connection.transport }),
    }));
  }

  /**
   * Why a call should fail now instead of waiting: the resolver failed and left no endpoints, or
   * it reported none, or every endpoint is in transient failure. Undefined while something may
   * still become ready (resolving, connecting, idle).
   */
  private failFastReason(): RpcError | undefined {
    if (!this.resolved) return undefined;
    if (this.subchannels.size === 0) {
      const why = this.resolveError?.message ?? `the resolver found no endpoints for ${this.target.raw}`;
      return new RpcError(Code.UNAVAILABLE, why, { cause: this.resolveError });
    }
    let last: unknown;
    let unhealthy = 0;
    for (const s of this.subchannels.values()) {
      // As gRPC, an endpoint failing its health check counts as failing to connect.
      if (s.state === "ready" && s.serving === false) unhealthy++;
      else if (s.state !== "transient_failure") return undefined;
      else last = s.lastError;
    }
    const n = this.subchannels.size;
    if (unhealthy === n) return new RpcError(Code.UNAVAILABLE, `no endpoint of ${this.target.raw} (${n}) is serving ${JSON.stringify(this.options.healthCheck?.serviceName)} (health check)`);
    return new RpcError(Code.UNAVAILABLE, `cannot connect to any endpoint of ${this.target.raw} (${n}${unhealthy > 0 ? `, ${unhealthy} not serving` : ""}): ${(last as Error)?.message ?? String(last)}`, { cause: last });
  }

  private onEndpoints(endpoints: readonly Endpoint[]): void {
    if (this.closed) return;
    if (!this.active) {
      this.pending = endpoints;
      return;
    }
    this.resolved = true;
    // An empty list after an error (a resolver that lost its name) keeps the error as the reason.
    if (endpoints.length > 0) this.resolveError = undefined;
    const next = new Map<string, Endpoint>();
    for (const e of endpoints) if (!next.has(e.address)) next.set(e.address, e);
    for (const [address, s] of this.subchannels) {
      if (!next.has(address)) {
        this.subchannels.delete(address);
        s.shutdown(false);
      }
    }
    const ordered: EndpointSubchannel<C>[] = [];
    for (const [address, e] of next) {
      let s = this.subchannels.get(address);
      if (s === undefined) {
        s = new EndpointSubchannel(e, this.dialer, this.options.backoff, (sub) => this.onState(sub));
        this.subchannels.set(address, s);
      } else if (s.endpoint.weight !== e.weight || s.endpoint.locality !== e.locality || s.endpoint.localityWeight !== e.localityWeight || s.endpoint.priority !== e.priority) s.endpoint = e;
      ordered.push(s);
    }
    this.balancer.update(ordered);
    this.settleWaiters();
  }

  private onResolveError(err: KoalaError): void {
    if (this.closed) return;
    this.resolved = true;
    this.resolveError = err;
    logLimited("client.resolve-failed", "warn", "client", err.message);
    this.settleWaiters();
  }

  private onState(s: EndpointSubchannel<C>): void {
    // A shut-down subchannel was removed (the balancer gets the new list) or the source closed.
    if (this.closed || s.state === "shutdown") return;
    if (s.state === "ready") this.onReady(s);
    else if (s.serving !== undefined) {
      s.healthWatch?.close();
      s.healthWatch = undefined;
      s.serving = undefined;
    }
    this.balancer.onStateChange(s);
    // A failed or lost connection may mean the name moved: ask the resolver (it rate-limits).
    if (s.state === "transient_failure" || s.state === "idle") this.resolver.refresh();
    this.settleWaiters();
  }

  /** A subchannel connected: its calls report to outlier detection, and its health is watched before it is picked. */
  private onReady(s: EndpointSubchannel<C>): void {
    const c = s.connection!;
    this.outlier?.attach(s, c);
    const hc = this.options.healthCheck;
    if (hc === undefined) return;
    s.healthWatch?.close();
    s.serving = null;
    s.healthWatch = hc.checker(c, hc.serviceName, (serving) => {
      if (s.connection !== c || s.state !== "ready" || s.serving === serving) return;
      if (s.serving !== null || !serving) log(serving ? "info" : "warn", "client", `endpoint ${s.endpoint.address} ${serving ? "is serving again" : "is not serving"} ${JSON.stringify(hc.serviceName)}: ${serving ? "picked again" : "no calls are picked there"}`);
      s.serving = serving;
      this.onPickableChange(s);
    });
  }

  /** A subchannel became pickable or stopped being so, without a change of connectivity state. */
  private onPickableChange(s: EndpointSubchannel<C>): void {
    if (this.closed || s.state === "shutdown") return;
    this.balancer.onStateChange(s);
    this.settleWaiters();
  }

  /** Hands the waiting calls a connection, or fails those that should not wait any more. */
  private settleWaiters(): void {
    if (this.waiters.length === 0) return;
    const failure = this.failFastReason();
    const waiting = this.waiters;
    this.waiters = [];
    for (const w of waiting) {
      const c = this.balancer.pick();
      if (c !== undefined) w.resolve(c);
      else if (failure !== undefined && (w.waitForReady === undefined || !w.waitForReady())) w.reject(failure);
      else this.waiters.push(w);
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.resolver.close();
    for (const s of this.subchannels.values()) s.shutdown(true);
    this.subchannels.clear();
    const err = new RpcError(Code.UNAVAILABLE, "the channel is closed");
    for (const w of this.waiters.splice(0)) w.reject(err);
  }
}

/** A resolver failure, as resolvers report it. */
export function resolveFailed(target: Target, why: string, cause?: unknown): KoalaError {
  return new KoalaError(ErrorCode.RESOLVE_FAILED, `cannot resolve ${target.raw}: ${why}`, { cause });
}
