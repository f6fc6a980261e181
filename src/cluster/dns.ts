/**
 * The `dns` resolver, over node:dns's `Resolver` (c-ares; no hand-written DNS client):
 *
 * - `dns:///name:port` — the A and AAAA records of `name`, each at `port` (a Kubernetes headless
 *   service: `dns:///orders.prod.svc.cluster.local:50051`);
 * - `dns:///name` — the SRV records of `name` (e.g. `_koala._tcp.orders.example`), their targets'
 *   A / AAAA records at the ports the records give, lowest priority value first;
 * - `dns://10.0.0.53:5353/name:port` — the same, asking that DNS server instead of the system's.
 *
 * It re-resolves when the shortest TTL of the answer runs out and when a connection fails
 * (`refresh()`), never more often than `minResolveIntervalMs`. An IP literal needs no lookup.
 */
import { Resolver as DnsClient } from "node:dns/promises";
import { isIP } from "node:net";
import { ErrorCode, KoalaError } from "../errors.js";
import { resolveFailed } from "./source.js";
import type { Target } from "./target.js";
import type { Endpoint, Resolver, ResolverListener, ResolverOptions } from "./types.js";

/** Time one DNS query may take, in ms, and how many times it is sent. */
const QUERY_TIMEOUT_MS = 2000;
const QUERY_TRIES = 2;

function hostPort(ip: string, port: number): string {
  return isIP(ip) === 6 ? `[${ip}]:${port}` : `${ip}:${port}`;
}

class DnsResolver implements Resolver {
  private readonly dns = new DnsClient({ timeout: QUERY_TIMEOUT_MS, tries: QUERY_TRIES });
  private readonly host: string;
  private readonly port: number | undefined;
  private timer: NodeJS.Timeout | undefined;
  /** When the timer fires (epoch ms). */
  private dueAt = 0;
  private lastAt = 0;
  private running = false;
  private again = false;
  private closed = false;

  constructor(
    private readonly target: Target,
    private readonly listener: ResolverListener,
    private readonly options: ResolverOptions,
  ) {
    const bad = (why: string) => new KoalaError(ErrorCode.INVALID_ADDRESS, `invalid target ${JSON.stringify(target.raw)}: ${why}`);
    const m = /^(\[[^\]]+\]|[^:[\]]+)(?::(\d{1,5}))?$/.exec(target.path);
    if (m === null) throw bad("expected dns:///name:port, dns:///srv-name or dns://server:port/name:port");
    this.host = m[1]!.replace(/^\[|\]$/g, "");
    this.port = m[2] === undefined ? undefined : Number(m[2]);
    if (this.port !== undefined && this.port > 65535) throw bad(`port ${this.port} is out of range`);
    if (target.authority !== "") {
      try {
        this.dns.setServers([target.authority]);
      } catch (err) {
        throw bad(`the DNS server "${target.authority}" is not an IP address with an optional port (${(err as Error).message})`);
      }
    }
    if (this.port === undefined && isIP(this.host) !== 0) throw bad("an IP address needs a port");
    queueMicrotask(() => void this.resolve());
  }

  refresh(): void {
    if (this.closed) return;
    if (this.running) {
      this.again = true;
      return;
    }
    const wait = this.lastAt + this.options.minResolveIntervalMs - Date.now();
    if (wait <= 0) void this.resolve();
    else this.schedule(wait, true);
  }

  close(): void {
    this.closed = true;
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    this.dns.cancel();
  }

  /** Resolves again in `ms` (`sooner`: only if that is earlier than what is scheduled). */
  private schedule(ms: number, sooner = false): void {
    if (this.timer !== undefined) {
      if (sooner && this.dueAt <= Date.now() + ms) return; // already due by then
      clearTimeout(this.timer);
    }
    this.dueAt = Date.now() + ms;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.resolve();
    }, ms);
    this.timer.unref();
  }

  private async resolve(): Promise<void> {
    if (this.closed || this.running) return;
    this.running = true;
    this.lastAt = Date.now();
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    const min = this.options.minResolveIntervalMs;
    let next = min;
    try {
      const { endpoints, ttlSeconds } = isIP(this.host) !== 0 ? { endpoints: [{ address: hostPort(this.host, this.port!) }], ttlSeconds: Infinity } : this.port === undefined ? await this.srv() : await this.addresses(this.host, this.port);
      if (this.closed) return;
      if (endpoints.length === 0) throw resolveFailed(this.target, `no addresses for ${this.host}`);
      this.listener.onEndpoints(endpoints);
      next = Math.max(min, Number.isFinite(ttlSeconds) ? ttlSeconds * 1000 : min);
      if (!Number.isFinite(ttlSeconds)) next = Infinity;
    } catch (err) {
      if (this.closed) return;
      this.listener.onError(err instanceof KoalaError && err.code === ErrorCode.RESOLVE_FAILED ? err : resolveFailed(this.target, (err as Error)?.message ?? String(err), err));
    } finally {
      this.running = false;
    }
    if (this.closed) return;
    if (this.again) {
      this.again = false;
      this.schedule(min);
    } else if (Number.isFinite(next)) this.schedule(next);
  }

  /** A and AAAA records of `host` at `port`; a name with only one family is fine, one with neither is an error. */
  private async addresses(host: string, port: number): Promise<{ endpoints: Endpoint[]; ttlSeconds: number }> {
    const [v4, v6] = await Promise.allSettled([this.dns.resolve4(host, { ttl: true }), this.dns.resolve6(host, { ttl: true })]);
    const records = [...(v4.status === "fulfilled" ? v4.value : []), ...(v6.status === "fulfilled" ? v6.value : [])];
    if (records.length === 0) {
      const why = v4.status === "rejected" ? (v4.reason as Error).message : "no A or AAAA records";
      throw resolveFailed(this.target, `${host}: ${why}`, v4.status === "rejected" ? v4.reason : undefined);
    }
    let ttl = Infinity;
    for (const r of records) ttl = Math.min(ttl, r.ttl);
    return { endpoints: records.map((r) => ({ address: hostPort(r.address, port) })), ttlSeconds: ttl };
  }

  /** SRV records of the host, each target's addresses at the record's port. */
  private async srv(): Promise<{ endpoints: Endpoint[]; ttlSeconds: number }> {
    let records;
    try {
      records = await this.dns.resolveSrv(this.host);
    } catch (err) {
      throw resolveFailed(this.target, `SRV ${this.host}: ${(err as Error).message}`, err);
    }
    records.sort((a, b) => a.priority - b.priority);
    const endpoints: Endpoint[] = [];
    let ttl = Infinity;
    for (const r of records) {
      const got = isIP(r.name) !== 0 ? { endpoints: [{ address: hostPort(r.name, r.port) }], ttlSeconds: Infinity } : await this.addresses(r.name, r.port);
      endpoints.push(...got.endpoints);
      ttl = Math.min(ttl, got.ttlSeconds);
    }
    // node:dns gives no TTL for SRV answers: the addresses' TTLs count, or the minimum interval.
    return { endpoints, ttlSeconds: Number.isFinite(ttl) ? ttl : 0 };
  }
}

/** Resolves a `dns:` target (see the module comment). */
export function dnsResolver(target: Target, listener: ResolverListener, options: ResolverOptions): Resolver {
  return new DnsResolver(target, listener, options);
}
