/**
 * Managed mode, the application's side: the `shm` transport (a connection is a ring pair shared
 * with the per-host daemon, set-up.ts / shm-connection.ts) and the `managed` resolver, which
 * turns `managed:///<target>` into the one endpoint `shm:<daemon's set-up socket>#<target>`, so
 * the channel's code path is the one of any single-address target and only the address changes.
 * With `KOALA_MODE=managed` every channel target that is not `managed:` already is read as
 * `managed:///<target>` (src/cluster/index.ts).
 *
 * The daemon (daemon.ts) is a separate module: it runs the policy layer, which sits above rpc,
 * while this part sits beside the transports (rpc's channel dials `shm:` like `tcp:`); the
 * package entry imports only this part.
 */
import { ErrorCode, KoalaError } from "../errors.js";
import { registerResolver, resolverFor, type Resolver, type ResolverFactory } from "../cluster/index.js";
import { getTransport, registerTransport } from "../transport/registry.js";
import type { Address, Connection, Listener, ResolvedTransportOptions, Transport } from "../transport/index.js";
import { shmUnavailableReason } from "./native.js";
import { pollSettingsFromEnv } from "./poll.js";
import { checkRingBytes } from "./ring.js";
import { defaultDaemonSocket, dialDaemon } from "./setup.js";

export { defaultDaemonSocket } from "./setup.js";
export { ShmConnection } from "./shm-connection.js";

/** Ring bytes (each way) of a managed connection by default: 8 MiB, so messages up to 4 MiB (`KOALA_RING_BYTES` changes it). */
export const DEFAULT_RING_BYTES = 8 * 1024 * 1024;

function ringBytesFromEnv(env: NodeJS.ProcessEnv): number {
  const raw = env.KOALA_RING_BYTES;
  if (raw === undefined || raw === "") return DEFAULT_RING_BYTES;
  return checkRingBytes("KOALA_RING_BYTES", Number(raw));
}

/** Splits the path of an `shm:` address into the set-up socket (empty: the default one) and the target. */
export function splitShmPath(path: string): { socket: string; target: string } {
  const hash = path.indexOf("#");
  if (hash < 0 || hash === path.length - 1) throw new KoalaError(ErrorCode.INVALID_ADDRESS, `invalid address "shm:${path}": expected shm:<set-up socket>#<target>, e.g. shm:/run/koala/1000/daemon.sock#tcp://10.0.0.1:50051`);
  return { socket: path.slice(0, hash), target: path.slice(hash + 1) };
}

/** The `shm` transport: dials the daemon; nothing listens on it in an application. */
export const shmTransport: Transport = {
  name: "shm",
  unavailableReason: () => shmUnavailableReason(),
  describe: () => "shared rings to the koala daemon",
  listen(address: Address): Promise<Listener> {
    return Promise.reject(new KoalaError(ErrorCode.INVALID_ARGUMENT, `cannot listen at ${address.uri}: the daemon's set-up socket is opened by \`koala daemon\``));
  },
  connect(address: Address, options: ResolvedTransportOptions): Promise<Connection> {
    const { socket, target } = splitShmPath(address.path);
    return dialDaemon(socket === "" ? defaultDaemonSocket() : socket, target, ringBytesFromEnv(process.env), pollSettingsFromEnv(process.env), options);
  },
};

/** The `managed` resolver: `managed:///<target>` → the one endpoint `shm:<set-up socket>#<target>`. */
export const managedResolver: ResolverFactory = (target, listener) => {
  if (target.path === "") throw new KoalaError(ErrorCode.INVALID_ADDRESS, `invalid target ${JSON.stringify(target.raw)}: expected managed:///<target>, e.g. managed:///tcp://10.0.0.1:50051`);
  if (target.path.startsWith("managed:")) throw new KoalaError(ErrorCode.INVALID_ADDRESS, `invalid target ${JSON.stringify(target.raw)}: managed: twice`);
  let closed = false;
  const report = (): void => {
    if (!closed) listener.onEndpoints([{ address: `shm:${defaultDaemonSocket()}#${target.path}` }]);
  };
  setImmediate(report);
  const r: Resolver = {
    refresh: () => setImmediate(report),
    close: () => {
      closed = true;
    },
  };
  return r;
};

let ready = false;

/** Registers the `shm` transport and the `managed` resolver, unless something is registered under those names. Idempotent; the package entry calls it. */
export function setupManaged(): void {
  if (ready) return;
  ready = true;
  if (getTransport("shm") === undefined) registerTransport(shmTransport);
  if (resolverFor("managed") === undefined) registerResolver("managed", managedResolver);
}
