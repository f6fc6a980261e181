/**
 * A real xDS control plane for the tests: a @grpc/grpc-js server implementing
 * envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources, state of the
 * world, from the real envoy protos (the ones grpc-js-xds ships). It serves a snapshot (version +
 * resources by type) to every client stream: for each type a stream subscribed to, the resources
 * it named that the snapshot holds (all of them for an empty list: a wildcard), with a fresh
 * nonce; it pushes again whenever the snapshot changes. It records every ACK and NACK.
 *
 * Also the snapshot builders: a listener with an inline route to one cluster, an EDS cluster,
 * and an assignment of localities with weights and health.
 */
import * as grpc from "@grpc/grpc-js";
import { CLUSTER, ENDPOINT, HTTP_CONNECTION_MANAGER, LISTENER, ROUTE, ROUTER, loadXdsProtos } from "../../src/cluster/xds/protos.js";

const protos = loadXdsProtos();

type Obj = Record<string, unknown>;

/** Resources by type URL, each by name. */
export type Resources = Map<string, Map<string, Obj>>;

/** What a client said about one response. */
export interface Reply {
  readonly typeUrl: string;
  readonly version: string;
  readonly nonce: string;
  /** The NACK's error_detail message, undefined for an ACK. */
  readonly nack: string | undefined;
  /** The node's user_agent_name, as the stream's first request gave it (which client this is). */
  readonly agent: string;
}

interface StreamState {
  readonly call: grpc.ServerDuplexStream<Obj, Obj>;
  node: string;
  readonly names: Map<string, string[]>;
  readonly sent: Map<string, { version: string; nonce: string }>;
}

/** The running control plane. */
export interface ControlPlane {
  /** `127.0.0.1:port`. */
  readonly address: string;
  /** A bootstrap JSON pointing at it. */
  readonly bootstrap: string;
  /** Every ACK / NACK received, in order. */
  readonly replies: Reply[];
  /** Replaces the snapshot (a new version) and pushes it. */
  set(resources: Resources): void;
  /** The version of the snapshot now. */
  readonly version: string;
  /** Open ADS streams now. */
  streams(): number;
  stop(): Promise<void>;
}

/** Starts a control plane on 127.0.0.1 (`port`, default 0: any free one). */
export async function startControlPlane(port = 0): Promise<ControlPlane> {
  const server = new grpc.Server();
  const streams = new Set<StreamState>();
  const replies: Reply[] = [];
  let resources: Resources = new Map();
  let version = 0;
  let nonce = 0;

  const send = (s: StreamState, typeUrl: string): void => {
    const names = s.names.get(typeUrl) ?? [];
    const all = resources.get(typeUrl) ?? new Map<string, Obj>();
    const chosen = names.length === 0 ? [...all.keys()] : names.filter((n) => all.has(n));
    const n = String(++nonce);
    s.sent.set(typeUrl, { version: String(version), nonce: n });
    s.call.write({
      version_info: String(version),
      type_url: typeUrl,
      nonce: n,
      resources: chosen.map((name) => {
        const r = all.get(name)!;
        // A raw Any (`$raw`) lets a test send bytes that are no valid resource.
        return r.$raw !== undefined ? { type_url: typeUrl, value: r.$raw } : protos.pack(typeUrl, r);
      }),
    });
  };

  server.addService(
    {
      StreamAggregatedResources: {
        path: "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
        requestStream: true,
        responseStream: true,
        requestSerialize: (m: Obj) => protos.encode("envoy.service.discovery.v3.DiscoveryRequest", m),
        requestDeserialize: (b: Buffer) => protos.decode("envoy.service.discovery.v3.DiscoveryRequest", b),
        responseSerialize: (m: Obj) => protos.encode("envoy.service.discovery.v3.DiscoveryResponse", m),
        responseDeserialize: (b: Buffer) => protos.decode("envoy.service.discovery.v3.DiscoveryResponse", b),
      },
    },
    {
      StreamAggregatedResources: (call: grpc.ServerDuplexStream<Obj, Obj>) => {
        const s: StreamState = { call, node: "", names: new Map(), sent: new Map() };
        streams.add(s);
        const gone = () => streams.delete(s);
        call.on("end", () => {
          gone();
          call.end();
        });
        call.on("error", gone);
        call.on("cancelled", gone);
        call.on("data", (req: Obj) => {
          const node = req.node as Obj | undefined;
          if (node !== undefined) s.node = String(node.user_agent_name ?? "");
          const typeUrl = String(req.type_url ?? "");
          const names = ((req.resource_names as string[] | undefined) ?? []).slice().sort();
          const reqNonce = String(req.response_nonce ?? "");
          const last = s.sent.get(typeUrl);
          if (reqNonce !== "" && last !== undefined && reqNonce === last.nonce) {
            const detail = req.error_detail as Obj | undefined;
            replies.push({ typeUrl, version: last.version, nonce: reqNonce, nack: detail === undefined ? undefined : String(detail.message ?? ""), agent: s.node });
          }
          const before = s.names.get(typeUrl);
          s.names.set(typeUrl, names);
          // Answer a new subscription, a changed one, and a stream that has not had this version.
          if (before === undefined || before.join("\n") !== names.join("\n") || last === undefined || last.version !== String(version)) send(s, typeUrl);
        });
      },
    },
  );
  const bound = await new Promise<number>((resolve, reject) => server.bindAsync(`127.0.0.1:${port}`, grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))));
  const address = `127.0.0.1:${bound}`;
  return {
    address,
    bootstrap: JSON.stringify({ xds_servers: [{ server_uri: address, channel_creds: [{ type: "insecure" }], server_features: ["xds_v3"] }], node: { id: "koala-test", cluster: "test", locality: {} } }),
    replies,
    set(next) {
      resources = next;
      version++;
      for (const s of streams) for (const typeUrl of s.names.keys()) send(s, typeUrl);
    },
    get version() {
      return String(version);
    },
    streams: () => streams.size,
    stop: () =>
      new Promise<void>((resolve) => {
        for (const s of streams) s.call.end();
        server.tryShutdown(() => resolve());
        setTimeout(() => {
          server.forceShutdown();
          resolve();
        }, 1000).unref();
      }),
  };
}

/** The port of the first {@link startOracleControlPlane} of this process (0 before it). */
let oraclePort = 0;

/**
 * A control plane for a test file that drives grpc-js-xds: grpc-js-xds reads its bootstrap once
 * per process (and the test runner runs every file in one process), so each such file starts its
 * control plane on the port the first one got, and the bootstrap stays the same.
 */
export async function startOracleControlPlane(): Promise<ControlPlane> {
  const cp = await startControlPlane(oraclePort);
  oraclePort = Number(cp.address.split(":")[1]);
  return cp;
}

/** A client listener `name` with an inline route (any domain, any path) to `cluster`. */
export function listener(name: string, cluster: string): Obj {
  const hcm = {
    route_config: { name: `${name}-route`, virtual_hosts: [{ name: "all", domains: ["*"], routes: [{ match: { prefix: "" }, route: { cluster } }] }] },
    http_filters: [{ name: "router", typed_config: protos.pack(ROUTER, {}) }],
  };
  return { name, api_listener: { api_listener: protos.pack(HTTP_CONNECTION_MANAGER, hcm) } };
}

/** An EDS cluster `name` (round robin, endpoints over ADS). */
export function cluster(name: string): Obj {
  return { name, type: "EDS", lb_policy: "ROUND_ROBIN", eds_cluster_config: { eds_config: { ads: {} } }, connect_timeout: { seconds: 5 } };
}

/** One locality of an assignment: its zone, weight, and endpoints (`host` at the port `portOf(host)` gives, with a health status). */
export interface LocalitySpec {
  readonly zone: string;
  readonly weight: number;
  readonly endpoints: readonly { readonly host: string; readonly health?: string }[];
  /** Default 0. */
  readonly priority?: number;
}

/** A ClusterLoadAssignment for `name`. */
export function assignment(name: string, localities: readonly LocalitySpec[], portOf: (host: string) => number): Obj {
  return {
    cluster_name: name,
    endpoints: localities.map((l) => ({
      locality: { region: "test", zone: l.zone },
      load_balancing_weight: { value: l.weight },
      priority: l.priority ?? 0,
      lb_endpoints: l.endpoints.map((e) => ({
        endpoint: { address: { socket_address: { address: e.host, port_value: portOf(e.host) } } },
        health_status: e.health ?? "HEALTHY",
      })),
    })),
  };
}

/** A client listener `name` whose routes are the RouteConfiguration `routeName`, over ADS. */
export function rdsListener(name: string, routeName: string): Obj {
  const hcm = { rds: { route_config_name: routeName, config_source: { ads: {} } }, http_filters: [{ name: "router", typed_config: protos.pack(ROUTER, {}) }] };
  return { name, api_listener: { api_listener: protos.pack(HTTP_CONNECTION_MANAGER, hcm) } };
}

/** A RouteConfiguration `name`: one virtual host for `domain` whose one route splits calls over `clusters` by weight. */
export function weightedRoute(name: string, domain: string, clusters: readonly { readonly name: string; readonly weight: number }[]): Obj {
  return {
    name,
    virtual_hosts: [
      { name: "other", domains: ["other.example"], routes: [{ match: { prefix: "" }, route: { cluster: "nowhere" } }] },
      { name: "split", domains: [domain], routes: [{ match: { prefix: "" }, route: { weighted_clusters: { clusters: clusters.map((c) => ({ name: c.name, weight: { value: c.weight } })) } } }] },
    ],
  };
}

/** Resources from lists of listeners, clusters, assignments and route configurations. */
export function snapshot(listeners: Obj[], clusters: Obj[], assignments: Obj[], routes: Obj[] = []): Resources {
  const by = (list: Obj[], key: string) => new Map(list.map((r) => [String(r[key]), r]));
  return new Map([
    [LISTENER, by(listeners, "name")],
    [ROUTE, by(routes, "name")],
    [CLUSTER, by(clusters, "name")],
    [ENDPOINT, by(assignments, "cluster_name")],
  ]);
}
