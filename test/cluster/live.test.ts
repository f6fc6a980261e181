/**
 * liveChannels(): what `koala ctl channels` reports of this process — every channel with its
 * target, its balancer and its endpoints, until the channel is closed.
 */
import { test } from "uvu";
import * as assert from "uvu/assert";
import { clientChannel, closeClient, createClient, createServer, liveChannels, type Server } from "../../src/index.js";
import { EchoService } from "../fixtures/rpc/gen/echo.js";
import { until } from "../helpers.js";

test("liveChannels lists each open channel with its target, balancer, endpoints (transport, weight), and drops it once closed", async () => {
  const servers: Server[] = [];
  const addresses: string[] = [];
  for (let i = 0; i < 2; i++) {
    const s = createServer();
    s.add(EchoService, { unary: (req) => ({ text: req.text }) });
    servers.push(s);
    addresses.push(await s.listen("tcp://127.0.0.1:0"));
  }
  const target = `static:///${addresses[0]};weight=3,${addresses[1]}`;
  const balanced = createClient(EchoService, target, { loadBalancing: "weighted_round_robin" });
  const single = createClient(EchoService, addresses[0]!);
  try {
    await balanced.unary({ text: "a" });
    await single.unary({ text: "b" });
    await until(() => clientChannel(balanced).endpoints().every((e) => e.state === "ready"), "both endpoints ready");
    const mine = liveChannels().filter((c) => c.target === target || c.target === addresses[0]);
    assert.is(mine.length, 2, JSON.stringify(liveChannels()));
    const b = mine.find((c) => c.target === target)!;
    assert.is(b.balancer, "weighted_round_robin");
    assert.equal(b.endpoints.map((e) => [e.address, e.state, e.transport, e.weight]), [[addresses[0], "ready", "tcp", 3], [addresses[1], "ready", "tcp", undefined]]);
    const s = mine.find((c) => c.target === addresses[0])!;
    assert.is(s.balancer, "");
    assert.equal(s.endpoints.map((e) => [e.address, e.state, e.transport]), [[addresses[0], "ready", "tcp"]]);
    closeClient(balanced);
    assert.is(liveChannels().some((c) => c.target === target), false, "a closed channel is not listed");
    assert.ok(liveChannels().some((c) => c.target === addresses[0]), "the other channel still is");
  } finally {
    closeClient(balanced);
    closeClient(single);
    for (const s of servers) s.forceShutdown();
  }
});

test.run();
