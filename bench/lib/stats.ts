/** Small statistics and formatting helpers for the bench report. */
import os from "node:os";

/** Median of `xs` (NaN when empty). */
export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const mid = s.length >> 1;
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/** The `q` quantile (0..1) of ascending `sorted`, nearest rank (NaN when empty). */
export function quantile(sorted: ArrayLike<number>, q: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))]!;
}

/** The machine and run date, for the report: CPU model, cores, memory, Node version, OS. */
export function machineInfo(): { cpu: string; cores: number; memoryGiB: number; node: string; os: string; date: string } {
  const cpus = os.cpus();
  return {
    cpu: cpus[0]?.model.trim() ?? "unknown CPU",
    cores: cpus.length,
    memoryGiB: Math.round(os.totalmem() / 2 ** 30),
    node: process.version,
    os: `${os.platform()} ${os.release()}`,
    date: new Date().toISOString().replace(/\.\d+Z$/, "Z"),
  };
}

/** `x` with thousands separators and `digits` decimals; "—" for NaN. */
export function fmt(x: number, digits = 0): string {
  return Number.isFinite(x) ? x.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits }) : "—";
}

/** A Markdown table: the first column left-aligned, the others right-aligned. */
export function table(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (r: readonly string[]) => `| ${widths.map((w, i) => (i < 2 ? (r[i] ?? "").padEnd(w) : (r[i] ?? "").padStart(w))).join(" | ")} |`;
  const rule = `|${widths.map((w, i) => (i < 2 ? `:${"-".repeat(w + 1)}` : `${"-".repeat(w + 1)}:`)).join("|")}|`;
  return [line(header), rule, ...rows.map(line)].join("\n");
}
