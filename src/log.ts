/**
 * Diagnostics. Every event is published on a `node:diagnostics_channel` channel named
 * `koala:<topic>` (subscribe to trace without touching output); `KOALA_LOG` (off, error,
 * warn, info, debug; default warn) also prints events at or above that level to stderr.
 */
import diagnostics from "node:diagnostics_channel";

/** Log levels, most severe first. */
export type LogLevel = "error" | "warn" | "info" | "debug";

const rank: Record<LogLevel, number> = { error: 0, warn: 1, info: 2, debug: 3 };

/** A published diagnostic event. */
export interface LogEvent {
  level: LogLevel;
  topic: string;
  message: string;
  data?: Record<string, unknown>;
}

let threshold: number | undefined;

function currentThreshold(): number {
  if (threshold === undefined) {
    const v = (process.env.KOALA_LOG ?? "warn").toLowerCase();
    threshold = v === "off" ? -1 : v in rank ? rank[v as LogLevel] : rank.warn;
  }
  return threshold;
}

/** Sets the level printed to stderr (the configuration file's `log`), until {@link resetLogLevel}. */
export function setLogLevel(level: LogLevel | "off"): void {
  threshold = level === "off" ? -1 : rank[level];
}

/** Re-reads `KOALA_LOG` (for tests that change it). */
export function resetLogLevel(): void {
  threshold = undefined;
}

const channels = new Map<string, diagnostics.Channel>();

/** Publishes an event on `koala:<topic>` and prints it when `KOALA_LOG` asks for its level. */
export function log(level: LogLevel, topic: string, message: string, data?: Record<string, unknown>): void {
  let ch = channels.get(topic);
  if (ch === undefined) {
    ch = diagnostics.channel(`koala:${topic}`);
    channels.set(topic, ch);
  }
  const printed = rank[level] <= currentThreshold();
  if (!printed && !ch.hasSubscribers) return;
  const event: LogEvent = data === undefined ? { level, topic, message } : { level, topic, message, data };
  if (ch.hasSubscribers) ch.publish(event);
  if (printed) process.stderr.write(`koala ${level} [${topic}] ${message}\n`);
}

/** Lines of one kind printed per period; later events of the period are only counted. */
export const LIMITED_LINES_PER_PERIOD = 5;
/** The period of {@link logLimited}, in milliseconds. */
export const LIMITED_PERIOD_MS = 10_000;
/** Distinct kinds tracked; events of kinds past it share the kind {@link OVERFLOW_KIND}. */
const MAX_KINDS = 256;
/** The kind that events of untracked kinds are counted under once {@link MAX_KINDS} is reached. */
export const OVERFLOW_KIND = "other";

interface KindState {
  readonly kind: string;
  level: LogLevel;
  topic: string;
  /** When the current period ends (epoch ms); 0: no period open. */
  periodEnd: number;
  printed: number;
  suppressed: number;
  /** The last suppressed message, quoted in the summary. */
  lastMessage: string;
  timer: NodeJS.Timeout | undefined;
  /** Every event of the kind, printed or not, since the process started (or {@link resetLogLimits}). */
  events: number;
  /** Events of the kind that were not printed. */
  suppressedTotal: number;
}

const kinds = new Map<string, KindState>();
let linesPerPeriod = LIMITED_LINES_PER_PERIOD;
let periodMs = LIMITED_PERIOD_MS;

/**
 * Changes the rate limit of {@link logLimited} (for tests that cannot wait 10 s for a summary);
 * without an argument, back to the defaults ({@link LIMITED_LINES_PER_PERIOD} per
 * {@link LIMITED_PERIOD_MS}). Applies to periods that start afterwards.
 */
export function setLogLimits(limits?: { linesPerPeriod?: number; periodMs?: number }): void {
  const lines = limits?.linesPerPeriod ?? LIMITED_LINES_PER_PERIOD;
  const ms = limits?.periodMs ?? LIMITED_PERIOD_MS;
  if (!Number.isInteger(lines) || lines < 0 || !(ms > 0)) {
    throw new RangeError(`setLogLimits(): linesPerPeriod must be an integer ≥ 0 and periodMs > 0, got ${lines} and ${ms}`);
  }
  linesPerPeriod = lines;
  periodMs = ms;
}

/** Counters of one kind of rate-limited event (see {@link limitedEventCounts}). */
export interface LimitedEventCount {
  /** The kind, as given to {@link logLimited}. */
  readonly kind: string;
  /** Its log level. */
  readonly level: LogLevel;
  /** Every event of the kind so far, whether its line was printed or not. */
  readonly events: number;
  /** Events whose line was not printed (counted in a summary line instead). */
  readonly suppressed: number;
}

/**
 * Logs an event that something outside the process can repeat at will (a remote peer's malformed
 * frame, a limit it hits, a timeout it provokes): `kind` is a stable name of the kind of event
 * (e.g. `"server.protocol"`), never built from what the peer sent. Of each kind the first
 * {@link LIMITED_LINES_PER_PERIOD} events of a {@link LIMITED_PERIOD_MS} period are logged as
 * {@link log} would; the rest are only counted, and at the end of the period one summary line
 * says "N more like this in the last 10 s" (quoting the last one). So a flood of any size prints
 * at most 6 lines per kind per 10 s, and the state is bounded: 256 kinds at most, later ones
 * counted together as {@link OVERFLOW_KIND}. Every event is counted ({@link limitedEventCounts}),
 * which the metrics engine exports. `lines` overrides how many lines of the kind print per
 * period: 1 suits a state of the process that many events report alike (out of file
 * descriptors, the server full), where one line says it all.
 */
export function logLimited(kind: string, level: LogLevel, topic: string, message: string, lines = linesPerPeriod): void {
  let st = kinds.get(kind);
  if (st === undefined) {
    if (kinds.size >= MAX_KINDS) {
      kind = OVERFLOW_KIND;
      st = kinds.get(kind);
    }
    if (st === undefined) {
      st = { kind, level, topic, periodEnd: 0, printed: 0, suppressed: 0, lastMessage: "", timer: undefined, events: 0, suppressedTotal: 0 };
      kinds.set(kind, st);
    }
  }
  st.events++;
  const now = Date.now();
  if (now >= st.periodEnd) {
    if (st.suppressed > 0) flushSummary(st);
    st.periodEnd = now + periodMs;
    st.printed = 0;
  }
  if (st.printed < lines) {
    st.printed++;
    log(level, topic, message);
    return;
  }
  st.suppressed++;
  st.suppressedTotal++;
  st.level = level;
  st.topic = topic;
  st.lastMessage = message;
  if (st.timer === undefined) {
    const state = st;
    st.timer = setTimeout(() => {
      state.timer = undefined;
      if (state.suppressed > 0) flushSummary(state);
    }, Math.max(0, st.periodEnd - now));
    st.timer.unref();
  }
}

/** Prints the summary of a kind's suppressed events and starts counting afresh. */
function flushSummary(st: KindState): void {
  if (st.timer !== undefined) clearTimeout(st.timer);
  st.timer = undefined;
  const n = st.suppressed;
  st.suppressed = 0;
  const last = st.lastMessage.length > 300 ? `${st.lastMessage.slice(0, 300)}…` : st.lastMessage;
  st.lastMessage = "";
  log(st.level, st.topic, `${n} more like this in the last ${periodMs / 1000} s (${st.kind}; the last: ${last})`, { kind: st.kind, suppressed: n });
}

/** Counters of every kind of event given to {@link logLimited} so far (the metrics engine exports them). */
export function limitedEventCounts(): LimitedEventCount[] {
  const out: LimitedEventCount[] = [];
  for (const st of kinds.values()) out.push({ kind: st.kind, level: st.level, events: st.events, suppressed: st.suppressedTotal });
  return out;
}

/** Forgets every rate-limited kind and its counters, dropping pending summaries (for tests that count log lines). */
export function resetLogLimits(): void {
  for (const st of kinds.values()) if (st.timer !== undefined) clearTimeout(st.timer);
  kinds.clear();
}
