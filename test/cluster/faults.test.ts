/**
 * Faults with three replicas as child processes on 127.0.0.2–4: one killed with SIGKILL under
 * load (no call fails past the retry policy, the dead endpoint leaves the rotation, traffic
 * returns when it is back), one hung with SIGSTOP (its calls cost their deadline and no more),
 * and resolvers that fail or return garbage (a clear UNAVAILABLE with the resolver's reason).
 */
import { fork, type ChildProcess } from "node:child_process";
import { setTimeout as sleep } from "node:timers/promises";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { Code, KoalaError, ErrorCode, RpcError, clientChannel, closeClient, createClient, registerResolver } from "../../src/index.js";
import type { ServiceConfig } from "../../src/rpc/retry.js";
import { EchoService } from "../fixtures/rpc/gen/echo.js";
import { quietly, rejection, until } from "../helpers.js";
import { HOSTS } from "./replicas.js";

const fixture = new URL("./replica-process.ts", import.meta.url).pathname;

interface Child {
  readonly name: string;
  address: string;
  process: ChildProcess;
}

/** Starts a replica process at `address` (port 0: any), resolving once it listens. */
async function spawnReplica(name: string, address: string): Promise<Child> {
  const child = fork(fixture, [address, name], { execArgv: ["--import", "tsx"], stdio: ["ignore", "inherit", "inherit", "ipc"] });
  const bound = await new Promise<string>((resolve, reject) => {
    child.once("message", (m) => resolve((m as { address: string }).address));
    child.once("exit", (code) => reject(new Error(`replica ${name} exited (${code}) before it listened`)));
  });
  return { name, address: bound, process: child };
}

/** Kills every replica process (SIGCONT first, for one that was stopped). */
function killAll(children: readonly (Child | undefined)[]): void {
  for (const c of children) {
    if (c === undefined || c.process.exitCode !== null) continue;
    c.process.kill("SIGCONT");
    c.process.kill("SIGKILL");
  }
}

const RETRY: ServiceConfig = {
  methodConfig: [
    {
      name: [{ service: "koala.test.Echo" }],
      retryPolicy: { maxAttempts: 5, initialBackoff: "0.02s", maxBackoff: "0.2s", backoffMultiplier: 2, retryableStatusCodes: ["UNAVAILABLE"] },
    },
  ],
};

test("kill -9 of one of three under load: no call fails, the dead endpoint leaves the rotation at once, traffic returns when it is back", async () => {
  const children = await Promise.all(HOSTS.map((h) => spawnReplica(h, `tcp://${h}:0`)));
  const client = createClient(EchoService, `static:///${children.map((c) => c.address).join(",")}`, {
    loadBalancing: "round_robin",
    serviceConfig: RETRY,
    endpointBackoffInitialMs: 100,
    endpointBackoffMaxMs: 300,
    outlierDetection: { consecutiveFailures: 3, baseEjectionTimeMs: 500, maxEjectionPercent: 34 },
  });
  const channel = clientChannel(client);
  const victim = children[1]!;
  const stateOf = () => channel.endpoints().find((e) => e.address === victim.address);
  const failures: unknown[] = [];
  let by = new Map<string, number>();
  let stop = false;
  const worker = async () => {
    while (!stop) {
      try {
        const r = await client.unary({ delayMs: 5 }, { timeoutMs: 5000 });
        by.set(r.text, (by.get(r.text) ?? 0) + 1);
      } catch (e) {
        failures.push(e);
      }
    }
  };
  const workers = Array.from({ length: 8 }, worker);
  try {
    await until(() => HOSTS.every((h) => (by.get(h) ?? 0) > 10), "every replica to serve calls");
    victim.process.kill("SIGKILL");
    const killedAt = Date.now();
    await until(() => stateOf()?.state !== "ready", "the killed endpoint to leave the ready state", 2000);
    const gone = Date.now() - killedAt;
    assert.ok(gone < 1000, `out of the rotation after ${gone} ms`);
    by = new Map();
    await sleep(500);
    assert.is(by.get(victim.name) ?? 0, 0, "no call answered by the dead replica");
    assert.ok((by.get(HOSTS[0]!) ?? 0) > 10 && (by.get(HOSTS[2]!) ?? 0) > 10, "the other two took the load");

    // Back on the same address: the endpoint reconnects after its backoff and takes calls again.
    children[1] = await spawnReplica(victim.name, victim.address);
    await until(() => stateOf()?.state === "ready", "the endpoint to be ready again", 5000);
    by = new Map();
    await sleep(500);
    assert.ok((by.get(victim.name) ?? 0) > 10, `the replica is back in the rotation (${by.get(victim.name) ?? 0} calls)`);
    stop = true;
    await Promise.all(workers);
    assert.equal(failures.map((e) => String(e)), [], "no call failed");
  } finally {
    stop = true;
    await Promise.all(workers);
    closeClient(client);
    killAll(children);
  }
});

test("a replica that hangs (SIGSTOP) costs its calls their deadline and no more; the others answer", async () => {
  const children = await Promise.all(HOSTS.map((h) => spawnReplica(h, `tcp://${h}:0`)));
  const client = createClient(EchoService, `static:///${children.map((c) => c.address).join(",")}`, { loadBalancing: "round_robin", serviceConfig: RETRY });
  const hung = children[0]!;
  try {
    // Connect to all three first.
    await client.unary({});
    await until(() => clientChannel(client).endpoints().length === 3 && clientChannel(client).endpoints().every((e) => e.state === "ready"), "every endpoint ready");
    hung.process.kill("SIGSTOP");
    const deadline = 400;
    const outcomes = await Promise.all(
      Array.from({ length: 12 }, async () => {
        const t0 = Date.now();
        try {
          const r = await client.unary({}, { timeoutMs: deadline });
          return { took: Date.now() - t0, text: r.text, code: Code.OK };
        } catch (e) {
          assert.ok(e instanceof RpcError, String(e));
          return { took: Date.now() - t0, text: "", code: (e as RpcError).code };
        }
      }),
    );
    const late = outcomes.filter((o) => o.code !== Code.OK);
    assert.ok(late.length >= 1, "some calls went to the hung replica");
    for (const o of late) {
      assert.is(o.code, Code.DEADLINE_EXCEEDED);
      assert.ok(o.took >= deadline - 5 && o.took < deadline + 200, `a call on the hung replica took ${o.took} ms (deadline ${deadline})`);
    }
    for (const o of outcomes.filter((x) => x.code === Code.OK)) {
      assert.ok(o.text !== hung.name);
      assert.ok(o.took < deadline, `an answered call took ${o.took} ms`);
    }
  } finally {
    closeClient(client);
    killAll(children);
  }
});

/** A resolver for the test: `faulty:error` fails with a reason, `faulty:garbage` reports an endpoint that is no address. */
registerResolver("faulty", (target, listener) => {
  queueMicrotask(() => {
    if (target.path === "error") listener.onError(new KoalaError(ErrorCode.RESOLVE_FAILED, `cannot resolve ${target.raw}: the registry answered 503`));
    else listener.onEndpoints([{ address: "::: not an address :::" }]);
  });
  return { refresh() {}, close() {} };
});

test("a resolver that fails or returns garbage: UNAVAILABLE with the resolver's reason, retries or not", async () => {
  await quietly(async () => {
    for (const serviceConfig of [null, RETRY]) {
      const failing = createClient(EchoService, "faulty:error", { serviceConfig });
      const garbage = createClient(EchoService, "faulty:garbage", { serviceConfig, endpointBackoffInitialMs: 50 });
      try {
        const e1 = await rejection(failing.unary({}, { timeoutMs: 3000 }));
        assert.is(e1.code, Code.UNAVAILABLE);
        assert.match(e1.message, "cannot resolve faulty:error: the registry answered 503");
        const e2 = await rejection(garbage.unary({}, { timeoutMs: 3000 }));
        assert.is(e2.code, Code.UNAVAILABLE);
        assert.match(e2.message, /cannot connect to any endpoint of faulty:garbage/);
        assert.match(e2.message, /not an address/);
      } finally {
        closeClient(failing);
        closeClient(garbage);
      }
    }
  });
});

test.run();
