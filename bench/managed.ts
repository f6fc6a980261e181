/**
 * Managed mode beside library mode, same run (`npm run bench:managed`): a koala Echo server in a
 * child process on tcp; the library client calls it directly, the managed client through a
 * `koala daemon` in another child process (shared rings to the daemon, the daemon's tcp
 * connection to the server). Interleaved rounds, medians, and managed / library ratios:
 *
 * - p50 (µs) of 64 B unary calls, one in flight;
 * - calls/s of 64 B unary calls with 256 in flight;
 * - p50 (µs) and MB/s of 1 MiB unary calls (request and reply 1 MiB each), one in flight;
 * - CPU µs per call of each process (client, daemon, server) at 256 and at 1 in flight.
 *
 * The issue's goal: managed adds at most 5 µs to p50 and costs at most 25% of the calls/s at
 * 256 in flight. On this machine three processes (client, daemon, server) share two cores in
 * managed mode, two in library mode: read the ratios with that in mind.
 *
 * `--transport` picks the server's transport, which the library client and the daemon dial:
 * `tcp` (default), `rdma-soft` (the software verbs provider) or `rdma-native` (the native addon
 * over srnic, the software RNIC built by `npm run build:rdma`, its service thread polling 50 µs as
 * in bench:rpc). The application always reaches the daemon through its rings.
 *
 *   node --import tsx bench/managed.ts [--rounds N] [--ms N] [--poll-us N] [--poll-mode adaptive|fixed] [--out FILE]
 *     [--cpu-prof-daemon DIR] [--cpu-prof-server DIR] [--managed-only] [--only p50|calls|big]
 *     [--transport tcp|rdma-soft|rdma-native]
 */
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { closeClient, createClient, createServer } from "../src/index.js";
import { startDaemon } from "../src/managed/daemon.js";
import { EchoService } from "../test/fixtures/rpc/gen/echo.js";

/** Processes whose CPU time per call the 256-in-flight scenario reports: this one (the client), the daemon, the server. */
const watched: { client: number; daemon: number; server: number } = { client: process.pid, daemon: 0, server: 0 };

const role = process.argv[2];

if (role === "--server") {
  const server = createServer();
  server.add(EchoService, {
    unary: async (req) => EchoService.methods.unary.output.create({ text: req.text, payload: req.payload }),
    serverStream: async function* () {},
    clientStream: async () => EchoService.methods.unary.output.create({}),
    bidi: async function* () {},
  });
  process.stdout.write(`${await server.listen(process.argv[3] ?? "tcp://127.0.0.1:0")}\n`);
  process.once("SIGINT", () => process.exit(0)); // a profiled server writes its profile as it exits
} else if (role === "--daemon") {
  const us = process.argv[4];
  const mode = process.argv[5];
  const d = await startDaemon({ socketPath: process.argv[3]!, pollUs: us === undefined || us === "" ? undefined : Number(us), pollMode: mode === undefined || mode === "" ? undefined : (mode as "adaptive" | "fixed"), policy: null });
  process.stdout.write(`${d.socketPath}\n`);
  process.once("SIGINT", () => void d.close().then(() => process.exit(0)));
} else {
  await main();
}

function child(args: string[], env: NodeJS.ProcessEnv = {}, profileDir?: string): Promise<{ proc: ChildProcess; line: string }> {
  const prof = profileDir === undefined ? [] : ["--cpu-prof", "--cpu-prof-dir", profileDir];
  const proc = spawn(process.execPath, [...prof, "--import", "tsx", import.meta.filename, ...args], { stdio: ["ignore", "pipe", "inherit"], env: { ...process.env, ...env } });
  return new Promise((resolve, reject) => {
    let buf = "";
    proc.stdout!.on("data", (d: Buffer) => {
      buf += d.toString();
      const nl = buf.indexOf("\n");
      if (nl >= 0) resolve({ proc, line: buf.slice(0, nl) });
    });
    proc.once("exit", (code) => reject(new Error(`${args[0]} exited ${code}`)));
  });
}

type Client = ReturnType<typeof createClient<typeof EchoService>>;

/** The environment and listen address of each `--transport` (set in this process, inherited by the children). */
function transportSetup(name: string): { address: string; env: Record<string, string> } {
  if (name === "tcp") return { address: "tcp://127.0.0.1:0", env: {} };
  if (name === "rdma-soft") return { address: "rdma://127.0.0.1:0", env: { KOALA_RDMA_PROVIDER: "soft" } };
  if (name === "rdma-native") {
    const srnic = join(dirname(fileURLToPath(import.meta.url)), "..", "addons", "rdma", "build", "Release", "koala_srnic.so");
    if (!existsSync(srnic)) throw new Error(`--transport rdma-native needs srnic (${srnic}): run npm run build:rdma`);
    return { address: "rdma://127.0.0.1:0", env: { KOALA_RDMA_PROVIDER: "verbs", KOALA_VERBS_LIB: srnic, KOALA_RDMACM_LIB: srnic, SRNIC_POLL_US: process.env.SRNIC_POLL_US ?? "50" } };
  }
  throw new Error(`--transport takes tcp, rdma-soft or rdma-native, not ${JSON.stringify(name)}`);
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s[Math.floor(s.length / 2)]!;
}

async function latency(client: Client, payload: Uint8Array, ms: number): Promise<{ p50: number; calls: number }> {
  const times: number[] = [];
  const end = performance.now() + ms;
  while (performance.now() < end) {
    const t = performance.now();
    await client.unary({ text: "x", payload });
    times.push((performance.now() - t) * 1000);
  }
  return { p50: median(times), calls: times.length / (ms / 1000) };
}

async function throughput(client: Client, payload: Uint8Array, inFlight: number, ms: number): Promise<number> {
  let done = 0;
  const end = performance.now() + ms;
  const loop = async (): Promise<void> => {
    while (performance.now() < end) {
      await client.unary({ text: "x", payload });
      done++;
    }
  };
  const t = performance.now();
  await Promise.all(Array.from({ length: inFlight }, loop));
  return done / ((performance.now() - t) / 1000);
}

interface Row {
  p50small: number;
  calls256: number;
  p50big: number;
  mbpsBig: number;
  /** CPU µs per call of each process at 256 in flight (the daemon's is 0 in library mode). */
  cpuPerCall: { client: number; daemon: number; server: number };
  /** The same at 1 in flight (64 B): what polling for the answer costs. */
  cpuPerCall1: { client: number; daemon: number; server: number };
}

/** CPU time (user + system) of process `pid` so far, in microseconds, from /proc (clock ticks of 1/100 s on Linux). */
function cpuUs(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(f[11]) + Number(f[12])) * 10_000;
  } catch {
    return NaN;
  }
}

async function measure(client: Client, ms: number, only: string | undefined): Promise<Row> {
  const small = new Uint8Array(64).fill(7);
  const big = new Uint8Array(1024 * 1024).fill(9);
  await latency(client, small, 200); // warm-up
  const cpu1 = { client: NaN, daemon: NaN, server: NaN };
  let s = NaN;
  if (only === undefined || only === "p50") {
    const before = { client: cpuUs(watched.client), daemon: cpuUs(watched.daemon), server: cpuUs(watched.server) };
    const r = await latency(client, small, ms);
    s = r.p50;
    for (const k of ["client", "daemon", "server"] as const) cpu1[k] = (cpuUs(watched[k]) - before[k]) / (r.calls * (ms / 1000));
  }
  let c = NaN;
  const cpu = { client: NaN, daemon: NaN, server: NaN };
  if (only === undefined || only === "calls") {
    const before = { client: cpuUs(watched.client), daemon: cpuUs(watched.daemon), server: cpuUs(watched.server) };
    const t = performance.now();
    c = await throughput(client, small, 256, ms);
    const calls = c * ((performance.now() - t) / 1000);
    for (const k of ["client", "daemon", "server"] as const) cpu[k] = (cpuUs(watched[k]) - before[k]) / calls;
  }
  const b = only === undefined || only === "big" ? await latency(client, big, ms) : { p50: NaN, calls: NaN };
  return { p50small: s, calls256: c, p50big: b.p50, mbpsBig: (b.calls * 2 * big.byteLength) / 1e6, cpuPerCall: cpu, cpuPerCall1: cpu1 };
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { rounds: { type: "string", default: "3" }, ms: { type: "string", default: "1500" }, "poll-us": { type: "string", default: "" }, "poll-mode": { type: "string", default: "" }, out: { type: "string" }, "cpu-prof-daemon": { type: "string" }, "cpu-prof-server": { type: "string" }, "managed-only": { type: "boolean", default: false }, only: { type: "string" }, transport: { type: "string", default: "tcp" } } });
  const transport = transportSetup(values.transport);
  Object.assign(process.env, transport.env);
  const only = values.only;
  if (only !== undefined && !["p50", "calls", "big"].includes(only)) throw new Error("--only takes p50, calls or big");
  const rounds = Number(values.rounds);
  const ms = Number(values.ms);
  // Empty: the defaults (adaptive, at most 200 µs); main before adaptive polling slept at once.
  const pollUs = values["poll-us"];
  const pollMode = values["poll-mode"];
  const dir = mkdtempSync(join(os.tmpdir(), "koala-bench-managed-"));
  const socket = join(dir, "daemon.sock");
  const children: ChildProcess[] = [];
  try {
    const server = await child(["--server", transport.address], {}, values["cpu-prof-server"]);
    children.push(server.proc);
    const daemon = await child(["--daemon", socket, pollUs, pollMode], {}, values["cpu-prof-daemon"]);
    children.push(daemon.proc);
    watched.server = server.proc.pid!;
    watched.daemon = daemon.proc.pid!;
    process.env.KOALA_DAEMON_SOCKET = socket;
    if (pollUs !== "") process.env.KOALA_MANAGED_POLL_US = pollUs;
    if (pollMode !== "") process.env.KOALA_MANAGED_POLL = pollMode;
    const library = createClient(EchoService, server.line);
    const managed = createClient(EchoService, `managed:///${server.line}`);
    const rows: Record<"library" | "managed", Row[]> = { library: [], managed: [] };
    for (let r = 0; r < rounds; r++) {
      if (!values["managed-only"]) rows.library.push(await measure(library, ms, only));
      rows.managed.push(await measure(managed, ms, only));
    }
    closeClient(library);
    closeClient(managed);
    const med = (mode: "library" | "managed", k: Exclude<keyof Row, "cpuPerCall" | "cpuPerCall1">) => median(rows[mode].map((x) => x[k]));
    const medCpu = (mode: "library" | "managed", k: keyof Row["cpuPerCall"], which: "cpuPerCall" | "cpuPerCall1" = "cpuPerCall") => median(rows[mode].map((x) => x[which][k]));
    const fmt = (v: number, d = 0) => v.toFixed(d);
    const lines = [
      `bench:managed — ${os.cpus().length} cores (${os.cpus()[0]?.model ?? "?"}), node ${process.version}, ${values.transport} to the server, ${rounds} interleaved rounds of ${ms} ms per scenario, medians; KOALA_MANAGED_POLL_US=${pollUs === "" ? "(default)" : pollUs} KOALA_MANAGED_POLL=${pollMode === "" ? "(default)" : pollMode}`,
      "",
      "scenario                         library     managed   managed/library   managed - library",
    ];
    const row = (name: string, k: Exclude<keyof Row, "cpuPerCall" | "cpuPerCall1">, unit: string, diff: boolean) => {
      const l = med("library", k);
      const m = med("managed", k);
      lines.push(`${name.padEnd(32)} ${fmt(l, 1).padStart(8)} ${fmt(m, 1).padStart(11)} ${fmt(m / l, 2).padStart(17)} ${(diff ? `${fmt(m - l, 1)} ${unit}` : "").padStart(19)}`);
    };
    row("64 B unary p50 (µs), 1 in flight", "p50small", "µs", true);
    row("64 B unary calls/s, 256 in flight", "calls256", "", false);
    row("1 MiB unary p50 (µs), 1 in flight", "p50big", "µs", true);
    row("1 MiB unary MB/s (both ways)", "mbpsBig", "", false);
    const cpuLine = (mode: "library" | "managed", which: "cpuPerCall" | "cpuPerCall1" = "cpuPerCall") =>
      `client ${fmt(medCpu(mode, "client", which), 2)}, daemon ${fmt(mode === "library" ? 0 : medCpu(mode, "daemon", which), 2)}, server ${fmt(medCpu(mode, "server", which), 2)}`;
    lines.push(`CPU µs per call at 256 in flight (user + system, /proc): library ${cpuLine("library")}; managed ${cpuLine("managed")}`);
    lines.push(`CPU µs per call at 1 in flight, 64 B (the same): library ${cpuLine("library", "cpuPerCall1")}; managed ${cpuLine("managed", "cpuPerCall1")}`);
    const addP50 = med("managed", "p50small") - med("library", "p50small");
    const cost = 1 - med("managed", "calls256") / med("library", "calls256");
    lines.push("");
    lines.push(`goal: managed adds <= 5 µs to p50: ${addP50 <= 5 ? "met" : "NOT met"} (${fmt(addP50, 1)} µs); costs <= 25% of calls/s at 256 in flight: ${cost <= 0.25 ? "met" : "NOT met"} (${fmt(cost * 100, 0)}%)`);
    lines.push(`per round: ${JSON.stringify(rows)}`);
    const text = `${lines.join("\n")}\n`;
    process.stdout.write(text);
    if (values.out !== undefined) writeFileSync(values.out, text);
  } finally {
    // SIGTERM first: a profiled daemon writes its profile as it exits.
    const profiling = values["cpu-prof-daemon"] !== undefined || values["cpu-prof-server"] !== undefined;
    for (const c of children) c.kill(profiling ? "SIGINT" : "SIGKILL");
    if (profiling) await new Promise((r) => setTimeout(r, 1000));
    rmSync(dir, { recursive: true, force: true });
  }
}
