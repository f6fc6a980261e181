/**
 * The `fault` engine, for tests and chaos drills: aborts a fraction of calls with a status, and
 * delays a fraction. Draws come from a seeded generator, so a run can be repeated exactly.
 */
import { Code, RpcError } from "../../errors.js";
import { integer, number, resolveOptions, type OptionsSpec } from "../../options.js";
import type { CallInfo, InterceptPoint } from "../../rpc/interceptor.js";
import type { Engine } from "../engine.js";
import { seededRandom } from "../../random.js";

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

/** Creates a `fault` engine. */
export function faultEngine(name: string, input: Record<string, unknown> = {}): Engine {
  let o = resolveOptions(`engine ${name} (fault)`, spec, input);
  let random = seededRandom(o.seed === 0 ? (Math.random() * 2 ** 32) >>> 0 : o.seed);
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
      if (o.seed !== before && o.seed !== 0) random = seededRandom(o.seed);
    },
  };
}
