/** Address parsing and the choice of transport (KOALA_TRANSPORT). */
import { test } from "uvu";
import * as assert from "uvu/assert";
import { tmpdir } from "node:os";
import { parseAddress } from "../../src/transport/address.js";
import { setupTransports } from "../../src/transport/index.js";
import { chooseTransport, resolveAddress } from "../../src/transport/registry.js";
import { thrownCode } from "../helpers.js";

setupTransports();


test("addresses of every form", () => {
  assert.equal(parseAddress("tcp://127.0.0.1:5000"), { scheme: "tcp", host: "127.0.0.1", port: 5000, path: "" });
  assert.equal(parseAddress("tcp://[::1]:80"), { scheme: "tcp", host: "::1", port: 80, path: "" });
  assert.equal(parseAddress("rdma://node7:4791"), { scheme: "rdma", host: "node7", port: 4791, path: "" });
  assert.is(parseAddress("unix:/run/k.sock").path, "/run/k.sock");
  assert.is(parseAddress("unix:///run/k.sock").path, "/run/k.sock");
  assert.is(parseAddress("unix:rel.sock").path, "rel.sock");
  assert.is(parseAddress("/abs/path.sock").scheme, "unix");
  assert.equal(parseAddress("memory:bus"), { scheme: "memory", host: "", port: 0, path: "bus" });
  assert.equal(parseAddress("localhost:50051"), { scheme: undefined, host: "localhost", port: 50051, path: "" });
  assert.equal(parseAddress("koala://db1:9000"), { scheme: undefined, host: "db1", port: 9000, path: "" });
});

test("malformed addresses name the problem", () => {
  for (const bad of ["", "tcp://host", "tcp://host:99999", "tcp://:80", "ftp://x:1", "unix:", "justahost", "tcp://[::1]80"]) {
    assert.is(thrownCode(() => parseAddress(bad)), "KOALA_ERR_INVALID_ADDRESS", bad);
  }
  assert.throws(() => parseAddress("ftp://x:1"), /unknown scheme "ftp:"/);
  assert.throws(() => parseAddress("tcp://host:99999"), /port must be 0\.\.65535/);
});

test("KOALA_TRANSPORT=auto picks TCP and says why RDMA is not used", () => {
  const c = chooseTransport({});
  assert.is(c.transport, "tcp");
  assert.is(c.mode, "auto");
  assert.match(c.reason, /RDMA is not used: /);
  assert.is(resolveAddress("localhost:1", { KOALA_TRANSPORT: "auto" }).address.uri, "tcp://localhost:1");
});

test("KOALA_TRANSPORT=unix maps host:port to a socket file; tcp is strict; an explicit scheme wins", () => {
  const u = resolveAddress("localhost:50051", { KOALA_TRANSPORT: "unix" });
  assert.is(u.transport.name, "unix");
  assert.is(u.address.path, `${tmpdir()}/koala-localhost-50051.sock`);
  const a = resolveAddress("localhost:0", { KOALA_TRANSPORT: "unix" }).address.path;
  const b = resolveAddress("localhost:0", { KOALA_TRANSPORT: "unix" }).address.path;
  assert.is.not(a, b, "port 0 picks a fresh socket file each time");
  assert.is(resolveAddress("koala://h:1", { KOALA_TRANSPORT: "tcp" }).transport.name, "tcp");
  assert.is(resolveAddress("tcp://h:1", { KOALA_TRANSPORT: "unix" }).transport.name, "tcp");
  assert.is(resolveAddress("unix:/x.sock", { KOALA_TRANSPORT: "tcp" }).transport.name, "unix");
});

test("an explicit rdma choice fails loudly with the reason; a bad value names the variable", () => {
  assert.is(thrownCode(() => chooseTransport({ KOALA_TRANSPORT: "rdma" })), "KOALA_ERR_TRANSPORT_UNAVAILABLE");
  assert.throws(() => chooseTransport({ KOALA_TRANSPORT: "rdma" }), /rdma transport unavailable: /);
  assert.throws(() => resolveAddress("rdma://h:1", {}), /rdma transport unavailable/);
  assert.throws(() => chooseTransport({ KOALA_TRANSPORT: "infiniband" }), /KOALA_TRANSPORT="infiniband" is not one of auto, tcp, unix, rdma/);
});

test.run();
