/**
 * .proto files loaded at run time (protobufjs reflection, @grpc/proto-loader): the fixture
 * protos encode through loaded definitions exactly as through generated code, both ways, and
 * loaded definitions serve and call like generated ones.
 */
import { test } from "uvu";
import * as assert from "uvu/assert";
import { join } from "node:path";
import * as loader from "@grpc/proto-loader";
import { fromPackageDefinition, loadProto, loadService, type LoadedService } from "koala-rpc/proto-loader";
import { Code, KoalaError, RpcError, closeClient, createClient, createServer, type Client } from "../../src/index.js";
import { encodeMessage } from "../../src/proto/wire/writer.js";
import { EchoService } from "../fixtures/rpc/gen/echo.js";
import { Everything, Everything_Nested } from "../golden/everything.js";
import { echoImpl, observe } from "../rpc/echo-service.js";
import { thrownCode } from "../helpers.js";

const root = new URL("../..", import.meta.url).pathname;
const echoProto = join(root, "test/fixtures/rpc/echo.proto");
const everythingProto = join(root, "test/fixtures/protos/app/everything.proto");
const include = join(root, "test/fixtures/protos/include");

type Loose = Record<string, (...a: unknown[]) => any>;

/** A message of the fixture in generated form, and the same message as protobufjs objects have it. */
const generated = Everything.create({
  fInt64: -(2n ** 60n),
  fUint64: 2n ** 64n - 1n,
  fSint32: -5,
  fDouble: 0.5,
  fString: "héllo",
  fBytes: new Uint8Array([1, 2, 3]),
  color: 2,
  price: { currency: "EUR", units: 3n, nanos: -1 },
  rSint64: [1n, -1n],
  rNested: [{ label: "r", level: 1, child: undefined }],
  mInt64String: { "-7": "minus seven" },
  mBoolBytes: { true: new Uint8Array([9]) },
  choice: { case: "cText", value: "chosen" },
  oInt32: 0,
  at: { seconds: 1n, nanos: 2 },
  maybeName: { value: "name" },
});
const loose = {
  fInt64: -(2n ** 60n),
  fUint64: 2n ** 64n - 1n,
  fSint32: -5,
  fDouble: 0.5,
  fString: "héllo",
  fBytes: Buffer.from([1, 2, 3]),
  color: 2,
  price: { currency: "EUR", units: 3n, nanos: -1 },
  rSint64: [1n, -1n],
  rNested: [{ label: "r", level: 1 }],
  mInt64String: { "-7": "minus seven" },
  mBoolBytes: { true: Buffer.from([9]) },
  cText: "chosen",
  oInt32: 0,
  at: { seconds: 1n, nanos: 2 },
  maybeName: { value: "name" },
};

const hex = (b: Uint8Array) => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString("hex");

test("loadProto: the fixture's services, and messages that interoperate byte for byte with generated code", () => {
  const services = loadProto(everythingProto, { includeDirs: [include] });
  const Kinds = services["app.v1.Kinds"]!;
  assert.equal(
    Object.values(Kinds.methods).map((m) => [m.localName, m.path, m.kind, m.input.typeName, m.output.typeName]),
    [
      ["unary", "/app.v1.Kinds/Unary", "unary", "app.v1.Everything", "app.v1.Everything"],
      ["serverStream", "/app.v1.Kinds/ServerStream", "server_streaming", "app.v1.Everything", "app.v1.Everything"],
      ["clientStream", "/app.v1.Kinds/ClientStream", "client_streaming", "app.v1.Everything", "google.protobuf.Empty"],
      ["bidi", "/app.v1.Kinds/Bidi", "bidi_streaming", "app.v1.Everything.Nested", "app.v1.Everything.Nested"],
    ],
  );
  const Loaded = Kinds.methods.unary!.input;
  // One message shape: the generated object encodes the same through the loaded type, and
  // the loaded type decodes exactly what generated code decodes (oneof as { case, value },
  // defaults, bigint, undefined for unset messages).
  assert.is(hex(Loaded.encode(generated)), hex(Everything.encode(generated)));
  const bytes = Everything.encode(generated);
  assert.equal(Loaded.decode(new Uint8Array(bytes)), Everything.decode(new Uint8Array(bytes)));
  assert.equal(Loaded.create(), Everything.create());
  assert.equal(Loaded.create({ fString: "x", choice: { case: "cNested", value: { label: "n" } } }), Everything.create({ fString: "x", choice: { case: "cNested", value: { label: "n" } } }));
  // Partial messages at any depth, through the size and write passes with headroom, as the RPC core encodes.
  const partial = { fString: "p", rNested: [{ label: "r" }], choice: { case: "cNested", value: { child: { label: "deep" } } } };
  const parts = encodeMessage(Loaded, partial, { headroom: 7 });
  assert.is(hex(Buffer.concat(parts).subarray(7)), hex(Everything.encode(partial as never)));
  assert.equal(Loaded.toJson(Loaded.decode(bytes)), Everything.toJson(Everything.decode(bytes)));
  const nested = Kinds.methods.bidi!.input;
  assert.is(hex(nested.encode({ label: "n", child: { label: "c" } })), hex(Everything_Nested.encode({ label: "n", level: 0, child: { label: "c", level: 0, child: undefined } })));
});

test("loadProto: bytes come out as views of the received memory; malformed input is KOALA_ERR_PROTOCOL", () => {
  const Loaded = loadProto(everythingProto, { includeDirs: [include] })["app.v1.Kinds"]!.methods.unary!.input;
  const enc = Everything.encode(Everything.create({ fBytes: new Uint8Array(100).fill(4) }));
  const memory = new Uint8Array(enc.byteLength + 10);
  memory.set(enc, 10);
  const m = Loaded.decode(memory.subarray(10)) as { fBytes: Uint8Array };
  assert.is(m.fBytes.buffer, memory.buffer, "a view, not a copy");
  for (const bad of [[0x72, 0x05, 0x61], [0x0f], [0x18, 0x80]]) {
    assert.is(thrownCode(() => Loaded.decode(Uint8Array.from(bad))), "KOALA_ERR_PROTOCOL");
  }
});

test("fromPackageDefinition: the fixture through @grpc/proto-loader interoperates with generated code", () => {
  const def = loader.loadSync(everythingProto, { includeDirs: [include], longs: String, defaults: true, oneofs: true });
  const services = fromPackageDefinition(def);
  assert.equal(Object.keys(services), ["app.v1.Kinds"], "message and enum entries are not services");
  const Kinds = services["app.v1.Kinds"]!;
  assert.equal(Object.keys(Kinds.methods), ["unary", "serverStream", "clientStream", "bidi"]);
  assert.is(Kinds.methods.unary!.input.typeName, "app.v1.Everything");
  assert.is(Kinds.methods.clientStream!.output.typeName, "google.protobuf.Empty");
  assert.is(Kinds.methods.bidi!.kind, "bidi_streaming");
  const input = Kinds.methods.unary!.input;
  const asLoader = { ...loose, fInt64: String(loose.fInt64), fUint64: String(loose.fUint64), price: { ...loose.price, units: "3" }, rSint64: ["1", "-1"], at: { seconds: "1", nanos: 2 } };
  assert.is(hex(input.encode(asLoader)), hex(Everything.encode(generated)));
  const back = input.decode(Everything.encode(generated)) as Record<string, any>;
  assert.is(back.fUint64, "18446744073709551615", "proto-loader's own options apply (longs: String)");
  assert.is(back.choice, "cText");
  assert.is(thrownCode(() => input.decode(Uint8Array.from([0x72, 0x05]))), "KOALA_ERR_PROTOCOL");
});

test("loadProto: a generated server answers a client built from the loaded .proto", async () => {
  const Echo = loadProto(echoProto)["koala.test.Echo"]!;
  assert.equal(Object.keys(Echo.methods), ["unary", "serverStream", "clientStream", "bidi"]);
  const server = createServer();
  server.add(EchoService, echoImpl(observe()));
  const address = await server.listen("memory:protoload-1");
  const client = createClient(Echo, address) as unknown as Loose;
  try {
    const r = await client.unary!({ text: "loaded", big: 12345678901234567n, payload: Buffer.from([1, 2]) });
    assert.is(r.text, "loaded");
    assert.is(r.big, 12345678901234567n, "64-bit integers are bigints, as in generated code");
    assert.equal([...r.payload], [1, 2]);
    assert.is((await client.unary!({ text: "s", big: "42" })).big, 42n, "decimal strings are accepted too");
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

const echoKinds = { unary: "unary", serverStream: "server_streaming", clientStream: "client_streaming", bidi: "bidi_streaming" } as const;

test("loadService: handlers and clients typed by call kind; a server built from it answers a generated client", async () => {
  const Echo = loadService([echoProto], "koala.test.Echo", echoKinds);
  const server = createServer();
  // Typed per kind: tsc refuses a streaming handler for the unary method, and so on.
  server.add(Echo, {
    unary: (req) => ({ text: `${req.text}!`, index: 7, big: req.big }),
    serverStream: async function* (req) {
      for (let i = 0; i < req.count; i++) yield { index: i };
    },
    clientStream: async (reqs) => {
      let n = 0;
      for await (const _ of reqs) n++;
      return { index: n };
    },
    bidi: async function* (reqs) {
      for await (const r of reqs) yield { text: r.text };
    },
  });
  const typedClient = (c: Client<typeof Echo>) => [c.unary({ text: "t" }) satisfies Promise<unknown>, c.serverStream({}) satisfies AsyncIterable<unknown>];
  assert.type(typedClient, "function");
  assert.throws(() => loadService([echoProto], "koala.test.Echo", { ...echoKinds, unary: "bidi_streaming" }), /koala\.test\.Echo\): unary is unary in the \.proto, not bidi_streaming/);
  assert.throws(() => loadService([echoProto], "koala.test.Echo", { unary: "unary" }), /method serverStream \(server_streaming\) is missing from kinds/);
  assert.throws(() => loadService([echoProto], "koala.test.Nope", echoKinds), /no service koala\.test\.Nope/);
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
  const def = loader.loadSync(echoProto, { longs: String, defaults: true });
  const Echo = fromPackageDefinition(def)["koala.test.Echo"]!;
  assert.ok(Echo, "the service is found");
  assert.is(Echo.methods.unary!.path, "/koala.test.Echo/Unary");
  assert.is(Echo.methods.unary!.input.typeName, "koala.test.EchoRequest");
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

test("bad paths, imports and options are clear KOALA_ERR_INVALID_ARGUMENT errors", () => {
  assert.throws(() => loadProto("/nonexistent/x.proto"), /loadProto\(\): .*x\.proto/);
  assert.throws(() => loadProto(everythingProto), (e: unknown) => e instanceof KoalaError && /loadProto\(\): .*shared\/common\.proto/.test(e.message), "an import not found without its include dir");
  assert.throws(() => loadProto(everythingProto, { includeDir: [include] } as never), /unknown option "includeDir" \(did you mean "includeDirs"\?\)/);
  assert.is(thrownCode(() => loadProto([])), "KOALA_ERR_INVALID_ARGUMENT");
  assert.is(thrownCode(() => fromPackageDefinition(null as never)), "KOALA_ERR_INVALID_ARGUMENT");
});

test("loadProto: the cast README documents types a loaded service's client and handlers by kind, and serves", async () => {
  const Echo = loadProto(echoProto)["koala.test.Echo"] as LoadedService<typeof echoKinds>;
  assert.equal(Object.fromEntries(Object.entries(Echo.methods).map(([k, m]) => [k, m.kind])), echoKinds, "the cast names the kinds the .proto has");
  // Checked by tsc: a unary call is a promise, a server-streaming one an async iterable.
  const typedClient = (c: Client<typeof Echo>) => [c.unary({ text: "t" }) satisfies Promise<unknown>, c.serverStream({}) satisfies AsyncIterable<unknown>];
  assert.type(typedClient, "function");
  const server = createServer();
  server.add(Echo, { unary: (req) => ({ text: `${req.text}?` }), serverStream: async function* () {}, clientStream: async () => ({}), bidi: async function* () {} });
  const address = await server.listen("memory:protoload-cast");
  const client = createClient(Echo, address);
  try {
    assert.is((await client.unary({ text: "cast" })).text, "cast?");
  } finally {
    closeClient(client);
    server.forceShutdown();
  }
});

test.run();
