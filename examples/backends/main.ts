/**
 * Three backends from one configuration file (`npm run example:backends`): a greeter with a
 * rate limit, a key-value store with an access list and a gateway with admission control, all
 * counted by a process-wide metrics engine. The file is `KOALA_CONFIG`, else koala.toml
 * beside this script. It starts the three, makes calls, and prints what the engines did.
 */
import { Code, Metadata, RpcError, closeClient, createClient, type Server } from "../../src/index.js";
import { loadConfig, startBackend } from "../../src/policy/config.js";
import { policies } from "../../src/policy/index.js";
import { GreeterService } from "../hello/gen/hello.js";
import { KeyValueService } from "../kv/gen/kv.js";
import { GatewayService } from "./gen/gateway.js";
import { backends } from "./services.js";

const config = loadConfig(process.env.KOALA_CONFIG ?? new URL("koala.toml", import.meta.url).pathname);
console.log(`configuration: ${config.file}`);

// Started in order: the gateway's handlers call the greeter and the store started before it.
const started = new Map<string, Server>();
for (const [name, services] of Object.entries(backends)) {
  started.set(name, await startBackend(config, name, { services: typeof services === "function" ? services(started) : services }));
}
const [greeterServer, kvServer, gatewayServer] = [started.get("greeter")!, started.get("kv")!, started.get("gateway")!];
const greeterClient = createClient(GreeterService, greeterServer.addresses[0]!);
const kvClient = createClient(KeyValueService, kvServer.addresses[0]!);
for (const [name, s] of [["greeter", greeterServer], ["kv", kvServer], ["gateway", gatewayServer]] as const) {
  console.log(`${name} listening on ${s.addresses.join(", ")}`);
}
for (const e of policies.list()) console.log(`engine ${e.name} (${e.kind}) on ${JSON.stringify(e.scope)}`);

const gateway = createClient(GatewayService, gatewayServer.addresses[0]!);
const outcome = (p: Promise<unknown>) => p.then(() => "OK", (err: unknown) => (err instanceof RpcError ? Code[err.code]! : String(err)));

// Through the gateway: greeted by the greeter, counted by the store.
for (const name of ["Ana", "Ben", "Ana"]) {
  const r = await gateway.welcome({ name });
  console.log(`gateway: ${r.greeting} (visit ${r.visits})`);
}

// The greeter's rate limit: 12 calls at once, with 7 tokens left after the gateway's 3.
const burst = await Promise.all(Array.from({ length: 12 }, (_, i) => outcome(greeterClient.sayHello({ name: `n${i}` }))));
const passed = burst.filter((c) => c === "OK").length;
console.log(`ratelimit on greeter: ${passed} of 12 calls passed, ${burst.filter((c) => c === "RESOURCE_EXHAUSTED").length} rejected with RESOURCE_EXHAUSTED`);

// The store's access list: only an admin deletes.
console.log(`acl on kv: delete as a guest: ${await outcome(kvClient.delete({ key: "visits/Ben" }))}`);
const admin = new Metadata();
admin.set("role", "admin");
console.log(`acl on kv: delete as an admin: ${await outcome(kvClient.delete({ key: "visits/Ben" }, { metadata: admin }))}`);

// What the metrics engine counted (server side), as `koala ctl metrics` would show it.
for (const line of policies.metricsText().split("\n")) {
  if (line.startsWith("koala_calls_total{side=\"server\"")) console.log(`metrics: ${line}`);
}

closeClient(gateway);
closeClient(greeterClient);
closeClient(kvClient);
await Promise.all([gatewayServer.shutdown(), greeterServer.shutdown(), kvServer.shutdown()]);
policies.clear();
