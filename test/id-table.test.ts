/**
 * IdTable (a connection's calls by id, the RDMA transport's work requests by wr_id): it must
 * behave as a Map of id → value for the ids those use (growing ids, any of them ending at any
 * time, long-lived ones among many short ones), checked against a Map on random sequences of
 * operations.
 */
import { test } from "uvu";
import * as assert from "uvu/assert";
import fc from "fast-check";
import { IdTable } from "../src/id-table.js";

test("set, get, has, delete and size on a few calls", () => {
  const t = new IdTable<string>();
  assert.is(t.size, 0);
  assert.is(t.get(1), undefined);
  t.set(1, "a");
  t.set(2, "b");
  assert.is(t.size, 2);
  assert.is(t.get(1), "a");
  assert.ok(t.has(2));
  assert.ok(t.delete(1));
  assert.not.ok(t.delete(1), "a second delete finds nothing");
  assert.is(t.get(1), undefined);
  assert.is(t.size, 1);
  t.set(2, "b2");
  assert.is(t.get(2), "b2", "set on a present id replaces the call");
  assert.is(t.size, 1);
});

test("a long-lived call keeps its place while thousands of later ids share its slot; ids past 2^31 work", () => {
  const t = new IdTable<number>();
  t.set(1, 1);
  for (let id = 2; id < 20_000; id++) {
    t.set(id, id);
    assert.is(t.get(1), 1);
    if (id > 41) assert.ok(t.delete(id - 40), `id ${id - 40} was there`);
  }
  assert.is(t.size, 41);
  assert.equal(
    t.entries().map((e) => e[0]).sort((a, b) => a - b),
    [1, ...Array.from({ length: 40 }, (_, i) => 19_960 + i)],
  );
  const big = 2 ** 31 + 5;
  t.set(big, 7);
  t.set(2 ** 32 - 1, 8);
  assert.is(t.get(big), 7);
  assert.is(t.get(2 ** 32 - 1), 8);
  assert.not.ok(t.has(big - 2 ** 31), "a small id with the same low bits is another call");
  t.clear();
  assert.is(t.size, 0);
  assert.equal(t.values(), []);
});

test("random growing ids, random ends: the same as a Map", () => {
  fc.assert(
    fc.property(fc.array(fc.tuple(fc.boolean(), fc.nat(200), fc.nat(3)), { maxLength: 600 }), (ops) => {
      const t = new IdTable<number>();
      const m = new Map<number, number>();
      let next = 1;
      for (const [add, pick, step] of ops) {
        if (add) {
          next += step; // ids grow, sometimes with gaps
          t.set(next, next * 10);
          m.set(next, next * 10);
          next++;
        } else if (m.size > 0) {
          const ids = [...m.keys()];
          const id = ids[pick % ids.length]!;
          assert.is(t.delete(id), m.delete(id));
        } else assert.not.ok(t.delete(pick));
        assert.is(t.size, m.size);
      }
      for (const [id, v] of m) assert.is(t.get(id), v);
      assert.equal(new Map(t.entries()), m);
      assert.equal(t.values().sort((a, b) => a - b), [...m.values()].sort((a, b) => a - b));
    }),
    { numRuns: 300 },
  );
});

test.run();
