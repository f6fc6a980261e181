/**
 * The handlers of the three backends of koala.toml, by backend name, in start order: the
 * gateway is given the backends started before it, so that it can call them. `main.ts` starts
 * them from code; `koala serve examples/backends/services.ts --config examples/backends/koala.toml`
 * starts them from the command line.
 */
import { createClient, type Server } from "../../src/index.js";
import { service, type ServiceEntry } from "../../src/policy/config.js";
import { GreeterService } from "../hello/gen/hello.js";
import { greeter } from "../hello/server.js";
import { KeyValueService } from "../kv/gen/kv.js";
import { keyValueStore } from "../kv/server.js";
import { GatewayService } from "./gen/gateway.js";

/** The gateway's handlers over clients of the greeter and the store. */
function gateway(started: ReadonlyMap<string, Server>): ServiceEntry[] {
  const greeterClient = createClient(GreeterService, started.get("greeter")!.addresses[0]!);
  const kvClient = createClient(KeyValueService, started.get("kv")!.addresses[0]!);
  const text = new TextEncoder();
  return [
    service(GatewayService, {
      async welcome(req) {
        const { message } = await greeterClient.sayHello({ name: req.name });
        const key = `visits/${req.name}`;
        const before = await kvClient.get({ key }).then((e) => Number(new TextDecoder().decode(e.value)), () => 0);
        await kvClient.put({ key, value: text.encode(String(before + 1)) });
        return { greeting: message, visits: BigInt(before + 1) };
      },
    }),
  ];
}

/** Services of each backend (or a function of the backends started before it). */
export const backends = {
  greeter: [service(GreeterService, greeter)],
  kv: [service(KeyValueService, keyValueStore())],
  gateway,
};
