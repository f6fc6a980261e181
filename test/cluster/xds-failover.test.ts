/**
 * gRPC's failover timer for xDS priorities, koala against grpc-js-xds 1.14 on the same snapshot:
 * priority 0 is an endpoint that accepts TCP connections and never answers (the client stays
 * connecting), priority 1 a working one. Calls wait for priority 0 until its failover time ends
 * (grpc-js-xds: 10 s, fixed; koala: KOALA_XDS_FAILOVER_TIMEOUT_MS, 1.5 s here), then go to
 * priority 1. Neither client fails them fast or sends them to priority 1 before.
 */
import { test } from "uvu";
import * as assert from "uvu/assert";
import { createServer as createTcpServer, type Server as TcpServer, type Socket } from "node:net";
import * as grpc from "@grpc/grpc-js";
import * as grpcXds from "@grpc/grpc-js-xds";
import { Code, closeClient, createClient, createServer, type Server } from "../../src/index.js";
import { weightedLocality } from "../../src/cluster/balancers.js";
import { EchoService } from "../fixtures/rpc/gen/echo.js";
import { rejection, thrownCode } from "../helpers.js";
import { assignment, cluster, listener, snapshot, startOracleControlPlane, type ControlPlane } from "./xds-control-plane.js";

const SILENT = "127.0.0.6";
const BACKUP = "127.0.0.3";
const WHO = "/koala.test.Echo/Unary";

let cp: ControlPlane;
let silent: TcpServer;
const held: Socket[] = [];
let koalaServer: Server;
let grpcServer: grpc.Server;
const ports = { silent: 0, koala: 0, grpc: 0 };

test.before(async () => {
  cp = await startOracleControlPlane();
  process.env.GRPC_XDS_BOOTSTRAP_CONFIG = cp.bootstrap;
  process.env.KOALA_XDS_RESOURCE_TIMEOUT_MS = "1000";
  process.env.KOALA_XDS_FAILOVER_TIMEOUT_MS = "1500";
  silent = createTcpServer((s) => held.push(s));
  await new Promise<void>((r) => silent.listen(0, SILENT, r));
  ports.silent = (silent.address() as { port: number }).port;
  koalaServer = createServer();
  koalaServer.add(EchoService, { unary: async () => ({ text: BACKUP }) });
  ports.koala = Number(/:(\d+)$/.exec(await koalaServer.listen(`tcp://${BACKUP}:0`))![1]);
  grpcServer = new grpc.Server();
  grpcServer.addService(
    { Who: { path: WHO, requestStream: false, responseStream: false, requestSerialize: (b: Buffer) => b, requestDeserialize: (b: Buffer) => b, responseSerialize: (b: Buffer) => b, responseDeserialize: (b: Buffer) => b } },
    { Who: (_c: unknown, cb: (e: null, r: Buffer) => void) => cb(null, Buffer.from(BACKUP)) },
  );
  ports.grpc = await new Promise<number>((resolve, reject) => grpcServer.bindAsync(`${BACKUP}:0`, grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))));
  const spec = (backupPort: number) => (name: string) =>
    assignment(name, [
      { zone: "primary", weight: 1, endpoints: [{ host: SILENT }] },
      { zone: "backup", weight: 1, endpoints: [{ host: BACKUP }], priority: 1 },
    ], (h) => (h === SILENT ? ports.silent : backupPort));
  cp.set(snapshot([listener("fo", "fo-c"), listener("fo-grpc", "fo-grpc-c")], [cluster("fo-c"), cluster("fo-grpc-c")], [spec(ports.koala)("fo-c"), spec(ports.grpc)("fo-grpc-c")]));
  grpcXds.register();
});

test.after(async () => {
  for (const s of held) s.destroy();
  silent.close();
  koalaServer.forceShutdown();
  grpcServer.forceShutdown();
  await cp.stop();
  delete process.env.KOALA_XDS_FAILOVER_TIMEOUT_MS;
});

test("a priority still connecting holds the calls until its failover time ends, then the next priority takes them (as grpc-js-xds)", async () => {
  // koala: the silent endpoint would fail its connect after 30 s; the failover time is 1.5 s.
  const koala = createClient(EchoService, "xds:///fo", { connectTimeoutMs: 30_000 });
  const oracle = new grpc.Client("xds:///fo-grpc", grpc.credentials.createInsecure());
  const oracleCall = (ms: number) =>
    new Promise<string>((resolve) => oracle.makeUnaryRequest(WHO, (b: Buffer) => b, (b: Buffer) => b, Buffer.alloc(0), { deadline: Date.now() + ms }, (err, res) => resolve(err ? `code ${err.code}` : res!.toString())));
  try {
    // Both: a call whose deadline ends within the failover time waits for priority 0 and times out.
    const [early, oracleEarly] = await Promise.all([rejection(koala.unary({}, { timeoutMs: 700 })), oracleCall(3000)]);
    assert.is(early.code, Code.DEADLINE_EXCEEDED, `koala: ${early.message}`);
    assert.is(oracleEarly, `code ${grpc.status.DEADLINE_EXCEEDED}`, "grpc-js-xds held the call too");
    assert.ok(held.length > 0, "both connected to the silent endpoint");
    // After the failover time, priority 1 takes the calls.
    const [late, oracleLate] = await Promise.all([koala.unary({}, { timeoutMs: 10_000 }), oracleCall(20_000)]);
    assert.is(late.text, BACKUP);
    assert.is(oracleLate, BACKUP);
    assert.is((await koala.unary({}, { timeoutMs: 1000 })).text, BACKUP, "and keep taking them");
  } finally {
    closeClient(koala);
    oracle.close();
  }
});

test("failoverTimeoutMs: the balancer option is checked, the variable too", () => {
  assert.is(thrownCode(() => weightedLocality({ failoverTimeoutMs: 0 })), "KOALA_ERR_INVALID_ARGUMENT");
  assert.is(thrownCode(() => weightedLocality({ failoverTimeoutMs: "1s" })), "KOALA_ERR_INVALID_ARGUMENT");
  assert.is(thrownCode(() => weightedLocality({ other: 1 })), "KOALA_ERR_INVALID_ARGUMENT");
  const before = process.env.KOALA_XDS_FAILOVER_TIMEOUT_MS;
  process.env.KOALA_XDS_FAILOVER_TIMEOUT_MS = "ten";
  try {
    assert.is(thrownCode(() => weightedLocality({})), "KOALA_ERR_CONFIG");
    weightedLocality({ failoverTimeoutMs: 50 }); // the option wins over the variable
  } finally {
    process.env.KOALA_XDS_FAILOVER_TIMEOUT_MS = before;
  }
});

test.run();
