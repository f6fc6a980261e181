/**
 * The main demo (`npm run demo`): starts the greeter server in a child process on a
 * scheme-less address, so KOALA_TRANSPORT (default auto) picks the transport, then calls it
 * and prints the transport, unary latency p50 / p99 and throughput.
 * KOALA_DEMO_QUICK=1 shortens every phase (CI uses it).
 */
import { fork } from "node:child_process";
import { fileURLToPath } from "node:url";
import { chooseTransport, closeClient, createClient, setupTransports } from "../src/index.js";
import { GreeterService } from "./hello/gen/hello.js";

const quick = process.env.KOALA_DEMO_QUICK === "1";
const phaseMs = quick ? 300 : 2000;

setupTransports();
const choice = chooseTransport();
const child = fork(fileURLToPath(new URL("./hello/server.ts", import.meta.url)), [], {
  execArgv: ["--import", "tsx"],
  env: { ...process.env, ADDRESS: `127.0.0.1:0` },
  stdio: ["ignore", "ignore", "inherit", "ipc"],
});
const address = await new Promise<string>((resolve, reject) => {
  child.once("message", (m) => resolve((m as { address: string }).address));
  child.once("exit", (code) => reject(new Error(`the server exited early (code ${code})`)));
});

const client = createClient(GreeterService, address);
try {
  console.log(`koala-rpc demo — server in a child process at ${address}`);
  console.log(`transport: ${choice.transport} (KOALA_TRANSPORT=${choice.mode}: ${choice.reason})`);
  console.log(`greeting:  ${(await client.sayHello({ name: "koala" })).message}`);

  // Sequential unary calls: latency.
  const payload64 = new Uint8Array(64);
  for (let i = 0; i < 200; i++) await client.sayHello({ name: "warm", payload: payload64 });
  const lat: number[] = [];
  let end = performance.now() + phaseMs;
  while (performance.now() < end) {
    const t0 = process.hrtime.bigint();
    await client.sayHello({ name: "lat", payload: payload64 });
    lat.push(Number(process.hrtime.bigint() - t0) / 1000);
  }
  lat.sort((a, b) => a - b);
  const pct = (p: number) => lat[Math.min(lat.length - 1, Math.floor(lat.length * p))]!;

  // Unary calls with 256 in flight on one connection: calls per second.
  let calls = 0;
  end = performance.now() + phaseMs;
  const t1 = performance.now();
  await Promise.all(
    Array.from({ length: 256 }, async () => {
      while (performance.now() < end) {
        await client.sayHello({ name: "tput", payload: payload64 });
        calls++;
      }
    }),
  );
  const callsPerSec = calls / ((performance.now() - t1) / 1000);

  // 1 MiB payloads, 4 in flight: goodput.
  const big = new Uint8Array(1 << 20).fill(7);
  let bytes = 0;
  end = performance.now() + phaseMs;
  const t2 = performance.now();
  await Promise.all(
    Array.from({ length: 4 }, async () => {
      while (performance.now() < end) {
        const r = await client.sayHello({ name: "mib", payload: big }, { timeoutMs: 10_000 });
        bytes += r.payload.byteLength;
      }
    }),
  );
  const mbPerSec = bytes / 1e6 / ((performance.now() - t2) / 1000);

  console.log("");
  console.log(`unary 64 B, 1 in flight:    p50 ${pct(0.5).toFixed(1)} µs   p99 ${pct(0.99).toFixed(1)} µs   (${lat.length} calls)`);
  console.log(`unary 64 B, 256 in flight:  ${Math.round(callsPerSec).toLocaleString("en-US")} calls/s`);
  console.log(`unary 1 MiB, 4 in flight:   ${mbPerSec.toFixed(0)} MB/s echoed`);
  console.log("");
  console.log("Compare with raw sockets and @grpc/grpc-js: npm run bench:rpc");
} finally {
  closeClient(client);
  child.kill("SIGTERM");
}
