/**
 * Child process of the RPC benchmark: serves one system and reports its address to the
 * parent over IPC as `{ address }`; answers the message `"cpu"` with `{ cpu: CpuTimes }` (bench/lib/cpu.ts).
 * Run as `server.ts <raw|koala|grpc|grpc-tls> [address]` (koala serves TLS on a `tls://` address).
 *
 * Every system does the same work per call: the greeter's SayHello answers
 * `{ message: "Hello, <name>!", payload: <request payload> }`, Chat answers each message
 * the same way, and the raw server echoes each length-prefixed message.
 *
 * The child exits when the parent goes away (IPC disconnect), through process.exit so that a
 * `--cpu-prof` run writes its profile.
 */
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { createServer, type ServiceImplementation } from "../../src/index.js";
import { GreeterService } from "../../examples/hello/gen/hello.js";
import { PROTO_PATH } from "./proto-path.js";
import { cpuTimes } from "../lib/cpu.js";
import { startConnectServer } from "./connect.js";
import { startRawServer } from "./raw.js";
import { caCert, serverCert, serverKey } from "./tls.js";

const koalaGreeter: ServiceImplementation<typeof GreeterService> = {
  sayHello(req) {
    return { message: `Hello, ${req.name}!`, payload: req.payload };
  },
  async *sayHelloInLanguages(req) {
    yield { message: `Hello, ${req.name}!` };
  },
  async greetMany(requests) {
    let n = 0;
    for await (const _ of requests) n++;
    return { message: `Hello, ${n} people!` };
  },
  async *chat(requests) {
    for await (const req of requests) yield { message: `Hello, ${req.name}!`, payload: req.payload };
  },
};

async function startKoala(address: string): Promise<string> {
  // Policy engines for bench/policy.ts: attached to every call of this process, as an operator would.
  const policy = process.env.KOALA_BENCH_POLICY ?? "none";
  if (policy !== "none") {
    const { policies } = await import("../../src/policy/index.js");
    if (policy === "null") policies.attach("null");
    else if (policy === "ratelimit+metrics") {
      policies.attach("ratelimit", { ratePerSecond: 1e9, burst: 1_000_000 });
      policies.attach("metrics");
    } else throw new Error(`KOALA_BENCH_POLICY=${policy}: expected none, null or ratelimit+metrics`);
  }
  // 256 calls in flight on one connection are really in flight, as they are for grpc-js (whose
  // server sets no stream limit): koala's default of 100 would queue the rest in the client.
  const tls = address.startsWith("tls:") ? { tls: { key: serverKey, cert: serverCert } } : undefined;
  const server = createServer({ maxConcurrentStreams: 1024, transport: tls });
  server.add(GreeterService, koalaGreeter);
  return server.listen(address);
}

interface GrpcRequest {
  name: string;
  payload: Buffer;
}

async function startGrpc(secure: boolean): Promise<string> {
  const def = protoLoader.loadSync(PROTO_PATH);
  const Greeter = (grpc.loadPackageDefinition(def) as any).hello.Greeter as grpc.ServiceClientConstructor;
  const server = new grpc.Server();
  server.addService(Greeter.service, {
    SayHello(call: grpc.ServerUnaryCall<GrpcRequest, unknown>, callback: grpc.sendUnaryData<unknown>) {
      callback(null, { message: `Hello, ${call.request.name}!`, payload: call.request.payload });
    },
    SayHelloInLanguages(call: grpc.ServerWritableStream<GrpcRequest, unknown>) {
      call.write({ message: `Hello, ${call.request.name}!` });
      call.end();
    },
    GreetMany(call: grpc.ServerReadableStream<GrpcRequest, unknown>, callback: grpc.sendUnaryData<unknown>) {
      let n = 0;
      call.on("data", () => n++);
      call.on("end", () => callback(null, { message: `Hello, ${n} people!` }));
    },
    Chat(call: grpc.ServerDuplexStream<GrpcRequest, unknown>) {
      call.on("data", (req: GrpcRequest) => call.write({ message: `Hello, ${req.name}!`, payload: req.payload }));
      call.on("end", () => call.end());
    },
  });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(
      "127.0.0.1:0",
      secure ? grpc.ServerCredentials.createSsl(caCert, [{ private_key: serverKey, cert_chain: serverCert }], false) : grpc.ServerCredentials.createInsecure(),
      (err, p) => (err ? reject(err) : resolve(p)),
    ),
  );
  return `127.0.0.1:${port}`;
}

if (process.send === undefined) {
  console.error("bench/rpc/server.ts runs as a child of bench/rpc.ts (it reports over IPC)");
  process.exit(2);
}
process.on("disconnect", () => process.exit(0));
// The parent asks for this process's CPU time around each run, to report CPU per call.
process.on("message", (m) => {
  if (m === "cpu") process.send!({ cpu: cpuTimes() });
});

const [system, address] = process.argv.slice(2);
let bound: string;
switch (system) {
  case "raw":
    bound = (await startRawServer()).address;
    break;
  case "koala":
    bound = await startKoala(address ?? "tcp://127.0.0.1:0");
    break;
  case "grpc":
  case "grpc-tls":
    bound = await startGrpc(system === "grpc-tls");
    break;
  case "connect":
    bound = (await startConnectServer()).address;
    break;
  default:
    throw new Error(`unknown system ${JSON.stringify(system)} (raw, koala, grpc, grpc-tls, connect)`);
}
process.send({ address: bound });
