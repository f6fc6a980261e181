/**
 * Property-based test of the heap: random sequences of alloc / write / retain / release (and
 * releases of leases already released) against a simple model, with every invariant checked
 * after every step.
 */
import { test } from "uvu";
import * as assert from "uvu/assert";
import fc from "fast-check";
import { createHeap, type Lease, type MemoryRegistrar } from "../../src/mem/index.js";
import { thrownCode } from "../helpers.js";

const SLAB_BYTES = 4096;
const CLASSES = [64, 256, 1024, 2048, 4096];
const LARGEST = CLASSES[CLASSES.length - 1]!;

type Command =
  | { op: "alloc"; size: number }
  | { op: "write"; pick: number }
  | { op: "retain"; pick: number }
  | { op: "release"; pick: number }
  | { op: "releaseDead"; pick: number };

const command: fc.Arbitrary<Command> = fc.oneof(
  {
    weight: 4,
    arbitrary: fc.record({
      op: fc.constant("alloc" as const),
      // Mostly small, some up to the largest class, a few large allocations.
      size: fc.oneof(
        { weight: 4, arbitrary: fc.integer({ min: 1, max: 300 }) },
        { weight: 2, arbitrary: fc.integer({ min: 1, max: LARGEST }) },
        { weight: 1, arbitrary: fc.integer({ min: LARGEST + 1, max: 3 * LARGEST }) },
      ),
    }),
  },
  { weight: 2, arbitrary: fc.record({ op: fc.constant("write" as const), pick: fc.nat() }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant("retain" as const), pick: fc.nat() }) },
  { weight: 4, arbitrary: fc.record({ op: fc.constant("release" as const), pick: fc.nat() }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant("releaseDead" as const), pick: fc.nat() }) },
);

interface Live {
  lease: Lease;
  id: number;
  refs: number;
  /** What the lease must hold: the pattern last written to it. */
  expected: Uint8Array;
}

/** A pattern that differs between leases, between writes and along the lease, so a shifted or stale copy shows. */
function pattern(id: number, version: number, size: number): Uint8Array {
  const out = new Uint8Array(size);
  const seed = (id * 131 + version * 29) & 0xff;
  for (let k = 0; k < size; k++) out[k] = (seed + k * 7) & 0xff;
  return out;
}

function registrarModel() {
  const live = new Map<number, Uint8Array>();
  let next = 1;
  const registrar: MemoryRegistrar = {
    register(slab) {
      for (const s of live.values()) assert.is.not(s, slab, "a slab registered twice");
      live.set(next, slab);
      return next++;
    },
    deregister(handle) {
      assert.ok(live.delete(handle as number), "deregistered twice or never registered");
    },
  };
  return { registrar, live };
}

test("random alloc / write / retain / release sequences keep every invariant", () => {
  let version = 0;
  fc.assert(
    fc.property(fc.array(command, { maxLength: 80 }), fc.boolean(), (commands, poisonOnRelease) => {
      const reg = registrarModel();
      const heap = createHeap({ slabBytes: SLAB_BYTES, sizeClasses: CLASSES, registrars: [reg.registrar], poisonOnRelease });
      const live: Live[] = [];
      const dead: Lease[] = [];
      let nextId = 0;
      for (const c of commands) {
        switch (c.op) {
          case "alloc": {
            const lease = heap.alloc(c.size);
            const x: Live = { lease, id: ++nextId, refs: 1, expected: pattern(nextId, ++version, c.size) };
            lease.write(0, x.expected);
            live.push(x);
            const fits = CLASSES.find((k) => k >= c.size) ?? c.size;
            assert.is(lease.capacity, fits, "the smallest class that fits");
            break;
          }
          case "write": {
            const x = live[c.pick % live.length];
            if (x === undefined) break;
            x.expected = pattern(x.id, ++version, x.lease.size);
            x.lease.bytes.set(x.expected);
            break;
          }
          case "retain": {
            const x = live[c.pick % live.length];
            if (x === undefined) break;
            x.lease.retain();
            x.refs++;
            break;
          }
          case "release": {
            const i = c.pick % live.length;
            const x = live[i];
            if (x === undefined) break;
            const stale = x.lease.bytes;
            x.lease.release();
            if (--x.refs > 0) {
              assert.not.ok(x.lease.released);
              break;
            }
            live.splice(i, 1);
            dead.push(x.lease);
            if (poisonOnRelease) assert.ok(stale.every((b) => b === 0xde), "released memory is poisoned");
            break;
          }
          case "releaseDead": {
            const l = dead[c.pick % dead.length];
            if (l !== undefined) assert.is(thrownCode(() => l.release()), "KOALA_ERR_LEASE_RELEASED");
            break;
          }
        }
        checkInvariants(heap, live, dead, reg);
      }
      for (const x of live) for (let r = 0; r < x.refs; r++) x.lease.release();
      const end = heap.stats();
      assert.is(end.inUseBytes, 0);
      assert.is(end.leases, 0);
      assert.equal(end.large, { count: 0, bytes: 0 });
      for (const k of end.classes) assert.ok(k.slabs <= 1, `class ${k.size} keeps at most one spare slab`);
      heap.close();
      assert.is(reg.live.size, 0, "close deregistered everything");
    }),
    { numRuns: 250 },
  );
});

function checkInvariants(heap: ReturnType<typeof createHeap>, live: Live[], dead: Lease[], reg: ReturnType<typeof registrarModel>): void {
  // Every live lease holds exactly what was last written to it.
  for (const x of live) {
    const b = x.lease.bytes;
    assert.is(b.byteLength, x.lease.size);
    assert.ok(Buffer.from(b.buffer, b.byteOffset, b.byteLength).equals(x.expected), `lease ${x.id} holds its own bytes`);
  }
  // No two live leases overlap within a slab, and each lies inside its slab and is registered with it.
  const bySlab = new Map<Uint8Array, Lease[]>();
  for (const { lease } of live) {
    assert.ok(lease.offset >= 0 && lease.offset + lease.capacity <= lease.slab.byteLength, "the slot lies inside its slab");
    assert.is(reg.live.get(lease.registration(reg.registrar) as number), lease.slab, "the registration is the slab's");
    const list = bySlab.get(lease.slab);
    if (list === undefined) bySlab.set(lease.slab, [lease]);
    else list.push(lease);
  }
  for (const list of bySlab.values()) {
    list.sort((a, b) => a.offset - b.offset);
    for (let i = 1; i < list.length; i++) {
      assert.ok(list[i - 1]!.offset + list[i - 1]!.capacity <= list[i]!.offset, "two live leases overlap");
    }
  }
  // Statistics agree with the model.
  const s = heap.stats();
  const large = live.filter((x) => x.lease.size > LARGEST);
  assert.is(s.inUseBytes, live.reduce((n, x) => n + x.lease.size, 0));
  assert.is(s.leases, live.length);
  assert.equal(s.large, { count: large.length, bytes: large.reduce((n, x) => n + x.lease.size, 0) });
  assert.is(s.reservedBytes, s.slabs * SLAB_BYTES + s.large.bytes);
  assert.is(reg.live.size, s.slabs + s.large.count, "one registration per slab and large allocation");
  for (const k of s.classes) {
    const inClass = live.filter((x) => x.lease.capacity === k.size);
    assert.is(k.slotsInUse, inClass.length, `slots in use of class ${k.size}`);
    assert.is(k.slotsInUse + k.slotsFree, k.slabs * Math.floor(SLAB_BYTES / k.size));
    const used = new Set(inClass.map((x) => x.lease.slab)).size;
    assert.ok(k.slabs <= used + 1, `class ${k.size}: ${k.slabs} slabs for ${used} in use: at most one spare`);
  }
  // Released leases refuse every use.
  for (const l of dead) {
    assert.ok(l.released);
    assert.is(thrownCode(() => l.bytes), "KOALA_ERR_LEASE_RELEASED");
  }
}

test.run();
