/** Calls held by an engine: each waits on a promise the engine settles later, in any order. */
import type { CallInfo } from "../../rpc/interceptor.js";
import { Code, RpcError } from "../../errors.js";

/** One held call. */
export interface Held {
  call: CallInfo;
  /** When it was held (epoch ms). */
  since: number;
  /** Lets the call go on (undefined) or rejects it. */
  settle(verdict: undefined | RpcError): void;
}

/** Holds `call`: returns the promise the core waits on, and the entry the engine keeps. */
export function hold(call: CallInfo): { entry: Held; promise: Promise<undefined | RpcError> } {
  let settle!: (v: undefined | RpcError) => void;
  const promise = new Promise<undefined | RpcError>((resolve) => (settle = resolve));
  return { entry: { call, since: Date.now(), settle }, promise };
}

/**
 * Lets a held call go on, unless its deadline has passed while it waited: then it fails with
 * DEADLINE_EXCEEDED here rather than start work nobody waits for. Returns true when it went on.
 */
export function admit(h: Held): boolean {
  const d = h.call.deadline;
  if (d !== undefined && d <= Date.now()) {
    h.settle(new RpcError(Code.DEADLINE_EXCEEDED, `deadline exceeded while held by a policy engine`));
    return false;
  }
  h.settle(undefined);
  return true;
}
