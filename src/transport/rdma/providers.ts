/**
 * Verbs providers by name, and the choice of provider, device and port for this process.
 * `verbs` is the native addon's provider (native-provider.ts), which loads nothing until it is
 * asked; {@link registerVerbsProvider} adds or replaces one.
 */
import { readRdmaConfig, deviceSelected, type RdmaConfig } from "./config.js";
import { nativeProvider } from "./native-provider.js";
import { softProvider } from "./soft.js";
import type { DeviceInfo, VerbsProvider } from "./verbs.js";

const providers = new Map<string, VerbsProvider>([
  ["verbs", nativeProvider],
  ["soft", softProvider],
]);

/** Makes `provider` serve KOALA_RDMA_PROVIDER=`provider.name`. */
export function registerVerbsProvider(provider: VerbsProvider): void {
  providers.set(provider.name, provider);
}

/** Every registered provider. */
export function verbsProviders(): VerbsProvider[] {
  return [...providers.values()];
}

/** What the RDMA transport would run on here. */
export interface RdmaSelection {
  /** The settings read. */
  readonly config: RdmaConfig;
  /** The provider named by KOALA_RDMA_PROVIDER. */
  readonly provider: VerbsProvider;
  /** The device and port picked: the first active port that KOALA_RDMA_DEVICES lets through. */
  readonly device?: DeviceInfo;
  /** Its port number. */
  readonly port?: number;
  /** Why RDMA cannot be used, or undefined when it can. */
  readonly unavailable?: string;
}

/** Picks provider, device and port from the environment. Throws KOALA_ERR_INVALID_ARGUMENT for a bad variable. */
export function selectRdma(env: NodeJS.ProcessEnv = process.env): RdmaSelection {
  const config = readRdmaConfig(env);
  const provider = providers.get(config.provider)!;
  const why = provider.unavailableReason();
  if (why !== undefined) return { config, provider, unavailable: `provider ${provider.name}: ${why}` };
  const devices = provider.devices();
  for (const device of devices) {
    for (const p of device.ports) {
      if (p.state === "active" && deviceSelected(config.devices, device.name, p.port)) return { config, provider, device, port: p.port };
    }
  }
  const seen = devices.flatMap((d) => d.ports.map((p) => `${d.name}:${p.port} (${p.state})`));
  const filter = env.KOALA_RDMA_DEVICES ? ` allowed by KOALA_RDMA_DEVICES=${env.KOALA_RDMA_DEVICES}` : "";
  return { config, provider, unavailable: `provider ${provider.name} has no active port${filter} (ports: ${seen.join(", ") || "none"})` };
}

/** What `koala info` shows about RDMA. */
export interface RdmaInfo {
  /** Every provider, with its devices when it is available. */
  providers: { name: string; software: boolean; description: string; selected: boolean; available: boolean; reason?: string; devices: DeviceInfo[] }[];
  /** The device and port the transport would use, e.g. `soft0:1`, with the provider. */
  using?: string;
  /** Why RDMA cannot be used (a bad variable included). */
  unavailable?: string;
  /** KOALA_RNDV_THRESH in force, in bytes. */
  rndvThreshBytes?: number;
  /** KOALA_RDMA_BUSY_POLL_US in force. */
  busyPollUs?: number;
}

/** Providers, devices, ports and the selection, for `koala info`. */
export function rdmaInfo(env: NodeJS.ProcessEnv = process.env): RdmaInfo {
  let sel: RdmaSelection | undefined;
  let error: string | undefined;
  try {
    sel = selectRdma(env);
  } catch (err) {
    error = (err as Error).message;
  }
  const list = verbsProviders().map((p) => {
    const reason = p.unavailableReason();
    // Devices are shown even when the provider is unavailable: "port 1 of mlx5_0 is DOWN" reads better beside the port.
    const base = { name: p.name, software: p.software, description: p.description, selected: sel?.provider === p, available: reason === undefined, devices: p.devices() };
    return reason === undefined ? base : { ...base, reason };
  });
  if (sel === undefined) return { providers: list, unavailable: error };
  const info: RdmaInfo = { providers: list, rndvThreshBytes: sel.config.rndvThreshBytes, busyPollUs: sel.config.busyPollUs };
  if (sel.unavailable !== undefined) info.unavailable = sel.unavailable;
  else info.using = `${sel.device!.name}:${sel.port} (provider ${sel.provider.name}${sel.provider.software ? ", a software provider" : ""})`;
  return info;
}
