/**
 * The `logging` engine: one structured line per call when it ends (side, method, peer, code,
 * duration), published on `koala:policy` and printed when `KOALA_LOG` asks for info; or handed
 * to a `sink` function given in code.
 */
import { Code, codeName, type RpcError } from "../../errors.js";
import { log } from "../../log.js";
import { custom, resolveOptions, type OptionsSpec } from "../../options.js";
import type { CallInfo } from "../../rpc/interceptor.js";
import type { Engine } from "../engine.js";

/** One logged call. */
export interface CallLogLine {
  side: "client" | "server";
  method: string;
  peer: string;
  code: string;
  ms: number;
  error?: string;
}

/** Options of the `logging` engine. */
export interface LoggingOptions {
  /** Receives each line instead of the log (in code only). Default: the log, level info. */
  sink: ((line: CallLogLine) => void) | null;
}

const spec: OptionsSpec<LoggingOptions> = {
  sink: custom<((line: CallLogLine) => void) | null>(null, "a function or null", (v) => v === null || typeof v === "function"),
};

/** Creates a `logging` engine. */
export function loggingEngine(name: string, input: Record<string, unknown> = {}): Engine {
  let o = resolveOptions(`engine ${name} (logging)`, spec, input);
  return {
    kind: "logging",
    name,
    get options() {
      return o;
    },
    onEnd(call: CallInfo, error: RpcError | undefined) {
      const line: CallLogLine = { side: call.side, method: call.path, peer: call.peer, code: codeName(error?.code ?? Code.OK), ms: Date.now() - call.startedAt };
      if (error !== undefined) line.error = error.rawMessage;
      if (o.sink !== null) o.sink(line);
      else log("info", "policy", JSON.stringify(line));
    },
    configure(input2) {
      o = resolveOptions(`engine ${name} (logging)`, spec, { ...o, ...input2 });
    },
  };
}
