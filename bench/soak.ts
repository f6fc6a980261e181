/**
 * Soak: a koala server in a child process under mixed load for a while — well-behaved unary and
 * streaming clients, plus misbehaving ones (a client that never reads, connections that come and
 * go, a raw peer breaking flow control, malformed frames) — sampling the server's RSS, V8 heap,
 * open file descriptors, event-loop delay and Server.stats() every second. It passes when memory
 * and fds come back to their level after the warm-up and stay within the documented budgets.
 *
 *   npm run bench:soak                       # 60 s
 *   npm run bench:soak -- --seconds 600      # ten minutes
 *   npm run bench:soak -- --json bench/results/soak.json
 *
 * Traffic stays on 127.0.0.1 and stops by itself.
 */
import { fork, type ChildProcess } from "node:child_process";
import { writeFileSync } from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { Code, RpcError, closeClient, createClient, createServer, type Server } from "../src/index.js";
import { FrameType } from "../src/rpc/frame.js";
import { Metadata, encodeMetadata, metadataLength } from "../src/rpc/metadata.js";
import { EchoRequest, EchoService } from "../test/fixtures/rpc/gen/echo.js";
import { callFrame, rawClient, rawFrame } from "../test/rpc/raw.js";

interface Sample {
  t: number;
  rssMiB: number;
  heapMiB: number;
  fds: number;
  loopDelayP99Ms: number;
  connections: number;
  calls: number;
  heldBytes: number;
}

const KiB = 1024;

/** Request metadata `x-slow: 1`, encoded as a CALL frame carries it. */
const slowMetadata = (() => {
  const md = new Metadata({ "x-slow": "1" });
  const b = Buffer.alloc(metadataLength(md));
  encodeMetadata(md, b, 0);
  return b;
})();

// ---- the server (child) -----------------------------------------------------------------------

async function serve(): Promise<void> {
  const { monitorEventLoopDelay } = await import("node:perf_hooks");
  const { readdirSync } = await import("node:fs");
  const server: Server = createServer({ logHandlerErrors: false, connectionBudgetBytes: 16 * 1024 * KiB, sendTimeoutMs: 2000 });
  server.add(EchoService, {
    unary: (req) => ({ text: req.text, payload: req.payload }),
    async *serverStream(req) {
      for (let i = 0; i < req.count; i++) yield { text: req.text, index: i, payload: req.payload };
    },
    async clientStream(requests, ctx) {
      // A caller that asks for it is read only after a pause, so that a peer ignoring credit hits the window.
      if (ctx.requestMetadata.get("x-slow") !== undefined) await sleep(5000);
      let n = 0;
      for await (const r of requests) n += r.payload.byteLength;
      return { index: n };
    },
    async *bidi(requests) {
      for await (const r of requests) yield { text: r.text, payload: r.payload };
    },
  });
  const address = await server.listen("tcp://127.0.0.1:0");
  const delay = monitorEventLoopDelay({ resolution: 10 });
  delay.enable();
  process.send!({ address });
  setInterval(() => {
    const m = process.memoryUsage();
    const st = server.stats();
    process.send!({
      sample: {
        rssMiB: m.rss / 1048576,
        heapMiB: m.heapUsed / 1048576,
        fds: readdirSync("/proc/self/fd").length,
        loopDelayP99Ms: delay.percentile(99) / 1e6,
        connections: st.connections,
        calls: st.calls,
        heldBytes: st.heldRequestBytes + st.unsentBytes + st.unconsumedStreamBytes,
      },
    });
    delay.reset();
  }, 1000).unref();
  process.on("disconnect", () => process.exit(0));
}

// ---- the load (parent) ------------------------------------------------------------------------

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1]! : fallback;
}

async function load(address: string, until: number, counts: Record<string, number>): Promise<void> {
  const bump = (k: string) => (counts[k] = (counts[k] ?? 0) + 1);
  const good = createClient(EchoService, address);
  const workers: Promise<void>[] = [];
  // Well-behaved: unary 64 B and 64 KiB, server streams, bidi.
  for (let w = 0; w < 8; w++) {
    workers.push(
      (async () => {
        while (Date.now() < until) {
          const big = w % 4 === 0;
          await good.unary({ text: "u", payload: new Uint8Array(big ? 64 * KiB : 64) }).then(() => bump("unary ok"), () => bump("unary failed"));
        }
      })(),
    );
  }
  workers.push(
    (async () => {
      while (Date.now() < until) {
        let n = 0;
        for await (const _ of good.serverStream({ text: "s", count: 100, payload: new Uint8Array(1024) })) n++;
        bump(n === 100 ? "stream ok" : "stream short");
      }
    })(),
  );
  // Connections that come and go.
  workers.push(
    (async () => {
      while (Date.now() < until) {
        const c = createClient(EchoService, address);
        await c.unary({ text: "churn" }).then(() => bump("churn ok"), () => bump("churn failed"));
        closeClient(c);
      }
    })(),
  );
  // Hostile: a client that never reads, a flow-control breaker, malformed frames; each reconnects.
  workers.push(
    (async () => {
      while (Date.now() < until) {
        const raw = await rawClient(address, { receiveQueueMessages: 1, receiveQueueBytes: 1 });
        raw.conn.pause();
        const body = EchoRequest.encode(EchoRequest.create({ payload: new Uint8Array(64 * KiB) }));
        for (let i = 1; i <= 300; i++) raw.send(callFrame(i, "/koala.test.Echo/Unary", body));
        await sleep(3000);
        raw.conn.close(new Error("done"));
        bump("never-reader");

        const breaker = await rawClient(address);
        breaker.send(callFrame(1, "/koala.test.Echo/ClientStream", new Uint8Array(0), { streaming: true, metadata: slowMetadata }));
        for (let i = 0; i < 40; i++) breaker.send(rawFrame({ type: FrameType.DATA, callId: 1, body }));
        await breaker.conn.closed;
        bump("window breaker cut off");

        const garbage = await rawClient(address);
        garbage.send(new TextEncoder().encode("not a frame at all"));
        await garbage.conn.closed;
        bump("garbage cut off");
      }
    })(),
  );
  await Promise.all(workers);
  closeClient(good);
}

async function main(): Promise<void> {
  const seconds = Number(arg("seconds", "60"));
  const json = arg("json", "");
  const child: ChildProcess = fork(fileURLToPath(import.meta.url), ["--serve"], { execArgv: ["--import", "tsx"], stdio: ["ignore", "inherit", "inherit", "ipc"] });
  const samples: Sample[] = [];
  const start = Date.now();
  const address = await new Promise<string>((resolve) => {
    child.on("message", (m: { address?: string; sample?: Omit<Sample, "t"> }) => {
      if (m.address !== undefined) resolve(m.address);
      if (m.sample !== undefined) samples.push({ t: Math.round((Date.now() - start) / 1000), ...m.sample });
    });
  });
  const counts: Record<string, number> = {};
  await load(address, Date.now() + seconds * 1000, counts);
  await sleep(3000); // let the server settle after the load
  child.disconnect();
  const warm = samples.filter((s) => s.t >= Math.min(10, seconds / 3));
  const first = warm[0] ?? samples[0]!;
  const last = samples[samples.length - 1]!;
  const max = (k: keyof Sample) => Math.max(...samples.map((s) => s[k]));
  const report = {
    seconds,
    node: process.version,
    counts,
    rssMiB: { afterWarmup: +first.rssMiB.toFixed(1), end: +last.rssMiB.toFixed(1), max: +max("rssMiB").toFixed(1) },
    heapMiB: { afterWarmup: +first.heapMiB.toFixed(1), end: +last.heapMiB.toFixed(1), max: +max("heapMiB").toFixed(1) },
    fds: { afterWarmup: first.fds, end: last.fds, max: max("fds") },
    loopDelayP99MsMax: +max("loopDelayP99Ms").toFixed(1),
    heldBytesMax: max("heldBytes"),
    connectionsEnd: last.connections,
  };
  console.log(JSON.stringify(report, null, 2));
  const ok = last.fds <= first.fds + 4 && last.connections <= 1 && last.heapMiB <= first.heapMiB * 1.5 + 16;
  console.log(ok ? "soak: memory and fds back to their level after the load" : "soak: memory or fds did NOT come back; see the samples");
  if (json !== "") writeFileSync(json, JSON.stringify({ report, samples }, null, 1));
  if (!ok) process.exitCode = 1;
}

if (process.argv.includes("--serve")) void serve();
else
  main().catch((err: unknown) => {
    console.error(err instanceof RpcError ? `${Code[err.code]}: ${err.message}` : err);
    process.exitCode = 1;
  });
