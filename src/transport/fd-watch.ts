/**
 * Watching the open-files limit. When a process has no file descriptor left, libuv drains the
 * listen queue itself (the clients see a reset) and Node reports nothing, so a server can be
 * locked out silently. Listeners call {@link checkFileDescriptors} as they accept connections:
 * close to the limit it logs (rate-limited) how many descriptors are open, what the limit is,
 * and what to do. Linux only (it reads /proc); elsewhere it does nothing.
 */
import { readFileSync, readdirSync } from "node:fs";
import { logLimited } from "../log.js";

/** Descriptors kept in reserve: past `limit - MARGIN` the process counts as out of them. */
const MARGIN = 16;
/** Descriptors are counted again after this long, in milliseconds, or sooner when the estimate nears the limit. */
const RECOUNT_MS = 1000;

let limit: number | null | undefined;
let lastCount = 0;
/** Descriptors open at the last count plus connections accepted since. */
let estimate = 0;

/** The soft open-files limit of this process, or null when unknown or unlimited. */
export function openFilesLimit(): number | null {
  if (limit === undefined) {
    try {
      const m = /^Max open files\s+(\d+)/m.exec(readFileSync("/proc/self/limits", "utf8"));
      limit = m === null ? null : Number(m[1]);
    } catch {
      limit = null;
    }
  }
  return limit;
}

/** Logs (at most every 10 s per listener) when the process is at its open-files limit; `where` names the listener. */
export function checkFileDescriptors(where: string): void {
  const max = openFilesLimit();
  if (max === null) return;
  const now = Date.now();
  estimate++;
  if (estimate < max - MARGIN && now - lastCount < RECOUNT_MS) return;
  lastCount = now;
  let open: number;
  try {
    open = readdirSync("/proc/self/fd").length;
  } catch {
    return;
  }
  estimate = open;
  if (open >= max - MARGIN) {
    logLimited(
      "transport.out-of-fds",
      "error",
      "transport",
      `out of file descriptors (EMFILE): ${open} open of a limit of ${max}; new connections on ${where} are refused by the system until some close — raise the limit (ulimit -n) or lower the server's maxConnections`,
      1,
    );
  }
}
