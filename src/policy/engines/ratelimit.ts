/**
 * The `ratelimit` engine: a token bucket per engine. A call takes a token at `client-send` or
 * `server-receive`; with none left it waits in a queue (default) until tokens refill, or is
 * rejected with RESOURCE_EXHAUSTED (`mode: "reject"`, or when the queue is full). Queued calls
 * that end meanwhile (deadline, cancellation) leave the queue without a token.
 */
import { Code, RpcError } from "../../errors.js";
import { Fifo } from "../../fifo.js";
import { integer, number, oneOf, resolveOptions, type OptionsSpec } from "../../options.js";
import type { CallInfo, InterceptPoint } from "../../rpc/interceptor.js";
import type { Engine } from "../engine.js";
import { admit, hold, type Held } from "./queue.js";

/** Options of the `ratelimit` engine. */
export interface RateLimitOptions {
  /** Tokens added per second (calls per second). Default 1000. */
  ratePerSecond: number;
  /** Most tokens the bucket holds (the burst allowed). Default 100. */
  burst: number;
  /** `queue` (default): wait for a token; `reject`: fail with RESOURCE_EXHAUSTED at once. */
  mode: "queue" | "reject";
  /** Most calls waiting; more are rejected. Default 10 000. */
  maxQueue: number;
}

const spec: OptionsSpec<RateLimitOptions> = {
  ratePerSecond: number(1000, 0.001),
  burst: integer(100, 1),
  mode: oneOf("queue", ["queue", "reject"]),
  maxQueue: integer(10_000, 0),
};

interface State {
  tokens: number;
  refilledAt: number;
  queue: Held[];
}

/** Creates a `ratelimit` engine. */
export function rateLimitEngine(name: string, input: Record<string, unknown> = {}): Engine {
  let o = resolveOptions(`engine ${name} (ratelimit)`, spec, input);
  // Fields of an object, not closure variables: V8 updates a double field in place, where each
  // write of a fractional number to a closure variable allocates a heap number.
  const b = { tokens: o.burst, refilledAt: Date.now() };
  const queue = new Fifo<Held>();
  let timer: NodeJS.Timeout | undefined;

  const refill = (): void => {
    const now = Date.now();
    b.tokens = Math.min(o.burst, b.tokens + ((now - b.refilledAt) / 1000) * o.ratePerSecond);
    b.refilledAt = now;
  };
  const drain = (): void => {
    timer = undefined;
    refill();
    while (queue.length > 0) {
      const head = queue.peek()!;
      const late = head.call.deadline !== undefined && head.call.deadline <= Date.now();
      if (head.call.ended || late) {
        queue.shift();
        if (late && !head.call.ended) admit(head); // fails it: too late to spend a token on
        continue;
      }
      if (b.tokens < 1) break;
      b.tokens -= 1;
      queue.shift();
      head.settle(undefined);
    }
    schedule();
  };
  const schedule = (): void => {
    if (timer !== undefined || queue.length === 0) return;
    const wait = Math.max(1, Math.ceil(((1 - b.tokens) / o.ratePerSecond) * 1000));
    // Not unref'd: queued calls are work the process is waiting for.
    timer = setTimeout(drain, wait);
  };

  return {
    kind: "ratelimit",
    name,
    get options() {
      return o;
    },
    onCall(call: CallInfo, point: InterceptPoint) {
      if (point !== "client-send" && point !== "server-receive") return undefined;
      refill();
      if (b.tokens >= 1 && queue.length === 0) {
        b.tokens -= 1;
        return undefined;
      }
      if (o.mode === "reject" || queue.length >= o.maxQueue) {
        return new RpcError(Code.RESOURCE_EXHAUSTED, `rate limit of ${o.ratePerSecond} calls/s exceeded (engine ${name})`);
      }
      const { entry, promise } = hold(call);
      queue.push(entry);
      schedule();
      return promise;
    },
    configure(input2) {
      o = resolveOptions(`engine ${name} (ratelimit)`, spec, { ...o, ...input2 });
      b.tokens = Math.min(b.tokens, o.burst);
      if (timer !== undefined) clearTimeout(timer);
      timer = undefined;
      drain();
    },
    exportState(): State {
      refill();
      if (timer !== undefined) clearTimeout(timer);
      timer = undefined;
      return { tokens: b.tokens, refilledAt: b.refilledAt, queue: queue.drain() };
    },
    importState(state: unknown) {
      const s = state as State;
      b.tokens = Math.min(o.burst, s.tokens);
      b.refilledAt = s.refilledAt;
      for (const h of s.queue) queue.push(h);
      drain();
    },
    close() {
      if (timer !== undefined) clearTimeout(timer);
      for (const h of queue.drain()) h.settle(undefined);
    },
  };
}
