/**
 * Verbs objects of the native addon (device contexts, protection domains, memory regions,
 * completion queues with their completion channel watched by libuv, queue pairs and work
 * requests posted from typed-array batches, the connection manager and memory windows) run
 * against the software RNIC standing in for libibverbs, each scenario in a child process
 * (libibverbs is chosen once per process): destroy order, dead and wrong-kind handles, ranges,
 * a registered ArrayBuffer held alive until deregistered, everything released when a thread
 * or the process ends, and a fuzz of every export with live, dead and hostile handles.
 * Skipped, with a printed reason, only when the addon is not built.
 */
import { test } from "uvu";
import * as assert from "uvu/assert";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { locateAddon, NOT_BUILT } from "../../src/transport/rdma/native.js";

const root = new URL("../../", import.meta.url).pathname;
const built = locateAddon(root) !== undefined;
if (!built) {
  if (process.env.KOALA_REQUIRE_NATIVE === "1") throw new Error(`KOALA_REQUIRE_NATIVE=1 but ${NOT_BUILT}`);
  process.stdout.write(`\n  rdma-addon-objects: SKIPPING: ${NOT_BUILT}\n`);
}
const t = built ? test : test.skip;
const srnic = join(root, "addons", "rdma", "build", "Release", "koala_srnic.so");

const net = mkdtempSync(join(tmpdir(), "koala-srnic-net-"));
test.after(() => rmSync(net, { recursive: true, force: true }));

const LEAKS = /^srnic: live at exit: (\d+) contexts, (\d+) pds, (\d+) mrs, (\d+) cqs, (\d+) qps$/m;

/** Runs scenario `name` of the fixture; its JSON result and what the software RNIC saw still open at exit. */
function run(name: string, env: Record<string, string> = {}): { out: Record<string, unknown>; live: number[] } {
  assert.ok(existsSync(srnic), "npm run build:rdma builds the software RNIC");
  const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("KOALA_")));
  const fixture = new URL("../fixtures/transport/native-objects.ts", import.meta.url).pathname;
  const r = spawnSync(process.execPath, ["--expose-gc", "--import", "tsx", fixture, name], {
    // srnic's network folder is this run's own (its listeners are socket files there).
    env: { ...clean, KOALA_VERBS_LIB: srnic, KOALA_RDMACM_LIB: srnic, SRNIC_LEAK_CHECK: "1", SRNIC_NET_DIR: net, ...env },
    encoding: "utf8",
    timeout: 60_000,
  });
  assert.is(r.status, 0, `${name}: exit ${r.status} ${r.signal ?? ""}\n${r.stderr}`);
  const leaks = LEAKS.exec(r.stderr);
  assert.ok(leaks, `the software RNIC reports what is left open: ${r.stderr}`);
  return { out: JSON.parse(r.stdout) as Record<string, unknown>, live: leaks!.slice(1).map(Number) };
}

const IN_USE = "KOALA_ERR_HANDLE_IN_USE";
const DEAD = "KOALA_ERR_HANDLE_DESTROYED";
const BAD = "KOALA_ERR_INVALID_ARGUMENT";

t("PDs and MRs: destroy order, dead and wrong-kind handles, ranges and flags are refused, by JS and again by the addon", () => {
  const { out, live } = run("rules");
  assert.equal(out.mr, { lkeyIsNumber: true, length: 1024, addrIsPointer: true });
  assert.equal(out.jsOrder, [IN_USE, IN_USE], "a PD with an MR, a device with a PD");
  assert.equal(out.jsArgs, [BAD, BAD, BAD, BAD, BAD], "empty, SharedArrayBuffer, REMOTE_WRITE without LOCAL_WRITE, unknown flag, not bytes");
  assert.equal(out.nativeOrder, [IN_USE, IN_USE]);
  assert.equal(out.nativeRanges, [BAD, BAD, BAD, BAD, BAD, BAD, BAD, BAD, BAD], "past the end (twice), empty, negative, fractional, huge, flags, unknown flag, not an ArrayBuffer");
  assert.equal(out.nativeKinds, [BAD, BAD, BAD], "a handle of the wrong kind");
  assert.equal(out.nativeDead, [DEAD, DEAD]);
  assert.is(out.slotReusedHandleDiffers, true, "a reused slot gets a new handle; the old one stays dead");
  assert.equal(out.nativeClosed, [DEAD, DEAD]);
  assert.equal(out.jsDead, [DEAD]);
  assert.equal(out.jsAfter, [DEAD, "ok", DEAD], "after its PDs are gone the device closes, and is closed");
  assert.is(out.unknownDevice, "KOALA_ERR_VERBS");
  assert.equal(live, [0, 0, 0, 0, 0], "nothing left open");
});

t("a registered ArrayBuffer is held alive by the addon until deregistered, then collected", () => {
  const { out } = run("keepalive");
  assert.equal(out.whileRegistered, ["plain"], "only the unregistered buffer is collected");
  assert.equal(out.afterRawDereg, ["plain", "raw"]);
  assert.equal(out.afterJsDereg, ["plain", "raw", "js"]);
});

t("objects left open are released when a worker ends, is terminated, or the process exits (environment cleanup hook)", () => {
  const { out, live } = run("leave-open");
  assert.equal(out.workers, [0, 0, 0]);
  assert.is(out.terminated, true);
  assert.equal(live, [0, 0, 0, 0, 0], "every context, PD and MR of five environments was released");
});

t("completions reach JavaScript through the completion channel's fd (no polling loop): notify, drain in batches, re-arm, poll again; all in order", () => {
  const { out, live } = run("cq", { SRNIC_CQ_SELFTEST: "1000" });
  assert.is(out.count, 1000, "1000 completions through a 64-entry CQ");
  assert.is(out.inOrder, true, "wr_id, byte_len, imm, qp_num, status and opcode of each, in order");
  assert.is(out.notifiedLessThanOncePerCompletion, true, "one notification drains many completions");
  assert.equal(out.jsChecks, [BAD, BAD, BAD, BAD, IN_USE], "out too small, max past out, not a Float64Array, depth 0; a device with a CQ");
  assert.equal(out.nativeChecks, [BAD, BAD, BAD, BAD, DEAD], "the addon refuses the same (and a wrong-kind or unknown handle)");
  assert.equal(out.resizeChecks, [BAD, BAD, BAD, BAD, DEAD, BAD], "resizeCq: depth 0, not an integer, past 2^22, missing; an unknown handle; depth 0 through the context");
  assert.equal(out.resizeRefused, ["KOALA_ERR_VERBS", "resizeCq: ibv_resize_cq to 4194304 entries: Invalid argument"], "above the device's max_cqe: the device's errno");
  assert.is(out.shrinkBelowQueued, "KOALA_ERR_VERBS", "a CQ holding 16 completions cannot shrink to 8");
  assert.is(out.grownTo, 48, "the capacity srnic granted");
  assert.ok((out.heldAfterGrow as number) > 16, `the grown CQ held more than it was created with (${String(out.heldAfterGrow)})`);
  assert.is(out.grownInOrder, true, "every completion, in order, across the resize");
  assert.equal(out.afterDestroy, [DEAD, DEAD, "ok"]);
  assert.equal(live, [0, 0, 0, 0, 0], "a CQ left armed at exit, its NIC still running, is released too");
});

t("queue pairs: SEND (gathered, inline, with immediate), RDMA WRITE and READ posted in one batch; completions and data as a NIC gives them; bad entries refused before the NIC", () => {
  const { out, live } = run("qp");
  assert.equal(out.caps, { maxSendWr: 16, maxRecvWr: 4, maxSendSge: 4, maxRecvSge: 2, maxInlineData: 256 }, "the capacities the provider granted");
  // [wr_id, status, opcode, byte_len, imm, qp_num is the QP's]
  assert.equal(out.completions, [
    [1, 0, 0, 600, 0, true],
    [2, 0, 0, 50, 0, true],
    [3, 0, 1, 64, 0, true],
    [4, 0, 2, 64, 0, true],
    [5, 10, 1, 8, 0, true], // a wrong rkey: REM_ACCESS_ERR
    [6, 13, 0, 8, 0, true], // no receive left: RNR_RETRY_EXC_ERR (an unsignaled send still completes when it fails)
    [100, 0, 128, 600, 0, true], // 600 bytes scattered over two 512-byte entries
    [101, 0, 128, 50, 0xdeadbeef, true],
  ]);
  assert.equal(out.data, { send: true, imm: true, write: true, read: true }, "the bytes landed where each work request said");
  assert.equal(out.refused, [BAD, BAD, BAD, BAD, BAD, BAD, BAD, BAD], "past a region, before it, unknown lkey, inline over the cap, unknown opcode, entries outside the batch, too many entries, not a WorkBatch");
  assert.equal(out.detached, [0, 4096, BAD], "a send from a registered buffer that was transferred away is refused");
  assert.equal(out.nativeRefused, [BAD, BAD, BAD], "the addon refuses a count past the array, an entry in no region, a non-Float64Array");
  assert.equal(out.order, [IN_USE, IN_USE], "a CQ or PD with a QP");
  assert.equal(out.afterDestroy, [DEAD, DEAD, "ok"]);
  assert.equal(live, [0, 0, 0, 0, 0], "a QP left open with receives posted is released at exit");
});

t("an exception thrown by a CQ's notify callback is an uncaught exception of the process, never an abort", () => {
  const { out, live } = run("cq-throws", { SRNIC_CQ_SELFTEST: "5" });
  assert.is(out.caught, "thrown by onNotify");
  assert.equal(live, [0, 0, 0, 0, 0]);
});

t("connection manager and memory windows (verbs provider, librdmacm's context): connect, accept, reject, timeout, no listener, unreachable host; SEND and READ through a window; what the owner's NIC refuses; destroy order; disconnect; cleanup", () => {
  const { out, live } = run("cm");
  assert.is(out.listenerPort, true);
  assert.equal(out.established, ["established", [7, 7], [1, 2, 3], ["connect_request", "established"]], "both ends established; private data both ways");
  assert.equal(out.addresses, [true, true, true], "the client names the listener; each end names the other");
  assert.equal(out.caps, { maxSendWr: 16, maxRecvWr: 16, maxSendSge: 2, maxRecvSge: 1, maxInlineData: 256 }, "what the caller may use (the bind headroom is not counted)");
  assert.equal(out.send, [[20, 0, 0, 50], [0, 0, 128, 50], true], "the SEND and its receive, with the bytes");
  assert.equal(out.window, { rkeyDiffers: true, addr: true, length: 512 });
  assert.equal(out.read, [[21, 0, 2, 512], true], "an RDMA READ through the window reads the window's bytes");
  assert.equal(out.order, [IN_USE, IN_USE, IN_USE, IN_USE, IN_USE, IN_USE, IN_USE], "an identifier with its QP, a QP or region with a window, a device with objects; in JS and in the addon");
  assert.equal(out.nicRefuses, [10, 10], "REM_ACCESS_ERR: the window's key on another connection, the region's own key");
  assert.is(out.pastEnd, 10, "REM_ACCESS_ERR: past the window's end");
  assert.equal(out.invalidate, [0, BAD, 10], "a READ through the window, then a local invalidate (a second one refused), then REM_ACCESS_ERR");
  assert.equal(out.disconnectHere, ["disconnected by this side"], "the side that disconnects hears it at once, once");
  assert.equal(out.disconnectThere, [["the peer disconnected"], [5, 5, 5, 5]], "the peer hears it once; its posted receives flush (WR_FLUSH_ERR)");
  assert.equal(out.rejected, ["rejected", "the peer rejected the connection", [9]]);
  assert.equal(out.timedOut, ["unreachable", true], "a listener that never answers: unreachable, timed out");
  assert.match((out.noListener as string[])[1]!, /^no RDMA listener on port \d+$/);
  assert.is((out.noListener as string[])[0], "rejected");
  assert.is(out.unreachableHost, "KOALA_ERR_HOST_NOT_FOUND", "a host srnic cannot reach");
  assert.equal(out.jsChecks, [BAD, BAD, BAD, BAD, BAD, BAD, "KOALA_ERR_ADDRESS_IN_USE"], "QP or connect before resolve, accept without a request, private data over 56 bytes, a window without MW_BIND or past the region, a port in use");
  assert.equal(out.nativeChecks, ["KOALA_ERR_VERBS", BAD, BAD, BAD, "KOALA_ERR_ADDRESS_IN_USE", BAD, BAD, BAD, BAD, BAD, BAD, BAD, BAD], "the addon's own checks: unresolved, no QP, private data size and type, port in use, host text, port range, listener vs identifier both ways, a second QP, window access, timeout 0");
  assert.equal(out.otherContext, [BAD, "createCmQp: the identifier is on device srnic0; the protection domain and completion queues must be of that device's librdmacm context (openDevice(name, true)), not srnic0's"], "a PD of ibv_open_device's context is not the identifier's");
  assert.equal(out.afterDestroy, [DEAD, DEAD, DEAD]);
  assert.is(out.deallocTwice, DEAD);
  assert.equal(out.closed, [true, true, true], "identifiers and the listener close (they would keep the process alive)");
  assert.equal(live, [0, 0, 0, 0, 0], "the PD, regions and CQ left open are released at exit");
});

t("a thread terminated with a listener, a connected pair and a window open: its cleanup hook releases them in order", () => {
  const { out, live } = run("cm-leave-open");
  assert.equal(out.worker, ["client established", "server established"]);
  assert.is(out.terminated, true);
  assert.equal(live, [0, 0, 0, 0, 0]);
});

t("a listener keeps the process alive, as a listening socket does; an idle identifier does not", () => {
  const { out, live } = run("cm-alive");
  assert.ok((out.listenerHeldMs as number) >= 290, `the process lived until the listener closed: ${String(out.listenerHeldMs)} ms`);
  assert.equal(live, [0, 0, 0, 0, 0]);
});

t("a worker thread that is the only user of the addon ends cleanly (the addon stays mapped for the close callbacks of its libuv handles)", () => {
  const { out, live } = run("thread-only");
  assert.equal(out, { worker: "done", exitCode: 0 });
  assert.equal(live, [0, 0, 0, 0, 0]);
});

t("fuzz: every export with live, dead, foreign and hostile handles and values never crashes the process", () => {
  const { out, live } = run("fuzz");
  assert.ok((out.calls as number) > 2000, `calls: ${out.calls}`);
  const codes = out.codes as string[];
  for (const code of codes) assert.ok([DEAD, IN_USE, BAD, "KOALA_ERR_VERBS", "ok"].includes(code), `every outcome is a success or a KoalaError with a stable code: ${code}`);
  for (const code of [DEAD, IN_USE, BAD, "ok"]) assert.ok(codes.includes(code), `the fuzz reached ${code}`);
  for (const fn of ["createId", "cmRef", "cmEventName"]) assert.ok((out.succeeded as string[]).includes(fn), `the fuzz also called ${fn} with valid arguments (and released what it made)`);
  assert.is(out.stillWorks, true);
  assert.equal(live, [0, 0, 0, 0, 0]);
});

test.run();
