/**
 * Bytes the JavaScript heap allocates per call, and where: a koala client and server in this
 * process over tcp, 64 B unary calls with 64 in flight, under V8's sampling heap profiler with
 * the objects later collected counted too (so it sees every allocation, not what survives).
 * Allocation is a property of the code, not of the machine, so these figures hold on a busy
 * machine where timings do not. The configurations of bench:policy — no engine, the `null`
 * engine, and `ratelimit` (never limiting) + `metrics` — and each of those two alone, attached
 * process-wide (both sides of each call pass them).
 *
 *   node --import tsx bench/alloc.ts              # 3 configurations, about 20 s
 *   node --import tsx bench/alloc.ts --calls 50000 --top 25
 *   node --import tsx bench/alloc.ts --diff       # also each engine configuration against no engine, by site
 *   node --import tsx bench/alloc.ts --configs none,null   # some configurations (the first is the baseline)
 *   node --import tsx bench/alloc.ts --stacks     # sites as the innermost five frames (inlining moves allocations between functions)
 */
import { spawnSync } from "node:child_process";
import { Session } from "node:inspector/promises";
import { fileURLToPath } from "node:url";
import { closeClient, createClient, createServer } from "../src/index.js";
import { policies } from "../src/policy/index.js";
import { GreeterService } from "../examples/hello/gen/hello.js";
import { machineInfo, table } from "./rpc/report.js";

interface SamplingNode {
  callFrame: { functionName: string; url: string; lineNumber: number };
  selfSize: number;
  id: number;
  children: SamplingNode[];
}
interface Sample {
  size: number;
  nodeId: number;
}

const ALL = ["none", "null", "ratelimit+metrics", "ratelimit", "metrics"] as const;
type Config = (typeof ALL)[number];
/** The configurations to measure: --configs none,null (the first is the baseline), else all. */
const CONFIGS: readonly Config[] = ((): readonly Config[] => {
  const i = process.argv.indexOf("--configs");
  if (i < 0) return ALL;
  const list = (process.argv[i + 1] ?? "").split(",");
  for (const c of list) if (!(ALL as readonly string[]).includes(c)) throw new Error(`bench/alloc: --configs takes ${ALL.join(", ")}; not ${JSON.stringify(c)}`);
  return list as Config[];
})();

function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`);
  if (i < 0) return fallback;
  const n = Number(process.argv[i + 1]);
  if (!Number.isInteger(n) || n < 1) {
    console.error(`bench/alloc: --${name} needs a positive integer`);
    process.exit(2);
  }
  return n;
}

/** Runs `calls` unary calls, `inFlight` at a time. */
async function drive(call: () => Promise<unknown>, calls: number, inFlight: number): Promise<void> {
  let started = 0;
  const lane = async (): Promise<void> => {
    while (started < calls) {
      started++;
      await call();
    }
  };
  await Promise.all(Array.from({ length: inFlight }, lane));
}

/** Where an allocation happened: the first frame of koala's own code (src/), else the innermost frame; with --stacks, the innermost five frames. */
function siteOf(path: SamplingNode[]): string {
  if (process.argv.includes("--stacks")) return path.slice(-5).map((n) => `${n.callFrame.functionName || "?"}@${n.callFrame.url.split("/").pop()}`).join(" < ");
  for (let i = path.length - 1; i >= 0; i--) {
    const f = path[i]!.callFrame;
    const m = /\/src\/(.+)$/.exec(f.url);
    if (m !== null) return `${f.functionName || "(anonymous)"} (src/${m[1]}:${f.lineNumber + 1})`;
  }
  const f = path[path.length - 1]!.callFrame;
  return `${f.functionName || "(anonymous)"} (${f.url.replace(/^.*node_modules\//, "") || "native"})`;
}

/** The allocations of the sampled part of a run: bytes per call and by site. */
async function sample(call: () => Promise<unknown>, calls: number, session: Session): Promise<{ perCall: number; sites: Map<string, number> }> {
  await drive(call, 20_000, 64); // warm-up: compiled, pools and caches filled
  await session.post("HeapProfiler.startSampling", { samplingInterval: 128, includeObjectsCollectedByMajorGC: true, includeObjectsCollectedByMinorGC: true } as never);
  await drive(call, calls, 64);
  const { profile } = (await session.post("HeapProfiler.stopSampling")) as unknown as { profile: { head: SamplingNode; samples: Sample[] } };
  const byId = new Map<number, SamplingNode[]>();
  const walk = (n: SamplingNode, path: SamplingNode[]): void => {
    const p = [...path, n];
    byId.set(n.id, p);
    for (const c of n.children) walk(c, p);
  };
  walk(profile.head, []);
  const sites = new Map<string, number>();
  let total = 0;
  for (const s of profile.samples) {
    total += s.size;
    const site = siteOf(byId.get(s.nodeId) ?? [profile.head]);
    sites.set(site, (sites.get(site) ?? 0) + s.size);
  }
  return { perCall: total / calls, sites };
}

/**
 * The driver alone: the same lanes awaiting a call that is a resolved promise of the request
 * object the real run builds (what the application's own loop allocates around each call).
 */
async function measureDriver(calls: number, session: Session): Promise<{ perCall: number; sites: Map<string, number> }> {
  const payload = new Uint8Array(64);
  let sink: unknown;
  const call = (): Promise<unknown> => {
    sink = { name: "bench", payload };
    return Promise.resolve(sink);
  };
  return sample(call, calls, session);
}

async function measure(config: Config, calls: number, session: Session): Promise<{ perCall: number; sites: Map<string, number> }> {
  policies.clear();
  if (config === "null") policies.attach("null");
  if (config.startsWith("ratelimit")) policies.attach("ratelimit", { ratePerSecond: 1e9, burst: 1e9 });
  if (config.endsWith("metrics")) policies.attach("metrics");
  const server = createServer();
  server.add(GreeterService, { sayHello: (req) => ({ message: "hi", payload: req.payload }) });
  const address = await server.listen("tcp://127.0.0.1:0");
  const client = createClient(GreeterService, address);
  const payload = new Uint8Array(64);
  const call = () => client.sayHello({ name: "bench", payload });
  try {
    return await sample(call, calls, session);
  } finally {
    closeClient(client);
    server.forceShutdown();
    policies.clear();
  }
}

/** Measures one configuration in this process and prints it as JSON (a child of {@link main}). */
async function child(config: Config, calls: number): Promise<void> {
  const session = new Session();
  session.connect();
  await session.post("HeapProfiler.enable");
  const r = config === ("driver" as Config) ? await measureDriver(calls, session) : await measure(config, calls, session);
  session.disconnect();
  process.stdout.write(JSON.stringify({ perCall: r.perCall, sites: [...r.sites] }));
}

/** Each configuration in a fresh process, so that none inherits another's compiled code or heap. */
function inChild(config: Config, calls: number): { perCall: number; sites: Map<string, number> } {
  const res = spawnSync(process.execPath, [...process.execArgv, fileURLToPath(import.meta.url), "--child", config, "--calls", String(calls), ...(process.argv.includes("--stacks") ? ["--stacks"] : [])], { encoding: "utf8", stdio: ["ignore", "pipe", "inherit"] });
  if (res.status !== 0) throw new Error(`bench/alloc: the ${config} run failed (exit ${res.status})`);
  const j = JSON.parse(res.stdout) as { perCall: number; sites: [string, number][] };
  return { perCall: j.perCall, sites: new Map(j.sites) };
}

async function main(): Promise<void> {
  const calls = arg("calls", 30_000);
  const top = arg("top", 12);
  const only = process.argv.indexOf("--child");
  if (only >= 0) return child(process.argv[only + 1] as Config, calls);
  const results = new Map<Config, { perCall: number; sites: Map<string, number> }>();
  for (const c of CONFIGS) {
    results.set(c, inChild(c, calls));
    process.stderr.write(`[${c}]\n`);
  }
  const driver = inChild("driver" as Config, calls).perCall;
  process.stderr.write("[driver]\n");
  const m = machineInfo();
  const base = CONFIGS[0]!;
  const none = results.get(base)!.perCall;
  const out = [
    `bench/alloc — JavaScript heap bytes allocated per 64 B unary call (client + server in one process, tcp, 64 in flight), Node ${m.node}, ${m.date}`,
    `V8 sampling heap profiler (every 128 bytes on average, collected objects included), ${calls} calls per configuration after 20,000 to warm up, each configuration in its own process.`,
    "",
    table(
      ["configuration", "bytes per call", "koala's own (without the driver)", `vs ${base === "none" ? "no engine" : base}`],
      CONFIGS.map((c) => {
        const b = results.get(c)!.perCall;
        return [c === "none" ? "no engine" : c, b.toFixed(0), (b - driver).toFixed(0), c === base ? "—" : `${b - none >= 0 ? "+" : ""}${(b - none).toFixed(0)}`];
      }),
    ),
    "",
    `the driver alone (the same 64 lanes awaiting a resolved promise of the request object, no RPC): ${driver.toFixed(0)} bytes per call; koala's own = bytes per call minus that (issue 15's goal: <= 600 B per unary call)`,
  ];
  for (const c of CONFIGS) {
    const r = results.get(c)!;
    const rows = [...r.sites].sort((a, b) => b[1] - a[1]).slice(0, top).map(([site, bytes]) => [site, (bytes / calls).toFixed(1)]);
    out.push("", `where (${c === "none" ? "no engine" : c}): bytes per call by the innermost frame of src/ (else the innermost frame)`, table(["site", "bytes per call"], rows));
  }
  if (process.argv.includes("--diff")) {
    for (const c of CONFIGS.slice(1)) {
      const baseSites = results.get(base)!.sites;
      const r = results.get(c)!.sites;
      const keys = new Set([...baseSites.keys(), ...r.keys()]);
      const rows = [...keys]
        .map((k) => [k, ((r.get(k) ?? 0) - (baseSites.get(k) ?? 0)) / calls] as const)
        .filter(([, d]) => Math.abs(d) >= 4)
        .sort((x, y) => y[1] - x[1])
        .map(([k, d]) => [k, `${d >= 0 ? "+" : ""}${d.toFixed(1)}`]);
      out.push("", `${c} against ${base}, by site (|difference| of 4 bytes per call or more)`, table(["site", "bytes per call"], rows));
    }
  }
  out.push("", "Sampling is statistical: sites under a few bytes per call are noise. Both sides of each call are counted.");
  console.log(out.join("\n"));
}

await main();
