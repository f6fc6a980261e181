/**
 * The shared ring pair (src/managed/ring.ts): records, wrap-around, release out of order, the
 * sleep / wake flags, a hostile producer's lengths; and the same rings across two processes
 * through the shared-memory addon (skipped without it unless KOALA_REQUIRE_NATIVE=1).
 */
import { spawn } from "node:child_process";
import { existsSync, statSync, unlinkSync } from "node:fs";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { RingReader, RingWriter, formatRingPair, ringPairBytes } from "../../src/managed/ring.js";
import { createSharedMemory, shmUnavailableReason } from "../../src/managed/native.js";
import { thrownCode } from "../helpers.js";

function pair(ringBytes = 4096): { mem: ArrayBuffer; w: RingWriter; r: RingReader } {
  const mem = new ArrayBuffer(ringPairBytes(ringBytes));
  formatRingPair(mem, ringBytes);
  return { mem, w: new RingWriter(mem, 0, ringBytes), r: new RingReader(mem, 0, ringBytes) };
}

const bytes = (n: number, seed: number): Uint8Array => Uint8Array.from({ length: n }, (_, i) => (i * 31 + seed) & 255);

test("records come out whole and in order, parts joined, the available counts move", () => {
  const { w, r } = pair();
  assert.is(w.available, 4096);
  assert.is(r.available, 0);
  assert.is(r.read(), undefined);
  assert.ok(w.write([bytes(3, 1), bytes(10, 2)]));
  assert.ok(w.write([]));
  assert.is(r.available, 24 + 8);
  assert.is(w.available, 4096 - 32);
  const a = r.read()!;
  assert.equal([...a], [...bytes(3, 1), ...bytes(10, 2)]);
  assert.is(r.read()!.byteLength, 0);
  assert.is(r.read(), undefined);
  assert.is(w.available, 4096 - 32, "space comes back on release only");
});

test("wrap-around: thousands of records of odd sizes through a small ring, nothing lost or mixed", () => {
  const { w, r } = pair(4096);
  let sent = 0;
  let got = 0;
  for (let round = 0; round < 5000; round++) {
    const n = (round * 97) % (w.maxRecordBytes + 1);
    if (!w.write([bytes(n, round)])) {
      // Full: the reader drains everything, then the write must fit.
      for (let v = r.read(); v !== undefined; v = r.read()) {
        assert.equal(v, bytes(v.byteLength, got), `record ${got}`);
        r.release(v);
        got++;
      }
      assert.ok(w.write([bytes(n, round)]), "an empty ring takes any record up to maxRecordBytes");
    }
    sent++;
  }
  for (let v = r.read(); v !== undefined; v = r.read()) {
    assert.equal(v, bytes(v.byteLength, got));
    r.release(v);
    got++;
  }
  assert.is(got, sent);
  assert.is(w.available, 4096);
});

test("copyOut: the records published, in order, across the wrap, in one buffer, released at once", () => {
  const { w, r } = pair(4096);
  let sent = 0;
  let got = 0;
  for (let round = 0; round < 3000; round++) {
    const n = (round * 53) % 700;
    if (!w.write([bytes(n, round)])) {
      const copies = r.copyOut(1 << 20);
      assert.ok(copies.length > 0, "a full ring has records to copy");
      for (const c of copies) {
        assert.equal(new Uint8Array(c), bytes(c.byteLength, got), `record ${got}`);
        got++;
      }
      assert.ok(copies.every((c) => c.buffer === copies[0]!.buffer), "one buffer for the lot");
      assert.is(w.available, 4096, "every record copied is released");
      assert.ok(w.write([bytes(n, round)]));
    }
    sent++;
  }
  for (const c of r.copyOut(1 << 20)) {
    assert.equal(new Uint8Array(c), bytes(c.byteLength, got));
    got++;
  }
  assert.is(got, sent);
  assert.equal(r.copyOut(1 << 20), [], "empty ring: nothing");
});

test("copyOut stops past maxBytes and refuses while records are held; reserveAt encodes in place", () => {
  const { w, r } = pair(4096);
  for (let i = 0; i < 10; i++) w.write([bytes(100, i)]);
  const first = r.copyOut(150);
  assert.is(first.length, 2, "the record that crosses maxBytes is the last one taken");
  assert.equal(new Uint8Array(first[1]!), bytes(100, 1));
  assert.is(r.copyOut(1 << 20).length, 8);
  w.write([bytes(8, 0)]);
  const held = r.read()!;
  w.write([bytes(8, 1)]);
  assert.is(thrownCode(() => r.copyOut(1 << 20)), "KOALA_ERR_INVALID_ARGUMENT");
  r.release(held);
  assert.is(r.copyOut(1 << 20).length, 1);
  const at = w.reserveAt(5);
  w.buffer.set(bytes(5, 9), at);
  assert.is(r.read(), undefined, "nothing is visible before commit");
  w.commit();
  assert.equal(r.read(), bytes(5, 9));
  assert.is(thrownCode(() => w.commit()), "KOALA_ERR_INVALID_ARGUMENT", "one commit per reservation");
});

test("release out of order: the head moves only over a released prefix", () => {
  const { w, r } = pair();
  for (let i = 0; i < 3; i++) w.write([bytes(100, i)]);
  const [a, b, c] = [r.read()!, r.read()!, r.read()!];
  const full = w.available;
  r.release(b);
  assert.is(w.available, full, "b freed nothing while a is held");
  r.release(a);
  assert.is(w.available, full + 2 * 104);
  assert.is(r.held, 1);
  r.release(c);
  assert.is(w.available, 4096);
  assert.is(thrownCode(() => r.release(c)), "KOALA_ERR_INVALID_ARGUMENT");
  assert.is(thrownCode(() => r.release(new Uint8Array(4))), "KOALA_ERR_INVALID_ARGUMENT");
});

test("a record over maxRecordBytes is refused with a clear error; a full ring says false", () => {
  const { w } = pair();
  assert.is(thrownCode(() => w.write([new Uint8Array(w.maxRecordBytes + 1)])), "KOALA_ERR_MESSAGE_TOO_LARGE");
  assert.ok(w.write([new Uint8Array(w.maxRecordBytes)]));
  assert.ok(w.write([new Uint8Array(w.maxRecordBytes)]), "two of the largest fit");
  assert.not.ok(w.write([new Uint8Array(w.maxRecordBytes)]), "no room: false, nothing written");
});

test("sleep / wake flags: a wake-up is asked for once per sleep, never when data is there", () => {
  const { w, r } = pair();
  assert.not.ok(w.takeConsumerAsleep(), "the consumer never slept");
  assert.ok(r.sleep(), "empty: goes to sleep");
  w.write([bytes(8, 0)]);
  assert.ok(w.takeConsumerAsleep(), "first write after the sleep asks for a wake-up");
  w.write([bytes(8, 1)]);
  assert.not.ok(w.takeConsumerAsleep(), "one wake-up per sleep");
  assert.not.ok(r.sleep(), "records waiting: no sleep");
  const v = r.read()!;
  r.read();
  // Producer waiting for space.
  assert.not.ok(w.waitForSpace(100), "there is room: no wait");
  assert.ok(w.waitForSpace(4096), "not room for 4096 while records are held");
  r.release(v);
  assert.ok(r.takeProducerWaiting(), "a release tells the waiting producer once");
  assert.not.ok(r.takeProducerWaiting());
});

test("a hostile producer: a length past what was written, a huge length, an impossible tail", () => {
  const { mem, w, r } = pair();
  w.write([bytes(16, 0)]);
  const data = new DataView(mem, 4096);
  data.setUint32(0, 1000, true); // claims 1000 bytes where 16 were written
  assert.is(thrownCode(() => r.read()), "KOALA_ERR_PROTOCOL");
  const p2 = pair();
  p2.w.write([bytes(16, 0)]);
  new DataView(p2.mem, 4096).setUint32(0, 0x7fffffff, true);
  assert.is(thrownCode(() => p2.r.read()), "KOALA_ERR_PROTOCOL");
  const p3 = pair();
  Atomics.store(new Int32Array(p3.mem), 64 / 4, 1 << 20); // tail a megabyte ahead of a 4 KiB ring
  assert.is(thrownCode(() => p3.r.read()), "KOALA_ERR_PROTOCOL");
  const p4 = pair();
  Atomics.store(new Int32Array(p4.mem), 64 / 4 + 16, 1 << 20); // head a megabyte past the tail: the writer must not trust it
  assert.is(thrownCode(() => p4.w.write([bytes(8, 0)])), "KOALA_ERR_PROTOCOL");
  const bad = new ArrayBuffer(ringPairBytes(4096));
  assert.is(thrownCode(() => new RingReader(bad, 0, 4096)), "KOALA_ERR_PROTOCOL", "an unformatted mapping is refused");
});

const noAddon = shmUnavailableReason();
if (noAddon !== undefined && process.env.KOALA_REQUIRE_NATIVE === "1") throw new Error(`KOALA_REQUIRE_NATIVE=1 but ${noAddon}`);

test("two processes: 20 000 records each way through a mapped file, in order, with wake-ups", async () => {
  if (noAddon !== undefined) return console.log(`  (skipped: ${noAddon})`);
  const path = `/dev/shm/koala-test-ring-${process.pid}`;
  const ringBytes = 65536;
  const mem = createSharedMemory(path, ringPairBytes(ringBytes));
  try {
    assert.is(statSync(path).mode & 0o777, 0o600);
    formatRingPair(mem, ringBytes);
    const child = spawn(process.execPath, ["--import", "tsx", "test/fixtures/managed/ring-echo.ts", path, String(ringBytes)], { stdio: ["pipe", "pipe", "inherit"] });
    const w = new RingWriter(mem, 0, ringBytes);
    const r = new RingReader(mem, 1, ringBytes);
    const total = 20_000;
    let sent = 0;
    let got = 0;
    let wakes = 0;
    const done = new Promise<void>((resolve, reject) => {
      const pump = (): void => {
        try {
          for (let v = r.read(); v !== undefined; v = r.read()) {
            const n = got % 300;
            if (v.byteLength !== n || (n > 0 && v[n - 1] !== ((got + n) & 255))) throw new Error(`record ${got} wrong`);
            r.release(v);
            got++;
          }
          if (got === total) return resolve();
          if (r.takeProducerWaiting()) child.stdin.write("w");
          while (sent < total) {
            const n = sent % 300;
            const b = new Uint8Array(n);
            if (n > 0) b[n - 1] = (sent + n) & 255;
            if (!w.write([b])) {
              if (!w.waitForSpace(w.cost(n))) continue;
              break;
            }
            sent++;
          }
          if (w.takeConsumerAsleep()) {
            wakes++;
            child.stdin.write("w");
          }
          if (got === total) return resolve();
          if (!r.sleep()) setImmediate(pump);
        } catch (err) {
          reject(err as Error);
        }
      };
      child.stdout.on("data", pump);
      child.on("exit", (code) => (got === total ? resolve() : reject(new Error(`child exited ${code} after ${got}`))));
      pump();
    });
    await done;
    child.stdin.end();
    assert.is(got, total);
    assert.ok(wakes < total / 2, `wake-ups are per sleep, not per message (${wakes} for ${total})`);
  } finally {
    if (existsSync(path)) unlinkSync(path);
  }
});

test.run();
