/**
 * Running out of file descriptors is logged (once, not per refused connection) and survived:
 * the server takes connections again once others close. The server runs in a child process
 * started under a low `ulimit -n`.
 */
import { test } from "uvu";
import * as assert from "uvu/assert";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { closeClient, createClient, type Client } from "../../src/index.js";
import { EchoService } from "../fixtures/rpc/gen/echo.js";

const root = fileURLToPath(new URL("../..", import.meta.url));

test("a server out of file descriptors logs it once, refuses meanwhile, and serves again once connections close", async () => {
  const child = spawn("bash", ["-c", `ulimit -n 96 && exec "${process.execPath}" --import tsx test/fixtures/rpc/fd-server.ts`], {
    cwd: root,
    stdio: ["pipe", "pipe", "pipe"],
    env: { ...process.env, KOALA_LOG: "error" },
  });
  let stderr = "";
  child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  const clients: Client<typeof EchoService>[] = [];
  try {
    const [line] = (await once(child.stdout, "data")) as [Buffer];
    const address = line.toString().trim();
    // Far more connections than the child has descriptors for.
    for (let i = 0; i < 150; i++) clients.push(createClient(EchoService, address, { connectTimeoutMs: 3000 }));
    const results = await Promise.allSettled(clients.map((c, i) => c.unary({ text: `c${i}` }, { timeoutMs: 5000 })));
    const served = results.filter((r) => r.status === "fulfilled").length;
    assert.ok(served > 0 && served < 150, `some connections were served, the rest refused (${served} of 150 served)`);
    const lines = stderr.split("\n").filter((l) => /out of file descriptors \(EMFILE\)/.test(l));
    assert.is(lines.length, 1, `one log line for all refusals:\n${stderr}`);
    assert.not.ok(child.exitCode !== null, "the server is still running");
    for (const c of clients) closeClient(c);
    clients.length = 0;
    await sleep(500);
    const fresh = createClient(EchoService, address);
    clients.push(fresh);
    assert.is((await fresh.unary({ text: "after" }, { timeoutMs: 5000, waitForReady: true })).text, "after");
  } finally {
    for (const c of clients) closeClient(c);
    child.stdin.end();
    child.kill();
  }
});

test.run();
