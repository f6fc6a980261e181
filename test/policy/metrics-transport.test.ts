/**
 * The metrics engine counts served calls by the transport they came on: one server listening on
 * tcp and on rdma (the soft provider), a client on each, through the real engine attached for
 * the server side.
 */
import { test } from "uvu";
import * as assert from "uvu/assert";
import { closeClient, createClient, createServer } from "../../src/index.js";
import { policies, type MetricsEngine } from "../../src/policy/index.js";
import { EchoService } from "../fixtures/rpc/gen/echo.js";

test("koala_server_calls_by_transport_total: calls served over tcp and over rdma on one server, each counted by its transport", async () => {
  const saved = process.env.KOALA_RDMA_PROVIDER;
  process.env.KOALA_RDMA_PROVIDER = "soft";
  const metrics = policies.attach("metrics", {}, { name: "served-by-transport", scope: { global: true, side: "server" } }) as MetricsEngine;
  const server = createServer();
  server.add(EchoService, {
    unary: async (req) => ({ text: req.text }),
    async *serverStream(req) {
      for (let i = 0; i < req.count; i++) yield { text: req.text };
    },
  });
  const clients: ReturnType<typeof createClient<typeof EchoService>>[] = [];
  try {
    const tcp = await server.listen("tcp://127.0.0.1:0");
    const rdma = await server.listen("rdma://127.0.0.1:0");
    const overTcp = createClient(EchoService, tcp);
    const overRdma = createClient(EchoService, rdma);
    clients.push(overTcp, overRdma);
    for (let i = 0; i < 3; i++) await overTcp.unary({ text: "t" });
    for (let i = 0; i < 5; i++) await overRdma.unary({ text: "r" });
    for await (const _ of overRdma.serverStream({ text: "s", count: 2 })) void _;
    const unary = EchoService.methods.unary.path;
    assert.is(metrics.byTransport(unary, "tcp", "server"), 3);
    assert.is(metrics.byTransport(unary, "rdma", "server"), 5);
    assert.is(metrics.byTransport(unary, "rdma"), 0, "the engine watches the server side only: no client calls counted");
    const text = metrics.render({ logEvents: false });
    assert.match(text, "# TYPE koala_server_calls_by_transport_total counter");
    assert.match(text, `koala_server_calls_by_transport_total{method="${unary}",transport="tcp"} 3\n`);
    assert.match(text, `koala_server_calls_by_transport_total{method="${unary}",transport="rdma"} 5\n`);
    // A streaming call is one call, counted when it ends.
    assert.match(text, `koala_server_calls_by_transport_total{method="${EchoService.methods.serverStream.path}",transport="rdma"} 1\n`);
  } finally {
    for (const c of clients) closeClient(c);
    server.forceShutdown();
    policies.detach("served-by-transport");
    if (saved === undefined) delete process.env.KOALA_RDMA_PROVIDER;
    else process.env.KOALA_RDMA_PROVIDER = saved;
  }
});

test.run();
