/**
 * The receive-ownership rule at the RPC layer: the server hands every received message back to
 * the transport (`Connection.release`) exactly once, and only when nothing can read it any more
 * — after the handler is done with its request, after a stream reader moved past a message.
 * (On RDMA a release re-posts the receive buffer, so an early one would hand the handler bytes
 * of another message.) Checked through a memory transport whose connections record releases.
 */
import { test } from "uvu";
import { until } from "../helpers.js";
import * as assert from "uvu/assert";
import { setTimeout as sleep } from "node:timers/promises";
import { closeClient, createClient, createServer, registerTransport, setupTransports, type Connection, type Listener, type Transport } from "../../src/index.js";
import { getTransport } from "../../src/transport/registry.js";
import { EchoService } from "../fixtures/rpc/gen/echo.js";

const releases: { message: Uint8Array; at: number }[] = [];
let clock = 0;
const tick = () => ++clock;

/** A connection whose release() is recorded (everything else goes to the real one). */
function recording(conn: Connection): Connection {
  return new Proxy(conn, {
    get(target, prop) {
      if (prop === "release") return (m: Uint8Array) => releases.push({ message: m, at: tick() });
      const v = Reflect.get(target, prop, target) as unknown;
      return typeof v === "function" ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
}

setupTransports();
const memory = getTransport("memory")!;
const recordingMemory: Transport = {
  ...memory,
  async listen(address, options): Promise<Listener> {
    const l = await memory.listen(address, options);
    return new Proxy(l, {
      get(target, prop) {
        if (prop === "onConnection") return (h: ((c: Connection) => void) | null) => target.onConnection(h === null ? null : (c) => h(recording(c)));
        const v = Reflect.get(target, prop, target) as unknown;
        return typeof v === "function" ? (v as (...a: unknown[]) => unknown).bind(target) : v;
      },
    });
  },
};

test("unary: the request's message is released once, after the handler finished with it — also when the call was cancelled meanwhile", async () => {
  registerTransport(recordingMemory);
  releases.length = 0;
  const server = createServer();
  const readAt: number[] = [];
  let started = 0;
  server.add(EchoService, {
    async unary(req) {
      started++;
      await sleep(30);
      readAt.push(tick());
      return { text: req.text, payload: req.payload }; // reads the views into the received message
    },
  });
  const address = await server.listen(`memory:release-${Math.random()}`);
  const client = createClient(EchoService, address);
  try {
    const ok = await client.unary({ text: "a", payload: new Uint8Array(100).fill(7) });
    assert.is(ok.payload[99], 7);
    const ac = new AbortController();
    const cancelled = client.unary({ text: "b", payload: new Uint8Array(100) }, { signal: ac.signal });
    await until(() => started === 2, "the handler of \"b\" starts");
    ac.abort();
    await cancelled.catch(() => undefined);
    // The handler of "b" finishes after its call was cancelled, and its request is released then.
    await until(() => readAt.length === 2 && releases.filter((r) => r.message.byteLength > 100).length === 2, "the handler of \"b\" finishes");
    const unique = new Set(releases.map((r) => r.message));
    assert.is(unique.size, releases.length, "no message released twice");
    const withBody = releases.filter((r) => r.message.byteLength > 100);
    assert.is(withBody.length, 2, "both CALL messages released");
    for (const [i, r] of withBody.entries()) assert.ok(r.at > readAt[i]!, "released after the handler read its request");
  } finally {
    closeClient(client);
    server.forceShutdown();
    registerTransport(memory);
  }
});

test("client streaming: each request's message is released when the handler asks for the next one, the last when it returns", async () => {
  registerTransport(recordingMemory);
  releases.length = 0;
  const server = createServer();
  const order: string[] = [];
  server.add(EchoService, {
    async clientStream(requests) {
      let n = 0;
      for await (const r of requests) {
        order.push(`got ${r.text} (${releases.filter((x) => x.message.byteLength >= 1000).length} released)`);
        n += r.payload.byteLength;
      }
      order.push(`end (${releases.filter((x) => x.message.byteLength >= 1000).length} released)`);
      return { index: n };
    },
  });
  const address = await server.listen(`memory:release-${Math.random()}`);
  const client = createClient(EchoService, address);
  try {
    const r = await client.clientStream([1, 2, 3].map((i) => ({ text: String(i), payload: new Uint8Array(1000) })));
    assert.is(r.index, 3000);
    await until(() => order.length === 4, "the handler ends");
    await sleep(10); // a release after the end would show below
    assert.equal(order, ["got 1 (0 released)", "got 2 (1 released)", "got 3 (2 released)", "end (3 released)"]);
    assert.is(releases.filter((x) => x.message.byteLength >= 1000).length, 3, "every DATA message released once");
  } finally {
    closeClient(client);
    server.forceShutdown();
    registerTransport(memory);
  }
});

test.run();
