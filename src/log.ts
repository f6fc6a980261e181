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
