/** Output of the RPC benchmark: the machine it ran on, number formatting, a text table. */
import os from "node:os";

/** What the reader needs to judge the numbers: CPU, cores, Node, OS, date and load. */
export interface MachineInfo {
  cpu: string;
  cores: number;
  memoryGiB: number;
  node: string;
  os: string;
  date: string;
  /** 1-minute load average when the run started (a busy machine means noisy numbers). */
  loadAtStart: number;
}

/** Describes this machine now. */
export function machineInfo(): MachineInfo {
  const cpus = os.cpus();
  return {
    cpu: cpus[0]?.model.trim() || "unknown CPU",
    cores: os.availableParallelism(),
    memoryGiB: Math.round(os.totalmem() / 2 ** 30),
    node: process.version,
    os: `${os.platform()} ${os.release()} ${os.arch()}`,
    date: new Date().toISOString().replace("T", " ").slice(0, 19) + " UTC",
    loadAtStart: os.loadavg()[0]!,
  };
}

/** `x` with thousands separators and `digits` decimals; a dash for NaN. */
export function fmt(x: number, digits = 0): string {
  return Number.isFinite(x) ? x.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits }) : "—";
}

/** A ratio as `1.23×`, with more digits when it is small; a dash for NaN. */
export function ratio(x: number): string {
  if (!Number.isFinite(x)) return "—";
  return `${x.toFixed(x >= 10 ? 1 : x >= 0.1 ? 2 : 3)}×`;
}

/** A Markdown-style table: first column left-aligned, the others right-aligned. */
export function table(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (r: readonly string[]) => `| ${widths.map((w, i) => (i === 0 ? (r[i] ?? "").padEnd(w) : (r[i] ?? "").padStart(w))).join(" | ")} |`;
  const rule = `|${widths.map((w, i) => (i === 0 ? `:${"-".repeat(w + 1)}` : `${"-".repeat(w + 1)}:`)).join("|")}|`;
  return [line(header), rule, ...rows.map(line)].join("\n");
}
