/**
 * The dns resolver against a real DNS server (dnsmasq, started by the tests on 127.0.0.1)
 * serving records for three real koala servers on 127.0.0.2, 127.0.0.3 and 127.0.0.4; records
 * change during the test to remove and add replicas. Skipped, saying why, where dnsmasq is not
 * installed (CI installs dnsmasq-base).
 */
import { test } from "uvu";
import * as assert from "uvu/assert";
import { Code, closeClient, createClient, type Client } from "../../src/index.js";
import { EchoService } from "../fixtures/rpc/gen/echo.js";
import { rejection, until } from "../helpers.js";
import { dnsmasqMissing, startDnsmasq } from "./dnsmasq.js";
import { HOSTS, portOf, startReplicas, stopReplicas, type Replica } from "./replicas.js";

const missing = dnsmasqMissing();
const dnsTest = missing === undefined ? test : test.skip;
if (missing !== undefined) console.log(`cluster/dns: skipped: ${missing}`);

/** Which replica answered each of `n` calls, one after the other. */
async function spread(client: Client<typeof EchoService>, n: number): Promise<Map<string, number>> {
  const by = new Map<string, number>();
  for (let i = 0; i < n; i++) {
    const r = await client.unary({}, { timeoutMs: 5000 });
    by.set(r.text, (by.get(r.text) ?? 0) + 1);
  }
  return by;
}

/** Calls until `ok(spread of the last `window` calls)` holds; fails after `ms`. */
async function callUntil(client: Client<typeof EchoService>, ok: (by: Map<string, number>) => boolean, what: string, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  for (;;) {
    const by = await spread(client, 12);
    if (ok(by)) return;
    if (Date.now() > end) throw new Error(`still waiting for ${what} after ${ms} ms; last calls went to ${JSON.stringify([...by])}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

dnsTest("dns A records: round_robin spreads over the three replicas; one removed from DNS loses its traffic but no call in flight; added back, it gets traffic again", async () => {
  const replicas = await startReplicas(HOSTS, true);
  const [a, b, c] = replicas as [Replica, Replica, Replica];
  const record = (r: Replica) => `${r.host} svc.test`;
  const dns = await startDnsmasq(replicas.map(record));
  const client = createClient(EchoService, `dns://${dns.server}/svc.test:${portOf(a)}`, { loadBalancing: "round_robin", minResolveIntervalMs: 100 });
  try {
    await client.unary({}, { timeoutMs: 5000 });
    await until(() => replicas.every((r) => r.server.stats().connections === 1), "a connection to each replica");
    const all = await spread(client, 30);
    for (const h of HOSTS) assert.is(all.get(h), 10, `even spread: ${JSON.stringify([...all])}`);

    // Calls in flight on every replica while c leaves DNS.
    const slow = Array.from({ length: 9 }, () => client.unary({ delayMs: 1500 }, { timeoutMs: 10_000 }));
    await until(() => c.server.stats().calls > 0, "a slow call on the replica to remove");
    await dns.setHosts([record(a), record(b)]);
    await callUntil(client, (by) => !by.has(c.host) && by.has(a.host) && by.has(b.host), `traffic to leave ${c.host}`);
    assert.ok(c.server.stats().calls > 0, "the test removed the replica while its calls were still running");
    const results = await Promise.allSettled(slow);
    assert.equal(results.filter((r) => r.status === "rejected").map((r) => String((r as PromiseRejectedResult).reason)), [], "no call in flight failed");
    await until(() => c.server.stats().connections === 0, "the removed replica's connection to close once its calls ended");

    await dns.setHosts(replicas.map(record));
    await callUntil(client, (by) => by.has(c.host), `traffic to come back to ${c.host}`);
  } finally {
    closeClient(client);
    dns.stop();
    stopReplicas(replicas);
  }
});

dnsTest("dns SRV records: the endpoints are the records' targets at the records' own ports", async () => {
  const replicas = await startReplicas(HOSTS); // each on a port of its own
  const extra = replicas.flatMap((r, i) => [`--host-record=r${i}.svc.test,${r.host}`, `--srv-host=_koala._tcp.svc.test,r${i}.svc.test,${portOf(r)},0,10`]);
  const dns = await startDnsmasq([], extra);
  const client = createClient(EchoService, `dns://${dns.server}/_koala._tcp.svc.test`, { loadBalancing: "round_robin" });
  try {
    await client.unary({}, { timeoutMs: 5000 });
    await until(() => replicas.every((r) => r.server.stats().connections === 1), "a connection to each replica");
    const by = await spread(client, 30);
    assert.equal([...by.keys()].sort(), HOSTS, JSON.stringify([...by]));
  } finally {
    closeClient(client);
    dns.stop();
    stopReplicas(replicas);
  }
});

dnsTest("a failing endpoint makes the client ask DNS again before the TTL runs out, at most once per minResolveIntervalMs", async () => {
  const [good] = (await startReplicas(["127.0.0.2"])) as [Replica];
  // Long TTL: only connection failures can make the client ask again. 127.0.0.5 serves nothing.
  const dns = await startDnsmasq(["127.0.0.5 svc.test"], [], 3600);
  const client = createClient(EchoService, `dns://${dns.server}/svc.test:${portOf(good)}`, { minResolveIntervalMs: 300, endpointBackoffInitialMs: 20, endpointBackoffMaxMs: 40 });
  try {
    const started = Date.now();
    const call = client.unary({}, { timeoutMs: 10_000, waitForReady: true });
    await new Promise((r) => setTimeout(r, 1500));
    const asked = dns.queries("svc.test");
    const allowed = 1 + Math.ceil((Date.now() - started) / 300);
    assert.ok(asked >= 3, `the failures made the client ask again (${asked} queries in 1.5 s, TTL 3600 s)`);
    assert.ok(asked <= allowed, `${asked} queries in ${Date.now() - started} ms: more than one per 300 ms`);
    await dns.setHosts([`${good.host} svc.test`]);
    assert.is((await call).text, good.host, "the waiting call went to the address DNS gives now");
  } finally {
    closeClient(client);
    dns.stop();
    stopReplicas([good]);
  }
});

dnsTest("a name DNS does not know fails its calls with UNAVAILABLE and the resolver's reason", async () => {
  const dns = await startDnsmasq(["127.0.0.2 svc.test"]);
  const client = createClient(EchoService, `dns://${dns.server}/nothing.svc.test:50051`);
  try {
    const err = await rejection(client.unary({}, { timeoutMs: 5000 }));
    assert.is(err.code, Code.UNAVAILABLE);
    assert.match(err.message, /cannot resolve dns:\/\/127\.0\.0\.1:\d+\/nothing\.svc\.test:50051: nothing\.svc\.test: /);
  } finally {
    closeClient(client);
    dns.stop();
  }
});

test.run();
