/**
 * The cluster layer: from a channel's target to the connection of each call. It sits between
 * transport and proto in the layer order (it imports transport's types and errors, and the rpc
 * layer imports it), so rpc's channel depends on the seam's interfaces ({@link ConnectionSource},
 * {@link Dialer}, {@link PooledConnection}) and the cluster layer never imports rpc: the channel
 * hands it a dialer that makes rpc connections. Parts that need RPC calls of their own (health
 * checks, an xDS client) live above rpc and plug in through the same registries.
 *
 * A target that is one transport address (`tcp://h:p`, `unix:/p`, `h:p`, …) gets a
 * {@link SingleAddressSource}: one connection, a field load per call, as before the seam.
 * A target whose scheme has a registered resolver (`static:///a:1,b:2`, `dns:///name:port`)
 * gets a resolver, one subchannel per endpoint, and the balancer named by the channel's
 * `loadBalancing` option.
 *
 * Managed mode (planned, `managed:` targets): the application's calls go over shared memory to a
 * per-host daemon that owns the real connections, the policies and the balancing. It plugs into
 * this seam without touching rpc: a `managed` resolver resolves `managed:///orders` to one
 * endpoint, the daemon's shared-memory address (`shm:/run/koala/<uid>/daemon`, a transport of
 * src/managed/ registered like tcp), carrying the real target for the daemon to resolve on its
 * side; `pick_first` over that one endpoint makes the channel's path a field load again. The
 * daemon itself runs this same layer (resolvers, subchannels, balancers) for the targets its
 * clients name, so the two modes share one implementation and an application switches with the
 * target string alone.
 */
import { parseTarget } from "./target.js";
import { resolverFor } from "./registry.js";
import { SingleAddressSource } from "./single.js";
import { ErrorCode, KoalaError } from "../errors.js";
import type { BackoffOptions } from "./backoff.js";
import type { ConnectionSource, Dialer, PooledConnection } from "./types.js";

export type { BackoffOptions } from "./backoff.js";
export { Backoff } from "./backoff.js";
export { parseTarget, type Target } from "./target.js";
export { registerResolver, resolverFor, registeredResolvers, registerBalancer, balancerFor, registeredBalancers } from "./registry.js";
export { SingleAddressSource } from "./single.js";
export type * from "./types.js";

/** How a channel's connection source behaves. */
export interface SourceOptions {
  /** Reconnect backoff of each endpoint. */
  readonly backoff: BackoffOptions;
}

/**
 * The connection source for `target`: a single address, or (when its scheme has a registered
 * resolver) the endpoints it resolves to. Throws KOALA_ERR_INVALID_ADDRESS for a target that is
 * neither.
 */
export function createConnectionSource<C extends PooledConnection>(target: string, dialer: Dialer<C>, options: SourceOptions): ConnectionSource<C> {
  const t = parseTarget(target, (scheme) => resolverFor(scheme) !== undefined);
  if (t.scheme === undefined) return new SingleAddressSource({ address: target }, dialer, options.backoff);
  throw new KoalaError(ErrorCode.UNKNOWN_NAME, `target ${JSON.stringify(target)}: resolver targets are not served yet`);
}
