/**
 * Resolved targets against real servers on 127.0.0.2–4: the static resolver, the built-in
 * balancers, endpoints added and removed live (through a resolver registered by the test), and
 * the options that choose them.
 */
import { test } from "uvu";
import * as assert from "uvu/assert";
import { Code, ErrorCode, KoalaError, clientChannel, closeClient, createClient, parseTarget, registerResolver, type ResolverListener } from "../../src/index.js";
import { EchoService } from "../fixtures/rpc/gen/echo.js";
import { rejection, thrownCode, until } from "../helpers.js";
import { HOSTS, spread, startReplicas, stopReplicas, type Replica } from "./replicas.js";



/** A resolver the test drives: `push(addresses)` reports a new endpoint list. */
const pushers = new Map<string, ResolverListener>();
let refreshes = 0;
registerResolver("testpush", (target, listener) => {
  pushers.set(target.path, listener);
  return { refresh: () => void refreshes++, close: () => pushers.delete(target.path) };
});
const push = (name: string, replicas: readonly Replica[]) => pushers.get(name)!.onEndpoints(replicas.map((r) => ({ address: r.address })));

test("targets: transport addresses pass through; resolver schemes split as gRPC writes them", () => {
  const isResolver = (s: string) => s === "dns" || s === "static";
  assert.equal(parseTarget("tcp://127.0.0.1:5", isResolver), { raw: "tcp://127.0.0.1:5", scheme: undefined, authority: "", path: "tcp://127.0.0.1:5" });
  assert.is(parseTarget("localhost:50051", isResolver).scheme, undefined);
  assert.is(parseTarget("unix:/tmp/x.sock", isResolver).scheme, undefined);
  assert.equal(parseTarget("dns:///svc.test:50051", isResolver), { raw: "dns:///svc.test:50051", scheme: "dns", authority: "", path: "svc.test:50051" });
  assert.equal(parseTarget("dns://127.0.0.1:53/svc.test:1", isResolver), { raw: "dns://127.0.0.1:53/svc.test:1", scheme: "dns", authority: "127.0.0.1:53", path: "svc.test:1" });
  assert.is(thrownCode(() => parseTarget("dns://no-slash", isResolver)), ErrorCode.INVALID_ADDRESS);
  assert.is(thrownCode(() => parseTarget("", isResolver)), ErrorCode.INVALID_ADDRESS);
});

test("options: a misspelled balancer is an error naming it and the registered ones; bad static targets fail at creation", () => {
  let err: unknown;
  try {
    createClient(EchoService, "static:///127.0.0.2:1", { loadBalancing: "round_robbin" });
  } catch (e) {
    err = e;
  }
  assert.ok(err instanceof KoalaError);
  assert.is((err as KoalaError).code, ErrorCode.UNKNOWN_NAME);
  assert.match((err as Error).message, /"loadBalancing" = "round_robbin".*registered: .*round_robin/);
  // Also for a single address, where no balancer runs: the mistake shows at once.
  assert.is(thrownCode(() => createClient(EchoService, "tcp://127.0.0.1:1", { loadBalancing: "pickfirst" })), ErrorCode.UNKNOWN_NAME);
  assert.is(thrownCode(() => createClient(EchoService, "static:///127.0.0.2:1", { loadBalancing: "round_robin", loadBalancingOptions: { weights: [1] } })), ErrorCode.INVALID_ARGUMENT);
  assert.is(thrownCode(() => createClient(EchoService, "static:///")), ErrorCode.INVALID_ADDRESS);
  assert.is(thrownCode(() => createClient(EchoService, "static:///127.0.0.2:99999")), ErrorCode.INVALID_ADDRESS);
  assert.is(thrownCode(() => createClient(EchoService, "dns:///svc.test:port")), ErrorCode.INVALID_ADDRESS);
});

test("static + round_robin spreads calls over all three replicas; pick_first sends them all to the first", async () => {
  const replicas = await startReplicas(HOSTS);
  const target = `static:///${replicas.map((r) => r.address).join(",")}`;
  const rr = createClient(EchoService, target, { loadBalancing: "round_robin" });
  const pf = createClient(EchoService, target);
  try {
    await rr.unary({}); // connects the first endpoint; round_robin dials them all
    await until(() => replicas.every((r) => r.server.stats().connections === 1), "round_robin to connect every endpoint");
    assert.equal(clientChannel(rr).endpoints().map((e) => [e.address, e.state]), replicas.map((r) => [r.address, "ready"]));
    assert.equal(clientChannel(pf).endpoints(), [], "a channel not used yet has resolved nothing and dialled nothing");
    const by = await spread(rr, 30);
    assert.equal([...by.keys()].sort(), HOSTS, JSON.stringify([...by]));
    for (const h of HOSTS) assert.is(by.get(h), 10, `round robin is even: ${JSON.stringify([...by])}`);
    const first = await spread(pf, 10);
    assert.equal([...first], [[HOSTS[0], 10]]);
  } finally {
    closeClient(rr);
    closeClient(pf);
    stopReplicas(replicas);
  }
});

test("least_outstanding sends new calls away from a replica busy with slow calls", async () => {
  const replicas = await startReplicas(HOSTS);
  const client = createClient(EchoService, `static:///${replicas.map((r) => r.address).join(",")}`, { loadBalancing: "least_outstanding" });
  try {
    await client.unary({});
    await until(() => replicas.every((r) => r.server.stats().connections === 1), "every endpoint connected");
    // 30 slow calls in flight, spread by the balancer; then 60 quick ones, one after the other.
    const slow = Array.from({ length: 30 }, () => client.unary({ delayMs: 1500 }, { timeoutMs: 10_000 }));
    await until(() => replicas.reduce((n, r) => n + r.served, 0) >= 31, "the slow calls to arrive");
    const busy = replicas.map((r) => r.server.stats().calls);
    assert.ok(Math.max(...busy) - Math.min(...busy) <= 6, `slow calls spread by load: ${busy}`);
    await Promise.all(slow);
    const by = await spread(client, 60);
    assert.is([...by.keys()].length, 3, "idle replicas all get calls");
  } finally {
    closeClient(client);
    stopReplicas(replicas);
  }
});

test("endpoints added and removed live: calls in flight on a removed one finish, new calls go to the others", async () => {
  const replicas = await startReplicas(HOSTS);
  const [a, b, c] = replicas as [Replica, Replica, Replica];
  const client = createClient(EchoService, "testpush:live", { loadBalancing: "round_robin" });
  try {
    const first = client.unary({}, { timeoutMs: 5000 }); // waits for the resolver
    push("live", [a, b]);
    await first;
    const two = await spread(client, 20);
    assert.equal([...two.keys()].sort(), [a.host, b.host]);
    // Slow calls on every endpoint, then b is removed while they run.
    const slow = Array.from({ length: 6 }, () => client.unary({ delayMs: 600 }, { timeoutMs: 5000 }));
    await until(() => b.server.stats().calls > 0, "a slow call on b");
    push("live", [a, c]);
    const after = await spread(client, 30);
    assert.not.ok(after.has(b.host), `no new call went to the removed endpoint: ${JSON.stringify([...after])}`);
    assert.ok(after.has(c.host) && after.has(a.host), "the added endpoint and the kept one share the calls");
    const slowDone = await Promise.allSettled(slow);
    assert.equal(slowDone.filter((r) => r.status === "rejected").map((r) => String((r as PromiseRejectedResult).reason)), [], "no call in flight failed");
    await until(() => b.server.stats().connections === 0, "the removed endpoint's connection to close once idle");
    assert.is(a.server.stats().connections, 1, "the kept endpoint's connection was not touched");
  } finally {
    closeClient(client);
    stopReplicas(replicas);
  }
});

test("a resolver that reports nothing, or an endpoint that cannot be reached, gives a clear UNAVAILABLE; a failure asks the resolver again", async () => {
  const empty = createClient(EchoService, "testpush:empty");
  const dead = createClient(EchoService, "static:///127.0.0.2:1", { endpointBackoffInitialMs: 50 });
  const moved = createClient(EchoService, "testpush:moved", { endpointBackoffInitialMs: 50 });
  try {
    const pending = empty.unary({}, { timeoutMs: 3000 });
    pushers.get("empty")!.onEndpoints([]);
    const e1 = await rejection(pending);
    assert.is(e1.code, Code.UNAVAILABLE);
    assert.match(e1.message, /no endpoints for testpush:empty/);
    const e2 = await rejection(dead.unary({}, { timeoutMs: 3000 }));
    assert.is(e2.code, Code.UNAVAILABLE);
    assert.match(e2.message, /cannot connect to any endpoint of static:\/\/\/127\.0\.0\.2:1/);
    const e3 = await rejection(dead.unary({}));
    assert.is(e3.code, Code.UNAVAILABLE, "fails fast while backing off");
    // A failed connection asks the resolver for a fresh answer (the name may have moved).
    const before = refreshes;
    const pendingMoved = moved.unary({}, { timeoutMs: 3000 });
    pushers.get("moved")!.onEndpoints([{ address: "tcp://127.0.0.3:1" }]);
    assert.is((await rejection(pendingMoved)).code, Code.UNAVAILABLE);
    assert.ok(refreshes > before, "the resolver was asked again after the connection failed");
  } finally {
    closeClient(empty);
    closeClient(dead);
    closeClient(moved);
  }
});

test.run();
