/** Connectivity states and reconnect backoff of one endpoint, with a dialer the test controls (no sockets). */
import { test } from "uvu";
import * as assert from "uvu/assert";
import { Backoff } from "../../src/cluster/backoff.js";
import { EndpointSubchannel } from "../../src/cluster/subchannel.js";
import type { ConnectivityState, PooledConnection } from "../../src/cluster/types.js";
import { until } from "../helpers.js";

class FakeConnection implements PooledConnection {
  usable = true;
  isClosed = false;
  outstanding = 0;
  drained = false;
  private resolveClosed!: () => void;
  readonly closed = new Promise<void>((r) => (this.resolveClosed = r));
  close(): void {
    this.isClosed = true;
    this.usable = false;
    this.resolveClosed();
  }
  drain(): void {
    this.drained = true;
    this.usable = false;
    if (this.outstanding === 0) this.close();
  }
}

test("backoff follows gRPC: 1 s, ×1.6 per failure within ±20%, capped at 120 s, reset by a success", () => {
  const b = new Backoff({ initialMs: 1000, maxMs: 120_000, multiplier: 1.6, jitter: 0.2 });
  let base = 1000;
  for (let i = 0; i < 20; i++) {
    const d = b.fail();
    assert.ok(d >= Math.floor(base * 0.8) && d <= Math.ceil(base * 1.2), `attempt ${i}: ${d} ms for a base of ${base}`);
    base = Math.min(120_000, base * 1.6);
  }
  assert.ok(base === 120_000, "the cap is reached within 20 failures");
  b.reset();
  const d = b.fail();
  assert.ok(d >= 800 && d <= 1200, `after a success it starts over: ${d}`);
});

test("states: idle → connecting → transient_failure → idle after the backoff → connecting → ready → idle when the connection is lost → shutdown", async () => {
  const states: ConnectivityState[] = [];
  let fail = true;
  let conn: FakeConnection | undefined;
  const s = new EndpointSubchannel<FakeConnection>(
    { address: "tcp://127.0.0.2:1" },
    async () => {
      if (fail) throw new Error("ECONNREFUSED");
      return (conn = new FakeConnection());
    },
    { initialMs: 30, maxMs: 1000, multiplier: 1.6, jitter: 0.2 },
    (sub) => states.push(sub.state),
  );
  assert.is(s.state, "idle");
  s.requestConnection();
  await until(() => s.state === "idle" && states.length >= 3, "the backoff to end");
  assert.equal(states, ["connecting", "transient_failure", "idle"]);
  assert.match(String(s.lastError), /ECONNREFUSED/);
  fail = false;
  s.requestConnection();
  await until(() => s.state === "ready", "ready");
  assert.is(s.connection, conn);
  conn!.close();
  await until(() => s.state === "idle", "idle after the loss");
  assert.is(s.connection, undefined);
  s.requestConnection();
  await until(() => s.state === "ready", "ready again");
  conn!.outstanding = 2;
  s.shutdown(false);
  assert.equal(states.slice(3), ["connecting", "ready", "idle", "connecting", "ready", "shutdown"]);
  assert.ok(conn!.drained && !conn!.isClosed, "removed: no new calls, the two open ones go on");
  s.requestConnection();
  assert.is(s.state, "shutdown", "shutdown is final");
});

test.run();
