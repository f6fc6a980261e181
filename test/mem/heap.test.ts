import { test } from "uvu";
import * as assert from "uvu/assert";
import v8 from "node:v8";
import vm from "node:vm";
import fc from "fast-check";
import { createHeap, type Lease, type LeakReport, type MemoryRegistrar } from "../../src/mem/index.js";
import { thrownCode } from "../helpers.js";


function recorder() {
  const live = new Map<number, Uint8Array>();
  let next = 1;
  const calls: string[] = [];
  const r: MemoryRegistrar = {
    register(slab) {
      const h = next++;
      live.set(h, slab);
      calls.push(`+${slab.byteLength}`);
      return h;
    },
    deregister(h) {
      assert.ok(live.delete(h as number), "deregistered twice or never registered");
      calls.push("-");
    },
  };
  return { r, live, calls };
}

test("leases come from the smallest class that fits; large ones get their own buffer", () => {
  const heap = createHeap({ slabBytes: 64 * 1024, sizeClasses: [64, 256, 4096] });
  const a = heap.alloc(1);
  const b = heap.alloc(65);
  const c = heap.alloc(5000);
  assert.is(a.capacity, 64);
  assert.is(b.capacity, 256);
  assert.is(c.capacity, 5000);
  assert.is(a.bytes.byteLength, 1);
  assert.is(c.bytes.byteLength, 5000);
  const s = heap.stats();
  assert.is(s.inUseBytes, 1 + 65 + 5000);
  assert.is(s.leases, 3);
  assert.is(s.large.count, 1);
  assert.equal(s.classes.map((k) => k.slotsInUse), [1, 1, 0]);
  a.release();
  b.release();
  c.release();
  assert.is(heap.stats().inUseBytes, 0);
  assert.is(heap.stats().peakInUseBytes, 5066);
  assert.is(heap.stats().large.count, 0);
});

test("each slab is registered once and deregistered when dropped or on close; late registrars see existing slabs", () => {
  const first = recorder();
  const heap = createHeap({ slabBytes: 4096, sizeClasses: [1024], registrars: [first.r] });
  const leases = Array.from({ length: 5 }, () => heap.alloc(1000)); // 4 slots a slab: two slabs
  assert.equal(first.calls, ["+4096", "+4096"]);
  const big = heap.alloc(10_000);
  assert.equal(first.calls, ["+4096", "+4096", "+10000"]);
  assert.is(big.registration(first.r), 3);
  assert.is(leases[0]!.registration(first.r), 1);
  assert.is(leases[0]!.slab.byteLength, 4096);
  assert.is(leases[1]!.offset - leases[0]!.offset === 1024 || leases[0]!.offset - leases[1]!.offset === 1024, true);
  big.release();
  assert.equal(first.calls.at(-1), "-");
  const late = recorder();
  const remove = heap.addRegistrar(late.r);
  assert.is(late.live.size, 2);
  remove();
  assert.is(late.live.size, 0);
  for (const l of leases) l.release();
  heap.close();
  assert.is(first.live.size, 0, "close deregisters everything");
  assert.is(thrownCode(() => heap.alloc(1)), "KOALA_ERR_CLOSED");
});

test("double release, use after release and out-of-bounds access are errors", () => {
  const heap = createHeap();
  const l = heap.alloc(16);
  l.write(0, new Uint8Array([1, 2, 3]));
  assert.equal([...l.read(0, 3)], [1, 2, 3]);
  assert.is(thrownCode(() => l.read(10, 7)), "KOALA_ERR_OUT_OF_BOUNDS");
  assert.is(thrownCode(() => l.write(15, new Uint8Array(2))), "KOALA_ERR_OUT_OF_BOUNDS");
  assert.is(thrownCode(() => l.read(-1, 1)), "KOALA_ERR_OUT_OF_BOUNDS");
  l.release();
  assert.is(thrownCode(() => l.release()), "KOALA_ERR_LEASE_RELEASED");
  assert.is(thrownCode(() => l.bytes), "KOALA_ERR_LEASE_RELEASED");
  assert.is(thrownCode(() => l.read(0, 1)), "KOALA_ERR_LEASE_RELEASED");
  assert.is(thrownCode(() => l.write(0, new Uint8Array(1))), "KOALA_ERR_LEASE_RELEASED");
  assert.is(thrownCode(() => l.retain()), "KOALA_ERR_LEASE_RELEASED");
  assert.is(heap.stats().leases, 0, "the failed release changed nothing");
  const again = heap.alloc(16);
  const other = heap.alloc(16);
  assert.is.not(again.offset, other.offset, "the free list was not corrupted by the double release");
});

test("retain and release count references", () => {
  const heap = createHeap();
  const l = heap.alloc(8);
  assert.is(l.retain(), l);
  l.release();
  assert.not.ok(l.released);
  l.release();
  assert.ok(l.released);
});

test("limits and options are checked", () => {
  const heap = createHeap({ slabBytes: 4096, sizeClasses: [4096], maxBytes: 8192 });
  heap.alloc(100);
  heap.alloc(100);
  assert.is(thrownCode(() => heap.alloc(100)), "KOALA_ERR_OUT_OF_MEMORY");
  assert.is(thrownCode(() => heap.alloc(0)), "KOALA_ERR_INVALID_ARGUMENT");
  assert.is(thrownCode(() => heap.alloc(1.5)), "KOALA_ERR_INVALID_ARGUMENT");
  assert.throws(() => createHeap({ slabByte: 1 } as never), /unknown option "slabByte" \(did you mean "slabBytes"\?\)/);
  assert.throws(() => createHeap({ sizeClasses: [64, 32] }), /sizeClasses/);
});

test("poisonOnRelease fills released memory so a stale view shows garbage", () => {
  const heap = createHeap({ poisonOnRelease: true });
  const l = heap.alloc(4);
  l.write(0, new Uint8Array([1, 2, 3, 4]));
  const stale = l.bytes;
  l.release();
  assert.equal([...stale], [0xde, 0xde, 0xde, 0xde]);
});

test("free slabs beyond one spare per class are returned", () => {
  const heap = createHeap({ slabBytes: 4096, sizeClasses: [1024] });
  const leases = Array.from({ length: 16 }, () => heap.alloc(1024)); // four slabs
  assert.is(heap.stats().slabs, 4);
  for (const l of leases) l.release();
  assert.is(heap.stats().slabs, 1);
  assert.is(heap.stats().reservedBytes, 4096);
});

test("random alloc / write / release sequences keep every invariant", () => {
  fc.assert(
    fc.property(
      fc.array(
        fc.oneof(
          fc.record({ op: fc.constant("alloc" as const), size: fc.oneof(fc.integer({ min: 1, max: 300 }), fc.integer({ min: 1, max: 9000 })) }),
          fc.record({ op: fc.constant("release" as const), pick: fc.nat() }),
          fc.record({ op: fc.constant("write" as const), pick: fc.nat() }),
        ),
        { maxLength: 120 },
      ),
      (ops) => {
        const heap = createHeap({ slabBytes: 8192, sizeClasses: [64, 256, 1024, 4096] });
        const live: { lease: Lease; id: number }[] = [];
        const dead: Lease[] = [];
        let id = 0;
        const fill = (x: { lease: Lease; id: number }) => x.lease.bytes.fill(x.id & 0xff);
        for (const o of ops) {
          if (o.op === "alloc") {
            const x = { lease: heap.alloc(o.size), id: ++id };
            fill(x);
            live.push(x);
          } else if (live.length > 0) {
            const i = o.pick % live.length;
            if (o.op === "write") fill(live[i]!);
            else {
              const [x] = live.splice(i, 1);
              x!.lease.release();
              dead.push(x!.lease);
            }
          }
          // Every live lease still holds its own pattern: nothing overlaps, nothing was reused early.
          for (const x of live) {
            const b = x.lease.bytes;
            for (let k = 0; k < b.length; k += 61) assert.is(b[k], x.id & 0xff);
          }
          const s = heap.stats();
          assert.is(s.inUseBytes, live.reduce((n, x) => n + x.lease.size, 0));
          assert.is(s.leases, live.length);
        }
        // No two live leases in one slab overlap.
        const spans = live.map((x) => ({ slab: x.lease.slab, from: x.lease.offset, to: x.lease.offset + x.lease.capacity }));
        for (let i = 0; i < spans.length; i++)
          for (let j = i + 1; j < spans.length; j++) {
            const a = spans[i]!;
            const b = spans[j]!;
            if (a.slab === b.slab) assert.ok(a.to <= b.from || b.to <= a.from, "overlapping leases");
          }
        for (const l of dead) assert.ok(l.released);
        for (const x of live) x.lease.release();
        assert.is(heap.stats().inUseBytes, 0);
      },
    ),
    { numRuns: 300 },
  );
});

test("a lease garbage-collected without release is reported", async () => {
  v8.setFlagsFromString("--expose-gc");
  const gc = vm.runInNewContext("gc") as () => void;
  const reports: LeakReport[] = [];
  const heap = createHeap({ onLeak: (r) => reports.push(r), trackLeaks: "stack" });
  (() => {
    heap.alloc(123);
  })();
  for (let i = 0; i < 50 && reports.length === 0; i++) {
    gc();
    await new Promise((r) => setImmediate(r));
  }
  assert.is(reports.length, 1);
  assert.is(reports[0]!.size, 123);
  assert.is(reports[0]!.capacity, 128);
  assert.match(reports[0]!.allocatedAt ?? "", /heap\.test/);
  const kept = heap.alloc(5);
  kept.release();
  gc();
  await new Promise((r) => setImmediate(r));
  assert.is(reports.length, 1, "a released lease is never reported");
});

test.run();
