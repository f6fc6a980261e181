/**
 * Echo server for the transport bench, run in a child process (see servers.ts) so that
 * client and server each have a core. `BENCH_SYSTEM` is `raw` or `koala`, `BENCH_ADDRESS`
 * `tcp://127.0.0.1:0` or `unix:/path`. The bound address goes to the parent over IPC.
 * Both echo every message back at once and leave backpressure to the client's bounded window.
 */
import { rmSync } from "node:fs";
import net from "node:net";
import { listen } from "../../src/transport/index.js";
import { FramedSocket, RAW_HIGH_WATER_MARK_BYTES, socketTarget } from "./framed-socket.js";

const system = process.env.BENCH_SYSTEM;
const address = process.env.BENCH_ADDRESS ?? "tcp://127.0.0.1:0";

async function startRaw(): Promise<string> {
  const server = net.createServer({ highWaterMark: RAW_HIGH_WATER_MARK_BYTES }, (socket) => {
    const framed = new FramedSocket(socket);
    framed.onMessage((m) => framed.send(m));
  });
  const target = socketTarget(address);
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(target, () => resolve());
  });
  if ("path" in target) {
    // process.exit() below skips server.close(), which would remove the socket file.
    process.once("exit", () => rmSync(target.path, { force: true }));
    return address;
  }
  return `tcp://${target.host}:${(server.address() as net.AddressInfo).port}`;
}

async function startKoala(): Promise<string> {
  const listener = await listen(address);
  listener.onConnection((c) => {
    c.onMessage((m) => c.send([m]));
    // The client closing (or resetting) its connection is the normal end of a run.
    void c.closed;
  });
  return listener.address;
}

const bound = system === "raw" ? await startRaw() : system === "koala" ? await startKoala() : undefined;
if (bound === undefined) throw new Error(`bench echo server: BENCH_SYSTEM must be raw or koala, not ${system}`);
process.send!({ address: bound });

// Leave with the parent; a normal exit also lets --cpu-prof write its profile.
process.on("disconnect", () => process.exit(0));
