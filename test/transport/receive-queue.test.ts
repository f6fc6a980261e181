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

test.run();
