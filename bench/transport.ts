/**
 * Transport benchmark: koala-rpc's transport layer (`listen` / `connect`, whole messages)
 * against a raw length-prefixed echo over `net.Socket`, in the same run, over tcp and unix.
 * The echo servers run in child processes so that client and server each get a core; raw and
 * koala runs alternate, round by round, and the table shows medians and koala/raw ratios,
 * because on a shared machine absolute numbers drift and ratios much less. See bench/README.md.
 * `rdma (soft)` runs koala over the RDMA transport on the software verbs provider (no NIC: its
 * numbers show the cost of the protocol in JavaScript plus a socket-backed stand-in for the
 * NIC, not RDMA speed); there is no raw baseline for it.
 *
 *   node --import tsx bench/transport.ts [--quick] [--json FILE] [--rounds N] [--ms N]
 *     [--warmup-ms N] [--slice-ms N] [--transports tcp,unix] [--scenarios pingpong,pipelined,bulk]
 *     [--systems raw,koala] [--server-prof DIR]
 */
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { loadavg, tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { connectClient, type EchoClient, type System } from "./lib/clients.js";
import { runWindow, type RunResult } from "./lib/driver.js";
import { startEchoServer, type EchoServer } from "./lib/servers.js";
import { fmt, machineInfo, median, quantile, table } from "./lib/stats.js";

type TransportKind = "tcp" | "unix" | "rdma" | "rdma-native";
const TRANSPORTS = ["tcp", "unix", "rdma", "rdma-native"] as const;

/** How a transport is named in the table: rdma on the software provider, rdma-native on the addon over srnic. */
const LABEL: Record<TransportKind, string> = { tcp: "tcp", unix: "unix", rdma: "rdma (soft)", "rdma-native": "rdma (native, srnic)" };

/** The software RNIC built by `npm run build:rdma`, when it is there with the addon. */
const SRNIC = ((): string | undefined => {
  const dir = join(dirname(fileURLToPath(import.meta.url)), "..", "addons", "rdma", "build", "Release");
  return existsSync(join(dir, "koala_rdma.node")) && existsSync(join(dir, "koala_srnic.so")) ? join(dir, "koala_srnic.so") : undefined;
})();
type ScenarioId = "pingpong" | "pipelined" | "bulk";

interface Scenario {
  readonly id: ScenarioId;
  readonly title: string;
  readonly payloadBytes: number;
  readonly window: number;
}

const SCENARIOS: readonly Scenario[] = [
  { id: "pingpong", title: "64 B, 1 in flight", payloadBytes: 64, window: 1 },
  { id: "pipelined", title: "64 B, 256 in flight", payloadBytes: 64, window: 256 },
  { id: "bulk", title: "1 MiB, 4 in flight", payloadBytes: 1 << 20, window: 4 },
];

/** A number reported per run; `higherIsBetter` decides which way the ratio is taken. */
interface Metric {
  readonly scenario: ScenarioId;
  readonly name: string;
  readonly unit: string;
  readonly digits: number;
  readonly higherIsBetter: boolean;
  readonly pick: (r: { messages: number; seconds: number; latenciesUs: Float64Array; payloadBytes: number }) => number;
}

const METRICS: readonly Metric[] = [
  { scenario: "pingpong", name: "64 B, 1 in flight", unit: "msg/s", digits: 0, higherIsBetter: true, pick: (r) => r.messages / r.seconds },
  { scenario: "pingpong", name: "64 B, 1 in flight: p50", unit: "µs", digits: 1, higherIsBetter: false, pick: (r) => quantile(r.latenciesUs, 0.5) },
  { scenario: "pingpong", name: "64 B, 1 in flight: p99", unit: "µs", digits: 1, higherIsBetter: false, pick: (r) => quantile(r.latenciesUs, 0.99) },
  { scenario: "pipelined", name: "64 B, 256 in flight", unit: "msg/s", digits: 0, higherIsBetter: true, pick: (r) => r.messages / r.seconds },
  { scenario: "bulk", name: "1 MiB, 4 in flight", unit: "MB/s", digits: 0, higherIsBetter: true, pick: (r) => (r.messages * r.payloadBytes) / r.seconds / 1e6 },
];

const GOAL = 0.9;

interface Options {
  quick: boolean;
  json: string | undefined;
  rounds: number;
  runMs: number;
  warmupMs: number;
  sliceMs: number;
  transports: TransportKind[];
  scenarios: ScenarioId[];
  systems: System[];
  serverProf: string | undefined;
}

function parseArgs(argv: readonly string[]): Options {
  const quick = argv.includes("--quick");
  const o: Options = {
    quick,
    json: undefined,
    rounds: quick ? 1 : 3,
    runMs: quick ? 300 : 2000,
    warmupMs: quick ? 100 : 300,
    sliceMs: quick ? 100 : 250,
    transports: TRANSPORTS.filter((t) => t !== "rdma-native" || SRNIC !== undefined),
    scenarios: SCENARIOS.map((s) => s.id),
    systems: ["raw", "koala"],
    serverProf: undefined,
  };
  const list = <T extends string>(flag: string, value: string, allowed: readonly T[]): T[] => {
    const items = value.split(",").filter((x) => x !== "");
    for (const x of items) if (!allowed.includes(x as T)) throw new Error(`bench: ${flag} takes ${allowed.join(", ")}; not ${x}`);
    return items as T[];
  };
  const count = (flag: string, value: string, min: number): number => {
    const n = Number(value);
    if (!Number.isInteger(n) || n < min) throw new Error(`bench: ${flag} takes an integer ≥ ${min}; not ${value}`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i]!;
    if (flag === "--quick") continue;
    const value = argv[i + 1];
    if (value === undefined || value.startsWith("--")) throw new Error(`bench: ${flag} needs a value (or is not an option: --quick, --json, --rounds, --ms, --warmup-ms, --slice-ms, --transports, --scenarios, --systems, --server-prof)`);
    i++;
    switch (flag) {
      case "--json": o.json = value; break;
      case "--rounds": o.rounds = count(flag, value, 1); break;
      case "--ms": o.runMs = count(flag, value, 10); break;
      case "--warmup-ms": o.warmupMs = count(flag, value, 0); break;
      case "--slice-ms": o.sliceMs = count(flag, value, 0); break;
      case "--transports": o.transports = list(flag, value, TRANSPORTS); break;
      case "--scenarios": o.scenarios = list(flag, value, SCENARIOS.map((s) => s.id)); break;
      case "--systems": o.systems = list(flag, value, ["raw", "koala"] as const); break;
      case "--server-prof": o.serverProf = resolve(value); break;
      default: throw new Error(`bench: unknown option ${flag}`);
    }
  }
  return o;
}

/** Per transport, scenario, system: one entry per round. */
type Samples = Map<string, number[]>;
const key = (transport: TransportKind, metric: Metric, system: System) => `${transport}|${metric.scenario}|${metric.name}|${system}`;

/**
 * One round of `scenario`: a fresh connection per system, each warmed up, then the systems take
 * turns in slices of `sliceMs` until each has run `runMs`. Noise on this machine comes in
 * bursts of a second or more; slices that short see about the same bursts for every system.
 */
async function measureRound(opts: Options, systems: System[], addresses: Map<System, string>, scenario: Scenario, transport: TransportKind, round: number, samples: Samples): Promise<void> {
  const payload = new Uint8Array(scenario.payloadBytes).fill(0x6b);
  const clients = new Map<System, EchoClient>();
  try {
    for (const system of systems) clients.set(system, await connectClient(system, addresses.get(system)!));
    for (const client of clients.values()) if (opts.warmupMs > 0) await runWindow(client, payload, scenario.window, opts.warmupMs);
    const slices = opts.sliceMs > 0 ? Math.max(1, Math.round(opts.runMs / opts.sliceMs)) : 1;
    const parts = new Map<System, RunResult[]>(systems.map((s) => [s, []]));
    for (let i = 0; i < slices; i++) {
      // Alternate who goes first (ABBA…), so that a trend favours neither.
      const order = (round * slices + i) % 2 === 0 ? systems : [...systems].reverse();
      for (const system of order) parts.get(system)!.push(await runWindow(clients.get(system)!, payload, scenario.window, opts.runMs / slices));
    }
    for (const [system, runs] of parts) {
      const r: RunResult = {
        messages: runs.reduce((a, x) => a + x.messages, 0),
        seconds: runs.reduce((a, x) => a + x.seconds, 0),
        latenciesUs: concatSorted(runs.map((x) => x.latenciesUs)),
      };
      for (const m of METRICS) {
        if (m.scenario !== scenario.id) continue;
        const k = key(transport, m, system);
        const list = samples.get(k) ?? [];
        list.push(m.pick({ ...r, payloadBytes: scenario.payloadBytes }));
        samples.set(k, list);
      }
    }
  } finally {
    for (const client of clients.values()) client.close();
  }
}

function concatSorted(parts: Float64Array[]): Float64Array {
  const out = new Float64Array(parts.reduce((a, p) => a + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out.sort();
}

async function main(): Promise<void> {
  const opts = parseArgs(process.argv.slice(2));
  const began = performance.now();
  const machine = machineInfo();
  const loadBefore = loadavg()[0]!;
  const samples: Samples = new Map();
  const dir = mkdtempSync(join(tmpdir(), "koala-bench-"));
  // Also on Ctrl-C, which exits from the signal handler in servers.ts without unwinding.
  const removeDir = () => rmSync(dir, { recursive: true, force: true });
  process.once("exit", removeDir);
  const servers: EchoServer[] = [];
  const serverArgv = opts.serverProf === undefined ? [] : ["--cpu-prof", `--cpu-prof-dir=${opts.serverProf}`];
  try {
    for (const transport of opts.transports) {
      const addresses = new Map<System, string>();
      // A raw socket cannot speak RDMA: over rdma only koala runs, on the software provider or
      // on the addon over srnic (the echo server inherits the variables).
      const rdma = transport === "rdma" || transport === "rdma-native";
      const systems = rdma ? opts.systems.filter((s) => s === "koala") : opts.systems;
      if (transport === "rdma") process.env.KOALA_RDMA_PROVIDER = "soft";
      if (transport === "rdma-native") {
        if (SRNIC === undefined) throw new Error("bench: rdma-native needs the addon and srnic: npm run build:rdma");
        Object.assign(process.env, { KOALA_RDMA_PROVIDER: "verbs", KOALA_VERBS_LIB: SRNIC, KOALA_RDMACM_LIB: SRNIC });
      }
      const address = (system: System) => (transport === "unix" ? `unix:${join(dir, `${system}.sock`)}` : rdma ? "rdma://127.0.0.1:0" : `${transport}://127.0.0.1:0`);
      await Promise.all(
        systems.map(async (system) => {
          const s = await startEchoServer(system, address(system), serverArgv);
          servers.push(s);
          addresses.set(system, s.address);
        }),
      );
      for (const scenario of SCENARIOS.filter((s) => opts.scenarios.includes(s.id))) {
        for (let round = 0; round < opts.rounds; round++) await measureRound(opts, systems, addresses, scenario, transport, round, samples);
        process.stderr.write(".");
      }
      await Promise.all(servers.splice(0).map((s) => s.stop()));
    }
  } finally {
    await Promise.all(servers.splice(0).map((s) => s.stop(500)));
    removeDir();
  }
  process.stderr.write("\n");

  const rows: string[][] = [];
  const results: Record<string, unknown>[] = [];
  for (const transport of opts.transports) {
    for (const m of METRICS) {
      if (!opts.scenarios.includes(m.scenario)) continue;
      const raw = samples.get(key(transport, m, "raw")) ?? [];
      const koala = samples.get(key(transport, m, "koala")) ?? [];
      const a = median(raw);
      const b = median(koala);
      const ratioOf = (r: number, k: number) => (m.higherIsBetter ? k / r : r / k);
      // Paired: raw and koala of one round ran in the same seconds, so their ratio is freer of
      // the machine's drift than the ratio of the two medians.
      const perRound = raw.map((r, i) => ratioOf(r, koala[i]!)).filter(Number.isFinite);
      const ratio = median(perRound);
      const spread = perRound.length > 1 ? `${Math.min(...perRound).toFixed(2)}–${Math.max(...perRound).toFixed(2)}` : "";
      const met = Number.isFinite(ratio) ? (ratio >= GOAL ? "yes" : "NO") : "";
      const baseline = raw.length > 0;
      rows.push([`${m.name} (${m.unit})`, LABEL[transport], baseline ? fmt(a, m.digits) : "—", fmt(b, m.digits), Number.isFinite(ratio) ? `${ratio.toFixed(2)}×` : "—", spread, baseline ? `≥ ${GOAL}×` : "", met]);
      results.push({ scenario: m.scenario, metric: m.name, unit: m.unit, transport, higherIsBetter: m.higherIsBetter, raw: a, koala: b, ratio, roundRatios: perRound, rawRounds: raw, koalaRounds: koala });
    }
  }
  const seconds = (performance.now() - began) / 1000;
  const loadAfter = loadavg()[0]!;
  const out = [
    `bench/transport — koala-rpc transport vs raw net.Socket echo (${machine.date})`,
    `machine: ${machine.cpu}, ${machine.cores} cores, ${machine.memoryGiB} GiB, Node ${machine.node}, ${machine.os}`,
    `${opts.rounds} round(s) × ${opts.runMs} ms per system and scenario, systems taking turns every ${opts.sliceMs > 0 ? `${opts.sliceMs} ms` : "round"} (after ${opts.warmupMs} ms warm-up); echo servers in child processes.`,
    `raw, koala: medians of the rounds. ratio: koala relative to raw, > 1 = koala better (throughput: koala/raw; latency: raw/koala),`,
    `the median of the rounds' ratios (each round's raw and koala ran in the same seconds); per-round: lowest–highest of those ratios.`,
    ...(opts.transports.includes("rdma") ? ["rdma (soft): koala over RDMA on the SOFTWARE verbs provider (a socket stands in for the NIC): not RDMA speed; no raw baseline."] : []),
    ...(opts.transports.includes("rdma-native") ? ["rdma (native, srnic): the same on the native addon (the code that runs on a NIC) over srnic, the userspace software RNIC: not RDMA speed; no raw baseline."] : []),
    "",
    table(["scenario", "transport", "raw", "koala", "ratio", "per-round", "goal", "met"], rows),
    "",
    `total ${seconds.toFixed(1)} s; 1-minute load average ${loadBefore.toFixed(1)} before, ${loadAfter.toFixed(1)} after (${machine.cores} cores: above that, other work shared the CPUs)`,
  ].join("\n");
  console.log(out);
  if (opts.json !== undefined) {
    writeFileSync(opts.json, `${JSON.stringify({ machine, settings: { rounds: opts.rounds, runMs: opts.runMs, warmupMs: opts.warmupMs, sliceMs: opts.sliceMs, goal: GOAL }, loadAverage: { before: loadBefore, after: loadAfter }, results, seconds }, null, 2)}\n`);
  }
}

try {
  await main();
} catch (err) {
  console.error(err);
  process.exitCode = 1;
}
