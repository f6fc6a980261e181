/**
 * The cluster layer: from a channel's target to the connection of each call. It sits between
 * transport and proto in the layer order (it imports transport's types and errors, and the rpc
 * layer imports it), so rpc's channel depends on the seam's interfaces ({@link ConnectionSource},
 * {@link Dialer}, {@link PooledConnection}) and the cluster layer never imports rpc: the channel
 * hands it a dialer that makes rpc connections. Parts that need RPC calls of their own (health
 * checks, an xDS client) live above rpc and plug in through the same registries.
 *
 * A target that is one transport address (`tcp://h:p`, `unix:/p`, `h:p`, …) gets a
 * {@link SingleAddressSource}: one connection, a field load per call, as before the seam.
 * A target whose scheme has a registered resolver (`static:///a:1,b:2`, `dns:///name:port`)
 * gets a resolver, one subchannel per endpoint, and the balancer named by the channel's
 * `loadBalancing` option.
 *
 * Managed mode (planned, `managed:` targets): the application's calls go over shared memory to a
 * per-host daemon that owns the real connections, the policies and the balancing. It plugs into
 * this seam without touching rpc: a `managed` resolver resolves `managed:///orders` to one
 * endpoint, the daemon's shared-memory address (`shm:/run/koala/<uid>/daemon`, a transport of
 * src/managed/ registered like tcp), carrying the real target for the daemon to resolve on its
 * side; `pick_first` over that one endpoint makes the channel's path a field load again. The
 * daemon itself runs this same layer (resolvers, subchannels, balancers) for the targets its
 * clients name, so the two modes share one implementation and an application switches with the
 * target string alone.
 */
import { parseTarget } from "./target.js";
import { balancerFor, registerBalancer, registerResolver, registeredHealthChecker, resolverFor } from "./registry.js";
import { ErrorCode, KoalaError } from "../errors.js";
import type { OutlierDetectionSettings } from "./outlier.js";
import { SingleAddressSource } from "./single.js";
import { ClusterSource } from "./source.js";
import { leastOutstanding, pickFirst, roundRobin, weightedLocality, weightedRoundRobin } from "./balancers.js";
import { staticResolver } from "./static.js";
import { dnsResolver } from "./dns.js";
import { xdsResolver } from "./xds/resolver.js";
import type { BackoffOptions } from "./backoff.js";
import type { ConnectionSource, Dialer, PooledConnection } from "./types.js";
import { trackSource } from "./live.js";

export type { BackoffOptions } from "./backoff.js";
export { Backoff } from "./backoff.js";
export { parseTarget, type Target } from "./target.js";
export { registerResolver, resolverFor, registeredResolvers, registerBalancer, balancerFor, registeredBalancers, registerHealthChecker, registeredHealthChecker } from "./registry.js";
export type { OutlierDetectionSettings } from "./outlier.js";
export { SingleAddressSource } from "./single.js";
export { ClusterSource, resolveFailed } from "./source.js";
export { liveChannels, onChannelCreated, type ChannelView } from "./live.js";
export type * from "./types.js";

let ready = false;

/**
 * Registers the built-in resolvers (`static`, `dns`, `xds`) and balancers (`pick_first`,
 * `round_robin`, `least_outstanding`, `weighted_round_robin`, `weighted_locality`), unless something is registered under those names
 * already. Idempotent; {@link createConnectionSource} calls it.
 */
export function setupCluster(): void {
  if (ready) return;
  ready = true;
  if (resolverFor("static") === undefined) registerResolver("static", staticResolver);
  if (resolverFor("dns") === undefined) registerResolver("dns", dnsResolver);
  if (resolverFor("xds") === undefined) registerResolver("xds", xdsResolver);
  for (const [name, factory] of [["pick_first", pickFirst], ["round_robin", roundRobin], ["least_outstanding", leastOutstanding], ["weighted_round_robin", weightedRoundRobin], ["weighted_locality", weightedLocality]] as const) {
    try {
      balancerFor(name);
    } catch {
      registerBalancer(name, factory);
    }
  }
}

/** How a channel's connection source behaves. */
export interface SourceOptions {
  /** Reconnect backoff of a single-address target. */
  readonly backoff: BackoffOptions;
  /** Reconnect backoff of each endpoint of a resolved target. */
  readonly endpointBackoff: BackoffOptions;
  /** The balancer of a resolved target (a registered name); "" for the resolver's default (pick_first unless the resolver names one). */
  readonly balancer: string;
  /** The balancer's own options. */
  readonly balancerOptions: Readonly<Record<string, unknown>>;
  /** Fewest ms between two resolutions of the target. */
  readonly minResolveIntervalMs: number;
  /** The service each ready endpoint of a resolved target watches (`grpc.health.v1.Health/Watch`); undefined: no health checking. */
  readonly healthCheckServiceName?: string;
  /** Outlier ejection of the endpoints of a resolved target; undefined: off. */
  readonly outlierDetection?: OutlierDetectionSettings;
}

/**
 * The connection source for `target`: a single address, or (when its scheme has a registered
 * resolver) the endpoints it resolves to, balanced by `options.balancer`. Throws
 * KOALA_ERR_INVALID_ADDRESS for a target its resolver cannot read and KOALA_ERR_UNKNOWN_NAME for
 * a balancer that is not registered (also for a single address: a misspelling shows at once),
 * and KOALA_ERR_UNKNOWN_NAME when health checking is asked for and no checker is registered.
 * Health checking and outlier ejection apply to resolved targets only (a single address has no
 * other endpoint to send calls to).
 */
export function createConnectionSource<C extends PooledConnection>(target: string, dialer: Dialer<C>, options: SourceOptions): ConnectionSource<C> {
  const made = makeSource(target, dialer, options);
  trackSource(made.source, target, made.balancer);
  return made.source;
}

/** The source for `target` and the name of its balancer ("" for a single address). */
function makeSource<C extends PooledConnection>(target: string, dialer: Dialer<C>, options: SourceOptions): { source: ConnectionSource<C>; balancer: string } {
  setupCluster();
  if (options.balancer !== "") balancerFor(options.balancer); // a misspelling shows at once, also for a single address
  const t = parseTarget(target, (scheme) => resolverFor(scheme) !== undefined);
  // KOALA_MODE=managed (src/managed registers the resolver): the same target, through the daemon.
  const mode = process.env.KOALA_MODE;
  if (mode !== undefined && mode !== "" && mode !== "library" && mode !== "managed") throw new KoalaError(ErrorCode.INVALID_ARGUMENT, `KOALA_MODE=${JSON.stringify(mode)} is not one of library, managed`);
  if (mode === "managed" && t.scheme !== "managed" && !target.startsWith("shm:") && resolverFor("managed") !== undefined) return makeSource(`managed:///${target}`, dialer, options);
  const serviceName = options.healthCheckServiceName;
  const checker = registeredHealthChecker();
  if (serviceName !== undefined && checker === undefined) {
    throw new KoalaError(ErrorCode.UNKNOWN_NAME, "health checking needs a registered health checker: call setupHealthChecking() (the package entry does) or registerHealthChecker()");
  }
  if (t.scheme === undefined) return { source: new SingleAddressSource({ address: target }, dialer, options.backoff), balancer: "" };
  const resolver = resolverFor(t.scheme)!;
  const balancer = options.balancer !== "" ? options.balancer : (resolver.defaultBalancer ?? "pick_first");
  const makeBalancer = balancerFor(balancer);
  const source = new ClusterSource<C>(t, resolver, () => makeBalancer<C>(options.balancerOptions), dialer, {
    backoff: options.endpointBackoff,
    minResolveIntervalMs: options.minResolveIntervalMs,
    ...(serviceName === undefined ? {} : { healthCheck: { serviceName, checker: checker! } }),
    ...(options.outlierDetection === undefined ? {} : { outlierDetection: options.outlierDetection }),
  });
  return { source, balancer };
}
