/**
 * JavaScript CPU per message on the RDMA path, beside the socket path: on real NICs the NIC
 * moves the bytes, so what a message costs the JavaScript thread decides latency.
 *
 * Both ends run in this process (one thread), echoing messages with a window in flight; the
 * V8 CPU profiler samples the thread and each sample is attributed by its stack:
 * - `transport`: koala's own code (src/transport, src/mem) and what it calls, outside the provider;
 * - `provider`: the software verbs provider (soft.ts, soft-link.ts) and what it calls: the
 *   stand-in for the NIC, which a native provider replaces (its post / poll calls stay);
 * - `other`: event loop, garbage collection, node internals reached from neither, the driver.
 * For tcp, `transport` is the socket transport with the node:net calls it makes.
 * µs per message counts each one-way message (an echo is two).
 *
 * `--thresh-sweep` measures instead what decides KOALA_RNDV_THRESH: the transport's JavaScript
 * CPU for messages of 2 to 32 KiB sent eagerly and by rendezvous.
 *
 *   node --import tsx bench/rdma-cpu.ts [--ms N] [--window N] [--thresh-sweep]
 */
import { Session } from "node:inspector/promises";
import { connect, listen, type Connection } from "../src/transport/index.js";

const args = process.argv.slice(2);
const arg = (flag: string, def: number): number => {
  const i = args.indexOf(flag);
  return i < 0 ? def : Number(args[i + 1]);
};
const RUN_MS = arg("--ms", 1500);
const WINDOW = arg("--window", 16);

interface Case {
  label: string;
  address: string;
  bytes: number;
  /** KOALA_RNDV_THRESH for the case, when not the default. */
  thresh?: string;
}

const CASES: Case[] = [
  { label: "tcp, 64 B", address: "tcp://127.0.0.1:0", bytes: 64 },
  { label: "rdma (soft), 64 B eager", address: "rdma://127.0.0.1:0", bytes: 64 },
  { label: "rdma (soft), 4 KiB eager", address: "rdma://127.0.0.1:0", bytes: 4096 },
  { label: "tcp, 64 KiB", address: "tcp://127.0.0.1:0", bytes: 65536 },
  { label: "rdma (soft), 64 KiB rendezvous", address: "rdma://127.0.0.1:0", bytes: 65536 },
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
    const provider = inProvider || /\/rdma\/soft(-link)?\.ts/.test(url);
    const koala = inKoala || /\/src\/(transport|mem)\//.test(url);
    const hits = n.hitCount ?? 0;
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
  const t0 = performance.now();
  await new Promise((r) => setTimeout(r, RUN_MS));
  const counted = messages;
  const cpu = process.cpuUsage(cpu0);
  const seconds = (performance.now() - t0) / 1000;
  const { profile } = await session.post("Profiler.stop");
  stop = true;
  await done;
  client.close();
  await listener.close();
  const a = attribute(profile.nodes as ProfileNode[]);
  const samples = a.transport + a.provider + a.other;
  const cpuUs = cpu.user + cpu.system;
  const per = (part: number) => ((cpuUs * (part / samples)) / counted).toFixed(1);
  return [c.label, String(Math.round(counted / seconds)), (cpuUs / counted).toFixed(1), per(a.transport), per(a.provider), per(a.other)];
}

const session = new Session();
session.connect();
await session.post("Profiler.enable");
await session.post("Profiler.setSamplingInterval", { interval: 100 });
process.env.KOALA_RDMA_PROVIDER = "soft";
const SWEEP: Case[] = [2048, 8192, 16384, 32768].flatMap((bytes) => [
  { label: `rdma (soft), ${bytes / 1024} KiB eager`, address: "rdma://127.0.0.1:0", bytes, thresh: "64K" },
  { label: `rdma (soft), ${bytes / 1024} KiB rendezvous`, address: "rdma://127.0.0.1:0", bytes, thresh: "1K" },
]);
const rows: string[][] = [];
for (const c of args.includes("--thresh-sweep") ? SWEEP : CASES) rows.push(await echoRun(c, session));
const head = ["path, message", "messages/s", "CPU µs/msg", "transport JS", "provider", "other"];
const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
const line = (r: string[]) => `| ${r.map((x, i) => (i === 0 ? x.padEnd(widths[i]!) : x.padStart(widths[i]!))).join(" | ")} |`;
console.log(`bench/rdma-cpu: both ends in one thread, ${WINDOW} messages in flight, ${RUN_MS} ms per case; µs per one-way message`);
console.log(line(head));
console.log(`|${widths.map((w, i) => (i === 0 ? `:${"-".repeat(w + 1)}` : `${"-".repeat(w + 1)}:`)).join("|")}|`);
for (const r of rows) console.log(line(r));
console.log("provider = the SOFTWARE verbs provider (a stand-in for the NIC); transport JS = what a native provider would leave on the JavaScript thread, besides its own post / poll calls.");
session.disconnect();
