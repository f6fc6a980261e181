/** .proto files loaded at run time (protobufjs, @grpc/proto-loader) serve and call like generated code. */
import { test } from "uvu";
import * as assert from "uvu/assert";
import * as loader from "@grpc/proto-loader";
import { Code, RpcError, closeClient, createClient, createServer, fromPackageDefinition, loadProto } from "../../src/index.js";
import { EchoService } from "../fixtures/rpc/gen/echo.js";
import { echoImpl, observe } from "./echo-service.js";

const proto = new URL("../fixtures/rpc/echo.proto", import.meta.url).pathname;

type Loose = Record<string, (...a: unknown[]) => any>;

test("loadProto: a generated server answers a client built from the loaded .proto", async () => {
  const services = loadProto(proto);
  const Echo = services["koala.test.Echo"]!;
  assert.equal(Object.keys(Echo.methods), ["unary", "serverStream", "clientStream", "bidi"]);
  const server = createServer();
  server.add(EchoService, echoImpl(observe()));
  const address = await server.listen("memory:protoload-1");
  const client = createClient(Echo, address) as unknown as Loose;
  try {
    const r = await client.unary!({ text: "loaded", big: "12345678901234567", payload: Buffer.from([1, 2]) });
    assert.is(r.text, "loaded");
    assert.is(r.big, "12345678901234567", "64-bit integers come back as decimal strings");
    assert.equal([...r.payload], [1, 2]);
    const replies: any[] = [];
    for await (const x of client.serverStream!({ text: "s", count: 3 })) replies.push(x.index);
    assert.equal(replies, [0, 1, 2]);
    const e = await client.unary!({ text: "x", failCode: Code.NOT_FOUND }).catch((err: unknown) => err);
    assert.ok(e instanceof RpcError && e.code === Code.NOT_FOUND);
  } finally {
    closeClient(client);
    server.forceShutdown();
  }
});

test("loadProto: a server built from the loaded .proto answers a generated client", async () => {
  const Echo = loadProto([proto])["koala.test.Echo"]!;
  const server = createServer();
  server.add(Echo, {
    unary: (req: any) => ({ text: `${req.text}!`, index: 7, big: req.big }),
    serverStream: async function* (req: any) {
      for (let i = 0; i < req.count; i++) yield { index: i };
    },
    clientStream: async (reqs: AsyncIterable<any>) => {
      let n = 0;
      for await (const _ of reqs) n++;
      return { index: n };
    },
    bidi: async function* (reqs: AsyncIterable<any>) {
      for await (const r of reqs) yield { text: r.text };
    },
  } as never);
  const address = await server.listen("memory:protoload-2");
  const client = createClient(EchoService, address);
  try {
    const r = await client.unary({ text: "hi", big: 2n ** 60n });
    assert.is(r.text, "hi!");
    assert.is(r.index, 7);
    assert.is(r.big, 2n ** 60n);
    assert.is((await client.clientStream([{}, {}, {}])).index, 3);
  } finally {
    closeClient(client);
    server.forceShutdown();
  }
});

test("an @grpc/proto-loader package definition works with the same client and server APIs", async () => {
  const def = loader.loadSync(proto, { longs: String, defaults: true });
  const Echo = fromPackageDefinition(def)["koala.test.Echo"]!;
  assert.ok(Echo, "the service is found");
  assert.is(Echo.methods.unary!.path, "/koala.test.Echo/Unary");
  assert.is(Echo.methods.bidi!.kind, "bidi_streaming");
  const server = createServer();
  server.add(EchoService, echoImpl(observe()));
  const address = await server.listen("tcp://127.0.0.1:0");
  const client = createClient(Echo, address) as unknown as Loose;
  try {
    const r = await client.unary!({ text: "grpc-style", big: "42" });
    assert.is(r.text, "grpc-style");
    assert.is(r.big, "42");
    const replies: any[] = [];
    for await (const x of client.bidi!([{ text: "a" }, { text: "b" }])) replies.push(x.text);
    assert.equal(replies, ["a", "b"]);
  } finally {
    closeClient(client);
    server.forceShutdown();
  }
});

test("a bad .proto path is a clear error", () => {
  assert.throws(() => loadProto("/nonexistent/x.proto"), /loadProto\(\): .*x\.proto/);
});

test.run();
