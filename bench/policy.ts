/**
 * What policy engines cost on the call path: the same koala server (a child process) with no
 * engine, with the `null` engine, and with `ratelimit` (never limiting) + `metrics` attached
 * process-wide, measured in interleaved rounds by one client: 64 B unary calls one at a time
 * (p50 latency) and 256 in flight (calls/s), and the server's CPU per call. Ratios are against
 * "no engine". The empty chain should cost nothing measurable; the pass path of an engine
 * allocates nothing and awaits nothing.
 *
 *   npm run bench:policy                 # 3 rounds
 *   npm run bench:policy -- --rounds 5
 */
import { startServer, stopChildren, type ServerChild } from "./rpc/children.js";
import { median, pingPong, pipelined, quantile } from "./rpc/measure.js";
import { fmt, machineInfo, ratio, table } from "./rpc/report.js";
import { koalaSystem, type System } from "./rpc/systems.js";

const CONFIGS = ["none", "null", "ratelimit+metrics"] as const;
type Config = (typeof CONFIGS)[number];

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1]! : fallback;
}

async function main(): Promise<void> {
  const rounds = Number(arg("rounds", "3"));
  const ms = Number(arg("ms", "1500"));
  const servers = new Map<Config, ServerChild>();
  const clients = new Map<Config, System>();
  for (const c of CONFIGS) {
    const s = await startServer("koala", "tcp://127.0.0.1:0", { env: { KOALA_BENCH_POLICY: c } });
    servers.set(c, s);
    clients.set(c, koalaSystem(s.address));
  }
  const payload = new Uint8Array(64);
  const p50: Record<Config, number[]> = { none: [], null: [], "ratelimit+metrics": [] };
  const rate: Record<Config, number[]> = { none: [], null: [], "ratelimit+metrics": [] };
  const cpu: Record<Config, number[]> = { none: [], null: [], "ratelimit+metrics": [] };
  for (const c of CONFIGS) await pipelined(300, 64, () => clients.get(c)!.unary(payload)); // warm-up
  for (let r = 0; r < rounds; r++) {
    const order = r % 2 === 0 ? CONFIGS : [...CONFIGS].reverse();
    for (const c of order) {
      const sys = clients.get(c)!;
      const lat = await pingPong(ms / 3, () => sys.unary(payload));
      p50[c].push(quantile(lat, 0.5));
      const before = await servers.get(c)!.cpuMicros();
      const count = await pipelined(ms, 256, () => sys.unary(payload));
      const after = await servers.get(c)!.cpuMicros();
      rate[c].push(count.ops / count.seconds);
      cpu[c].push((after.micros - before.micros) / count.ops);
    }
    process.stderr.write(`[round ${r + 1}/${rounds}]\n`);
  }
  for (const c of clients.values()) c.close();
  await stopChildren();
  const m = machineInfo();
  const base = { p50: median(p50.none), rate: median(rate.none), cpu: median(cpu.none) };
  const rows = CONFIGS.map((c) => [
    c === "none" ? "no engine" : c,
    fmt(median(p50[c]), 1),
    c === "none" ? "—" : ratio(median(p50[c]) / base.p50),
    fmt(median(rate[c])),
    c === "none" ? "—" : ratio(median(rate[c]) / base.rate),
    fmt(median(cpu[c]), 2),
    c === "none" ? "—" : ratio(median(cpu[c]) / base.cpu),
  ]);
  console.log(`\nbench/policy — ${m.cpu}, Node ${process.version}, ${new Date().toISOString()}; ${rounds} interleaved rounds, medians; engines attached process-wide on the server\n`);
  console.log(table(["engines on the server", "64 B, 1 in flight: p50 µs", "vs none", "64 B, 256 in flight: calls/s", "vs none", "server CPU µs/call", "vs none"], rows));
}

main().catch(async (err: unknown) => {
  console.error(err);
  await stopChildren();
  process.exitCode = 1;
});
