/**
 * Policy engines and the interceptor seam, through real calls: each engine's behaviour is
 * checked by counting (who passed, who was held, in which order), not by timing; replacing an
 * engine under load keeps its state and neither drops nor repeats a call.
 */
import { test } from "uvu";
import * as assert from "uvu/assert";
import { setTimeout as sleep } from "node:timers/promises";
import { Code, RpcError, closeClient, createClient, createServer, type CallInfo, type Interceptor, type Server } from "../../src/index.js";
import { policies, type CallLogLine, type MetricsEngine } from "../../src/policy/index.js";
import { EchoService } from "../fixtures/rpc/gen/echo.js";
import { until } from "../helpers.js";

const UNARY = "/koala.test.Echo/Unary";

async function serve(handler: (text: string) => Promise<void> | void, options?: Parameters<typeof createServer>[0]): Promise<{ server: Server; address: string; seen: string[] }> {
  const seen: string[] = [];
  const server = createServer({ logHandlerErrors: false, ...options });
  server.add(EchoService, {
    async unary(req) {
      seen.push(req.text);
      await handler(req.text);
      return { text: req.text };
    },
  });
  const address = await server.listen(`memory:policy-${Math.random()}`);
  return { server, address, seen };
}

async function outcome(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return "OK";
  } catch (err) {
    assert.ok(err instanceof RpcError, String(err));
    return Code[(err as RpcError).code]!;
  }
}

function tally(codes: string[]): Record<string, number> {
  const t: Record<string, number> = {};
  for (const c of codes) t[c] = (t[c] ?? 0) + 1;
  return t;
}

test.after.each(() => policies.clear());

test("interceptors of the application: annotate, reject, hold, and hear every ending", async () => {
  const ended: string[] = [];
  const stamp: Interceptor = {
    name: "stamp",
    onCall(call, point) {
      if (point === "client-send") call.metadata.set("x-echo", "stamped");
      return undefined;
    },
    onEnd: (call, error) => ended.push(`${call.side}:${call.method.name}:${Code[error?.code ?? Code.OK]}`),
  };
  const guard: Interceptor = {
    name: "guard",
    onCall(call, point) {
      if (point !== "server-receive") return undefined;
      if ((call.request as { text: string }).text === "forbidden") return new RpcError(Code.PERMISSION_DENIED, "not you");
      if ((call.request as { text: string }).text === "slow") return sleep(20).then(() => undefined);
      return undefined;
    },
  };
  const server = createServer({ interceptors: [guard] });
  server.add(EchoService, { unary: (req, ctx) => ({ text: req.text, seenMetadata: String(ctx.requestMetadata.get("x-echo") ?? "") }) });
  const address = await server.listen(`memory:icpt-${Math.random()}`);
  const client = createClient(EchoService, address, { interceptors: [stamp] });
  try {
    assert.is((await client.unary({ text: "a" })).seenMetadata, "stamped", "client-send annotation reaches the handler");
    assert.is(await outcome(client.unary({ text: "forbidden" })), "PERMISSION_DENIED");
    assert.is((await client.unary({ text: "slow" })).text, "slow", "a held call goes on");
    assert.equal(ended, ["client:Unary:OK", "client:Unary:PERMISSION_DENIED", "client:Unary:OK"]);
  } finally {
    closeClient(client);
    server.forceShutdown();
  }
});

test("the call an interceptor sees is the call itself: one object at every point and in the handler, which reads what an interceptor left in state; a server's engines with another backend name pass it by", async () => {
  const USER = {};
  const seen = new Set<CallInfo>();
  const points: string[] = [];
  const auth: Interceptor = {
    name: "auth",
    onCall(call, point) {
      seen.add(call);
      points.push(point);
      if (point === "server-receive") call.state.set(USER, `user-of-${call.metadata.get("authorization") ?? "nobody"}`);
      return undefined;
    },
    onEnd: (call) => void seen.add(call),
  };
  let context: unknown;
  const server = createServer({ interceptors: [auth], name: "edge" });
  server.add(EchoService, {
    unary: (req, ctx) => {
      context = ctx;
      return { text: `${req.text} for ${String(ctx.state.get(USER))}` };
    },
  });
  policies.attach("acl", { default: "deny" }, { name: "elsewhere", scope: { global: true, backend: "core" } });
  const address = await server.listen(`memory:same-${Math.random()}`);
  const client = createClient(EchoService, address);
  try {
    assert.is((await client.unary({ text: "hi" }, { metadata: { authorization: "ada" } })).text, "hi for user-of-ada");
    assert.equal(points, ["server-receive", "server-send"]);
    assert.is(seen.size, 1, "the same call object at both points and at the end");
    assert.ok(seen.has(context as CallInfo), "and it is the handler's context");
  } finally {
    closeClient(client);
    server.forceShutdown();
  }
});

test("ratelimit (reject): a burst of 5 lets 5 of 20 simultaneous calls through, the rest RESOURCE_EXHAUSTED", async () => {
  const { server, address } = await serve(() => undefined);
  policies.attach("ratelimit", { ratePerSecond: 0.001, burst: 5, mode: "reject" }, { name: "rl", scope: { global: true, side: "server" } });
  const client = createClient(EchoService, address);
  try {
    const codes = await Promise.all(Array.from({ length: 20 }, (_, i) => outcome(client.unary({ text: `${i}` }))));
    assert.equal(tally(codes), { OK: 5, RESOURCE_EXHAUSTED: 15 });
  } finally {
    closeClient(client);
    server.forceShutdown();
  }
});

test("ratelimit (queue): calls wait for tokens at the set rate; replacing the engine live keeps the queue and the bucket, no call lost or repeated", async () => {
  const { server, address, seen } = await serve(() => undefined);
  const rate = 200;
  policies.attach("ratelimit", { ratePerSecond: rate, burst: 10 }, { name: "rl", scope: { service: "koala.test.Echo", side: "server" } });
  const client = createClient(EchoService, address);
  try {
    const n = 250;
    const passedAt: number[] = [];
    const t0 = Date.now();
    const calls = Array.from({ length: n }, (_, i) => client.unary({ text: `c${i}` }).then(() => passedAt.push(Date.now() - t0)));
    await sleep(300);
    // Live: the same kind, a new rate; the held calls move over with the tokens.
    policies.replace("rl", "ratelimit", { ratePerSecond: rate, burst: 10 });
    await Promise.all(calls);
    assert.is(seen.length, n, "every call ran");
    assert.is(new Set(seen).size, n, "none twice");
    // Rate by counting: after the burst, calls pass at `rate` per second.
    passedAt.sort((a, b) => a - b);
    const measured = (n - 10) / ((passedAt[n - 1]! - passedAt[9]!) / 1000);
    assert.ok(Math.abs(measured - rate) / rate <= 0.1, `measured ${measured.toFixed(1)} calls/s against ${rate}`);
  } finally {
    closeClient(client);
    server.forceShutdown();
  }
});

test("qos: with one call at a time, waiting calls run earliest deadline first (latency-budget metadata for those without one)", async () => {
  let open!: () => void;
  const gate = new Promise<void>((r) => (open = r));
  const { server, address, seen } = await serve((text) => (text === "first" ? gate : undefined));
  policies.attach("qos", { concurrency: 1 }, { scope: { global: true, side: "server" } });
  const client = createClient(EchoService, address);
  try {
    const first = client.unary({ text: "first" });
    await until(() => seen.length === 1, "the first call runs");
    const later = [
      client.unary({ text: "d3000" }, { timeoutMs: 3000 }),
      client.unary({ text: "none" }),
      client.unary({ text: "d1000" }, { timeoutMs: 1000 }),
      client.unary({ text: "budget500" }, { metadata: { "x-latency-budget-ms": "500" } }),
      client.unary({ text: "d2000" }, { timeoutMs: 2000 }),
    ];
    await until(() => server.stats().calls === 6, "the five calls wait on the server");
    open();
    await Promise.all([first, ...later]);
    assert.equal(seen, ["first", "budget500", "d1000", "d2000", "d3000", "none"]);
  } finally {
    closeClient(client);
    server.forceShutdown();
  }
});

test("acl: rules by method, metadata and request fields; first match wins; default deny", async () => {
  const { server, address } = await serve(() => undefined);
  policies.attach(
    "acl",
    {
      default: "deny",
      rules: [
        { action: "deny", fields: { text: "mallory" } },
        { action: "allow", metadata: { "x-role": "admin" } },
        { action: "allow", method: UNARY, fields: { text: "alice" } },
      ],
    },
    { scope: { global: true, side: "server" } },
  );
  const client = createClient(EchoService, address);
  try {
    assert.is(await outcome(client.unary({ text: "alice" })), "OK");
    assert.is(await outcome(client.unary({ text: "bob" })), "PERMISSION_DENIED");
    assert.is(await outcome(client.unary({ text: "bob" }, { metadata: { "x-role": "admin" } })), "OK");
    assert.is(await outcome(client.unary({ text: "mallory" }, { metadata: { "x-role": "admin" } })), "PERMISSION_DENIED", "the first matching rule decides");
    assert.throws(() => policies.configure("acl", { rules: [{ action: "maybe" }] }), /rules/);
    assert.throws(() => policies.attach("acl", { rulez: [] }, { name: "acl2" }), /rulez/);
  } finally {
    closeClient(client);
    server.forceShutdown();
  }
});

for (const kind of ["qos", "admission"] as const) {
  test(`${kind}: a call admitted before two live replaces frees its slot in the new engine when it ends`, async () => {
    const gates: (() => void)[] = [];
    const { server, address, seen } = await serve((text) => (text.startsWith("hold") ? new Promise<void>((r) => gates.push(r)) : undefined));
    policies.attach(kind, kind === "qos" ? { concurrency: 1 } : { maxConcurrent: 1, targetQueueDelayMs: 60_000 }, { name: "slots", scope: { global: true, side: "server" } });
    const client = createClient(EchoService, address);
    try {
      const first = client.unary({ text: "hold-1" });
      await until(() => seen.length === 1, "the first call runs");
      // Twice: the first call ends in the engine it started with, which passes it on down the line.
      for (let i = 0; i < 2; i++) policies.replace("slots", kind, kind === "qos" ? { concurrency: 1 } : { maxConcurrent: 1, targetQueueDelayMs: 60_000 });
      const second = client.unary({ text: "second" });
      await sleep(30);
      assert.equal(seen, ["hold-1"], "the slot is still taken by the first call");
      gates.shift()!();
      await first;
      assert.is((await second).text, "second", "the first call's end freed the slot in the new engine");
      assert.is((await client.unary({ text: "third" })).text, "third");
    } finally {
      for (const g of gates) g();
      closeClient(client);
      server.forceShutdown();
    }
  });
}

test("admission: 2 run, 2 wait, the rest are shed with UNAVAILABLE; a cancelled waiting call leaves the queue", async () => {
  let open!: () => void;
  const gate = new Promise<void>((r) => (open = r));
  const { server, address, seen } = await serve(() => gate);
  policies.attach("admission", { maxConcurrent: 2, maxQueue: 2, targetQueueDelayMs: 60_000 }, { scope: { global: true, side: "server" } });
  const client = createClient(EchoService, address);
  try {
    const ac = new AbortController();
    const running = [client.unary({ text: "r1" }), client.unary({ text: "r2" })];
    await until(() => seen.length === 2, "two calls run");
    const waiting = [client.unary({ text: "w1" }, { signal: ac.signal }), client.unary({ text: "w2" })];
    await until(() => server.stats().calls === 4, "two calls wait on the server");
    const shed = await Promise.all(Array.from({ length: 6 }, (_, i) => outcome(client.unary({ text: `s${i}` }))));
    assert.equal(tally(shed), { UNAVAILABLE: 6 });
    ac.abort();
    assert.is(await outcome(waiting[0]!), "CANCELLED");
    await until(() => server.stats().calls === 3, "the cancellation to reach the server");
    open();
    assert.equal(await Promise.all([...running, waiting[1]!].map(outcome)), ["OK", "OK", "OK"]);
    assert.equal(seen.sort(), ["r1", "r2", "w2"], "the cancelled call never ran");
  } finally {
    closeClient(client);
    server.forceShutdown();
  }
});

test("a held call whose deadline passes fails with DEADLINE_EXCEEDED and never runs", async () => {
  let open!: () => void;
  const gate = new Promise<void>((r) => (open = r));
  const { server, address, seen } = await serve((t) => (t === "blocker" ? gate : undefined));
  policies.attach("qos", { concurrency: 1 }, { scope: { global: true, side: "server" } });
  const client = createClient(EchoService, address);
  try {
    const blocker = client.unary({ text: "blocker" });
    await until(() => seen.length === 1, "the blocker runs");
    assert.is(await outcome(client.unary({ text: "late" }, { timeoutMs: 50 })), "DEADLINE_EXCEEDED");
    // The server counts the deadline from when the call reached it, a little after the client did:
    // wait until the held call has ended there too (its deadline or the client's cancellation).
    await until(() => server.stats().calls === 1, "the held call to end on the server");
    open(); // the held call is released at once: its deadline has passed, so it fails instead of running
    await blocker;
    assert.is((await client.unary({ text: "next" })).text, "next");
    assert.equal(seen, ["blocker", "next"]);
  } finally {
    closeClient(client);
    server.forceShutdown();
  }
});

test("fault: the aborted fraction is what was asked (seeded, counted over 1,000 calls)", async () => {
  const { server, address } = await serve(() => undefined);
  policies.attach("fault", { abortFraction: 0.3, abortCode: Code.UNAVAILABLE, seed: 42 }, { scope: { global: true, side: "server" } });
  const client = createClient(EchoService, address);
  try {
    const codes = await Promise.all(Array.from({ length: 1000 }, (_, i) => outcome(client.unary({ text: `${i}` }))));
    const aborted = codes.filter((c) => c === "UNAVAILABLE").length;
    assert.ok(aborted >= 250 && aborted <= 350, `${aborted} of 1000 aborted for a fraction of 0.3`);
    assert.is(codes.filter((c) => c === "OK").length, 1000 - aborted);
  } finally {
    closeClient(client);
    server.forceShutdown();
  }
});

test("metrics and logging: counts by method and code, Prometheus text, one log line per call; state kept across a replace", async () => {
  const { server, address } = await serve((t) => {
    if (t === "bad") throw new RpcError(Code.NOT_FOUND, "no");
  });
  const lines: CallLogLine[] = [];
  policies.attach("metrics", {}, { name: "m" });
  policies.attach("logging", { sink: (l: CallLogLine) => lines.push(l) }, { name: "log", scope: { global: true, side: "server" } });
  const client = createClient(EchoService, address);
  try {
    for (const t of ["a", "b", "bad"]) await outcome(client.unary({ text: t }));
    const m = policies.get("m") as MetricsEngine;
    assert.is(m.count("server", UNARY, Code.OK), 2);
    assert.is(m.count("server", UNARY, Code.NOT_FOUND), 1);
    assert.is(m.count("client", UNARY), 3);
    policies.replace("m", "metrics", {});
    await outcome(client.unary({ text: "c" }));
    const text = policies.metricsText();
    assert.match(text, /koala_calls_total\{side="server",method="\/koala.test.Echo\/Unary",code="OK"\} 3/);
    assert.match(text, /koala_call_duration_seconds_count\{side="client",method="\/koala.test.Echo\/Unary"\} 4/);
    assert.equal(lines.map((l) => l.code), ["OK", "OK", "NOT_FOUND", "OK"]);
    assert.is(lines[2]!.error, "no");
  } finally {
    closeClient(client);
    server.forceShutdown();
  }
});

test("attach / detach / list / configure: the chain follows live; unknown engines and names are errors naming them", async () => {
  const { server, address } = await serve(() => undefined);
  const client = createClient(EchoService, address);
  try {
    policies.attach("acl", { default: "deny" }, { name: "wall", scope: { method: UNARY, side: "server" } });
    assert.equal(policies.list().map((e) => `${e.name}:${e.kind}`), ["wall:acl"]);
    assert.is(await outcome(client.unary({ text: "x" })), "PERMISSION_DENIED");
    policies.configure("wall", { default: "allow" });
    assert.is(await outcome(client.unary({ text: "x" })), "OK");
    policies.configure("wall", { default: "deny" });
    assert.ok(policies.detach("wall"));
    assert.is(await outcome(client.unary({ text: "x" })), "OK", "detached");
    assert.not.ok(policies.detach("wall"));
    assert.throws(() => policies.attach("ratelimitt"), /unknown engine "ratelimitt"/);
    assert.throws(() => policies.replace("nope", "null"), /no engine named "nope"/);
    assert.throws(() => policies.attach("ratelimit", { ratePerSecond: -1 }), /ratePerSecond/);
  } finally {
    closeClient(client);
    server.forceShutdown();
  }
});

test("per-message interceptors on streams: a client-send hold paces a request stream; a server-receive reject ends that call only", async () => {
  const server = createServer({
    logHandlerErrors: false,
    interceptors: [
      {
        name: "no-bad-messages",
        onMessage(_call, point, message) {
          if (point === "server-receive" && (message as { text: string }).text === "bad") return new RpcError(Code.INVALID_ARGUMENT, "bad message");
          return undefined;
        },
      },
    ],
  });
  server.add(EchoService, {
    async clientStream(requests) {
      const texts: string[] = [];
      for await (const r of requests) texts.push(r.text);
      return { text: texts.join(",") };
    },
    unary: (req) => ({ text: req.text }),
  });
  const address = await server.listen(`memory:msg-${Math.random()}`);
  let held = 0;
  const pacer: Interceptor = {
    name: "pacer",
    onMessage(_call, point) {
      if (point !== "client-send") return undefined;
      held++;
      return sleep(5).then(() => undefined);
    },
  };
  const client = createClient(EchoService, address, { interceptors: [pacer] });
  try {
    assert.is((await client.clientStream([{ text: "a" }, { text: "b" }, { text: "c" }])).text, "a,b,c");
    assert.is(held, 3, "every request message passed the client's hook");
    assert.is(await outcome(client.clientStream([{ text: "a" }, { text: "bad" }, { text: "c" }])), "INVALID_ARGUMENT");
    assert.is((await client.unary({ text: "still fine" })).text, "still fine");
  } finally {
    closeClient(client);
    server.forceShutdown();
  }
});

test.run();
