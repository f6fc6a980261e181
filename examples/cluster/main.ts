/**
 * Three replicas and a client behind one `static:` name, balancing live
 * (`node --import tsx examples/cluster/main.ts`): the replicas run as child processes on
 * 127.0.0.2–4 (all loopback); the client calls them from four loops with a retry policy and
 * prints, every half second, which replica answered how many calls. Halfway through one
 * replica is killed (SIGKILL): its calls in flight are retried elsewhere, none fails, and the
 * others take its share; then it comes back on its address and gets calls again.
 *
 * BALANCER=weighted_round_robin gives the replicas weights 1, 2 and 3 (`static:`'s
 * `;weight=N`); BALANCER=least_outstanding or pick_first work too. Default round_robin.
 * Scheme-less addresses: KOALA_TRANSPORT picks the transport of each replica. PHASE_MS sets
 * how long each phase (all up, one dead, back) lasts, default 1500.
 */
import { fork, type ChildProcess } from "node:child_process";
import { setTimeout as sleep } from "node:timers/promises";
import { clientChannel, closeClient, createClient } from "../../src/index.js";
import { policies, type MetricsEngine } from "../../src/policy/index.js";
import { GreeterService } from "../hello/gen/hello.js";

const HOSTS = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];
const balancer = process.env.BALANCER ?? "round_robin";
const phaseMs = Number(process.env.PHASE_MS ?? 1500);
const replicaFile = new URL("./replica.ts", import.meta.url).pathname;

/** Starts a replica process; resolves with it and the address it listens at. */
function startReplica(name: string, address: string): Promise<{ child: ChildProcess; address: string }> {
  const child = fork(replicaFile, [], { execArgv: ["--import", "tsx"], env: { ...process.env, NAME: name, ADDRESS: address }, stdio: ["ignore", "inherit", "inherit", "ipc"] });
  return new Promise((resolve, reject) => {
    child.once("message", (m) => resolve({ child, address: (m as { address: string }).address.replace(/^koala:\/\//, "") }));
    child.once("exit", (code) => reject(new Error(`replica ${name} exited (${code})`)));
  });
}

const replicas = await Promise.all(HOSTS.map((h) => startReplica(h, `${h}:0`)));
const weights = balancer === "weighted_round_robin" ? [1, 2, 3] : undefined;
const target = `static:///${replicas.map((r, i) => (weights === undefined ? r.address : `${r.address};weight=${weights[i]}`)).join(",")}`;
console.log(`target ${target}, balancer ${balancer}`);

const metrics = policies.attach("metrics", {}, { name: "example-metrics", scope: { global: true, side: "client" } }) as MetricsEngine;
const client = createClient(GreeterService, target, {
  loadBalancing: balancer,
  endpointBackoffInitialMs: 200,
  endpointBackoffMaxMs: 500,
  serviceConfig: {
    methodConfig: [
      {
        name: [{ service: "hello.Greeter" }],
        retryPolicy: { maxAttempts: 4, initialBackoff: "0.02s", maxBackoff: "0.2s", backoffMultiplier: 2, retryableStatusCodes: ["UNAVAILABLE"] },
      },
    ],
  },
});
const channel = clientChannel(client);

let counts = new Map<string, number>();
let calls = 0;
let failed = 0;
let running = true;
const loop = async () => {
  while (running) {
    try {
      const r = await client.sayHello({ name: "cluster" }, { timeoutMs: 5000 });
      const who = /\((.*)\)$/.exec(r.message)?.[1] ?? "?";
      counts.set(who, (counts.get(who) ?? 0) + 1);
      calls++;
    } catch (err) {
      failed++;
      console.log(`call failed: ${(err as Error).message}`);
    }
    // A little pause, so that the numbers stay readable.
    await sleep(1);
  }
};

const t0 = Date.now();
const report = () => {
  const per = HOSTS.map((h) => `${h}: ${String(counts.get(h) ?? 0).padStart(4)}`).join("  ");
  const states = channel.endpoints().map((e) => `${e.state}${e.transport === undefined ? "" : `/${e.transport}`}`).join(" ");
  console.log(`t=${((Date.now() - t0) / 1000).toFixed(1)}s  ${per}  failed: ${failed}  | endpoints: ${states}`);
  counts = new Map();
};
const loops = Array.from({ length: 4 }, loop);
const ticker = setInterval(report, Math.min(500, phaseMs / 2));
try {
  await sleep(phaseMs);
  const victim = replicas[1]!;
  victim.child.kill("SIGKILL");
  console.log(`killed ${HOSTS[1]} (SIGKILL)`);
  await sleep(phaseMs);
  replicas[1] = await startReplica(HOSTS[1]!, victim.address);
  console.log(`restarted ${HOSTS[1]} on ${victim.address}`);
  await sleep(phaseMs);
} finally {
  running = false;
  await Promise.all(loops);
  clearInterval(ticker);
  report();
  const path = "/hello.Greeter/SayHello";
  console.log(`calls: ${calls}, failed: ${failed}, attempts retried: ${metrics.attempts(path, "retried")}`);
  closeClient(client);
  policies.detach("example-metrics");
  for (const r of replicas) r.child.kill("SIGTERM");
}
