/** The receive queue of a connection is bounded in bytes as well as in messages: a few huge messages stop the reading as many small ones do. */
import { test } from "uvu";
import * as assert from "uvu/assert";
import { setTimeout as sleep } from "node:timers/promises";
import { connect, listen } from "../../src/transport/index.js";

test("a paused reader stops the sender after receiveQueueBytes, not after receiveQueueMessages", async () => {
  const KiB = 1024;
  const l = await listen(`memory:rq-${Math.random()}`, { receiveQueueBytes: 128 * KiB, receiveQueueMessages: 1024 });
  const accepted = l.accept();
  const client = await connect(l.address, { highWaterMarkBytes: 64 * KiB });
  const server = await accepted;
  try {
    server.pause();
    for (let i = 0; i < 32; i++) client.send([new Uint8Array(64 * KiB)]);
    await sleep(50);
    // The server queued about 128 KiB and then stopped taking more: the rest waits at the sender.
    assert.ok(client.bufferedBytes >= 28 * 64 * KiB, `the sender still holds ${client.bufferedBytes} bytes`);
    let got = 0;
    server.onMessage(() => got++);
    server.resume();
    await sleep(50);
    assert.is(got, 32, "everything arrives once the reader reads");
    assert.is(client.bufferedBytes, 0);
  } finally {
    client.close();
    server.close();
    await l.close();
  }
});

test("tcp: messages handed over as ranges of the chunk read and as views stay in order, also across a pause", async () => {
  const l = await listen("tcp://127.0.0.1:0");
  const accepted = l.accept();
  const client = await connect(l.address);
  const server = await accepted;
  try {
    const got: string[] = [];
    let ranges = 0;
    server.onMessage((m) => got.push(Buffer.from(m).toString()));
    assert.type(server.onMessageRange, "function", "socket connections offer range delivery");
    server.onMessageRange!((buf, start, end) => {
      ranges++;
      got.push(Buffer.from(buf.buffer, buf.byteOffset + start, end - start).toString());
    });
    const sent: string[] = [];
    const burst = (from: number) => {
      for (let i = from; i < from + 50; i++) {
        sent.push(`message ${i}`);
        client.send([Buffer.from(`message ${i}`)]);
      }
    };
    burst(0);
    await sleep(30);
    assert.equal(got, sent, "a burst read in one chunk");
    assert.ok(ranges > 0, "messages that could be handled at once came as ranges");
    server.pause();
    burst(50);
    await sleep(30);
    assert.is(got.length, 50, "nothing is delivered while paused");
    const before = ranges;
    server.resume();
    burst(100);
    await sleep(30);
    assert.equal(got, sent, "queued messages first (as views), then the new ones, in order");
    assert.ok(ranges >= before, "range delivery goes on after the queue is empty");
  } finally {
    client.close();
    server.close();
    await l.close();
  }
});

test.run();
