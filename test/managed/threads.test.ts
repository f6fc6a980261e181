/**
 * Several worker_threads attached at once, each with its own ring pair; and a daemon restart
 * under a running application: calls in flight fail with UNAVAILABLE (retryable, never lost
 * silently) and the channel attaches to the new daemon by itself.
 */
import { Worker } from "node:worker_threads";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { Code, closeClient, createClient, createServer, type Server } from "../../src/index.js";
import { startDaemon } from "../../src/managed/daemon.js";
import { EchoService } from "../fixtures/rpc/gen/echo.js";
import { echoImpl, observe } from "../rpc/echo-service.js";
import { rejection, until } from "../helpers.js";
import { addonMissing, socketDir } from "./helpers.js";

const missing = addonMissing();
let server: Server;
let backend: string;

test.before(async () => {
  if (missing !== undefined) return;
  server = createServer({ logHandlerErrors: false });
  server.add(EchoService, echoImpl(observe()));
  backend = await server.listen("tcp://127.0.0.1:0");
});
test.after(() => {
  if (missing !== undefined) return;
  server.forceShutdown();
});

test("three worker_threads attach at once, each on its own ring pair", async () => {
  if (missing !== undefined) return console.log(`  (skipped: ${missing})`);
  const dir = socketDir();
  const daemon = await startDaemon({ socketPath: dir.path });
  process.env.KOALA_DAEMON_SOCKET = dir.path;
  const workers = [0, 1, 2].map((n) => new Worker(new URL("../fixtures/transport/ts-worker.mjs", import.meta.url), { workerData: { entry: new URL("../fixtures/managed/worker.ts", import.meta.url).href, target: `managed:///${backend}`, n } }));
  try {
    const results = await Promise.all(workers.map((w) => new Promise<{ ok: boolean }>((resolve, reject) => w.once("message", resolve).once("error", reject))));
    assert.equal(results, [{ ok: true }, { ok: true }, { ok: true }]);
    const mine = daemon.attached().filter((a) => a.peer.pid === process.pid);
    assert.is(mine.length, 3, "one attachment (ring pair) per thread");
    for (const w of workers) w.postMessage("close");
    await Promise.all(workers.map((w) => new Promise((r) => w.once("exit", r))));
    await until(() => daemon.attached().length === 0, "every thread's attachment released");
  } finally {
    for (const w of workers) void w.terminate();
    delete process.env.KOALA_DAEMON_SOCKET;
    await daemon.close();
    dir.remove();
  }
});

test("daemon restart: calls in flight fail with UNAVAILABLE, the channel re-attaches to the new daemon", async () => {
  if (missing !== undefined) return console.log(`  (skipped: ${missing})`);
  const dir = socketDir();
  let daemon = await startDaemon({ socketPath: dir.path });
  process.env.KOALA_DAEMON_SOCKET = dir.path;
  const client = createClient(EchoService, `managed:///${backend}`, { reconnectBackoffInitialMs: 20, endpointBackoffInitialMs: 20 });
  try {
    assert.is((await client.unary({ text: "before" })).text, "before");
    const inFlight = client.unary({ text: "in flight", delayMs: 5000 });
    await until(() => daemon.attached().some((a) => a.calls === 1), "the call is open in the daemon");
    await daemon.close();
    const err = await rejection(inFlight);
    assert.is(err.code, Code.UNAVAILABLE);
    daemon = await startDaemon({ socketPath: dir.path });
    // The channel reconnects to the new daemon (waitForReady rides out the backoff).
    const again = await client.unary({ text: "after" }, { waitForReady: true, timeoutMs: 5000 });
    assert.is(again.text, "after");
  } finally {
    closeClient(client);
    delete process.env.KOALA_DAEMON_SOCKET;
    await daemon.close();
    dir.remove();
  }
});

test.run();
