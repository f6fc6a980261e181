/**
 * The policy engine contract. An engine is an interceptor of the RPC core (see
 * src/rpc/interceptor.ts) with a kind, validated options, and state it can hand to its
 * successor, so that an operator can replace or reconfigure it on a serving process without
 * losing its token bucket, its queue or its counters (as mRPC's engines do across an upgrade).
 */
import type { Interceptor } from "../rpc/interceptor.js";

/** A policy engine. */
export interface Engine extends Interceptor {
  /** Which engine this is (`ratelimit`, `qos`, …). */
  readonly kind: string;
  /** The options in force, with defaults filled in. */
  readonly options: object;
  /** Applies new options (validated; a bad one throws naming the key) without losing state. */
  configure(options: Record<string, unknown>): void;
  /** The state a successor of the same kind takes over (queued calls, counters, tokens). */
  exportState?(): unknown;
  /** Takes over a predecessor's state (from `exportState` of an engine of the same kind). */
  importState?(state: unknown): void;
  /** Stops timers; queued calls are released to the successor (after `exportState`) or passed. */
  close?(): void;
}

/** Makes an engine named `name` from options (validated). */
export type EngineFactory = (name: string, options: Record<string, unknown>) => Engine;
