/**
 * The shm Connection itself (src/managed/shm-connection.ts), both ends in this process over a
 * real sealed memfd and a real Unix socket pair, no daemon: a tick's messages cost the consumer
 * one wake-up; a message encoded in place with reserve / commit arrives as written, a send in
 * between cancels the reservation, a full ring or an oversized message says "use send()".
 */
import { test } from "uvu";
import * as assert from "uvu/assert";
import { closeFd, createSealedMemory } from "../../src/managed/native.js";
import { RingReader, formatRingPair, ringPairBytes } from "../../src/managed/ring.js";
import { ShmConnection } from "../../src/managed/shm-connection.js";
import { resolveTransportOptions } from "../../src/transport/options.js";
import { thrownCode, until } from "../helpers.js";
import { addonMissing, connectionPair, socketPair } from "./helpers.js";

const missing = addonMissing();

const skip = (): boolean => {
  if (missing !== undefined) console.log(`  (skipped: ${missing})`);
  return missing !== undefined;
};

test("the messages one tick writes cost the consumer one wake-up, however often it drained and slept meanwhile", async () => {
  if (skip()) return;
  // The consumer here is a bare RingReader on the app's send ring, standing for a daemon on
  // another core that drains the ring and goes back to sleep between two of the app's sends.
  const ringBytes = 64 * 1024;
  const { buffer, fd } = createSealedMemory(ringPairBytes(ringBytes));
  closeFd(fd);
  formatRingPair(buffer, ringBytes);
  const { a, b, done } = await socketPair();
  const app = new ShmConnection({ memory: buffer, ringBytes, poll: { mode: "adaptive" as const, maxUs: 0 }, options: resolveTransportOptions("test", {}), localAddress: "shm:test", remoteAddress: "shm:test", side: "app", socket: a, copyReceived: true });
  const consumer = new RingReader(buffer, 0, ringBytes);
  let wakeBytes = 0;
  b.on("data", (d: Buffer) => (wakeBytes += d.byteLength));
  try {
    const got: number[] = [];
    const drainAndSleep = (): void => {
      for (const m of consumer.copyOut(1 << 20)) got.push(m[0]! | (m[1]! << 8));
      assert.ok(consumer.sleep(), "drained: asleep");
    };
    drainAndSleep();
    for (let i = 0; i < 200; i++) {
      app.send([Uint8Array.of(i & 255, i >> 8, 7, 7)]);
      drainAndSleep();
    }
    await until(() => wakeBytes > 0, "a wake-up arrives");
    await new Promise((r) => setTimeout(r, 20));
    assert.is(wakeBytes, 1, "one wake-up byte for the tick's 200 messages");
    assert.is(app.wakeupsSent, 1);
    assert.equal(got, Array.from({ length: 200 }, (_, i) => i), "every message, in order");
    drainAndSleep(); // woken: it looks (nothing new) and sleeps again
    app.send([Uint8Array.of(1, 0)]);
    await until(() => wakeBytes === 2, "the next tick's message wakes the sleeping consumer again");
  } finally {
    app.close();
    b.destroy();
    done();
  }
});

test("reserve / commit: encoded in the ring, received as written; a send in between cancels it", async () => {
  if (skip()) return;
  const { app, daemon, done } = await connectionPair();
  try {
    const got: Uint8Array[] = [];
    daemon.onMessage((m) => {
      got.push(m.slice());
      daemon.release(m);
    });
    const buf = app.reserve(6)!;
    assert.ok(buf !== undefined, "room in an empty ring");
    buf.set([1, 2, 3, 4, 5, 6], app.reservedOffset);
    assert.is(app.commit(), true);
    const again = app.reserve(3)!;
    again.set([9, 9, 9], app.reservedOffset);
    app.send([Uint8Array.of(42)]);
    assert.is(thrownCode(() => app.commit()), "KOALA_ERR_INVALID_ARGUMENT", "the send cancelled the reservation");
    assert.is(app.reserve(app.maxMessageBytes + 1), undefined, "over the limit: use send(), which refuses it");
    await until(() => got.length === 2, "two messages arrive");
    assert.equal(got, [Uint8Array.of(1, 2, 3, 4, 5, 6), Uint8Array.of(42)]);
    // The daemon side hands the app copies: they stay valid while the ring is reused.
    const back: Uint8Array[] = [];
    app.onMessage((m) => back.push(m));
    for (let i = 0; i < 3; i++) daemon.send([new Uint8Array(20_000).fill(i)]);
    await until(() => back.length === 3, "three replies");
    for (let i = 3; i < 9; i++) daemon.send([new Uint8Array(20_000).fill(i)]);
    await until(() => back.length === 9, "six more, over the space of the first three");
    assert.ok(back.every((m, i) => m.byteLength === 20_000 && m.every((x) => x === i)), "no copy was overwritten");
  } finally {
    done();
  }
});

test("reserve says undefined when the ring has no room, and send() queues until the peer reads", async () => {
  if (skip()) return;
  const { app, daemon, done } = await connectionPair(4096);
  try {
    daemon.pause();
    while (app.reserve(1000) !== undefined) app.commit();
    assert.ok(app.sendAvailable < 1008 * 2, "the ring filled");
    app.send([new Uint8Array(1000).fill(5)]);
    assert.ok(app.bufferedBytes > 0, "queued: no room");
    assert.is(app.reserve(8), undefined, "a message waits: reserve must not jump the queue");
    let n = 0;
    daemon.onMessage((m) => {
      n++;
      daemon.release(m);
    });
    daemon.resume();
    await until(() => app.bufferedBytes === 0 && n >= 4, "the queued message goes once the peer reads");
    assert.ok(app.reserve(8) !== undefined);
  } finally {
    done();
  }
});

test.run();
