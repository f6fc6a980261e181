/**
 * Transport benchmark: message echo over tcp and unix, koala-rpc's transport beside a raw
 * net.Socket length-prefixed echo, in one run, interleaved, medians of several rounds.
 * `--quick` shortens every run; `--rounds N` sets the rounds (default 3); `--json FILE` saves the results.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connect, type Connection } from "../src/index.js";
import { fmt, machine, median, percentile, pingPong, pipelined, server, stopAll, table } from "./lib/harness.js";
import { RawClient } from "./lib/raw-client.js";

const quick = process.argv.includes("--quick");
const jsonAt = process.argv.indexOf("--json");
const runMs = quick ? 300 : 1500;
const roundsAt = process.argv.indexOf("--rounds");
const rounds = roundsAt > 0 ? Math.max(1, Number(process.argv[roundsAt + 1])) : quick ? 1 : 3;

/** koala transport client with in-order replies, like RawClient. */
class KoalaClient {
  private readonly waiting: ((b: Uint8Array) => void)[] = [];
  private head = 0;
  constructor(private readonly c: Connection) {
    c.onMessage((m) => {
      // Clear the slot: a kept resolver would pin its promise and the reply it resolved with.
      const w = this.waiting[this.head]!;
      this.waiting[this.head++] = undefined as never;
      if (this.head > 1024) {
        this.waiting.splice(0, this.head);
        this.head = 0;
      }
      w(m);
    });
  }
  request(payload: Uint8Array): Promise<Uint8Array> {
    this.c.send([payload]);
    return new Promise((resolve) => this.waiting.push(resolve));
  }
  close(): void {
    this.c.close();
  }
}

interface Client {
  request(p: Uint8Array): Promise<unknown>;
  close(): void;
}

type Result = { p50: number[]; p99: number[]; rate: number[]; mbps: number[] };
const results = new Map<string, Result>();
const rec = (key: string) => results.get(key) ?? (results.set(key, { p50: [], p99: [], rate: [], mbps: [] }), results.get(key)!);

const small = new Uint8Array(64).fill(1);
const big = new Uint8Array(1 << 20).fill(2);

async function measure(key: string, client: Client): Promise<void> {
  const r = rec(key);
  const lat = await pingPong(runMs, () => client.request(small));
  r.p50.push(percentile(lat, 0.5));
  r.p99.push(percentile(lat, 0.99));
  r.rate.push(await pipelined(runMs, 256, () => client.request(small)));
  r.mbps.push(((await pipelined(runMs, 4, () => client.request(big))) * big.byteLength) / 1e6);
}

const dir = mkdtempSync(join(tmpdir(), "koala-bench-"));
try {
  for (const transport of ["tcp", "unix"] as const) {
    const addr = (name: string) => (transport === "tcp" ? "tcp://127.0.0.1:0" : `unix:${join(dir, `${name}.sock`)}`);
    const rawAddress = await server("raw", { BENCH_ADDRESS: addr("raw") });
    const koalaAddress = await server("koala-transport", { BENCH_ADDRESS: addr("koala") });
    for (let round = 0; round < rounds; round++) {
      const raw = await RawClient.connect(rawAddress);
      await measure(`${transport} raw`, raw);
      raw.close();
      const koala = new KoalaClient(await connect(koalaAddress, { maxMessageBytes: 64 * 1024 * 1024 }));
      await measure(`${transport} koala`, koala);
      koala.close();
    }
    stopAll();
  }
} finally {
  stopAll();
  rmSync(dir, { recursive: true, force: true });
}

const rows: string[][] = [];
const summary: Record<string, unknown> = {};
for (const transport of ["tcp", "unix"]) {
  const raw = results.get(`${transport} raw`)!;
  const koala = results.get(`${transport} koala`)!;
  const m = (r: Result, k: keyof Result) => median(r[k]);
  const line = (name: string, k: keyof Result, digits: number, higherIsBetter: boolean, goal: string) => {
    const a = m(raw, k);
    const b = m(koala, k);
    const ratio = higherIsBetter ? b / a : a / b;
    rows.push([`${transport} ${name}`, fmt(a, digits), fmt(b, digits), `${ratio.toFixed(2)}×`, goal, ratio >= 0.9 ? "yes" : "no"]);
    summary[`${transport} ${name}`] = { raw: a, koala: b, ratio };
  };
  line("64 B, 1 in flight: p50 µs", "p50", 1, false, "≥ 0.9×");
  line("64 B, 1 in flight: p99 µs", "p99", 1, false, "(info)");
  line("64 B, 256 in flight: msg/s", "rate", 0, true, "≥ 0.9×");
  line("1 MiB, 4 in flight: MB/s", "mbps", 0, true, "≥ 0.9×");
}
console.log(`\nbench/transport — ${machine()}`);
console.log(`${rounds} interleaved round(s) of ${runMs} ms per scenario; medians. Ratio: koala relative to raw (above 1 is better; latency inverted).\n`);
console.log(table(["scenario", "raw net.Socket", "koala", "ratio", "goal", "met"], rows));
if (jsonAt > 0) writeFileSync(process.argv[jsonAt + 1]!, JSON.stringify({ machine: machine(), runMs, rounds, results: summary }, null, 2));
