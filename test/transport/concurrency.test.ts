/** The threading and process models: worker threads and processes using transports at once. */
import { test } from "uvu";
import * as assert from "uvu/assert";
import { fork } from "node:child_process";
import { Worker } from "node:worker_threads";
import { listen } from "../../src/index.js";

const fixture = (name: string) => new URL(`../fixtures/transport/${name}`, import.meta.url);

function worker(name: string, data: unknown): Worker {
  return new Worker(fixture("ts-worker.mjs"), { workerData: { ...(data as object), entry: fixture(name).href } });
}

function nextMessage<T>(w: Worker): Promise<T> {
  return new Promise((resolve, reject) => {
    w.once("message", resolve);
    w.once("error", reject);
  });
}

test("one worker thread sends while another receives", async () => {
  const receiver = worker("worker-receiver.ts", { connections: 1 });
  const { address } = await nextMessage<{ address: string }>(receiver);
  const done = nextMessage<{ results: { count: number; sum: number }[] }>(receiver);
  const sender = worker("worker-sender.ts", { address, count: 20_000, size: 100 });
  const sent = await nextMessage<{ sum: number }>(sender);
  const { results } = await done;
  assert.equal(results, [{ count: 20_000, sum: sent.sum }]);
  await Promise.all([sender.terminate(), receiver.terminate()]);
});

test("several worker threads, each with its own connections, at once", async () => {
  const receiver = worker("worker-receiver.ts", { connections: 4 });
  const { address } = await nextMessage<{ address: string }>(receiver);
  const done = nextMessage<{ results: { count: number; sum: number }[] }>(receiver);
  const senders = Array.from({ length: 4 }, (_, i) => worker("worker-sender.ts", { address, count: 5000 + i, size: 64 + i * 1000 }));
  const sums = await Promise.all(senders.map((w) => nextMessage<{ sum: number }>(w)));
  const { results } = await done;
  const byCount = (a: { count: number }, b: { count: number }) => a.count - b.count;
  assert.equal(
    [...results].sort(byCount),
    sums.map((s, i) => ({ count: 5000 + i, sum: s.sum })),
  );
  await Promise.all([...senders, receiver].map((w) => w.terminate()));
});

test("several processes at once against one server", async () => {
  const l = await listen("tcp://127.0.0.1:0");
  l.onConnection((c) => c.onMessage((m) => c.send([m])));
  const children = Array.from({ length: 4 }, () =>
    fork(fixture("echo-child.ts").pathname, [l.address, "2000"], { execArgv: ["--import", "tsx"], stdio: ["ignore", "inherit", "inherit", "ipc"] }),
  );
  try {
    const oks = await Promise.all(children.map((c) => new Promise<{ ok: number }>((resolve, reject) => (c.once("message", resolve as never), c.once("exit", (code) => reject(new Error(`child exited ${code}`)))))));
    assert.equal(oks.map((o) => o.ok), [2000, 2000, 2000, 2000]);
  } finally {
    for (const c of children) c.kill();
    await l.close();
  }
});

test.run();
