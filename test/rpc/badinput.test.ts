/** Bad input at the RPC layer: each ends in a clear status or a closed connection, and everyone else is served. */
import { test } from "uvu";
import * as assert from "uvu/assert";
import { Code, closeClient, connect, createClient, createServer } from "../../src/index.js";
import { FrameFlag, FrameType, HEADER_BYTES, decodeFrame, writeHeader } from "../../src/rpc/frame.js";
import { EchoService } from "../fixtures/rpc/gen/echo.js";
import { echoImpl, observe } from "./echo-service.js";

function callFrame(callId: number, path: string, body: Uint8Array): Uint8Array {
  const p = Buffer.from(path);
  const out = new Uint8Array(HEADER_BYTES + p.length + body.length);
  writeHeader(out, FrameType.CALL, FrameFlag.DEFINE_METHOD | FrameFlag.END_STREAM | FrameFlag.MESSAGE, callId, 1, 0, 0, p.length);
  out.set(p, HEADER_BYTES);
  out.set(body, HEADER_BYTES + p.length);
  return out;
}

for (const transport of ["tcp", "memory"]) {
  test(`a truncated request body is INVALID_ARGUMENT for that call; garbage frames close only that connection (${transport})`, async () => {
    const server = createServer({ logHandlerErrors: false });
    server.add(EchoService, echoImpl(observe()));
    const address = await server.listen(transport === "tcp" ? "tcp://127.0.0.1:0" : `memory:bad-${Math.random()}`);
    const good = createClient(EchoService, address);
    const raw = await connect(address);
    try {
      const reply = new Promise<Uint8Array>((resolve) => raw.onMessage((m) => decodeFrame(m).type !== FrameType.SETTINGS && resolve(m)));
      // Field 1 (string) claims 5 bytes and carries 1.
      raw.send([callFrame(1, "/koala.test.Echo/Unary", new Uint8Array([0x0a, 0x05, 0x61]))]);
      const status = decodeFrame(await reply);
      assert.is(status.type, FrameType.STATUS);
      assert.is(status.arg, Code.INVALID_ARGUMENT);
      assert.match(status.text, /cannot decode koala\.test\.EchoRequest/);

      // Bytes that are no RPC frame at all: the server drops this connection, with a reason.
      raw.send([new TextEncoder().encode("definitely not a frame")]);
      const reason = await raw.closed;
      assert.ok(["KOALA_ERR_CONNECTION_RESET", "KOALA_ERR_PEER_CLOSED"].includes(reason.code), reason.code);

      // Everyone else is still served.
      assert.is((await good.unary({ text: "fine" })).text, "fine");
    } finally {
      raw.close();
      closeClient(good);
      server.forceShutdown();
    }
  });
}

test("a reused call id is a protocol error that closes the offending connection", async () => {
  const server = createServer({ logHandlerErrors: false });
  server.add(EchoService, echoImpl(observe()));
  const address = await server.listen("tcp://127.0.0.1:0");
  const raw = await connect(address);
  try {
    const body = new Uint8Array([0x0a, 0x01, 0x61]);
    raw.onMessage(() => undefined);
    raw.send([callFrame(5, "/koala.test.Echo/Unary", body)]);
    raw.send([callFrame(5, "/koala.test.Echo/Unary", body)]);
    const reason = await raw.closed;
    assert.ok(["KOALA_ERR_CONNECTION_RESET", "KOALA_ERR_PEER_CLOSED"].includes(reason.code), reason.code);
  } finally {
    raw.close();
    server.forceShutdown();
  }
});

test.run();
