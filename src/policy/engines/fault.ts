/**
 * The `fault` engine, for tests and chaos drills: aborts a fraction of calls with a status, and
 * delays a fraction. Draws come from a seeded generator, so a run can be repeated exactly.
 */
import { Code, RpcError } from "../../errors.js";
import { integer, number, resolveOptions, type OptionsSpec } from "../../options.js";
import type { CallInfo, InterceptPoint } from "../../rpc/interceptor.js";
import type { Engine } from "../engine.js";

/** Options of the `fault` engine. */
export interface FaultOptions {
  /** Fraction of calls failed, 0–1. Default 0. */
  abortFraction: number;
  /** gRPC code of the failure. Default 14 (UNAVAILABLE). */
  abortCode: number;
  /** Fraction of calls delayed, 0–1. Default 0. */
  delayFraction: number;
  /** Delay, in milliseconds. Default 100. */
  delayMs: number;
  /** Seed of the generator; 0 picks one at random. Default 0. */
  seed: number;
}

const spec: OptionsSpec<FaultOptions> = {
  abortFraction: number(0, 0, 1),
  abortCode: integer(Code.UNAVAILABLE, 1, 16),
  delayFraction: number(0, 0, 1),
  delayMs: integer(100, 0, 2 ** 31 - 1),
  seed: integer(0, 0, 2 ** 32 - 1),
};

/** mulberry32: small, fast, good enough to pick fractions of calls. */
function generator(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Creates a `fault` engine. */
export function faultEngine(name: string, input: Record<string, unknown> = {}): Engine {
  let o = resolveOptions(`engine ${name} (fault)`, spec, input);
  let random = generator(o.seed === 0 ? (Math.random() * 2 ** 32) >>> 0 : o.seed);
  return {
    kind: "fault",
    name,
    get options() {
      return o;
    },
    onCall(_call: CallInfo, point: InterceptPoint) {
      if (point !== "client-send" && point !== "server-receive") return undefined;
      if (o.abortFraction > 0 && random() < o.abortFraction) return new RpcError(o.abortCode as Code, `fault injected by engine ${name}`);
      if (o.delayFraction > 0 && random() < o.delayFraction) return new Promise<undefined>((r) => setTimeout(() => r(undefined), o.delayMs));
      return undefined;
    },
    configure(input2) {
      const before = o.seed;
      o = resolveOptions(`engine ${name} (fault)`, spec, { ...o, ...input2 });
      if (o.seed !== before && o.seed !== 0) random = generator(o.seed);
    },
  };
}
