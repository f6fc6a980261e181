import { test } from "uvu";
import * as assert from "uvu/assert";
import { execFileSync, spawnSync } from "node:child_process";

const bin = new URL("../bin/koala.js", import.meta.url).pathname;

function koala(args: string[], env: Record<string, string> = {}) {
  return spawnSync(process.execPath, [bin, ...args], { env: { ...process.env, ...env }, encoding: "utf8" });
}

test("koala info lists the transports and says what auto picks and why", () => {
  const r = koala(["info"], { KOALA_TRANSPORT: "auto" });
  assert.is(r.status, 0, r.stderr);
  assert.match(r.stdout, /tcp\s+available/);
  assert.match(r.stdout, /unix\s+available/);
  assert.match(r.stdout, /rdma\s+unavailable: /);
  assert.match(r.stdout, /host:port addresses use tcp: RDMA is not used: /);
});

test("koala info --json, and an explicit rdma choice failing with the reason", () => {
  const json = JSON.parse(execFileSync(process.execPath, [bin, "info", "--json"], { encoding: "utf8" }));
  assert.is(json.choice.transport, "tcp");
  const r = koala(["info"], { KOALA_TRANSPORT: "rdma" });
  assert.is(r.status, 1);
  assert.match(r.stdout, /rdma transport unavailable: /);
  const bad = koala(["info"], { KOALA_TRANSPORT: "carrier-pigeon" });
  assert.match(bad.stdout, /KOALA_TRANSPORT="carrier-pigeon" is not one of auto, tcp, unix, rdma/);
});

test("unknown commands get the usage and exit code 2", () => {
  const r = koala(["frobnicate"]);
  assert.is(r.status, 2);
  assert.match(r.stderr, /unknown command "frobnicate"/);
  assert.match(r.stderr, /usage: koala/);
});

test.run();
