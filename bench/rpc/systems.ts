/**
 * The client side of each system in the RPC benchmark, behind one interface so that every
 * scenario runs the same loop against each.
 */
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { closeClient, createClient } from "../../src/index.js";
import { GreeterService } from "../../examples/hello/gen/hello.js";
import { pipelined, StreamWindow, type Count } from "./measure.js";
import { RawClient } from "./raw.js";
import { caCert } from "./tls.js";
import { connectGreeter } from "./connect.js";

/** What the scenarios need from a system. */
export interface System {
  /** One 64 B or 1 MiB call: the request carries `payload`, the reply echoes it. */
  unary(payload: Uint8Array): Promise<unknown>;
  /**
   * One bidirectional stream for `ms` milliseconds: the client sends `payload` messages with
   * at most `window` unanswered, the server answers each. Counts the replies.
   */
  stream(ms: number, window: number, payload: Uint8Array): Promise<Count>;
  /** Closes the client's connection. */
  close(): void;
}

/** The raw baseline: a call is one echoed message; the stream is the same echo pipelined. */
export async function rawSystem(address: string): Promise<System> {
  const c = await RawClient.connect(address);
  return {
    unary: (payload) => c.request(payload),
    stream: (ms, window, payload) => pipelined(ms, window, () => c.request(payload)),
    close: () => c.close(),
  };
}

/** A bidirectional stream whose requests are paced by a {@link StreamWindow}, for `ms` milliseconds: counts the replies. */
async function paced(ms: number, window: number, payload: Uint8Array, chat: (requests: AsyncIterable<{ name: string; payload: Uint8Array }>) => AsyncIterable<unknown>): Promise<Count> {
  const t0 = performance.now();
  const pace = new StreamWindow(window, { name: "bench", payload });
  for await (const _ of chat(pace.messages(t0 + ms))) pace.reply();
  return { ops: pace.received, seconds: (performance.now() - t0) / 1000 };
}

/**
 * koala-rpc through the generated Greeter client (one channel, one connection; TLS on a `tls://`
 * address). With `balancer`, the channel's `loadBalancing` (for a `static:` target of several servers).
 */
export function koalaSystem(address: string, balancer?: string): System {
  const client = createClient(GreeterService, address, {
    ...(address.startsWith("tls:") ? { transport: { tls: { ca: caCert } } } : {}),
    ...(balancer === undefined ? {} : { loadBalancing: balancer }),
  });
  return {
    unary: (payload) => client.sayHello({ name: "bench", payload }),
    stream: (ms, window, payload) => paced(ms, window, payload, (requests) => client.chat(requests)),
    close: () => closeClient(client),
  };
}

/** Connect-ES (@connectrpc/connect-node, the Connect protocol over HTTP/2), the same .proto (bench/rpc/connect.ts). */
export function connectSystem(address: string): System {
  const client = connectGreeter(address);
  return {
    unary: (payload) => client.sayHello({ name: "bench", payload }),
    stream: (ms, window, payload) => paced(ms, window, payload, (requests) => client.chat(requests)),
    // The HTTP/2 session closes by itself when idle; the child exits with the parent.
    close: () => undefined,
  };
}

interface GrpcGreeter extends grpc.Client {
  SayHello(req: object, cb: (err: grpc.ServiceError | null, reply: unknown) => void): grpc.ClientUnaryCall;
  Chat(): grpc.ClientDuplexStream<object, unknown>;
}

/** @grpc/grpc-js with insecure credentials (or TLS trusting the test CA), the same .proto loaded by @grpc/proto-loader. */
export function grpcSystem(address: string, protoPath: string, secure = false): System {
  const def = protoLoader.loadSync(protoPath);
  const Greeter = (grpc.loadPackageDefinition(def) as any).hello.Greeter as new (address: string, creds: grpc.ChannelCredentials) => GrpcGreeter;
  const client = new Greeter(address, secure ? grpc.credentials.createSsl(caCert) : grpc.credentials.createInsecure());
  return {
    unary: (payload) =>
      new Promise((resolve, reject) => {
        client.SayHello({ name: "bench", payload }, (err, reply) => (err === null ? resolve(reply) : reject(err)));
      }),
    async stream(ms, window, payload) {
      const t0 = performance.now();
      const end = t0 + ms;
      const msg = { name: "bench", payload };
      const pace = new StreamWindow(window, msg);
      const call = client.Chat();
      const finished = new Promise<void>((resolve, reject) => {
        call.on("data", () => pace.reply());
        call.on("end", resolve);
        call.on("error", reject);
      });
      while (performance.now() < end) {
        const wait = pace.room();
        if (wait !== undefined) await wait;
        pace.sent++;
        if (!call.write(msg)) await new Promise((resolve) => call.once("drain", resolve));
      }
      call.end();
      await finished;
      return { ops: pace.received, seconds: (performance.now() - t0) / 1000 };
    },
    close: () => client.close(),
  };
}
