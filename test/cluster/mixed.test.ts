/**
 * One name over a mixed cluster: three replicas that serve RDMA (the soft provider) and TCP on
 * one port (KOALA_TRANSPORT=auto) and two that serve TCP alone, behind one `static:` target of
 * scheme-less addresses. The client's auto mode picks the transport per endpoint: rdma for the
 * first three, tcp for the other two; channel.endpoints() and the metrics engine say which.
 */
import { test } from "uvu";
import * as assert from "uvu/assert";
import { clientChannel, closeClient, createClient, createServer, type Server } from "../../src/index.js";
import { policies, type MetricsEngine } from "../../src/policy/index.js";
import { EchoService } from "../fixtures/rpc/gen/echo.js";
import { until } from "../helpers.js";

const RDMA_HOSTS = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];
const TCP_HOSTS = ["127.0.0.5", "127.0.0.6"];

test("three replicas on rdma (soft) and two on tcp behind one static name: each endpoint gets its transport, and every replica serves", async () => {
  const saved = { transport: process.env.KOALA_TRANSPORT, provider: process.env.KOALA_RDMA_PROVIDER };
  process.env.KOALA_TRANSPORT = "auto";
  process.env.KOALA_RDMA_PROVIDER = "soft";
  const servers: Server[] = [];
  const metrics = policies.attach("metrics", {}, { name: "mixed-metrics", scope: { global: true, side: "client" } }) as MetricsEngine;
  let client: ReturnType<typeof createClient<typeof EchoService>> | undefined;
  try {
    const addresses: string[] = [];
    for (const host of [...RDMA_HOSTS, ...TCP_HOSTS]) {
      const server = createServer();
      server.add(EchoService, { unary: async () => EchoService.methods.unary.output.create({ text: host }) });
      servers.push(server);
      // The rdma hosts listen in auto mode (rdma and tcp on one port); the others on tcp alone.
      const bound = await server.listen(RDMA_HOSTS.includes(host) ? `${host}:0` : `tcp://${host}:0`);
      addresses.push(bound.replace(/^[a-z]+:\/\//, ""));
    }
    client = createClient(EchoService, `static:///${addresses.join(",")}`, { loadBalancing: "round_robin" });
    const channel = clientChannel(client);
    await client.unary({});
    await until(() => channel.endpoints().length === 5 && channel.endpoints().every((e) => e.state === "ready"), "every endpoint ready", 20_000);
    const eps = channel.endpoints();
    assert.equal(eps.map((e) => e.transport), ["rdma", "rdma", "rdma", "tcp", "tcp"], JSON.stringify(eps));
    const by = new Map<string, number>();
    for (let i = 0; i < 50; i++) {
      const r = await client.unary({});
      by.set(r.text, (by.get(r.text) ?? 0) + 1);
    }
    for (const h of [...RDMA_HOSTS, ...TCP_HOSTS]) assert.is(by.get(h), 10, `${h} served its share`);
    const path = "/koala.test.Echo/Unary";
    assert.ok(metrics.byTransport(path, "rdma") >= 30, `rdma calls counted: ${metrics.byTransport(path, "rdma")}`);
    assert.ok(metrics.byTransport(path, "tcp") >= 20, `tcp calls counted: ${metrics.byTransport(path, "tcp")}`);
    assert.match(metrics.render(), `koala_client_calls_by_transport_total{method="${path}",transport="rdma"}`);
  } finally {
    if (client !== undefined) closeClient(client);
    for (const s of servers) s.forceShutdown();
    policies.detach("mixed-metrics");
    for (const [k, v] of [["KOALA_TRANSPORT", saved.transport], ["KOALA_RDMA_PROVIDER", saved.provider]] as const) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
});

test.run();
