/**
 * The seam between rpc's channel and the cluster layer. A channel asks a {@link ConnectionSource}
 * for the connection of each call; behind it, a resolver turns the target into endpoints, one
 * {@link Subchannel} per endpoint keeps its connection (with its connectivity state and
 * reconnect backoff), and a balancer picks among the ready ones. The cluster layer never sees
 * an RPC frame: connections are whatever the rpc layer's {@link Dialer} makes, typed `C`.
 */
import type { KoalaError } from "../errors.js";
import type { Target } from "./target.js";

/** One place a target's calls can go: a transport address (`tcp://10.0.0.1:50051`, `host:port`, `unix:/path`). */
export interface Endpoint {
  /** The transport address; a scheme-less one gets the transport KOALA_TRANSPORT picks, per endpoint. */
  readonly address: string;
  /**
   * Relative weight for weighted balancers (`weighted_round_robin`): an integer ≥ 1, default 1.
   * A resolver sets it (`static:///a:1;weight=3,b:2`; xDS from its locality / endpoint weights).
   */
  readonly weight?: number;
  /**
   * The group the endpoint belongs to (xDS: its cluster and locality), for the
   * `weighted_locality` balancer: calls are split over groups by {@link localityWeight} and
   * evenly over the ready endpoints of each group, so a group keeps its share while some of
   * its endpoints are down (as gRPC's weighted_target over round_robin).
   */
  readonly locality?: string;
  /** The weight of {@link locality} (every endpoint of a group gives the same): an integer ≥ 1, default 1. */
  readonly localityWeight?: number;
  /**
   * For `weighted_locality`: calls go to the lowest priority (0 first, the default) that has a
   * ready endpoint, as gRPC's xDS priorities fail over. Other balancers ignore it.
   */
  readonly priority?: number;
  /**
   * The cluster it belongs to, when the resolver routes calls per method (xDS: a route names
   * clusters, see {@link CallRouter}); each cluster gets a balancer of its own over its endpoints.
   * An address in two clusters has one connection, shared.
   */
  readonly cluster?: string;
}

/**
 * What the cluster layer sees of a call it routes: its method path and its request metadata.
 * The rpc layer's client call is one (the cluster layer never imports rpc).
 */
export interface RoutedCall {
  /** `/package.Service/Method`. */
  readonly path: string;
  /** The request metadata (read only when a route matches on headers). */
  readonly metadata: { getAll(key: string): readonly (string | Uint8Array)[] };
  /**
   * The call's route, once the source chose it (it sets it on the call's first routed pick):
   * every later pick of the call (a retry, a resend after a GOAWAY) goes the same way, as a
   * route with a `runtime_fraction` or `weighted_clusters` is a random choice.
   */
  route?: CallRoute | undefined;
  /**
   * Called by the source when it chose the call's route and the route has a timeout: the call's
   * deadline becomes the earlier of its own and `timeoutMs` from now.
   */
  limitDeadline?(timeoutMs: number): void;
}

/**
 * A {@link CallRouter}'s choice for one call: its cluster and its route's timeout. A router
 * makes these once per route and cluster, so routing a call allocates nothing.
 */
export interface CallRoute {
  /** The index of the cluster in the {@link CallRouter.clusters} of the router that chose it; -1: no route matches the call. */
  readonly cluster: number;
  /** That cluster's name (a later router finds it by name). */
  readonly name: string;
  /** The call's timeout from the route, in milliseconds; undefined: none. */
  readonly timeoutMs: number | undefined;
}

/**
 * Per-call routing a resolver gives with its endpoints (xDS: a virtual host's route list). The
 * source keeps one balancer per entry of {@link clusters}, over the endpoints whose
 * {@link Endpoint.cluster} names it, and picks each call's connection in the cluster `route()` gives.
 */
export interface CallRouter {
  /** The clusters the routes name, in a fixed order (route() answers an index into it). */
  readonly clusters: readonly string[];
  /**
   * The index in {@link clusters} every call goes to when routing does not depend on the call
   * (one route matching everything, to one cluster, without a timeout), else -1: then `route()` runs per call.
   */
  readonly fixed: number;
  /** The route of `call` (its `cluster` -1 when no route matches it). Once per call: synchronous, allocation-free. */
  route(call: RoutedCall): CallRoute;
  /** Why `call` fails when no route matches it (a call with no route fails with UNAVAILABLE and this message). */
  unrouted(call: RoutedCall | undefined): string;
  /** Why a cluster has no endpoints, by name, for the calls routed there (it does not exist, its endpoints are missing, …). */
  readonly problems: ReadonlyMap<string, string>;
}

/** What a resolver reports to. */
export interface ResolverListener {
  /**
   * The complete list of endpoints now (it replaces the previous one; the order is the
   * resolver's), and the routing of calls among their clusters when the resolver routes per
   * call (else every call may go to every endpoint).
   */
  onEndpoints(endpoints: readonly Endpoint[], router?: CallRouter): void;
  /** Resolution failed (KOALA_ERR_RESOLVE_FAILED naming the target and why); endpoints already known stay in use. */
  onError(error: KoalaError): void;
}

/** A running resolution of one target. */
export interface Resolver {
  /** Asks for a fresh resolution soon (a connection failed); the resolver rate-limits these. */
  refresh(): void;
  /** Stops resolving; no more reports. */
  close(): void;
}

/** Settings every resolver gets. */
export interface ResolverOptions {
  /** Fewest milliseconds between two resolutions of one target, however often refresh() is asked. */
  readonly minResolveIntervalMs: number;
}

/**
 * Starts resolving `target` (its `scheme` is the one the factory was registered for). Throws
 * KOALA_ERR_INVALID_ADDRESS at once for a target it cannot read; reports endpoints (or an
 * error) to `listener` from then on, never synchronously from the factory call.
 */
export type ResolverFactory = ((target: Target, listener: ResolverListener, options: ResolverOptions) => Resolver) & {
  /** The balancer of this resolver's targets when the channel names none (`xds`: weighted_locality, as the control plane's weights mean); else pick_first. */
  readonly defaultBalancer?: string;
};

/** Connectivity states of a subchannel, as gRPC names them. */
export type ConnectivityState = "idle" | "connecting" | "ready" | "transient_failure" | "shutdown";

/** A connection as the cluster layer holds it for the rpc layer. */
export interface PooledConnection {
  /** True while new calls may be opened on it. */
  readonly usable: boolean;
  /** True once it closed for good. */
  readonly isClosed: boolean;
  /** Calls open on it now (least-outstanding balancing reads it). */
  readonly outstanding: number;
  /** The transport it runs on (`tcp`, `rdma`, …): with a scheme-less address, KOALA_TRANSPORT's choice for this endpoint. */
  readonly transport?: string;
  /** Settles once it closed. */
  readonly closed: Promise<unknown>;
  /** Closes it; calls still open on it fail with UNAVAILABLE. */
  close(): void;
  /** Takes no new calls (`usable` turns false) and closes once the calls open on it ended. */
  drain(): void;
  /**
   * Set by the cluster layer when outlier detection is on; the rpc layer calls it as each call
   * on this connection ends: `failed` for UNAVAILABLE (the endpoint or its transport failed),
   * false for any other status the server answered. Calls cancelled or past their deadline are
   * not reported (they say nothing about the endpoint).
   */
  callEnded?: ((failed: boolean) => void) | undefined;
}

/** A running health check of one connection (see {@link HealthChecker}). */
export interface HealthWatch {
  /** Stops checking; no more reports. */
  close(): void;
}

/**
 * Watches the health of `serviceName` over `connection` (a ready connection the rpc layer's
 * dialer made) and reports every change: `serving` true for SERVING, false otherwise. It is
 * registered by a layer above rpc (src/health: `setupHealthChecking()`) because checking makes
 * a call; the cluster layer only starts and stops it.
 */
export type HealthChecker = (connection: PooledConnection, serviceName: string, report: (serving: boolean) => void) => HealthWatch;

/** Dials one endpoint: resolves with a connection ready for calls, rejects with the reason. */
export type Dialer<C extends PooledConnection> = (endpoint: Endpoint) => Promise<C>;

/** The connection to one endpoint, as a balancer sees it. */
export interface Subchannel<C extends PooledConnection> {
  /** The endpoint. */
  readonly endpoint: Endpoint;
  /** Its state now. */
  readonly state: ConnectivityState;
  /** The connection while `state` is "ready", else undefined. */
  readonly connection: C | undefined;
  /**
   * True when calls may be picked here: ready, not failing its health check (when the channel
   * checks health) and not ejected as an outlier. Balancers pick only among these.
   */
  readonly pickable: boolean;
  /** Starts connecting if idle (a subchannel backing off connects when its backoff ends). */
  requestConnection(): void;
}

/**
 * Picks the connection of each call among subchannels. The source calls `update` with every
 * resolver change and `onStateChange` with every state change; `pick` runs once per call and
 * must be synchronous and allocate nothing.
 */
export interface Balancer<C extends PooledConnection> {
  /** The subchannels to balance over now, in the resolver's order (a removed one is already shut down). */
  update(subchannels: readonly Subchannel<C>[]): void;
  /** `subchannel` changed state. */
  onStateChange(subchannel: Subchannel<C>): void;
  /** A ready connection for the next call, or undefined when there is none. */
  pick(): C | undefined;
  /**
   * Set by the source: the balancer calls it when picks may succeed now without any
   * subchannel having changed state (weighted_locality: a failover timer fired), so that calls
   * waiting for a connection get one.
   */
  onPicker?: (() => void) | undefined;
}

/** Makes a balancer; `options` are the balancer's own (checked by it, an unknown key an error naming it). */
export type BalancerFactory = <C extends PooledConnection>(options: Readonly<Record<string, unknown>>) => Balancer<C>;

/** What the rpc layer's channel asks for the connection of each call. */
export interface ConnectionSource<C extends PooledConnection> {
  /**
   * The connection for the next call, or undefined when none is ready now (then {@link wait}).
   * Runs per call: synchronous, allocation-free. `call` is the call's method and metadata, for
   * targets that route per call (xDS); without it, a routed target uses its first cluster.
   */
  pick(call?: RoutedCall): C | undefined;
  /**
   * The slow path: connects if nothing is connecting, and resolves with a connection once one is
   * ready. Rejects with UNAVAILABLE at once while every endpoint is backing off after a failure,
   * unless `waitForReady()` says to keep waiting (until the call's deadline or cancellation), and
   * at once when no route matches `call` (a routed target).
   */
  wait(waitForReady?: () => boolean, call?: RoutedCall): Promise<C>;
  /** The endpoints now, with their connectivity states and calls open (for `koala info`, dashboards and tests). */
  endpoints(): EndpointState[];
  /** Closes every connection and stops resolving; later calls fail with UNAVAILABLE. */
  close(): void;
}

/** One endpoint of a channel as {@link ConnectionSource.endpoints} reports it. */
export interface EndpointState {
  /** Its transport address. */
  readonly address: string;
  /** Its connectivity state. */
  readonly state: ConnectivityState;
  /** Calls open on its connection. */
  readonly outstanding: number;
  /** Its health check's verdict: undefined when not checked (or not ready), "unknown" until the first answer. */
  readonly health?: "serving" | "not_serving" | "unknown";
  /** With outlier detection on: true while ejected (calls are not picked here; its connection stays). */
  readonly ejected?: boolean;
  /** Its weight, when the resolver gave one (see {@link Endpoint.weight}). */
  readonly weight?: number;
  /** Its locality, its weight and its priority, when the resolver gave them (xDS: see {@link Endpoint.locality}). */
  readonly locality?: { readonly name: string; readonly weight: number; readonly priority: number };
  /** The transport its connection runs on, while it has one (`rdma`, `tcp`, …: chosen per endpoint). */
  readonly transport?: string;
}
