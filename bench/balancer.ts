/**
 * The balancer's pick path alone: nanoseconds per `ConnectionSource.pick()` (what the channel
 * calls once per call) for a single address and for `static:` targets with each built-in
 * balancer, over connections that stand in for koala's (no socket: a pick never touches one).
 * bench:rpc's balanced systems measure the same path inside whole calls, where three
 * connections instead of one also change the client's CPU; this shows the pick's share.
 * The `routed:` cases route each call as an xDS virtual host does (XdsRouter over a route list,
 * one balancer per cluster): the resolver is a stand-in, the router and the source are koala's.
 *
 *   node --import tsx bench/balancer.ts [--picks N] [--rounds N]
 */
import { createConnectionSource, registerResolver, type ConnectionSource, type PooledConnection, type RoutedCall } from "../src/cluster/index.js";
import { XdsRouter } from "../src/cluster/xds/routing.js";
import type { Route, ValueMatch } from "../src/cluster/xds/resources.js";
import { median } from "./rpc/measure.js";
import { fmt, table } from "./rpc/report.js";

/** A connection that is always usable, with a fixed number of calls open. */
class StandInConnection implements PooledConnection {
  usable = true;
  isClosed = false;
  transport = "tcp";
  readonly closed = new Promise<void>(() => undefined);
  constructor(public outstanding: number) {}
  close(): void {
    this.usable = false;
    this.isClosed = true;
  }
  drain(): void {
    this.usable = false;
  }
}

function flag(name: string, fallback: number): number {
  const i = process.argv.indexOf(name);
  if (i < 0) return fallback;
  const n = Number(process.argv[i + 1]);
  if (!Number.isInteger(n) || n < 1) {
    console.error(`bench/balancer: ${name} needs a positive integer`);
    process.exit(2);
  }
  return n;
}
const PICKS = flag("--picks", 5_000_000);
const ROUNDS = flag("--rounds", 5);

/** A route list as a checked RouteConfiguration's virtual host holds it. */
const exact = (value: string): ValueMatch => ({ kind: "exact", value, ignoreCase: false });
const prefix = (value: string): ValueMatch => ({ kind: "prefix", value, ignoreCase: false });
const ROUTE_LISTS: Record<string, Route[]> = {
  // One route taking every call to one cluster: the router answers without looking at the call.
  one: [{ match: { path: prefix(""), headers: [], fraction: undefined }, clusters: [{ name: "a", weight: 1 }] }],
  // The call matches the third route: an exact path and a header matcher fail first.
  three: [
    { match: { path: exact("/bench.Svc/Other"), headers: [], fraction: undefined }, clusters: [{ name: "a", weight: 1 }] },
    { match: { path: prefix(""), headers: [{ name: "x-tier", match: exact("gold"), invert: false }], fraction: undefined }, clusters: [{ name: "b", weight: 1 }] },
    { match: { path: prefix("/bench.Svc/"), headers: [], fraction: undefined }, clusters: [{ name: "c", weight: 1 }] },
  ],
};
// `routed:///one` and `routed:///three`: three endpoints, one per cluster a, b, c, and the router of that route list.
registerResolver("routed", (target, listener) => {
  const routes = ROUTE_LISTS[target.path];
  if (routes === undefined) throw new Error(`bench/balancer: no route list ${target.path}`);
  const router = new XdsRouter({ name: "bench", domains: ["*"], routes }, target.raw, new Map());
  const endpoints = ["a", "b", "c"].map((cluster, i) => ({ address: `127.0.0.${i + 2}:1`, cluster }));
  setImmediate(() => listener.onEndpoints(endpoints, router));
  return { refresh() {}, close() {} };
});
/** The call the routed cases pick for: a unary method, with metadata that has no x-tier. */
const CALL: RoutedCall = { path: "/bench.Svc/Unary", metadata: { getAll: () => [] } };

const CASES: { label: string; target: string; balancer: string }[] = [
  { label: "single address (tcp://h:p)", target: "tcp://127.0.0.2:1", balancer: "" },
  { label: "static: 1 address, pick_first", target: "static:///tcp://127.0.0.2:1", balancer: "pick_first" },
  { label: "static: 1 address, round_robin", target: "static:///tcp://127.0.0.2:1", balancer: "round_robin" },
  { label: "static: 3 addresses, round_robin", target: "static:///tcp://127.0.0.2:1,tcp://127.0.0.3:1,tcp://127.0.0.4:1", balancer: "round_robin" },
  { label: "static: 3 addresses, least_outstanding (P2C)", target: "static:///tcp://127.0.0.2:1,tcp://127.0.0.3:1,tcp://127.0.0.4:1", balancer: "least_outstanding" },
  { label: "static: 3 addresses, weighted_round_robin", target: "static:///tcp://127.0.0.2:1;weight=2,tcp://127.0.0.3:1,tcp://127.0.0.4:1", balancer: "weighted_round_robin" },
  { label: "routed: 1 route to 1 of 3 clusters, round_robin", target: "routed:///one", balancer: "round_robin" },
  { label: "routed: 3rd of 3 routes (path, header, prefix), round_robin", target: "routed:///three", balancer: "round_robin" },
];

const options = {
  backoff: { initialMs: 1000, maxMs: 1000, multiplier: 1, jitter: 0 },
  endpointBackoff: { initialMs: 1000, maxMs: 1000, multiplier: 1, jitter: 0 },
  balancerOptions: {},
  minResolveIntervalMs: 1000,
};

const rows: string[][] = [];
let base = NaN;
for (const c of CASES) {
  let n = 0;
  const source: ConnectionSource<StandInConnection> = createConnectionSource(c.target, async () => new StandInConnection(n++ % 3), { ...options, balancer: c.balancer });
  // Connects every endpoint (the stand-ins are ready at once).
  await source.wait();
  for (let i = 0; i < 100 && !source.endpoints().every((e) => e.state === "ready"); i++) await new Promise((r) => setTimeout(r, 5));
  // A loop of its own per case (its own type feedback): the channel's call site sees one source class, as here.
  // The routed cases pass the call (the channel always does; the other sources ignore it).
  // A routed call keeps the route its first pick chose: the routed loops forget it before each
  // pick, so that every pick routes as a new call's first pick does.
  const body = c.target.startsWith("routed:") ? "call.route = undefined; " : "";
  const loop = new Function("s", "n", "call", `let k = 0; for (let i = 0; i < n; i++) { ${body}const c = s.pick(call); if (c !== undefined) k += c.outstanding + 1; } return k;`) as (s: ConnectionSource<StandInConnection>, n: number, call: RoutedCall | undefined) => number;
  const call = c.target.startsWith("routed:") ? CALL : undefined;
  if (loop(source, 100_000, call) === 0) throw new Error(`${c.label}: nothing picked`);
  const ns: number[] = [];
  for (let r = 0; r < ROUNDS; r++) {
    const t0 = process.hrtime.bigint();
    const k = loop(source, PICKS, call);
    ns.push(Number(process.hrtime.bigint() - t0) / PICKS);
    if (k < PICKS) throw new Error(`${c.label}: a pick found no connection`);
  }
  source.close();
  const m = median(ns);
  if (Number.isNaN(base)) base = m;
  rows.push([c.label, fmt(m, 1), fmt(m - base, 1)]);
}
console.log(`bench/balancer — ${PICKS} picks × ${ROUNDS} rounds per case, median ns per pick; Node ${process.version}\n`);
console.log(table(["target, balancer", "ns per pick", "over a single address"], rows));
