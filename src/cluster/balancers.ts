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

  /** Rebuilds the ready list; idle subchannels are asked to connect (those `connect` accepts, when given). */
  refresh(connect?: (s: Subchannel<C>) => boolean): void {
    const ready: Subchannel<C>[] = [];
    for (const s of this.list) {
      if (s.pickable) ready.push(s);
      else if (s.state === "idle" && (connect === undefined || connect(s))) s.requestConnection();
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
  onPicker: (() => void) | undefined;

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

  protected refresh(): void {
    this.prepare();
    this.set.refresh(this.connectable);
    this.schedule = this.build(this.set.ready);
    if (this.next >= this.schedule.length) this.next = 0;
  }

  /** Runs before each rebuild (weighted_locality chooses its priority here). */
  protected prepare(): void {}

  /** Which idle subchannels are asked to connect; undefined: all of them. */
  protected connectable: ((s: Subchannel<C>) => boolean) | undefined;

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

/** gRPC's failover time: how long a priority may stay connecting before the next one takes calls. */
export const DEFAULT_FAILOVER_MS = 10_000;

/**
 * The failover time: `KOALA_XDS_FAILOVER_TIMEOUT_MS` (an integer ≥ 1), else
 * {@link DEFAULT_FAILOVER_MS}; KOALA_ERR_CONFIG when it is not valid.
 */
export function failoverTimeoutMs(env: NodeJS.ProcessEnv = process.env): number {
  const v = env.KOALA_XDS_FAILOVER_TIMEOUT_MS;
  if (v === undefined || v === "") return DEFAULT_FAILOVER_MS;
  if (!/^\d{1,9}$/.test(v) || Number(v) < 1) throw new KoalaError(ErrorCode.CONFIG, `KOALA_XDS_FAILOVER_TIMEOUT_MS=${JSON.stringify(v)} is not a whole number of milliseconds ≥ 1`);
  return Number(v);
}

/** What weighted_locality knows of one priority. */
interface PriorityState {
  /** True once the walk over priorities reached it (its endpoints connect), until a higher priority is ready again. */
  active: boolean;
  /** The failover timer, while it runs. */
  timer: NodeJS.Timeout | undefined;
  /** True once its timer fired, until it is ready: the walk passes it by. */
  expired: boolean;
  /** Ready since its last transient failure (a connecting priority that was ready gets a new timer). */
  seenReady: boolean;
  last: "ready" | "connecting" | "transient_failure" | undefined;
}

/**
 * Two levels, as gRPC's xDS balancing (weighted_target over round_robin): groups (the
 * endpoints' `locality`) in smooth weighted round robin by their `localityWeight`, and within
 * each group its ready endpoints in turn. Only groups with a ready endpoint take calls, and a
 * group keeps its share however many of its endpoints are ready. An endpoint without a
 * `locality` is a group of its own, weighted by its `weight`.
 *
 * Priorities fail over as gRPC's priority policy (grpc-js-xds's load-balancer-priority.ts):
 * priorities are tried in order, 0 first. A priority's endpoints connect only once the walk
 * reaches it, and it gets the failover time (10 s, `failoverTimeoutMs` /
 * `KOALA_XDS_FAILOVER_TIMEOUT_MS`) to get a ready endpoint: meanwhile calls wait for it. It is
 * passed by (the next one is tried) once every endpoint of it failed to connect, or its time
 * ran out. The first ready priority takes every call, and the ones after it stop connecting
 * (connections they have stay). With none ready, calls wait on the first one still connecting.
 */
class WeightedLocality<C extends PooledConnection> extends Scheduled<C, Group<C>> {
  private readonly priorities = new Map<number, PriorityState>();
  /** The priority that takes calls now. */
  private selected = 0;

  constructor(private readonly failoverMs: number) {
    super();
    this.connectable = (s) => this.priorities.get(s.endpoint.priority ?? 0)?.active === true;
  }

  private stateOf(p: number): "ready" | "connecting" | "transient_failure" {
    let failed = 0;
    let n = 0;
    for (const s of this.set.list) {
      if ((s.endpoint.priority ?? 0) !== p) continue;
      n++;
      if (s.pickable) return "ready";
      // As gRPC, an endpoint connected but not pickable (unhealthy, ejected) counts as failed.
      if (s.state === "transient_failure" || s.state === "ready") failed++;
    }
    return n > 0 && failed === n ? "transient_failure" : "connecting";
  }

  private startTimer(ps: PriorityState): void {
    if (ps.timer !== undefined) return;
    ps.timer = setTimeout(() => {
      ps.timer = undefined;
      ps.expired = true;
      this.refresh();
      this.onPicker?.();
    }, this.failoverMs);
    ps.timer.unref();
  }

  private stopTimer(ps: PriorityState): void {
    if (ps.timer !== undefined) clearTimeout(ps.timer);
    ps.timer = undefined;
  }

  /** Follows each active priority's state (its timer), then walks the priorities and selects one. */
  protected override prepare(): void {
    const list = [...new Set(this.set.list.map((s) => s.endpoint.priority ?? 0))].sort((a, b) => a - b);
    for (const [p, ps] of this.priorities) {
      if (!list.includes(p)) {
        this.stopTimer(ps);
        this.priorities.delete(p);
      }
    }
    const states = new Map(list.map((p) => [p, this.stateOf(p)]));
    for (const [p, ps] of this.priorities) {
      const st = states.get(p)!;
      if (!ps.active || st === ps.last) continue;
      ps.last = st;
      if (st === "ready") {
        this.stopTimer(ps);
        ps.expired = false;
        ps.seenReady = true;
      } else if (st === "transient_failure") {
        this.stopTimer(ps);
        ps.seenReady = false;
      } else if (ps.seenReady) {
        ps.expired = false;
        this.startTimer(ps);
      }
    }
    this.selected = this.choose(list, states);
  }

  private choose(list: readonly number[], states: ReadonlyMap<number, string>): number {
    for (const [i, p] of list.entries()) {
      let ps = this.priorities.get(p);
      if (ps === undefined) this.priorities.set(p, (ps = { active: false, timer: undefined, expired: false, seenReady: false, last: undefined }));
      const st = states.get(p);
      if (!ps.active) {
        ps.active = true;
        ps.expired = false;
        ps.last = st as PriorityState["last"];
        if (st === "ready") ps.seenReady = true;
        else if (st === "connecting") this.startTimer(ps);
      }
      if (st === "ready") {
        for (const q of list.slice(i + 1)) {
          const lower = this.priorities.get(q);
          if (lower === undefined) continue;
          lower.active = false;
          this.stopTimer(lower);
        }
        return p;
      }
      if (ps.timer !== undefined) return p;
    }
    for (const p of list) if (states.get(p) === "connecting" && this.priorities.get(p)?.expired !== true) return p;
    return list[list.length - 1] ?? 0;
  }

  protected build(ready: readonly Subchannel<C>[]): Group<C>[] {
    const groups = new Map<string, { group: Group<C>; weight: number }>();
    const priority = this.selected;
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

/** `weighted_locality` (groups by Endpoint.locality weighted by Endpoint.localityWeight, round robin within each, priorities with gRPC's failover timer: xDS targets' default). Option `failoverTimeoutMs` (default `KOALA_XDS_FAILOVER_TIMEOUT_MS`, else 10 000). */
export const weightedLocality: BalancerFactory = <C extends PooledConnection>(options: Readonly<Record<string, unknown>>) => {
  const { failoverTimeoutMs: ms, ...rest } = options;
  noOptions("weighted_locality", rest);
  if (ms !== undefined && (typeof ms !== "number" || !Number.isInteger(ms) || ms < 1)) {
    throw new KoalaError(ErrorCode.INVALID_ARGUMENT, `balancer weighted_locality: option "failoverTimeoutMs" must be a whole number of milliseconds ≥ 1, got ${JSON.stringify(ms)}`);
  }
  return new WeightedLocality<C>(ms ?? failoverTimeoutMs());
};

/** `weighted_round_robin` (weights from the endpoints: see Endpoint.weight). */
export const weightedRoundRobin: BalancerFactory = <C extends PooledConnection>(options: Readonly<Record<string, unknown>>) => {
  noOptions("weighted_round_robin", options);
  return new WeightedRoundRobin<C>();
};
