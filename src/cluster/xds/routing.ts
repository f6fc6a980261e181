/**
 * Per-call routing of an xds target: a virtual host's routes, tried in order for each call
 * (its method path and request metadata), the first that matches giving the cluster; a
 * `weighted_clusters` route spreads its calls over its clusters by weight. What a match means
 * follows grpc-js-xds 1.14 (matcher.ts and route.ts there): the path matchers compare the
 * whole `/package.Service/Method`, `case_sensitive: false` lowers both sides (not for a
 * regex), a regex must match the whole value; a header matcher reads all values of the key
 * joined with ",", never matches a `-bin` key, reads `content-type` as `application/grpc`,
 * fails on a missing key (then `invert_match` makes it match); `runtime_fraction` takes its
 * default value's share of the calls at random. A call no route matches fails with UNAVAILABLE.
 * A route's timeout (gRPC's A31: the route's own, else the listener's default; 0 none) comes
 * with its cluster in the {@link CallRoute} the call keeps.
 */
import type { CallRoute, CallRouter, RoutedCall } from "../types.js";
import { smoothOrder } from "../balancers.js";
import type { HeaderMatch, Route, ValueMatch, VirtualHost } from "./resources.js";

const INTEGER = /^-?\d+$/;

/** True when `value` matches `m`. */
export function matchValue(m: ValueMatch, value: string): boolean {
  switch (m.kind) {
    case "exact":
      return m.ignoreCase ? value.toLowerCase() === m.value.toLowerCase() : value === m.value;
    case "prefix":
      return m.ignoreCase ? value.toLowerCase().startsWith(m.value.toLowerCase()) : value.startsWith(m.value);
    case "suffix":
      return m.ignoreCase ? value.toLowerCase().endsWith(m.value.toLowerCase()) : value.endsWith(m.value);
    case "contains":
      return m.ignoreCase ? value.toLowerCase().includes(m.value.toLowerCase()) : value.includes(m.value);
    case "regex":
      return m.regex.test(value);
    case "present":
      return true;
    case "range": {
      if (!INTEGER.test(value)) return false;
      const n = BigInt(value);
      return m.start <= n && n < m.end;
    }
    case "reject":
      return false;
  }
}

function matchHeader(h: HeaderMatch, call: RoutedCall): boolean {
  let ok: boolean;
  if (h.name.endsWith("-bin")) ok = false;
  else if (h.name === "content-type") ok = matchValue(h.match, "application/grpc");
  else {
    // The string values joined with "," (no array made per call: this runs on every call's pick).
    let joined: string | undefined;
    for (const v of call.metadata.getAll(h.name)) if (typeof v === "string") joined = joined === undefined ? v : `${joined},${v}`;
    ok = joined !== undefined && matchValue(h.match, joined);
  }
  return h.invert ? !ok : ok;
}

/** True when `route` takes `call`. */
export function routeMatches(route: Route, call: RoutedCall): boolean {
  const m = route.match;
  if (!matchValue(m.path, call.path)) return false;
  for (const h of m.headers) if (!matchHeader(h, call)) return false;
  return m.fraction === undefined || Math.random() * m.fraction.denominator < m.fraction.numerator;
}

/** True when a route takes every call whatever its path and metadata. */
function matchesAll(route: Route): boolean {
  const { path, headers, fraction } = route.match;
  return path.kind === "prefix" && path.value === "" && headers.length === 0 && fraction === undefined;
}

/** A route and where its calls go: its choice per cluster, in a smooth weighted order (weighted_clusters) or alone. */
interface RouteEntry {
  readonly route: Route;
  readonly order: readonly CallRoute[];
  next: number;
}

/** The route of a call no route matches. */
const UNROUTED: CallRoute = { cluster: -1, name: "", timeoutMs: undefined };

/** The {@link CallRouter} of one virtual host (`target` names the channel's target in errors). */
export class XdsRouter implements CallRouter {
  readonly clusters: readonly string[];
  readonly fixed: number;
  private readonly entries: RouteEntry[];

  constructor(
    readonly host: VirtualHost,
    private readonly target: string,
    readonly problems: ReadonlyMap<string, string>,
    /** The listener's timeout for routes that set none (ms; 0: none). */
    defaultTimeoutMs = 0,
  ) {
    const clusters: string[] = [];
    const indexOf = (name: string) => {
      let i = clusters.indexOf(name);
      if (i < 0) i = clusters.push(name) - 1;
      return i;
    };
    this.entries = host.routes.map((route) => {
      const t = route.timeoutMs ?? defaultTimeoutMs;
      const timeoutMs = t > 0 ? t : undefined;
      const choices = route.clusters.map((c): CallRoute => ({ cluster: indexOf(c.name), name: c.name, timeoutMs }));
      const order = choices.length === 1 ? choices : smoothOrder(route.clusters.map((c) => c.weight)).map((k) => choices[k]!);
      return { route, order, next: Math.floor(Math.random() * order.length) };
    });
    this.clusters = clusters;
    const first = this.entries[0];
    this.fixed = first !== undefined && matchesAll(first.route) && first.order.length === 1 && first.order[0]!.timeoutMs === undefined ? first.order[0]!.cluster : -1;
  }

  route(call: RoutedCall): CallRoute {
    for (const e of this.entries) {
      if (!routeMatches(e.route, call)) continue;
      const o = e.order;
      if (o.length === 1) return o[0]!;
      const i = e.next;
      e.next = i + 1 >= o.length ? 0 : i + 1;
      return o[i]!;
    }
    return UNROUTED;
  }

  unrouted(call: RoutedCall | undefined): string {
    return `failed to route call to method ${call?.path ?? "(none)"}: no route of xDS virtual host ${JSON.stringify(this.host.name)} (${this.target}) matches it`;
  }
}
