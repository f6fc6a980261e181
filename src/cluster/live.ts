/**
 * The channels of this process, for `koala ctl channels` and `koala info <pid>`: every
 * connection source made by createConnectionSource, with its target and balancer, until it is
 * closed (or collected: the list holds weak references, so an unclosed channel that is no longer
 * used does not stay alive for it).
 */
import type { ConnectionSource, EndpointState, PooledConnection } from "./types.js";

/** One channel as the live list reports it. */
export interface ChannelView {
  /** The target it was made for (`static:///…`, `dns:///…`, `tcp://h:p`, …). */
  readonly target: string;
  /** The balancer picking among its endpoints; "" for a single-address target (one connection, nothing to pick). */
  readonly balancer: string;
  /** Its endpoints now (see {@link ConnectionSource.endpoints}). */
  readonly endpoints: EndpointState[];
}

interface Entry {
  readonly source: WeakRef<ConnectionSource<PooledConnection>>;
  readonly target: string;
  readonly balancer: string;
}

const entries = new Set<Entry>();
const hooks = new Set<() => void>();

/** @internal Lists `source` until its close() (createConnectionSource calls it). */
export function trackSource(source: ConnectionSource<PooledConnection>, target: string, balancer: string): void {
  const entry: Entry = { source: new WeakRef(source), target, balancer };
  entries.add(entry);
  const close = source.close.bind(source);
  source.close = () => {
    entries.delete(entry);
    close();
  };
  for (const h of hooks) h();
}

/** The channels of this process now, in the order they were made. */
export function liveChannels(): ChannelView[] {
  const out: ChannelView[] = [];
  for (const e of entries) {
    const s = e.source.deref();
    if (s === undefined) entries.delete(e);
    else out.push({ target: e.target, balancer: e.balancer, endpoints: s.endpoints() });
  }
  return out;
}

/**
 * Calls `hook` whenever a channel's connection source is made from now on (the package entry
 * uses it to open the control socket of a client-only process under KOALA_CONTROL=1); returns a
 * function that removes the hook.
 */
export function onChannelCreated(hook: () => void): () => void {
  hooks.add(hook);
  return () => hooks.delete(hook);
}
