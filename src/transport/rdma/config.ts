/**
 * The RDMA environment: which provider, which devices and ports, and the protocol's size
 * thresholds, read from environment variables and validated once. Errors name the variable
 * and the bad value.
 */
import { ErrorCode, KoalaError } from "../../errors.js";

/** Default of KOALA_RNDV_THRESH: messages above 8 KiB go by rendezvous (see PROTOCOL.md section 6). */
export const DEFAULT_RNDV_THRESH = 8192;
/** Smallest KOALA_RNDV_THRESH accepted, in bytes. */
export const MIN_RNDV_THRESH = 256;
/** Largest KOALA_RNDV_THRESH accepted, in bytes (it is also the size of every receive buffer). */
export const MAX_RNDV_THRESH = 1024 * 1024;
/** Longest KOALA_RDMA_BUSY_POLL_US accepted, in microseconds. */
export const MAX_BUSY_POLL_US = 1000;

/** One entry of a KOALA_RDMA_DEVICES list: a device name (a prefix unless exact) and an optional port. */
export interface DeviceSelector {
  /** Device name or name prefix. */
  readonly name: string;
  /** Port number, or undefined for every port. */
  readonly port: number | undefined;
}

/** A parsed KOALA_RDMA_DEVICES value (the NCCL_IB_HCA grammar). */
export interface DeviceFilter {
  /** `^` prefix: the list names devices to leave out. */
  readonly exclude: boolean;
  /** `=` prefix: names match exactly, not as prefixes. */
  readonly exact: boolean;
  /** The entries; empty means every device. */
  readonly entries: readonly DeviceSelector[];
}

/** The RDMA settings in force. */
export interface RdmaConfig {
  /** KOALA_RDMA_PROVIDER: `verbs` (default) or `soft`. */
  readonly provider: "verbs" | "soft";
  /** KOALA_RDMA_DEVICES, parsed. */
  readonly devices: DeviceFilter;
  /** KOALA_RNDV_THRESH in bytes: larger messages go by rendezvous. Default {@link DEFAULT_RNDV_THRESH}. */
  readonly rndvThreshBytes: number;
  /** KOALA_RDMA_BUSY_POLL_US: microseconds to keep polling an empty completion queue before sleeping on its notification. Default 0 (off). */
  readonly busyPollUs: number;
}

function bad(variable: string, value: string, why: string): KoalaError {
  return new KoalaError(ErrorCode.INVALID_ARGUMENT, `${variable}=${JSON.stringify(value)} is not valid: ${why}`);
}

/** Parses a KOALA_RDMA_DEVICES value: `mlx5_0:1,mlx5_1` (prefixes, optional port), `^mlx5_2` (exclude), `=mlx5_1` (exact), `^=…` (both). */
export function parseDeviceFilter(value: string | undefined): DeviceFilter {
  let rest = (value ?? "").trim();
  if (rest === "") return { exclude: false, exact: false, entries: [] };
  const exclude = rest.startsWith("^");
  if (exclude) rest = rest.slice(1);
  const exact = rest.startsWith("=");
  if (exact) rest = rest.slice(1);
  const entries: DeviceSelector[] = [];
  for (const item of rest.split(",")) {
    const m = /^([A-Za-z0-9_.-]+)(?::(\d{1,3}))?$/.exec(item.trim());
    if (m === null) throw bad("KOALA_RDMA_DEVICES", value!, `${JSON.stringify(item)} is not a device name with an optional :port`);
    const port = m[2] === undefined ? undefined : Number(m[2]);
    if (port !== undefined && (port < 1 || port > 255)) throw bad("KOALA_RDMA_DEVICES", value!, `port ${port} is not 1..255`);
    entries.push({ name: m[1]!, port });
  }
  return { exclude, exact, entries };
}

/** True when `device` port `port` passes `filter`. */
export function deviceSelected(filter: DeviceFilter, device: string, port: number): boolean {
  if (filter.entries.length === 0) return true;
  const named = filter.entries.some((e) => (filter.exact ? device === e.name : device.startsWith(e.name)) && (e.port === undefined || e.port === port));
  return filter.exclude ? !named : named;
}

function integerVar(env: NodeJS.ProcessEnv, variable: string, def: number, min: number, max: number): number {
  const raw = env[variable];
  if (raw === undefined || raw.trim() === "") return def;
  const m = /^\s*(\d+)\s*([kKmM]?)\s*$/.exec(raw);
  if (m === null) throw bad(variable, raw, `expected a whole number (optionally with K or M), from ${min} to ${max}`);
  const n = Number(m[1]) * (m[2] === "" ? 1 : m[2]!.toLowerCase() === "k" ? 1024 : 1024 * 1024);
  if (n < min || n > max) throw bad(variable, raw, `must be from ${min} to ${max}`);
  return n;
}

/** Reads and checks the RDMA variables of `env`. Throws KOALA_ERR_INVALID_ARGUMENT naming the variable and value. */
export function readRdmaConfig(env: NodeJS.ProcessEnv = process.env): RdmaConfig {
  const rawProvider = (env.KOALA_RDMA_PROVIDER ?? "").trim();
  const provider = rawProvider === "" ? "verbs" : rawProvider.toLowerCase();
  if (provider !== "verbs" && provider !== "soft") throw bad("KOALA_RDMA_PROVIDER", rawProvider, "must be verbs or soft");
  return {
    provider,
    devices: parseDeviceFilter(env.KOALA_RDMA_DEVICES),
    rndvThreshBytes: integerVar(env, "KOALA_RNDV_THRESH", DEFAULT_RNDV_THRESH, MIN_RNDV_THRESH, MAX_RNDV_THRESH),
    busyPollUs: integerVar(env, "KOALA_RDMA_BUSY_POLL_US", 0, 0, MAX_BUSY_POLL_US),
  };
}
