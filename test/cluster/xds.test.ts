/**
 * The xds resolver against a real control plane (xds-control-plane.ts: a grpc-js ADS server on
 * the real envoy protos), with grpc-js-xds 1.14 as the oracle. One snapshot holds two mirrored
 * listener / cluster / assignment sets: `orders` for koala (koala replicas) and `orders-grpc`
 * for grpc-js-xds (grpc-js servers), with the same IPs (127.0.0.2–5), localities, weights and
 * health, differing only in port. Both clients make calls; their per-IP shares must agree, and
 * must keep agreeing after the control plane pushes changes.
 */
import { test } from "uvu";
import * as assert from "uvu/assert";
import * as grpc from "@grpc/grpc-js";
import * as grpcXds from "@grpc/grpc-js-xds";
import { Code, clientChannel, closeClient, createClient, type Client } from "../../src/index.js";
import { ENDPOINT, ROUTE } from "../../src/cluster/xds/protos.js";
import { EchoService } from "../fixtures/rpc/gen/echo.js";
import { rejection, until } from "../helpers.js";
import { portOf, startReplicas, stopReplicas, type Replica } from "./replicas.js";
import { assignment, cluster, listener, rdsListener, snapshot, weightedRoute, startOracleControlPlane, type ControlPlane, type LocalitySpec } from "./xds-control-plane.js";

const HOSTS = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"];
/** Calls per share measurement, per client. */
const CALLS = 2000;
/** Largest difference allowed between two shares of one IP (the oracle picks localities at random: σ ≈ 0.011 at 2000 calls). */
const TOLERANCE = 0.05;

let cp: ControlPlane;
let koalaReplicas: Replica[];
const grpcServers: grpc.Server[] = [];
const grpcPorts = new Map<string, number>();
let koala: Client<typeof EchoService>;
let oracle: grpc.Client;

const WHO = "/test.Who/Who";

async function startGrpcBackends(): Promise<void> {
  for (const host of HOSTS) {
    const server = new grpc.Server();
    server.addService(
      { Who: { path: WHO, requestStream: false, responseStream: false, requestSerialize: (b: Buffer) => b, requestDeserialize: (b: Buffer) => b, responseSerialize: (b: Buffer) => b, responseDeserialize: (b: Buffer) => b } },
      { Who: (_call: unknown, cb: (err: null, res: Buffer) => void) => cb(null, Buffer.from(host)) },
    );
    const port = await new Promise<number>((resolve, reject) => server.bindAsync(`${host}:0`, grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))));
    grpcServers.push(server);
    grpcPorts.set(host, port);
  }
}

const koalaPort = (h: string) => portOf(koalaReplicas.find((r) => r.host === h)!);
const grpcPort = (h: string) => grpcPorts.get(h)!;

/** The split service: listener `split` (koala) / `split-grpc` (grpc-js-xds) over RDS, its route sending calls to two clusters by weight. */
let split: { weights: [number, number]; a: LocalitySpec[]; b: LocalitySpec[] } | undefined;

/** The mirrored snapshot: `localities` for both clients, each at its own backends' ports (and the split service, when set). */
function mirrored(localities: readonly LocalitySpec[], orders: (name: string, port: (h: string) => number) => Record<string, unknown> = (name, port) => assignment(name, localities, port)) {
  const listeners = [listener("orders", "orders-cluster"), listener("orders-grpc", "orders-grpc-cluster")];
  const clusters = [cluster("orders-cluster"), cluster("orders-grpc-cluster")];
  const assignments = [orders("orders-cluster", koalaPort), orders("orders-grpc-cluster", grpcPort)];
  const routes = [];
  if (split !== undefined) {
    for (const [suffix, port] of [["", koalaPort], ["-grpc", grpcPort]] as const) {
      listeners.push(rdsListener(`split${suffix}`, `split-route${suffix}`));
      routes.push(weightedRoute(`split-route${suffix}`, `split${suffix}`, [{ name: `split-a${suffix}`, weight: split.weights[0] }, { name: `split-b${suffix}`, weight: split.weights[1] }]));
      clusters.push(cluster(`split-a${suffix}`), cluster(`split-b${suffix}`));
      assignments.push(assignment(`split-a${suffix}`, split.a, port), assignment(`split-b${suffix}`, split.b, port));
    }
  }
  return snapshot(listeners, clusters, assignments, routes);
}

/** Share of `n` calls per answering host, `parallel` at a time. */
async function shares(call: () => Promise<string>, n = CALLS, parallel = 20): Promise<Map<string, number>> {
  const by = new Map<string, number>();
  for (let done = 0; done < n; done += parallel) {
    const got = await Promise.all(Array.from({ length: Math.min(parallel, n - done) }, call));
    for (const h of got) by.set(h, (by.get(h) ?? 0) + 1);
  }
  for (const [h, c] of by) by.set(h, c / n);
  return by;
}

const koalaCall = async () => (await koala.unary({}, { timeoutMs: 5000 })).text;
const oracleCall = () => whoCall(oracle);
const whoCall = (client: grpc.Client) =>
  new Promise<string>((resolve, reject) =>
    client.makeUnaryRequest(WHO, (b: Buffer) => b, (b: Buffer) => b, Buffer.alloc(0), { deadline: Date.now() + 5000 }, (err, res) => (err ? reject(err) : resolve(res!.toString()))),
  );

/** Calls until the set of answering hosts is exactly `hosts` for both clients (an update applied everywhere). */
async function settle(hosts: readonly string[], ms = 10_000, k = koalaCall, o = oracleCall): Promise<void> {
  const want = [...hosts].sort().join(",");
  const end = Date.now() + ms;
  let last = "";
  for (;;) {
    // A call may fail while an endpoint goes away: it counts as "failed" and the loop goes on.
    const failed = async (c: () => Promise<string>) => c().catch(() => "failed");
    const [kn, on] = await Promise.all([shares(() => failed(k), 200), shares(() => failed(o), 200)]);
    const ks = [...kn.keys()].sort().join(",");
    const os = [...on.keys()].sort().join(",");
    if (ks === want && os === want) return;
    last = `koala ${ks}, grpc-js-xds ${os}`;
    if (Date.now() > end) throw new Error(`still waiting for calls to reach exactly ${want} after ${ms} ms: ${last}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const show = (m: Map<string, number>) => JSON.stringify(Object.fromEntries([...m].sort().map(([h, s]) => [h, Number(s.toFixed(3))])));

/** Both clients' shares, compared per IP with each other and with `expected`. */
async function sameShares(expected: Record<string, number>, kc = koalaCall, oc = oracleCall): Promise<void> {
  const [k, o] = await Promise.all([shares(kc), shares(oc)]);
  for (const h of new Set([...k.keys(), ...o.keys(), ...Object.keys(expected)])) {
    const ks = k.get(h) ?? 0;
    const os = o.get(h) ?? 0;
    assert.ok(Math.abs(ks - os) <= TOLERANCE, `${h}: koala ${ks.toFixed(3)} vs grpc-js-xds ${os.toFixed(3)} (koala ${show(k)}, grpc-js-xds ${show(o)})`);
    assert.ok(Math.abs(ks - (expected[h] ?? 0)) <= TOLERANCE, `${h}: koala ${ks.toFixed(3)}, expected ${expected[h] ?? 0} (koala ${show(k)})`);
  }
}

// Zone a (weight 3): .2, .3; zone b (weight 1): .4, and .5 DRAINING (no calls).
const FIRST: LocalitySpec[] = [
  { zone: "a", weight: 3, endpoints: [{ host: "127.0.0.2" }, { host: "127.0.0.3" }] },
  { zone: "b", weight: 1, endpoints: [{ host: "127.0.0.4" }, { host: "127.0.0.5", health: "DRAINING" }] },
];

test.before(async () => {
  cp = await startOracleControlPlane();
  process.env.GRPC_XDS_BOOTSTRAP_CONFIG = cp.bootstrap;
  // A resource the control plane never names counts as absent after 1 s (15 s by default).
  process.env.KOALA_XDS_RESOURCE_TIMEOUT_MS = "1000";
  koalaReplicas = await startReplicas(HOSTS);
  await startGrpcBackends();
  cp.set(mirrored(FIRST));
  grpcXds.register();
  koala = createClient(EchoService, "xds:///orders");
  oracle = new grpc.Client("xds:///orders-grpc", grpc.credentials.createInsecure());
});

test.after(async () => {
  closeClient(koala);
  oracle.close();
  stopReplicas(koalaReplicas);
  for (const s of grpcServers) s.forceShutdown();
  await cp.stop();
});

test("locality weights split over each locality's endpoints, DRAINING ones left out: koala's shares match grpc-js-xds's", async () => {
  await settle(["127.0.0.2", "127.0.0.3", "127.0.0.4"]);
  await sameShares({ "127.0.0.2": 0.375, "127.0.0.3": 0.375, "127.0.0.4": 0.25 });
  const eps = clientChannel(koala).endpoints().map((e) => [e.address.replace(/:\d+$/, ""), e.locality]).sort();
  assert.equal(eps, [
    ["127.0.0.2", { name: "orders-cluster/test/a//0", weight: 7500, priority: 0 }],
    ["127.0.0.3", { name: "orders-cluster/test/a//0", weight: 7500, priority: 0 }],
    ["127.0.0.4", { name: "orders-cluster/test/b//0", weight: 2500, priority: 0 }],
  ], "channel.endpoints() shows each endpoint's locality, its weight (share per 10 000) and priority");
  // Both clients ACKed what they got, on one stream each.
  assert.ok(cp.replies.some((r) => r.agent === "koala-rpc" && r.typeUrl === ENDPOINT && r.nack === undefined), "koala ACKed the assignment");
  assert.is(cp.replies.filter((r) => r.nack !== undefined).length, 0, "no NACK");
});

test("updates apply live: an endpoint removed, a locality weight changed, one back from DRAINING; calls in flight on the others finish", async () => {
  const slow = Array.from({ length: 12 }, () => koala.unary({ delayMs: 800 }, { timeoutMs: 10_000 }));
  await until(() => koalaReplicas.filter((r) => r.server.stats().calls > 0).length === 3, "slow calls in flight on the three replicas");
  // Zone a (weight 1): .2 only; zone b (weight 3): .4 and .5, now HEALTHY.
  cp.set(mirrored([
    { zone: "a", weight: 1, endpoints: [{ host: "127.0.0.2" }] },
    { zone: "b", weight: 3, endpoints: [{ host: "127.0.0.4" }, { host: "127.0.0.5" }] },
  ]));
  await settle(["127.0.0.2", "127.0.0.4", "127.0.0.5"]);
  const results = await Promise.allSettled(slow);
  assert.equal(results.filter((r) => r.status === "rejected").map((r) => String((r as PromiseRejectedResult).reason)), [], "no call in flight failed");
  await sameShares({ "127.0.0.2": 0.25, "127.0.0.4": 0.375, "127.0.0.5": 0.375 });

  // .4 marked UNHEALTHY: zone b's share goes to .5 alone.
  cp.set(mirrored([
    { zone: "a", weight: 1, endpoints: [{ host: "127.0.0.2" }] },
    { zone: "b", weight: 3, endpoints: [{ host: "127.0.0.4", health: "UNHEALTHY" }, { host: "127.0.0.5" }] },
  ]));
  await settle(["127.0.0.2", "127.0.0.5"]);
  await sameShares({ "127.0.0.2": 0.25, "127.0.0.5": 0.75 });
  const koalaEndpoints = clientChannel(koala).endpoints().map((e) => e.address).sort();
  assert.equal(koalaEndpoints.map((a) => a.replace(/:\d+$/, "")), ["127.0.0.2", "127.0.0.5"], "removed endpoints leave the channel");
});

test("a malformed assignment is NACKed with the reason by both clients, and both keep routing by the previous one", async () => {
  const before = cp.replies.length;
  const bad = (name: string, port: (h: string) => number) => assignment(name, [{ zone: "a", weight: 1, endpoints: [{ host: "127.0.0.3" }, { host: "not-an-ip" }] }], (h) => (h === "not-an-ip" ? 50051 : port(h)));
  cp.set(mirrored([
    { zone: "a", weight: 1, endpoints: [{ host: "127.0.0.2" }] },
    { zone: "b", weight: 3, endpoints: [{ host: "127.0.0.4", health: "UNHEALTHY" }, { host: "127.0.0.5" }] },
  ], bad));
  const replyOf = (koalaSide: boolean) => cp.replies.slice(before).find((r) => (r.agent === "koala-rpc") === koalaSide && r.typeUrl === ENDPOINT && r.version === cp.version);
  await until(() => replyOf(true) !== undefined && replyOf(false) !== undefined, "both clients' replies to the new assignment");
  assert.ok(replyOf(false)!.nack !== undefined, `grpc-js-xds NACKed it too (the oracle agrees it is malformed)`);
  const reply = replyOf(true)!;
  assert.ok(reply.nack !== undefined, "koala NACKed it");
  assert.match(reply.nack!, /ClusterLoadAssignment orders-cluster: .*"not-an-ip" is not an IP address/);
  await sameShares({ "127.0.0.2": 0.25, "127.0.0.5": 0.75 });
});

test("RDS and weighted_clusters: the route's cluster weights scale each cluster's locality shares, as in grpc-js-xds; a weight change applies live", async () => {
  // Cluster a (weight 1): .2; cluster b (weight 3): zone x (weight 1) .3, zone y (weight 1) .4 and .5.
  split = { weights: [1, 3], a: [{ zone: "x", weight: 1, endpoints: [{ host: "127.0.0.2" }] }], b: [{ zone: "x", weight: 1, endpoints: [{ host: "127.0.0.3" }] }, { zone: "y", weight: 1, endpoints: [{ host: "127.0.0.4" }, { host: "127.0.0.5" }] }] };
  cp.set(mirrored(FIRST));
  const k = createClient(EchoService, "xds:///split");
  const o = new grpc.Client("xds:///split-grpc", grpc.credentials.createInsecure());
  const kc = async () => (await k.unary({}, { timeoutMs: 5000 })).text;
  const oc = () => whoCall(o);
  try {
    await settle(HOSTS, 10_000, kc, oc);
    await sameShares({ "127.0.0.2": 0.25, "127.0.0.3": 0.375, "127.0.0.4": 0.1875, "127.0.0.5": 0.1875 }, kc, oc);
    split = { ...split, weights: [1, 1] };
    cp.set(mirrored(FIRST));
    // Both clients ACK a version once they applied it.
    const acked = (koalaSide: boolean) => cp.replies.some((r) => (r.agent === "koala-rpc") === koalaSide && r.typeUrl === ROUTE && r.version === cp.version && r.nack === undefined);
    await until(() => acked(true) && acked(false), "both clients' ACK of the new route weights");
    await sameShares({ "127.0.0.2": 0.5, "127.0.0.3": 0.25, "127.0.0.4": 0.125, "127.0.0.5": 0.125 }, kc, oc);
  } finally {
    closeClient(k);
    o.close();
  }
});

test("an endpoint that goes down: its locality keeps its share, spread over the endpoints left (as grpc-js-xds)", async () => {
  split = undefined;
  // Zone a (weight 1): .2, .3; zone b (weight 1): .4.
  cp.set(mirrored([
    { zone: "a", weight: 1, endpoints: [{ host: "127.0.0.2" }, { host: "127.0.0.3" }] },
    { zone: "b", weight: 1, endpoints: [{ host: "127.0.0.4" }] },
  ]));
  await settle(["127.0.0.2", "127.0.0.3", "127.0.0.4"]);
  await sameShares({ "127.0.0.2": 0.25, "127.0.0.3": 0.25, "127.0.0.4": 0.5 });
  // .3 stops on both sides; the control plane still lists it (no health checking says otherwise).
  koalaReplicas.find((r) => r.host === "127.0.0.3")!.server.forceShutdown();
  grpcServers[HOSTS.indexOf("127.0.0.3")]!.forceShutdown();
  await settle(["127.0.0.2", "127.0.0.4"]);
  await sameShares({ "127.0.0.2": 0.5, "127.0.0.4": 0.5 });
});

test("priorities: the lowest one with a ready endpoint takes every call; its endpoints down, the next one takes over (as grpc-js-xds)", async () => {
  // 127.0.0.3 is down since the test before.
  cp.set(mirrored([
    { zone: "a", weight: 1, endpoints: [{ host: "127.0.0.2" }] },
    { zone: "b", weight: 1, endpoints: [{ host: "127.0.0.4" }, { host: "127.0.0.5" }], priority: 1 },
  ]));
  await settle(["127.0.0.2"]);
  await sameShares({ "127.0.0.2": 1 });
  cp.set(mirrored([
    { zone: "a", weight: 1, endpoints: [{ host: "127.0.0.3" }] },
    { zone: "b", weight: 1, endpoints: [{ host: "127.0.0.4" }, { host: "127.0.0.5" }], priority: 1 },
  ]));
  await settle(["127.0.0.4", "127.0.0.5"]);
  await sameShares({ "127.0.0.4": 0.5, "127.0.0.5": 0.5 });
});

test("a listener the control plane does not have fails calls with UNAVAILABLE naming it", async () => {
  const missing = createClient(EchoService, "xds:///nothing-here");
  try {
    const err = await rejection(missing.unary({}, { timeoutMs: 5000 }));
    assert.is(err.code, Code.UNAVAILABLE);
    assert.match(err.message, /cannot resolve xds:\/\/\/nothing-here: xDS listener "nothing-here" does not exist \(control plane 127\.0\.0\.1:\d+\)/);
  } finally {
    closeClient(missing);
  }
});

test.run();
