/**
 * Per-call xDS routing against a real control plane (xds-control-plane.ts), with grpc-js-xds
 * 1.14 as the oracle: listener `routes` (koala) and `routes-grpc` (grpc-js-xds) over RDS, the
 * same route list for both, to clusters on 127.0.0.2 (a), 127.0.0.3 (b) and 127.0.0.4 (c) —
 * koala replicas for koala, grpc-js servers for grpc-js-xds, on the same method paths. Each
 * case checks that both clients send each call to the same host, or fail it the same way.
 * Backends of both kinds take `delayMs` before they answer (koala: the request's field;
 * grpc-js: the raw request's text), for the route timeout cases.
 */
import { test } from "uvu";
import * as assert from "uvu/assert";
import { setTimeout as sleep } from "node:timers/promises";
import * as grpc from "@grpc/grpc-js";
import * as grpcXds from "@grpc/grpc-js-xds";
import { Code, clientChannel, closeClient, createClient, createServer, type Client, type Server } from "../../src/index.js";
import { HTTP_CONNECTION_MANAGER, LISTENER, ROUTE, ROUTER, loadXdsProtos } from "../../src/cluster/xds/protos.js";
import { XdsRouter, matchValue, routeMatches } from "../../src/cluster/xds/routing.js";
import { createConnectionSource, registerResolver, type PooledConnection, type RoutedCall } from "../../src/cluster/index.js";
import { EchoService } from "../fixtures/rpc/gen/echo.js";
import { rejection, until } from "../helpers.js";
import { assignment, cluster, snapshot, startOracleControlPlane, type ControlPlane } from "./xds-control-plane.js";

type Obj = Record<string, unknown>;
const UNARY = "/koala.test.Echo/Unary";
const STREAM = "/koala.test.Echo/ServerStream";
const HOST_OF = { a: "127.0.0.2", b: "127.0.0.3", c: "127.0.0.4" } as const;
type ClusterName = keyof typeof HOST_OF;

let cp: ControlPlane;
const koalaServers: Server[] = [];
const koalaPorts = new Map<string, number>();
const grpcServers: grpc.Server[] = [];
const grpcPorts = new Map<string, number>();
let koala: Client<typeof EchoService>;
let oracle: grpc.Client;

async function startBackends(): Promise<void> {
  for (const host of Object.values(HOST_OF)) {
    const s = createServer({ logHandlerErrors: false });
    s.add(EchoService, {
      async unary(req) {
        if (req.delayMs > 0) await sleep(req.delayMs);
        return { text: host };
      },
      async *serverStream() {
        yield { text: host };
      },
    });
    const address = await s.listen(`tcp://${host}:0`);
    koalaServers.push(s);
    koalaPorts.set(host, Number(/:(\d+)$/.exec(address)![1]));
    const g = new grpc.Server();
    const raw = (path: string) => ({ path, requestStream: false, responseStream: false, requestSerialize: (b: Buffer) => b, requestDeserialize: (b: Buffer) => b, responseSerialize: (b: Buffer) => b, responseDeserialize: (b: Buffer) => b });
    const answer = (call: { request: Buffer }, cb: (err: null, res: Buffer) => void) => {
      const delayMs = Number(call.request.toString() || "0");
      if (delayMs > 0) setTimeout(() => cb(null, Buffer.from(host)), delayMs);
      else cb(null, Buffer.from(host));
    };
    g.addService({ Unary: raw(UNARY), ServerStream: raw(STREAM) }, { Unary: answer, ServerStream: answer });
    const port = await new Promise<number>((resolve, reject) => g.bindAsync(`${host}:0`, grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))));
    grpcServers.push(g);
    grpcPorts.set(host, port);
  }
}

const protos = loadXdsProtos();

/** An RDS listener whose HttpConnectionManager has `options` as its common_http_protocol_options (when given). */
function listenerWith(name: string, routeName: string, options: Obj | undefined): Obj {
  const hcm = { rds: { route_config_name: routeName, config_source: { ads: {} } }, http_filters: [{ name: "router", typed_config: protos.pack(ROUTER, {}) }], ...(options === undefined ? {} : { common_http_protocol_options: options }) };
  return { name, api_listener: { api_listener: protos.pack(HTTP_CONNECTION_MANAGER, hcm) } };
}

/** One route of a table: its match, its cluster (a letter, or "missing": a cluster the control plane does not serve), and its `max_stream_duration` when given. */
interface RouteSpec {
  readonly match: Obj;
  readonly to: ClusterName | "missing";
  readonly maxStreamDuration?: Obj;
}

/**
 * The snapshot: for both clients, the route list `routes`, clusters a, b, c with one endpoint
 * each, and the listeners' HttpConnectionManager `hcmOptions` (common_http_protocol_options).
 */
function table(routes: readonly RouteSpec[], hcmOptions?: Obj) {
  const listeners: Obj[] = [];
  const clusters: Obj[] = [];
  const assignments: Obj[] = [];
  const routeConfigs: Obj[] = [];
  for (const [suffix, ports] of [["", koalaPorts], ["-grpc", grpcPorts]] as const) {
    listeners.push(listenerWith(`routes${suffix}`, `routes-table${suffix}`, hcmOptions));
    routeConfigs.push({
      name: `routes-table${suffix}`,
      virtual_hosts: [{ name: `vh${suffix}`, domains: [`routes${suffix}`], routes: routes.map((r) => ({ match: r.match, route: { cluster: `${r.to}${suffix}`, ...(r.maxStreamDuration === undefined ? {} : { max_stream_duration: r.maxStreamDuration }) } })) }],
    });
    for (const [name, host] of Object.entries(HOST_OF)) {
      clusters.push(cluster(`${name}${suffix}`));
      assignments.push(assignment(`${name}${suffix}`, [{ zone: "z", weight: 1, endpoints: [{ host }] }], (h) => ports.get(h)!));
    }
  }
  return snapshot(listeners, clusters, assignments, routeConfigs);
}

/** Sets the snapshot and waits until both clients ACKed its listener and route table (they apply a version before they ACK it). */
async function apply(routes: readonly RouteSpec[], hcmOptions?: Obj): Promise<void> {
  cp.set(table(routes, hcmOptions));
  const acked = (koalaSide: boolean, type: string) => cp.replies.some((r) => (r.agent === "koala-rpc") === koalaSide && r.typeUrl === type && r.version === cp.version);
  await until(() => [LISTENER, ROUTE].every((t) => acked(true, t) && acked(false, t)), "both clients' ACK of the listener and the route table");
  assert.ok(cp.replies.filter((r) => (r.typeUrl === ROUTE || r.typeUrl === LISTENER) && r.version === cp.version).every((r) => r.nack === undefined), "no NACK of the listener or the route table");
}

/** Where koala's call of `path` with `metadata` went: the host, or the failure's code and message. */
async function koalaCall(path: string, metadata: Record<string, string> = {}): Promise<string> {
  try {
    if (path === UNARY) return (await koala.unary({}, { timeoutMs: 5000, metadata })).text;
    for await (const r of koala.serverStream({}, { timeoutMs: 5000, metadata })) return r.text;
    return "no reply";
  } catch (err) {
    return `code ${(err as { code: number }).code}: ${(err as { rawMessage?: string }).rawMessage ?? (err as Error).message}`;
  }
}

/** Where grpc-js-xds's call of `path` went (same form). */
function oracleCall(path: string, metadata: Record<string, string> = {}): Promise<string> {
  const md = new grpc.Metadata();
  for (const [k, v] of Object.entries(metadata)) md.set(k, v);
  return new Promise((resolve) =>
    oracle.makeUnaryRequest(path, (b: Buffer) => b, (b: Buffer) => b, Buffer.alloc(0), md, { deadline: Date.now() + 5000 }, (err, res) => resolve(err ? `code ${err.code}: ${err.details}` : res!.toString())),
  );
}

/**
 * Calls `path` on both clients until both answers satisfy `ok` (a new table applies once the
 * clusters it names are known: after its ACK), then a few times more: every answer must still
 * satisfy it, and be the same each time. Returns both answers.
 */
async function both(path: string, metadata: Record<string, string>, ok: (answer: string) => boolean, waitMs = 10_000): Promise<{ koala: string; oracle: string }> {
  const end = Date.now() + waitMs;
  let k = await koalaCall(path, metadata);
  let o = await oracleCall(path, metadata);
  while (!(ok(k) && ok(o))) {
    if (Date.now() > end) throw new Error(`${path} ${JSON.stringify(metadata)}: koala answered ${JSON.stringify(k)}, grpc-js-xds ${JSON.stringify(o)} after ${waitMs / 1000} s`);
    await sleep(50);
    k = await koalaCall(path, metadata);
    o = await oracleCall(path, metadata);
  }
  for (let i = 0; i < 4; i++) {
    assert.is(await koalaCall(path, metadata), k, `koala answered ${path} ${JSON.stringify(metadata)} in two ways`);
    assert.is(await oracleCall(path, metadata), o, `grpc-js-xds answered ${path} ${JSON.stringify(metadata)} in two ways`);
  }
  return { koala: k, oracle: o };
}

/** Asserts both clients send the call to `host`. */
async function routed(host: string, path: string, metadata: Record<string, string> = {}): Promise<void> {
  await both(path, metadata, (a) => a === host);
}

/** Both clients fail the call (as no route matches it); their answers. */
const unrouted = (path: string, metadata: Record<string, string> = {}) => both(path, metadata, (a) => a.startsWith("code "));

test.before(async () => {
  cp = await startOracleControlPlane();
  process.env.GRPC_XDS_BOOTSTRAP_CONFIG = cp.bootstrap;
  process.env.KOALA_XDS_RESOURCE_TIMEOUT_MS = "1000";
  await startBackends();
  cp.set(table([{ match: { prefix: "" }, to: "a" }]));
  grpcXds.register();
  koala = createClient(EchoService, "xds:///routes");
  oracle = new grpc.Client("xds:///routes-grpc", grpc.credentials.createInsecure());
  // A first call each: both clients subscribe (channels start idle).
  await routed(HOST_OF.a, UNARY);
});

test.after(async () => {
  closeClient(koala);
  oracle.close();
  for (const s of koalaServers) s.forceShutdown();
  for (const s of grpcServers) s.forceShutdown();
  await cp.stop();
});

test("two methods to two clusters, by exact path and by prefix; case_sensitive false; first match wins", async () => {
  await apply([
    { match: { path: STREAM }, to: "b" },
    { match: { path: "/KOALA.TEST.ECHO/unary", case_sensitive: { value: false } }, to: "c" },
    { match: { prefix: "/koala.test.Echo/" }, to: "a" },
  ]);
  await routed(HOST_OF.b, STREAM);
  await routed(HOST_OF.c, UNARY);
  // case_sensitive unset means sensitive: this exact path never matches.
  await apply([
    { match: { path: "/KOALA.TEST.ECHO/Unary" }, to: "c" },
    { match: { prefix: "/koala.test.Echo/Server" }, to: "b" },
    { match: { prefix: "/koala.test." }, to: "a" },
  ]);
  await routed(HOST_OF.a, UNARY);
  await routed(HOST_OF.b, STREAM);
  // The channel holds the endpoints of every cluster a route names (c too: its route matches no call, but it names c).
  assert.equal(koalaEndpointHosts(), [HOST_OF.a, HOST_OF.b, HOST_OF.c]);
});

/** The hosts of koala's channel's endpoints now. */
const koalaEndpointHosts = () => [...new Set(clientChannel(koala).endpoints().map((e) => e.address.replace(/:\d+$/, "")))].sort();

test("header matchers on the call's metadata: exact, safe_regex, range, present with invert_match, string_match suffix ignoring case", async () => {
  await apply([
    { match: { prefix: "", headers: [{ name: "x-tier", exact_match: "gold" }] }, to: "c" },
    { match: { prefix: "", headers: [{ name: "x-user", safe_regex_match: { regex: "user-[0-9]+" } }] }, to: "b" },
    { match: { prefix: "", headers: [{ name: "x-shard", range_match: { start: 10, end: 20 } }] }, to: "b" },
    { match: { prefix: "", headers: [{ name: "x-zone", string_match: { suffix: "-EAST", ignore_case: true } }] }, to: "c" },
    { match: { prefix: "", headers: [{ name: "x-tier", present_match: true, invert_match: true }] }, to: "a" },
  ]);
  await routed(HOST_OF.c, UNARY, { "x-tier": "gold" });
  await routed(HOST_OF.b, UNARY, { "x-tier": "silver", "x-user": "user-42" });
  await routed(HOST_OF.b, UNARY, { "x-tier": "silver", "x-shard": "19" });
  await routed(HOST_OF.c, UNARY, { "x-tier": "silver", "x-zone": "us-east" });
  await routed(HOST_OF.a, UNARY);
  // x-user not matching the whole regex, x-shard past the range's end: no route takes it.
  const none = await unrouted(UNARY, { "x-tier": "silver", "x-user": "user-42x", "x-shard": "20" });
  assert.match(none.oracle, new RegExp(`^code ${Code.UNAVAILABLE}: Failed to route call to method ${UNARY}`));
  assert.match(none.koala, new RegExp(`^code ${Code.UNAVAILABLE}: failed to route call to method ${UNARY}: no route of xDS virtual host "vh" \\(xds:///routes\\) matches it`));
});

test("a route table changed live: calls in flight finish where they went, new calls follow the new table", async () => {
  await apply([{ match: { prefix: "" }, to: "a" }]);
  await routed(HOST_OF.a, UNARY);
  const slow = Array.from({ length: 6 }, () => koala.unary({ delayMs: 600 }, { timeoutMs: 10_000 }).then((r) => r.text, (err: unknown) => String(err)));
  await sleep(100);
  await apply([{ match: { path: UNARY }, to: "b" }, { match: { prefix: "" }, to: "c" }]);
  await routed(HOST_OF.b, UNARY);
  await routed(HOST_OF.c, STREAM);
  assert.equal(await Promise.all(slow), Array(6).fill(HOST_OF.a), "the calls in flight finished on a (no longer routed to, its connection drained)");
  assert.equal(koalaEndpointHosts(), [HOST_OF.b, HOST_OF.c], "cluster a's endpoint left the channel");
});

test("a call no route matches fails with UNAVAILABLE naming its method and the virtual host (grpc-js-xds: UNAVAILABLE too), even with waitForReady", async () => {
  await apply([{ match: { path: STREAM }, to: "b" }]);
  await routed(HOST_OF.b, STREAM);
  const got = await unrouted(UNARY);
  assert.match(got.oracle, new RegExp(`^code ${Code.UNAVAILABLE}: Failed to route call to method ${UNARY}`));
  assert.is(got.koala, `code ${Code.UNAVAILABLE}: failed to route call to method ${UNARY}: no route of xDS virtual host "vh" (xds:///routes) matches it`);
  const err = await rejection(koala.unary({}, { timeoutMs: 5000, waitForReady: true }));
  assert.is(err.code, Code.UNAVAILABLE, "waitForReady does not wait for a route");
});

test("a route to a cluster the control plane does not serve: its calls fail with UNAVAILABLE naming the cluster (grpc-js-xds: UNAVAILABLE too), the other routes keep working", async () => {
  await apply([{ match: { path: UNARY }, to: "missing" }, { match: { prefix: "" }, to: "b" }]);
  await routed(HOST_OF.b, STREAM);
  // Until a client applies the table, the last one (no route for UNARY) answers. grpc-js-xds
  // applies it once it gives up on the cluster, after its fixed 15 s resource timer (koala's is
  // 1 s here, KOALA_XDS_RESOURCE_TIMEOUT_MS).
  const got = await both(UNARY, {}, (a) => a.startsWith("code ") && !/failed to route/i.test(a), 25_000);
  assert.match(got.oracle, new RegExp(`^code ${Code.UNAVAILABLE}: .*missing`));
  assert.match(got.koala, new RegExp(`^code ${Code.UNAVAILABLE}: cannot resolve xds:///routes: xDS cluster "missing" does not exist`));
  // The table that serves it after all: its calls go there.
  await apply([{ match: { path: UNARY }, to: "c" }, { match: { prefix: "" }, to: "b" }]);
  await routed(HOST_OF.c, UNARY);
  await routed(HOST_OF.b, STREAM);
});

/** A google.protobuf.Duration of `ms` milliseconds. */
const duration = (ms: number) => ({ seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1_000_000 });

/** Koala's and grpc-js-xds's unary call that the backend answers after `delayMs`, with the application's deadline `timeoutMs` from now: the host, or "code N"; and koala's error message. */
async function timedCall(delayMs: number, timeoutMs: number): Promise<{ koala: string; oracle: string; message: string }> {
  let message = "";
  const [k, o] = await Promise.all([
    koala.unary({ delayMs }, { timeoutMs }).then(
      (r) => r.text,
      (err: { code: number; message: string }) => {
        message = err.message;
        return `code ${err.code}`;
      },
    ),
    new Promise<string>((resolve) =>
      oracle.makeUnaryRequest(UNARY, (b: Buffer) => b, (b: Buffer) => b, Buffer.from(String(delayMs)), new grpc.Metadata(), { deadline: Date.now() + timeoutMs }, (err, res) => resolve(err ? `code ${err.code}` : res!.toString())),
    ),
  ]);
  return { koala: k, oracle: o, message };
}

/**
 * Calls as timedCall until koala answers `koalaWant` and grpc-js-xds `oracleWant` (a new table
 * applies after its ACK), then twice more: the same answers each time. Returns koala's last error message.
 */
async function timed(delayMs: number, timeoutMs: number, koalaWant: string, oracleWant = koalaWant): Promise<string> {
  const end = Date.now() + 10_000;
  let got = await timedCall(delayMs, timeoutMs);
  while (got.koala !== koalaWant || got.oracle !== oracleWant) {
    if (Date.now() > end) throw new Error(`a ${delayMs} ms call with a ${timeoutMs} ms deadline: koala answered ${JSON.stringify(got.koala)} (${got.message}), grpc-js-xds ${JSON.stringify(got.oracle)}; wanted ${koalaWant} and ${oracleWant}`);
    await sleep(50);
    got = await timedCall(delayMs, timeoutMs);
  }
  for (let i = 0; i < 2; i++) {
    const again = await timedCall(delayMs, timeoutMs);
    assert.equal([again.koala, again.oracle], [koalaWant, oracleWant], `a ${delayMs} ms call with a ${timeoutMs} ms deadline answered in two ways`);
  }
  return got.message;
}

const DEADLINE = `code ${Code.DEADLINE_EXCEEDED}`;

test("a route's max_stream_duration is the call's timeout: 300 ms fails a 1 s call with DEADLINE_EXCEEDED and lets a 50 ms one through, on both clients", async () => {
  await apply([{ match: { path: STREAM }, to: "b" }, { match: { prefix: "" }, to: "a", maxStreamDuration: { max_stream_duration: duration(300) } }]);
  const message = await timed(1000, 5000, DEADLINE);
  assert.match(message, /deadline exceeded after 300 ms \(the timeout of the call's xDS route\)/);
  await timed(50, 5000, HOST_OF.a);
  // The other route sets none: the 1 s call goes through.
  await routed(HOST_OF.b, STREAM);
});

test("grpc_timeout_header_max wins over max_stream_duration; 0 means no timeout from xDS, on both clients", async () => {
  await apply([{ match: { prefix: "" }, to: "a", maxStreamDuration: { grpc_timeout_header_max: duration(300), max_stream_duration: duration(5000) } }]);
  await timed(1000, 5000, DEADLINE);
  await apply([{ match: { prefix: "" }, to: "a", maxStreamDuration: { grpc_timeout_header_max: duration(0), max_stream_duration: duration(300) } }]);
  await timed(1000, 5000, HOST_OF.a);
  // A route's 0 is no timeout, not "use the listener's default".
  await apply([{ match: { prefix: "" }, to: "a", maxStreamDuration: { max_stream_duration: duration(0) } }], { max_stream_duration: duration(300) });
  await timed(1000, 5000, HOST_OF.a);
});

test("the application's shorter deadline still wins over the route's timeout, on both clients", async () => {
  await apply([{ match: { prefix: "" }, to: "a", maxStreamDuration: { max_stream_duration: duration(5000) } }]);
  const message = await timed(1000, 300, DEADLINE);
  assert.match(message, /deadline exceeded after 300 ms$/, "the application's deadline, not the route's");
  await timed(50, 300, HOST_OF.a);
});

test("the HttpConnectionManager's common_http_protocol_options.max_stream_duration applies where the route sets none (grpc-js-xds 1.14 reads idle_timeout there instead)", async () => {
  await apply([{ match: { path: STREAM }, to: "b", maxStreamDuration: { max_stream_duration: duration(0) } }, { match: { prefix: "" }, to: "a" }], { max_stream_duration: duration(300) });
  // grpc-js-xds 1.14's resolver-xds.ts takes the default from common_http_protocol_options.idle_timeout,
  // not max_stream_duration as A31 says: its 1 s call goes through.
  const message = await timed(1000, 5000, DEADLINE, HOST_OF.a);
  assert.match(message, /after 300 ms \(the timeout of the call's xDS route\)/);
  await timed(50, 5000, HOST_OF.a);
  // Back to a listener without a default: no timeout.
  await apply([{ match: { prefix: "" }, to: "a" }]);
  await timed(1000, 5000, HOST_OF.a);
});

test("a call's route is chosen once: every pick of one call (retries, resends) goes to the cluster and timeout its first pick chose", async () => {
  // Half the calls take the first route (runtime_fraction) to a, 1000 ms; the others the second, to b, 2000 ms.
  const all = { kind: "prefix", value: "", ignoreCase: false } as const;
  const routes = [
    { match: { path: all, headers: [], fraction: { numerator: 50, denominator: 100 } }, clusters: [{ name: "a", weight: 1 }], timeoutMs: 1000 },
    { match: { path: all, headers: [], fraction: undefined }, clusters: [{ name: "b", weight: 1 }], timeoutMs: 2000 },
  ];
  registerResolver("once-routed", (target, listener) => {
    setImmediate(() => listener.onEndpoints([{ address: "127.0.0.2:1", cluster: "a" }, { address: "127.0.0.3:1", cluster: "b" }], new XdsRouter({ name: "vh", domains: ["*"], routes }, target.raw, new Map())));
    return { refresh() {}, close() {} };
  });
  type Conn = PooledConnection & { readonly address: string };
  const source = createConnectionSource<Conn>("once-routed:///x", async (e) => ({ address: e.address, usable: true, isClosed: false, outstanding: 0, closed: new Promise(() => undefined), close() {}, drain() {} }), {
    backoff: { initialMs: 1000, maxMs: 1000, multiplier: 1, jitter: 0 },
    endpointBackoff: { initialMs: 1000, maxMs: 1000, multiplier: 1, jitter: 0 },
    balancerOptions: {},
    minResolveIntervalMs: 1000,
    balancer: "round_robin",
  });
  try {
    const probe: RoutedCall = { path: UNARY, metadata: { getAll: () => [] } };
    await source.wait(undefined, probe);
    await until(() => source.endpoints().every((e) => e.state === "ready"), "both endpoints ready");
    const seen = new Set<string>();
    for (let n = 0; n < 100; n++) {
      const limits: number[] = [];
      const call: RoutedCall = { path: UNARY, metadata: { getAll: () => [] }, limitDeadline: (ms) => limits.push(ms) };
      const first = source.pick(call)!.address;
      for (let i = 0; i < 5; i++) assert.is(source.pick(call)!.address, first, "a later pick of the same call went elsewhere");
      assert.is((await source.wait(undefined, call)).address, first);
      assert.equal(limits, [first === "127.0.0.2:1" ? 1000 : 2000], "the route's timeout, told once");
      seen.add(first);
    }
    assert.equal([...seen].sort(), ["127.0.0.2:1", "127.0.0.3:1"], "calls took both routes");
  } finally {
    source.close();
  }
});

test("matchers one by one (the parts the oracle cases above do not reach)", () => {
  const call = (path: string, md: Record<string, string | Uint8Array | string[]> = {}) => ({
    path,
    metadata: { getAll: (k: string) => { const v = md[k]; return v === undefined ? [] : Array.isArray(v) ? v : [v]; } },
  });
  const route = (match: Record<string, unknown>) => ({ match: { path: { kind: "prefix", value: "", ignoreCase: false }, headers: [], fraction: undefined, ...match }, clusters: [] }) as unknown as Parameters<typeof routeMatches>[0];
  assert.ok(matchValue({ kind: "contains", value: "Ech", ignoreCase: false }, UNARY));
  assert.not.ok(matchValue({ kind: "contains", value: "ech", ignoreCase: false }, UNARY));
  assert.ok(matchValue({ kind: "prefix", value: "/KOALA", ignoreCase: true }, UNARY));
  assert.ok(matchValue({ kind: "range", start: -5, end: 0 }, "-5"));
  assert.not.ok(matchValue({ kind: "range", start: -5, end: 0 }, "0"));
  assert.not.ok(matchValue({ kind: "range", start: 0, end: 100 }, "1.5"));
  const header = (name: string, m: unknown, invert = false) => route({ headers: [{ name, match: m, invert }] });
  // Several values of one key are matched joined with ",".
  assert.ok(routeMatches(header("x-a", { kind: "exact", value: "1,2", ignoreCase: false }), call(UNARY, { "x-a": ["1", "2"] })));
  // A -bin key never matches; content-type reads as application/grpc.
  assert.not.ok(routeMatches(header("x-b-bin", { kind: "present" }), call(UNARY, { "x-b-bin": new Uint8Array([1]) })));
  assert.ok(routeMatches(header("x-b-bin", { kind: "present" }, true), call(UNARY, { "x-b-bin": new Uint8Array([1]) })));
  assert.ok(routeMatches(header("content-type", { kind: "exact", value: "application/grpc", ignoreCase: false }), call(UNARY)));
  // runtime_fraction: 0 of 100 takes no call, 100 of 100 every call.
  assert.not.ok(routeMatches(route({ fraction: { numerator: 0, denominator: 100 } }), call(UNARY)));
  assert.ok(routeMatches(route({ fraction: { numerator: 100, denominator: 100 } }), call(UNARY)));
});

test.run();
