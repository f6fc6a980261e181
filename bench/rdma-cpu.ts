/**
 * JavaScript CPU per message on the RDMA path, beside the socket path: on real NICs the NIC
 * moves the bytes, so what a message costs the JavaScript thread decides latency.
 *
 * Both ends run in this process (one thread), echoing messages with a window in flight; the
 * V8 CPU profiler samples the thread and each sample is attributed by its stack:
 * - `transport`: koala's own code (src/transport, src/mem) and what it calls, outside the provider;
 * - `provider`: the software verbs provider (soft.ts, soft-link.ts) and what it calls: the
 *   stand-in for the NIC, which a native provider replaces (its post / poll calls stay); for
 *   the native provider (native*.ts) its JavaScript and the addon calls it makes — the crossing
 *   into C++ and the verbs calls, what stays on the JavaScript thread on a real NIC;
 * - `other`: event loop, garbage collection, node internals reached from neither, the driver.
 * For tcp, `transport` is the socket transport with the node:net calls it makes.
 * With the native provider over srnic (the software RNIC, when `npm run build:rdma` built it),
 * `NIC threads` is the CPU of the process's other threads (srnic's service thread, which plays
 * the NIC, and V8's helpers), from /proc: what a real NIC takes off the CPU.
 * µs per message counts each one-way message (an echo is two).
 *
 * `--thresh-sweep` measures instead what decides KOALA_RNDV_THRESH: the transport's JavaScript
 * CPU for messages of 2 to 32 KiB sent eagerly and by rendezvous.
 *
 * `--only TEXT` runs the cases whose label contains TEXT; `--save-profiles DIR` writes each
 * case's CPU profile there (open it in Chrome's DevTools, or read its self times).
 *
 *   node --import tsx bench/rdma-cpu.ts [--ms N] [--window N] [--thresh-sweep] [--only TEXT] [--save-profiles DIR]
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { existsSync } from "node:fs";
import { Session } from "node:inspector/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { connect, listen, type Connection } from "../src/transport/index.js";
import { nativeVerbs } from "../src/transport/rdma/native.js";
import { NativeContext } from "../src/transport/rdma/native-context.js";
import { mainThreadCpuMicros } from "./lib/cpu.js";

const args = process.argv.slice(2);
const arg = (flag: string, def: number): number => {
  const i = args.indexOf(flag);
  return i < 0 ? def : Number(args[i + 1]);
};
const RUN_MS = arg("--ms", 1500);
const text = (flag: string): string | undefined => {
  const i = args.indexOf(flag);
  return i < 0 ? undefined : args[i + 1];
};
const ONLY = text("--only");
const PROFILES = text("--save-profiles");
const WINDOW = arg("--window", 16);

interface Case {
  label: string;
  address: string;
  bytes: number;
  /** KOALA_RNDV_THRESH for the case, when not the default. */
  thresh?: string;
  /** KOALA_RDMA_PROVIDER for an rdma case (default soft). */
  provider?: "soft" | "verbs";
}

/** The software RNIC built by `npm run build:rdma`, when it is there with the addon. */
const SRNIC = ((): string | undefined => {
  const dir = join(dirname(fileURLToPath(import.meta.url)), "..", "addons", "rdma", "build", "Release");
  return existsSync(join(dir, "koala_rdma.node")) && existsSync(join(dir, "koala_srnic.so")) ? join(dir, "koala_srnic.so") : undefined;
})();
// The addon loads its libraries once per process: name srnic before anything asks for them.
// srnic's service thread (the NIC) polls 50 µs before sleeping, as bench:rpc's native column has
// it (SRNIC_POLL_US; set it to 0 for the sleeping NIC): a NIC takes a post without a system call.
if (SRNIC !== undefined) Object.assign(process.env, { KOALA_VERBS_LIB: SRNIC, KOALA_RDMACM_LIB: SRNIC, SRNIC_POLL_US: process.env.SRNIC_POLL_US ?? "50" });


const CASES: Case[] = [
  { label: "tcp, 64 B", address: "tcp://127.0.0.1:0", bytes: 64 },
  { label: "rdma (soft), 64 B eager", address: "rdma://127.0.0.1:0", bytes: 64 },
  { label: "rdma (soft), 4 KiB eager", address: "rdma://127.0.0.1:0", bytes: 4096 },
  { label: "tcp, 64 KiB", address: "tcp://127.0.0.1:0", bytes: 65536 },
  { label: "rdma (soft), 64 KiB rendezvous", address: "rdma://127.0.0.1:0", bytes: 65536 },
  ...(SRNIC === undefined
    ? []
    : ([
        { label: "rdma (native, srnic), 64 B eager", address: "rdma://127.0.0.1:0", bytes: 64, provider: "verbs" },
        { label: "rdma (native, srnic), 4 KiB eager", address: "rdma://127.0.0.1:0", bytes: 4096, provider: "verbs" },
        { label: "rdma (native, srnic), 64 KiB rendezvous", address: "rdma://127.0.0.1:0", bytes: 65536, provider: "verbs" },
      ] as Case[])),
];

interface ProfileNode {
  id: number;
  callFrame: { url: string; functionName: string };
  hitCount?: number;
  children?: number[];
}

/** Self time per class, in samples, walking the call tree from the root. */
function attribute(nodes: ProfileNode[]): { transport: number; provider: number; other: number } {
  const byId = new Map(nodes.map((n) => [n.id, n]));
  const out = { transport: 0, provider: 0, other: 0 };
  const walk = (n: ProfileNode, inKoala: boolean, inProvider: boolean): void => {
    const url = n.callFrame.url;
    const provider = inProvider || /\/rdma\/(soft(-link)?|native(-context|-provider)?)\.ts/.test(url);
    const koala = inKoala || /\/src\/(transport|mem)\//.test(url);
    // Idle samples are the thread waiting, not CPU: the thread's CPU time is split among the others.
    const hits = n.callFrame.functionName === "(idle)" ? 0 : (n.hitCount ?? 0);
    if (provider) out.provider += hits;
    else if (koala) out.transport += hits;
    else out.other += hits;
    for (const c of n.children ?? []) walk(byId.get(c)!, koala, provider);
  };
  walk(nodes[0]!, false, false);
  return out;
}

async function echoRun(c: Case, session: Session): Promise<string[]> {
  if (c.thresh === undefined) delete process.env.KOALA_RNDV_THRESH;
  else process.env.KOALA_RNDV_THRESH = c.thresh;
  process.env.KOALA_RDMA_PROVIDER = c.provider ?? "soft";
  const listener = await listen(c.address);
  listener.onConnection((s) =>
    s.onMessage((m) => {
      s.send([m]);
      s.release(m);
    }),
  );
  const client: Connection = await connect(listener.address);
  const payload = new Uint8Array(c.bytes).fill(7);
  let messages = 0;
  let stop = false;
  let resolveDone!: () => void;
  const done = new Promise<void>((r) => (resolveDone = r));
  let inFlight = 0;
  client.onMessage((m) => {
    client.release(m);
    messages += 2;
    inFlight--;
    if (!stop) {
      client.send([payload]);
      inFlight++;
    } else if (inFlight === 0) resolveDone();
  });
  // Warm-up, then the measured window.
  for (let i = 0; i < WINDOW; i++, inFlight++) client.send([payload]);
  await new Promise((r) => setTimeout(r, 300));
  messages = 0;
  await session.post("Profiler.start");
  const cpu0 = process.cpuUsage();
  const main0 = (mainThreadCpuMicros() ?? 0);
  const t0 = performance.now();
  await new Promise((r) => setTimeout(r, RUN_MS));
  const counted = messages;
  const cpu = process.cpuUsage(cpu0);
  const mainUs = (mainThreadCpuMicros() ?? 0) - main0;
  const seconds = (performance.now() - t0) / 1000;
  const { profile } = await session.post("Profiler.stop");
  stop = true;
  await done;
  client.close();
  await listener.close();
  if (PROFILES !== undefined) {
    mkdirSync(PROFILES, { recursive: true });
    writeFileSync(join(PROFILES, `${c.label.replace(/[^a-z0-9]+/gi, "-")}.cpuprofile`), JSON.stringify(profile));
  }
  const a = attribute(profile.nodes as ProfileNode[]);
  const samples = a.transport + a.provider + a.other;
  const cpuUs = cpu.user + cpu.system;
  // The samples divide the JavaScript thread's CPU; the rest of the process's is other threads'.
  const jsUs = Math.min(mainUs, cpuUs);
  const per = (part: number) => ((jsUs * (part / samples)) / counted).toFixed(1);
  return [c.label, String(Math.round(counted / seconds)), (cpuUs / counted).toFixed(1), per(a.transport), per(a.provider), per(a.other), ((cpuUs - jsUs) / counted).toFixed(1)];
}

/**
 * What one call into the addon costs the JavaScript thread: pollCq on an empty completion queue
 * (the addon's checks, one ibv_poll_cq that finds nothing, and the way back), timed over many calls.
 */
function crossing(): string {
  const state = nativeVerbs();
  if ("reason" in state) return `addon crossing: not measured (${state.reason})`;
  const ctx = NativeContext.open(state.binding, "srnic0");
  const cq = ctx.createCq(64, () => undefined);
  const out = new Float64Array(64 * 7);
  const n = 2_000_000;
  for (let i = 0; i < n / 10; i++) ctx.pollCq(cq, out, 64);
  const t0 = performance.now();
  for (let i = 0; i < n; i++) ctx.pollCq(cq, out, 64);
  const ns = ((performance.now() - t0) * 1e6) / n;
  ctx.destroyCq(cq);
  ctx.close();
  return `addon crossing: pollCq on an empty CQ through the native provider costs ${ns.toFixed(0)} ns per call (checks in JS and C++, one ibv_poll_cq, the return).`;
}

const session = new Session();
session.connect();
await session.post("Profiler.enable");
await session.post("Profiler.setSamplingInterval", { interval: 100 });
const SWEEP: Case[] = [2048, 8192, 16384, 32768].flatMap((bytes) => [
  { label: `rdma (soft), ${bytes / 1024} KiB eager`, address: "rdma://127.0.0.1:0", bytes, thresh: "64K" },
  { label: `rdma (soft), ${bytes / 1024} KiB rendezvous`, address: "rdma://127.0.0.1:0", bytes, thresh: "1K" },
]);
const rows: string[][] = [];
for (const c of args.includes("--thresh-sweep") ? SWEEP : CASES) if (ONLY === undefined || c.label.includes(ONLY)) rows.push(await echoRun(c, session));
const head = ["path, message", "messages/s", "CPU µs/msg", "transport JS", "provider", "other JS", "other threads"];
const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
const line = (r: string[]) => `| ${r.map((x, i) => (i === 0 ? x.padEnd(widths[i]!) : x.padStart(widths[i]!))).join(" | ")} |`;
console.log(`bench/rdma-cpu: both ends in one thread, ${WINDOW} messages in flight, ${RUN_MS} ms per case; µs per one-way message`);
console.log(line(head));
console.log(`|${widths.map((w, i) => (i === 0 ? `:${"-".repeat(w + 1)}` : `${"-".repeat(w + 1)}:`)).join("|")}|`);
for (const r of rows) console.log(line(r));
if (SRNIC !== undefined && !args.includes("--thresh-sweep")) console.log(crossing());
console.log("provider = for rdma (soft), the SOFTWARE verbs provider (a stand-in for the NIC); for rdma (native, srnic), the native provider's JavaScript and its addon calls (what stays on the JavaScript thread on a NIC).");
console.log("transport JS = koala's transport code on the JavaScript thread; other threads = the rest of the process's CPU (srnic's service thread playing the NIC, V8's helper threads).");
session.disconnect();
