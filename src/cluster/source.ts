/**
 * The connection source of a resolved target: a resolver's endpoints, one subchannel each, and
 * balancers that pick among the ready ones. Endpoints come and go live: a new one gets a
 * subchannel, a removed one is shut down gracefully (no new calls; its calls in flight finish,
 * then its connection closes), and the others are not touched.
 *
 * A resolver that routes per call (xDS) reports a {@link CallRouter} with its endpoints: then
 * each cluster the routes name gets a balancer of its own (made when a route first names it,
 * dropped when none does), over the endpoints of that cluster, and each call's pick goes to the
 * balancer of the cluster its route gives. With one route to one cluster (the common case) the
 * pick goes straight to that balancer, as with any other resolver: one field load more than the
 * balancer's own pick. A routed call's route is chosen once, on its first routed pick, and kept
 * on the call ({@link RoutedCall.route}): its later picks go to the same cluster, and the
 * route's timeout, if any, caps the call's deadline then (the call's `limitDeadline`).
 */
import { Code, ErrorCode, KoalaError, RpcError } from "../errors.js";
import { log, logLimited } from "../log.js";
import { OutlierDetector, type OutlierDetectionSettings } from "./outlier.js";
import type { BackoffOptions } from "./backoff.js";
import { EndpointSubchannel } from "./subchannel.js";
import type { Target } from "./target.js";
import type { Balancer, CallRouter, ConnectionSource, ConnectivityState, Dialer, Endpoint, EndpointState, HealthChecker, PooledConnection, Resolver, ResolverFactory, RoutedCall, Subchannel } from "./types.js";

interface Waiter<C> {
  resolve(c: C): void;
  reject(err: unknown): void;
  waitForReady: (() => boolean) | undefined;
  call: RoutedCall | undefined;
}

/**
 * A subchannel as one cluster's balancer sees it, when its address is in more than one cluster
 * (each with its own locality, weight and priority): the shared connection under this cluster's endpoint.
 */
class ClusterView<C extends PooledConnection> implements Subchannel<C> {
  constructor(
    readonly endpoint: Endpoint,
    readonly sub: EndpointSubchannel<C>,
  ) {}
  get state(): ConnectivityState {
    return this.sub.state;
  }
  get connection(): C | undefined {
    return this.sub.connection;
  }
  get pickable(): boolean {
    return this.sub.pickable;
  }
  requestConnection(): void {
    this.sub.requestConnection();
  }
}

/** One cluster's balancer and its members (every endpoint for a resolver that does not route). */
interface Child<C extends PooledConnection> {
  readonly name: string;
  readonly balancer: Balancer<C>;
  /** Its members by address: the subchannel itself, or a view of it with this cluster's endpoint. */
  members: Map<string, Subchannel<C>>;
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

/**
 * The index in `r`'s clusters of `call`'s route, -1 when no route matches it. The first time,
 * the router chooses the route and the call keeps it (and hears of its timeout); later, the
 * kept route's cluster, found by name when the router changed since. A call whose cluster no
 * route of the new router names any more is routed again (its timeout stays as it was).
 */
function clusterOf(r: CallRouter, call: RoutedCall): number {
  let c = call.route;
  if (c === undefined) {
    c = r.route(call);
    call.route = c;
    if (c.timeoutMs !== undefined) call.limitDeadline?.(c.timeoutMs);
  }
  const i = c.cluster;
  if (i < 0 || r.clusters[i] === c.name) return i;
  const j = r.clusters.indexOf(c.name);
  if (j >= 0) return j;
  c = r.route(call);
  call.route = c;
  return c.cluster;
}

/** Connections to the endpoints a resolver reports, picked by a balancer (one per cluster when the resolver routes calls). */
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
  private pending: { endpoints: readonly Endpoint[]; router: CallRouter | undefined } | undefined;
  private readonly outlier: OutlierDetector<C> | undefined;
  /** The routing of the last report, when the resolver routes per call. */
  private router: CallRouter | undefined;
  /** The balancers, in the router's cluster order (one, named "", without a router). */
  private children: Child<C>[];
  /** The balancer every call goes to when routing does not depend on the call (always without a router); else undefined. */
  private direct: Balancer<C> | undefined;

  constructor(
    private readonly target: Target,
    resolverFactory: ResolverFactory,
    private readonly makeBalancer: () => Balancer<C>,
    private readonly dialer: Dialer<C>,
    private readonly options: ClusterSourceOptions,
  ) {
    const only: Child<C> = { name: "", balancer: this.balancer(), members: new Map() };
    this.children = [only];
    this.direct = only.balancer;
    if (options.outlierDetection !== undefined) {
      this.outlier = new OutlierDetector<C>(options.outlierDetection, () => this.subchannels.values(), (s) => this.onPickableChange(s));
    }
    this.resolver = resolverFactory(target, { onEndpoints: (e, r) => this.onEndpoints(e, r), onError: (e) => this.onResolveError(e) }, { minResolveIntervalMs: options.minResolveIntervalMs });
  }

  /** A new balancer (of one cluster), whose picker changes settle the waiting calls. */
  private balancer(): Balancer<C> {
    const b = this.makeBalancer();
    b.onPicker = () => {
      if (!this.closed) this.settleWaiters();
    };
    return b;
  }

  pick(call?: RoutedCall): C | undefined {
    const d = this.direct;
    return d !== undefined ? d.pick() : this.routedPick(call);
  }

  /** The pick of a call the router sends to one of several clusters. */
  private routedPick(call: RoutedCall | undefined): C | undefined {
    const r = this.router;
    if (r === undefined) return undefined;
    const i = call === undefined ? 0 : clusterOf(r, call);
    return i < 0 ? undefined : this.children[i]?.balancer.pick();
  }

  wait(waitForReady?: () => boolean, call?: RoutedCall): Promise<C> {
    if (this.closed) return Promise.reject(new RpcError(Code.UNAVAILABLE, "the channel is closed"));
    if (!this.active) {
      this.active = true;
      const p = this.pending;
      this.pending = undefined;
      if (p !== undefined) this.onEndpoints(p.endpoints, p.router);
    }
    // Connections that got a GOAWAY stay open for their calls; their endpoints connect again.
    for (const s of this.subchannels.values()) s.retireUnusable();
    const c = this.pick(call);
    if (c !== undefined) return Promise.resolve(c);
    const failure = this.failFastReason(call);
    if (failure !== undefined && (failure.unrouted || waitForReady === undefined || !waitForReady())) return Promise.reject(failure.error);
    return new Promise<C>((resolve, reject) => this.waiters.push({ resolve, reject, waitForReady, call }));
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
   * Why a call should fail now instead of waiting: no route matches it (`unrouted`: it fails
   * even with waitForReady, as in gRPC), its cluster has no endpoints (the resolver failed, found
   * none, or the cluster is broken), or every endpoint of its cluster is in transient failure.
   * Undefined while something may still become ready (resolving, connecting, idle).
   */
  private failFastReason(call: RoutedCall | undefined): { error: RpcError; unrouted: boolean } | undefined {
    if (!this.resolved) return undefined;
    const r = this.router;
    let child = this.children[0];
    if (r !== undefined) {
      const i = call === undefined ? 0 : clusterOf(r, call);
      if (i < 0) return { error: new RpcError(Code.UNAVAILABLE, r.unrouted(call)), unrouted: true };
      child = this.children[i];
    }
    const members = child?.members;
    if (members === undefined || members.size === 0) {
      const problem = child === undefined ? undefined : r?.problems.get(child.name);
      const why = problem !== undefined && this.resolveError === undefined ? `cannot resolve ${this.target.raw}: ${problem}` : (this.resolveError?.message ?? `the resolver found no endpoints for ${this.target.raw}`);
      return { error: new RpcError(Code.UNAVAILABLE, why, { cause: this.resolveError }), unrouted: false };
    }
    let last: unknown;
    let unhealthy = 0;
    for (const m of members.values()) {
      const s = m instanceof ClusterView ? (m.sub as EndpointSubchannel<C>) : (m as EndpointSubchannel<C>);
      // As gRPC, an endpoint failing its health check counts as failing to connect.
      if (s.state === "ready" && s.serving === false) unhealthy++;
      else if (s.state !== "transient_failure") return undefined;
      else last = s.lastError;
    }
    const n = members.size;
    const of = r === undefined ? this.target.raw : `${this.target.raw} (cluster ${JSON.stringify(child!.name)})`;
    if (unhealthy === n) return { error: new RpcError(Code.UNAVAILABLE, `no endpoint of ${of} (${n}) is serving ${JSON.stringify(this.options.healthCheck?.serviceName)} (health check)`), unrouted: false };
    return { error: new RpcError(Code.UNAVAILABLE, `cannot connect to any endpoint of ${of} (${n}${unhealthy > 0 ? `, ${unhealthy} not serving` : ""}): ${(last as Error)?.message ?? String(last)}`, { cause: last }), unrouted: false };
  }

  private onEndpoints(endpoints: readonly Endpoint[], router?: CallRouter): void {
    if (this.closed) return;
    if (!this.active) {
      this.pending = { endpoints, router };
      return;
    }
    this.resolved = true;
    // An empty list after an error (a resolver that lost its name) keeps the error as the reason.
    if (endpoints.length > 0 || router !== undefined) this.resolveError = undefined;
    const next = new Map<string, Endpoint>();
    for (const e of endpoints) if (!next.has(e.address)) next.set(e.address, e);
    for (const [address, s] of this.subchannels) {
      if (!next.has(address)) {
        this.subchannels.delete(address);
        s.shutdown(false);
      }
    }
    for (const [address, e] of next) {
      let s = this.subchannels.get(address);
      if (s === undefined) {
        s = new EndpointSubchannel(e, this.dialer, this.options.backoff, (sub) => this.onState(sub));
        this.subchannels.set(address, s);
      } else if (!sameAttributes(s.endpoint, e)) s.endpoint = e;
    }
    this.updateChildren(endpoints, router);
    this.settleWaiters();
  }

  /** Gives each cluster's balancer its endpoints (making the balancers of clusters new to the routes, dropping the others). */
  private updateChildren(endpoints: readonly Endpoint[], router: CallRouter | undefined): void {
    this.router = router;
    const names = router === undefined ? [""] : router.clusters;
    const old = new Map(this.children.map((c) => [c.name, c]));
    const children: Child<C>[] = names.map((name) => old.get(name) ?? { name, balancer: this.balancer(), members: new Map() });
    const index = new Map(children.map((c, i) => [c.name, i]));
    const lists: Subchannel<C>[][] = children.map(() => []);
    const seen: Set<string>[] = children.map(() => new Set());
    for (const e of endpoints) {
      const i = router === undefined ? 0 : index.get(e.cluster ?? "");
      if (i === undefined || seen[i]!.has(e.address)) continue;
      seen[i]!.add(e.address);
      const s = this.subchannels.get(e.address)!;
      // The subchannel itself where its endpoint is this one (the first place of its address), else a view.
      const prev = children[i]!.members.get(e.address);
      const member = sameAttributes(s.endpoint, e) ? s : prev instanceof ClusterView && prev.sub === s && sameAttributes(prev.endpoint, e) ? prev : new ClusterView(e, s);
      lists[i]!.push(member);
    }
    for (const [i, c] of children.entries()) c.members = new Map(lists[i]!.map((m) => [m.endpoint.address, m]));
    // In place before the balancers hear of it: an update may connect, and a state change settle waiting calls.
    this.children = children;
    this.direct = router === undefined ? children[0]!.balancer : router.fixed >= 0 ? children[router.fixed]?.balancer : undefined;
    for (const [i, c] of children.entries()) c.balancer.update(lists[i]!);
  }

  private onResolveError(err: KoalaError): void {
    if (this.closed) return;
    this.resolved = true;
    this.resolveError = err;
    logLimited("client.resolve-failed", "warn", "client", err.message);
    this.settleWaiters();
  }

  /** Tells the balancers that have `s` among their members that it changed. */
  private notify(s: EndpointSubchannel<C>): void {
    for (const c of this.children) {
      const m = c.members.get(s.endpoint.address);
      if (m !== undefined && (m === s || (m as ClusterView<C>).sub === s)) c.balancer.onStateChange(m);
    }
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
    this.notify(s);
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
    this.notify(s);
    this.settleWaiters();
  }

  /** Hands the waiting calls a connection, or fails those that should not wait any more. */
  private settleWaiters(): void {
    if (this.waiters.length === 0) return;
    const waiting = this.waiters;
    this.waiters = [];
    for (const w of waiting) {
      const c = this.pick(w.call);
      if (c !== undefined) {
        w.resolve(c);
        continue;
      }
      const failure = this.failFastReason(w.call);
      if (failure !== undefined && (failure.unrouted || w.waitForReady === undefined || !w.waitForReady())) w.reject(failure.error);
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

/** True when two endpoints of one address carry the same balancing attributes. */
function sameAttributes(a: Endpoint, b: Endpoint): boolean {
  return a.weight === b.weight && a.locality === b.locality && a.localityWeight === b.localityWeight && a.priority === b.priority && a.cluster === b.cluster;
}

/** A resolver failure, as resolvers report it. */
export function resolveFailed(target: Target, why: string, cause?: unknown): KoalaError {
  return new KoalaError(ErrorCode.RESOLVE_FAILED, `cannot resolve ${target.raw}: ${why}`, { cause });
}
