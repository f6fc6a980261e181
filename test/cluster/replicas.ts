/** Real koala servers on loopback addresses for the cluster tests, each answering with its own name. */
import { setTimeout as sleep } from "node:timers/promises";
import { Code, RpcError, createServer, type Server, type createClient } from "../../src/index.js";
import { EchoService } from "../fixtures/rpc/gen/echo.js";

/** The loopback addresses the replicas listen on (all of 127.0.0.0/8 is loopback). */
export const HOSTS = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];

/** Counts which replica answered each of `n` sequential calls (any failure fails the test). */
export async function spread(client: ReturnType<typeof createClient<typeof EchoService>>, n: number): Promise<Map<string, number>> {
  const by = new Map<string, number>();
  for (let i = 0; i < n; i++) {
    const r = await client.unary({ text: "" }, { timeoutMs: 5000 });
    by.set(r.text, (by.get(r.text) ?? 0) + 1);
  }
  return by;
}

/** One replica: its server, its host, the address it listens on, and the calls it served. */
export interface Replica {
  readonly name: string;
  readonly host: string;
  readonly address: string;
  readonly server: Server;
  served: number;
  /** While true, unary calls fail with UNAVAILABLE (counted in `served` too). */
  failing?: boolean;
}

/**
 * Starts a replica on each of `hosts` (127.0.0.x), all on the same port when `samePort` (as DNS
 * A records share one port). Unary calls answer `text` = the replica's host, after `delayMs`.
 */
export async function startReplicas(hosts: readonly string[], samePort = false): Promise<Replica[]> {
  for (let attempt = 0; attempt < 10; attempt++) {
    const replicas: Replica[] = [];
    let port = 0;
    try {
      for (const host of hosts) {
        const r: Replica = { name: host, host, address: "", server: createServer({ logHandlerErrors: false }), served: 0 };
        r.server.add(EchoService, {
          async unary(req) {
            r.served++;
            if (r.failing === true) throw new RpcError(Code.UNAVAILABLE, `${host} is failing`);
            if (req.delayMs > 0) await sleep(req.delayMs);
            return { text: host };
          },
        });
        replicas.push(r);
        (r as { address: string }).address = await r.server.listen(`tcp://${host}:${samePort ? port : 0}`);
        if (samePort && port === 0) port = Number(/:(\d+)$/.exec(r.address)![1]);
      }
      return replicas;
    } catch (err) {
      for (const r of replicas) r.server.forceShutdown();
      if (!samePort) throw err; // the port taken on another host by someone else: try another
    }
  }
  throw new Error(`no common free port on ${hosts.join(", ")} after 10 attempts`);
}

/** The port of a replica's address. */
export function portOf(r: Replica): number {
  return Number(/:(\d+)$/.exec(r.address)![1]);
}

/** Stops every replica. */
export function stopReplicas(replicas: readonly Replica[]): void {
  for (const r of replicas) r.server.forceShutdown();
}
