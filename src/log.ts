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

/** How often one repeated event may print, in milliseconds. */
const REPEAT_INTERVAL_MS = 10_000;
const repeats = new Map<string, { until: number; suppressed: number }>();

/**
 * Logs like {@link log}, but at most once per 10 s for the same `key` (e.g. a kind of protocol
 * error from one peer address); the next line that gets through says how many were suppressed.
 * Suppressed events are only counted; the line that gets through carries `data.suppressed`.
 */
export function logLimited(key: string, level: LogLevel, topic: string, message: string): void {
  const now = Date.now();
  const r = repeats.get(key);
  if (r !== undefined && now < r.until) {
    r.suppressed++;
    return;
  }
  if (repeats.size >= 10_000) repeats.clear(); // bounded: a flood of distinct keys cannot grow it
  const suppressed = r?.suppressed ?? 0;
  repeats.set(key, { until: now + REPEAT_INTERVAL_MS, suppressed: 0 });
  log(level, topic, suppressed > 0 ? `${message} (${suppressed} more like it in the last ${REPEAT_INTERVAL_MS / 1000} s)` : message, suppressed > 0 ? { suppressed } : undefined);
}

/** Forgets which repeated events were logged recently (for tests that count log lines). */
export function resetLogLimits(): void {
  repeats.clear();
}
