/** The standard health service on a real server: Check, Watch, and NOT_SERVING when the server shuts down. */
import { test } from "uvu";
import * as assert from "uvu/assert";
import { Code, HealthCheckResponse_ServingStatus as S, HealthService, addHealthService, closeClient, createClient, createServer } from "../../src/index.js";
import { rejection, thrownCode } from "../helpers.js";
import { EchoService } from "../fixtures/rpc/gen/echo.js";

test("Check: the server SERVING, a service as set, NOT_FOUND for one never set; bad statuses are refused", async () => {
  const server = createServer();
  server.add(EchoService, { unary: () => ({}) });
  const health = addHealthService(server);
  const address = await server.listen("tcp://127.0.0.1:0");
  const client = createClient(HealthService, address);
  try {
    assert.is((await client.check({})).status, S.SERVING);
    health.set("koala.test.Echo", "NOT_SERVING");
    assert.is((await client.check({ service: "koala.test.Echo" })).status, S.NOT_SERVING);
    assert.is((await rejection(client.check({ service: "nope.Nope" }))).code, Code.NOT_FOUND);
    assert.is(thrownCode(() => health.set("x", "serving" as "SERVING")), "KOALA_ERR_INVALID_ARGUMENT");
  } finally {
    closeClient(client);
    server.forceShutdown();
  }
});

test("Watch: the status now, then each change, SERVICE_UNKNOWN until set; NOT_SERVING once the server shuts down", async () => {
  const server = createServer();
  const health = addHealthService(server);
  const address = await server.listen("tcp://127.0.0.1:0");
  const client = createClient(HealthService, address);
  const seen: S[] = [];
  const later: S[] = [];
  try {
    const whole = (async () => {
      for await (const r of client.watch({})) seen.push(r.status);
    })().catch(() => undefined);
    const one = (async () => {
      for await (const r of client.watch({ service: "svc.A" })) later.push(r.status);
    })().catch(() => undefined);
    const until = async (cond: () => boolean) => {
      for (let i = 0; i < 400 && !cond(); i++) await new Promise((r) => setTimeout(r, 5));
    };
    await until(() => seen.length === 1 && later.length === 1);
    health.set("svc.A", "SERVING");
    health.set("svc.A", "SERVING"); // no change, no message
    health.set("svc.A", "NOT_SERVING");
    await until(() => later.length === 3);
    assert.equal(later, [S.SERVICE_UNKNOWN, S.SERVING, S.NOT_SERVING]);
    void server.shutdown({ timeoutMs: 200 });
    await until(() => seen.length === 2);
    assert.equal(seen, [S.SERVING, S.NOT_SERVING], "watchers hear NOT_SERVING when shutdown begins");
    await Promise.all([whole, one]);
  } finally {
    closeClient(client);
    server.forceShutdown();
  }
});

test.run();
