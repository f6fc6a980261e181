/**
 * The `xds` resolver: `xds:///orders` follows the chain the control plane serves over the
 * process's shared ADS stream — Listener `orders` (name from the bootstrap's template) → its
 * RouteConfiguration (inline or RDS) → the virtual host whose domains match `orders` → the
 * clusters its routes name → Cluster (EDS) → ClusterLoadAssignment — and reports the endpoints
 * with weights, each with its cluster, and the router that picks a call's route (routing.ts),
 * again at every change anywhere in the chain.
 *
 * Weights reproduce the per-endpoint shares grpc-js-xds 1.14 gives under the ROUND_ROBIN
 * lb_policy (its `xds_wrr_locality` → `weighted_target` over localities → `round_robin` in each):
 * a locality's share is its `load_balancing_weight` over the sum of its priority's locality
 * weights, split evenly over its endpoints (an endpoint's own `load_balancing_weight` does not
 * count under round robin); with `weighted_clusters`, each cluster's share scales its
 * endpoints'. Only UNKNOWN and HEALTHY endpoints are used, a locality without a weight or
 * without usable endpoints is left out (and a priority left with none). Shares become integer
 * weights (per 10 000): each endpoint's locality, locality weight and priority for the
 * `weighted_locality` balancer, the default of xds targets (a locality keeps its share while
 * some of its endpoints are down, and the lowest priority with a ready endpoint takes the
 * calls, as in gRPC), and each endpoint's own share within its priority as its `weight` (for
 * `weighted_round_robin`, which ignores priorities and spreads a down endpoint's share over all
 * the others).
 *
 * Where that was read in grpc-js-xds 1.14.1 (its src/): xds-resource-type/cluster-resource-type.ts
 * turns lb_policy ROUND_ROBIN into `xds_wrr_locality` with a `round_robin` child;
 * xds-dependency-manager.ts keeps UNKNOWN / HEALTHY endpoints, skips a locality without
 * load_balancing_weight or left without endpoints, and collapses empty priorities;
 * load-balancer-xds-wrr-locality.ts gives `weighted_target` each locality's weight;
 * load-balancer-weighted-target.ts picks at random by weight among the READY localities
 * (koala's smooth weighted order gives the same shares without the noise); the endpoint weight
 * (locality × endpoint weight, load-balancer-cds.ts) is read only by ring_hash / custom
 * policies; load-balancer-priority.ts uses the lowest READY priority, failing over on
 * TRANSIENT_FAILURE or after 10 s of connecting.
 */
import { ErrorCode, KoalaError } from "../../errors.js";
import { resolveFailed } from "../source.js";
import type { Target } from "../target.js";
import type { Endpoint, Resolver, ResolverFactory, ResolverListener } from "../types.js";
import { readBootstrap } from "./bootstrap.js";
import { xdsClientFor, type ResourceWatcher, type XdsClient } from "./client.js";
import { RESOURCE_TYPES, type ClusterConfig, type EndpointsConfig, type ListenerConfig, type RouteConfig, type VirtualHost } from "./resources.js";
import { XdsRouter } from "./routing.js";

/** Integer weight units per whole share. */
const WEIGHT_SCALE = 10_000;

/** The virtual host for `host`, as gRPC chooses: an exact domain, else the longest `*.suffix`, else the longest `prefix.*`, else `*`. */
export function matchVirtualHost(hosts: readonly VirtualHost[], host: string): VirtualHost | undefined {
  const h = host.toLowerCase();
  let best: VirtualHost | undefined;
  let bestRank = 0; // 4 exact, 3 suffix, 2 prefix, 1 "*"
  let bestLen = -1;
  for (const vh of hosts) {
    for (const raw of vh.domains) {
      const d = raw.toLowerCase();
      let rank = 0;
      if (d === "*") rank = 1;
      else if (d.startsWith("*")) rank = h.endsWith(d.slice(1)) ? 3 : 0;
      else if (d.endsWith("*")) rank = h.startsWith(d.slice(0, -1)) ? 2 : 0;
      else rank = d === h ? 4 : 0;
      if (rank > bestRank || (rank === bestRank && rank > 0 && d.length > bestLen)) {
        best = vh;
        bestRank = rank;
        bestLen = d.length;
      }
    }
  }
  return best;
}

/** One endpoint's part of the calls within its priority: its share, and its locality (cluster/region/zone/sub_zone) with that locality's share. */
export interface EndpointShare {
  share: number;
  readonly locality: string;
  readonly localityShare: number;
  /** The rank of its priority among the cluster's priorities with usable endpoints (0 first, as grpc-js-xds collapses empty ones). */
  readonly priority: number;
}

/** Each endpoint's share of the calls (see the module comment), summing to 1 over the endpoints of `clusters` (keyed by cluster name). */
export function endpointShares(clusters: ReadonlyMap<string, { readonly weight: number; readonly endpoints: EndpointsConfig }>): Map<string, EndpointShare> {
  const shares = new Map<string, EndpointShare>();
  let total = 0;
  for (const c of clusters.values()) total += c.weight;
  for (const [name, c] of clusters) {
    const usable = c.endpoints.localities.filter((l) => l.addresses.length > 0);
    const priorities = [...new Set(usable.map((l) => l.priority))].sort((a, b) => a - b);
    for (const [rank, p] of priorities.entries()) {
      const localities = usable.filter((l) => l.priority === p);
      const lwTotal = localities.reduce((a, l) => a + l.weight, 0);
      for (const l of localities) {
        const localityShare = (c.weight / total) * (l.weight / lwTotal);
        for (const a of l.addresses) {
          const had = shares.get(a);
          // An address in two places adds up its shares (and stays in the first one's locality).
          if (had !== undefined) had.share += localityShare / l.addresses.length;
          else shares.set(a, { share: localityShare / l.addresses.length, locality: `${name}/${l.name}/${rank}`, localityShare, priority: rank });
        }
      }
    }
  }
  return shares;
}

interface ClusterWatch {
  stopCluster: () => void;
  stopEndpoints: (() => void) | undefined;
  edsName: string | undefined;
  endpoints: EndpointsConfig | undefined;
  /** Why this cluster has no endpoints, when it has none. */
  problem: string | undefined;
}

class XdsResolver implements Resolver {
  private readonly client: XdsClient;
  private readonly listenerName: string;
  private readonly stopListener: () => void;
  private routeName: string | undefined;
  private stopRoute: (() => void) | undefined;
  private clusters = new Map<string, ClusterWatch>();
  /** The virtual host of the target in the route configuration now. */
  private host: VirtualHost | undefined;
  /** The listener's call timeout for routes that set none (ms, 0: none). */
  private defaultTimeoutMs = 0;
  private reported = false;
  private closed = false;

  constructor(
    private readonly target: Target,
    private readonly listener: ResolverListener,
  ) {
    if (target.authority !== "") throw new KoalaError(ErrorCode.INVALID_ADDRESS, `invalid target ${JSON.stringify(target.raw)}: xds authorities are not supported (write xds:///name)`);
    if (target.path === "") throw new KoalaError(ErrorCode.INVALID_ADDRESS, `invalid target ${JSON.stringify(target.raw)}: no name (write xds:///name)`);
    const bootstrap = readBootstrap();
    this.client = xdsClientFor(bootstrap);
    this.listenerName = bootstrap.listenerTemplate.replace("%s", target.path);
    this.stopListener = this.client.watch(RESOURCE_TYPES.listener, this.listenerName, this.watcher<ListenerConfig>(`listener ${JSON.stringify(this.listenerName)}`, (l) => this.onListener(l)));
  }

  refresh(): void {} // the control plane pushes every change

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.setClusters([]);
    this.stopRoute?.();
    this.stopListener();
  }

  private watcher<T>(what: string, onResource: (v: T) => void, onMissing?: () => void): ResourceWatcher<T> {
    return {
      onResource: (v) => {
        if (!this.closed) onResource(v);
      },
      onMissing: () => {
        if (this.closed) return;
        if (onMissing !== undefined) onMissing();
        else this.fail(`xDS ${what} does not exist (control plane ${this.client.server})`, true);
      },
      onError: (m) => {
        if (!this.closed) this.fail(`xDS ${what}: ${m}`, false);
      },
    };
  }

  /** Reports a failure; `lost`: the chain is broken, so the endpoints are gone too. */
  private fail(why: string, lost: boolean): void {
    this.listener.onError(resolveFailed(this.target, why));
    if (lost && this.reported) {
      this.reported = false;
      this.listener.onEndpoints([]); // after the error: the calls that fail now carry its reason
    }
  }

  private onListener(l: ListenerConfig): void {
    const timeoutChanged = l.defaultTimeoutMs !== this.defaultTimeoutMs;
    this.defaultTimeoutMs = l.defaultTimeoutMs;
    if ("routeConfig" in l) {
      this.stopRoute?.();
      this.stopRoute = undefined;
      this.routeName = undefined;
      this.onRoute(l.routeConfig, `listener ${JSON.stringify(this.listenerName)}`);
      return;
    }
    if (l.routeConfigName === this.routeName) {
      if (timeoutChanged) this.report();
      return;
    }
    this.stopRoute?.();
    this.routeName = l.routeConfigName;
    const what = `route configuration ${JSON.stringify(l.routeConfigName)}`;
    this.stopRoute = this.client.watch(RESOURCE_TYPES.route, l.routeConfigName, this.watcher<RouteConfig>(what, (rc) => this.onRoute(rc, what)));
  }

  private onRoute(rc: RouteConfig, where: string): void {
    const vh = matchVirtualHost(rc.virtualHosts, this.target.path);
    if (vh === undefined) {
      this.host = undefined;
      this.setClusters([]);
      this.fail(`xDS ${where} has no virtual host for ${JSON.stringify(this.target.path)}`, true);
      return;
    }
    this.host = vh;
    const names: string[] = [];
    for (const r of vh.routes) for (const c of r.clusters) if (!names.includes(c.name)) names.push(c.name);
    this.setClusters(names);
    this.report();
  }

  /** Watches exactly the clusters `wanted`, stopping the others. */
  private setClusters(wanted: readonly string[]): void {
    for (const [name, cw] of this.clusters) {
      if (wanted.includes(name)) continue;
      this.clusters.delete(name);
      cw.stopEndpoints?.();
      cw.stopCluster();
    }
    for (const name of wanted) {
      if (this.clusters.has(name)) continue;
      const cw: ClusterWatch = { stopCluster: () => {}, stopEndpoints: undefined, edsName: undefined, endpoints: undefined, problem: undefined };
      this.clusters.set(name, cw);
      const what = `cluster ${JSON.stringify(name)}`;
      cw.stopCluster = this.client.watch(
        RESOURCE_TYPES.cluster,
        name,
        this.watcher<ClusterConfig>(what, (cc) => this.onCluster(cw, cc), () => this.clusterProblem(cw, `xDS ${what} does not exist (control plane ${this.client.server})`)),
      );
    }
  }

  private onCluster(cw: ClusterWatch, cc: ClusterConfig): void {
    if (cc.edsServiceName === cw.edsName) return;
    cw.stopEndpoints?.();
    cw.edsName = cc.edsServiceName;
    cw.endpoints = undefined;
    const what = `endpoints ${JSON.stringify(cc.edsServiceName)}`;
    cw.stopEndpoints = this.client.watch(
      RESOURCE_TYPES.endpoint,
      cc.edsServiceName,
      this.watcher<EndpointsConfig>(what, (e) => {
        cw.endpoints = e;
        cw.problem = undefined;
        this.report();
      }, () => this.clusterProblem(cw, `xDS ${what} do not exist (control plane ${this.client.server})`)),
    );
  }

  private clusterProblem(cw: ClusterWatch, why: string): void {
    cw.stopEndpoints?.();
    cw.stopEndpoints = undefined;
    cw.edsName = undefined;
    cw.endpoints = undefined;
    cw.problem = why;
    this.report();
  }

  /**
   * Reports the endpoints of every cluster the routes name, each with its cluster, and the
   * router of the virtual host's routes, once each cluster is known or known to be broken.
   */
  private report(): void {
    const host = this.host;
    if (host === undefined) return;
    const all = [...this.clusters.values()];
    if (all.some((c) => c.endpoints === undefined && c.problem === undefined)) return;
    const endpoints: Endpoint[] = [];
    const problems = new Map<string, string>();
    const scaled = (share: number) => Math.max(1, Math.round(share * WEIGHT_SCALE));
    for (const [name, c] of this.clusters) {
      const shares = c.endpoints === undefined ? new Map<string, EndpointShare>() : endpointShares(new Map([[name, { weight: 1, endpoints: c.endpoints }]]));
      if (shares.size === 0) problems.set(name, c.problem ?? `xDS: no healthy endpoint in cluster ${JSON.stringify(name)}`);
      for (const [address, s] of shares) endpoints.push({ address, cluster: name, weight: scaled(s.share), locality: s.locality, localityWeight: scaled(s.localityShare), priority: s.priority });
    }
    if (endpoints.length === 0 && all.length > 0) {
      const list = [...problems.values()];
      this.fail(list.every((p) => p.startsWith("xDS: no healthy endpoint")) ? `xDS: no healthy endpoint for ${JSON.stringify(this.target.path)}` : list.join("; "), true);
      return;
    }
    this.reported = true;
    this.listener.onEndpoints(endpoints, new XdsRouter(host, this.target.raw, problems, this.defaultTimeoutMs));
  }
}

/**
 * Resolves an `xds:` target (see the module comment). Throws at once KOALA_ERR_DEPENDENCY_MISSING
 * when @grpc/grpc-js or @grpc/grpc-js-xds (whose protos it loads) is not installed, and
 * KOALA_ERR_CONFIG when the bootstrap is missing or not valid.
 */
export const xdsResolver: ResolverFactory = Object.assign((target: Target, listener: ResolverListener): Resolver => new XdsResolver(target, listener), { defaultBalancer: "weighted_locality" });
