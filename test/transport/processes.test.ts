/**
 * Several processes at once: child processes connect to a server in this process, stream
 * messages that the server echoes, and get a closing message before the server closes each
 * connection. Both ends' digests must match; every child exits by itself with code 0.
 */
import { test } from "uvu";
import * as assert from "uvu/assert";
import { fork, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { listen, type Connection } from "../../src/transport/index.js";
import { StreamDigest, type StreamSummary } from "../fixtures/transport/stream.js";
import { Messages } from "../fixtures/transport/thread.js";

const DEADLINE_MS = 40_000;
const CHILDREN = 4;
const COUNT = 2000;

async function within<T>(p: Promise<T>, what: string, ms = DEADLINE_MS): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: not done within ${ms} ms`)), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

/** The message the server sends each client before closing: 1 MiB + id bytes depending on the id. */
function closingBlob(id: number): Uint8Array {
  const b = new Uint8Array(1024 * 1024 + id);
  for (let i = 0; i < b.length; i++) b[i] = (i * 13 + id) & 0xff;
  return b;
}

interface ServerView {
  received: StreamSummary;
  outOfOrder: number;
}

/** Per client id, what the server received from it; the server echoes and answers "done". */
function serve(c: Connection, views: Map<number, ServerView>): void {
  let id = -1;
  const got = new StreamDigest();
  c.onMessage((m) => {
    if (id < 0) {
      id = Number(/^client (\d+)$/.exec(new TextDecoder().decode(m))?.[1] ?? NaN);
      return;
    }
    if (m.byteLength === 4 && new TextDecoder().decode(m) === "done") {
      views.set(id, { received: got.summary(), outOfOrder: got.outOfOrder });
      c.send([closingBlob(id)]);
      c.close();
      return;
    }
    got.add(m);
    c.send([m]);
  });
}

for (const transport of ["tcp", "unix", "rdma"] as const) {
  test(`${CHILDREN} child processes at once against one ${transport} server`, async () => {
    const dir = transport === "unix" ? mkdtempSync(join(tmpdir(), "koala-proc-")) : undefined;
    // rdma runs on the software verbs provider; the children inherit the variable.
    const savedProvider = process.env.KOALA_RDMA_PROVIDER;
    if (transport === "rdma") process.env.KOALA_RDMA_PROVIDER = "soft";
    const l = await listen(dir === undefined ? `${transport === "rdma" ? "rdma" : "tcp"}://127.0.0.1:0` : `unix:${join(dir, "server.sock")}`);
    const views = new Map<number, ServerView>();
    const serverSide: Connection[] = [];
    l.onConnection((c) => {
      serverSide.push(c);
      serve(c, views);
    });
    const children: ChildProcess[] = [];
    try {
      const runs = Array.from({ length: CHILDREN }, (_, id) => {
        const child = fork(new URL("../fixtures/transport/process-client.ts", import.meta.url).pathname, [l.address, String(id + 1), String(COUNT)], {
          execArgv: ["--import", "tsx"],
          stdio: ["ignore", "inherit", "inherit", "ipc"],
        });
        children.push(child);
        return new Messages(`child ${id + 1}`, child);
      });
      type Report = {
        id: number;
        sent: StreamSummary;
        echoed: StreamSummary;
        echoOutOfOrder: number;
        blob: number[] | null;
        after: number;
        closed: string;
      };
      const reports = await within(Promise.all(runs.map((r) => r.next<Report>())), "the children's reports");
      const codes = await within(Promise.all(runs.map((r) => r.exited)), "the children exiting by themselves");
      assert.equal(codes, runs.map(() => 0), "every child exited with code 0");
      for (const r of reports) {
        assert.is(r.sent.count, COUNT);
        assert.equal(views.get(r.id), { received: r.sent, outOfOrder: 0 }, `the server got exactly what child ${r.id} sent`);
        assert.equal(r.echoed, r.sent, `child ${r.id} got every echo back, unchanged`);
        assert.is(r.echoOutOfOrder, 0);
        const blob = closingBlob(r.id);
        assert.equal(r.blob, Array.from(blob.subarray(0, 8)).concat(blob.byteLength), `child ${r.id} got the closing message`);
        assert.is(r.after, 0);
        assert.is(r.closed, "KOALA_ERR_PEER_CLOSED", "the server's close reached the child as an orderly close");
      }
      assert.is(serverSide.length, CHILDREN);
      const reasons = await within(Promise.all(serverSide.map((c) => c.closed)), "the server side closing");
      assert.equal(reasons.map((r) => r.code), serverSide.map(() => "KOALA_ERR_CLOSED"));
    } finally {
      for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
      for (const c of serverSide) c.close(new Error("test over"));
      await l.close();
      if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
      if (savedProvider === undefined) delete process.env.KOALA_RDMA_PROVIDER;
      else process.env.KOALA_RDMA_PROVIDER = savedProvider;
    }
  });
}

test.run();
