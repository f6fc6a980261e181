/**
 * The built-in balancers: `pick_first` (one endpoint at a time, in the resolver's order; the
 * default, as in gRPC), `round_robin` (every ready endpoint in turn) and `least_outstanding`
 * (power of two choices: of two ready endpoints drawn at random, the one with fewer calls
 * open — what keeps tail latency low when some replicas are slower) and `weighted_round_robin`
 * (round robin in proportion to each endpoint's weight) and `weighted_locality` (groups of
 * endpoints by weight, round robin within each: xDS localities). Each `pick()` is a few
 * field loads and no allocation; the ready list is rebuilt only when a state changes.
 */
import { ErrorCode, KoalaError } from "../errors.js";
import type { Balancer, BalancerFactory, Endpoint, PooledConnection, Subchannel } from "./types.js";

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

/** Slots of a {@link WeightedRoundRobin} schedule at most, plus one per endpoint: larger weights are scaled down (each stays ≥ 1). */
const MAX_SCHEDULE = 4096;

/**
 * A balancer whose picks walk a schedule computed when the ready set changes (weighted round
 * robin's endpoints, weighted locality's groups), starting at a random place the first time so
 * that clients do not all begin with the same endpoint.
 */
abstract class Scheduled<C extends PooledConnection, T> implements Balancer<C> {
  protected readonly set = new ReadySet<C>();
  protected schedule: T[] = [];
  protected next = 0;
  private started = false;

  /** The schedule of one cycle over the ready subchannels. */
  protected abstract build(ready: readonly Subchannel<C>[]): T[];

  update(subchannels: readonly Subchannel<C>[]): void {
    this.set.list = subchannels;
    this.refresh();
    if (!this.started && this.schedule.length > 0) {
      this.next = Math.floor(Math.random() * this.schedule.length);
      this.started = true;
    }
  }

  onStateChange(): void {
    this.refresh();
  }

  private refresh(): void {
    this.set.refresh();
    this.schedule = this.build(this.set.ready);
    if (this.next >= this.schedule.length) this.next = 0;
  }

  abstract pick(): C | undefined;
}

/**
 * Every ready endpoint in turn, each as often as its weight says (the endpoint's `weight`, from
 * the resolver; 1 when absent). The order is precomputed when the ready set changes — a smooth
 * weighted round robin (as nginx interleaves it: weights 5, 1, 1 give a a b a c a a, not a a a a a b c)
 * — so that `pick()` is an index into an array, as round_robin's.
 */
class WeightedRoundRobin<C extends PooledConnection> extends Scheduled<C, Subchannel<C>> {
  protected build(ready: readonly Subchannel<C>[]): Subchannel<C>[] {
    return weightedSchedule(ready);
  }

  pick(): C | undefined {
    const s = this.schedule;
    const n = s.length;
    for (let tries = 0; tries < n; tries++) {
      const i = this.next;
      this.next = i + 1 >= n ? 0 : i + 1;
      const c = s[i]!.connection;
      if (c !== undefined && c.usable) return c;
    }
    return undefined;
  }
}

/** The smooth weighted round-robin order of one cycle over `ready` (weights scaled to at most {@link MAX_SCHEDULE} slots plus one per endpoint). */
export function weightedSchedule<T extends { readonly endpoint: Endpoint }>(ready: readonly T[]): T[] {
  return smoothOrder(ready.map((s) => weightOf(s.endpoint))).map((i) => ready[i]!);
}

/** Indexes into `weights` (integers ≥ 1) in smooth weighted round-robin order, one cycle (scaled to at most {@link MAX_SCHEDULE} slots plus one per weight). */
export function smoothOrder(input: readonly number[]): number[] {
  if (input.length === 0) return [];
  let weights = [...input];
  const total = weights.reduce((a, b) => a + b, 0);
  if (total > MAX_SCHEDULE) weights = weights.map((w) => Math.max(1, Math.floor((w * MAX_SCHEDULE) / total)));
  const g = weights.reduce(gcd);
  weights = weights.map((w) => w / g);
  const sum = weights.reduce((a, b) => a + b, 0);
  const current = weights.map(() => 0);
  const out: number[] = [];
  for (let k = 0; k < sum; k++) {
    let best = 0;
    for (let i = 0; i < weights.length; i++) {
      current[i]! += weights[i]!;
      if (current[i]! > current[best]!) best = i;
    }
    current[best]! -= sum;
    out.push(best);
  }
  return out;
}

function weightOf(e: Endpoint): number {
  return clampWeight(e.weight);
}

function clampWeight(w: number | undefined): number {
  return w === undefined || !(w >= 1) ? 1 : Math.min(Math.round(w), 1_000_000);
}

/** The ready endpoints of one group of a {@link WeightedLocality}, taken in turn. */
interface Group<C extends PooledConnection> {
  ready: Subchannel<C>[];
  next: number;
}

/**
 * Two levels, as gRPC's xDS balancing (weighted_target over round_robin): groups (the
 * endpoints' `locality`) in smooth weighted round robin by their `localityWeight`, and within
 * each group its ready endpoints in turn. Only groups with a ready endpoint take calls, and a
 * group keeps its share however many of its endpoints are ready. An endpoint without a
 * `locality` is a group of its own, weighted by its `weight`. Only the lowest `priority` with a
 * ready endpoint takes calls (the others stay connected, ready to take over).
 */
class WeightedLocality<C extends PooledConnection> extends Scheduled<C, Group<C>> {
  protected build(ready: readonly Subchannel<C>[]): Group<C>[] {
    const groups = new Map<string, { group: Group<C>; weight: number }>();
    let priority = Infinity;
    for (const s of ready) priority = Math.min(priority, s.endpoint.priority ?? 0);
    for (const s of ready) {
      const e = s.endpoint;
      if ((e.priority ?? 0) !== priority) continue;
      const key = e.locality === undefined ? `\0${e.address}` : e.locality;
      let g = groups.get(key);
      if (g === undefined) {
        g = { group: { ready: [], next: 0 }, weight: clampWeight(e.locality === undefined ? e.weight : e.localityWeight) };
        groups.set(key, g);
      }
      g.group.ready.push(s);
    }
    const list = [...groups.values()];
    for (const g of list) g.group.next = Math.floor(Math.random() * g.group.ready.length);
    return smoothOrder(list.map((g) => g.weight)).map((i) => list[i]!.group);
  }

  pick(): C | undefined {
    const s = this.schedule;
    const n = s.length;
    for (let tries = 0; tries < n; tries++) {
      const g = s[this.next]!;
      this.next = this.next + 1 >= n ? 0 : this.next + 1;
      const m = g.ready.length;
      for (let k = 0; k < m; k++) {
        const sc = g.ready[g.next]!;
        g.next = g.next + 1 >= m ? 0 : g.next + 1;
        const c = sc.connection;
        if (c !== undefined && c.usable) return c;
      }
    }
    return undefined;
  }
}

function gcd(a: number, b: number): number {
  while (b !== 0) [a, b] = [b, a % b];
  return a;
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

/** `weighted_locality` (groups by Endpoint.locality weighted by Endpoint.localityWeight, round robin within each: xDS targets' default). */
export const weightedLocality: BalancerFactory = <C extends PooledConnection>(options: Readonly<Record<string, unknown>>) => {
  noOptions("weighted_locality", options);
  return new WeightedLocality<C>();
};

/** `weighted_round_robin` (weights from the endpoints: see Endpoint.weight). */
export const weightedRoundRobin: BalancerFactory = <C extends PooledConnection>(options: Readonly<Record<string, unknown>>) => {
  noOptions("weighted_round_robin", options);
  return new WeightedRoundRobin<C>();
};
