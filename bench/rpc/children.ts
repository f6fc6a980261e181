/**
 * Server and client child processes of the RPC benchmark. Every child started here is ended by
 * {@link stopChildren}, and also when this process exits for any reason it can observe
 * (normal end, thrown error, SIGINT, SIGTERM); a child whose parent dies anyway exits on
 * its own when the IPC channel closes.
 */
import { fork, type ChildProcess } from "node:child_process";
import { join } from "node:path";
import type { CpuTimes } from "../lib/cpu.js";

const SERVER_SCRIPT = new URL("./server.ts", import.meta.url).pathname;
const CLIENT_SCRIPT = new URL("./client.ts", import.meta.url).pathname;
const live = new Set<ChildProcess>();
let serial = 0;

/** Options of {@link startServer}. */
export interface StartOptions {
  /** Folder under which the child writes V8 CPU profiles (`--cpu-prof`, a subfolder per child); none when undefined. */
  cpuProfDir?: string;
  /** Time the child may take to report its address, in milliseconds. Default 30 000. */
  startTimeoutMs?: number;
  /** Extra environment variables of the child (e.g. `KOALA_BENCH_POLICY`). */
  env?: Record<string, string>;
}

/** A running server child. */
export interface ServerChild {
  /** The address it listens on. */
  address: string;
  /** Its process id. */
  pid: number;
  /** Its CPU time so far (user + system), in microseconds: the process's and its JavaScript thread's. */
  cpuMicros(): Promise<CpuTimes>;
}

/**
 * Forks `bench/rpc/server.ts <system> [address]` under tsx; resolves once the child reports
 * the address it listens on.
 */
export async function startServer(system: "raw" | "koala" | "grpc" | "grpc-tls" | "connect", address?: string, options: StartOptions = {}): Promise<ServerChild> {
  const execArgv = ["--import", "tsx"];
  // One folder per server: Node names each thread's profile itself (tsx's loader thread writes one too).
  if (options.cpuProfDir !== undefined) execArgv.push("--cpu-prof", `--cpu-prof-dir=${join(options.cpuProfDir, `server-${system}-${++serial}`)}`);
  const child = fork(SERVER_SCRIPT, address === undefined ? [system] : [system, address], {
    execArgv,
    stdio: ["ignore", "inherit", "inherit", "ipc"],
    env: options.env === undefined ? process.env : { ...process.env, ...options.env },
  });
  live.add(child);
  child.once("exit", () => live.delete(child));
  // Replies to "cpu" come back in order; a child that dies fails the questions still open.
  const cpuWaiters: { resolve(times: CpuTimes): void; reject(err: Error): void }[] = [];
  child.once("exit", (code, signal) => {
    for (const w of cpuWaiters.splice(0)) w.reject(new Error(`bench server ${system} exited (code ${code}, signal ${signal})`));
  });
  const timeoutMs = options.startTimeoutMs ?? 30_000;
  const bound = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`bench server ${system} did not report an address within ${timeoutMs} ms`)), timeoutMs);
    child.on("message", (m: { address?: string; cpu?: CpuTimes }) => {
      if (m.address !== undefined) {
        clearTimeout(timer);
        resolve(m.address);
      } else if (m.cpu !== undefined) cpuWaiters.shift()?.resolve(m.cpu);
    });
    child.once("exit", (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`bench server ${system} exited before listening (code ${code}, signal ${signal})`));
    });
    child.once("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
  return {
    address: bound,
    pid: child.pid!,
    cpuMicros: () =>
      new Promise<CpuTimes>((resolve, reject) => {
        if (!child.connected) return reject(new Error(`bench server ${system} is gone`));
        cpuWaiters.push({ resolve, reject });
        child.send("cpu");
      }),
  };
}

/** A running client child: one system's client, alone in its process (bench/rpc/client.ts). */
export interface ClientChild {
  /** Runs scenario `name` for `ms` milliseconds: its values, the operations counted and the child's own CPU time (µs: the process's, its JavaScript thread's). */
  run(name: string, ms: number): Promise<{ values: Record<string, number>; ops: number; cpuMicros: number; jsCpuMicros: number }>;
}

/**
 * Forks `bench/rpc/client.ts <system> <address>` under tsx with `env` added (and `--cpu-prof`
 * into a subfolder of `cpuProfDir` when given); resolves once the child made its first call.
 */
export async function startClient(system: "raw" | "koala" | "grpc" | "grpc-tls" | "connect", address: string, env: Record<string, string> = {}, cpuProfDir?: string, startTimeoutMs = 30_000): Promise<ClientChild> {
  const execArgv = ["--import", "tsx"];
  if (cpuProfDir !== undefined) execArgv.push("--cpu-prof", `--cpu-prof-dir=${join(cpuProfDir, `client-${system}-${++serial}`)}`);
  const child = fork(CLIENT_SCRIPT, [system, address], { execArgv, stdio: ["ignore", "inherit", "inherit", "ipc"], env: { ...process.env, ...env } });
  live.add(child);
  child.once("exit", () => live.delete(child));
  type Reply = { ready?: true; error?: string; values?: Record<string, number>; ops?: number; cpuMicros?: number; jsCpuMicros?: number };
  const waiters: { resolve(r: Reply): void; reject(err: Error): void }[] = [];
  child.on("message", (m: Reply) => waiters.shift()?.resolve(m));
  child.once("exit", (code, signal) => {
    for (const w of waiters.splice(0)) w.reject(new Error(`bench client ${system} exited (code ${code}, signal ${signal})`));
  });
  const next = (): Promise<Reply> => new Promise<Reply>((resolve, reject) => waiters.push({ resolve, reject }));
  const timer = setTimeout(() => child.kill("SIGKILL"), startTimeoutMs);
  const first = await next().finally(() => clearTimeout(timer));
  if (first.error !== undefined) throw new Error(`bench client ${system}: ${first.error}`);
  return {
    async run(name, ms) {
      const reply = next();
      child.send({ run: name, ms });
      const r = await reply;
      if (r.error !== undefined) throw new Error(`bench client ${system}, ${name}: ${r.error}`);
      return { values: r.values!, ops: r.ops!, cpuMicros: r.cpuMicros!, jsCpuMicros: r.jsCpuMicros! };
    },
  };
}

/**
 * Ends every child: first by closing its IPC channel (it exits by itself, writing a CPU
 * profile if asked), then with SIGKILL after `graceMs` for any still running.
 */
export async function stopChildren(graceMs = 3000): Promise<void> {
  const children = [...live];
  await Promise.all(
    children.map(
      (c) =>
        new Promise<void>((resolve) => {
          if (c.exitCode !== null || c.signalCode !== null) return resolve();
          const timer = setTimeout(() => {
            c.kill("SIGKILL");
            resolve();
          }, graceMs);
          c.once("exit", () => {
            clearTimeout(timer);
            resolve();
          });
          if (c.connected) c.disconnect();
          else c.kill("SIGKILL");
        }),
    ),
  );
  killChildrenNow();
}

/** SIGKILLs every child still running (synchronous, for exit paths). */
export function killChildrenNow(): void {
  for (const c of live) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
  live.clear();
}

process.on("exit", killChildrenNow);
for (const sig of ["SIGINT", "SIGTERM"] as const) {
  process.on(sig, () => {
    killChildrenNow();
    process.exit(sig === "SIGINT" ? 130 : 143);
  });
}
