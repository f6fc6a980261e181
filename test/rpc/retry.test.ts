/**
 * Retries and hedging as gRPC's service config defines them (A6), against a real koala server
 * whose handlers follow a plan per attempt (fail with a code and trailers, answer, wait), and a
 * raw server that refuses calls with GOAWAY (transparent retry).
 */
import diagnostics from "node:diagnostics_channel";
import { setTimeout as sleep } from "node:timers/promises";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { Code, ErrorCode, KoalaError, RpcError, clientChannel, closeClient, createClient, createServer, registerBalancer, type CallContext, type PooledConnection, type Server, type Subchannel } from "../../src/index.js";
import { ATTEMPT_CHANNEL, type AttemptEvent } from "../../src/rpc/client.js";
import { retryBackoffMs, type ServiceConfig } from "../../src/rpc/retry.js";
import { FrameType } from "../../src/rpc/frame.js";
import { EchoService, type EchoReply } from "../fixtures/rpc/gen/echo.js";
import { rejection } from "../helpers.js";
import { rawFrame, rawServer } from "./raw.js";

/** What one attempt does on the server. */
type Step = "ok" | { code: Code; pushback?: string; delayMs?: number } | { okAfterMs: number };

/** What the server saw of one attempt. */
interface Seen {
  /** Its grpc-previous-rpc-attempts header ("" when absent). */
  previous: string;
  /** Time left to its deadline when it arrived (-1: none). */
  timeLeftMs: number;
  /** When it arrived (ms). */
  at: number;
  /** Set when the attempt's signal aborted (cancelled by the client). */
  aborted: boolean;
}

interface Bench {
  server: Server;
  address: string;
  plan: Step[];
  seen: Seen[];
}

function reply(text: string, index = 0): EchoReply {
  return EchoService.methods.unary.output.create({ text, index });
}

async function bench(): Promise<Bench> {
  const b: Bench = { server: createServer({ logHandlerErrors: false }), address: "", plan: [], seen: [] };
  const arrive = (ctx: CallContext): Seen => {
    const prev = ctx.requestMetadata.get("grpc-previous-rpc-attempts");
    const s: Seen = { previous: typeof prev === "string" ? prev : "", timeLeftMs: ctx.deadline === undefined ? -1 : ctx.timeRemainingMs(), at: Date.now(), aborted: false };
    ctx.signal.addEventListener("abort", () => (s.aborted = true));
    b.seen.push(s);
    return s;
  };
  const act = async (ctx: CallContext): Promise<void> => {
    const step = b.plan.shift() ?? "ok";
    if (step === "ok") return;
    if ("okAfterMs" in step) {
      await sleep(step.okAfterMs, undefined, { signal: ctx.signal }).catch(() => undefined);
      return;
    }
    if (step.delayMs !== undefined) await sleep(step.delayMs, undefined, { signal: ctx.signal }).catch(() => undefined);
    if (step.pushback !== undefined) ctx.responseTrailers.set("grpc-retry-pushback-ms", step.pushback);
    throw new RpcError(step.code, `planned ${Code[step.code]}`);
  };
  b.server.add(EchoService, {
    async unary(req, ctx) {
      const n = b.seen.length;
      arrive(ctx);
      await act(ctx);
      return reply(req.text, n);
    },
    async *serverStream(req, ctx) {
      arrive(ctx);
      // One message first: that commits the call; the failure after it is final.
      yield reply(req.text, 0);
      await act(ctx);
    },
    async clientStream(requests, ctx) {
      arrive(ctx);
      const texts: string[] = [];
      for await (const r of requests) texts.push(r.text);
      await act(ctx);
      return reply(texts.join(","), texts.length);
    },
  });
  b.address = await b.server.listen("tcp://127.0.0.1:0");
  return b;
}

const UNAVAILABLE_RETRY = (over: Partial<Record<string, unknown>> = {}): ServiceConfig => ({
  methodConfig: [
    {
      name: [{ service: "koala.test.Echo" }],
      retryPolicy: { maxAttempts: 3, initialBackoff: "0.01s", maxBackoff: "0.05s", backoffMultiplier: 2, retryableStatusCodes: ["UNAVAILABLE"], ...over },
    },
  ],
});

function clientOf(b: Bench, serviceConfig: ServiceConfig, extra: Record<string, unknown> = {}) {
  return createClient(EchoService, b.address, { serviceConfig, ...extra });
}

/** Counts the attempt events published while `fn` runs. */
async function attemptsDuring<T>(fn: () => Promise<T>): Promise<{ result: T | RpcError; events: AttemptEvent[] }> {
  const events: AttemptEvent[] = [];
  const onEvent = (e: unknown) => events.push(e as AttemptEvent);
  diagnostics.subscribe(ATTEMPT_CHANNEL, onEvent);
  try {
    const result = await fn().catch((e: unknown) => {
      if (e instanceof RpcError) return e;
      throw e;
    });
    return { result, events };
  } finally {
    diagnostics.unsubscribe(ATTEMPT_CHANNEL, onEvent);
  }
}

function problem(serviceConfig: unknown): string {
  try {
    createClient(EchoService, "tcp://127.0.0.1:1", { serviceConfig: serviceConfig as ServiceConfig });
  } catch (err) {
    assert.ok(err instanceof KoalaError && err.code === ErrorCode.INVALID_ARGUMENT, String(err));
    return (err as Error).message;
  }
  throw new Error("accepted");
}

test("serviceConfig is checked; an error names the key path and the value", () => {
  const m = (retryPolicy: unknown) => ({ methodConfig: [{ name: [{ service: "koala.test.Echo" }], retryPolicy }] });
  const ok = { maxAttempts: 3, initialBackoff: "0.1s", maxBackoff: "1s", backoffMultiplier: 2, retryableStatusCodes: ["UNAVAILABLE"] };
  assert.match(problem(m({ ...ok, maxAttempts: 1 })), 'option "serviceConfig.methodConfig[0].retryPolicy.maxAttempts" = 1: must be an integer of 2 or more');
  assert.match(problem(m({ ...ok, initialBackoff: "100ms" })), 'retryPolicy.initialBackoff" = "100ms": must be a duration in seconds');
  assert.match(problem(m({ ...ok, retryableStatusCodes: ["UNAVAILABLE", "NOPE"] })), 'retryableStatusCodes[1]" = "NOPE": is not a gRPC status code');
  assert.match(problem(m({ ...ok, retryableStatusCodes: [] })), "non-empty list of status codes");
  assert.match(problem(m({ ...ok, backoffMultipler: 2 })), 'retryPolicy.backoffMultipler" = 2: unknown key');
  assert.match(problem({ methodConfig: [{ name: [{ method: "Unary" }] }] }), "a method needs its service");
  assert.match(problem({ methodConfig: [{ name: [{ service: "a.B" }] }, { name: [{ service: "a.B" }] }] }), "methodConfig[1].name[0]");
  assert.match(problem({ methodConfig: [{ name: [{}], retryPolicy: ok, hedgingPolicy: { maxAttempts: 2 } }] }), "retryPolicy or hedgingPolicy, not both");
  assert.match(problem({ retryThrottling: { maxTokens: 0, tokenRatio: 1 } }), 'retryThrottling.maxTokens" = 0');
  assert.match(problem({ methodConfg: [] }), '"serviceConfig.methodConfg" = []: unknown key');
  // maxAttempts above 5 is accepted and counts as 5 (as in gRPC).
  closeClient(createClient(EchoService, "tcp://127.0.0.1:1", { serviceConfig: m({ ...ok, maxAttempts: 9 }) as ServiceConfig }));
});

test("backoff before retry n is random in [0, min(initial × multiplier^(n-1), max)]", () => {
  const p = { kind: "retry" as const, maxAttempts: 5, initialBackoffMs: 100, maxBackoffMs: 500, backoffMultiplier: 3, codes: new Set([Code.UNAVAILABLE]) };
  assert.is(retryBackoffMs(p, 1, () => 0), 0);
  assert.is(retryBackoffMs(p, 1, () => 0.999999), 100 * 0.999999);
  assert.is(retryBackoffMs(p, 2, () => 0.5), 150);
  assert.is(retryBackoffMs(p, 3, () => 0.5), 250); // min(900, 500) × 0.5
  for (let i = 0; i < 1000; i++) {
    const d = retryBackoffMs(p, 2);
    assert.ok(d >= 0 && d < 300, `retry 2 waits ${d} ms`);
  }
});

test("a retryable failure is retried up to maxAttempts, each retry saying grpc-previous-rpc-attempts", async () => {
  const b = await bench();
  const client = clientOf(b, UNAVAILABLE_RETRY());
  try {
    b.plan = [{ code: Code.UNAVAILABLE }, { code: Code.UNAVAILABLE }];
    const r = await client.unary({ text: "x" });
    assert.is(r.index, 2, "the third attempt answered");
    assert.equal(b.seen.map((s) => s.previous), ["", "1", "2"]);

    b.seen = [];
    b.plan = [{ code: Code.UNAVAILABLE }, { code: Code.UNAVAILABLE }, { code: Code.UNAVAILABLE }, "ok"];
    const e = await rejection(client.unary({ text: "x" }));
    assert.is(e.code, Code.UNAVAILABLE);
    assert.is(b.seen.length, 3, "no fourth attempt");
  } finally {
    closeClient(client);
    b.server.forceShutdown();
  }
});

test("maxAttempts above 5 counts as 5; a status not in retryableStatusCodes is not retried", async () => {
  const b = await bench();
  const client = clientOf(b, UNAVAILABLE_RETRY({ maxAttempts: 10, initialBackoff: "0.001s", maxBackoff: "0.002s" }));
  try {
    b.plan = Array.from({ length: 10 }, () => ({ code: Code.UNAVAILABLE }));
    assert.is((await rejection(client.unary({}))).code, Code.UNAVAILABLE);
    assert.is(b.seen.length, 5);
    b.seen = [];
    b.plan = [{ code: Code.INTERNAL }];
    assert.is((await rejection(client.unary({}))).code, Code.INTERNAL);
    assert.is(b.seen.length, 1);
  } finally {
    closeClient(client);
    b.server.forceShutdown();
  }
});

test("without a policy a call whose request was sent is never sent again", async () => {
  const b = await bench();
  const client = createClient(EchoService, b.address);
  try {
    b.plan = [{ code: Code.UNAVAILABLE }];
    assert.is((await rejection(client.unary({}))).code, Code.UNAVAILABLE);
    assert.is(b.seen.length, 1);
  } finally {
    closeClient(client);
    b.server.forceShutdown();
  }
});

test("a call is committed by its first response message: a failure after it is not retried", async () => {
  const b = await bench();
  const client = clientOf(b, UNAVAILABLE_RETRY());
  try {
    b.plan = [{ code: Code.UNAVAILABLE }];
    const got: number[] = [];
    let error: unknown;
    try {
      for await (const r of client.serverStream({ text: "s" })) got.push(r.index);
    } catch (e) {
      error = e;
    }
    assert.equal(got, [0]);
    assert.ok(error instanceof RpcError && error.code === Code.UNAVAILABLE, String(error));
    assert.is(b.seen.length, 1, "one attempt only");
  } finally {
    closeClient(client);
    b.server.forceShutdown();
  }
});

test("server pushback: a value delays the retry by that much; a negative or malformed one stops retries", async () => {
  const b = await bench();
  const client = clientOf(b, UNAVAILABLE_RETRY({ initialBackoff: "0.001s", maxBackoff: "0.001s" }));
  try {
    b.plan = [{ code: Code.UNAVAILABLE, pushback: "300" }];
    await client.unary({});
    assert.is(b.seen.length, 2);
    const gap = b.seen[1]!.at - b.seen[0]!.at;
    assert.ok(gap >= 290, `retried after ${gap} ms (pushback 300)`);
    for (const bad of ["-1", "soon"]) {
      b.seen = [];
      b.plan = [{ code: Code.UNAVAILABLE, pushback: bad }, "ok"];
      assert.is((await rejection(client.unary({}))).code, Code.UNAVAILABLE, `pushback ${bad}`);
      assert.is(b.seen.length, 1, `pushback ${bad}: no retry`);
    }
  } finally {
    closeClient(client);
    b.server.forceShutdown();
  }
});

test("after a retry the server's pushback delayed, the backoff starts again from initialBackoff (as grpc-js does)", async () => {
  const b = await bench();
  // 50 ms, then x6: without the reset the third retry would wait 50 x 6^2 = 1,800 ms (capped at 2 s).
  const client = clientOf(b, UNAVAILABLE_RETRY({ maxAttempts: 5, initialBackoff: "0.05s", maxBackoff: "2s", backoffMultiplier: 6 }));
  const random = Math.random;
  Math.random = () => 0.999; // the jitter at its top: each backoff is its full length
  try {
    b.plan = [{ code: Code.UNAVAILABLE }, { code: Code.UNAVAILABLE, pushback: "20" }, { code: Code.UNAVAILABLE }, { code: Code.UNAVAILABLE }, "ok"];
    await client.unary({});
    assert.is(b.seen.length, 5);
    const gaps = b.seen.slice(1).map((s, i) => s.at - b.seen[i]!.at);
    assert.ok(gaps[0]! >= 45 && gaps[0]! < 250, `first retry after ${gaps[0]} ms (backoff 50)`);
    assert.ok(gaps[1]! >= 18 && gaps[1]! < 250, `second retry after ${gaps[1]} ms (pushback 20)`);
    assert.ok(gaps[2]! >= 45 && gaps[2]! < 250, `third retry after ${gaps[2]} ms: the backoff starts again at 50, not 1,800`);
    assert.ok(gaps[3]! >= 290 && gaps[3]! < 1000, `fourth retry after ${gaps[3]} ms (50 x 6)`);
  } finally {
    Math.random = random;
    closeClient(client);
    b.server.forceShutdown();
  }
});

test("the deadline spans every attempt: retries never extend it, and each attempt carries what is left", async () => {
  const b = await bench();
  const client = clientOf(b, UNAVAILABLE_RETRY({ maxAttempts: 5, initialBackoff: "0.01s", maxBackoff: "0.01s" }));
  try {
    b.plan = Array.from({ length: 5 }, () => ({ code: Code.UNAVAILABLE, delayMs: 120 }));
    const t0 = Date.now();
    const e = await rejection(client.unary({}, { timeoutMs: 300 }));
    const took = Date.now() - t0;
    assert.is(e.code, Code.DEADLINE_EXCEEDED);
    assert.ok(took < 400, `ended after ${took} ms (deadline 300)`);
    assert.ok(b.seen.length >= 2 && b.seen.length <= 3, `${b.seen.length} attempts in 300 ms`);
    for (let i = 1; i < b.seen.length; i++) {
      assert.ok(b.seen[i]!.timeLeftMs <= b.seen[i - 1]!.timeLeftMs - 100, `attempt ${i} had ${b.seen[i]!.timeLeftMs} ms left, the one before ${b.seen[i - 1]!.timeLeftMs}`);
    }
  } finally {
    closeClient(client);
    b.server.forceShutdown();
  }
});

test("the service config's timeout is a default deadline (a call's own shorter one wins); waitForReady too", async () => {
  const b = await bench();
  const sc: ServiceConfig = { methodConfig: [{ name: [{ service: "koala.test.Echo", method: "Unary" }], timeout: "0.2s" }] };
  const client = clientOf(b, sc);
  try {
    b.plan = [{ okAfterMs: 1000 }];
    const t0 = Date.now();
    assert.is((await rejection(client.unary({}))).code, Code.DEADLINE_EXCEEDED);
    assert.ok(Date.now() - t0 < 500);
    b.seen = [];
    await client.unary({}, { timeoutMs: 100 }).catch(() => undefined);
    assert.ok(b.seen[0]!.timeLeftMs <= 100);
  } finally {
    closeClient(client);
    b.server.forceShutdown();
  }
});

test("cancellation stops the call during a backoff: no later attempt is sent", async () => {
  const b = await bench();
  const client = clientOf(b, UNAVAILABLE_RETRY({ initialBackoff: "0.3s", maxBackoff: "0.3s", backoffMultiplier: 1 }));
  try {
    b.plan = [{ code: Code.UNAVAILABLE }, { code: Code.UNAVAILABLE }];
    const ac = new AbortController();
    const p = client.unary({}, { signal: ac.signal });
    // Random backoff in [0, 300): abort once the first attempt failed, mostly inside the backoff.
    while (b.seen.length === 0) await sleep(1);
    await sleep(5);
    const before = b.seen.length;
    ac.abort();
    assert.is((await rejection(p)).code, Code.CANCELLED);
    await sleep(400);
    assert.is(b.seen.length, before, "no attempt after the cancellation");
  } finally {
    closeClient(client);
    b.server.forceShutdown();
  }
});

test("throttling: a failure takes a token, a success gives tokenRatio back; retries only above half the tokens", async () => {
  const b = await bench();
  const sc = { ...UNAVAILABLE_RETRY({ maxAttempts: 5, initialBackoff: "0.001s", maxBackoff: "0.001s" }), retryThrottling: { maxTokens: 4, tokenRatio: 1 } };
  const client = clientOf(b, sc);
  const attemptsOf = async (): Promise<number> => {
    b.seen = [];
    b.plan = Array.from({ length: 5 }, () => ({ code: Code.UNAVAILABLE }));
    await client.unary({}).catch(() => undefined);
    return b.seen.length;
  };
  try {
    assert.is(await attemptsOf(), 2, "4 → 3 (retry) → 2 (no more: not above 2)");
    assert.is(await attemptsOf(), 1, "2 → 1: no retry");
    b.plan = [];
    for (let i = 0; i < 3; i++) await client.unary({});
    assert.is(await attemptsOf(), 2, "refilled to 4 by three successes");
  } finally {
    closeClient(client);
    b.server.forceShutdown();
  }
});

test("a streamed request is replayed to a retry; past retryBufferBytes the call commits and is not retried", async () => {
  const b = await bench();
  const client = clientOf(b, UNAVAILABLE_RETRY(), { retryBufferBytes: 200 });
  const requests = (n: number) => Array.from({ length: n }, (_, i) => ({ text: `m${i}`, payload: new Uint8Array(40) }));
  try {
    b.plan = [{ code: Code.UNAVAILABLE }];
    const r = await client.clientStream(requests(3));
    assert.is(r.text, "m0,m1,m2", "the retry got the whole stream again");
    assert.is(b.seen.length, 2);
    b.seen = [];
    b.plan = [{ code: Code.UNAVAILABLE }];
    assert.is((await rejection(client.clientStream(requests(8)))).code, Code.UNAVAILABLE);
    assert.is(b.seen.length, 1, "committed once the buffer was full");
    b.seen = [];
    b.plan = ["ok"];
    const all = await client.clientStream(requests(20));
    assert.is(all.text, Array.from({ length: 20 }, (_, i) => `m${i}`).join(","), "a committed stream sends every message, in order");
  } finally {
    closeClient(client);
    b.server.forceShutdown();
  }
});

const HEDGE = (over: Record<string, unknown> = {}): ServiceConfig => ({
  methodConfig: [{ name: [{ service: "koala.test.Echo" }], hedgingPolicy: { maxAttempts: 3, hedgingDelay: "0.1s", nonFatalStatusCodes: ["UNAVAILABLE"], ...over } }],
});

test("hedging: a new attempt every hedgingDelay; the first answer wins and the others are cancelled", async () => {
  const b = await bench();
  const client = clientOf(b, HEDGE());
  try {
    b.plan = [{ okAfterMs: 2000 }, { okAfterMs: 0 }, { okAfterMs: 2000 }];
    const t0 = Date.now();
    const { result, events } = await attemptsDuring(() => client.unary({ text: "h" }));
    const took = Date.now() - t0;
    assert.ok(!(result instanceof RpcError), String(result));
    assert.is((result as EchoReply).index, 1, "the second attempt answered");
    assert.ok(took >= 90 && took < 1000, `answered after ${took} ms`);
    assert.is(b.seen.length, 2, "no third attempt after the answer");
    await sleep(50);
    assert.ok(b.seen[0]!.aborted, "the first attempt was cancelled on the server");
    assert.equal(events.map((e) => e.outcome).sort(), ["cancelled", "ok"]);
  } finally {
    closeClient(client);
    b.server.forceShutdown();
  }
});

test("hedging: a non-fatal failure sends the next attempt at once; a fatal one ends the call and cancels the others", async () => {
  const b = await bench();
  const client = clientOf(b, HEDGE({ hedgingDelay: "1s" }));
  try {
    b.plan = [{ code: Code.UNAVAILABLE }, "ok"];
    const t0 = Date.now();
    assert.is((await client.unary({})).index, 1);
    assert.ok(Date.now() - t0 < 500, "did not wait for hedgingDelay");

    b.seen = [];
    const fast = clientOf(b, HEDGE({ hedgingDelay: "0.05s" }));
    b.plan = [{ okAfterMs: 2000 }, { code: Code.INTERNAL }];
    assert.is((await rejection(fast.unary({}))).code, Code.INTERNAL);
    await sleep(50);
    assert.is(b.seen.length, 2);
    assert.ok(b.seen[0]!.aborted, "the first attempt was cancelled");
    closeClient(fast);
  } finally {
    closeClient(client);
    b.server.forceShutdown();
  }
});

test("cancellation stops every hedge in flight", async () => {
  const b = await bench();
  const client = clientOf(b, HEDGE({ hedgingDelay: "0.02s" }));
  try {
    b.plan = [{ okAfterMs: 2000 }, { okAfterMs: 2000 }, { okAfterMs: 2000 }];
    const ac = new AbortController();
    const p = client.unary({}, { signal: ac.signal });
    while (b.seen.length < 3) await sleep(2);
    ac.abort();
    assert.is((await rejection(p)).code, Code.CANCELLED);
    await sleep(50);
    assert.ok(b.seen.every((s) => s.aborted), "every attempt was cancelled on the server");
  } finally {
    closeClient(client);
    b.server.forceShutdown();
  }
});

test("transparent retry: a call the server refused unprocessed (GOAWAY) goes to another endpoint, streamed request included", async () => {
  const b = await bench();
  let refused = 0;
  const raw = await rawServer("tcp://127.0.0.1:0", (f, conn) => {
    if (f.type !== FrameType.CALL) return;
    refused++;
    conn.send([rawFrame({ type: FrameType.GOAWAY, callId: 0, arg: 0, text: "not today" })]);
  });
  const target = `static:///${raw.address.replace("tcp://", "")},${b.address.replace("tcp://", "")}`;
  const noPolicy = createClient(EchoService, target, { loadBalancing: "round_robin" });
  const withPolicy = createClient(EchoService, target, { loadBalancing: "round_robin", serviceConfig: UNAVAILABLE_RETRY({ retryableStatusCodes: ["INTERNAL"] }) });
  try {
    for (let i = 0; i < 4; i++) assert.is((await noPolicy.unary({ text: "u" })).text, "u");
    for (let i = 0; i < 4; i++) assert.is((await withPolicy.clientStream([{ text: "a" }, { text: "b" }])).text, "a,b");
    assert.ok(refused > 0, "some calls went to the refusing endpoint first");
  } finally {
    closeClient(noPolicy);
    closeClient(withPolicy);
    b.server.forceShutdown();
    await raw.close();
  }
});

test("attempts are published by outcome; a policy-free call publishes nothing", async () => {
  const b = await bench();
  const client = clientOf(b, UNAVAILABLE_RETRY());
  const plain = createClient(EchoService, b.address);
  try {
    b.plan = [{ code: Code.UNAVAILABLE }];
    const { events } = await attemptsDuring(() => client.unary({}));
    assert.equal(events.map((e) => [e.attempt, e.outcome, e.code]), [[0, "retried", Code.UNAVAILABLE], [1, "ok", Code.OK]]);
    assert.is(events[0]!.path, "/koala.test.Echo/Unary");
    const quiet = await attemptsDuring(() => plain.unary({}));
    assert.is(quiet.events.length, 0);
    assert.ok(clientChannel(client).throttle === undefined);
  } finally {
    closeClient(client);
    closeClient(plain);
    b.server.forceShutdown();
  }
});

/** A balancer for the test: picks the first endpoint twice, then the second, and so on (A A B A A B …). */
registerBalancer("test_aab", <C extends PooledConnection>() => {
  let list: readonly Subchannel<C>[] = [];
  let n = 0;
  return {
    update(s: readonly Subchannel<C>[]) {
      list = s;
      for (const x of s) x.requestConnection();
    },
    onStateChange() {
      for (const x of list) if (x.state === "idle") x.requestConnection();
    },
    pick() {
      if (list.length < 2 || !list.every((x) => x.pickable)) return undefined;
      return list[n++ % 3 === 2 ? 1 : 0]!.connection;
    },
  };
});

test("a retry goes to another endpoint when the balancer offers one", async () => {
  const failing = await bench();
  const good = await bench();
  failing.plan = Array.from({ length: 100 }, () => ({ code: Code.UNAVAILABLE }));
  const target = `static:///${failing.address.replace("tcp://", "")},${good.address.replace("tcp://", "")}`;
  const client = createClient(EchoService, target, { loadBalancing: "test_aab", serviceConfig: UNAVAILABLE_RETRY({ maxAttempts: 2 }) });
  try {
    for (let i = 0; i < 6; i++) {
      failing.seen = [];
      good.seen = [];
      await client.unary({ text: String(i) }, { waitForReady: true, timeoutMs: 5000 });
      assert.ok(failing.seen.length <= 1 && good.seen.length === 1, `call ${i}: ${failing.seen.length} attempts on the failing endpoint`);
    }
  } finally {
    closeClient(client);
    failing.server.forceShutdown();
    good.server.forceShutdown();
  }
});

test.run();
