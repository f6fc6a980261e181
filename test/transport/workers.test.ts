/**
 * Worker threads using the transports at once. A socket cannot move between threads, so each
 * thread owns its listeners and connections; the threads talk to each other over them.
 * Each worker must exit by itself once its connections are closed (no handle left open).
 */
import { test } from "uvu";
import * as assert from "uvu/assert";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Worker } from "node:worker_threads";
import type { StreamSummary } from "../fixtures/transport/stream.js";
import { Messages } from "../fixtures/transport/thread.js";

const fixture = (name: string): URL => new URL(`../fixtures/transport/${name}`, import.meta.url);
const DEADLINE_MS = 40_000;

/** Every worker a test started; terminated after it if still running. */
const running: Worker[] = [];

/**
 * Starts fixture `entry` in a worker thread. Node 20 does not run a .ts file as a worker entry
 * (`execArgv: ["--import", "tsx"]` still fails with ERR_UNKNOWN_FILE_EXTENSION), so a small
 * .mjs bootstrap registers tsx in the new thread and imports the entry.
 */
function worker(entry: string, data: object): Messages {
  const w = new Worker(fixture("ts-worker.mjs"), { workerData: { ...data, entry: fixture(entry).href } });
  running.push(w);
  return new Messages(entry, w);
}

async function within<T>(p: Promise<T>, what: string, ms = DEADLINE_MS): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: not done within ${ms} ms`)), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

/** Every worker exits with code 0 by itself. */
async function allExit(workers: Messages[]): Promise<void> {
  const codes = await within(Promise.all(workers.map((w) => w.exited)), "the workers exiting by themselves (a handle left open?)");
  assert.equal(codes, workers.map(() => 0), "every worker exited with code 0");
}

test.after.each(async () => {
  await Promise.all(running.splice(0).map((w) => w.terminate()));
});

interface Sent {
  seed: number;
  sent: StreamSummary;
  closed: string;
}
interface Received {
  seed: number;
  received: StreamSummary;
  outOfOrder: number;
  closed: string;
}

test("one thread sends while another receives over one tcp connection: counts and checksums match", async () => {
  const receiver = worker("worker-stream-receiver.ts", { address: "tcp://127.0.0.1:0", connections: 1 });
  const { address } = await within(receiver.next<{ address: string }>(), "the receiver listening");
  const sender = worker("worker-stream-sender.ts", { address, seed: 1, count: 20_000 });
  const sent = await within(sender.next<Sent>(), "the sender");
  const { results } = await within(receiver.next<{ results: Received[] }>(), "the receiver");
  assert.is(sent.sent.count, 20_000);
  assert.is(sent.closed, "KOALA_ERR_CLOSED");
  assert.equal(results, [{ seed: 1, received: sent.sent, outOfOrder: 0, closed: "KOALA_ERR_PEER_CLOSED" }]);
  await allExit([sender, receiver]);
});

test("four sender threads into one receiver thread, at once", async () => {
  const receiver = worker("worker-stream-receiver.ts", { address: "tcp://127.0.0.1:0", connections: 4 });
  const { address } = await within(receiver.next<{ address: string }>(), "the receiver listening");
  const senders = [10, 11, 12, 13].map((seed) => worker("worker-stream-sender.ts", { address, seed, count: 3000 + seed }));
  const sent = await within(Promise.all(senders.map((s) => s.next<Sent>())), "the senders");
  const { results } = await within(receiver.next<{ results: Received[] }>(), "the receiver");
  const bySeed = [...results].sort((a, b) => a.seed - b.seed);
  assert.equal(
    bySeed,
    sent.map((s) => ({ seed: s.seed, received: s.sent, outOfOrder: 0, closed: "KOALA_ERR_PEER_CLOSED" })),
  );
  await allExit([...senders, receiver]);
});

for (const transport of ["tcp", "unix", "rdma"] as const) {
  test(`a ring of four threads over ${transport}: each listens, dials the next and streams to it while reading the previous`, async () => {
    const dir = transport === "unix" ? mkdtempSync(join(tmpdir(), "koala-ring-")) : undefined;
    // rdma runs on the software verbs provider, each thread with its own context; a worker copies the variable when it starts.
    const savedProvider = process.env.KOALA_RDMA_PROVIDER;
    if (transport === "rdma") process.env.KOALA_RDMA_PROVIDER = "soft";
    try {
      const size = 4;
      const count = 4000;
      const ring = Array.from({ length: size }, (_, index) =>
        worker("worker-ring.ts", { index, size, count, address: dir === undefined ? `${transport === "rdma" ? "rdma" : "tcp"}://127.0.0.1:0` : `unix:${join(dir, `${index}.sock`)}` }),
      );
      const addresses = await within(Promise.all(ring.map((w) => w.next<{ address: string }>().then((m) => m.address))), "the ring listening");
      running.forEach((w) => w.postMessage({ addresses }));
      type Report = { index: number; sent: StreamSummary; received: StreamSummary & { outOfOrder: number; closed: string } };
      const reports = await within(Promise.all(ring.map((w) => w.next<Report>())), "the ring streaming");
      for (const r of reports) {
        const from = reports[(r.index + size - 1) % size]!;
        assert.is(r.sent.count, count);
        assert.equal(
          r.received,
          { ...from.sent, outOfOrder: 0, closed: "KOALA_ERR_PEER_CLOSED" },
          `thread ${r.index} got exactly what thread ${from.index} sent`,
        );
      }
      await allExit(ring);
    } finally {
      if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
      if (savedProvider === undefined) delete process.env.KOALA_RDMA_PROVIDER;
      else process.env.KOALA_RDMA_PROVIDER = savedProvider;
    }
  });
}

test.run();
