/**
 * srnic, the software RNIC (addons/rdma/srnic), as an application of libibverbs / librdmacm
 * meets it: its C self-test (addons/rdma/srnic/test/selftest.c, written against the public API
 * only) is compiled here against koala_srnic.so and run as two processes (a server and a client
 * that the server kills at the end) and as one process holding both ends. Each side prints one
 * line per observation; the tests compare each side's lines, in order, with what rdma-core's
 * semantics give: CM with private data both ways, reject with data, no listener, a listener that
 * never answers, SEND/RECV with immediate data, inline and unsignaled sends, RDMA WRITE / READ
 * through a region and through a type-2 window, a window used on another QP, out-of-bounds
 * access, receiver-not-ready retried forever and exhausted, disconnect and peer death with their
 * flushes, the completion channel fd and the CM event channel fd.
 *
 * Skipped, with a printed reason, only when srnic is not built (npm run build:rdma) and
 * KOALA_REQUIRE_NATIVE is not 1.
 */
import { test } from "uvu";
import * as assert from "uvu/assert";
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";

const root = new URL("../../", import.meta.url).pathname;
const so = join(root, "addons", "rdma", "build", "Release", "koala_srnic.so");
const source = join(root, "addons", "rdma", "srnic", "test", "selftest.c");
const NOT_BUILT = `the software RNIC is not built (${so} is missing: npm run build:rdma)`;
const built = existsSync(so);
if (!built) {
  if (process.env.KOALA_REQUIRE_NATIVE === "1") throw new Error(`KOALA_REQUIRE_NATIVE=1 but ${NOT_BUILT}`);
  process.stdout.write(`\n  srnic: SKIPPING: ${NOT_BUILT}\n`);
}
const t = built ? test : test.skip;

const work = mkdtempSync(join(tmpdir(), "koala-srnic-test-"));
const exe = join(work, "selftest");
let compiled = false;

/** Compiles the self-test once (warnings are errors), linked to srnic in place of both libraries. */
function compile(): void {
  if (compiled) return;
  const r = spawnSync("cc", ["-std=gnu11", "-Wall", "-Wextra", "-Werror", "-g", "-o", exe, source, so, `-Wl,-rpath,${dirname(so)}`, "-lpthread"], { encoding: "utf8" });
  assert.is(r.status, 0, `cc failed:\n${r.stderr}`);
  compiled = true;
}

/** The environment of a run: a fresh network folder (srnic creates it), leak report at exit. */
function env(net: string): NodeJS.ProcessEnv {
  const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("SRNIC_") && !k.startsWith("KOALA_")));
  return { ...clean, SRNIC_NET_DIR: net, SRNIC_LEAK_CHECK: "1" };
}

function lines(out: string, side: "S" | "C"): string[] {
  return out.split("\n").filter((l) => l.startsWith(`${side} `));
}

const NOTHING_LEFT = "srnic: live at exit: 0 contexts, 0 pds, 0 mrs, 0 cqs, 0 qps";
const FLUSH = "Work Request Flushed Error";

/** The server's lines, in order (the port filled in), before its last scenario. */
function serverLines(port: string): string[] {
  return [
    "S listen: second bind errno=EADDRINUSE",
    "S listen: bind over a stale file=0",
    `S listening port=${port}`,
    "S connect: request tag=connect data=hello-from-client:0123456789abcdefghijklmnopqrst",
    `S connect: established src_port=${port} listener_port=${port}`,
    "S connect: disconnected",
    "S reject: request data=reject|please",
    "S data: recv op=RECV len=4 imm=0x12345678 with_imm=1 qp_ok=1 text=ping",
    "S data: inline text=inline-data with_imm=0",
    "S data: three #0 text=one",
    "S data: three #1 text=two",
    "S data: three #2 text=three",
    "S data: write-imm op=RECV_RDMA_WITH_IMM len=4 imm=0xabcdef01",
    "S data: zero-length write-imm op=RECV_RDMA_WITH_IMM len=0 imm=0x5",
    "S data: target mr=written-by-mr window=written-by-window wimm=wimm",
    `S data: after access error recv status=${FLUSH}`,
    "S data: disconnected",
    `S window-other-qp: B recv status=${FLUSH}`,
    "S window-other-qp: A target=through-A",
    `S fault mr-oob: recv status=${FLUSH}`,
    `S fault win-oob: recv status=${FLUSH}`,
    `S fault win-ro: recv status=${FLUSH}`,
    "S rnr7: late recv text=late",
    "S rnr2: nothing received=1",
    `S disc: flushed wr=0 status=${FLUSH} op=RECV`,
    `S disc: flushed wr=1 status=${FLUSH} op=RECV`,
    `S disc: flushed wr=2 status=${FLUSH} op=RECV`,
    "S disc: no second event=1",
    "S sdisc: once=1",
    "S bothdisc: once=1",
    "S big: recv wr=77 status=success len=1048576 send_ok=1 write_ok=1",
    "S flood: sent=2000 received=2000 in_order=1 woken_by_events=1",
    "S trickle: received=300 in_order=1 nothing_more=1",
  ];
}

const CLIENT = [
  "C cmfd: eagain=1 before=0 queued=1 after=0 again=1 then=0",
  "C cmfd: blocking got=RDMA_CM_EVENT_ADDR_RESOLVED after_post=1",
  "C addr: RDMA_CM_EVENT_ADDR_ERROR status_negative=1",
  "C nolistener: RDMA_CM_EVENT_REJECTED status=8 len=0",
  "C timeout: RDMA_CM_EVENT_UNREACHABLE status=-110 waited_ok=1",
  "C listener-gone: request_readable=1 after_destroy=0 client=RDMA_CM_EVENT_REJECTED status=1",
  "C connect: established data=hello-from-server:0123456789abcdefghijklmnopqrstuvwxyzAB len=56 dst_port_ok=1",
  "C connect: disconnected",
  "C reject: RDMA_CM_EVENT_REJECTED status=28 data=no-thanks",
  "C data: send wr=10 status=success op=SEND qp_ok=1",
  "C data: unsignaled skipped first=14 empty_after=1",
  "C data: write wr=20 status=success op=RDMA_WRITE",
  "C data: read wr=21 status=success op=RDMA_READ len=64 bytes_ok=1",
  "C data: window read status=success text=written-by-window",
  "C data: window write-imm status=success",
  "C data: zero-length read wr=38 status=success",
  "C data: zero-length write-imm wr=39 status=success",
  "C data: rebound new_key=1 same_index=1 (scattered over two entries)",
  "C data: rebound read status=success text=rebound!",
  "C data: read after invalidate wr=34 status=remote access error",
  `C data: then wr=35 status=${FLUSH}`,
  `C data: posted in error wr=36 status=${FLUSH}`,
  "C window-other-qp: B wr=1 status=remote access error",
  `C window-other-qp: B then wr=2 status=${FLUSH}`,
  "C window-other-qp: A status=success",
  ...["mr-oob", "win-oob", "win-ro"].flatMap((how) => [
    `C fault ${how}: wr=2 status=remote access error`,
    `C fault ${how}: then wr=3 status=${FLUSH}`,
    `C fault ${how}: own recv status=${FLUSH}`,
  ]),
  "C rnr7: send wr=1 status=success waited_ok=1",
  `C rnr7: second wr=2 status=${FLUSH}`,
  "C rnr2: send wr=1 status=RNR retry counter exceeded",
  `C rnr2: then wr=2 status=${FLUSH}`,
  `C disc: flushed wr=0 status=${FLUSH}`,
  `C disc: flushed wr=1 status=${FLUSH}`,
  "C disc: again=0 no second event=1",
  "C chan: before=0 after=1 cq_ok=1 ctx_ok=1 wc=success text=notify-me",
  "C chan: unarmed readable=0 text=unarmed",
  `C sdisc: flushed wr=0 status=${FLUSH}`,
  `C sdisc: flushed wr=1 status=${FLUSH}`,
  "C sdisc: once=1",
  "C bothdisc: once=1",
  "C big: send wr=2 status=success len=1048576",
  "C flood: sent=2000 received=2000 in_order=1 woken_by_events=1",
  "C trickle: sent=300 all_ok_in_order=1",
];

t("one process holding both ends (server thread, client thread): every scenario, each side's observations in order", () => {
  compile();
  const net = join(work, "net-one"); // srnic makes the folder (0700)
  const r = spawnSync(exe, ["both"], { env: env(net), encoding: "utf8", timeout: 60_000 });
  assert.not.match(r.stdout, /^FAIL/m, r.stdout);
  assert.is(r.status, 0, `exit ${r.status} ${r.signal ?? ""}\n${r.stdout}\n${r.stderr}`);
  const port = /^S listening port=(\d+)$/m.exec(r.stdout)?.[1];
  assert.ok(port !== undefined && Number(port) > 0, "port 0 picked a port");
  assert.equal(lines(r.stdout, "S"), [...serverLines(port!), "S end"]);
  assert.equal(lines(r.stdout, "C"), [...CLIENT, "C done"]);
  assert.is(r.stderr.trim(), NOTHING_LEFT, "no warning from srnic, and every verbs object was released");
  assert.is(statSync(net).mode & 0o777, 0o700, "the network folder is private");
  assert.equal(readdirSync(net), [], "destroyed listeners and taken-over stale files leave no socket file");
});

t("SRNIC_POLL_US: with the service thread polling between packets (posts ring no doorbell while it polls), one process holding both ends sees every scenario the same, and an idle gap longer than the polling puts it back to sleep without losing a post", () => {
  compile();
  const net = join(work, "net-poll");
  // 200 µs of polling: the scenarios' pauses (timeouts, RNR retries, the idle waits) are far
  // longer, so the thread goes from polling to sleeping and back many times in this run.
  const r = spawnSync(exe, ["both"], { env: { ...env(net), SRNIC_POLL_US: "200" }, encoding: "utf8", timeout: 60_000 });
  assert.not.match(r.stdout, /^FAIL/m, r.stdout);
  assert.is(r.status, 0, `exit ${r.status} ${r.signal ?? ""}\n${r.stdout}\n${r.stderr}`);
  const port = /^S listening port=(\d+)$/m.exec(r.stdout)?.[1];
  assert.equal(lines(r.stdout, "S"), [...serverLines(port!), "S end"]);
  assert.equal(lines(r.stdout, "C"), [...CLIENT, "C done"]);
  assert.is(r.stderr.trim(), NOTHING_LEFT);
});

t("two processes: the client's half and the server's half; the server kills the client (SIGKILL) at the end and sees DISCONNECTED and its flushes", async () => {
  compile();
  const net = join(work, "net-two");
  const server = spawn(exe, ["server"], { env: env(net), stdio: ["ignore", "pipe", "pipe"] });
  let sout = "";
  let serr = "";
  server.stderr.on("data", (d: Buffer) => (serr += d));
  const port = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the server did not listen:\n${sout}\n${serr}`)), 20_000);
    server.stdout.on("data", (d: Buffer) => {
      sout += d;
      const m = /^S listening port=(\d+)$/m.exec(sout);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]!);
      }
    });
    server.once("exit", (code) => reject(new Error(`the server exited (${code}):\n${sout}\n${serr}`)));
  });
  const serverDone = new Promise<number | null>((resolve) => server.once("close", (code) => resolve(code)));
  const client = spawn(exe, ["client", port, "death"], { env: env(net), stdio: ["ignore", "pipe", "pipe"] });
  let cout = "";
  let cerr = "";
  client.stdout.on("data", (d: Buffer) => (cout += d));
  client.stderr.on("data", (d: Buffer) => (cerr += d));
  const clientDone = new Promise<string | null>((resolve) => client.once("close", (_code, signal) => resolve(signal)));
  const guard = setTimeout(() => {
    client.kill("SIGKILL");
    server.kill("SIGKILL");
  }, 60_000);
  const [serverCode, clientSignal] = await Promise.all([serverDone, clientDone]);
  clearTimeout(guard);
  assert.not.match(sout + cout, /^FAIL/m, sout + cout);
  assert.is(clientSignal, "SIGKILL", `the client is killed by the server\n${cout}\n${cerr}`);
  assert.is(serverCode, 0, `server exit ${serverCode}\n${sout}\n${serr}`);
  assert.equal(lines(sout, "S"), [
    ...serverLines(port),
    "S death: killed the client",
    `S death: flushed wr=1 status=${FLUSH}`,
    `S death: flushed wr=2 status=${FLUSH}`,
    `S death: send after it status=${FLUSH}`,
    "S end",
  ]);
  assert.equal(lines(cout, "C"), [...CLIENT, "C death: waiting to be killed"]);
  assert.is(serr.trim(), NOTHING_LEFT, "the server released everything");
  assert.is(cerr, "", "the killed client printed nothing on stderr");
  assert.equal(readdirSync(net), [], "no socket file is left behind");
});

t("librdmacm's devices: one context per active device, srnic0 first, the same pointers every time; rdma_create_qp's checks; calls refused; no active device", () => {
  compile();
  const run = (mode: string, devices: string) => {
    const r = spawnSync(exe, [mode], { env: { ...env(join(work, "net-devices")), SRNIC_DEVICES: devices }, encoding: "utf8", timeout: 30_000 });
    assert.is(r.status, 0, `${mode}: exit ${r.status} ${r.signal ?? ""}\n${r.stdout}\n${r.stderr}`);
    assert.is(r.stderr.trim(), NOTHING_LEFT, "librdmacm's own contexts are not the application's to close; everything else was released");
    return lines(r.stdout, "C");
  };
  assert.equal(run("devices", "mlx5_0:down,srnic1:active,srnic0:active,srnic2:noopen"), [
    "C devices: n=2 names=srnic0,srnic1 same=1 port_active=1 gid=1",
    "C devices: bind 10.0.0.1 refused=1 id_verbs_is_first=1",
    "C devices: create_qp refused sge=1 inline=1 wr=1 ud=1 other_device_pd=1 opened_context_pd=1",
    "C devices: granted inline=256 qp_ok=1",
    "C devices: connect with 57 bytes refused=1 destroy with a qp refused=1 then=1",
  ]);
  assert.equal(run("nodevices", "srnic0:down"), ["C nodevices: list=NULL n=0 enodev=1 resolve=RDMA_CM_EVENT_ADDR_ERROR status=-19"]);
});

t("without SRNIC_NET_DIR the network folder is /tmp/koala-srnic-<uid>, private; a listener's socket file goes with it", () => {
  compile();
  const clean = Object.fromEntries(Object.entries(env("unused")).filter(([k]) => k !== "SRNIC_NET_DIR"));
  const r = spawnSync(exe, ["netdir"], { env: clean, encoding: "utf8", timeout: 30_000 });
  assert.is(r.status, 0, `exit ${r.status} ${r.signal ?? ""}\n${r.stdout}\n${r.stderr}`);
  assert.equal(lines(r.stdout, "C"), ["C netdir: socket_file=1 removed=1"]);
  const dir = statSync(`/tmp/koala-srnic-${process.getuid!()}`);
  assert.ok(dir.isDirectory() && (dir.mode & 0o777) === 0o700 && dir.uid === process.getuid!(), "a folder of this user only");
});

t("a CQ given more completions than it holds: srnic says so on stderr and every poll of it fails (EOVERFLOW), as the soft provider's pollCq does", () => {
  compile();
  const r = spawnSync(exe, ["overrun"], { env: env(join(work, "net-overrun")), encoding: "utf8", timeout: 30_000 });
  assert.is(r.status, 0, `exit ${r.status} ${r.signal ?? ""}\n${r.stdout}\n${r.stderr}`);
  assert.equal(lines(r.stdout, "C"), ["C overrun: poll=-1 eoverflow=1 other_cq_ok=1"]);
  assert.match(r.stderr, /^srnic: CQ 0x[0-9a-f]+ overrun: a completion was lost \(the CQ holds 2\)$/m);
  assert.match(r.stderr, new RegExp(`^${NOTHING_LEFT}$`, "m"));
});

t("ibv_resize_cq: a CQ holding completions (its ring wrapped) grows and keeps them in order; below what it holds or above max_cqe it fails with EINVAL and stays as it was; emptied, it shrinks", () => {
  compile();
  const r = spawnSync(exe, ["resize"], { env: env(join(work, "net-resize")), encoding: "utf8", timeout: 30_000 });
  assert.is(r.status, 0, `exit ${r.status} ${r.signal ?? ""}\n${r.stdout}\n${r.stderr}`);
  assert.equal(lines(r.stdout, "C"), ["C resize: too_small=22 too_big=22 unchanged=4 grow=0 cqe=1 order=2,3,4,5,6,7,8,9,10,11 shrink=0 cqe=2"]);
  assert.not.match(r.stderr, /overrun/);
  assert.match(r.stderr, new RegExp(`^${NOTHING_LEFT}$`, "m"));
});

test.after(() => rmSync(work, { recursive: true, force: true }));

test.run();
