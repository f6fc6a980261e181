/**
 * A key-value store with a streaming watch. Run: `npm run example:kv` (server and a client
 * session in one go) or `node --import tsx examples/kv/server.ts` alone (ADDRESS as in hello).
 */
import { Code, RpcError, createServer, type CallContext, type ServiceImplementation } from "../../src/index.js";
import { Entry, Event, Event_Kind, KeyValueService } from "./gen/kv.js";

/** The store's handlers, with their state. */
export function keyValueStore(): ServiceImplementation<typeof KeyValueService> {
  const data = new Map<string, Entry>();
  const watchers = new Set<(e: Event) => void>();
  let version = 0n;

  const publish = (kind: Event_Kind, entry: Entry) => {
    for (const w of watchers) w(Event.create({ kind, entry }));
  };

  return {
    get(req) {
      const e = data.get(req.key);
      if (e === undefined) throw new RpcError(Code.NOT_FOUND, `no key ${JSON.stringify(req.key)}`);
      return e;
    },
    put(req) {
      if (req.key === "") throw new RpcError(Code.INVALID_ARGUMENT, "the key must not be empty");
      const now = Date.now();
      const entry = Entry.create({
        key: req.key,
        // Copied: a received bytes field is a view into the receive buffer.
        value: Uint8Array.from(req.value),
        version: ++version,
        updatedAt: { seconds: BigInt(Math.floor(now / 1000)), nanos: (now % 1000) * 1e6 },
      });
      data.set(req.key, entry);
      publish(Event_Kind.PUT, entry);
      return entry;
    },
    delete(req) {
      const e = data.get(req.key);
      if (e === undefined) throw new RpcError(Code.NOT_FOUND, `no key ${JSON.stringify(req.key)}`);
      data.delete(req.key);
      publish(Event_Kind.DELETE, e);
      return {};
    },
    async *list(req) {
      for (const [k, e] of [...data].sort(([a], [b]) => (a < b ? -1 : 1))) if (k.startsWith(req.prefix)) yield e;
    },
    async *watch(req, ctx: CallContext) {
      const queue: Event[] = [];
      let wake: (() => void) | undefined;
      const w = (e: Event) => {
        if (!e.entry?.key.startsWith(req.prefix)) return;
        queue.push(e);
        wake?.();
      };
      watchers.add(w);
      const onAbort = () => wake?.();
      ctx.signal.addEventListener("abort", onAbort);
      try {
        while (!ctx.signal.aborted) {
          const e = queue.shift();
          if (e !== undefined) yield e;
          else await new Promise<void>((r) => (wake = r));
        }
      } finally {
        watchers.delete(w);
        ctx.signal.removeEventListener("abort", onAbort);
      }
    },
  };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const server = createServer();
  server.add(KeyValueService, keyValueStore());
  const address = await server.listen(process.env.ADDRESS ?? "localhost:50052");
  console.log(`kv store listening on ${address}`);
  process.on("SIGINT", () => void server.shutdown({ timeoutMs: 2000 }).then(() => process.exit(0)));
}
