/**
 * Splits a `--cpu-prof` profile of a transport bench run with both systems between them:
 * a sample belongs to raw when `bench/lib/framed-socket.ts` is on its stack, to koala when a
 * file under `src/transport/` is, so shared Node internals (`writeBuffer`, `createWriteWrap`,
 * …) are charged to the system that called them. Prints CPU per message: the write system
 * calls, the JavaScript, and the JavaScript's top functions (self time; V8 charges inlined
 * callees to their caller).
 *
 *   node --import tsx bench/lib/split-profile.ts PROFILE RAW_MESSAGES KOALA_MESSAGES [TOP]
 *
 * The message counts are rate × seconds from the bench's `--json` output; run the bench
 * with `--warmup-ms 0` so that the profile holds only timed messages (and start-up).
 */
import { readFileSync } from "node:fs";

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string };
  children?: number[];
}
interface Profile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

const [file, rawArg, koalaArg, topArg] = process.argv.slice(2);
if (file === undefined || rawArg === undefined || koalaArg === undefined) {
  console.error("usage: split-profile.ts PROFILE RAW_MESSAGES KOALA_MESSAGES [TOP]");
  process.exit(2);
}
const profile = JSON.parse(readFileSync(file, "utf8")) as Profile;
const messages = { raw: Number(rawArg), koala: Number(koalaArg) };
const top = Number(topArg ?? 12);

const byId = new Map(profile.nodes.map((n) => [n.id, n]));
const parentOf = new Map<number, number>();
for (const n of profile.nodes) for (const c of n.children ?? []) parentOf.set(c, n.id);
const timeOf = new Map<number, number>();
profile.samples.forEach((id, i) => timeOf.set(id, (timeOf.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0)));

type Side = "raw" | "koala";
const totals = { raw: { syscall: 0, js: 0 }, koala: { syscall: 0, js: 0 } };
const functions = { raw: new Map<string, number>(), koala: new Map<string, number>() };
let unattributed = 0;
let gc = 0;
for (const [id, us] of timeOf) {
  const frame = byId.get(id)!.callFrame;
  if (frame.functionName === "(idle)" || frame.functionName === "(program)") continue;
  if (frame.functionName === "(garbage collector)") {
    gc += us; // no stack: cannot be charged to either side
    continue;
  }
  let side: Side | undefined;
  for (let at: number | undefined = id; at !== undefined && side === undefined; at = parentOf.get(at)) {
    const url = byId.get(at)!.callFrame.url;
    if (url.includes("bench/lib/framed-socket")) side = "raw";
    else if (url.includes("/src/transport/")) side = "koala";
  }
  if (side === undefined) {
    unattributed += us;
    continue;
  }
  if (frame.functionName === "writeBuffer" || frame.functionName === "writev") {
    totals[side].syscall += us;
    continue;
  }
  totals[side].js += us;
  const name = `${frame.functionName || "(anonymous)"} ${frame.url.replace(/^.*\/(src|bench)\//, "$1/")}`;
  functions[side].set(name, (functions[side].get(name) ?? 0) + us);
}

for (const side of ["raw", "koala"] as const) {
  const n = messages[side];
  console.log(`${side}: write system calls ${(totals[side].syscall / n).toFixed(2)} µs/message, JavaScript ${(totals[side].js / n).toFixed(2)} µs/message`);
  for (const [name, us] of [...functions[side]].sort((a, b) => b[1] - a[1]).slice(0, top)) console.log(`  ${(us / n).toFixed(3).padStart(7)}  ${name}`);
}
console.log(`not attributed: ${(unattributed / 1000).toFixed(0)} ms (start-up, driver between runs), garbage collector: ${(gc / 1000).toFixed(0)} ms`);
