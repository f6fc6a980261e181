/**
 * The native verbs addon (addons/rdma) and its loader (src/transport/rdma/native.ts), as a user
 * meets them: what `koala info`, `KOALA_TRANSPORT=rdma` and `auto` say on a host without the
 * addon, without rdma-core, without a device, or with KOALA_NO_NATIVE=1; that nothing loads
 * before first use; that libibverbs is opened with dlopen, never linked; worker threads.
 *
 * Tests that need the built addon are skipped, with a printed reason, only when it is not
 * built (a developer laptop). CI builds it and sets KOALA_REQUIRE_NATIVE=1, which turns a
 * missing build into a failure instead.
 */
import { test } from "uvu";
import * as assert from "uvu/assert";
import { spawnSync } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Worker } from "node:worker_threads";
import { connect, listen, setupTransports } from "../../src/transport/index.js";
import { chooseTransport } from "../../src/transport/registry.js";
import { deviceInfo, devicesReason, nativeProvider } from "../../src/transport/rdma/native-provider.js";
import { NOT_BUILT, loadNative, locateAddon } from "../../src/transport/rdma/native.js";
import type { RawDevice } from "../../src/transport/rdma/native.js";
import type { RdmaInfo } from "../../src/transport/rdma/providers.js";

setupTransports();

const root = new URL("../../", import.meta.url).pathname;
const addon = locateAddon(root);
const built = addon !== undefined;
if (!built) {
  if (process.env.KOALA_REQUIRE_NATIVE === "1") throw new Error(`KOALA_REQUIRE_NATIVE=1 but ${NOT_BUILT}`);
  process.stdout.write(`\n  rdma-addon: SKIPPING the tests that need the addon: ${NOT_BUILT}\n`);
}
/** A test that needs the built addon. */
const withAddon = built ? test : test.skip;

const hostHasDevices = existsSync("/sys/class/infiniband") && readdirSync("/sys/class/infiniband").length > 0;
const libsOverridden = Boolean(process.env.KOALA_VERBS_LIB || process.env.KOALA_RDMACM_LIB);
if (built && (hostHasDevices || libsOverridden)) {
  process.stdout.write(`\n  rdma-addon: SKIPPING the no-device test: ${hostHasDevices ? "this host has RDMA devices" : "KOALA_VERBS_LIB / KOALA_RDMACM_LIB are set"}\n`);
}
const withAddonNoDevice = built && !hostHasDevices && !libsOverridden ? test : test.skip;

const temps: string[] = [];
const temp = (): string => {
  const dir = mkdtempSync(join(tmpdir(), "koala-addon-"));
  temps.push(dir);
  return dir;
};
test.after(() => {
  for (const dir of temps) rmSync(dir, { recursive: true, force: true });
});

interface Probe {
  afterImport: { addon: boolean; libibverbs: boolean; librdmacm: boolean };
  afterUse: { addon: boolean; libibverbs: boolean; librdmacm: boolean };
  info: { transports: { name: string; available: boolean; reason?: string }[]; rdma: RdmaInfo; choice: { transport?: string; reason: string } };
}

/** Runs the probe fixture in a fresh process with `env` added (and the KOALA_* variables of this process removed). */
function probe(env: Record<string, string>): Probe {
  const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("KOALA_")));
  const fixture = new URL("../fixtures/transport/native-probe.ts", import.meta.url).pathname;
  const r = spawnSync(process.execPath, ["--import", "tsx", fixture], { env: { ...clean, ...env }, encoding: "utf8", timeout: 30_000 });
  assert.is(r.status, 0, `probe exited ${r.status}: ${r.stderr}`);
  return JSON.parse(r.stdout) as Probe;
}

/** `koala info` (text) in a fresh process. */
function koalaInfo(env: Record<string, string>): { status: number | null; stdout: string } {
  const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("KOALA_")));
  const r = spawnSync(process.execPath, [join(root, "bin/koala.js"), "info"], { env: { ...clean, ...env }, encoding: "utf8", timeout: 30_000 });
  return { status: r.status, stdout: r.stdout };
}

const verbsOf = (p: Probe) => p.info.rdma.providers.find((x) => x.name === "verbs")!;

test("no addon binary: the reason says how to build it; a KOALA_NATIVE_ADDON that does not exist is named", () => {
  const empty = temp();
  assert.is(locateAddon(empty), undefined);
  assert.equal(loadNative({ root: empty, env: {} }), { reason: "native verbs addon not built (npm run build:rdma)" });
  const missing = join(empty, "nope.node");
  assert.equal(loadNative({ root: empty, env: { KOALA_NATIVE_ADDON: missing } }), { reason: `native verbs addon not found at ${missing} (KOALA_NATIVE_ADDON)` });
});

test("the addon is found in the local build first, then in prebuilds/<platform>-<arch> (napi-tagged)", () => {
  const dir = temp();
  const pre = join(dir, "prebuilds", `${process.platform}-${process.arch}`);
  mkdirSync(pre, { recursive: true });
  writeFileSync(join(pre, "koala-rpc.abi115.node"), "");
  assert.is(locateAddon(dir), undefined, "a binary for one Node ABI only is not taken");
  const glibc = (process.report.getReport() as { header?: { glibcVersionRuntime?: string } }).header?.glibcVersionRuntime !== undefined;
  writeFileSync(join(pre, `koala-rpc.napi.${glibc ? "musl" : "glibc"}.node`), "");
  assert.is(locateAddon(dir), undefined, "a binary for the other C library is not taken");
  const mine = `koala-rpc.napi.${glibc ? "glibc" : "musl"}.node`;
  writeFileSync(join(pre, mine), "");
  assert.is(locateAddon(dir), join(pre, mine));
  const local = join(dir, "addons", "rdma", "build", "Release");
  mkdirSync(local, { recursive: true });
  writeFileSync(join(local, "koala_rdma.node"), "");
  assert.is(locateAddon(dir), join(local, "koala_rdma.node"), "a local build wins");
});

test("KOALA_NO_NATIVE=1: nothing native is ever loaded, the reason says why, auto uses TCP", () => {
  const p = probe({ KOALA_NO_NATIVE: "1" });
  assert.equal(p.afterUse, { addon: false, libibverbs: false, librdmacm: false });
  assert.is(verbsOf(p).reason, "KOALA_NO_NATIVE=1 forbids loading the native verbs addon");
  assert.is(p.info.choice.transport, "tcp");
  assert.match(p.info.choice.reason, /provider verbs: KOALA_NO_NATIVE=1 forbids loading/);
});

test("device descriptions map onto DeviceInfo; a port that is not active is the reason, by name", () => {
  const port = { port: 1, state: 1, linkLayer: 2, activeMtu: 3, gid: "fe80::1", gidTableLen: 16, lid: 0 };
  const dev: RawDevice = { name: "mlx5_0", maxSge: 30, maxQpWr: 32768, maxCqe: 4194303, maxMrSize: 2 ** 48, maxInlineData: 828, ports: [port] };
  assert.equal(deviceInfo(dev), {
    name: "mlx5_0",
    provider: "verbs",
    software: false,
    ports: [{ port: 1, state: "down", linkLayer: "Ethernet", mtu: 1024, gid: "fe80::1" }],
    maxSge: 30,
    maxQpWr: 32768,
    maxInlineData: 828,
    maxCqe: 4194303,
    maxMrBytes: 2 ** 48,
  });
  assert.is(devicesReason([dev]), "port 1 of mlx5_0 is DOWN");
  assert.is(devicesReason([]), "no RDMA device");
  const two: RawDevice = { ...dev, name: "mlx5_1", ports: [{ ...port, state: 2 }, { port: 2, error: "ibv_query_port: Invalid argument" }] };
  assert.is(devicesReason([dev, two, { name: "hfi1_0", error: "ibv_open_device: Permission denied" }]), "port 1 of mlx5_0 is DOWN; port 1 of mlx5_1 is INIT; port 2 of mlx5_1: ibv_query_port: Invalid argument; hfi1_0: ibv_open_device: Permission denied");
  assert.is(devicesReason([dev, { ...two, ports: [{ ...port, state: 4 }] }]), undefined, "one active port is enough");
  assert.is(deviceInfo({ name: "x", error: "e" }), undefined);
  assert.is(deviceInfo({ ...dev, name: "rxe0" })!.software, true, "Soft-RoCE is a software device");
  assert.is(deviceInfo({ ...dev, ports: [{ ...port, state: 5, linkLayer: 0, activeMtu: 5 }] })!.ports[0]!.state, "active", "ACTIVE_DEFER counts as active");
  assert.is(deviceInfo({ ...dev, ports: [{ ...port, linkLayer: 0, activeMtu: 5 }] })!.ports[0]!.linkLayer, "InfiniBand");
  assert.is(deviceInfo({ ...dev, ports: [{ ...port, activeMtu: 5 }] })!.ports[0]!.mtu, 4096);
});

withAddon("lazy: importing the package loads nothing; first use loads the addon, which dlopens libibverbs (never linked)", () => {
  const real = probe({});
  assert.equal(real.afterImport, { addon: false, libibverbs: false, librdmacm: false }, "nothing native at import");
  assert.equal(real.afterUse, { addon: true, libibverbs: true, librdmacm: true }, "first use: the addon and both libraries");
  const missing = probe({ KOALA_VERBS_LIB: "/nonexistent/libibverbs.so.1" });
  assert.equal(missing.afterUse, { addon: true, libibverbs: false, librdmacm: false }, "the addon loads without libibverbs: it is not linked");
  assert.is(verbsOf(missing).reason, "libibverbs not found (/nonexistent/libibverbs.so.1: cannot open shared object file: No such file or directory)");
  assert.equal(verbsOf(missing).devices, []);
  assert.is(missing.info.choice.transport, "tcp", "auto falls back to TCP");
  assert.match(missing.info.choice.reason, /RDMA is not used: provider verbs: libibverbs not found/);
});

withAddon("a missing librdmacm, or a library that is not libibverbs, is a reason that names it", () => {
  const cm = probe({ KOALA_RDMACM_LIB: "/nonexistent/librdmacm.so.1" });
  assert.is(verbsOf(cm).reason, "librdmacm not found (/nonexistent/librdmacm.so.1: cannot open shared object file: No such file or directory)");
  const wrong = probe({ KOALA_VERBS_LIB: "libc.so.6" });
  assert.is(verbsOf(wrong).reason, "libibverbs unusable: libc.so.6 lacks ibv_get_device_list (not libibverbs / librdmacm, or too old)");
  const strict = koalaInfo({ KOALA_TRANSPORT: "rdma", KOALA_VERBS_LIB: "/nonexistent/libibverbs.so.1" });
  assert.is(strict.status, 1, "koala info fails when the strict choice cannot be met");
  assert.match(strict.stdout, /no transport: rdma transport unavailable: provider verbs: libibverbs not found \(\/nonexistent\/libibverbs\.so\.1: /);
});

withAddon("devices through the addon (the software RNIC as libibverbs): ports, limits and the reason each state gives", () => {
  const srnic = join(root, "addons", "rdma", "build", "Release", "koala_srnic.so");
  assert.ok(existsSync(srnic), "npm run build:rdma builds the software RNIC beside the addon");
  const libs = { KOALA_VERBS_LIB: srnic, KOALA_RDMACM_LIB: srnic };
  const active = probe(libs);
  assert.equal(verbsOf(active).devices, [
    { name: "srnic0", provider: "verbs", software: false, ports: [{ port: 1, state: "active", linkLayer: "Ethernet", mtu: 1024, gid: "fe80::1" }], maxSge: 8, maxQpWr: 4096, maxInlineData: 256, maxCqe: 4194303, maxMrBytes: 2 ** 40 },
  ]);
  assert.is(verbsOf(active).reason, undefined, "an active port: the provider is usable");
  assert.is(verbsOf(active).available, true);
  assert.is(active.info.choice.transport, "rdma", "auto uses RDMA on it");
  assert.match(active.info.choice.reason, /srnic0:1 through provider verbs/);
  const text = koalaInfo(libs);
  assert.is(text.status, 0);
  assert.match(text.stdout, /verbs\s+available \[selected\]\s+\(libibverbs \+ librdmacm through the native addon\)/);
  assert.match(text.stdout, /\n {4}srnic0:1 active, Ethernet, MTU 1024, GID fe80::1; max_sge 8, max_qp_wr 4096, max_inline_data 256, max_cqe 4194303\n/);
  assert.match(text.stdout, /rdma uses srnic0:1 \(provider verbs\)/);
  assert.match(text.stdout, /host:port addresses use rdma/);

  // Both ways of querying a port: the context's extended op (rdma-core today) and the exported compat function.
  for (const compat of ["0", "1"]) {
    const mixed = probe({ ...libs, SRNIC_COMPAT: compat, SRNIC_DEVICES: "srnic0:down,srnic1:noopen,srnic2:init" });
    assert.is(verbsOf(mixed).reason, "port 1 of srnic0 is DOWN; srnic1: ibv_open_device: Permission denied; port 1 of srnic2 is INIT", `SRNIC_COMPAT=${compat}`);
    assert.equal(verbsOf(mixed).devices.map((d) => `${d.name}:${d.ports.map((p) => `${p.port} ${p.state} ${p.gid}`).join()}`), ["srnic0:1 down fe80::1", "srnic2:1 init fe80::3"]);
  }
  const strict = koalaInfo({ ...libs, SRNIC_DEVICES: "mlx5_0:down", KOALA_TRANSPORT: "rdma" });
  assert.is(strict.status, 1);
  assert.match(strict.stdout, /no transport: rdma transport unavailable: provider verbs: port 1 of mlx5_0 is DOWN\n/);
  const none = probe({ ...libs, SRNIC_DEVICES: "," });
  assert.is(verbsOf(none).reason, "no RDMA device", "an empty device list");
});

withAddon("a prebuilt binary under prebuilds/<platform>-<arch> loads when there is no local build", () => {
  const dir = temp();
  const pre = join(dir, "prebuilds", `${process.platform}-${process.arch}`);
  mkdirSync(pre, { recursive: true });
  copyFileSync(addon!, join(pre, "koala-rpc.napi.node"));
  const state = loadNative({ root: dir, env: {} });
  assert.ok("binding" in state, "reason" in state ? state.reason : "");
  assert.is(state.path, join(pre, "koala-rpc.napi.node"));
});

withAddonNoDevice("real libibverbs, no device: 'no RDMA device'; KOALA_TRANSPORT=rdma fails with it; auto serves and connects over TCP", async () => {
  const reason = nativeProvider.unavailableReason();
  assert.ok(reason !== undefined && reason.startsWith("no RDMA device"), String(reason));
  assert.equal(nativeProvider.devices(), []);
  let strict: unknown;
  try {
    chooseTransport({ KOALA_TRANSPORT: "rdma" });
  } catch (err) {
    strict = err;
  }
  assert.is((strict as { code?: string }).code, "KOALA_ERR_TRANSPORT_UNAVAILABLE");
  assert.match((strict as Error).message, /rdma transport unavailable: provider verbs: no RDMA device/);
  const auto = chooseTransport({ KOALA_TRANSPORT: "auto" });
  assert.is(auto.transport, "tcp");
  assert.match(auto.reason, /RDMA is not used: provider verbs: no RDMA device/);

  const saved = { transport: process.env.KOALA_TRANSPORT, provider: process.env.KOALA_RDMA_PROVIDER };
  process.env.KOALA_TRANSPORT = "auto";
  delete process.env.KOALA_RDMA_PROVIDER;
  const listener = await listen("127.0.0.1:0");
  try {
    assert.is(listener.transport, "tcp");
    const port = Number(/:(\d+)$/.exec(listener.address)![1]);
    const [client, server] = await Promise.all([connect(`127.0.0.1:${port}`), listener.accept()]);
    assert.is(client.transport, "tcp");
    client.send([new TextEncoder().encode("over tcp")]);
    const got = await server[Symbol.asyncIterator]().next();
    assert.is(new TextDecoder().decode(got.value as Uint8Array), "over tcp");
    client.close();
    server.close();
  } finally {
    await listener.close();
    if (saved.transport === undefined) delete process.env.KOALA_TRANSPORT;
    else process.env.KOALA_TRANSPORT = saved.transport;
    if (saved.provider !== undefined) process.env.KOALA_RDMA_PROVIDER = saved.provider;
  }

  const text = koalaInfo({});
  assert.is(text.status, 0);
  assert.match(text.stdout, /verbs {3}unavailable: no RDMA device \(ibv_get_device_list: Function not implemented; the kernel has no RDMA support/);
  assert.match(text.stdout, /host:port addresses use tcp: RDMA is not used: provider verbs: no RDMA device/);
});

withAddon("worker threads: each thread loads the addon into its own environment; threads exit cleanly, also when terminated at once", async () => {
  const bootstrap = new URL("../fixtures/transport/ts-worker.mjs", import.meta.url);
  const entry = new URL("../fixtures/transport/native-worker.ts", import.meta.url).href;
  const start = () => new Worker(bootstrap, { workerData: { entry } });
  const answers = await Promise.all(
    [start(), start(), start()].map(
      (w) =>
        new Promise<{ msg: { loaded: boolean; reason?: string }; code: number }>((resolve, reject) => {
          let msg: { loaded: boolean; reason?: string } | undefined;
          w.on("message", (m) => (msg = m));
          w.on("error", reject);
          w.on("exit", (code) => resolve({ msg: msg!, code }));
        }),
    ),
  );
  const here = nativeProvider.unavailableReason();
  for (const a of answers) {
    assert.is(a.code, 0);
    assert.is(a.msg.loaded, true);
    assert.is(a.msg.reason, here, "every thread sees what the main thread sees");
  }
  // Terminated while loading or just after: the environment's teardown must not crash the process.
  const early = [start(), start()];
  await new Promise((r) => setTimeout(r, 50));
  await Promise.all(early.map((w) => w.terminate()));
});

test.run();
