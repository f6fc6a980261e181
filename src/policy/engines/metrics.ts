/**
 * The `metrics` engine: counts calls by method, side and status code, and a latency histogram
 * per method; calls by method and transport, on each side (the client's: the connection the
 * call went on; the server's: the connection it came on, so one server listening on tcp and
 * rdma shows how its calls arrive); and the attempts of calls with a retry or hedging policy (every channel of the
 * process, whatever the engine's scope: they come from the `koala:rpc.attempt` diagnostics
 * channel, not from the calls it sees), by method and outcome; exposed as Prometheus text (`render()`; `koala ctl metrics` and the optional HTTP
 * endpoint serve it). It never holds or rejects a call.
 */
import { Code, codeName, type RpcError } from "../../errors.js";
import { custom, resolveOptions, type OptionsSpec } from "../../options.js";
import type { CallInfo } from "../../rpc/interceptor.js";
import type { Engine } from "../engine.js";
import { limitedEventCounts } from "../../log.js";
import diagnostics from "node:diagnostics_channel";
import { ATTEMPT_CHANNEL, type AttemptEvent, type AttemptOutcome, type ClientCallInfo } from "../../rpc/client.js";

/** Options of the `metrics` engine. */
export interface MetricsOptions {
  /** Upper bounds of the latency buckets, in seconds, ascending. Default 0.0001 … 10. */
  bucketsSeconds: readonly number[];
}

const DEFAULT_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10];

const spec: OptionsSpec<MetricsOptions> = {
  bucketsSeconds: custom<readonly number[]>(DEFAULT_BUCKETS, "ascending positive numbers", (v) => Array.isArray(v) && v.length > 0 && v.every((x, i) => typeof x === "number" && x > 0 && (i === 0 || x > (v[i - 1] as number)))),
};

interface Series {
  side: string;
  path: string;
  codes: Map<Code, number>;
  buckets: number[];
  sum: number;
  count: number;
}

/** A `metrics` engine with its Prometheus text. */
export interface MetricsEngine extends Engine {
  /** Attempts of calls with a retry or hedging policy counted so far, by method path and outcome (all outcomes when omitted). */
  attempts(path: string, outcome?: AttemptOutcome): number;
  /**
   * Calls counted so far by method path and transport: client calls by the transport they went
   * on ("none": they never had a connection), or with `side` "server", served calls by the
   * transport of the connection they came on.
   */
  byTransport(path: string, transport: string, side?: "client" | "server"): number;
  /** Calls counted so far, by `side path code` (for tests and dashboards). */
  count(side: "client" | "server", path: string, code?: Code): number;
  /**
   * The Prometheus text exposition of everything counted, followed by the process's counters of
   * rate-limited log events (see {@link renderLogEventCounters}) unless `logEvents` is false.
   */
  render(options?: { logEvents?: boolean }): string;
}

type SeriesBySide = { client: Map<string, Series>; server: Map<string, Series> };

function newSeries(): SeriesBySide {
  return { client: new Map(), server: new Map() };
}

/** Creates a `metrics` engine. */
export function metricsEngine(name: string, input: Record<string, unknown> = {}): MetricsEngine {
  let o = resolveOptions(`engine ${name} (metrics)`, spec, input);
  // By side, then method path: finding a call's series builds no key string.
  let series = newSeries();
  // Attempts by method path, then outcome.
  let attempts = new Map<string, Map<AttemptOutcome, number>>();
  // Client calls by method path, then transport; and served calls.
  let transports = new Map<string, Map<string, number>>();
  let served = new Map<string, Map<string, number>>();
  const onAttempt = (message: unknown) => {
    const e = message as AttemptEvent;
    let m = attempts.get(e.path);
    if (m === undefined) attempts.set(e.path, (m = new Map()));
    m.set(e.outcome, (m.get(e.outcome) ?? 0) + 1);
  };
  diagnostics.subscribe(ATTEMPT_CHANNEL, onAttempt);
  const seriesOf = (side: "client" | "server", path: string): Series => {
    let s = series[side].get(path);
    if (s === undefined) {
      s = { side, path, codes: new Map(), buckets: new Array<number>(o.bucketsSeconds.length).fill(0), sum: 0, count: 0 };
      series[side].set(path, s);
    }
    return s;
  };
  return {
    kind: "metrics",
    name,
    get options() {
      return o;
    },
    onEnd(call: CallInfo, error: RpcError | undefined) {
      const s = seriesOf(call.side, call.path);
      // The server's call reads its connection's transport (a field of the connection, set once).
      const t = (call as ClientCallInfo).transport ?? "none";
      const by = call.side === "client" ? transports : served;
      let m = by.get(call.path);
      if (m === undefined) by.set(call.path, (m = new Map()));
      m.set(t, (m.get(t) ?? 0) + 1);
      const code = error?.code ?? Code.OK;
      s.codes.set(code, (s.codes.get(code) ?? 0) + 1);
      const seconds = (Date.now() - call.startedAt) / 1000;
      s.sum += seconds;
      s.count++;
      for (let i = 0; i < o.bucketsSeconds.length; i++) if (seconds <= o.bucketsSeconds[i]!) s.buckets[i]!++;
    },
    byTransport(path, transport, side = "client") {
      return (side === "client" ? transports : served).get(path)?.get(transport) ?? 0;
    },
    attempts(path, outcome) {
      const m = attempts.get(path);
      if (m === undefined) return 0;
      if (outcome !== undefined) return m.get(outcome) ?? 0;
      let n = 0;
      for (const v of m.values()) n += v;
      return n;
    },
    close() {
      diagnostics.unsubscribe(ATTEMPT_CHANNEL, onAttempt);
    },
    count(side, path, code) {
      const s = series[side].get(path);
      if (s === undefined) return 0;
      if (code !== undefined) return s.codes.get(code) ?? 0;
      return s.count;
    },
    render(options) {
      const lines = [
        "# HELP koala_calls_total Calls ended, by side, method and status code.",
        "# TYPE koala_calls_total counter",
      ];
      const all = [...series.client.values(), ...series.server.values()];
      for (const s of all) {
        for (const [code, n] of s.codes) lines.push(`koala_calls_total{side="${s.side}",method="${s.path}",code="${codeName(code)}"} ${n}`);
      }
      lines.push("# HELP koala_call_duration_seconds Call latency, by side and method.", "# TYPE koala_call_duration_seconds histogram");
      for (const s of all) {
        const l = `side="${s.side}",method="${s.path}"`;
        o.bucketsSeconds.forEach((b, i) => lines.push(`koala_call_duration_seconds_bucket{${l},le="${b}"} ${s.buckets[i]}`));
        lines.push(`koala_call_duration_seconds_bucket{${l},le="+Inf"} ${s.count}`, `koala_call_duration_seconds_sum{${l}} ${s.sum}`, `koala_call_duration_seconds_count{${l}} ${s.count}`);
      }
      lines.push("# HELP koala_client_calls_by_transport_total Client calls ended, by method and the transport of the connection they went on (none: they never had one).", "# TYPE koala_client_calls_by_transport_total counter");
      for (const [path, m] of transports) for (const [t, n] of m) lines.push(`koala_client_calls_by_transport_total{method="${labelValue(path)}",transport="${t}"} ${n}`);
      lines.push("# HELP koala_server_calls_by_transport_total Server calls ended, by method and the transport of the connection they came on.", "# TYPE koala_server_calls_by_transport_total counter");
      for (const [path, m] of served) for (const [t, n] of m) lines.push(`koala_server_calls_by_transport_total{method="${labelValue(path)}",transport="${t}"} ${n}`);
      lines.push(
        "# HELP koala_client_attempts_total Attempts of client calls with a retry or hedging policy, by method and outcome (ok / failed: the call's answer; retried: failed, the call went on; transparent: refused unprocessed, sent again; cancelled: lost to another hedge or ended with its call).",
        "# TYPE koala_client_attempts_total counter",
      );
      for (const [path, m] of attempts) for (const [outcome, n] of m) lines.push(`koala_client_attempts_total{method="${labelValue(path)}",outcome="${outcome}"} ${n}`);
      return `${lines.join("\n")}\n${options?.logEvents === false ? "" : renderLogEventCounters()}`;
    },
    configure(input2) {
      const next = resolveOptions(`engine ${name} (metrics)`, spec, { ...o, ...input2 });
      if (next.bucketsSeconds.join() !== o.bucketsSeconds.join()) series = newSeries(); // histograms with other buckets start over
      o = next;
    },
    exportState() {
      return { series, buckets: o.bucketsSeconds, attempts, transports, served };
    },
    importState(state: unknown) {
      const s = state as { series: SeriesBySide; buckets: readonly number[]; attempts?: Map<string, Map<AttemptOutcome, number>>; transports?: Map<string, Map<string, number>>; served?: Map<string, Map<string, number>> };
      if (s.transports !== undefined) transports = s.transports;
      if (s.served !== undefined) served = s.served;
      if (s.buckets.join() === o.bucketsSeconds.join()) series = s.series;
      if (s.attempts !== undefined) attempts = s.attempts;
    },
  };
}

/** A Prometheus label value: backslash, double quote and newline escaped. */
function labelValue(v: string): string {
  return v.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");
}

/**
 * The process's counters of events that a remote peer (or load) can repeat at will — protocol
 * errors, limits hit, keepalive timeouts, bad metadata… (see `logLimited` in src/log.ts) — as
 * Prometheus text: `koala_log_events_total{kind,level}` counts every event, logged or not;
 * `koala_log_suppressed_total{kind}` those whose line was left out under the rate limit.
 */
export function renderLogEventCounters(): string {
  const counts = limitedEventCounts();
  const lines = [
    "# HELP koala_log_events_total Events of rate-limited log kinds (peer errors, limits hit, timeouts), each counted whether its line was printed or not.",
    "# TYPE koala_log_events_total counter",
  ];
  for (const c of counts) lines.push(`koala_log_events_total{kind="${labelValue(c.kind)}",level="${c.level}"} ${c.events}`);
  lines.push("# HELP koala_log_suppressed_total Events of rate-limited log kinds whose line was not printed (one summary line per 10 s said how many).", "# TYPE koala_log_suppressed_total counter");
  for (const c of counts) lines.push(`koala_log_suppressed_total{kind="${labelValue(c.kind)}"} ${c.suppressed}`);
  return `${lines.join("\n")}\n`;
}
