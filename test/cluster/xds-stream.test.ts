/**
 * The xDS client's stream and configuration, koala alone against the in-test control plane
 * (xds-control-plane.ts): one ADS stream shared by the targets of the process and closed with
 * the last of them, a control plane that goes away and comes back, a listener deleted, a
 * malformed resource, and the bootstrap / missing-package errors.
 */
import { test } from "uvu";
import * as assert from "uvu/assert";
import { Code, ErrorCode, KoalaError, closeClient, createClient, type Client } from "../../src/index.js";
import { parseBootstrap } from "../../src/cluster/xds/bootstrap.js";
import { resourceTimeoutMs } from "../../src/cluster/xds/client.js";
import { matchVirtualHost } from "../../src/cluster/xds/resolver.js";
import { HTTP_CONNECTION_MANAGER, LISTENER, ROUTER, loadXdsProtos, requirePeer } from "../../src/cluster/xds/protos.js";
import { EchoService } from "../fixtures/rpc/gen/echo.js";
import { rejection, thrownCode, until } from "../helpers.js";
import { portOf, spread, startReplicas, stopReplicas, type Replica } from "./replicas.js";
import { assignment, cluster, listener, snapshot, startControlPlane, type ControlPlane } from "./xds-control-plane.js";

const protos = loadXdsProtos();
const router = { name: "router", typed_config: protos.pack(ROUTER, {}) };
let cp: ControlPlane;
let replicas: Replica[];
const port = (h: string) => portOf(replicas.find((r) => r.host === h)!);

/** Listeners `orders` and `billing`, each with its own cluster, on the given hosts. */
function state(orders: string[], billing: string[], extraListeners: Record<string, unknown>[] = []) {
  return snapshot(
    [listener("orders", "orders-c"), listener("billing", "billing-c"), ...extraListeners],
    [cluster("orders-c"), cluster("billing-c")],
    [assignment("orders-c", [{ zone: "a", weight: 1, endpoints: orders.map((host) => ({ host })) }], port), assignment("billing-c", [{ zone: "a", weight: 1, endpoints: billing.map((host) => ({ host })) }], port)],
  );
}

const hostsOf = async (c: Client<typeof EchoService>, n = 12) => [...(await spread(c, n)).keys()].sort();

test.before(async () => {
  cp = await startControlPlane();
  process.env.GRPC_XDS_BOOTSTRAP_CONFIG = cp.bootstrap;
  process.env.KOALA_XDS_RESOURCE_TIMEOUT_MS = "1000";
  replicas = await startReplicas(["127.0.0.2", "127.0.0.3", "127.0.0.4"]);
  cp.set(state(["127.0.0.2", "127.0.0.3"], ["127.0.0.4"]));
});

test.after(async () => {
  stopReplicas(replicas);
  await cp.stop();
});

test("two xds targets share one ADS stream, which closes with the last channel", async () => {
  const orders = createClient(EchoService, "xds:///orders");
  const billing = createClient(EchoService, "xds:///billing");
  try {
    assert.equal(await hostsOf(orders), ["127.0.0.2", "127.0.0.3"]);
    assert.equal(await hostsOf(billing), ["127.0.0.4"]);
    assert.is(cp.streams(), 1, "one stream for both targets");
  } finally {
    closeClient(orders);
    closeClient(billing);
  }
  await until(() => cp.streams() === 0, "the stream to close once no target uses it");
});

test("the control plane goes away: calls go on to the endpoints known; it comes back with a change, and the client follows", async () => {
  const orders = createClient(EchoService, "xds:///orders");
  try {
    assert.equal(await hostsOf(orders), ["127.0.0.2", "127.0.0.3"]);
    const address = cp.address;
    await cp.stop();
    assert.equal(await hostsOf(orders), ["127.0.0.2", "127.0.0.3"], "still routed while the control plane is down");
    cp = await startControlPlane(Number(address.split(":")[1]));
    cp.set(state(["127.0.0.3", "127.0.0.4"], ["127.0.0.4"]));
    const end = Date.now() + 10_000;
    let got = await hostsOf(orders);
    while (got.join() !== "127.0.0.3,127.0.0.4" && Date.now() < end) {
      await new Promise((r) => setTimeout(r, 100));
      got = await hostsOf(orders);
    }
    assert.equal(got, ["127.0.0.3", "127.0.0.4"], "the reconnected stream brought the new endpoints");
    assert.ok(cp.replies.some((r) => r.agent === "koala-rpc" && r.nack === undefined), "the new stream named its node and ACKed");
  } finally {
    closeClient(orders);
  }
});

test("a listener that the control plane drops fails calls with UNAVAILABLE naming it; one that comes back is used again", async () => {
  cp.set(state(["127.0.0.2"], ["127.0.0.4"]));
  const billing = createClient(EchoService, "xds:///billing");
  try {
    assert.equal(await hostsOf(billing), ["127.0.0.4"]);
    // Only the listener goes: its cluster and endpoints stay.
    const without = state(["127.0.0.2"], ["127.0.0.4"]);
    without.get(LISTENER)!.delete("billing");
    cp.set(without);
    const end = Date.now() + 5000;
    let err;
    for (;;) {
      try {
        await billing.unary({}, { timeoutMs: 5000 });
      } catch (e) {
        err = e;
        break;
      }
      if (Date.now() > end) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    assert.ok(err !== undefined, "calls failed once the listener was gone");
    assert.is((err as { code: number }).code, Code.UNAVAILABLE);
    assert.match(String((err as Error).message), /xDS listener "billing" does not exist/, String((err as Error).message));
    cp.set(state(["127.0.0.2"], ["127.0.0.3"]));
    const back = Date.now() + 5000;
    for (;;) {
      try {
        if ((await billing.unary({}, { timeoutMs: 5000 })).text === "127.0.0.3") break;
      } catch {
        // still gone
      }
      if (Date.now() > back) assert.unreachable("the listener came back but calls still fail");
      await new Promise((r) => setTimeout(r, 20));
    }
  } finally {
    closeClient(billing);
  }
});

test("a listener whose bytes are no Listener, or whose routes end without the router, is NACKed; the rest of the response is used", async () => {
  cp.set(state(["127.0.0.2"], ["127.0.0.4"]));
  const orders = createClient(EchoService, "xds:///orders");
  const others: Client<typeof EchoService>[] = [];
  try {
    assert.equal(await hostsOf(orders), ["127.0.0.2"]);
    const before = cp.replies.length;
    // Two routers: the first is not last.
    const hcm = { route_config: { virtual_hosts: [{ domains: ["*"], routes: [{ match: { prefix: "" }, route: { cluster: "orders-c" } }] }] }, http_filters: [router, router] };
    const fake = { name: "broken", api_listener: { api_listener: protos.pack(HTTP_CONNECTION_MANAGER, hcm) } };
    // Channels for them make the client subscribe to them (a control plane sends what is asked for).
    others.push(createClient(EchoService, "xds:///broken"), createClient(EchoService, "xds:///garbage"));
    for (const c of others) void c.unary({}, { timeoutMs: 3000 }).catch(() => {});
    await until(() => cp.replies.slice(before).some((r) => r.typeUrl === LISTENER), "the subscriptions");
    const asked = cp.replies.length;
    cp.set(state(["127.0.0.2", "127.0.0.3"], ["127.0.0.4"], [fake, { name: "garbage", $raw: Buffer.from([0x0a, 0xff, 0xff]) }]));
    await until(() => cp.replies.slice(asked).some((r) => r.typeUrl === LISTENER && r.version === cp.version), "the reply to the listeners");
    const reply = cp.replies.slice(asked).find((r) => r.typeUrl === LISTENER && r.version === cp.version)!;
    assert.ok(reply.nack !== undefined, "NACKed");
    assert.match(reply.nack!, /resources\[\d\]: /, "the undecodable resource is named by its index");
    assert.match(reply.nack!, /Listener broken: router filter is before the end of http_filters/);
    // orders' listener was valid in the same response, and its assignment changed: applied.
    const end = Date.now() + 5000;
    while ((await hostsOf(orders)).join() !== "127.0.0.2,127.0.0.3") {
      if (Date.now() > end) assert.unreachable("the valid part of the update was not applied");
      await new Promise((r) => setTimeout(r, 50));
    }
  } finally {
    closeClient(orders);
    for (const c of others) closeClient(c);
  }
});

test("a control plane that cannot be reached fails calls with UNAVAILABLE naming it", async () => {
  const saved = process.env.GRPC_XDS_BOOTSTRAP_CONFIG;
  // A port nothing listens on: the one of a control plane just stopped.
  const gone = await startControlPlane();
  await gone.stop();
  process.env.GRPC_XDS_BOOTSTRAP_CONFIG = gone.bootstrap;
  const client = createClient(EchoService, "xds:///orders");
  process.env.GRPC_XDS_BOOTSTRAP_CONFIG = saved;
  try {
    const err = await rejection(client.unary({}, { timeoutMs: 5000 }));
    assert.is(err.code, Code.UNAVAILABLE);
    assert.match(err.message, new RegExp(`the ADS stream to ${gone.address.replace(/\./g, "\\.")} failed`));
  } finally {
    closeClient(client);
  }
});

test("bootstrap: missing, not JSON, or without an insecure server: KOALA_ERR_CONFIG at channel creation, naming the problem", () => {
  const saved = process.env.GRPC_XDS_BOOTSTRAP_CONFIG;
  try {
    delete process.env.GRPC_XDS_BOOTSTRAP_CONFIG;
    assert.is(thrownCode(() => createClient(EchoService, "xds:///orders")), ErrorCode.CONFIG);
    process.env.GRPC_XDS_BOOTSTRAP = "/nonexistent/bootstrap.json";
    let err: unknown;
    try {
      createClient(EchoService, "xds:///orders");
    } catch (e) {
      err = e;
    }
    assert.ok(err instanceof KoalaError && err.code === ErrorCode.CONFIG);
    assert.match((err as Error).message, /GRPC_XDS_BOOTSTRAP=\/nonexistent\/bootstrap\.json\): cannot read the file/, (err as Error).message);
  } finally {
    delete process.env.GRPC_XDS_BOOTSTRAP;
    process.env.GRPC_XDS_BOOTSTRAP_CONFIG = saved;
  }
  const message = (text: string) => {
    try {
      parseBootstrap(text, "test");
    } catch (e) {
      return (e as Error).message;
    }
    return "accepted";
  };
  assert.match(message("{"), /not JSON/);
  assert.match(message("{}"), /xds_servers must be a non-empty array/);
  assert.match(message(JSON.stringify({ xds_servers: [{ server_uri: "cp:1", channel_creds: [{ type: "google_default" }] }] })), /channel_creds must include \{"type": "insecure"\}/);
  const ok = parseBootstrap(JSON.stringify({ xds_servers: [{ server_uri: "cp:1", channel_creds: [{ type: "insecure" }] }], node: { id: "n1" } }), "test");
  assert.equal(ok, { serverUri: "cp:1", node: { id: "n1" }, listenerTemplate: "%s" });
  assert.is(resourceTimeoutMs({}), 15_000);
  assert.is(thrownCode(() => resourceTimeoutMs({ KOALA_XDS_RESOURCE_TIMEOUT_MS: "soon" })), ErrorCode.CONFIG);
});

test("a missing peer package is KOALA_ERR_DEPENDENCY_MISSING naming it", () => {
  let err: unknown;
  try {
    requirePeer("@grpc/not-installed-here");
  } catch (e) {
    err = e;
  }
  assert.ok(err instanceof KoalaError && err.code === ErrorCode.DEPENDENCY_MISSING);
  assert.match((err as Error).message, /optional peer dependency @grpc\/not-installed-here, which is not installed/);
});

test("the virtual host is chosen as gRPC does: exact domain, then the longest *.suffix, then the longest prefix.*, then *", () => {
  const vh = (...domains: string[]) => ({ name: domains[0]!, domains, routes: [] });
  const hosts = [vh("*"), vh("orders.*"), vh("ord*"), vh("*.example"), vh("*.shop.example"), vh("orders.shop.example")];
  const pick = (h: string) => matchVirtualHost(hosts, h)?.domains[0];
  assert.is(pick("orders.shop.example"), "orders.shop.example");
  assert.is(pick("billing.shop.example"), "*.shop.example");
  assert.is(pick("billing.example"), "*.example");
  assert.is(pick("orders.local"), "orders.*");
  assert.is(pick("ordinal"), "ord*");
  assert.is(pick("other"), "*");
  assert.is(matchVirtualHost([vh("a.example")], "b.example"), undefined);
});

test("a target with an authority is refused at once", () => {
  assert.is(thrownCode(() => createClient(EchoService, "xds://cp.example/orders")), ErrorCode.INVALID_ADDRESS);
});

test.run();
