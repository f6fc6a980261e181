/**
 * Codec benchmark: encode + decode of a mid-size message (a trace export with 50 spans, see
 * codec/trace.proto) by koala's generated code, protobufjs (reflection, as @grpc/proto-loader
 * uses it) and @bufbuild/protobuf (its runtime over the same descriptors), in one process.
 * Systems alternate within each round; the ratio is the median of per-round ratios.
 *
 * `npm run bench:codec`; CODEC_ROUNDS (default 7) and CODEC_MS (per system per round,
 * default 400) set the length.
 */
import { execFileSync } from "node:child_process";
import { join } from "node:path";
import protobuf from "protobufjs";
import { create, createFileRegistry, fromBinary, toBinary } from "@bufbuild/protobuf";
import { FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";
import { ExportTraceServiceRequest, Span_SpanKind, Status_StatusCode, type AnyValue, type KeyValue, type Span } from "./codec/gen/trace.js";
import { fmt, machineInfo, median, table } from "./lib/stats.js";

const here = new URL(".", import.meta.url).pathname;
const rounds = Number(process.env.CODEC_ROUNDS ?? 7);
const ms = Number(process.env.CODEC_MS ?? 400);
const SPANS = 50;

// ---------------------------------------------------------------------------------------------
// The message, in koala's shape (bufbuild's is the same).

function id(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (seed * 31 + i * 7) & 0xff;
  return b;
}

const str = (value: string): AnyValue => ({ value: { case: "stringValue", value } });
const attr = (key: string, value: AnyValue): KeyValue => ({ key, value });

function span(i: number): Span {
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
      attr("http.status_code", { value: { case: "intValue", value: 200n } }),
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

const message = ExportTraceServiceRequest.create({
  resourceSpans: [
    {
      resource: { attributes: [attr("service.name", str("checkout")), attr("service.version", str("1.4.2")), attr("host.name", str("node-17"))], droppedAttributesCount: 0 },
      scopeSpans: [{ scope: { name: "koala-bench", version: "1.0.0", attributes: [], droppedAttributesCount: 0 }, spans: Array.from({ length: SPANS }, (_, i) => span(i)), schemaUrl: "" }],
      schemaUrl: "https://opentelemetry.io/schemas/1.21.0",
    },
  ],
});

// ---------------------------------------------------------------------------------------------
// The three systems, each with its message prepared in its own form.

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
const pbMessage = PbRequest.fromObject(toPbjs(message) as Record<string, unknown>);

const set = execFileSync(join(here, "../node_modules/.bin/buf"), ["build", join(here, "codec"), "--as-file-descriptor-set", "-o", "-"]);
const BufRequest = createFileRegistry(fromBinary(FileDescriptorSetSchema, set)).getMessage("bench.trace.ExportTraceServiceRequest")!;
const bufMessage = create(BufRequest, message as never);

interface System {
  name: string;
  /** One encode + decode; returns the encoded length. */
  once(): number;
}

const systems: System[] = [
  { name: "koala", once: () => ExportTraceServiceRequest.decode(ExportTraceServiceRequest.encode(message)).resourceSpans.length },
  { name: "protobufjs", once: () => (PbRequest.decode(PbRequest.encode(pbMessage).finish()) as unknown as { resourceSpans: unknown[] }).resourceSpans.length },
  { name: "bufbuild", once: () => (fromBinary(BufRequest, toBinary(BufRequest, bufMessage)) as unknown as { resourceSpans: unknown[] }).resourceSpans.length },
];

// The three encodings must agree before anything is timed.
const sizes = [ExportTraceServiceRequest.encode(message).byteLength, PbRequest.encode(pbMessage).finish().byteLength, toBinary(BufRequest, bufMessage).byteLength];
if (new Set(sizes).size !== 1) throw new Error(`the systems encode different sizes: ${sizes.join(", ")}`);
if (ExportTraceServiceRequest.decode(toBinary(BufRequest, bufMessage)).resourceSpans[0]!.scopeSpans[0]!.spans.length !== SPANS) throw new Error("koala misread bufbuild's encoding");

if (process.env.CODEC_SPLIT === "1") {
  // Encode and decode apart, for profiling.
  const kb = ExportTraceServiceRequest.encode(message);
  const pb = PbRequest.encode(pbMessage).finish();
  systems.push(
    { name: "koala encode", once: () => ExportTraceServiceRequest.encode(message).byteLength },
    { name: "koala decode", once: () => ExportTraceServiceRequest.decode(kb).resourceSpans.length },
    { name: "protobufjs encode", once: () => PbRequest.encode(pbMessage).finish().byteLength },
    { name: "protobufjs decode", once: () => (PbRequest.decode(pb) as unknown as { resourceSpans: unknown[] }).resourceSpans.length },
  );
}

function timed(s: System, durationMs: number): number {
  let n = 0;
  const start = performance.now();
  const end = start + durationMs;
  let now = start;
  while (now < end) {
    for (let i = 0; i < 16; i++) s.once();
    n += 16;
    now = performance.now();
  }
  return n / ((now - start) / 1000);
}

for (const s of systems) timed(s, Math.min(ms, 300)); // warm-up
const perRound: number[][] = systems.map(() => []);
for (let r = 0; r < rounds; r++) {
  // Rotate the order so no system always runs first.
  for (let k = 0; k < systems.length; k++) {
    const i = (k + r) % systems.length;
    perRound[i]!.push(timed(systems[i]!, ms));
  }
}

const m = machineInfo();
console.log(`codec: encode + decode of a ${sizes[0]}-byte trace export (${SPANS} spans); ${rounds} rounds × ${ms} ms per system, alternating`);
console.log(`${m.cpu} × ${m.cores}, Node ${m.node}, ${m.os}, ${m.date}\n`);
const koala = perRound[0]!;
console.log(
  table(
    ["system", "ops/s (median)", "MB/s", "koala ÷ system (median of rounds)"],
    systems.map((s, i) => {
      const ops = median(perRound[i]!);
      const ratio = median(perRound[i]!.map((x, r) => koala[r]! / x));
      return [s.name, fmt(ops), fmt((ops * sizes[0]!) / 1e6, 1), i === 0 ? "—" : `${fmt(ratio, 2)}×`];
    }),
  ),
);
