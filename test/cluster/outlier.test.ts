/**
 * Outlier ejection against real servers on 127.0.0.2–4: a replica whose calls fail with
 * UNAVAILABLE `consecutiveFailures` times in a row is ejected, traffic avoids it, it returns
 * after the ejection time; never more than `maxEjectionPercent` of the endpoints are ejected.
 */
import { test } from "uvu";
import * as assert from "uvu/assert";
import { Code, ErrorCode, RpcError, clientChannel, closeClient, createClient } from "../../src/index.js";
import { EchoService } from "../fixtures/rpc/gen/echo.js";
import { thrownCode, until } from "../helpers.js";
import { HOSTS, startReplicas, stopReplicas } from "./replicas.js";


type EchoClient = ReturnType<typeof createClient<typeof EchoService>>;

/** Makes `n` sequential calls; counts answers by replica and failures by code. */
async function spread(client: EchoClient, n: number): Promise<{ by: Map<string, number>; failed: number }> {
  const by = new Map<string, number>();
  let failed = 0;
  for (let i = 0; i < n; i++) {
    try {
      const r = await client.unary({ text: "" }, { timeoutMs: 5000 });
      by.set(r.text, (by.get(r.text) ?? 0) + 1);
    } catch (e) {
      if (!(e instanceof RpcError) || e.code !== Code.UNAVAILABLE) throw e;
      failed++;
    }
  }
  return { by, failed };
}

test("options: outlierDetection is validated, with gRPC's defaults", () => {
  assert.is(thrownCode(() => createClient(EchoService, "static:///127.0.0.2:1", { outlierDetection: { consecutiveFailure: 3 } as never })), ErrorCode.INVALID_ARGUMENT);
  assert.is(thrownCode(() => createClient(EchoService, "static:///127.0.0.2:1", { outlierDetection: { maxEjectionPercent: 101 } })), ErrorCode.INVALID_ARGUMENT);
  assert.is(thrownCode(() => createClient(EchoService, "static:///127.0.0.2:1", { outlierDetection: { consecutiveFailures: 0 } })), ErrorCode.INVALID_ARGUMENT);
  const c = createClient(EchoService, "static:///127.0.0.2:1", { outlierDetection: {} });
  assert.equal(clientChannel(c).options.outlierDetection, { consecutiveFailures: 5, baseEjectionTimeMs: 30_000, maxEjectionTimeMs: 300_000, maxEjectionPercent: 10 });
  closeClient(c);
});

test("a replica failing with UNAVAILABLE N times in a row is ejected, gets no calls, and returns after the ejection time", async () => {
  const replicas = await startReplicas(HOSTS);
  const client = createClient(EchoService, `static:///${replicas.map((r) => r.address).join(",")}`, {
    loadBalancing: "round_robin",
    outlierDetection: { consecutiveFailures: 3, baseEjectionTimeMs: 600, maxEjectionPercent: 34 },
  });
  const channel = clientChannel(client);
  const ejected = () => channel.endpoints().filter((e) => e.ejected === true).map((e) => e.address);
  try {
    await client.unary({});
    await until(() => channel.endpoints().length === 3 && channel.endpoints().every((e) => e.state === "ready"), "every endpoint ready");
    replicas[1]!.failing = true;
    // Round robin: every third call goes to the failing one; three of those eject it.
    const before = await spread(client, 9);
    assert.is(before.failed, 3, `three failures before the ejection: ${JSON.stringify([...before.by])}`);
    assert.equal(ejected(), [replicas[1]!.address]);
    const served = replicas[1]!.served;
    const during = await spread(client, 30);
    assert.is(during.failed, 0, "no call fails while the bad replica is ejected");
    assert.is(replicas[1]!.served, served, "no call reaches the ejected replica");
    assert.is(during.by.get(HOSTS[0]!), 15);
    assert.is(during.by.get(HOSTS[2]!), 15);

    replicas[1]!.failing = false;
    await until(() => ejected().length === 0, "the ejection to end", 5000);
    const after = await spread(client, 30);
    assert.is(after.failed, 0);
    assert.is(after.by.get(HOSTS[1]!), 10, `traffic returns: ${JSON.stringify([...after.by])}`);
  } finally {
    closeClient(client);
    stopReplicas(replicas);
  }
});

test("never more than maxEjectionPercent of the endpoints are ejected (at least one may be)", async () => {
  const replicas = await startReplicas(HOSTS);
  const client = createClient(EchoService, `static:///${replicas.map((r) => r.address).join(",")}`, {
    loadBalancing: "round_robin",
    outlierDetection: { consecutiveFailures: 2, baseEjectionTimeMs: 60_000, maxEjectionPercent: 10 },
  });
  const channel = clientChannel(client);
  const ejected = () => channel.endpoints().filter((e) => e.ejected === true).length;
  try {
    await client.unary({});
    await until(() => channel.endpoints().length === 3 && channel.endpoints().every((e) => e.state === "ready"), "every endpoint ready");
    replicas[0]!.failing = true;
    replicas[1]!.failing = true;
    await spread(client, 12);
    assert.is(ejected(), 1, "10% of three endpoints: only the first to fail is ejected (as gRPC, one always may be)");
    const { failed } = await spread(client, 10);
    assert.is(failed, 5, "the one not ejected keeps taking (and failing) every other call");
    replicas[0]!.failing = false;
    replicas[1]!.failing = false;
    assert.is((await spread(client, 6)).failed, 0);
  } finally {
    closeClient(client);
    stopReplicas(replicas);
  }
});

test.run();
