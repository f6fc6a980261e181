/** One call's mistake stays in that call: failures before sending, throwing callbacks, limits, bad statuses, partial services. */
import { test } from "uvu";
import * as assert from "uvu/assert";
import { Code, RpcError, closeClient, createChannel, createClient, createServer } from "../../src/index.js";
import { FrameType } from "../../src/rpc/frame.js";
import { rawFrame, rawServer } from "./raw.js";
import { rejection } from "../helpers.js";
import { EchoService } from "../fixtures/rpc/gen/echo.js";
import { echoImpl, observe } from "./echo-service.js";

const MiB = 1024 * 1024;


async function echoServer(options?: Parameters<typeof createServer>[0]) {
  const server = createServer({ logHandlerErrors: false, ...options });
  server.add(EchoService, echoImpl(observe()));
  const address = await server.listen("tcp://127.0.0.1:0");
  return { server, address };
}

test("a first call that fails before it is sent does not poison its method on the connection", async () => {
  const { server, address } = await echoServer();
  const client = createClient(EchoService, address, { maxMessageBytes: 1024 });
  try {
    const err = await rejection(client.unary({ text: "too big", payload: new Uint8Array(4096) }));
    assert.is(err.code, Code.RESOURCE_EXHAUSTED);
    // The same method, same connection: it works, and so does every other kind.
    assert.is((await client.unary({ text: "after" })).text, "after");
    const replies: string[] = [];
    for await (const r of client.serverStream({ text: "s", count: 2 })) replies.push(r.text);
    assert.equal(replies, ["s", "s"]);
  } finally {
    closeClient(client);
    server.forceShutdown();
  }
});

test("a throwing onHeader / onTrailer fails that call only; the shared connection and other calls go on", async () => {
  const { server, address } = await echoServer();
  const channel = createChannel(address);
  const client = createClient(EchoService, channel);
  try {
    const slow = client.unary({ text: "slow", delayMs: 200 });
    const e1 = await rejection(client.unary({ text: "t" }, { onTrailer: () => { throw new Error("trailer boom"); } }));
    assert.is(e1.code, Code.INTERNAL);
    assert.match(e1.message, /onTrailer callback threw: trailer boom/);
    const e2 = await rejection(client.unary({ text: "h" }, { onHeader: () => { throw new Error("header boom"); } }));
    assert.is(e2.code, Code.INTERNAL);
    assert.match(e2.message, /onHeader/);
    assert.is((await slow).text, "slow", "a call in flight on the same connection finished");
    assert.is((await client.unary({ text: "next" })).text, "next");
  } finally {
    channel.close();
    server.forceShutdown();
  }
});

test("the client enforces its own maxMessageBytes on responses", async () => {
  const server = createServer({ maxMessageBytes: 16 * MiB });
  server.add(EchoService, { unary: (req) => ({ text: req.text, payload: new Uint8Array(5 * MiB) }) });
  const address = await server.listen("tcp://127.0.0.1:0");
  const roomy = createClient(EchoService, address, { maxMessageBytes: 16 * MiB });
  const strict = createClient(EchoService, address); // default limit: 4 MiB
  try {
    assert.is((await roomy.unary({ text: "a" })).payload.byteLength, 5 * MiB, "a client that allows 16 MiB gets the reply");
    const err = await rejection(strict.unary({ text: "b" }));
    assert.is(err.code, Code.RESOURCE_EXHAUSTED);
    assert.match(err.message, /response of \d+ bytes exceeds the client's limit of 4194304 bytes/);
  } finally {
    closeClient(roomy);
    closeClient(strict);
    server.forceShutdown();
  }
});

test("a status code outside gRPC's table becomes UNKNOWN, naming the code", async () => {
  const listener = await rawServer("tcp://127.0.0.1:0", (f, conn) => {
    if (f.type === FrameType.CALL) conn.send([rawFrame({ type: FrameType.STATUS, callId: f.callId, arg: 99, text: "odd" })]);
  });
  const client = createClient(EchoService, listener.address);
  try {
    const err = await rejection(client.unary({ text: "x" }));
    assert.is(err.code, Code.UNKNOWN);
    assert.match(err.message, /status code 99.*odd/);
  } finally {
    closeClient(client);
    await listener.close();
  }
});

test("server.add: missing handlers answer UNIMPLEMENTED; a failing add leaves nothing half-registered", async () => {
  const server = createServer({ logHandlerErrors: false });
  const good = echoImpl(observe());
  assert.throws(() => server.add(EchoService, { unary: good.unary, typo: () => undefined } as never), /"typo" is not a method/);
  assert.throws(() => server.add(EchoService, { unary: 42 } as never), /handler of "unary" is a number/);
  server.add(EchoService, { unary: good.unary, bidi: good.bidi }); // nothing of the failed adds is in the way
  const address = await server.listen("tcp://127.0.0.1:0");
  const client = createClient(EchoService, address);
  try {
    assert.is((await client.unary({ text: "ok" })).text, "ok");
    const e1 = await rejection(client.clientStream([{ text: "a" }]));
    assert.is(e1.code, Code.UNIMPLEMENTED);
    assert.match(e1.message, /ClientStream is not implemented/);
    const e2 = await rejection((async () => {
      for await (const _ of client.serverStream({ text: "s", count: 1 })) void _;
    })());
    assert.is(e2.code, Code.UNIMPLEMENTED);
  } finally {
    closeClient(client);
    server.forceShutdown();
  }
});

test("a handler error with a numeric gRPC code (grpc-js style) keeps its code and details; an empty status text stays empty", async () => {
  const server = createServer({ logHandlerErrors: false });
  let mode = "";
  server.add(EchoService, {
    unary: () => {
      if (mode === "grpc-js") throw Object.assign(new Error("ignored message"), { code: 5, details: "no such thing" });
      if (mode === "plain-object") throw { code: 7, message: "go away" };
      throw new RpcError(Code.NOT_FOUND, "");
    },
  });
  const address = await server.listen("tcp://127.0.0.1:0");
  const client = createClient(EchoService, address);
  try {
    mode = "grpc-js";
    const a = await rejection(client.unary({}));
    assert.is(a.code, Code.NOT_FOUND);
    assert.is(a.details, "no such thing");
    mode = "plain-object";
    const b = await rejection(client.unary({}));
    assert.is(b.code, Code.PERMISSION_DENIED);
    assert.is(b.details, "go away");
    mode = "empty";
    const c = await rejection(client.unary({}));
    assert.is(c.code, Code.NOT_FOUND);
    assert.is(c.details, "");
    assert.is(c.rawMessage, "");
  } finally {
    closeClient(client);
    server.forceShutdown();
  }
});

test.run();
