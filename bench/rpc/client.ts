/**
 * Child process of the RPC benchmark: the client side of one system, alone in its process, as
 * an application using one RPC library would be (clients of several systems in one process
 * slowed each other: one's heap and garbage made the others' collections longer). Run as
 * `client.ts <raw|koala|grpc|grpc-tls|connect> <address>` (koala dials TLS on a `tls://` address, and uses the balancer `KOALA_BENCH_BALANCER` names, if any); reports `{ ready: true }` after a first call, then
 * answers each `{ run: scenario, ms }` with `{ values, ops, cpuMicros, jsCpuMicros }` (its own CPU
 * time spent in the run: the process's, and its JavaScript thread's). Exits when the parent goes away.
 */
import { cpuTimes } from "../lib/cpu.js";
import { PROTO_PATH } from "./proto-path.js";
import { pingPong, pipelined, quantile } from "./measure.js";
import { BIG, BIG_IN_FLIGHT, MANY_IN_FLIGHT, SMALL, type ScenarioName } from "./scenarios.js";
import { connectSystem, grpcSystem, koalaSystem, rawSystem, type System } from "./systems.js";

if (process.send === undefined) {
  console.error("bench/rpc/client.ts runs as a child of bench/rpc.ts (it reports over IPC)");
  process.exit(2);
}

const [kind, address] = process.argv.slice(2);
if (address === undefined) throw new Error("usage: client.ts <raw|koala|grpc|grpc-tls|connect> <address>");
const sys: System =
  kind === "raw" ? await rawSystem(address)
  : kind === "koala" ? koalaSystem(address, process.env.KOALA_BENCH_BALANCER || undefined)
  : kind === "grpc" || kind === "grpc-tls" ? grpcSystem(address, PROTO_PATH, kind === "grpc-tls")
  : kind === "connect" ? connectSystem(address)
  : (() => {
      throw new Error(`unknown system ${JSON.stringify(kind)} (raw, koala, grpc, grpc-tls, connect)`);
    })();
// Connects now (koala and grpc-js connect on the first call), under the environment the parent gave.
await sys.unary(SMALL);

/** One scenario for `ms` milliseconds: its values and how many operations they counted. */
async function run(name: ScenarioName, ms: number): Promise<{ values: Record<string, number>; ops: number }> {
  switch (name) {
    case "latency": {
      const lat = await pingPong(ms, () => sys.unary(SMALL));
      return { values: { p50: quantile(lat, 0.5), p99: quantile(lat, 0.99) }, ops: lat.length };
    }
    case "calls": {
      const c = await pipelined(ms, MANY_IN_FLIGHT, () => sys.unary(SMALL));
      return { values: { calls: c.ops / c.seconds }, ops: c.ops };
    }
    case "mbps": {
      const c = await pipelined(ms, BIG_IN_FLIGHT, () => sys.unary(BIG));
      return { values: { mbps: (c.ops * BIG.byteLength) / c.seconds / 1e6 }, ops: c.ops };
    }
    case "stream": {
      const c = await sys.stream(ms, MANY_IN_FLIGHT, SMALL);
      return { values: { stream: c.ops / c.seconds }, ops: c.ops };
    }
  }
}

process.on("disconnect", () => {
  sys.close();
  process.exit(0);
});
process.on("message", (m: { run: ScenarioName; ms: number }) => {
  const before = cpuTimes();
  run(m.run, m.ms).then(
    (r) => {
      const after = cpuTimes();
      process.send!({ ...r, cpuMicros: after.micros - before.micros, jsCpuMicros: after.jsMicros - before.jsMicros });
    },
    (err: unknown) => process.send!({ error: String((err as Error)?.stack ?? err) }),
  );
});
process.send({ ready: true });
