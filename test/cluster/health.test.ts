/**
 * Client-side health checking against real servers on 127.0.0.2–4, each with the standard
 * health service: an endpoint not SERVING gets no calls (and none fail), and gets them again
 * once SERVING; a server without the health service counts as serving.
 */
import { test } from "uvu";
import * as assert from "uvu/assert";
import { ErrorCode, addHealthService, clientChannel, closeClient, createClient, type HealthStatus } from "../../src/index.js";
import { EchoService } from "../fixtures/rpc/gen/echo.js";
import { thrownCode, until } from "../helpers.js";
import { HOSTS, spread, startReplicas, stopReplicas } from "./replicas.js";

const SERVICE = "koala.test.Echo";


test("options: healthCheck is validated, a misspelled key names itself", () => {
  const misspelled = thrownCode(() => createClient(EchoService, "static:///127.0.0.2:1", { healthCheck: { servceName: "x" } as never }));
  assert.is(misspelled, ErrorCode.INVALID_ARGUMENT);
  try {
    createClient(EchoService, "static:///127.0.0.2:1", { healthCheck: { servceName: "x" } as never });
  } catch (e) {
    assert.match((e as Error).message, /option "healthCheck": unknown option "servceName" \(did you mean "serviceName"\?\)/);
  }
  assert.is(thrownCode(() => createClient(EchoService, "static:///127.0.0.2:1", { healthCheck: { serviceName: 5 } as never })), ErrorCode.INVALID_ARGUMENT);
  assert.is(thrownCode(() => createClient(EchoService, "static:///127.0.0.2:1", { healthCheck: "yes" as never })), ErrorCode.INVALID_ARGUMENT);
  assert.is(clientChannel(createClient(EchoService, "static:///127.0.0.2:1")).options.healthCheck, null, "off by default");
  assert.equal(clientChannel(createClient(EchoService, "static:///127.0.0.2:1", { healthCheck: {} })).options.healthCheck, { serviceName: "" });
});

test("round_robin with health checks: a NOT_SERVING replica gets no calls and none fail; SERVING brings it back", async () => {
  const replicas = await startReplicas(HOSTS);
  const health: HealthStatus[] = replicas.map((r) => addHealthService(r.server));
  for (const h of health) h.set(SERVICE, "SERVING");
  const client = createClient(EchoService, `static:///${replicas.map((r) => r.address).join(",")}`, { loadBalancing: "round_robin", healthCheck: { serviceName: SERVICE } });
  const channel = clientChannel(client);
  const healthOf = (i: number) => channel.endpoints().find((e) => e.address === replicas[i]!.address)?.health;
  try {
    await client.unary({});
    await until(() => channel.endpoints().length === 3 && channel.endpoints().every((e) => e.health === "serving"), "every endpoint to be ready and serving");
    let by = await spread(client, 30);
    for (const h of HOSTS) assert.is(by.get(h), 10, `even before: ${JSON.stringify([...by])}`);

    health[1]!.set(SERVICE, "NOT_SERVING");
    await until(() => healthOf(1) === "not_serving", "the client to hear NOT_SERVING");
    assert.is(channel.endpoints()[1]!.state, "ready", "the connection stays open");
    by = await spread(client, 30);
    assert.is(by.get(HOSTS[1]!), undefined, `no call to the NOT_SERVING replica: ${JSON.stringify([...by])}`);
    assert.is(by.get(HOSTS[0]!), 15);
    assert.is(by.get(HOSTS[2]!), 15);

    // Every replica down: calls fail fast with UNAVAILABLE naming the health check.
    health[0]!.set(SERVICE, "NOT_SERVING");
    health[2]!.set(SERVICE, "NOT_SERVING");
    await until(() => channel.endpoints().every((e) => e.health === "not_serving"), "all NOT_SERVING");
    const err = await client.unary({}, { timeoutMs: 2000 }).then(() => undefined, (e: Error) => e);
    assert.match(String(err?.message), /is serving "koala.test.Echo" \(health check\)/);
    health[0]!.set(SERVICE, "SERVING");
    health[2]!.set(SERVICE, "SERVING");

    health[1]!.set(SERVICE, "SERVING");
    await until(() => channel.endpoints().every((e) => e.health === "serving"), "every endpoint serving again");
    by = await spread(client, 30);
    for (const h of HOSTS) assert.is(by.get(h), 10, `even after: ${JSON.stringify([...by])}`);
  } finally {
    closeClient(client);
    stopReplicas(replicas);
  }
});

test("a service never set (SERVICE_UNKNOWN) is not serving; a server without the health service (UNIMPLEMENTED) counts as serving", async () => {
  const replicas = await startReplicas(HOSTS.slice(0, 2));
  addHealthService(replicas[0]!.server); // knows "" only: "other" is SERVICE_UNKNOWN there
  const client = createClient(EchoService, `static:///${replicas.map((r) => r.address).join(",")}`, { loadBalancing: "round_robin", healthCheck: { serviceName: "other" } });
  const channel = clientChannel(client);
  try {
    await client.unary({});
    await until(() => channel.endpoints().length === 2 && channel.endpoints()[0]!.health === "not_serving" && channel.endpoints()[1]!.health === "serving", "health verdicts");
    const by = await spread(client, 10);
    assert.equal([...by], [[HOSTS[1]!, 10]]);
  } finally {
    closeClient(client);
    stopReplicas(replicas);
  }
});

test.run();
