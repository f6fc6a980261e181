/**
 * The RDMA transport's own suites on the native `verbs` provider, over the software RNIC srnic
 * (which stands in for libibverbs and librdmacm): the Verbs interface suite, the transport
 * conformance suite, the RPC suites that run on rdma, the worker-thread ring and the
 * multi-process test. Each runs in a
 * child process, because the native libraries are chosen once per process (and uvu runs every
 * test file in this one): KOALA_VERBS_LIB / KOALA_RDMACM_LIB name koala_srnic.so,
 * KOALA_RDMA_PROVIDER=verbs, and srnic's network folder is a fresh temporary one.
 *
 * The suites written for the soft provider select it with KOALA_RDMA_PROVIDER=soft; for them a
 * preload (fixtures/transport/native-as-soft.mjs, in NODE_OPTIONS, so also in their workers and
 * child processes) makes that name serve the native provider and logs every device it opens;
 * each test checks the log, so a run that never touched the native provider fails.
 *
 * Skipped, with a printed reason, when the addon or srnic is not built, unless
 * KOALA_REQUIRE_NATIVE=1 (CI), where that is a failure.
 */
import { test } from "uvu";
import * as assert from "uvu/assert";
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { locateAddon, NOT_BUILT } from "../../src/transport/rdma/native.js";

const root = new URL("../../", import.meta.url).pathname;
const srnic = join(root, "addons", "rdma", "build", "Release", "koala_srnic.so");
const missing = locateAddon(root) === undefined ? NOT_BUILT : !existsSync(srnic) ? `the software RNIC is not built (${srnic}; npm run build:rdma)` : undefined;
if (missing !== undefined) {
  if (process.env.KOALA_REQUIRE_NATIVE === "1") throw new Error(`KOALA_REQUIRE_NATIVE=1 but ${missing}`);
  process.stdout.write(`\n  rdma-verbs-srnic: SKIPPING: ${missing}\n`);
}
const t = missing === undefined ? test : test.skip;

/** How long one child suite may take. */
const SUITE_MS = 300_000;

interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** Lines the preload logged: `<pid> main|worker <class> <device>:<port>`. */
  opened: string[];
}

/** Runs `args` (after node) in a child with srnic as both libraries; `alias` adds the preload that makes `soft` the native provider. */
function run(args: string[], alias: boolean): Promise<Run> {
  const dir = mkdtempSync(join(tmpdir(), "koala-verbs-srnic-"));
  const log = join(dir, "opened.log");
  const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("KOALA_") && !k.startsWith("SRNIC_")));
  const env: NodeJS.ProcessEnv = {
    ...clean,
    KOALA_VERBS_LIB: srnic,
    KOALA_RDMACM_LIB: srnic,
    KOALA_RDMA_PROVIDER: "verbs",
    SRNIC_NET_DIR: join(dir, "net"),
    KOALA_SOFT_RDMA_DIR: dir,
    FORCE_COLOR: "0",
  };
  if (alias) {
    env.NODE_OPTIONS = `${process.env.NODE_OPTIONS ?? ""} --import=${new URL("../fixtures/transport/native-as-soft.mjs", import.meta.url).href}`.trim();
    env.NATIVE_AS_SOFT_LOG = log;
  }
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, { cwd: root, env, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d) => (stdout += d));
    child.stderr.on("data", (d) => (stderr += d));
    const timer = setTimeout(() => child.kill("SIGKILL"), SUITE_MS);
    child.on("error", reject);
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      const opened = existsSync(log) ? readFileSync(log, "utf8").split("\n").filter(Boolean) : [];
      rmSync(dir, { recursive: true, force: true });
      resolve({ code, signal, stdout, stderr, opened });
    });
  });
}

/** Asserts the child's uvu run passed every test (at least `min`), quoting its output when not. */
function passed(r: Run, what: string, min: number): void {
  const total = Number(/Total:\s+(\d+)/.exec(r.stdout)?.[1] ?? 0);
  const ok = Number(/Passed:\s+(\d+)/.exec(r.stdout)?.[1] ?? 0);
  const tail = `\n--- stdout (end) ---\n${r.stdout.slice(-6000)}\n--- stderr (end) ---\n${r.stderr.slice(-4000)}`;
  assert.ok(r.code === 0 && total >= min && ok === total, `${what}: exit ${r.code ?? r.signal}, ${ok} of ${total} passed (at least ${min} expected)${tail}`);
}

const uvu = (pattern: string) => ["--import", "tsx", "node_modules/uvu/bin.js", "test", pattern];

t("the Verbs interface suite (verbs-suite.ts) on the native provider over srnic", async () => {
  const r = await run(["--import", "tsx", "test/fixtures/transport/native-interface.ts"], false);
  passed(r, "verbs suite (native)", 8);
  assert.match(r.stdout, /rdma verbs: verbs provider \(srnic0\)/);
  // Receiver-not-ready is retried without limit there (rnr_retry_count 7), so its exhaustion is not checked.
  assert.match(r.stdout, /Skipped:\s+1\n/);
});

t("transport conformance suite: rdma on the verbs provider over srnic", async () => {
  const r = await run(["--import", "tsx", "test/fixtures/transport/native-conformance.ts"], false);
  passed(r, "conformance (rdma, verbs)", 20);
  assert.match(r.stdout, /native-conformance: contexts verbs\/srnic0:1\n/, "the suite ran on the native provider's srnic0");
});

t("RPC calls over rdma (test/rpc/calls.test.ts) with the verbs provider over srnic", async () => {
  const r = await run(uvu("rpc/calls\\.test"), true);
  passed(r, "rpc/calls.test.ts", 40);
  assert.ok(r.opened.some((l) => / main NativeContext srnic0:1$/.test(l)), `the rdma suite opened srnic0 through the native provider: ${r.opened.join("; ")}`);
});

t("RPC servers in other processes over rdma (test/rpc/process.test.ts) with the verbs provider over srnic", async () => {
  const r = await run(uvu("rpc/process\\.test"), true);
  passed(r, "rpc/process.test.ts", 1);
  assert.ok(r.opened.length > 0 && r.opened.every((l) => / NativeContext srnic0:1$/.test(l)), `native contexts only: ${r.opened.join("; ")}`);
});

t("worker threads (test/transport/workers.test.ts): the rdma ring of four threads on the verbs provider over srnic", async () => {
  const r = await run(uvu("transport/workers\\.test"), true);
  passed(r, "transport/workers.test.ts", 5);
  const workers = r.opened.filter((l) => / worker NativeContext srnic0:1$/.test(l));
  assert.ok(workers.length >= 4, `each ring thread opened its own native context: ${r.opened.join("; ")}`);
});

t("child processes (test/transport/processes.test.ts): four processes against one rdma server on the verbs provider over srnic", async () => {
  const r = await run(uvu("transport/processes\\.test"), true);
  passed(r, "transport/processes.test.ts", 3);
  const pids = new Set(r.opened.map((l) => l.split(" ")[0]));
  assert.ok(pids.size >= 5, `the server and four clients, each its own process, opened native contexts: ${r.opened.join("; ")}`);
});

t("a thread's completion queue grows past its first 1024 entries through the addon (ibv_resize_cq on srnic): 64 connections, a burst on each while the thread is busy, every message echoed", async () => {
  const r = await run(["--import", "tsx", "test/fixtures/transport/native-many.ts", "64"], false);
  assert.is(r.code, 0, `exit ${r.code ?? r.signal}\n${r.stdout}\n${r.stderr}`);
  assert.not.match(r.stderr, /overrun|completion queue failed/, "no completion lost");
  const out = JSON.parse(r.stdout.trim().split("\n").pop()!) as Record<string, number | string>;
  const needed = 2 * 64 * (out.entriesPerConnection as number); // both ends of each connection are in this thread
  assert.ok(needed > 1024, `more than the first 1024 entries are needed (${needed})`);
  assert.equal(
    { contexts: out.contexts, provider: out.provider, connections: out.connections, echoed: out.echoed, open: out.open },
    { contexts: 1, provider: "verbs", connections: 128, echoed: 64, open: 128 },
  );
  assert.ok((out.cqCapacity as number) >= needed, `the CQ holds ${String(out.cqCapacity)} entries, at least the ${needed} needed`);
});

test.run();
