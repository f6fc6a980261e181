/**
 * Benchmark plumbing: servers in child processes (so client and server each get a core),
 * interleaved rounds with medians (noise hits every system alike), and the result table.
 */
import { fork, type ChildProcess } from "node:child_process";
import os from "node:os";

/** Starts `bench/servers/<name>.ts` in a child process; resolves with the child and the address it reports. */
export async function startServer(name: string, env: Record<string, string> = {}): Promise<{ child: ChildProcess; address: string }> {
  const child = fork(new URL(`../servers/${name}.ts`, import.meta.url).pathname, [], {
    execArgv: ["--import", "tsx"],
    env: { ...process.env, ...env },
    stdio: ["ignore", "inherit", "inherit", "ipc"],
  });
  const address = await new Promise<string>((resolve, reject) => {
    child.once("message", (m) => resolve((m as { address: string }).address));
    child.once("exit", (code) => reject(new Error(`bench server ${name} exited early (code ${code})`)));
  });
  return { child, address };
}

const children = new Set<ChildProcess>();

/** Like {@link startServer}, and remembers the child so {@link stopAll} ends it. */
export async function server(name: string, env?: Record<string, string>): Promise<string> {
  const s = await startServer(name, env);
  children.add(s.child);
  return s.address;
}

/** Kills every server started by {@link server}. */
export function stopAll(): void {
  for (const c of children) c.kill("SIGKILL");
  children.clear();
}

process.on("exit", stopAll);

/** Median of numbers. */
export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}

/** Percentile `p` (0..1) of sorted numbers. */
export function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))] ?? NaN;
}

/** Runs `fn` with 1 in flight for `ms`; returns latencies in µs, sorted. */
export async function pingPong(ms: number, fn: () => Promise<unknown>): Promise<number[]> {
  for (let i = 0; i < 200; i++) await fn();
  const lat: number[] = [];
  const end = performance.now() + ms;
  while (performance.now() < end) {
    const t0 = process.hrtime.bigint();
    await fn();
    lat.push(Number(process.hrtime.bigint() - t0) / 1000);
  }
  return lat.sort((a, b) => a - b);
}

/** Runs `fn` with `window` in flight for `ms`; returns completions per second. */
export async function pipelined(ms: number, window: number, fn: () => Promise<unknown>): Promise<number> {
  await Promise.all(Array.from({ length: Math.min(window, 32) }, () => fn()));
  let done = 0;
  const t0 = performance.now();
  const end = t0 + ms;
  await Promise.all(
    Array.from({ length: window }, async () => {
      while (performance.now() < end) {
        await fn();
        done++;
      }
    }),
  );
  return done / ((performance.now() - t0) / 1000);
}

/** The machine, for the report. */
export function machine(): string {
  const cpus = os.cpus();
  return `${cpus[0]?.model ?? "unknown CPU"} × ${cpus.length} cores, ${Math.round(os.totalmem() / 2 ** 30)} GiB, Node ${process.version}, ${os.platform()} ${os.release()}, ${new Date().toISOString().slice(0, 10)}`;
}

/** Formats a number with thousands separators and `digits` decimals. */
export function fmt(x: number, digits = 0): string {
  return Number.isFinite(x) ? x.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits }) : "—";
}

/** Prints a table with aligned columns. */
export function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (r: string[]) => `| ${r.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(" | ")} |`;
  return [line(header), `|${widths.map((w, i) => (i === 0 ? ":" : "") + "-".repeat(w + 1) + (i === 0 ? "" : ":")).join("|")}|`, ...rows.map(line)].join("\n");
}
