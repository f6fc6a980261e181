/**
 * The four xDS resource types as koala reads them: each decoded resource is checked and reduced
 * to what the resolver uses, or rejected with the reason (the client NACKs the response with
 * it and keeps the previous version). What is checked follows what grpc-js-xds 1.14 checks, for
 * the parts koala supports:
 *
 * - Listener: an `api_listener` holding an HttpConnectionManager whose filters, if any, end
 *   with the router; routes inline (`route_config`) or by name (`rds` over ADS).
 * - RouteConfiguration: virtual hosts with domains and their routes, in order: each route's
 *   match (`prefix`, `path` or `safe_regex` on the method path, `case_sensitive`, header
 *   matchers, `runtime_fraction`'s default) and its `cluster` or `weighted_clusters`. As
 *   grpc-js-xds: a `non_forwarding_action` route or a `cluster_header` one is kept out of the
 *   list (it never takes a call), other actions (redirect, direct_response) and other path
 *   specifiers are rejected. Each route's timeout (gRPC's A31): `max_stream_duration`'s
 *   `grpc_timeout_header_max` if set, else its `max_stream_duration`; the listener's
 *   HttpConnectionManager gives the default (`common_http_protocol_options.max_stream_duration`).
 * - Cluster: type EDS, `lb_policy` ROUND_ROBIN (the default), `eds_config` over ADS.
 * - ClusterLoadAssignment: localities with their `load_balancing_weight` and `priority`;
 *   endpoints as IP addresses with a port, no duplicates; `health_status`.
 */
import { isIP } from "node:net";
import { CLUSTER, ENDPOINT, HTTP_CONNECTION_MANAGER, LISTENER, ROUTE, ROUTER, type XdsProtos } from "./protos.js";

/** A route target: a cluster and its weight among the route's clusters. */
export interface WeightedCluster {
  readonly name: string;
  readonly weight: number;
}

/**
 * How a string (a method path, a header's value) is matched, as envoy's matchers say: `exact`,
 * `prefix`, `suffix`, `contains` (each with `ignoreCase`), `regex` (the whole value), `present`
 * (any value), `range` (an integer in [start, end)), `reject` (nothing: a matcher koala does not know, as grpc-js-xds).
 */
export type ValueMatch =
  | { readonly kind: "exact" | "prefix" | "suffix" | "contains"; readonly value: string; readonly ignoreCase: boolean }
  | { readonly kind: "regex"; readonly regex: RegExp; /** Its source, so that two versions compare by JSON. */ readonly source: string }
  | { readonly kind: "present" | "reject" }
  | { readonly kind: "range"; readonly start: number; readonly end: number };

/** A header matcher of a route: the metadata key, how its value (all values joined with ",") matches, and `invert`. */
export interface HeaderMatch {
  readonly name: string;
  readonly match: ValueMatch;
  readonly invert: boolean;
}

/** A route's match: the method path, every header matcher, and the fraction of calls it takes (`runtime_fraction`'s default value). */
export interface RouteMatch {
  readonly path: ValueMatch;
  readonly headers: readonly HeaderMatch[];
  /** Undefined: every call that matches the rest. */
  readonly fraction: { readonly numerator: number; readonly denominator: number } | undefined;
}

/** A forwarding route: its match and its clusters (one, weight 1, for a plain `cluster` action). */
export interface Route {
  readonly match: RouteMatch;
  readonly clusters: readonly WeightedCluster[];
  /**
   * The route's call timeout in milliseconds (A31: `max_stream_duration.grpc_timeout_header_max`
   * if set, else `max_stream_duration.max_stream_duration`); 0: none; undefined: the route sets
   * neither, the listener's default applies.
   */
  readonly timeoutMs?: number | undefined;
}

/** A virtual host: its name, the domains it answers for, and its forwarding routes in order. */
export interface VirtualHost {
  readonly name: string;
  readonly domains: readonly string[];
  readonly routes: readonly Route[];
}

/** A checked RouteConfiguration. */
export interface RouteConfig {
  readonly virtualHosts: readonly VirtualHost[];
}

/**
 * A checked Listener: its routes inline, or the name of its RouteConfiguration; and the call
 * timeout of routes that set none, in milliseconds (its HttpConnectionManager's
 * `common_http_protocol_options.max_stream_duration`; 0 or unset: none).
 */
export type ListenerConfig = ({ readonly routeConfigName: string } | { readonly routeConfig: RouteConfig }) & { readonly defaultTimeoutMs: number };

/** A checked Cluster. */
export interface ClusterConfig {
  /** The ClusterLoadAssignment to watch: `eds_cluster_config.service_name`, else the cluster's name. */
  readonly edsServiceName: string;
}

/** One locality of an assignment, with the endpoints that may take calls. */
export interface Locality {
  /** region/zone/sub_zone. */
  readonly name: string;
  readonly weight: number;
  readonly priority: number;
  /** `ip:port` of its endpoints whose health_status is UNKNOWN or HEALTHY. */
  readonly addresses: readonly string[];
}

/** A checked ClusterLoadAssignment. */
export interface EndpointsConfig {
  readonly localities: readonly Locality[];
}

/** What checking one resource gives: its name, and its value or why it is rejected. */
export type Checked<T> = { readonly name: string; readonly value: T } | { readonly name: string; readonly error: string };

/** A resource type: its type URL, whether a state-of-the-world response lists all of them, and its check. */
export interface ResourceType<T> {
  readonly typeUrl: string;
  /** True for listeners and clusters: one missing from a response no longer exists. */
  readonly allInEveryResponse: boolean;
  check(protos: XdsProtos, resource: Record<string, unknown>): Checked<T>;
}

type Obj = Record<string, unknown>;
const obj = (v: unknown): Obj | undefined => (typeof v === "object" && v !== null ? (v as Obj) : undefined);
const arr = (v: unknown): Obj[] => (Array.isArray(v) ? (v as Obj[]) : []);
const str = (v: unknown): string => (typeof v === "string" ? v : "");
const num = (v: unknown): number => (typeof v === "number" ? v : 0);
/** The value of a google.protobuf.UInt32Value, or undefined when unset. */
const uint32Value = (v: unknown): number | undefined => (obj(v) === undefined ? undefined : num(obj(v)!.value));

/** A google.protobuf.Duration in milliseconds (rounded up, so that a positive one is never 0), or undefined when unset. */
function durationMs(v: unknown): number | undefined {
  const d = obj(v);
  if (d === undefined) return undefined;
  return Math.max(0, num(d.seconds) * 1000 + Math.ceil(num(d.nanos) / 1e6));
}

/** A regular expression matching a whole value (RE2 syntax, read by JavaScript's engine: the common subset is the same); an invalid one is an error. */
function regexMatch(source: string, where: string, errors: string[]): ValueMatch {
  try {
    return { kind: "regex", regex: new RegExp(`^(?:${source})$`, "u"), source };
  } catch (err) {
    errors.push(`${where}: invalid regex ${JSON.stringify(source)}: ${(err as Error).message}`);
    return { kind: "reject" };
  }
}

const FRACTION_DENOMINATORS: Readonly<Record<string, number>> = { HUNDRED: 100, TEN_THOUSAND: 10_000, MILLION: 1_000_000 };

/** An envoy StringMatcher. */
function stringMatch(m: Obj, where: string, errors: string[]): ValueMatch {
  const ignoreCase = m.ignore_case === true;
  switch (m.match_pattern) {
    case "exact":
    case "prefix":
    case "suffix":
    case "contains":
      return { kind: m.match_pattern, value: str(m[m.match_pattern]), ignoreCase };
    case "safe_regex":
      return regexMatch(str(obj(m.safe_regex)?.regex), `${where}.safe_regex`, errors);
    default:
      return { kind: "reject" };
  }
}

function headerMatch(h: Obj, where: string, errors: string[]): HeaderMatch {
  const name = str(h.name);
  let match: ValueMatch;
  switch (h.header_match_specifier) {
    case "exact_match":
    case "prefix_match":
    case "suffix_match":
      match = { kind: h.header_match_specifier.slice(0, -"_match".length) as "exact" | "prefix" | "suffix", value: str(h[h.header_match_specifier]), ignoreCase: false };
      break;
    case "safe_regex_match":
      match = regexMatch(str(obj(h.safe_regex_match)?.regex), `${where}.safe_regex_match`, errors);
      break;
    case "range_match": {
      const r = obj(h.range_match) ?? {};
      match = { kind: "range", start: Math.trunc(num(r.start)), end: Math.trunc(num(r.end)) };
      break;
    }
    case "present_match":
      match = { kind: "present" };
      break;
    case "string_match":
      match = stringMatch(obj(h.string_match) ?? {}, `${where}.string_match`, errors);
      break;
    case undefined:
      match = { kind: "reject" };
      break;
    default:
      errors.push(`${where}: unsupported header_match_specifier ${JSON.stringify(h.header_match_specifier)}`);
      match = { kind: "reject" };
  }
  return { name, match, invert: h.invert_match === true };
}

function routeMatch(m: Obj, where: string, errors: string[]): RouteMatch {
  // A BoolValue holding false decodes without its field: present and not true means false.
  const ignoreCase = obj(m.case_sensitive) !== undefined && obj(m.case_sensitive)!.value !== true;
  let path: ValueMatch;
  switch (m.path_specifier) {
    case "prefix":
      path = { kind: "prefix", value: str(m.prefix), ignoreCase };
      break;
    case "path":
      path = { kind: "exact", value: str(m.path), ignoreCase };
      break;
    case "safe_regex":
      // As grpc-js-xds, case_sensitive does not apply to a regex.
      path = regexMatch(str(obj(m.safe_regex)?.regex), `${where}.safe_regex`, errors);
      break;
    case undefined:
      errors.push(`${where}: no path_specifier set`);
      path = { kind: "reject" };
      break;
    default:
      errors.push(`${where}: unsupported path_specifier ${JSON.stringify(m.path_specifier)}`);
      path = { kind: "reject" };
  }
  const headers = arr(m.headers).map((h, k) => headerMatch(h, `${where}.headers[${k}]`, errors));
  const dv = obj(obj(m.runtime_fraction)?.default_value);
  const fraction = dv === undefined ? undefined : { numerator: num(dv.numerator), denominator: FRACTION_DENOMINATORS[str(dv.denominator) || "HUNDRED"] ?? 100 };
  return { path, headers, fraction };
}

function routeConfig(rc: Obj, errors: string[]): RouteConfig {
  const virtualHosts: VirtualHost[] = [];
  for (const [i, vh] of arr(rc.virtual_hosts).entries()) {
    const domains = arr(vh.domains) as unknown as string[];
    if (domains.length === 0) errors.push(`virtual_hosts[${i}] has no domains`);
    for (const d of domains) if (typeof d !== "string" || d === "" || (d.indexOf("*") > 0 && d.indexOf("*") < d.length - 1) || d.split("*").length > 2) errors.push(`virtual_hosts[${i}]: invalid domain ${JSON.stringify(d)}`);
    const routes: Route[] = [];
    for (const [j, r] of arr(vh.routes).entries()) {
      const where = `virtual_hosts[${i}].routes[${j}]`;
      const m = obj(r.match);
      if (m === undefined) errors.push(`${where}.match unset`);
      const match = routeMatch(m ?? {}, `${where}.match`, errors);
      if (r.action === "non_forwarding_action") continue; // as grpc-js-xds: never takes a call
      if (r.action !== "route") {
        errors.push(`${where}: unsupported action ${JSON.stringify(r.action ?? "unset")}`);
        continue;
      }
      const action = obj(r.route)!;
      let clusters: WeightedCluster[];
      if (action.cluster_specifier === "cluster") {
        if (str(action.cluster) === "") errors.push(`${where}.route.cluster is empty`);
        clusters = [{ name: str(action.cluster), weight: 1 }];
      } else if (action.cluster_specifier === "weighted_clusters") {
        const list = arr(obj(action.weighted_clusters)?.clusters);
        clusters = list.map((c) => ({ name: str(c.name), weight: uint32Value(c.weight) ?? 0 }));
        if (clusters.some((c) => c.name === "")) errors.push(`${where}.route.weighted_clusters has a cluster without a name`);
        const total = clusters.reduce((a, c) => a + c.weight, 0);
        if (total <= 0) errors.push(`${where}.route.weighted_clusters: total weight is 0`);
        if (total > 0xffff_ffff) errors.push(`${where}.route.weighted_clusters: total weight is more than 2^32 - 1`);
        clusters = clusters.filter((c) => c.weight > 0);
      } else if (action.cluster_specifier === "cluster_header") continue; // as grpc-js-xds: accepted, never takes a call
      else {
        errors.push(`${where}.route: unsupported cluster_specifier ${JSON.stringify(action.cluster_specifier ?? "unset")}`);
        continue;
      }
      const msd = obj(action.max_stream_duration);
      const timeoutMs = durationMs(msd?.grpc_timeout_header_max) ?? durationMs(msd?.max_stream_duration);
      routes.push(timeoutMs === undefined ? { match, clusters } : { match, clusters, timeoutMs });
    }
    virtualHosts.push({ name: str(vh.name), domains, routes });
  }
  return { virtualHosts };
}

const listenerType: ResourceType<ListenerConfig> = {
  typeUrl: LISTENER,
  allInEveryResponse: true,
  check(protos, l) {
    const name = str(l.name);
    const errors: string[] = [];
    let value: ListenerConfig | undefined;
    try {
      const hcm = protos.unpack(obj(l.api_listener)?.api_listener, HTTP_CONNECTION_MANAGER);
      const defaultTimeoutMs = durationMs(obj(hcm.common_http_protocol_options)?.max_stream_duration) ?? 0;
      const filters = arr(hcm.http_filters);
      for (const [i, f] of filters.entries()) {
        const url = str(obj(f.typed_config)?.type_url);
        if (i < filters.length - 1 && url === ROUTER) errors.push("router filter is before the end of http_filters");
        if (i === filters.length - 1 && url !== ROUTER) errors.push(`the last http_filter is ${JSON.stringify(url)}, not the router`);
      }
      if (hcm.route_specifier === "rds") {
        const rds = obj(hcm.rds)!;
        const source = obj(rds.config_source);
        if (source?.ads === undefined && source?.self === undefined) errors.push("rds.config_source must be ads or self");
        if (str(rds.route_config_name) === "") errors.push("rds.route_config_name is empty");
        value = { routeConfigName: str(rds.route_config_name), defaultTimeoutMs };
      } else if (hcm.route_specifier === "route_config") {
        const e: string[] = [];
        value = { routeConfig: routeConfig(obj(hcm.route_config)!, e), defaultTimeoutMs };
        errors.push(...e.map((m) => `route_config: ${m}`));
      } else errors.push(`unsupported route_specifier ${JSON.stringify(hcm.route_specifier ?? "unset")}`);
    } catch (err) {
      errors.push(`api_listener: ${(err as Error).message}`);
    }
    return errors.length > 0 || value === undefined ? { name, error: `Listener ${name}: ${errors.join("; ")}` } : { name, value };
  },
};

const routeType: ResourceType<RouteConfig> = {
  typeUrl: ROUTE,
  allInEveryResponse: false,
  check(_protos, rc) {
    const name = str(rc.name);
    const errors: string[] = [];
    const value = routeConfig(rc, errors);
    return errors.length > 0 ? { name, error: `RouteConfiguration ${name}: ${errors.join("; ")}` } : { name, value };
  },
};

const clusterType: ResourceType<ClusterConfig> = {
  typeUrl: CLUSTER,
  allInEveryResponse: true,
  check(_protos, c) {
    const name = str(c.name);
    const errors: string[] = [];
    const discovery = c.cluster_discovery_type === "type" ? str(c.type) : c.cluster_discovery_type === undefined ? "STATIC" : "cluster_type";
    if (discovery !== "EDS") errors.push(`unsupported cluster type ${discovery} (koala supports EDS)`);
    const lb = c.lb_policy === undefined ? "ROUND_ROBIN" : str(c.lb_policy);
    if (lb !== "ROUND_ROBIN") errors.push(`unsupported lb_policy ${lb} (koala supports ROUND_ROBIN)`);
    if (c.load_balancing_policy !== undefined) errors.push("load_balancing_policy is not supported");
    const eds = obj(c.eds_cluster_config);
    const source = obj(eds?.eds_config);
    if (discovery === "EDS" && source?.ads === undefined && source?.self === undefined) errors.push("eds_cluster_config.eds_config must be ads or self");
    const service = str(eds?.service_name);
    return errors.length > 0 ? { name, error: `Cluster ${name}: ${errors.join("; ")}` } : { name, value: { edsServiceName: service === "" ? name : service } };
  },
};

const endpointType: ResourceType<EndpointsConfig> = {
  typeUrl: ENDPOINT,
  allInEveryResponse: false,
  check(_protos, cla) {
    const name = str(cla.cluster_name);
    const errors: string[] = [];
    const seen = new Set<string>();
    const localities: Locality[] = [];
    const priorities = new Set<number>();
    for (const [i, l] of arr(cla.endpoints).entries()) {
      const loc = obj(l.locality);
      if (loc === undefined) {
        errors.push(`endpoints[${i}].locality unset`);
        continue;
      }
      const locName = `${str(loc.region)}/${str(loc.zone)}/${str(loc.sub_zone)}`;
      const priority = num(l.priority);
      if (localities.some((x) => x.name === locName && x.priority === priority)) errors.push(`endpoints[${i}]: locality ${locName} appears twice at priority ${priority}`);
      priorities.add(priority);
      const addresses: string[] = [];
      for (const [j, e] of arr(l.lb_endpoints).entries()) {
        const where = `endpoints[${i}].lb_endpoints[${j}]`;
        const sa = obj(obj(obj(e.endpoint)?.address)?.socket_address);
        if (sa === undefined) {
          errors.push(`${where}: endpoint.address.socket_address unset`);
          continue;
        }
        const ip = str(sa.address);
        if (sa.port_specifier !== "port_value") errors.push(`${where}: port_value unset`);
        if (isIP(ip) === 0) errors.push(`${where}: ${JSON.stringify(ip)} is not an IP address`);
        const address = isIP(ip) === 6 ? `[${ip}]:${num(sa.port_value)}` : `${ip}:${num(sa.port_value)}`;
        if (seen.has(address)) errors.push(`${where}: ${address} appears twice`);
        seen.add(address);
        const health = e.health_status === undefined ? "UNKNOWN" : str(e.health_status);
        // As grpc-js-xds: only UNKNOWN and HEALTHY endpoints take calls.
        if (health === "UNKNOWN" || health === "HEALTHY") addresses.push(address);
      }
      const weight = uint32Value(l.load_balancing_weight);
      // A locality without a weight is not used (gRPC's rule); one with weight 0 gets no calls.
      if (weight !== undefined && weight > 0) localities.push({ name: locName, weight, priority, addresses });
    }
    for (const p of priorities) if (p > 0 && !priorities.has(p - 1)) errors.push(`endpoints have priority ${p} but not ${p - 1}`);
    return errors.length > 0 ? { name, error: `ClusterLoadAssignment ${name}: ${errors.join("; ")}` } : { name, value: { localities } };
  },
};

/** The four types, by name. */
export const RESOURCE_TYPES = { listener: listenerType, route: routeType, cluster: clusterType, endpoint: endpointType } as const;
