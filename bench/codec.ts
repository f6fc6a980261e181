/**
 * Codec benchmark: encode, decode, and encode + decode of two trace exports with 50 spans each
 * (codec/trace.proto, OpenTelemetry's shape) by koala's generated code, protobufjs (reflection,
 * as @grpc/proto-loader uses it) and @bufbuild/protobuf (its runtime over the same
 * descriptors), in one process:
 * - `simple`: short ASCII strings, fixed ids, few nested values (the original payload);
 * - `realistic`: generated here from a seeded random source (not hand-picked): attribute
 *   values in several scripts (accents, Cyrillic, CJK, emoji), random 16- and 8-byte ids,
 *   SQL statements and stack traces, array and key-value-list attributes nested two deep,
 *   events and links with their own attributes.
 * The three systems of one payload and operation take turns in 25 ms slices; a ratio is the
 * median of per-round ratios. The three
 * encodings are checked to agree (same bytes from koala and bufbuild, same length from all
 * three) and every decoder's output is checked against the message before anything is timed.
 *
 * `npm run bench:codec [-- --json FILE]`; CODEC_ROUNDS (default 7) and CODEC_MS (per system
 * per round, default 250) set the length; CODEC_ONLY, a regular expression, keeps the
 * payload-and-operation groups whose name ("realistic, encode + decode") it matches (all three
 * systems of a group always run together; goals of groups left out are not reported).
 */
import { execFileSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import protobuf from "protobufjs";
import { create, createFileRegistry, fromBinary, toBinary } from "@bufbuild/protobuf";
import { FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";
import { ExportTraceServiceRequest, Span_SpanKind, Status_StatusCode, type AnyValue, type KeyValue, type Span } from "./codec/gen/trace.js";
import { fmt, machineInfo, median, table } from "./lib/stats.js";
import { seededRandom } from "../src/random.js";

const here = new URL(".", import.meta.url).pathname;
const rounds = Number(process.env.CODEC_ROUNDS ?? 7);
const ms = Number(process.env.CODEC_MS ?? 250);
const jsonIndex = process.argv.indexOf("--json");
const jsonFile = jsonIndex === -1 ? undefined : process.argv[jsonIndex + 1];
const SPANS = 50;

// ---------------------------------------------------------------------------------------------
// The simple payload (koala's shape; bufbuild's is the same).

function id(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (seed * 31 + i * 7) & 0xff;
  return b;
}

const str = (value: string): AnyValue => ({ value: { case: "stringValue", value } });
const int = (value: bigint): AnyValue => ({ value: { case: "intValue", value } });
const attr = (key: string, value: AnyValue): KeyValue => ({ key, value });

function simpleSpan(i: number): Span {
  const start = 1_700_000_000_000_000_000n + BigInt(i) * 1_000_000n;
  return {
    traceId: id(16, 1),
    spanId: id(8, i + 2),
    traceState: "",
    parentSpanId: i === 0 ? new Uint8Array(0) : id(8, i + 1),
    name: `GET /api/v1/orders/${i}`,
    kind: i % 2 === 0 ? Span_SpanKind.SPAN_KIND_SERVER : Span_SpanKind.SPAN_KIND_CLIENT,
    startTimeUnixNano: start,
    endTimeUnixNano: start + 1_234_567n,
    attributes: [
      attr("http.method", str("GET")),
      attr("http.route", str("/api/v1/orders/:id")),
      attr("http.status_code", int(200n)),
      attr("net.peer.name", str("orders.internal.example")),
      attr("retry", { value: { case: "boolValue", value: i % 5 === 0 } }),
      attr("duration_ratio", { value: { case: "doubleValue", value: i / 7 } }),
    ],
    droppedAttributesCount: 0,
    events: i % 3 === 0 ? [{ timeUnixNano: start + 500n, name: "cache miss", attributes: [attr("key", str(`order:${i}`))], droppedAttributesCount: 0 }] : [],
    droppedEventsCount: 0,
    links: i % 10 === 0 ? [{ traceId: id(16, 9), spanId: id(8, 9), traceState: "", attributes: [], droppedAttributesCount: 0, flags: 1 }] : [],
    droppedLinksCount: 0,
    status: { message: i % 17 === 0 ? "upstream timeout" : "", code: i % 17 === 0 ? Status_StatusCode.STATUS_CODE_ERROR : Status_StatusCode.STATUS_CODE_OK },
    flags: 1,
  };
}

function simple(): ExportTraceServiceRequest {
  return ExportTraceServiceRequest.create({
    resourceSpans: [
      {
        resource: { attributes: [attr("service.name", str("checkout")), attr("service.version", str("1.4.2")), attr("host.name", str("node-17"))], droppedAttributesCount: 0 },
        scopeSpans: [{ scope: { name: "koala-bench", version: "1.0.0", attributes: [], droppedAttributesCount: 0 }, spans: Array.from({ length: SPANS }, (_, i) => simpleSpan(i)), schemaUrl: "" }],
        schemaUrl: "https://opentelemetry.io/schemas/1.21.0",
      },
    ],
  });
}

// ---------------------------------------------------------------------------------------------
// The realistic payload, drawn from a seeded generator (the same bytes on every run).

function realistic(): ExportTraceServiceRequest {
  const rand = seededRandom(20261207);
  const below = (n: number) => Math.floor(rand() * n);
  const pick = <T>(xs: readonly T[]): T => xs[below(xs.length)]!;
  const bytes = (n: number) => Uint8Array.from({ length: n }, () => below(256));
  // Words in the scripts a real service's attributes carry: user names, product names, cities, messages.
  const words = [
    "order", "payment", "checkout", "café", "crème", "brûlée", "Straße", "Müller", "Ærøskøbing", "São", "Paulo", "naïve", "jalapeño",
    "Москва", "заказ", "оплата", "東京", "注文", "支払い", "北京", "서울", "주문", "Αθήνα", "παραγγελία", "İstanbul", "şifre", "Kraków", "żółw",
    "🚀", "✅", "📦", "retry", "timeout", "upstream", "cache", "inventory", "shipping", "user", "session", "region", "eu-west-1",
  ];
  const phrase = (n: number) => Array.from({ length: n }, () => pick(words)).join(" ");
  const ident = () => Array.from({ length: 1 + below(3) }, () => pick(["http", "db", "net", "rpc", "app", "user", "cart", "peer", "messaging"])).join(".") + "." + pick(["name", "id", "method", "status", "statement", "system", "route", "size", "region", "locale"]);
  const sql = () =>
    `SELECT ${Array.from({ length: 2 + below(6) }, () => pick(["id", "customer_id", "total", "currency", "created_at", "status", "address_line1", "city"])).join(", ")} FROM ${pick(["orders", "customers", "line_items", "payments"])} WHERE ${pick(["id", "customer_id", "status"])} = $1 AND city = '${pick(words)}' LIMIT ${1 + below(100)}`;
  const stack = () =>
    Array.from({ length: 3 + below(6) }, () => `    at ${pick(["handleOrder", "chargeCard", "reserveStock", "Object.<anonymous>", "processTicksAndRejections"])} (/srv/app/${pick(["orders", "payments", "inventory"])}/${pick(["index", "handler", "client"])}.js:${1 + below(900)}:${1 + below(80)})`).join("\n");
  const scalar = (): AnyValue => {
    switch (below(6)) {
      case 0:
      case 1:
        return str(phrase(1 + below(4)));
      case 2:
        return int(BigInt(below(1_000_000)) * (below(2) === 0 ? 1n : 1_000_003n));
      case 3:
        return { value: { case: "doubleValue", value: rand() * 1000 } };
      case 4:
        return { value: { case: "boolValue", value: below(2) === 0 } };
      default:
        return { value: { case: "bytesValue", value: bytes(4 + below(28)) } };
    }
  };
  const value = (depth: number): AnyValue => {
    const r = below(10);
    if (depth < 2 && r === 0) return { value: { case: "arrayValue", value: { values: Array.from({ length: 1 + below(4) }, () => value(depth + 1)) } } };
    if (depth < 2 && r === 1) return { value: { case: "kvlistValue", value: { values: Array.from({ length: 1 + below(4) }, () => attr(ident(), value(depth + 1))) } } };
    return scalar();
  };
  const attributes = (n: number): KeyValue[] => Array.from({ length: n }, () => attr(ident(), value(0)));
  const traces = Array.from({ length: 4 }, () => bytes(16));
  const base = 1_700_000_000_000_000_000n + BigInt(below(1_000_000_000));
  const span = (): Span => {
    const start = base + BigInt(below(1_000_000_000));
    const error = below(8) === 0;
    return {
      traceId: pick(traces),
      spanId: bytes(8),
      traceState: below(4) === 0 ? `vendor=${phrase(1)}` : "",
      parentSpanId: below(5) === 0 ? new Uint8Array(0) : bytes(8),
      name: `${pick(["GET", "POST", "PUT"])} /api/v${1 + below(3)}/${pick(["orders", "users", "produits", "注文", "заказы"])}/{id}`,
      kind: (1 + below(3)) as Span_SpanKind,
      startTimeUnixNano: start,
      endTimeUnixNano: start + BigInt(below(50_000_000)),
      attributes: [
        attr("db.statement", str(sql())),
        attr("user.name", str(phrase(2))),
        attr("http.status_code", int(BigInt(pick([200, 201, 204, 404, 500])))),
        ...attributes(3 + below(6)),
      ],
      droppedAttributesCount: below(4) === 0 ? below(5) : 0,
      events: Array.from({ length: below(3) }, () => ({
        timeUnixNano: start + BigInt(below(1_000_000)),
        name: error ? "exception" : phrase(2),
        attributes: error ? [attr("exception.message", str(phrase(5))), attr("exception.stacktrace", str(stack()))] : attributes(1 + below(3)),
        droppedAttributesCount: 0,
      })),
      droppedEventsCount: 0,
      links: Array.from({ length: below(4) === 0 ? 1 + below(2) : 0 }, () => ({ traceId: pick(traces), spanId: bytes(8), traceState: "", attributes: attributes(below(3)), droppedAttributesCount: 0, flags: 1 })),
      droppedLinksCount: 0,
      status: { message: error ? phrase(3) : "", code: error ? Status_StatusCode.STATUS_CODE_ERROR : Status_StatusCode.STATUS_CODE_OK },
      flags: 1,
    };
  };
  return ExportTraceServiceRequest.create({
    resourceSpans: [
      {
        resource: { attributes: [attr("service.name", str("checkout")), attr("service.instance.id", str("ä7f3-bb21")), attr("host.name", str(`node-${below(100)}`)), ...attributes(4)], droppedAttributesCount: 0 },
        scopeSpans: [{ scope: { name: "@opentelemetry/instrumentation-http", version: "0.52.1", attributes: [], droppedAttributesCount: 0 }, spans: Array.from({ length: SPANS }, span), schemaUrl: "" }],
        schemaUrl: "https://opentelemetry.io/schemas/1.21.0",
      },
    ],
  });
}

// ---------------------------------------------------------------------------------------------
// The three systems, each with the message prepared in its own form.

/** protobufjs' plain-object form: a oneof's field set directly, 64-bit integers as decimal strings. */
function toPbjs(v: unknown): unknown {
  if (typeof v === "bigint") return v.toString();
  if (v instanceof Uint8Array || v === null || typeof v !== "object") return v;
  if (Array.isArray(v)) return v.map(toPbjs);
  const out: Record<string, unknown> = {};
  for (const [k, x] of Object.entries(v)) {
    if (x !== null && typeof x === "object" && "case" in x) {
      const c = (x as { case?: string; value?: unknown }).case;
      if (c !== undefined) out[c] = toPbjs((x as { value: unknown }).value);
    } else out[k] = toPbjs(x);
  }
  return out;
}

const pbRoot = protobuf.loadSync(join(here, "codec/trace.proto"));
const PbRequest = pbRoot.lookupType("bench.trace.ExportTraceServiceRequest");
const set = execFileSync(join(here, "../node_modules/.bin/buf"), ["build", join(here, "codec"), "--as-file-descriptor-set", "-o", "-"]);
const BufRequest = createFileRegistry(fromBinary(FileDescriptorSetSchema, set)).getMessage("bench.trace.ExportTraceServiceRequest")!;

interface Op {
  payload: string;
  op: "encode" | "decode" | "encode + decode";
  system: "koala" | "protobufjs" | "bufbuild";
  /** One operation; returns something that depends on its result, so it cannot be skipped. */
  once(): number;
}

const ops: Op[] = [];
const sizes: Record<string, number> = {};
for (const [payload, message] of [["simple", simple()], ["realistic", realistic()]] as const) {
  const pbMessage = PbRequest.fromObject(toPbjs(message) as Record<string, unknown>);
  const bufMessage = create(BufRequest, message as never);
  const kb = ExportTraceServiceRequest.encode(message);
  const pb = PbRequest.encode(pbMessage).finish();
  const bb = toBinary(BufRequest, bufMessage);
  // The encodings must agree, and every decoder must read back what was written, before anything is timed.
  if (kb.byteLength !== pb.byteLength || Buffer.compare(kb, bb) !== 0) throw new Error(`${payload}: the systems encode differently (${kb.byteLength}, ${pb.byteLength}, ${bb.byteLength} bytes)`);
  if (Buffer.compare(ExportTraceServiceRequest.encode(ExportTraceServiceRequest.decode(pb)), kb) !== 0) throw new Error(`${payload}: koala misread protobufjs's encoding`);
  if (Buffer.compare(toBinary(BufRequest, fromBinary(BufRequest, kb)), kb) !== 0) throw new Error(`${payload}: bufbuild misread koala's encoding`);
  if (Buffer.compare(PbRequest.encode(PbRequest.decode(kb)).finish(), kb) !== 0) throw new Error(`${payload}: protobufjs misread koala's encoding`);
  sizes[payload] = kb.byteLength;
  const spans = (m: unknown) => (m as { resourceSpans: unknown[] }).resourceSpans.length;
  ops.push(
    { payload, op: "encode", system: "koala", once: () => ExportTraceServiceRequest.encode(message).byteLength },
    { payload, op: "encode", system: "protobufjs", once: () => PbRequest.encode(pbMessage).finish().byteLength },
    { payload, op: "encode", system: "bufbuild", once: () => toBinary(BufRequest, bufMessage).byteLength },
    { payload, op: "decode", system: "koala", once: () => ExportTraceServiceRequest.decode(kb).resourceSpans.length },
    { payload, op: "decode", system: "protobufjs", once: () => spans(PbRequest.decode(pb)) },
    { payload, op: "decode", system: "bufbuild", once: () => spans(fromBinary(BufRequest, bb)) },
    { payload, op: "encode + decode", system: "koala", once: () => ExportTraceServiceRequest.decode(ExportTraceServiceRequest.encode(message)).resourceSpans.length },
    { payload, op: "encode + decode", system: "protobufjs", once: () => spans(PbRequest.decode(PbRequest.encode(pbMessage).finish())) },
    { payload, op: "encode + decode", system: "bufbuild", once: () => spans(fromBinary(BufRequest, toBinary(BufRequest, bufMessage))) },
  );
}

// CODEC_ONLY: whole groups of three (koala, protobufjs, bufbuild) are kept or dropped together.
const only = process.env.CODEC_ONLY === undefined ? undefined : new RegExp(process.env.CODEC_ONLY);
if (only !== undefined) {
  const kept = ops.filter((o) => only.test(`${o.payload}, ${o.op}`));
  if (kept.length === 0) throw new Error(`CODEC_ONLY=${process.env.CODEC_ONLY} matches no payload and operation`);
  ops.splice(0, ops.length, ...kept);
}

let sink = 0;
/** Operations per second of `o` over `durationMs` (the warm-up). */
function timed(o: Op, durationMs: number): number {
  let n = 0;
  const start = performance.now();
  const end = start + durationMs;
  let now = start;
  while (now < end) {
    for (let i = 0; i < 8; i++) sink += o.once();
    n += 8;
    now = performance.now();
  }
  return n / ((now - start) / 1000);
}

for (const o of ops) timed(o, Math.min(ms, 200)); // warm-up
// The machine's noise comes in bursts longer than a slice: the three systems of one payload
// and operation take turns in short slices (a b c c b a …), so each round's ratios compare
// runs from the same fraction of a second.
const SLICE_MS = 25;
const perRound: number[][] = ops.map(() => []);
for (let r = 0; r < rounds; r++) {
  for (let g = 0; g < ops.length; g += 3) {
    const counts = [0, 0, 0];
    const times = [0, 0, 0];
    for (let t = 0; t < ms; t += SLICE_MS) {
      const forward = (t / SLICE_MS) % 2 === 0;
      for (let k = 0; k < 3; k++) {
        const j = forward ? k : 2 - k;
        const o = ops[g + j]!;
        const start = performance.now();
        const end = start + SLICE_MS;
        let now = start;
        let n = 0;
        while (now < end) {
          for (let i = 0; i < 4; i++) sink += o.once();
          n += 4;
          now = performance.now();
        }
        counts[j]! += n;
        times[j]! += now - start;
      }
    }
    for (let j = 0; j < 3; j++) perRound[g + j]!.push(counts[j]! / (times[j]! / 1000));
  }
}
if (sink === 0) throw new Error("nothing was decoded");

/** Median over rounds of koala's rate ÷ `system`'s rate for one payload and operation. */
function ratio(payload: string, op: Op["op"], system: Op["system"]): number {
  const k = ops.findIndex((o) => o.payload === payload && o.op === op && o.system === "koala");
  const s = ops.findIndex((o) => o.payload === payload && o.op === op && o.system === system);
  return median(perRound[k]!.map((x, r) => x / perRound[s]![r]!));
}

const m = machineInfo();
console.log(`codec: trace exports of ${SPANS} spans: simple ${sizes.simple} B, realistic ${sizes.realistic} B; ${rounds} rounds × ${ms} ms per system and operation, in ${SLICE_MS} ms slices`);
console.log(`${m.cpu} × ${m.cores}, Node ${m.node}, ${m.os}, ${m.date}\n`);
console.log(
  table(
    ["payload, operation", "system", "ops/s (median)", "MB/s", "koala ÷ system (median of rounds)"],
    ops.map((o, i) => {
      const rate = median(perRound[i]!);
      return [`${o.payload}, ${o.op}`, o.system, fmt(rate), fmt((rate * sizes[o.payload]!) / 1e6, 1), o.system === "koala" ? "—" : `${fmt(ratio(o.payload, o.op, o.system), 2)}×`];
    }),
  ),
);

// The goals (issue 17), on both payloads.
const goals: { goal: string; value: number; target: number }[] = [];
for (const payload of ["simple", "realistic"]) {
  const has = (op: Op["op"]) => ops.some((o) => o.payload === payload && o.op === op);
  if (!has("decode") || !has("encode + decode")) continue;
  goals.push(
    { goal: `${payload}: decode, koala ÷ protobufjs`, value: ratio(payload, "decode", "protobufjs"), target: 1.5 },
    { goal: `${payload}: encode + decode, koala ÷ protobufjs`, value: ratio(payload, "encode + decode", "protobufjs"), target: 1.5 },
    { goal: `${payload}: encode + decode, koala ÷ bufbuild`, value: ratio(payload, "encode + decode", "bufbuild"), target: 2.5 },
  );
}
console.log("\ngoals (issue 17):");
for (const g of goals) console.log(`  ${g.goal}: ${fmt(g.value, 2)}× (goal ≥ ${g.target}×) ${g.value >= g.target ? "met" : "NOT met"}`);

if (jsonFile !== undefined) {
  const results = ops.map((o, i) => ({ payload: o.payload, op: o.op, system: o.system, opsPerSecond: median(perRound[i]!), rounds: perRound[i] }));
  writeFileSync(jsonFile, JSON.stringify({ machine: m, sizes, rounds, ms, results, goals }, null, 2) + "\n");
}
