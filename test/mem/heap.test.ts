/** The heap of registered memory: size classes, leases, registrars, limits, statistics, leak reports. */
import { test } from "uvu";
import * as assert from "uvu/assert";
import v8 from "node:v8";
import vm from "node:vm";
import { KoalaError } from "../../src/errors.js";
import { createHeap, type LeakReport, type MemoryRegistrar } from "../../src/mem/index.js";
import { thrownCode } from "../helpers.js";

const KiB = 1024;
const MiB = 1024 * KiB;

/** A registrar that records what it was asked and checks each handle is deregistered exactly once. */
function recorder() {
  const live = new Map<number, Uint8Array>();
  const calls: string[] = [];
  let next = 1;
  const registrar: MemoryRegistrar = {
    register(slab) {
      const handle = next++;
      live.set(handle, slab);
      calls.push(`+${slab.byteLength}`);
      return handle;
    },
    deregister(handle) {
      assert.ok(live.delete(handle as number), `handle ${String(handle)} deregistered twice or never registered`);
      calls.push(`-${String(handle)}`);
    },
  };
  return { registrar, live, calls };
}

test("a lease comes from the smallest size class that fits", () => {
  const heap = createHeap({ slabBytes: 64 * KiB, sizeClasses: [64, 256, 4096] });
  const cases: [number, number][] = [
    [1, 64],
    [64, 64],
    [65, 256],
    [256, 256],
    [257, 4096],
    [4096, 4096],
  ];
  for (const [size, capacity] of cases) {
    const l = heap.alloc(size);
    assert.is(l.capacity, capacity, `capacity for ${size}`);
    assert.is(l.size, size);
    assert.is(l.bytes.byteLength, size, "bytes is exactly the size asked for");
    assert.ok(l.offset % capacity === 0 && l.offset + capacity <= l.slab.byteLength, "the slot lies inside its slab");
    l.release();
  }
  const defaults = createHeap();
  assert.is(defaults.alloc(1).capacity, 64);
  assert.is(defaults.alloc(1000).capacity, 1024);
  assert.is(defaults.alloc(MiB).capacity, MiB);
  assert.is(defaults.stats().classes.length, 15, "powers of two from 64 B to 1 MiB");
  assert.is(defaults.stats().reservedBytes, 3 * 4 * MiB, "one 4 MiB slab per class used");
  defaults.close();
});

test("leases of one class share a slab at distinct offsets; bytes is a view of the slab", () => {
  const heap = createHeap({ slabBytes: 4096, sizeClasses: [1024] });
  const leases = [heap.alloc(1000), heap.alloc(1000), heap.alloc(1000), heap.alloc(1000)];
  assert.is(new Set(leases.map((l) => l.slab)).size, 1);
  assert.equal(leases.map((l) => l.offset).sort((a, b) => a - b), [0, 1024, 2048, 3072]);
  const l = leases[2]!;
  l.bytes.fill(7);
  assert.is(l.slab[l.offset], 7);
  assert.is(l.slab[l.offset + 999], 7);
  assert.is(l.bytes.buffer, l.slab.buffer);
  const fifth = heap.alloc(1);
  assert.is.not(fifth.slab, l.slab, "a full slab makes the class take a new one");
  assert.is(heap.stats().slabs, 2);
});

test("an allocation above the largest class gets a buffer of its own, freed on release", () => {
  const rec = recorder();
  const heap = createHeap({ slabBytes: 8192, sizeClasses: [64, 4096], registrars: [rec.registrar] });
  const big = heap.alloc(10_000);
  assert.is(big.capacity, 10_000);
  assert.is(big.slab.byteLength, 10_000);
  assert.is(big.offset, 0);
  assert.is(big.bytes.byteLength, 10_000);
  assert.equal(rec.calls, ["+10000"], "registered on its own");
  assert.equal(heap.stats().large, { count: 1, bytes: 10_000 });
  assert.is(heap.stats().reservedBytes, 10_000);
  assert.is(heap.stats().slabs, 0);
  big.release();
  assert.equal(rec.calls, ["+10000", "-1"], "deregistered at release");
  assert.equal(heap.stats().large, { count: 0, bytes: 0 });
  assert.is(heap.stats().reservedBytes, 0);
});

test("stats count leases, slots, slabs and the peak", () => {
  const heap = createHeap({ slabBytes: 4096, sizeClasses: [64, 1024] });
  const a = heap.alloc(10);
  const b = heap.alloc(100);
  const c = heap.alloc(1000);
  const d = heap.alloc(5000);
  assert.equal(heap.stats(), {
    inUseBytes: 6110,
    reservedBytes: 2 * 4096 + 5000,
    peakInUseBytes: 6110,
    leases: 4,
    slabs: 2,
    large: { count: 1, bytes: 5000 },
    leaked: { count: 0, bytes: 0 },
    classes: [
      { size: 64, slabs: 1, slotsInUse: 1, slotsFree: 63 },
      { size: 1024, slabs: 1, slotsInUse: 2, slotsFree: 2 },
    ],
  });
  d.release();
  c.release();
  b.release();
  const s = heap.stats();
  assert.is(s.inUseBytes, 10);
  assert.is(s.peakInUseBytes, 6110);
  assert.is(s.leases, 1);
  assert.equal(s.classes[1], { size: 1024, slabs: 1, slotsInUse: 0, slotsFree: 4 }, "the last slab of a class stays as its spare");
  a.release();
  assert.is(heap.stats().inUseBytes, 0);
});

test("each slab is registered once when made and deregistered when dropped or at close", () => {
  const first = recorder();
  const heap = createHeap({ slabBytes: 4096, sizeClasses: [1024], registrars: [first.registrar] });
  const leases = Array.from({ length: 9 }, () => heap.alloc(1000)); // 4 slots a slab: three slabs
  assert.equal(first.calls, ["+4096", "+4096", "+4096"]);
  assert.is(leases[0]!.registration(first.registrar), 1);
  assert.is(leases[4]!.registration(first.registrar), 2);
  assert.is(first.live.get(leases[8]!.registration(first.registrar) as number), leases[8]!.slab, "the handle is the one returned for the lease's slab");
  // Empty the third slab (it becomes the spare), then the second (dropped: one spare is enough).
  leases[8]!.release();
  assert.equal(first.calls.length, 3);
  for (const l of leases.slice(4, 8)) l.release();
  assert.equal(first.calls.slice(3), ["-2"]);
  heap.close();
  assert.is(first.live.size, 0, "close deregisters everything");
  assert.equal(first.calls.slice(4).sort(), ["-1", "-3"]);
});

test("a registrar added later sees the slabs that exist; removing it deregisters them", () => {
  const heap = createHeap({ slabBytes: 4096, sizeClasses: [1024] });
  const a = heap.alloc(1000);
  const big = heap.alloc(9000);
  const late = recorder();
  const remove = heap.addRegistrar(late.registrar);
  assert.equal(late.calls.sort(), ["+4096", "+9000"]);
  assert.is(late.live.get(a.registration(late.registrar) as number), a.slab);
  assert.is(late.live.get(big.registration(late.registrar) as number), big.slab);
  const b = heap.alloc(9000);
  assert.is(late.calls.length, 3, "new memory is registered with it too");
  remove();
  assert.is(late.live.size, 0);
  remove();
  assert.is(thrownCode(() => a.registration(late.registrar)), "KOALA_ERR_INVALID_ARGUMENT", "a removed registrar has no handle");
  b.release();
  big.release();
  assert.is(late.calls.filter((c) => c.startsWith("-")).length, 3, "nothing deregistered twice after removal");
  assert.is(thrownCode(() => heap.addRegistrar({} as never)), "KOALA_ERR_INVALID_ARGUMENT");
  const again = recorder();
  heap.addRegistrar(again.registrar);
  assert.is(thrownCode(() => heap.addRegistrar(again.registrar)), "KOALA_ERR_INVALID_ARGUMENT", "the same registrar twice");
  heap.close();
  assert.is(again.live.size, 0);
  assert.is(thrownCode(() => heap.addRegistrar(recorder().registrar)), "KOALA_ERR_CLOSED");
});

test("a registrar that fails leaves nothing half registered", () => {
  const good = recorder();
  let fail = false;
  const flaky: MemoryRegistrar = {
    register: () => {
      if (fail) throw new Error("NIC says no");
      return "ok";
    },
    deregister: () => {},
  };
  const heap = createHeap({ slabBytes: 4096, sizeClasses: [1024], registrars: [good.registrar, flaky] });
  const a = heap.alloc(10);
  fail = true;
  assert.throws(() => heap.alloc(5000), /NIC says no/);
  assert.is(good.live.size, 1, "the large buffer was deregistered from the registrar that took it");
  assert.is(heap.stats().reservedBytes, 4096);
  assert.is(heap.stats().leases, 1);
  fail = false;
  heap.alloc(5000); // two slabs now: the 1024 class's and a large one
  const held = new Set<number>();
  let calls = 0;
  const late: MemoryRegistrar = {
    register() {
      if (++calls === 2) throw new Error("late failure");
      held.add(calls);
      return calls;
    },
    deregister(handle) {
      held.delete(handle as number);
    },
  };
  assert.throws(() => heap.addRegistrar(late), /late failure/);
  assert.is(calls, 2);
  assert.is(held.size, 0, "the slab it did register was deregistered again");
  assert.is(thrownCode(() => a.registration(late)), "KOALA_ERR_INVALID_ARGUMENT");
});

test("a double release is an error and leaves the free list intact", () => {
  const heap = createHeap({ slabBytes: 4096, sizeClasses: [1024] });
  const l = heap.alloc(16);
  l.release();
  const err = (() => {
    try {
      l.release();
    } catch (e) {
      return e;
    }
    return undefined;
  })();
  assert.ok(err instanceof KoalaError);
  assert.is((err as KoalaError).code, "KOALA_ERR_LEASE_RELEASED");
  assert.match((err as KoalaError).message, /double release/);
  assert.equal(heap.stats().classes[0], { size: 1024, slabs: 1, slotsInUse: 0, slotsFree: 4 });
  assert.is(heap.stats().leases, 0);
  const four = Array.from({ length: 4 }, () => heap.alloc(16));
  assert.is(new Set(four.map((x) => x.offset)).size, 4, "no slot handed out twice");
  assert.is(heap.stats().slabs, 1);
});

test("every use of a released lease is an error", () => {
  const rec = recorder();
  const heap = createHeap({ registrars: [rec.registrar] });
  const l = heap.alloc(16);
  l.bytes; // a view made before the release must not survive it either
  l.release();
  assert.ok(l.released);
  assert.is(l.size, 16);
  assert.is(l.capacity, 64);
  for (const [what, use] of [
    ["bytes", () => l.bytes],
    ["slab", () => l.slab],
    ["offset", () => l.offset],
    ["read", () => l.read(0, 1)],
    ["write", () => l.write(0, new Uint8Array(1))],
    ["retain", () => l.retain()],
    ["registration", () => l.registration(rec.registrar)],
    ["release", () => l.release()],
  ] as const) {
    assert.is(thrownCode(use), "KOALA_ERR_LEASE_RELEASED", what);
  }
});

test("read and write outside the lease are errors; inside they copy", () => {
  const heap = createHeap();
  const l = heap.alloc(16); // its slot has 64 bytes: the checks are against the lease, not the slot
  l.write(0, new Uint8Array([1, 2, 3]));
  l.write(13, new Uint8Array([9, 9, 9]));
  const copy = l.read(0, 3);
  assert.equal([...copy], [1, 2, 3]);
  copy[0] = 42;
  assert.is(l.bytes[0], 1, "read returns a copy");
  assert.equal([...l.read(13, 3)], [9, 9, 9]);
  assert.is(l.read(16, 0).byteLength, 0);
  for (const [what, access] of [
    ["read past the end", () => l.read(10, 7)],
    ["read at the end", () => l.read(16, 1)],
    ["negative offset", () => l.read(-1, 1)],
    ["negative length", () => l.read(0, -1)],
    ["fractional offset", () => l.read(0.5, 1)],
    ["NaN length", () => l.read(0, NaN)],
    ["write past the end", () => l.write(15, new Uint8Array(2))],
    ["write into the slot beyond the lease", () => l.write(16, new Uint8Array(1))],
    ["write at a negative offset", () => l.write(-1, new Uint8Array(1))],
  ] as const) {
    assert.is(thrownCode(access), "KOALA_ERR_OUT_OF_BOUNDS", what);
  }
  assert.is(thrownCode(() => l.write(0, [1, 2] as never)), "KOALA_ERR_INVALID_ARGUMENT");
  assert.equal([...l.read(0, 16)], [1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9, 9, 9], "failed writes changed nothing");
});

test("retain adds a reference; the memory returns at the last release", () => {
  const heap = createHeap();
  const l = heap.alloc(8);
  assert.is(l.retain(), l);
  l.retain();
  l.release();
  l.release();
  assert.not.ok(l.released);
  assert.is(heap.stats().leases, 1);
  assert.is(l.bytes.byteLength, 8);
  l.release();
  assert.ok(l.released);
  assert.is(heap.stats().leases, 0);
  assert.is(thrownCode(() => l.release()), "KOALA_ERR_LEASE_RELEASED");
});

test("maxBytes limits slabs and large allocations together", () => {
  const heap = createHeap({ slabBytes: 4096, sizeClasses: [1024], maxBytes: 12_000 });
  const slots = Array.from({ length: 8 }, () => heap.alloc(1000)); // two slabs: 8192 bytes
  const err = (() => {
    try {
      heap.alloc(1000);
    } catch (e) {
      return e as KoalaError;
    }
    return undefined;
  })();
  assert.is(err?.code, "KOALA_ERR_OUT_OF_MEMORY");
  assert.match(err!.message, /alloc\(1000\)/);
  assert.match(err!.message, /4096 more bytes/);
  assert.match(err!.message, /maxBytes of 12000/);
  assert.match(err!.message, /8192 bytes reserved/);
  assert.is(thrownCode(() => heap.alloc(5000)), "KOALA_ERR_OUT_OF_MEMORY", "a large allocation counts too");
  const big = heap.alloc(3000 + 808); // exactly up to the limit
  assert.is(heap.stats().reservedBytes, 12_000);
  big.release();
  assert.equal(heap.stats().leases, 8, "a failed allocation leaves no lease behind");
  for (const l of slots.slice(0, 4)) l.release();
  heap.alloc(1000); // there is room again in a slab
});

test("options and sizes are validated; a misspelled option is named", () => {
  assert.throws(() => createHeap({ slabByte: 1 } as never), /unknown option "slabByte" \(did you mean "slabBytes"\?\)/);
  assert.throws(() => createHeap({ poisonOnRelase: true } as never), /"poisonOnRelase".*"poisonOnRelease"/);
  assert.is(thrownCode(() => createHeap({ sizeClasses: [64, 32] })), "KOALA_ERR_INVALID_ARGUMENT");
  assert.throws(() => createHeap({ sizeClasses: [] }), /option "sizeClasses"/);
  assert.throws(() => createHeap({ sizeClasses: [64, 64] }), /option "sizeClasses"/);
  assert.throws(() => createHeap({ slabBytes: 4096, sizeClasses: [64, 8192] }), /"sizeClasses".*8192.*slabBytes: 4096/);
  assert.throws(() => createHeap({ maxBytes: 0 }), /option "maxBytes"/);
  assert.throws(() => createHeap({ registrars: [{ register() {} }] as never }), /option "registrars"/);
  assert.throws(() => createHeap({ trackLeaks: "all" as never }), /option "trackLeaks"/);
  assert.throws(() => createHeap({ onLeak: "warn" as never }), /option "onLeak"/);
  const heap = createHeap();
  for (const size of [0, -1, 1.5, NaN, Infinity, "8" as never]) {
    assert.is(thrownCode(() => heap.alloc(size)), "KOALA_ERR_INVALID_ARGUMENT", `alloc(${String(size)})`);
  }
  assert.is(heap.stats().slabs, 0, "a refused allocation takes no memory");
});

test("poisonOnRelease fills released memory so a stale view shows garbage, not the next lease's data", () => {
  const poisoned = createHeap({ poisonOnRelease: true, slabBytes: 4096, sizeClasses: [64] });
  const l = poisoned.alloc(4);
  l.write(0, new Uint8Array([1, 2, 3, 4]));
  const stale = l.bytes;
  const wholeSlot = l.slab.subarray(l.offset, l.offset + l.capacity);
  l.release();
  assert.equal([...stale], [0xde, 0xde, 0xde, 0xde]);
  assert.ok(wholeSlot.every((b) => b === 0xde), "the whole slot is poisoned");
  const big = poisoned.alloc(5000);
  const staleBig = big.bytes;
  big.release();
  assert.ok(staleBig.every((b) => b === 0xde), "large allocations too");

  // Without it, a stale view silently aliases whatever lease gets the slot next: the hazard it exposes.
  const plain = createHeap({ slabBytes: 4096, sizeClasses: [64] });
  const first = plain.alloc(4);
  const kept = first.bytes;
  first.release();
  const next = plain.alloc(4);
  next.write(0, new Uint8Array([5, 6, 7, 8]));
  assert.equal([...kept], [5, 6, 7, 8]);
});

test("after a burst a class keeps one spare slab; the rest are returned", () => {
  const rec = recorder();
  const heap = createHeap({ slabBytes: 4096, sizeClasses: [64, 1024], registrars: [rec.registrar] });
  const burst = Array.from({ length: 16 }, () => heap.alloc(1024)); // four slabs
  const small = heap.alloc(1);
  assert.is(heap.stats().slabs, 5);
  for (const l of burst) l.release();
  assert.is(heap.stats().slabs, 2, "one spare of the 1024 class and the slab of the small lease");
  assert.is(heap.stats().reservedBytes, 2 * 4096);
  assert.is(rec.live.size, 2);
  // The spare is used before any new slab is made.
  const again = heap.alloc(1000);
  assert.is(rec.live.size, 2);
  again.release();
  small.release();
  assert.equal(heap.stats().classes.map((c) => c.slabs), [1, 1]);
});

test("close deregisters everything; leases still live can be released afterwards", () => {
  const rec = recorder();
  const heap = createHeap({ slabBytes: 4096, sizeClasses: [1024], registrars: [rec.registrar] });
  const l = heap.alloc(100);
  const big = heap.alloc(9000);
  big.bytes.fill(3);
  heap.close();
  assert.ok(heap.closed);
  assert.is(rec.live.size, 0);
  assert.is(thrownCode(() => heap.alloc(1)), "KOALA_ERR_CLOSED");
  assert.is(thrownCode(() => l.registration(rec.registrar)), "KOALA_ERR_CLOSED");
  assert.is(big.bytes[8999], 3, "the memory of a live lease stays readable");
  l.release();
  big.release(); // must not deregister a second time (the recorder would fail)
  const s = heap.stats();
  assert.equal([s.leases, s.inUseBytes, s.reservedBytes, s.slabs, s.large.count], [0, 0, 0, 0, 0]);
  heap.close();
});

/** Collects garbage until `done()` or 50 rounds pass; finalizers run between rounds. */
async function collectUntil(done: () => boolean): Promise<void> {
  v8.setFlagsFromString("--expose-gc");
  const gc = vm.runInNewContext("gc") as () => void;
  for (let i = 0; i < 50 && !done(); i++) {
    gc();
    await new Promise((resolve) => setImmediate(resolve));
  }
}

test("a lease garbage-collected without release is reported, with where it was allocated", async () => {
  const reports: LeakReport[] = [];
  const heap = createHeap({ onLeak: (r) => reports.push(r), trackLeaks: "stack" });
  const untracked: LeakReport[] = [];
  const off = createHeap({ onLeak: (r) => untracked.push(r), trackLeaks: "off" });
  (() => {
    heap.alloc(123).bytes.fill(1);
    off.alloc(123);
  })();
  const kept = heap.alloc(5);
  kept.release();
  await collectUntil(() => reports.length > 0);
  await collectUntil(() => false); // time for anything else to be reported
  assert.is(reports.length, 1, "the released lease is never reported");
  assert.is(untracked.length, 0, 'trackLeaks: "off" reports nothing');
  assert.is(reports[0]!.size, 123);
  assert.is(reports[0]!.capacity, 128);
  assert.match(reports[0]!.allocatedAt ?? "", /heap\.test/);
  const s = heap.stats();
  assert.equal(s.leaked, { count: 1, bytes: 128 });
  assert.is(s.leases, 0);
  assert.is(s.inUseBytes, 0);
  assert.is(s.classes[1]!.slotsInUse, 1, "the leaked slot is not reused: a view of it may still exist");
});

test("by default a leak is counted without a stack and reported as a KOALA_LEAK warning", async () => {
  const heap = createHeap({ slabBytes: 4096, sizeClasses: [64] });
  const warnings: Error[] = [];
  const printers = process.listeners("warning");
  process.removeAllListeners("warning"); // keep the test output clean
  const listener = (w: Error) => warnings.push(w);
  process.on("warning", listener);
  try {
    (() => {
      heap.alloc(7000);
    })();
    await collectUntil(() => warnings.length > 0);
  } finally {
    process.off("warning", listener);
    for (const p of printers) process.on("warning", p);
  }
  assert.is(warnings.length, 1);
  assert.is((warnings[0] as Error & { code?: string }).code, "KOALA_LEAK");
  assert.match(warnings[0]!.message, /7000 bytes/);
  assert.equal(heap.stats().leaked, { count: 1, bytes: 7000 });
});

test.run();
