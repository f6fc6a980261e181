/**
 * The built-in balancers: `pick_first` (one endpoint at a time, in the resolver's order; the
 * default, as in gRPC), `round_robin` (every ready endpoint in turn) and `least_outstanding`
 * (power of two choices: of two ready endpoints drawn at random, the one with fewer calls
 * open — what keeps tail latency low when some replicas are slower). Each `pick()` is a few
 * field loads and no allocation; the ready list is rebuilt only when a state changes.
 */
import { ErrorCode, KoalaError } from "../errors.js";
import type { Balancer, BalancerFactory, PooledConnection, Subchannel } from "./types.js";

function noOptions(name: string, options: Readonly<Record<string, unknown>>): void {
  const keys = Object.keys(options);
  if (keys.length > 0) throw new KoalaError(ErrorCode.INVALID_ARGUMENT, `balancer ${name}: unknown option ${JSON.stringify(keys[0])} (it takes none)`);
}

/** Connects to the first endpoint that works, in order, and sends every call there until it fails. */
class PickFirst<C extends PooledConnection> implements Balancer<C> {
  private list: readonly Subchannel<C>[] = [];
  private selected: Subchannel<C> | undefined;

  update(subchannels: readonly Subchannel<C>[]): void {
    this.list = subchannels;
    if (this.selected !== undefined && !subchannels.includes(this.selected)) this.selected = undefined;
    this.choose();
  }

  onStateChange(): void {
    this.choose();
  }

  pick(): C | undefined {
    const c = this.selected?.connection;
    return c !== undefined && c.usable ? c : undefined;
  }

  /** Keeps a ready selection; else the first ready endpoint; else connects the first idle one when none is connecting. */
  private choose(): void {
    if (this.selected?.pickable === true) return;
    this.selected = this.list.find((s) => s.pickable);
    if (this.selected !== undefined) return;
    // A connected endpoint waiting for its health check (or back from ejection soon) is kept.
    if (this.list.some((s) => s.state === "connecting" || s.state === "ready")) return;
    this.list.find((s) => s.state === "idle")?.requestConnection();
  }
}

/** The pickable subchannels of a list (ready, healthy, not ejected), kept up to date, with every idle one asked to connect. */
class ReadySet<C extends PooledConnection> {
  list: readonly Subchannel<C>[] = [];
  ready: Subchannel<C>[] = [];

  refresh(): void {
    const ready: Subchannel<C>[] = [];
    for (const s of this.list) {
      if (s.pickable) ready.push(s);
      else if (s.state === "idle") s.requestConnection();
    }
    this.ready = ready;
  }
}

/** Every ready endpoint in turn. */
class RoundRobin<C extends PooledConnection> implements Balancer<C> {
  private readonly set = new ReadySet<C>();
  private next = 0;

  private started = false;

  update(subchannels: readonly Subchannel<C>[]): void {
    this.set.list = subchannels;
    this.set.refresh();
    // Start at a random place, so that many clients do not all begin with the same endpoint;
    // later updates (a re-resolution every TTL) keep the rotation where it is.
    if (!this.started) this.next = Math.floor(Math.random() * subchannels.length);
    this.started = true;
  }

  onStateChange(): void {
    this.set.refresh();
  }

  pick(): C | undefined {
    const ready = this.set.ready;
    const n = ready.length;
    for (let tries = 0; tries < n; tries++) {
      const i = this.next++ % n;
      if (this.next >= n) this.next = 0;
      const c = ready[i]!.connection;
      if (c !== undefined && c.usable) return c;
    }
    return undefined;
  }
}

/** Power of two choices on calls open. */
class LeastOutstanding<C extends PooledConnection> implements Balancer<C> {
  private readonly set = new ReadySet<C>();

  update(subchannels: readonly Subchannel<C>[]): void {
    this.set.list = subchannels;
    this.set.refresh();
  }

  onStateChange(): void {
    this.set.refresh();
  }

  pick(): C | undefined {
    const ready = this.set.ready;
    const n = ready.length;
    if (n === 0) return undefined;
    const i = (Math.random() * n) | 0;
    const a = ready[i]!.connection;
    if (n === 1) return a !== undefined && a.usable ? a : undefined;
    // Two different endpoints: the second draw skips the first's index.
    let j = (Math.random() * (n - 1)) | 0;
    if (j >= i) j++;
    const b = ready[j]!.connection;
    const okA = a !== undefined && a.usable;
    const okB = b !== undefined && b.usable;
    if (okA && okB) return b.outstanding < a.outstanding ? b : a;
    if (okA) return a;
    if (okB) return b;
    for (const s of ready) {
      const c = s.connection;
      if (c !== undefined && c.usable) return c;
    }
    return undefined;
  }
}

/** `pick_first`. */
export const pickFirst: BalancerFactory = <C extends PooledConnection>(options: Readonly<Record<string, unknown>>) => {
  noOptions("pick_first", options);
  return new PickFirst<C>();
};

/** `round_robin`. */
export const roundRobin: BalancerFactory = <C extends PooledConnection>(options: Readonly<Record<string, unknown>>) => {
  noOptions("round_robin", options);
  return new RoundRobin<C>();
};

/** `least_outstanding` (power of two choices). */
export const leastOutstanding: BalancerFactory = <C extends PooledConnection>(options: Readonly<Record<string, unknown>>) => {
  noOptions("least_outstanding", options);
  return new LeastOutstanding<C>();
};
