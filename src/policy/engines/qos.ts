/**
 * The `qos` engine: earliest deadline first. At most `concurrency` calls run at once through
 * it; the others wait and are let go in order of their deadline — the call's own, or
 * `startedAt + budget` when the request carries the latency-budget metadata key — calls without
 * either last, in arrival order. A waiting call whose deadline passes fails as usual
 * (DEADLINE_EXCEEDED, by the core) and leaves the queue.
 */
import { integer, resolveOptions, custom, type OptionsSpec } from "../../options.js";
import type { CallInfo, InterceptPoint } from "../../rpc/interceptor.js";
import type { Engine } from "../engine.js";
import { admit, hold, type Held } from "./queue.js";

/** Options of the `qos` engine. */
export interface QosOptions {
  /** Calls let through at once. Default 64. */
  concurrency: number;
  /** Request metadata key holding a latency budget in ms, used when a call has no deadline. Default `x-latency-budget-ms`. */
  budgetKey: string;
}

const spec: OptionsSpec<QosOptions> = {
  concurrency: integer(64, 1),
  budgetKey: custom("x-latency-budget-ms", "a metadata key (lower case)", (v) => typeof v === "string" && /^[a-z0-9._-]+$/.test(v)),
};

/** The time a call is due: its deadline, or start + budget, or Infinity. */
function dueOf(call: CallInfo, budgetKey: string): number {
  if (call.deadline !== undefined) return call.deadline;
  const b = call.metadata.get(budgetKey);
  const ms = typeof b === "string" ? Number(b) : NaN;
  return Number.isFinite(ms) && ms >= 0 ? call.startedAt + ms : Infinity;
}

interface State {
  running: Set<CallInfo>;
  /** The successor gives its end handler: calls admitted here end here and are passed on. */
  adopt: (ended: (call: CallInfo) => void) => void;
  waiting: (Held & { due: number; seq: number })[];
}

/** Creates a `qos` engine. */
export function qosEngine(name: string, input: Record<string, unknown> = {}): Engine {
  let o = resolveOptions(`engine ${name} (qos)`, spec, input);
  /** Calls admitted and not ended (a set, not per-call state: the pass path allocates nothing). */
  let running = new Set<CallInfo>();
  /** After a replace: the successor that now counts the calls this engine admitted (they still end here: calls keep their chain). */
  let movedTo: ((call: CallInfo) => void) | undefined;
  const ended = (call: CallInfo): void => {
    if (movedTo !== undefined) movedTo(call); // replaced (maybe more than once): the engine in place counts it
    else if (running.delete(call)) release();
  };
  let seq = 0;
  let waiting: (Held & { due: number; seq: number })[] = [];

  const release = (): void => {
    if (waiting.length === 0) return;
    waiting = waiting.filter((w) => !w.call.ended);
    while (running.size < o.concurrency && waiting.length > 0) {
      // Earliest due first; ties in arrival order. Queues are short, a scan is enough.
      let best = 0;
      for (let i = 1; i < waiting.length; i++) {
        const a = waiting[i]!;
        const b = waiting[best]!;
        if (a.due < b.due || (a.due === b.due && a.seq < b.seq)) best = i;
      }
      const w = waiting.splice(best, 1)[0]!;
      if (!admit(w)) continue;
      running.add(w.call);
    }
  };

  return {
    kind: "qos",
    name,
    get options() {
      return o;
    },
    onCall(call: CallInfo, point: InterceptPoint) {
      if (point !== "client-send" && point !== "server-receive") return undefined;
      if (running.size < o.concurrency && waiting.length === 0) {
        running.add(call);
        return undefined;
      }
      const { entry, promise } = hold(call);
      waiting.push({ ...entry, due: dueOf(call, o.budgetKey), seq: seq++ });
      return promise;
    },
    onEnd(call: CallInfo) {
      ended(call);
    },
    configure(input2) {
      o = resolveOptions(`engine ${name} (qos)`, spec, { ...o, ...input2 });
      release();
    },
    exportState(): State {
      const s: State = {
        running,
        waiting,
        adopt: (next) => {
          movedTo = next;
        },
      };
      running = new Set();
      waiting = [];
      return s;
    },
    importState(state: unknown) {
      const s = state as State;
      for (const c of s.running) if (!c.ended) running.add(c);
      s.adopt(ended);
      waiting.push(...s.waiting);
      release();
    },
    close() {
      for (const w of waiting.splice(0)) w.settle(undefined);
    },
  };
}
