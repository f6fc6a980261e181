/**
 * RPC benchmark: koala-rpc (over tcp, unix, and rdma on the SOFTWARE verbs provider and on the
 * native addon over the software RNIC) beside @grpc/grpc-js and a raw `net.Socket`
 * length-prefixed echo, in one run on one machine. Each system's server and client run in child
 * processes of their own (bench/rpc/server.ts, bench/rpc/client.ts), so that client and server
 * each have a core and no system's heap slows another's; systems are measured in interleaved
 * rounds and the table shows medians and koala's ratios to the baselines, which are what to
 * read on a noisy shared machine.
 *
 *   node --import tsx bench/rpc.ts [--quick] [--json FILE] [--rounds N] [--ms N]
 *        [--plot [DIR]] [--only raw,koala-tcp,koala-unix,koala-rdma,koala-rdma-native,grpc,connect,koala-tls,grpc-tls,koala-rr3,koala-p2c3,koala-rr1] [--scenarios latency,calls,mbps,stream]
 *        [--cpu-prof-servers DIR] [--cpu-prof-clients DIR]
 */
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { setTimeout as sleep } from "node:timers/promises";
import { startClient, startServer, stopChildren, type ClientChild, type ServerChild, type StartOptions } from "./rpc/children.js";
import { median } from "./rpc/measure.js";
import { fmt, machineInfo, ratio, table } from "./rpc/report.js";
import { BIG_IN_FLIGHT, MANY_IN_FLIGHT, SCENARIOS, type ScenarioName } from "./rpc/scenarios.js";
import { writeCharts } from "./lib/plot.js";

/**
 * `koala-rdma` is koala over the RDMA transport on the software provider (a socket stands in for
 * the NIC); `koala-rdma-native` the same transport on the native addon over srnic, the software
 * RNIC (the addon's real code path; srnic's sockets stand in for the NIC). Neither is RDMA speed.
 * `koala-tls` and `grpc-tls` are koala and grpc-js over TLS (bench/rpc/tls.ts), in a table of their own.
 * `koala-rr3` and `koala-p2c3` are one koala client over a `static:` target of three koala tcp
 * servers (127.0.0.2, .3, .4) with the `round_robin` and `least_outstanding` (P2C) balancers;
 * `koala-rr1` the same client with `round_robin` over a `static:` target of one server (the
 * cluster path and the pick, without a second connection). In a table of their own: what the
 * balancer costs the client per call over koala-tcp. They run the latency and calls scenarios.
 */
const SYSTEMS = ["raw", "koala-tcp", "koala-unix", "koala-rdma", "koala-rdma-native", "grpc", "connect", "koala-tls", "grpc-tls", "koala-rr3", "koala-p2c3", "koala-rr1"] as const;
/** The balanced systems, their balancers (`loadBalancing`) and how many servers they spread over. */
const BALANCED = [
  ["koala-rr3", "round_robin", 3],
  ["koala-p2c3", "least_outstanding", 3],
  ["koala-rr1", "round_robin", 1],
] as const;
/** The scenarios the balanced systems run (the others would not change their table). */
const BALANCED_SCENARIOS: readonly ScenarioName[] = ["latency", "calls"];
/** Whether system `n` runs scenario `sc`. */
const runs = (n: SystemName, sc: ScenarioName): boolean => !BALANCED.some(([b]) => b === n) || BALANCED_SCENARIOS.includes(sc);
/** Loopback addresses of the servers of a balanced system (Linux routes all of 127/8 to lo). */
const REPLICA_HOSTS = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];
/** The goal for the balancer's client CPU per call over a single address, in µs (issue 16). */
const BALANCER_GOAL_US = 0.3;
/** The systems of the main tables, in their column order. */
const MAIN = SYSTEMS.slice(0, 7);
type SystemName = (typeof SYSTEMS)[number];
/** A value in the main table. */
type RowMetric = "p50" | "p99" | "calls" | "mbps" | "stream";
/** A measured value: a table metric, or CPU per operation (µs) of the client or server in a scenario. */
type Metric = RowMetric | `${"cpu" | "jscpu"}.${ScenarioName}.${"client" | "server"}`;

/** Where `--plot` writes the charts by default. */
const RESULTS_DIR = join(dirname(fileURLToPath(import.meta.url)), "results");

/** The software RNIC built by `npm run build:rdma`, when it is there with the addon. */
const SRNIC = ((): string | undefined => {
  const dir = join(dirname(fileURLToPath(import.meta.url)), "..", "addons", "rdma", "build", "Release");
  return existsSync(join(dir, "koala_rdma.node")) && existsSync(join(dir, "koala_srnic.so")) ? join(dir, "koala_srnic.so") : undefined;
})();
/**
 * What the native column's server and client children need. srnic's service thread, which plays
 * the NIC, polls for 50 µs after its last packet before it sleeps (SRNIC_POLL_US; the benchmark's
 * `SRNIC_POLL_US` overrides it, 0 turns it off): a NIC does not sleep, and without this every
 * message paid two thread wake-ups that no NIC asks for (64 B p50 about 1.5x koala tcp's instead
 * of below it). The polling is the "NIC"'s CPU: it shows in whole-process CPU, not in the
 * JavaScript-thread figures.
 */
const NATIVE_ENV = { KOALA_RDMA_PROVIDER: "verbs", KOALA_VERBS_LIB: SRNIC ?? "", KOALA_RDMACM_LIB: SRNIC ?? "", SRNIC_POLL_US: process.env.SRNIC_POLL_US ?? "50" };


interface Settings {
  quick: boolean;
  rounds: number;
  ms: number;
  warmupMs: number;
  json: string | undefined;
  /** Folder for the SVG charts (`--plot [DIR]`, default bench/results), or undefined. */
  plot: string | undefined;
  only: SystemName[];
  scenarios: ScenarioName[];
  cpuProfServers: string | undefined;
  cpuProfClients: string | undefined;
}

function usage(problem: string): never {
  console.error(`bench/rpc: ${problem}`);
  console.error("usage: bench/rpc.ts [--quick] [--json FILE] [--plot [DIR]] [--rounds N] [--ms N] [--only raw,koala-tcp,koala-unix,koala-rdma,koala-rdma-native,grpc,connect,koala-tls,grpc-tls,koala-rr3,koala-p2c3,koala-rr1] [--scenarios latency,calls,mbps,stream] [--cpu-prof-servers DIR] [--cpu-prof-clients DIR]");
  process.exit(2);
}

function parseList<T extends string>(flag: string, text: string | undefined, known: readonly T[]): T[] {
  if (text === undefined) usage(`${flag} needs a value`);
  const items = text.split(",").filter((s) => s !== "");
  for (const s of items) if (!known.includes(s as T)) usage(`${flag}: unknown "${s}" (known: ${known.join(", ")})`);
  return known.filter((k) => items.includes(k));
}

function parseCount(flag: string, text: string | undefined): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1) usage(`${flag} needs a positive integer, got ${JSON.stringify(text)}`);
  return n;
}

function parseSettings(argv: string[]): Settings {
  const quick = argv.includes("--quick");
  const s: Settings = {
    quick,
    rounds: quick ? 1 : 5,
    ms: quick ? 250 : 1200,
    warmupMs: quick ? 150 : 400,
    json: undefined,
    plot: undefined,
    // The native column needs the addon and srnic built (npm run build:rdma).
    only: SYSTEMS.filter((n) => n !== "koala-rdma-native" || SRNIC !== undefined),
    scenarios: [...SCENARIOS],
    cpuProfServers: undefined,
    cpuProfClients: undefined,
  };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i]!;
    switch (flag) {
      case "--quick":
        break;
      case "--json":
        s.json = argv[++i] ?? usage("--json needs a file name");
        break;
      case "--plot":
        // An optional folder: the next argument unless it is another flag.
        s.plot = argv[i + 1] !== undefined && !argv[i + 1]!.startsWith("--") ? argv[++i]! : RESULTS_DIR;
        break;
      case "--rounds":
        s.rounds = parseCount(flag, argv[++i]);
        break;
      case "--ms":
        s.ms = parseCount(flag, argv[++i]);
        break;
      case "--only":
        s.only = parseList(flag, argv[++i], SYSTEMS);
        break;
      case "--scenarios":
        s.scenarios = parseList(flag, argv[++i], SCENARIOS);
        break;
      case "--cpu-prof-clients":
        s.cpuProfClients = argv[++i] ?? usage("--cpu-prof-clients needs a folder");
        break;
      case "--cpu-prof-servers":
        s.cpuProfServers = argv[++i] ?? usage("--cpu-prof-servers needs a folder");
        break;
      default:
        usage(`unknown argument ${JSON.stringify(flag)}`);
    }
  }
  return s;
}

/**
 * The `count` koala tcp servers of a balanced system (the same server code as koala-tcp), one on
 * each of the first {@link REPLICA_HOSTS}, seen as one server: its address is the `static:`
 * target of them, its CPU time the sum of theirs.
 */
async function startReplicas(count: number, options: StartOptions): Promise<ServerChild> {
  const replicas = await Promise.all(REPLICA_HOSTS.slice(0, count).map((h) => startServer("koala", `tcp://${h}:0`, options)));
  return {
    address: `static:///${replicas.map((r) => r.address).join(",")}`,
    pid: replicas[0]!.pid,
    async cpuMicros() {
      const times = await Promise.all(replicas.map((r) => r.cpuMicros()));
      return { micros: times.reduce((a, t) => a + t.micros, 0), jsMicros: times.reduce((a, t) => a + t.jsMicros, 0) };
    },
  };
}

/**
 * One scenario's run against one system, giving one value per metric it measures, plus the
 * CPU time the client child and the server child spent per operation.
 */
async function runScenario(name: ScenarioName, client: ClientChild, server: ServerChild, ms: number): Promise<Partial<Record<Metric, number>>> {
  const serverBefore = await server.cpuMicros();
  const r = await client.run(name, ms);
  const serverAfter = await server.cpuMicros();
  const values = r.values as Partial<Record<Metric, number>>;
  values[`cpu.${name}.client`] = r.cpuMicros / r.ops;
  values[`cpu.${name}.server`] = (serverAfter.micros - serverBefore.micros) / r.ops;
  values[`jscpu.${name}.client`] = r.jsCpuMicros / r.ops;
  values[`jscpu.${name}.server`] = (serverAfter.jsMicros - serverBefore.jsMicros) / r.ops;
  return values;
}

/** A row of the table: a metric, how it is shown, and koala's goal for it. */
interface Row {
  metric: RowMetric;
  label: string;
  digits: number;
  goal?: { text: string; met(koala: number, raw: number, grpc: number): boolean };
}

const ROWS: Row[] = [
  { metric: "p50", label: "64 B unary, 1 in flight: p50 µs", digits: 1, goal: { text: "≤ 1.10× raw", met: (k, r) => k <= 1.1 * r } },
  { metric: "p99", label: "64 B unary, 1 in flight: p99 µs", digits: 1 },
  {
    metric: "calls",
    label: `64 B unary, ${MANY_IN_FLIGHT} in flight: calls/s`,
    digits: 0,
    goal: { text: "≥ 30× grpc, ≥ 0.35× raw", met: (k, r, g) => k >= 30 * g && k >= 0.35 * r },
  },
  { metric: "mbps", label: `1 MiB unary, ${BIG_IN_FLIGHT} in flight: MB/s`, digits: 0, goal: { text: "≥ 0.8× raw", met: (k, r) => k >= 0.8 * r } },
  { metric: "stream", label: `64 B bidi stream (≤ ${MANY_IN_FLIGHT} unanswered): msg/s`, digits: 0, goal: { text: "≥ 0.85× raw", met: (k, r) => k >= 0.85 * r } },
];
const ROW_SCENARIO: Record<RowMetric, ScenarioName> = { p50: "latency", p99: "latency", calls: "calls", mbps: "mbps", stream: "stream" };
const SCENARIO_LABEL: Record<ScenarioName, string> = {
  latency: "64 B unary, 1 in flight",
  calls: `64 B unary, ${MANY_IN_FLIGHT} in flight`,
  mbps: `1 MiB unary, ${BIG_IN_FLIGHT} in flight`,
  stream: "64 B bidi stream",
};

async function main(): Promise<void> {
  const settings = parseSettings(process.argv.slice(2));
  const machine = machineInfo();
  const samples = new Map<SystemName, Map<Metric, number[]>>(settings.only.map((n) => [n, new Map()]));
  const clients = new Map<SystemName, ClientChild>();
  const servers = new Map<SystemName, ServerChild>();
  const dir = mkdtempSync(join(os.tmpdir(), "koala-bench-rpc-"));
  // Also on SIGINT / SIGTERM, which end the process from bench/rpc/children.ts without unwinding.
  process.on("exit", () => rmSync(dir, { recursive: true, force: true }));
  const started = performance.now();
  const progress = (text: string) => process.stderr.write(`[${((performance.now() - started) / 1000).toFixed(0).padStart(3)} s] ${text}\n`);
  try {
    const prof = settings.cpuProfServers === undefined ? {} : { cpuProfDir: settings.cpuProfServers };
    const cprof = settings.cpuProfClients;
    const serverOf: Record<SystemName, () => Promise<ServerChild>> = {
      raw: () => startServer("raw", undefined, prof),
      "koala-tcp": () => startServer("koala", "tcp://127.0.0.1:0", prof),
      "koala-unix": () => startServer("koala", `unix:${join(dir, "koala.sock")}`, prof),
      "koala-rdma": () => startServer("koala", "rdma://127.0.0.1:0", { ...prof, env: { KOALA_RDMA_PROVIDER: "soft" } }),
      "koala-rdma-native": () => startServer("koala", "rdma://127.0.0.1:0", { ...prof, env: NATIVE_ENV }),
      grpc: () => startServer("grpc", undefined, prof),
      connect: () => startServer("connect", undefined, prof),
      "koala-tls": () => startServer("koala", "tls://127.0.0.1:0", prof),
      "grpc-tls": () => startServer("grpc-tls", undefined, prof),
      "koala-rr3": () => startReplicas(3, prof),
      "koala-p2c3": () => startReplicas(3, prof),
      "koala-rr1": () => startReplicas(1, prof),
    };
    // Each system's client runs in a child of its own (bench/rpc/client.ts), with the provider
    // the rdma columns need.
    const clientOf: Record<SystemName, (address: string) => Promise<ClientChild>> = {
      raw: (a) => startClient("raw", a, {}, cprof),
      "koala-tcp": (a) => startClient("koala", a, {}, cprof),
      "koala-unix": (a) => startClient("koala", a, {}, cprof),
      "koala-rdma": (a) => startClient("koala", a, { KOALA_RDMA_PROVIDER: "soft" }, cprof),
      "koala-rdma-native": (a) => startClient("koala", a, NATIVE_ENV, cprof),
      grpc: (a) => startClient("grpc", a, {}, cprof),
      connect: (a) => startClient("connect", a, {}, cprof),
      "koala-tls": (a) => startClient("koala", a, {}, cprof),
      "grpc-tls": (a) => startClient("grpc-tls", a, {}, cprof),
      "koala-rr3": (a) => startClient("koala", a, { KOALA_BENCH_BALANCER: "round_robin" }, cprof),
      "koala-p2c3": (a) => startClient("koala", a, { KOALA_BENCH_BALANCER: "least_outstanding" }, cprof),
      "koala-rr1": (a) => startClient("koala", a, { KOALA_BENCH_BALANCER: "round_robin" }, cprof),
    };
    if (settings.only.includes("koala-rdma-native") && SRNIC === undefined) usage("koala-rdma-native needs the addon and srnic: npm run build:rdma");
    const processes = settings.only.reduce((n, s) => n + (BALANCED.find(([b]) => b === s)?.[2] ?? 1), 0);
    progress(`starting ${processes} server processes`);
    const children = await Promise.all(settings.only.map((n) => serverOf[n]()));
    for (const [i, n] of settings.only.entries()) {
      servers.set(n, children[i]!);
      clients.set(n, await clientOf[n](children[i]!.address));
    }

    // Untimed pass so every code path is compiled before any round counts.
    progress("warming up");
    for (const n of settings.only) for (const sc of settings.scenarios) if (runs(n, sc)) await runScenario(sc, clients.get(n)!, servers.get(n)!, settings.warmupMs);

    for (let round = 0; round < settings.rounds; round++) {
      progress(`round ${round + 1}/${settings.rounds}`);
      // Scenario by scenario, the systems back to back (their order rotating each round), so
      // that whatever else the machine does at that moment hits every system of the scenario alike.
      const order = settings.only.map((_, i) => settings.only[(i + round) % settings.only.length]!);
      for (const sc of settings.scenarios) {
        for (const n of order) {
          if (!runs(n, sc)) continue;
          const values = await runScenario(sc, clients.get(n)!, servers.get(n)!, settings.ms);
          for (const [metric, v] of Object.entries(values) as [Metric, number][]) {
            const m = samples.get(n)!;
            m.set(metric, [...(m.get(metric) ?? []), v]);
          }
          // A pause between systems: the last one's processes finish their garbage collection
          // and timers before the next is measured (with eight systems, koala's p50 read 1.29x
          // raw in full runs against 1.21x in runs of raw and koala alone, back to back).
          await sleep(200);
        }
      }
    }
  } finally {
    await stopChildren();
    rmSync(dir, { recursive: true, force: true });
  }

  const med = (n: SystemName, metric: Metric) => median(samples.get(n)?.get(metric) ?? []);
  const header = ["scenario", "raw", "koala tcp", "koala unix", "koala rdma (soft)", "koala rdma (native, srnic)", "grpc-js", "Connect-ES", "koala/raw", "koala/grpc", "koala/Connect", "goal met?"];
  const rows: string[][] = [];
  const tlsRows: string[][] = [];
  const jsonRows: object[] = [];
  for (const row of ROWS) {
    if (!settings.scenarios.includes(ROW_SCENARIO[row.metric])) continue;
    const [raw, kt, ku, kr, kn, g, ce, ks, gs] = SYSTEMS.map((n) => med(n, row.metric)) as [number, number, number, number, number, number, number, number, number];
    let verdict = "—";
    let met: boolean | null = null;
    if (row.goal !== undefined) {
      const needs = [kt, raw, ...(row.metric === "calls" ? [g] : [])];
      if (needs.every(Number.isFinite)) {
        met = row.goal.met(kt, raw, g);
        verdict = `${met ? "yes" : "NO"} (${row.goal.text})`;
      }
    }
    rows.push([row.label, fmt(raw, row.digits), fmt(kt, row.digits), fmt(ku, row.digits), fmt(kr, row.digits), fmt(kn, row.digits), fmt(g, row.digits), fmt(ce, row.digits), ratio(kt / raw), ratio(kt / g), ratio(kt / ce), verdict]);
    tlsRows.push([row.label, fmt(ks, row.digits), fmt(gs, row.digits), ratio(ks / gs), ratio(ks / kt)]);
    // Each round measured the systems back to back, so a per-round ratio shows how steady the ratio was.
    const rounds = (n: SystemName) => samples.get(n)?.get(row.metric) ?? [];
    const perRound = rounds("koala-tcp").map((k, i) => k / (rounds("raw")[i] ?? NaN));
    jsonRows.push({ scenario: row.label, metric: row.metric, raw, koalaTcp: kt, koalaUnix: ku, koalaRdmaSoft: kr, koalaRdmaNative: kn, grpcJs: g, connectEs: ce, koalaOverConnect: kt / ce, koalaOverRaw: kt / raw, koalaOverGrpc: kt / g, koalaOverRawPerRound: perRound, koalaTls: ks, grpcJsTls: gs, koalaTlsOverGrpcTls: ks / gs, goal: row.goal?.text ?? null, met });
  }

  const cpuRows: string[][] = [];
  const jsCpuRows: string[][] = [];
  const tlsCpuRows: string[][] = [];
  const cell = ([c, sv]: readonly [number, number]): string => (Number.isFinite(c) ? `${fmt(c, 1)} + ${fmt(sv, 1)}` : "—");
  for (const sc of settings.scenarios) {
    const per = SYSTEMS.map((n) => [med(n, `cpu.${sc}.client`), med(n, `cpu.${sc}.server`)] as const);
    const sum = per.map(([c, sv]) => c + sv);
    cpuRows.push([SCENARIO_LABEL[sc], ...per.slice(0, MAIN.length).map(cell), ratio(sum[1]! / sum[0]!), ratio(sum[1]! / sum[5]!), ratio(sum[1]! / sum[6]!)]);
    tlsCpuRows.push([SCENARIO_LABEL[sc], cell(per[7]!), cell(per[8]!), ratio(sum[7]! / sum[8]!), ratio(sum[7]! / sum[1]!)]);
    const js = SYSTEMS.map((n) => [med(n, `jscpu.${sc}.client`), med(n, `jscpu.${sc}.server`)] as const);
    const jsSum = js.map(([c, sv]) => c + sv);
    // rdma (native) against koala tcp: the measure of what the RDMA path costs the JavaScript thread.
    jsCpuRows.push([SCENARIO_LABEL[sc], ...js.slice(0, MAIN.length).map(cell), ratio(jsSum[1]! / jsSum[0]!), ratio(jsSum[4]! / jsSum[1]!)]);
  }
  const withTls = settings.only.includes("koala-tls") || settings.only.includes("grpc-tls");

  // The balanced systems: client CPU per call over koala-tcp's, in the same run (issue 16).
  const balancedRows: string[][] = [];
  const balancerCost: { system: string; balancer: string; servers: number; calls: number; p50: number; clientCpuCalls: number; clientCpuLatency: number; costCalls: number; costLatency: number; goalUs: number; met: boolean | null }[] = [];
  for (const [n, balancer, servers] of BALANCED) {
    if (!settings.only.includes(n)) continue;
    const cpuCalls = med(n, "cpu.calls.client");
    const cpuLatency = med(n, "cpu.latency.client");
    const costCalls = cpuCalls - med("koala-tcp", "cpu.calls.client");
    const costLatency = cpuLatency - med("koala-tcp", "cpu.latency.client");
    const met = Number.isFinite(costCalls) ? costCalls < BALANCER_GOAL_US : null;
    balancerCost.push({ system: n, balancer, servers, calls: med(n, "calls"), p50: med(n, "p50"), clientCpuCalls: cpuCalls, clientCpuLatency: cpuLatency, costCalls, costLatency, goalUs: BALANCER_GOAL_US, met });
    balancedRows.push([
      `${n} (${balancer}, ${servers} server${servers === 1 ? "" : "s"})`,
      fmt(med(n, "calls")),
      ratio(med(n, "calls") / med("koala-tcp", "calls")),
      fmt(med(n, "p50"), 1),
      fmt(cpuCalls, 2),
      fmt(costCalls, 2),
      fmt(cpuLatency, 1),
      fmt(costLatency, 1),
      met === null ? "—" : `${met ? "yes" : "NO"} (< ${BALANCER_GOAL_US} µs at ${MANY_IN_FLIGHT} in flight)`,
    ]);
  }
  if (balancedRows.length > 0) {
    balancedRows.unshift(["koala-tcp (one address)", fmt(med("koala-tcp", "calls")), ratio(1), fmt(med("koala-tcp", "p50"), 1), fmt(med("koala-tcp", "cpu.calls.client"), 2), "—", fmt(med("koala-tcp", "cpu.latency.client"), 1), "—", "—"]);
  }

  // The goals that compare CPU, and the RDMA path with the socket path (issue 15).
  const both = (n: SystemName, prefix: "cpu" | "jscpu", sc: ScenarioName) => med(n, `${prefix}.${sc}.client`) + med(n, `${prefix}.${sc}.server`);
  const goals: { text: string; value: number; met: boolean }[] = [
    { text: "64 B unary, 256 in flight: CPU per call, koala tcp ≤ 1.5× raw", value: both("koala-tcp", "cpu", "calls") / both("raw", "cpu", "calls"), met: false },
    { text: "64 B unary, 256 in flight: JavaScript-thread CPU per call, rdma (native, srnic) ≤ 2× koala tcp", value: both("koala-rdma-native", "jscpu", "calls") / both("koala-tcp", "jscpu", "calls"), met: false },
    { text: "64 B unary, 1 in flight: p50, rdma (native, srnic) ≤ koala tcp", value: med("koala-rdma-native", "p50") / med("koala-tcp", "p50"), met: false },
  ];
  const limits = [1.5, 2, 1];
  goals.forEach((g, i) => (g.met = g.value <= limits[i]!));
  const goalLines = goals.filter((g) => Number.isFinite(g.value)).map((g) => `goal: ${g.text}: ${ratio(g.value)} — ${g.met ? "yes" : "NO"}`);

  const loadAtEnd = os.loadavg()[0]!;
  const out: string[] = [
    "",
    `bench/rpc — ${machine.cpu}, ${machine.cores} cores, ${machine.memoryGiB} GiB, Node ${machine.node}, ${machine.os}, ${machine.date}`,
    `load average (1 min) ${machine.loadAtStart.toFixed(2)} at start, ${loadAtEnd.toFixed(2)} at end; ` +
      `${settings.rounds} interleaved round(s) × ${settings.ms} ms per scenario and system (after a ${settings.warmupMs} ms warm-up); medians of the rounds.`,
    "",
    table(header, rows),
    "",
    table(["CPU µs per call or message: client + server", "raw", "koala tcp", "koala unix", "koala rdma (soft)", "koala rdma (native, srnic)", "grpc-js", "Connect-ES", "koala/raw", "koala/grpc", "koala/Connect"], cpuRows),
    "",
    table(["JavaScript-thread CPU µs per call or message: client + server", "raw", "koala tcp", "koala unix", "koala rdma (soft)", "koala rdma (native, srnic)", "grpc-js", "Connect-ES", "koala tcp/raw", "rdma native/koala tcp"], jsCpuRows),
    "",
    ...(goalLines.length > 0 ? [...goalLines, ""] : []),
    ...(balancedRows.length > 0
      ? [
          table(
            [
              "balanced over tcp servers",
              `calls/s (${MANY_IN_FLIGHT} in flight)`,
              "/ koala tcp",
              "p50 µs (1 in flight)",
              `client CPU µs/call (${MANY_IN_FLIGHT})`,
              "balancer cost µs/call",
              "client CPU µs/call (1)",
              "cost µs/call (1)",
              "goal met?",
            ],
            balancedRows,
          ),
          "",
          "balancer cost per call = the client child's CPU per call (user + system) with the balancer over the static: target minus koala-tcp's over one address, medians of the same run; bench/balancer.ts times the pick alone.",
          "For rr3 and p2c3 it holds the balancer's pick and everything else that differs on the client: three connections instead of one (three sockets to read and write, each with a third of the batch); the servers' CPU is not in it.",
          "koala-rr1 is the same client and balancer over a static: target of one server: its cost is the cluster path and the pick alone (ClusterSource and round_robin instead of the single-address source).",
          `The goal (< ${BALANCER_GOAL_US} µs) is read at ${MANY_IN_FLIGHT} in flight; at 1 in flight the CPU per call is mostly event-loop wake-ups and its difference is noise-sized.`,
          "",
        ]
      : []),
    ...(withTls
      ? [
          table(["over TLS", "koala tls", "grpc-js tls", "koala tls/grpc tls", "koala tls/koala tcp"], tlsRows),
          "",
          table(["over TLS, CPU µs per call or message: client + server", "koala tls", "grpc-js tls", "koala tls/grpc tls", "koala tls/koala tcp"], tlsCpuRows),
          "",
        ]
      : []),
    "koala/raw, koala/grpc and koala/Connect divide koala over tcp by the baseline (for latency below 1 is better, for rates above 1).",
    "Connect-ES = @connectrpc/connect-node 2 (the Connect protocol over cleartext HTTP/2, one session) with @bufbuild/protobuf 2, the same .proto (bench/rpc/connect.ts).",
    "raw = length-prefixed echo on a plain net.Socket over tcp (a call = one echoed message; the stream = the same echo pipelined).",
    "koala rdma (soft) = koala over the RDMA transport on the SOFTWARE verbs provider (sockets stand in for the NIC): the protocol's cost, not RDMA speed; see bench/rdma-cpu.ts for JavaScript CPU per message.",
    "koala rdma (native, srnic) = the same transport on the native addon (the code that runs on a NIC) over srnic, the userspace software RNIC (its service thread and Unix sockets stand in for the NIC; the thread polls 50 µs before sleeping, SRNIC_POLL_US, as a NIC never sleeps): the addon's cost plus a software NIC, not RDMA speed.",
    "over TLS = koala (tls://) and grpc-js (createSsl) over TLS 1.3 on the same machine, with the test-only certificates of test/fixtures/tls (ECDSA P-256).",
    "MB/s counts the request payload once per call (10^6 bytes). CPU = user + system time of the client child and the server child, per call (or stream reply); each system's client runs in a process of its own.",
    "JavaScript-thread CPU = the same for the main thread alone (/proc): without srnic's service thread (the software NIC), V8's helper threads (garbage collection) and libuv's pool. On a NIC, this is what the RDMA path leaves on the CPU; for the socket systems it includes their system calls.",
  ];
  // At the end the load average counts this benchmark's own two busy processes (about 2).
  if (machine.loadAtStart > 1 || loadAtEnd > 3) {
    out.push(
      `note: the machine was not idle (1-minute load average ${machine.loadAtStart.toFixed(1)} at start, ${loadAtEnd.toFixed(1)} at end, about 2 of it this benchmark's own) ` +
        "so the two processes shared their cores with other work: expect noise; the ratios and the CPU table hold up better than absolute numbers.",
    );
  }
  console.log(out.join("\n"));

  const perSystem = Object.fromEntries([...samples].map(([n, m]) => [n, Object.fromEntries([...m].map(([metric, xs]) => [metric, { median: median(xs), rounds: xs }]))]));
  if (settings.json !== undefined) {
    const settingsOut = { rounds: settings.rounds, ms: settings.ms, warmupMs: settings.warmupMs, manyInFlight: MANY_IN_FLIGHT, bigInFlight: BIG_IN_FLIGHT, systems: settings.only, scenarios: settings.scenarios };
    writeFileSync(settings.json, JSON.stringify({ machine: { ...machine, loadAtEnd }, settings: settingsOut, rows: jsonRows, goals, balancerCost, systems: perSystem }, null, 2) + "\n");
    console.log(`results written to ${settings.json}`);
  }
  if (settings.plot !== undefined) {
    mkdirSync(settings.plot, { recursive: true });
    for (const f of writeCharts({ machine: { ...machine, loadAtEnd }, systems: perSystem }, settings.plot)) console.log(`chart written to ${f}`);
  }
}

try {
  await main();
} catch (err) {
  console.error("bench/rpc failed:", err);
  process.exitCode = 1;
}
