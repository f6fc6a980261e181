/**
 * Echo servers in child processes: started with `fork` through tsx, stopped in order (so a
 * `--cpu-prof` child writes its profile), and killed without fail when the bench ends,
 * whether it ends normally, by an error or by a signal.
 */
import { fork, type ChildProcess } from "node:child_process";

const SCRIPT = new URL("./echo-server.ts", import.meta.url).pathname;
const children = new Set<ChildProcess>();

/** A running echo server. */
export interface EchoServer {
  /** The address it listens on (`tcp://127.0.0.1:port` or `unix:/path`). */
  readonly address: string;
  /** Asks the child to exit (IPC disconnect), then kills it if it is still there after `graceMs` (default 3000). */
  stop(graceMs?: number): Promise<void>;
}

/** Starts an echo server of `system` at `address` in a child process; `execArgv` is added after `--import tsx` (e.g. `--cpu-prof`). */
export async function startEchoServer(system: "raw" | "koala", address: string, execArgv: string[] = []): Promise<EchoServer> {
  const child = fork(SCRIPT, [], {
    execArgv: ["--import", "tsx", ...execArgv],
    env: { ...process.env, BENCH_SYSTEM: system, BENCH_ADDRESS: address },
    stdio: ["ignore", "inherit", "inherit", "ipc"],
  });
  children.add(child);
  child.once("exit", () => children.delete(child));
  try {
    const bound = await new Promise<string>((resolve, reject) => {
      child.once("message", (m) => resolve((m as { address: string }).address));
      child.once("error", reject);
      child.once("exit", (code, signal) => reject(new Error(`bench: the ${system} echo server exited before listening (code ${code}, signal ${signal})`)));
    });
    return { address: bound, stop: (graceMs) => stopChild(child, graceMs) };
  } catch (err) {
    child.kill("SIGKILL");
    throw err;
  }
}

async function stopChild(child: ChildProcess, graceMs = 3000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  if (child.connected) child.disconnect();
  else child.kill("SIGTERM");
  const timer = setTimeout(() => child.kill("SIGKILL"), graceMs);
  await exited;
  clearTimeout(timer);
}

/** Kills every echo server still running, at once (for exit paths that cannot wait). */
export function killEchoServers(): void {
  for (const c of children) c.kill("SIGKILL");
  children.clear();
}

process.on("exit", killEchoServers);
for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
  process.once(signal, () => {
    killEchoServers();
    process.exit(128 + (signal === "SIGINT" ? 2 : signal === "SIGTERM" ? 15 : 1));
  });
}
