/** The `null` engine: passes every call. A baseline for measuring what the chain itself costs. */
import { resolveOptions } from "../../options.js";
import type { Engine } from "../engine.js";

/** Creates a `null` engine (no options). */
export function nullEngine(name: string, options: Record<string, unknown> = {}): Engine {
  resolveOptions(`engine ${name} (null)`, {}, options);
  return {
    kind: "null",
    name,
    options: {},
    onCall: () => undefined,
    configure(o) {
      resolveOptions(`engine ${name} (null)`, {}, o);
    },
  };
}
