/** The zero-copy message path: heap leases for large frames, external bytes fields, received views. */
import { test } from "uvu";
import * as assert from "uvu/assert";
import { closeClient, createClient, createServer } from "../../src/index.js";
import { createHeap } from "../../src/mem/index.js";
import { GreeterService, HelloReply } from "../../examples/hello/gen/hello.js";

for (const transport of ["tcp", "memory"]) {
  test(`frames are encoded into heap leases that come back once written; big bytes fields are not copied (${transport})`, async () => {
    const serverHeap = createHeap();
    const clientHeap = createHeap();
    const seen: { offset: number; whole: number; length: number }[] = [];
    const server = createServer({ heap: serverHeap });
    server.add(GreeterService, {
      sayHello: (req) => {
        seen.push({ offset: req.payload.byteOffset, whole: req.payload.buffer.byteLength, length: req.payload.byteLength });
        return HelloReply.create({ message: req.name, payload: req.payload });
      },
      sayHelloInLanguages: async function* () {},
      greetMany: () => HelloReply.create(),
      chat: async function* () {},
    });
    const address = await server.listen(transport === "tcp" ? "tcp://127.0.0.1:0" : "memory:zerocopy-" + Math.random());
    const client = createClient(GreeterService, address, { heap: clientHeap });
    try {
      // A 40 KB string is inline: the frame is encoded into a lease.
      const name = "n".repeat(40_000);
      const r1 = await client.sayHello({ name });
      assert.is(r1.message, name);
      assert.ok(clientHeap.stats().peakInUseBytes >= 40_000, "the request frame was a heap lease");
      assert.ok(serverHeap.stats().peakInUseBytes >= 40_000, "the response frame was a heap lease");

      // A 1 MiB bytes field travels as its own part: no encode buffer of that size is ever taken.
      const before = clientHeap.stats().peakInUseBytes;
      const payload = new Uint8Array(1 << 20).fill(5);
      const r2 = await client.sayHello({ name: "big", payload });
      assert.is(r2.payload.byteLength, 1 << 20);
      assert.is(clientHeap.stats().peakInUseBytes, before, "the 1 MiB field was not copied into the heap");
      // Received bytes fields are views into the received message, not copies.
      const last = seen.at(-1)!;
      assert.ok(last.offset > 0 && last.whole > last.length, `payload is a view (offset ${last.offset} of ${last.whole})`);

      await new Promise((r) => setTimeout(r, 20));
      assert.is(clientHeap.stats().inUseBytes, 0, "every client lease was released after the write");
      assert.is(serverHeap.stats().inUseBytes, 0, "every server lease was released after the write");
    } finally {
      closeClient(client);
      server.forceShutdown();
    }
  });
}

test("heap option is validated", () => {
  assert.throws(() => createServer({ heap: {} as never }), /option "heap" must be a Heap or null/);
});

test.run();
