/**
 * The key-value example in one command (`npm run example:kv`): serves the store, then a
 * client puts, gets, lists and watches keys. The transport comes from the address or
 * KOALA_TRANSPORT (try KOALA_TRANSPORT=unix).
 */
import { Code, RpcError, closeClient, createClient, createServer } from "../../src/index.js";
import { Event_Kind, KeyValueService } from "./gen/kv.js";
import { keyValueStore } from "./server.js";

const server = createServer();
server.add(KeyValueService, keyValueStore());
const address = await server.listen(process.env.ADDRESS ?? "localhost:0");
console.log(`kv store listening on ${address}`);

const kv = createClient(KeyValueService, address);
const text = new TextEncoder();
const ac = new AbortController();

// Watch keys under "fruit/" while we change them.
const seen: string[] = [];
const watching = (async () => {
  try {
    for await (const e of kv.watch({ prefix: "fruit/" }, { signal: ac.signal })) {
      seen.push(`${Event_Kind[e.kind]} ${e.entry?.key} v${e.entry?.version}`);
    }
  } catch (err) {
    if (!(err instanceof RpcError && err.code === Code.CANCELLED)) throw err;
  }
})();
await new Promise((r) => setTimeout(r, 50));

await kv.put({ key: "fruit/apple", value: text.encode("red") });
await kv.put({ key: "fruit/kiwi", value: text.encode("green") });
await kv.put({ key: "veg/leek", value: text.encode("white") });
await kv.put({ key: "fruit/apple", value: text.encode("green") });
await kv.delete({ key: "fruit/kiwi" });

const apple = await kv.get({ key: "fruit/apple" });
console.log(`get fruit/apple = ${new TextDecoder().decode(apple.value)} (version ${apple.version})`);
for await (const e of kv.list({ prefix: "" })) console.log(`list: ${e.key} v${e.version}`);
try {
  await kv.get({ key: "fruit/kiwi" });
} catch (err) {
  console.log(`get fruit/kiwi: ${(err as Error).message}`);
}

await new Promise((r) => setTimeout(r, 50));
ac.abort();
await watching;
for (const s of seen) console.log(`watch: ${s}`);

closeClient(kv);
await server.shutdown();
