/** The per-connection region table: keys, checks, and the rule that a released region is never read again. */
import { test } from "uvu";
import * as assert from "uvu/assert";
import { createHeap } from "../../src/mem/index.js";
import { MAX_UNKNOWN_KEY_REQUESTS, RegionTable, decodeDescriptor, encodeDescriptor } from "../../src/transport/regions.js";
import { KoalaError } from "../../src/errors.js";
import { thrownCode } from "../helpers.js";

test("keys are 64 random bits, descriptors round-trip with the address field", () => {
  const table = new RegionTable(true, "test");
  const keys = new Set<bigint>();
  let above32 = 0;
  for (let i = 0; i < 200; i++) {
    const d = table.register(new Uint8Array(4)).descriptor;
    keys.add(d.key);
    if (d.key > 0xffff_ffffn) above32++;
    assert.equal(decodeDescriptor(encodeDescriptor(d)), d);
  }
  assert.is(keys.size, 200);
  assert.ok(above32 > 150, `keys use the high 32 bits too (${above32} of 200)`);
  const rdmaLike = { key: 0x1234n, address: 0x7f00_0000_1000n, length: 4096, access: "readwrite" as const };
  assert.equal(decodeDescriptor(encodeDescriptor(rdmaLike)), rdmaLike);
});

test("a disabled table registers nothing and refuses every request", () => {
  const table = new RegionTable(false, "the connection with x");
  assert.is(thrownCode(() => table.register(new Uint8Array(1))), "KOALA_ERR_INVALID_ARGUMENT");
  const r = table.serveRead(1n, 0, 1);
  assert.ok(r instanceof KoalaError && r.code === "KOALA_ERR_REMOTE_ACCESS_DENIED");
});

test("a read answer from a plain buffer is a copy: the owner may reuse the buffer at once", () => {
  const table = new RegionTable(true, "test");
  const buf = new Uint8Array(64 * 1024).fill(1);
  const region = table.register(buf);
  const answer = table.serveRead(region.descriptor.key, 0, buf.byteLength);
  assert.ok(!(answer instanceof KoalaError));
  region.deregister();
  buf.fill(9); // the owner reuses its memory for something else
  assert.ok(answer.bytes.every((b) => b === 1), "the queued answer still holds what was read");
});

test("a read answer from a lease keeps the lease until it is written: its memory is not handed to another client meanwhile", () => {
  const heap = createHeap({ trackLeaks: "off" });
  const lease = heap.alloc(64 * 1024);
  lease.bytes.fill(1);
  const table = new RegionTable(true, "test");
  const region = table.register(lease);
  const answer = table.serveRead(region.descriptor.key, 0, 64 * 1024);
  assert.ok(!(answer instanceof KoalaError) && answer.done !== undefined);
  // The application revokes and releases while the answer still waits to be written.
  region.deregister();
  lease.release();
  const other = heap.alloc(64 * 1024);
  other.bytes.fill(0xee); // another client's reply
  assert.ok(answer.bytes.every((b) => b === 1), "the answer is not overwritten by the next lease");
  assert.is(heap.stats().inUseBytes >= 128 * 1024, true, "both leases are live until the answer is written");
  answer.done!();
  other.release();
  assert.is(heap.stats().inUseBytes, 0, "everything back once written");
  const after = table.serveRead(region.descriptor.key, 0, 1);
  assert.ok(after instanceof KoalaError && after.code === "KOALA_ERR_REGION_NOT_FOUND");
});

test("a released lease is no longer readable even while registered", () => {
  const heap = createHeap({ trackLeaks: "off" });
  const lease = heap.alloc(100);
  const table = new RegionTable(true, "test");
  const region = table.register(lease);
  lease.release();
  const r = table.serveRead(region.descriptor.key, 0, 1);
  assert.ok(r instanceof KoalaError && r.code === "KOALA_ERR_REGION_NOT_FOUND");
});

test(`guessing keys: ${MAX_UNKNOWN_KEY_REQUESTS} unknown keys are answered, the next is a protocol error`, () => {
  const table = new RegionTable(true, "test");
  for (let i = 0; i < MAX_UNKNOWN_KEY_REQUESTS; i++) {
    const r = table.serveRead(BigInt(i + 1), 0, 1);
    assert.ok(r instanceof KoalaError && r.code === "KOALA_ERR_REGION_NOT_FOUND");
  }
  assert.is(thrownCode(() => table.serveWrite(999n, 0, new Uint8Array(1))), "KOALA_ERR_PROTOCOL");
});

test("clear() revokes every region and refuses new ones", () => {
  const table = new RegionTable(true, "test");
  const r = table.register(new Uint8Array(4));
  table.clear();
  assert.not.ok(r.registered);
  assert.is(thrownCode(() => table.register(new Uint8Array(4))), "KOALA_ERR_CLOSED");
});

test.run();
