/**
 * The configuration file: every mistake is an error naming the file, the key path and the
 * value; environment variables win over the file; three backends start from one file with
 * their engines in force.
 */
import { test } from "uvu";
import * as assert from "uvu/assert";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code, ErrorCode, KoalaError, RpcError, closeClient, createClient, createServer, type Server } from "../../src/index.js";
import { applyPolicies, loadConfig, parseConfig, service, startBackend } from "../../src/policy/config.js";
import { policies, type MetricsEngine } from "../../src/policy/index.js";
import { EchoService } from "../fixtures/rpc/gen/echo.js";
import { GreeterService } from "../../examples/hello/gen/hello.js";
import { greeter } from "../../examples/hello/server.js";
import { KeyValueService } from "../../examples/kv/gen/kv.js";
import { keyValueStore } from "../../examples/kv/server.js";

const noEnv = {};

function configError(text: string, env: NodeJS.ProcessEnv = noEnv): string {
  try {
    parseConfig(text, "koala.toml", env);
  } catch (err) {
    assert.ok(err instanceof KoalaError, String(err));
    assert.is((err as KoalaError).code, ErrorCode.CONFIG);
    return (err as Error).message;
  }
  assert.unreachable(`no error for:\n${text}`);
  return "";
}

test.after.each(() => policies.clear());

test("a mistyped key or a bad value names the file, the key path and the value", () => {
  assert.match(configError(`lgo = "info"`), /^koala\.toml: lgo = "info": unknown key \(did you mean "log"\?\)/);
  assert.match(configError(`log = "loud"`), /^koala\.toml: log = "loud": must be one of "off", "error"/);
  assert.match(configError(`[backends.a]\nlisten = "localhost:0"\nlisen = 3`), /^koala\.toml: backends\.a\.lisen = 3: unknown key \(did you mean "listen"\?\)/);
  assert.match(configError(`[backends.a]\nlisten = "localhost:0"\nserver = { maxConcurrentStreams = -1 }`), /^koala\.toml: backends\.a\.server\.maxConcurrentStreams = -1: must be an integer from 1/);
  assert.match(configError(`[backends.a]\nlisten = "localhost:0"\nserver = { maxConcurentStreams = 5 }`), /backends\.a\.server\.maxConcurentStreams = 5: unknown key \(did you mean "maxConcurrentStreams"\?\)/);
  assert.match(
    configError(`[backends.a]\nlisten = "localhost:0"\n[[backends.a.engines]]\nkind = "ratelimit"\noptions = { ratePerSecnd = 5 }`),
    /^koala\.toml: backends\.a\.engines\[0\]\.options\.ratePerSecnd = 5: unknown key \(did you mean "ratePerSecond"\?\)/,
  );
  assert.match(configError(`[[engines]]\nkind = "ratelimit"\noptions = { burst = 0.5 }`), /^koala\.toml: engines\[0\]\.options\.burst = 0\.5: must be an integer/);
  assert.match(configError(`[backends.a]\nlisten = "localhost:0"\nserver = { transport = { nodelay = true } }`), /backends\.a\.server\.transport\.nodelay = true: unknown key \(did you mean "noDelay"\?\)/);
  assert.match(configError(`[[engines]]\nkind = "ratelimt"`), /^koala\.toml: engines\[0\]\.kind = "ratelimt": unknown engine "ratelimt"/);
  assert.match(configError(`[[engines]]\nkind = "null"\nscope = { servce = "x" }`), /^koala\.toml: engines\[0\]\.scope\.servce = "x": unknown key \(did you mean "service"\?\)/);
  assert.match(configError(`[[engines]]\nkind = "null"\n[[engines]]\nkind = "null"`), /^koala\.toml: engines\[1\]\.name = "null": an engine of that name is configured already/);
  assert.match(configError(`[backends.a]\nlisten = "tcp//x"`), /^koala\.toml: backends\.a\.listen = "tcp\/\/x": invalid address/);
  assert.match(configError(`[backends.a]\ntransport = "tcp"`), /^koala\.toml: backends\.a\.listen: missing/);
  assert.match(configError(`[backends.a\nlisten = 1`), /^koala\.toml:1:\d+: not valid TOML/);
});

test("environment variables win over the file, and a bad one names the variable", () => {
  const text = `log = "debug"\ntransport = "unix"\ncontrol = true\n[backends.a]\nlisten = "localhost:0"\ntransport = "rdma"`;
  const plain = parseConfig(text, "koala.toml", {});
  assert.equal([plain.log, plain.transport, plain.control, plain.backends.get("a")!.transport], ["debug", "unix", true, "rdma"]);
  const over = parseConfig(text, "koala.toml", { KOALA_LOG: "error", KOALA_TRANSPORT: "tcp", KOALA_CONTROL: "0" });
  assert.equal([over.log, over.transport, over.control, over.backends.get("a")!.transport], ["error", "tcp", false, undefined]);
  assert.match(configError(text, { KOALA_CONTROL: "yes" }), /^KOALA_CONTROL="yes": must be 1/);
  assert.match(configError(text, { KOALA_TRANSPORT: "pigeon" }), /^KOALA_TRANSPORT="pigeon": must be one of .*tls/);
  // tls (certificates from the server options or KOALA_TLS_*), in the file and from the variable.
  assert.is(parseConfig(text, "koala.toml", { KOALA_TRANSPORT: "TLS" }).transport, "tls");
  assert.is(parseConfig(`transport = "tls"`, "koala.toml", {}).transport, "tls");
});

test("loadConfig reads KOALA_CONFIG's file; a missing file is an error naming it", () => {
  const dir = mkdtempSync(join(tmpdir(), "koala-config-"));
  try {
    const file = join(dir, "koala.toml");
    writeFileSync(file, `[backends.echo]\nlisten = ["localhost:0", "unix:${join(dir, "e.sock")}"]\n`);
    const c = loadConfig(undefined, { KOALA_CONFIG: file });
    assert.equal(c.backends.get("echo")!.listen, ["localhost:0", `unix:${join(dir, "e.sock")}`]);
    assert.equal(c.file, file);
    assert.throws(() => loadConfig(join(dir, "nope.toml"), {}), (e: Error) => e instanceof KoalaError && e.message.startsWith(`${join(dir, "nope.toml")}: cannot read`));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("three backends from one file: each listens where the file says, with its own engines and the process-wide ones", async () => {
  const sock = join(tmpdir(), `koala-cfg-${process.pid}.sock`);
  const config = parseConfig(
    `
transport = "tcp"
[[engines]]
kind = "metrics"

[backends.greeter]
listen = "127.0.0.1:0"
[[backends.greeter.engines]]
kind = "ratelimit"
options = { ratePerSecond = 0.001, burst = 3, mode = "reject" }

[backends.echo]
listen = "unix:${sock}"
[[backends.echo.engines]]
kind = "acl"
options = { default = "deny", rules = [{ action = "allow", fields = { text = "friend" } }] }

[backends.kv]
listen = "localhost:0"
server = { maxConcurrentStreams = 7 }
`,
    "three.toml",
    {},
  );
  const servers: Server[] = [];
  const closers: (() => void)[] = [];
  try {
    servers.push(await startBackend(config, "greeter", { services: [service(GreeterService, greeter)] }));
    servers.push(await startBackend(config, "echo", { services: [service(EchoService, { unary: (req) => ({ text: req.text }) })] }));
    servers.push(await startBackend(config, "kv", { services: [service(KeyValueService, keyValueStore())] }));
    assert.match(servers[0]!.addresses[0]!, /^tcp:\/\/127\.0\.0\.1:\d+$/);
    assert.is(servers[1]!.addresses[0]!, `unix:${sock}`);
    assert.match(servers[2]!.addresses[0]!, /^tcp:\/\/localhost:\d+$/, "the file's transport for host:port");
    assert.is(servers[2]!.options.maxConcurrentStreams, 7);

    const greeterClient = createClient(GreeterService, servers[0]!.addresses[0]!);
    const echoClient = createClient(EchoService, servers[1]!.addresses[0]!);
    const kvClient = createClient(KeyValueService, servers[2]!.addresses[0]!);
    closers.push(() => closeClient(greeterClient), () => closeClient(echoClient), () => closeClient(kvClient));
    const outcome = (p: Promise<unknown>) => p.then(() => "OK", (e: RpcError) => Code[e.code]!);

    const greetings = await Promise.all(Array.from({ length: 5 }, () => outcome(greeterClient.sayHello({ name: "x" }))));
    assert.equal(greetings.sort(), ["OK", "OK", "OK", "RESOURCE_EXHAUSTED", "RESOURCE_EXHAUSTED"], "greeter: burst of 3");
    assert.equal([await outcome(echoClient.unary({ text: "friend" })), await outcome(echoClient.unary({ text: "stranger" }))], ["OK", "PERMISSION_DENIED"]);
    const puts = await Promise.all(Array.from({ length: 5 }, (_, i) => outcome(kvClient.put({ key: `k${i}` }))));
    assert.equal(puts, ["OK", "OK", "OK", "OK", "OK"], "kv: no engine of its own");

    assert.equal(
      policies.list().map((e) => [e.name, e.kind, JSON.stringify(e.scope)]),
      [
        ["metrics", "metrics", `{"global":true}`],
        ["greeter.ratelimit", "ratelimit", `{"service":"hello.Greeter","side":"server","backend":"greeter"}`],
        ["echo.acl", "acl", `{"service":"koala.test.Echo","side":"server","backend":"echo"}`],
      ],
    );
    const m = policies.get("metrics") as MetricsEngine;
    assert.is(m.count("server", "/hello.Greeter/SayHello", Code.RESOURCE_EXHAUSTED), 2);
    assert.is(m.count("server", "/kv.KeyValue/Put", Code.OK), 5);
  } finally {
    for (const c of closers) c();
    for (const s of servers) s.forceShutdown();
  }
});

test("metricsPort: GET /metrics serves the Prometheus text of the metrics engines; KOALA_METRICS_PORT wins over the file", async () => {
  assert.is(parseConfig(`metricsPort = 9464`, "m.toml", { KOALA_METRICS_PORT: "9500" }).metricsPort, 9500);
  assert.match(configError(`metricsPort = 70000`), /^koala\.toml: metricsPort = 70000: must be an integer from 0 to 65535/);
  const config = parseConfig(`metricsPort = 0\n[[engines]]\nkind = "metrics"\n[backends.echo]\nlisten = "127.0.0.1:0"`, "m.toml", {});
  const server = await startBackend(config, "echo", { services: [service(EchoService, { unary: (req) => ({ text: req.text }) })] });
  const { metrics } = await applyPolicies(config);
  const client = createClient(EchoService, server.addresses[0]!);
  try {
    for (let i = 0; i < 3; i++) await client.unary({ text: "m" });
    const res = await fetch(metrics!.url);
    assert.is(res.status, 200);
    assert.match(res.headers.get("content-type") ?? "", /^text\/plain; version=0\.0\.4/);
    assert.match(await res.text(), /koala_calls_total\{side="server",method="\/koala\.test\.Echo\/Unary",code="OK"\} 3\n/);
    assert.is((await fetch(metrics!.url.replace("/metrics", "/other"))).status, 404);
  } finally {
    closeClient(client);
    server.forceShutdown();
    await metrics?.close();
  }
});

test("startBackend: an unknown backend, and an engine without scope on a backend of two services", async () => {
  const config = parseConfig(`[backends.two]\nlisten = "127.0.0.1:0"\n[[backends.two.engines]]\nkind = "null"`, "two.toml", {});
  const err = await startBackend(config, "three", { services: [service(GreeterService, greeter)] }).catch((e: unknown) => e);
  assert.match(String(err), /two\.toml: no backend "three" \(backends: two\)/);
  const err2 = await startBackend(config, "two", { services: [service(GreeterService, greeter), service(KeyValueService, keyValueStore())] }).catch((e: unknown) => e);
  assert.ok(err2 instanceof KoalaError && err2.code === ErrorCode.CONFIG, String(err2));
  assert.match(String(err2), /two\.toml: backends\.two\.engines\[0\]\.scope: missing: the backend serves hello\.Greeter, kv\.KeyValue/);
  assert.equal(policies.list(), [], "nothing attached");
});

test("two backends serving the same service in one process keep their engines apart; a process engine can name one backend", async () => {
  const text = [
    `[[engines]]`,
    `kind = "acl"`,
    `name = "no-b"`,
    `scope = { global = true, backend = "b" }`,
    `options = { default = "deny" }`,
    `[backends.a]`,
    `listen = "127.0.0.1:0"`,
    `[[backends.a.engines]]`,
    `kind = "fault"`,
    `options = { abortFraction = 1.0, abortCode = 8 }`,
    `[backends.b]`,
    `listen = "127.0.0.1:0"`,
    `[backends.c]`,
    `listen = "127.0.0.1:0"`,
  ].join("\n");
  const config = parseConfig(text, "same.toml", {});
  const echo = service(EchoService, { unary: (req) => ({ text: req.text }) });
  const servers = [await startBackend(config, "a", { services: [echo] }), await startBackend(config, "b", { services: [echo] }), await startBackend(config, "c", { services: [echo] })];
  const clients = servers.map((s) => createClient(EchoService, s.addresses[0]!));
  try {
    const outcome = async (i: number) => {
      try {
        return (await clients[i]!.unary({ text: "x" })).text;
      } catch (err) {
        return Code[(err as RpcError).code];
      }
    };
    assert.is(await outcome(0), "RESOURCE_EXHAUSTED", "a: its fault engine aborts every call");
    assert.is(await outcome(1), "PERMISSION_DENIED", "b: only the process engine scoped to it");
    assert.is(await outcome(2), "x", "c: neither a's engine nor the one scoped to b");
    assert.equal(
      policies.list().map((e) => [e.name, e.scope]),
      [
        ["no-b", { global: true, backend: "b" }],
        ["a.fault", { service: "koala.test.Echo", side: "server", backend: "a" }],
      ],
    );
  } finally {
    for (const c of clients) closeClient(c);
    for (const s of servers) s.forceShutdown();
  }
  assert.match(configError(`[[engines]]\nkind = "null"\nscope = { backend = "zz" }\n[backends.a]\nlisten = "127.0.0.1:0"`), /^koala\.toml: engines\[0\]\.scope\.backend = "zz": no such backend \(backends: a\)/);
  assert.match(configError(`[backends.a]\nlisten = "127.0.0.1:0"\nserver = { name = "x" }`), /^koala\.toml: backends\.a\.server\.name = "x": is the backend's name/);
});

test("[serviceConfig]: checked like the channel option, errors naming the key path; a channel given it retries, and the metrics engine counts the attempts", async () => {
  assert.match(
    configError(`[[serviceConfig.methodConfig]]\nname = [{ service = "koala.test.Echo" }]\nretryPolicy = { maxAttempts = 1, initialBackoff = "0.1s", maxBackoff = "1s", backoffMultiplier = 2, retryableStatusCodes = ["UNAVAILABLE"] }`),
    /^koala\.toml: serviceConfig\.methodConfig\[0\]\.retryPolicy\.maxAttempts = 1: must be an integer of 2 or more/,
  );
  assert.match(
    configError(`[[serviceConfig.methodConfig]]\nname = [{ service = "koala.test.Echo" }]\nretryPolicy = { maxAttempts = 2, initialBackoff = 0.1, maxBackoff = "1s", backoffMultiplier = 2, retryableStatusCodes = ["UNAVAILABLE"] }`),
    /^koala\.toml: serviceConfig\.methodConfig\[0\]\.retryPolicy\.initialBackoff = 0\.1: must be a duration in seconds/,
  );
  assert.match(configError(`[serviceConfig]\nretryThrotling = { maxTokens = 10, tokenRatio = 0.1 }`), /^koala\.toml: serviceConfig\.retryThrotling = .*: unknown key/);
  assert.match(configError(`serviceConfig = 3`), /^koala\.toml: serviceConfig = 3: must be a table/);
  const config = parseConfig(
    [
      `[[engines]]`,
      `kind = "metrics"`,
      `[serviceConfig]`,
      `retryThrottling = { maxTokens = 10, tokenRatio = 0.1 }`,
      `[[serviceConfig.methodConfig]]`,
      `name = [{ service = "koala.test.Echo", method = "Unary" }]`,
      `retryPolicy = { maxAttempts = 3, initialBackoff = "0.001s", maxBackoff = "0.01s", backoffMultiplier = 2, retryableStatusCodes = ["UNAVAILABLE"] }`,
    ].join("\n"),
    "koala.toml",
    noEnv,
  );
  await applyPolicies(config);
  const server = createServer({ logHandlerErrors: false });
  let calls = 0;
  server.add(EchoService, {
    async unary(req) {
      if (++calls === 1) throw new RpcError(Code.UNAVAILABLE, "first attempt fails");
      return { text: req.text } as never;
    },
  });
  const address = await server.listen("tcp://127.0.0.1:0");
  const client = createClient(EchoService, address, { serviceConfig: config.serviceConfig! });
  try {
    assert.is((await client.unary({ text: "again" })).text, "again");
    assert.is(calls, 2);
    const m = policies.get("metrics") as MetricsEngine;
    assert.is(m.attempts("/koala.test.Echo/Unary", "retried"), 1);
    assert.is(m.attempts("/koala.test.Echo/Unary", "ok"), 1);
    assert.match(m.render(), 'koala_client_attempts_total{method="/koala.test.Echo/Unary",outcome="retried"} 1');
  } finally {
    closeClient(client);
    server.forceShutdown();
  }
});

test.run();
