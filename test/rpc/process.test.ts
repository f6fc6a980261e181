/** Servers in other processes: killed mid-stream, and the examples run end to end over tcp, unix and rdma (soft provider). */
import { test } from "uvu";
import * as assert from "uvu/assert";
import { execFile, fork } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { Code, RpcError, closeClient, createClient } from "../../src/index.js";
import { EchoService } from "../fixtures/rpc/gen/echo.js";

const root = new URL("../..", import.meta.url).pathname;
const run = promisify(execFile);

/** rdma runs on the software verbs provider, in every process. */
const softRdma = { KOALA_RDMA_PROVIDER: "soft" };

for (const kind of ["tcp", "unix", "rdma"] as const) {
  test(`a server killed mid-stream (${kind}): the stream fails UNAVAILABLE, the next call reconnects when a server is back`, async () => {
    const dir = mkdtempSync(join(tmpdir(), "koala-kill-"));
    const address = kind === "unix" ? `unix:${join(dir, "s.sock")}` : `${kind}://127.0.0.1:0`;
    const savedProvider = process.env.KOALA_RDMA_PROVIDER;
    if (kind === "rdma") process.env.KOALA_RDMA_PROVIDER = "soft";
    const start = (addr: string) => {
      const child = fork(join(root, "test/fixtures/rpc/echo-server.ts"), [addr], { execArgv: ["--import", "tsx"], stdio: ["ignore", "inherit", "inherit", "ipc"] });
      return { child, bound: new Promise<string>((r) => child.once("message", (m) => r((m as { address: string }).address))) };
    };
    const first = start(address);
    const bound = await first.bound;
    const client = createClient(EchoService, bound, { keepaliveIntervalMs: 0 });
    let second: ReturnType<typeof start> | undefined;
    try {
      let got = 0;
      const err = await (async () => {
        for await (const _ of client.serverStream({ text: "long", count: 1_000_000 })) {
          if (++got === 100) first.child.kill("SIGKILL");
        }
      })().catch((e: unknown) => e);
      assert.ok(err instanceof RpcError, String(err));
      assert.is((err as RpcError).code, Code.UNAVAILABLE);
      assert.ok(got >= 100);
      second = start(kind === "unix" ? address : bound);
      await second.bound;
      assert.is((await client.unary({ text: "again" })).text, "again");
    } finally {
      closeClient(client);
      first.child.kill("SIGKILL");
      second?.child.kill("SIGKILL");
      rmSync(dir, { recursive: true, force: true });
      if (savedProvider === undefined) delete process.env.KOALA_RDMA_PROVIDER;
      else process.env.KOALA_RDMA_PROVIDER = savedProvider;
    }
  });
}

for (const transport of ["tcp", "unix", "rdma"]) {
  test(`examples run over ${transport}, chosen by KOALA_TRANSPORT alone`, async () => {
    // host:0 asks for any free port (tcp, rdma) or a fresh socket file (unix): nothing collides.
    const env = { ...process.env, KOALA_TRANSPORT: transport, ADDRESS: "localhost:0", ...(transport === "rdma" ? softRdma : {}) };
    const prefix = transport === "unix" ? "unix:" : `${transport}://localhost`;
    const hello = await run(process.execPath, ["--import", "tsx", join(root, "examples/hello/main.ts")], { env, timeout: 60_000 });
    assert.match(hello.stdout, new RegExp(`greeter listening on ${prefix}`));
    assert.match(hello.stdout, /client streaming: Hello, Ana and Ben and Chen!/);
    const kv = await run(process.execPath, ["--import", "tsx", join(root, "examples/kv/main.ts")], { env, timeout: 60_000 });
    assert.match(kv.stdout, new RegExp(`kv store listening on ${prefix}`));
    assert.match(kv.stdout, /get fruit\/apple = green \(version 4\)/);
    assert.match(kv.stdout, /watch: DELETE fruit\/kiwi v2/);
    assert.match(kv.stdout, /get fruit\/kiwi: \[NOT_FOUND\]/);
    // Three backends from one file: KOALA_TRANSPORT wins over the file's transport.
    const backends = await run(process.execPath, ["--import", "tsx", join(root, "examples/backends/main.ts")], { env, timeout: 60_000 });
    for (const name of ["greeter", "kv", "gateway"]) assert.match(backends.stdout, new RegExp(`${name} listening on ${prefix}`));
    assert.match(backends.stdout, /gateway: Hello, Ana! \(visit 2\)/);
    const [, passed, rejected] = /ratelimit on greeter: (\d+) of 12 calls passed, (\d+) rejected/.exec(backends.stdout) ?? [];
    assert.ok(Number(passed) >= 7 && Number(passed) < 12 && Number(passed) + Number(rejected) === 12, backends.stdout);
    assert.match(backends.stdout, /acl on kv: delete as a guest: PERMISSION_DENIED\nacl on kv: delete as an admin: OK/);
    assert.match(backends.stdout, /metrics: koala_calls_total\{side="server",method="\/gateway.Gateway\/Welcome",code="OK"\} 3/);

    const server = fork(join(root, "examples/hello/server.ts"), [], { execArgv: ["--import", "tsx"], env, stdio: ["ignore", "ignore", "inherit", "ipc"] });
    try {
      const { address } = await new Promise<{ address: string }>((r) => server.once("message", r as never));
      assert.ok(address.startsWith(transport === "unix" ? "unix:" : `${transport}://`), address);
      const client = await run(process.execPath, ["--import", "tsx", join(root, "examples/hello/client.ts")], { env: { ...env, ADDRESS: address }, timeout: 60_000 });
      assert.match(client.stdout, /unary: +Hello, koala!/);
      assert.match(client.stdout, /server streaming: Hello, koala! \/ Bonjour, koala!/);
      assert.match(client.stdout, /client streaming: Hello, Ana and Ben and Chen!/);
      assert.match(client.stdout, /bidi streaming: +Hello, Eli!/);
    } finally {
      server.kill();
    }
  });
}

test.run();
