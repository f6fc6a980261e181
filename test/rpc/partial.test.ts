/**
 * Requests and responses may be partial at every depth: a handler or caller writes only the
 * fields it cares about, nested messages included, and the other side gets complete messages
 * with defaults. This file is also type-checked (npm test runs tsc): the calls below compile.
 */
import { test } from "uvu";
import * as assert from "uvu/assert";
import { closeClient, createClient, createServer } from "../../src/index.js";
import { Event_Kind, KeyValueService } from "../../examples/kv/gen/kv.js";

test("nested partial messages type-check and arrive complete, both ways", async () => {
  const server = createServer();
  server.add(KeyValueService, {
    // Entry.updatedAt is a nested Timestamp given with seconds only.
    put: (req) => ({ key: req.key, updatedAt: { seconds: 42n } }),
    // Event.entry is a nested Entry given with its key only.
    async *watch(req) {
      yield { kind: Event_Kind.PUT, entry: { key: `${req.prefix}/a` } };
    },
    get: (req) => ({ key: req.key }),
  });
  const address = await server.listen("tcp://127.0.0.1:0");
  const client = createClient(KeyValueService, address);
  try {
    const put = await client.put({ key: "k" });
    assert.is(put.key, "k");
    assert.is(put.version, 0n, "absent scalar: default");
    assert.is(put.value.byteLength, 0, "absent bytes: empty");
    assert.ok(put.updatedAt !== undefined);
    assert.is(put.updatedAt!.seconds, 42n);
    assert.is(put.updatedAt!.nanos, 0, "absent nested field: default");
    for await (const ev of client.watch({ prefix: "p" })) {
      assert.is(ev.kind, Event_Kind.PUT);
      assert.is(ev.entry?.key, "p/a");
      assert.is(ev.entry?.version, 0n);
      break;
    }
    assert.is((await client.get({})).key, "", "an empty request is a request with every default");
  } finally {
    closeClient(client);
    server.forceShutdown();
  }
});

test.run();
