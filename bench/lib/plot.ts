/**
 * SVG charts of a bench:rpc run (its `--json` file), drawn here with no dependency: one
 * horizontal bar chart per measure, a bar per system (and per series, e.g. p50 and p99), on a
 * logarithmic axis when the systems differ by more than 20× (grpc-js and Connect-ES are two
 * orders of magnitude from koala on some measures). People read a chart before a table.
 */
import { writeFileSync } from "node:fs";
import { join } from "node:path";

/** The systems of a bench:rpc JSON file, in the order the charts show them, with their labels. */
const SYSTEM_LABELS: [string, string][] = [
  ["raw", "raw net.Socket"],
  ["koala-tcp", "koala tcp"],
  ["koala-unix", "koala unix"],
  ["koala-rdma", "koala rdma (soft)"],
  ["koala-rdma-native", "koala rdma (native, srnic)"],
  ["koala-tls", "koala tls"],
  ["grpc", "grpc-js"],
  ["grpc-tls", "grpc-js tls"],
  ["connect", "Connect-ES"],
];

/** A bench:rpc JSON file's per-system medians: `systems[name][metric].median`. */
export interface RpcResults {
  machine: { cpu: string; cores: number; node: string; date: string; loadAtStart: number; loadAtEnd: number };
  systems: Record<string, Record<string, { median: number }>>;
}

interface Series {
  label: string;
  /** Metric names summed for one bar (e.g. client + server CPU). */
  metrics: string[];
}

interface Chart {
  file: string;
  title: string;
  unit: string;
  /** Whether a longer bar is better (rates) or worse (latency, CPU): said in the subtitle. */
  higherIsBetter: boolean;
  series: Series[];
}

const CHARTS: Chart[] = [
  { file: "rpc-latency.svg", title: "64 B unary, 1 in flight: latency", unit: "µs", higherIsBetter: false, series: [{ label: "p50", metrics: ["p50"] }, { label: "p99", metrics: ["p99"] }] },
  { file: "rpc-calls.svg", title: "64 B unary, 256 in flight on one connection", unit: "calls/s", higherIsBetter: true, series: [{ label: "calls/s", metrics: ["calls"] }] },
  { file: "rpc-stream.svg", title: "64 B messages on one bidirectional stream", unit: "msg/s", higherIsBetter: true, series: [{ label: "msg/s", metrics: ["stream"] }] },
  { file: "rpc-mbps.svg", title: "1 MiB unary, 4 in flight", unit: "MB/s", higherIsBetter: true, series: [{ label: "MB/s", metrics: ["mbps"] }] },
  {
    file: "rpc-cpu.svg",
    title: "CPU per call, 64 B unary, 256 in flight (client + server)",
    unit: "µs",
    higherIsBetter: false,
    series: [
      { label: "whole processes", metrics: ["cpu.calls.client", "cpu.calls.server"] },
      { label: "JavaScript threads", metrics: ["jscpu.calls.client", "jscpu.calls.server"] },
    ],
  },
];

const COLORS = ["#2f6db5", "#e0803a", "#4a9a5b"];
const ROW_HEIGHT = 18;
const LABEL_WIDTH = 190;
const PLOT_WIDTH = 460;
const VALUE_WIDTH = 90;

function escapeXml(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
}

function formatValue(v: number): string {
  if (v >= 10_000) return Math.round(v).toLocaleString("en-US");
  if (v >= 100) return v.toFixed(0);
  if (v >= 10) return v.toFixed(1);
  return v.toFixed(2);
}

/** One chart as SVG text, or undefined when no system of the run measured it. */
export function renderChart(chart: Chart, results: RpcResults): string | undefined {
  const value = (system: string, s: Series): number | undefined => {
    const m = results.systems[system];
    if (m === undefined) return undefined;
    let sum = 0;
    for (const metric of s.metrics) {
      const v = m[metric]?.median;
      if (v === undefined || !Number.isFinite(v)) return undefined;
      sum += v;
    }
    return sum;
  };
  const systems = SYSTEM_LABELS.filter(([name]) => chart.series.some((s) => value(name, s) !== undefined));
  if (systems.length === 0) return undefined;
  const all = systems.flatMap(([name]) => chart.series.map((s) => value(name, s))).filter((v): v is number => v !== undefined && v > 0);
  const max = Math.max(...all);
  const min = Math.min(...all);
  const log = max / min > 20;
  // Log axis from a power of ten below the smallest value, so the smallest bar still shows.
  const floor = log ? 10 ** Math.floor(Math.log10(min) - 0.3) : 0;
  const scale = (v: number): number => (log ? (Math.log10(v) - Math.log10(floor)) / (Math.log10(max) - Math.log10(floor)) : v / max) * PLOT_WIDTH;
  const groupHeight = chart.series.length * ROW_HEIGHT + 8;
  const top = 52;
  const height = top + systems.length * groupHeight + 34;
  const width = LABEL_WIDTH + PLOT_WIDTH + VALUE_WIDTH + 20;
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="system-ui, sans-serif" font-size="12">`,
    `<rect width="100%" height="100%" fill="#fff"/>`,
    `<text x="10" y="20" font-size="14" font-weight="bold">${escapeXml(chart.title)}</text>`,
    `<text x="10" y="38" fill="#555">${escapeXml(`${chart.unit}, ${chart.higherIsBetter ? "longer is better" : "shorter is better"}${log ? ", logarithmic axis" : ""}`)}</text>`,
  ];
  systems.forEach(([name, label], i) => {
    const y0 = top + i * groupHeight;
    out.push(`<text x="${LABEL_WIDTH - 8}" y="${y0 + (chart.series.length * ROW_HEIGHT) / 2 + 4}" text-anchor="end"${name.startsWith("koala") ? ' font-weight="bold"' : ""}>${escapeXml(label)}</text>`);
    chart.series.forEach((s, k) => {
      const v = value(name, s);
      const y = y0 + k * ROW_HEIGHT;
      if (v === undefined) return;
      const w = Math.max(1, scale(Math.max(v, floor || v)));
      out.push(`<rect x="${LABEL_WIDTH}" y="${y + 2}" width="${w.toFixed(1)}" height="${ROW_HEIGHT - 4}" fill="${COLORS[k % COLORS.length]}"/>`);
      out.push(`<text x="${(LABEL_WIDTH + w + 4).toFixed(1)}" y="${y + ROW_HEIGHT - 5}" fill="#222">${escapeXml(formatValue(v))}</text>`);
    });
  });
  const legendY = height - 14;
  chart.series.forEach((s, k) => {
    const x = LABEL_WIDTH + k * 150;
    out.push(`<rect x="${x}" y="${legendY - 9}" width="10" height="10" fill="${COLORS[k % COLORS.length]}"/>`, `<text x="${x + 14}" y="${legendY}">${escapeXml(s.label)}</text>`);
  });
  const m = results.machine;
  out.push(`<text x="${width - 8}" y="${legendY}" text-anchor="end" fill="#777" font-size="10">${escapeXml(`${m.cores} cores, Node ${m.node}, ${m.date.slice(0, 10)}`)}</text>`);
  out.push("</svg>");
  return out.join("\n") + "\n";
}

/** Writes every chart the run has data for into `dir`; returns the files written. */
export function writeCharts(results: RpcResults, dir: string): string[] {
  const written: string[] = [];
  for (const chart of CHARTS) {
    const svg = renderChart(chart, results);
    if (svg === undefined) continue;
    const path = join(dir, chart.file);
    writeFileSync(path, svg);
    written.push(path);
  }
  return written;
}
