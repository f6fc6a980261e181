/**
 * The `verbs` provider (KOALA_RDMA_PROVIDER=verbs, the default): RDMA NICs through the native
 * addon over libibverbs and librdmacm (native-context.ts). It lists devices and ports through
 * the addon, says why it cannot be used when no port is active (or the addon or the libraries
 * are missing), and otherwise opens the device with librdmacm's context, on which the
 * connection manager creates and connects the queue pairs. KOALA_VERBS_LIB /
 * KOALA_RDMACM_LIB may name the software RNIC srnic, which stands in for both libraries.
 */
import { ErrorCode, KoalaError } from "../../errors.js";
import { NativeContext } from "./native-context.js";
import { nativeVerbs, type RawDevice, type RawPort } from "./native.js";
import type { DeviceInfo, PortInfo, PortState, VerbsProvider } from "./verbs.js";

/** How long a device listing is reused before the devices are queried again, in milliseconds. */
export const DEVICE_LIST_TTL_MS = 1000;

const STATES: readonly PortState[] = ["down", "down", "init", "armed", "active", "active"];

function portInfo(p: RawPort): PortInfo | undefined {
  if (p.error !== undefined) return undefined;
  const mtuCode = p.activeMtu ?? 0;
  return {
    port: p.port,
    // 0 is IBV_PORT_NOP, 5 IBV_PORT_ACTIVE_DEFER (active, with errors deferred).
    state: STATES[p.state ?? 0] ?? "down",
    linkLayer: p.linkLayer === 2 ? "Ethernet" : "InfiniBand",
    mtu: mtuCode >= 1 && mtuCode <= 5 ? 128 << mtuCode : 0,
    gid: p.gid ?? "::",
  };
}

/** Maps the addon's description of a device onto {@link DeviceInfo}; undefined for a device that could not be queried. */
export function deviceInfo(raw: RawDevice): DeviceInfo | undefined {
  if (raw.error !== undefined) return undefined;
  return {
    name: raw.name,
    provider: "verbs",
    // rxe (Soft-RoCE) and siw (soft iWARP) are the kernel's software devices.
    software: /^(rxe|siw)/.test(raw.name),
    ports: (raw.ports ?? []).map(portInfo).filter((p): p is PortInfo => p !== undefined),
    maxSge: raw.maxSge ?? 0,
    maxQpWr: raw.maxQpWr ?? 0,
    maxInlineData: Math.max(0, raw.maxInlineData ?? 0),
    maxCqe: raw.maxCqe ?? 0,
    maxMrBytes: raw.maxMrSize ?? 0,
  };
}

/** Why none of `raw` can carry a connection ("no RDMA device", "port 1 of mlx5_0 is DOWN", …), or undefined when a port is active. */
export function devicesReason(raw: readonly RawDevice[]): string | undefined {
  if (raw.length === 0) return "no RDMA device";
  const why: string[] = [];
  for (const d of raw) {
    if (d.error !== undefined) {
      why.push(`${d.name}: ${d.error}`);
      continue;
    }
    if ((d.ports ?? []).length === 0) why.push(`${d.name} has no port`);
    for (const p of d.ports ?? []) {
      const info = portInfo(p);
      if (info === undefined) why.push(`port ${p.port} of ${d.name}: ${p.error}`);
      else if (info.state === "active") return undefined;
      else why.push(`port ${p.port} of ${d.name} is ${info.state.toUpperCase()}`);
    }
  }
  return why.join("; ");
}

let listing: { at: number; raw: RawDevice[] } | { at: number; reason: string } | undefined;

/** The addon's device listing (cached {@link DEVICE_LIST_TTL_MS}), or why there is none. */
function listDevices(): { raw: RawDevice[] } | { reason: string } {
  const state = nativeVerbs();
  if ("reason" in state) return state;
  const now = performance.now();
  if (listing === undefined || now - listing.at > DEVICE_LIST_TTL_MS) {
    try {
      listing = { at: now, raw: state.binding.devices(true) };
    } catch (err) {
      // ENOSYS: the kernel has no RDMA support (no ib_uverbs), the usual case on a host with no NIC.
      listing = { at: now, reason: `no RDMA device (${(err as Error).message})` };
    }
  }
  return listing;
}

/** Why the `verbs` provider cannot be used here (undefined when it can). */
function unavailableReason(): string | undefined {
  const list = listDevices();
  if ("reason" in list) return list.reason;
  return devicesReason(list.raw);
}

/** Opens `device` on `port` (an active port of a listed device) as a {@link NativeContext}. */
function open(device: string, port: number): NativeContext {
  const state = nativeVerbs();
  if ("reason" in state) throw new KoalaError(ErrorCode.ADDON_UNAVAILABLE, `provider verbs: ${state.reason}`);
  const list = listDevices();
  if ("reason" in list) throw new KoalaError(ErrorCode.ADDON_UNAVAILABLE, `provider verbs: ${list.reason}`);
  const raw = list.raw.find((d) => d.name === device);
  const info = raw === undefined ? undefined : deviceInfo(raw);
  if (info === undefined) throw new KoalaError(ErrorCode.VERBS, `open(): provider verbs has no usable device named ${device}`);
  const p = info.ports.find((x) => x.port === port);
  if (p === undefined || p.state !== "active") throw new KoalaError(ErrorCode.VERBS, `open(): port ${port} of ${device} is ${p === undefined ? "not a port of it" : p.state.toUpperCase()}`);
  return NativeContext.open(state.binding, device, { device: info, port, forCm: true });
}

/** The `verbs` provider: libibverbs + librdmacm through the native addon. */
export const nativeProvider: VerbsProvider = {
  name: "verbs",
  software: false,
  description: "libibverbs + librdmacm through the native addon",
  unavailableReason,
  devices: () => {
    const list = listDevices();
    return "reason" in list ? [] : list.raw.map(deviceInfo).filter((d): d is DeviceInfo => d !== undefined);
  },
  open,
};
