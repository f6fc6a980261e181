/**
 * weighted_round_robin against real servers on 127.0.0.2–4: the share of calls follows the
 * endpoints' weights (from the resolver: here `static:`'s `;weight=N`), the order interleaves
 * them, and an endpoint that goes away leaves the others in their ratio.
 */
import { test } from "uvu";
import * as assert from "uvu/assert";
import { Code, ErrorCode, clientChannel, closeClient, createClient } from "../../src/index.js";
import { weightedLocality, weightedSchedule } from "../../src/cluster/balancers.js";
import type { PooledConnection, Subchannel } from "../../src/cluster/types.js";
import { EchoService } from "../fixtures/rpc/gen/echo.js";
import { thrownCode, until } from "../helpers.js";
import { HOSTS, spread, startReplicas, stopReplicas } from "./replicas.js";

test("the schedule interleaves by weight (smooth weighted round robin) and keeps each weight's share", () => {
  const at = (w: (number | undefined)[]) => weightedSchedule(w.map((weight, i) => ({ endpoint: { address: String.fromCharCode(97 + i), ...(weight === undefined ? {} : { weight }) } }))).map((s) => s.endpoint.address).join("");
  assert.is(at([5, 1, 1]), "aabacaa");
  assert.is(at([undefined, 2]), "bab", "no weight counts as 1");
  assert.is(at([2, 4, 6]), at([1, 2, 3]), "reduced by the common divisor");
  const big = at([1_000_000, 1_000_000, 3]);
  assert.ok(big.length <= 4096 + 3, `scaled down to ${big.length} slots`);
  assert.ok(big.includes("c"), "a small weight keeps at least one slot");
});

test("weighted_locality: groups by their weight, round robin within each; a group keeps its share while some of its endpoints are down", () => {
  type Conn = PooledConnection & { name: string };
  const sub = (name: string, locality: string, localityWeight: number) => {
    const connection = { name, usable: true, isClosed: false, outstanding: 0, closed: new Promise(() => {}), close() {}, drain() {} } as Conn;
    return { endpoint: { address: name, locality, localityWeight }, state: "ready", connection, pickable: true, requestConnection() {} } as Subchannel<Conn> & { pickable: boolean };
  };
  const [a1, a2, b1] = [sub("a1", "a", 3), sub("a2", "a", 3), sub("b1", "b", 1)];
  const balancer = weightedLocality<Conn>({});
  balancer.update([a1, a2, b1]);
  const count = (n: number) => {
    const by: Record<string, number> = {};
    for (let i = 0; i < n; i++) {
      const c = balancer.pick()!;
      by[c.name] = (by[c.name] ?? 0) + 1;
    }
    return by;
  };
  assert.equal(count(400), { a1: 150, a2: 150, b1: 100 });
  a2.pickable = false;
  balancer.onStateChange(a2);
  assert.equal(count(400), { a1: 300, b1: 100 }, "a's share goes to a1 alone");
  b1.pickable = false;
  balancer.onStateChange(b1);
  assert.equal(count(10), { a1: 10 }, "a group with no ready endpoint gets nothing");
  assert.is(thrownCode(() => weightedLocality({ x: 1 })), ErrorCode.INVALID_ARGUMENT);
});

test("static weights: bad ones fail at creation; channel.endpoints() shows them", async () => {
  assert.is(thrownCode(() => createClient(EchoService, "static:///127.0.0.2:1;weight=0")), ErrorCode.INVALID_ADDRESS);
  assert.is(thrownCode(() => createClient(EchoService, "static:///127.0.0.2:1;weight=1.5")), ErrorCode.INVALID_ADDRESS);
  assert.is(thrownCode(() => createClient(EchoService, "static:///127.0.0.2:1;weigth=2")), ErrorCode.INVALID_ADDRESS);
  assert.is(thrownCode(() => createClient(EchoService, "static:///127.0.0.2:1", { loadBalancing: "weighted_round_robin", loadBalancingOptions: { x: 1 } })), ErrorCode.INVALID_ARGUMENT);
  const replicas = await startReplicas(HOSTS.slice(0, 2));
  const client = createClient(EchoService, `static:///${replicas[0]!.address};weight=7,${replicas[1]!.address}`, { loadBalancing: "weighted_round_robin" });
  try {
    await client.unary({});
    const eps = clientChannel(client).endpoints();
    assert.equal(eps.map((e) => [e.address, e.weight]), [[replicas[0]!.address, 7], [replicas[1]!.address, undefined]]);
  } finally {
    closeClient(client);
    stopReplicas(replicas);
  }
});

test("the share of calls follows the weights (1 : 2 : 3); with one endpoint gone the others keep their ratio", async () => {
  const replicas = await startReplicas(HOSTS);
  const weights = [1, 2, 3];
  const target = `static:///${replicas.map((r, i) => `${r.address};weight=${weights[i]}`).join(",")}`;
  const client = createClient(EchoService, target, { loadBalancing: "weighted_round_robin", endpointBackoffInitialMs: 5000 });
  const channel = clientChannel(client);
  try {
    await client.unary({});
    await until(() => channel.endpoints().every((e) => e.state === "ready"), "every endpoint ready");
    const by = await spread(client, 600);
    assert.equal(HOSTS.map((h) => by.get(h) ?? 0), [100, 200, 300]);
    // round_robin over the same endpoints ignores the weights: the test would see it.
    const plain = createClient(EchoService, target, { loadBalancing: "round_robin" });
    await plain.unary({});
    await until(() => clientChannel(plain).endpoints().every((e) => e.state === "ready"), "every endpoint ready");
    const even = await spread(plain, 300);
    assert.equal(HOSTS.map((h) => even.get(h) ?? 0), [100, 100, 100]);
    closeClient(plain);

    replicas[2]!.server.forceShutdown();
    await until(() => channel.endpoints()[2]!.state !== "ready", "the weight-3 endpoint to be gone");
    const rest = await spread(client, 300);
    assert.equal(HOSTS.map((h) => rest.get(h) ?? 0), [100, 200, 0]);
  } catch (e) {
    if ((e as { code?: unknown }).code === Code.UNAVAILABLE) throw new Error(`a call failed: ${(e as Error).message}`);
    throw e;
  } finally {
    closeClient(client);
    stopReplicas(replicas);
  }
});

test.run();
