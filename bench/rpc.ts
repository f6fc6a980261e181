/**
 * RPC benchmark: koala-rpc over tcp and unix beside @grpc/grpc-js and a raw net.Socket echo,
 * in one run on one machine, servers in child processes, interleaved rounds, medians, ratios.
 * `--quick` shortens every run; `--rounds N` sets the rounds (default 3); `--json FILE` saves the results.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import * as loader from "@grpc/proto-loader";
import { closeClient, createClient } from "../src/index.js";
import { GreeterService, type HelloRequest } from "../examples/hello/gen/hello.js";
import { fmt, machine, median, percentile, pingPong, pipelined, server, stopAll, table } from "./lib/harness.js";
import { RawClient } from "./lib/raw-client.js";

const quick = process.argv.includes("--quick");
const jsonAt = process.argv.indexOf("--json");
const runMs = quick ? 300 : 1200;
const roundsAt = process.argv.indexOf("--rounds");
const rounds = roundsAt > 0 ? Math.max(1, Number(process.argv[roundsAt + 1])) : quick ? 1 : 3;
const STREAM_WINDOW = 256;

/** What every system offers the scenarios. */
interface System {
  unary(payload: Uint8Array): Promise<unknown>;
  /** Messages per second echoed on one bidirectional stream. */
  stream(ms: number, payload: Uint8Array): Promise<number>;
  close(): void;
}

type Metrics = { p50: number[]; p99: number[]; calls: number[]; mbps: number[]; stream: number[] };
const results = new Map<string, Metrics>();
const rec = (k: string) => results.get(k) ?? (results.set(k, { p50: [], p99: [], calls: [], mbps: [], stream: [] }), results.get(k)!);

const small = new Uint8Array(64).fill(1);
const big = new Uint8Array(1 << 20).fill(2);

async function measure(name: string, sys: System): Promise<void> {
  const r = rec(name);
  const lat = await pingPong(runMs, () => sys.unary(small));
  r.p50.push(percentile(lat, 0.5));
  r.p99.push(percentile(lat, 0.99));
  r.calls.push(await pipelined(runMs, 256, () => sys.unary(small)));
  r.mbps.push(((await pipelined(runMs, 4, () => sys.unary(big))) * big.byteLength) / 1e6);
  r.stream.push(await sys.stream(runMs, small));
}

/** Sends on a stream while fewer than STREAM_WINDOW replies are outstanding, until `end`. */
function windowed(end: number, received: () => number) {
  let sent = 0;
  let wake: (() => void) | undefined;
  return {
    get sent() {
      return sent;
    },
    onReply() {
      wake?.();
      wake = undefined;
    },
    async *source(): AsyncGenerator<Partial<HelloRequest>> {
      while (performance.now() < end) {
        if (sent - received() >= STREAM_WINDOW) await new Promise<void>((r) => (wake = r));
        sent++;
        yield { name: "s", payload: small };
      }
    },
  };
}

function koala(address: string): System {
  const client = createClient(GreeterService, address, { maxMessageBytes: 64 << 20 });
  return {
    unary: (payload) => client.sayHello({ name: "bench", payload }),
    async stream(ms) {
      let received = 0;
      const t0 = performance.now();
      const w = windowed(t0 + ms, () => received);
      for await (const _ of client.chat(w.source())) {
        received++;
        w.onReply();
      }
      return received / ((performance.now() - t0) / 1000);
    },
    close: () => closeClient(client),
  };
}

function grpcjs(address: string): System {
  const def = loader.loadSync(new URL("../examples/hello/hello.proto", import.meta.url).pathname);
  const Greeter = (grpc.loadPackageDefinition(def) as any).hello.Greeter;
  const client = new Greeter(address, grpc.credentials.createInsecure(), { "grpc.max_receive_message_length": 64 << 20, "grpc.max_send_message_length": 64 << 20 });
  return {
    unary: (payload) => new Promise((resolve, reject) => client.SayHello({ name: "bench", payload }, (err: Error | null, r: unknown) => (err ? reject(err) : resolve(r)))),
    async stream(ms) {
      const call = client.Chat();
      let received = 0;
      const t0 = performance.now();
      const w = windowed(t0 + ms, () => received);
      const done = new Promise<void>((resolve, reject) => {
        call.on("data", () => {
          received++;
          w.onReply();
        });
        call.on("end", resolve);
        call.on("error", reject);
      });
      for await (const m of w.source()) if (!call.write(m)) await new Promise((r) => call.once("drain", r));
      call.end();
      await done;
      return received / ((performance.now() - t0) / 1000);
    },
    close: () => client.close(),
  };
}

async function raw(address: string): Promise<System> {
  const c = await RawClient.connect(address);
  return {
    unary: (payload) => c.request(payload),
    // The raw equivalent of a message stream: pipelined echo with the same window.
    stream: async (ms, payload) => pipelined(ms, STREAM_WINDOW, () => c.request(payload)),
    close: () => c.close(),
  };
}

const dir = mkdtempSync(join(tmpdir(), "koala-bench-rpc-"));
try {
  const rawAddress = await server("raw");
  const koalaTcp = await server("koala-rpc", { BENCH_ADDRESS: "tcp://127.0.0.1:0" });
  const koalaUnix = await server("koala-rpc", { BENCH_ADDRESS: `unix:${join(dir, "k.sock")}` });
  const grpcAddress = await server("grpc");
  for (let round = 0; round < rounds; round++) {
    for (const [name, make] of [
      ["raw", () => raw(rawAddress)],
      ["koala tcp", async () => koala(koalaTcp)],
      ["koala unix", async () => koala(koalaUnix)],
      ["grpc-js", async () => grpcjs(grpcAddress)],
    ] as const) {
      const sys = await make();
      await measure(name, sys);
      sys.close();
    }
  }
} finally {
  stopAll();
  rmSync(dir, { recursive: true, force: true });
}

const m = (name: string, k: keyof Metrics) => median(results.get(name)![k]);
const systems = ["raw", "koala tcp", "koala unix", "grpc-js"];
const rows: string[][] = [];
const summary: Record<string, Record<string, number>> = {};
const scen: [string, keyof Metrics, number, (k: number, raw: number, g: number) => [string, string, boolean]][] = [
  ["64 B unary, 1 in flight: p50 µs", "p50", 1, (k, r, g) => [`${(k / r).toFixed(2)}×`, `${(g / k).toFixed(1)}×`, k <= 1.3 * r]],
  ["64 B unary, 1 in flight: p99 µs", "p99", 1, (k, r, g) => [`${(k / r).toFixed(2)}×`, `${(g / k).toFixed(1)}×`, true]],
  ["64 B unary, 256 in flight: calls/s", "calls", 0, (k, r, g) => [`${(k / r).toFixed(2)}×`, `${(k / g).toFixed(1)}×`, k >= 30 * g && k >= 0.35 * r]],
  ["1 MiB unary, 4 in flight: MB/s", "mbps", 0, (k, r, g) => [`${(k / r).toFixed(2)}×`, `${(k / g).toFixed(1)}×`, k >= 0.8 * r]],
  ["64 B bidi stream: msg/s", "stream", 0, (k, r, g) => [`${(k / r).toFixed(2)}×`, `${(k / g).toFixed(1)}×`, true]],
];
const goals = ["p50 ≤ 1.3× raw", "(info)", "≥ 30× grpc and ≥ 0.35× raw", "≥ 0.8× raw", "(info)"];
scen.forEach(([label, key, digits, judge], i) => {
  const values = systems.map((s) => m(s, key));
  summary[label] = Object.fromEntries(systems.map((s, j) => [s, values[j]!]));
  const [vsRaw, vsGrpc, met] = judge(values[1]!, values[0]!, values[3]!);
  rows.push([label, ...values.map((v) => fmt(v, digits)), vsRaw, vsGrpc, goals[i]!, goals[i] === "(info)" ? "" : met ? "yes" : "no"]);
});
console.log(`\nbench/rpc — ${machine()}`);
console.log(`${rounds} interleaved round(s) of ${runMs} ms per scenario and system; medians. Ratios use koala over tcp.\n`);
console.log(table(["scenario", "raw net.Socket", "koala tcp", "koala unix", "grpc-js", "koala/raw", "koala vs grpc", "goal", "met"], rows));
console.log("\nkoala vs grpc: how many times better koala is (latency: grpc/koala; rates: koala/grpc).");
if (jsonAt > 0) writeFileSync(process.argv[jsonAt + 1]!, JSON.stringify({ machine: machine(), runMs, rounds, results: summary }, null, 2));
