/**
 * The `admission` engine: a concurrency limit with load shedding. Up to `maxConcurrent` calls
 * run; more wait in a queue of at most `maxQueue`; when the oldest waiting call has waited longer
 * than `targetQueueDelayMs`, new calls are shed at once with UNAVAILABLE (the server is
 * overloaded: better a fast failure the client can retry elsewhere than a slow one).
 */
import { Code, RpcError } from "../../errors.js";
import { Fifo } from "../../fifo.js";
import { integer, resolveOptions, type OptionsSpec } from "../../options.js";
import type { CallInfo, InterceptPoint } from "../../rpc/interceptor.js";
import type { Engine } from "../engine.js";
import { admit, hold, type Held } from "./queue.js";

/** Options of the `admission` engine. */
export interface AdmissionOptions {
  /** Calls running at once. Default 256. */
  maxConcurrent: number;
  /** Calls waiting at most; more are shed. Default 1024. */
  maxQueue: number;
  /** Queueing delay past which new calls are shed, in milliseconds. Default 100. */
  targetQueueDelayMs: number;
}

const spec: OptionsSpec<AdmissionOptions> = {
  maxConcurrent: integer(256, 1),
  maxQueue: integer(1024, 0),
  targetQueueDelayMs: integer(100, 0),
};

/** Creates an `admission` engine. */
export function admissionEngine(name: string, input: Record<string, unknown> = {}): Engine {
  let o = resolveOptions(`engine ${name} (admission)`, spec, input);
  /** Calls admitted and not ended (a set, not per-call state: the pass path allocates nothing). */
  let running = new Set<CallInfo>();
  /** After a replace: the successor that now counts the calls this engine admitted (they still end here: calls keep their chain). */
  let movedTo: ((call: CallInfo) => void) | undefined;
  const ended = (call: CallInfo): void => {
    if (movedTo !== undefined) movedTo(call); // replaced (maybe more than once): the engine in place counts it
    else if (running.delete(call)) release();
  };
  let shed = 0;
  const queue = new Fifo<Held>();

  const release = (): void => {
    while (running.size < o.maxConcurrent && queue.length > 0) {
      const h = queue.shift()!;
      if (h.call.ended || !admit(h)) continue;
      running.add(h.call);
    }
  };

  return {
    kind: "admission",
    name,
    get options() {
      return o;
    },
    get shedCount() {
      return shed;
    },
    onCall(call: CallInfo, point: InterceptPoint) {
      if (point !== "client-send" && point !== "server-receive") return undefined;
      if (running.size < o.maxConcurrent && queue.length === 0) {
        running.add(call);
        return undefined;
      }
      const oldest = queue.peek();
      if (queue.length >= o.maxQueue || (oldest !== undefined && Date.now() - oldest.since > o.targetQueueDelayMs)) {
        shed++;
        return new RpcError(Code.UNAVAILABLE, `overloaded: ${running.size} calls running, ${queue.length} waiting (engine ${name}); try again later`);
      }
      const { entry, promise } = hold(call);
      queue.push(entry);
      return promise;
    },
    onEnd(call: CallInfo) {
      ended(call);
    },
    configure(input2) {
      o = resolveOptions(`engine ${name} (admission)`, spec, { ...o, ...input2 });
      release();
    },
    exportState() {
      const s = {
        running,
        shed,
        queue: queue.drain(),
        // The successor gives its end handler: calls admitted here end here and are passed on.
        adopt: (next: (call: CallInfo) => void) => {
          movedTo = next;
        },
      };
      running = new Set();
      return s;
    },
    importState(state: unknown) {
      const s = state as { running: Set<CallInfo>; shed: number; queue: Held[]; adopt: (ended: (call: CallInfo) => void) => void };
      for (const c of s.running) if (!c.ended) running.add(c);
      s.adopt(ended);
      shed += s.shed;
      for (const h of s.queue) queue.push(h);
      release();
    },
    close() {
      for (const h of queue.drain()) h.settle(undefined);
    },
  } as Engine & { readonly shedCount: number };
}
