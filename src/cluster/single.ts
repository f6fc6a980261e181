/**
 * The trivial case of the seam: a target that is one transport address. One connection, made on
 * first use and again for the next call after it was lost; after a failed connect, calls fail
 * fast (or wait, with waitForReady) while the backoff runs. `pick()` is a field load and a
 * `usable` check: exactly what the channel did before the cluster layer existed.
 */
import { Code, RpcError } from "../errors.js";
import { Backoff, type BackoffOptions } from "./backoff.js";
import type { ConnectionSource, Dialer, Endpoint, EndpointState, PooledConnection } from "./types.js";

/** The connection source of a single-address target. */
export class SingleAddressSource<C extends PooledConnection> implements ConnectionSource<C> {
  private current: C | undefined;
  private connecting: Promise<C> | undefined;
  private closed = false;
  /** Connections replaced while calls still ran on them (draining after GOAWAY); closed with the source. */
  private readonly retired = new Set<C>();
  /** After a failed connect: no new attempt before this time (epoch ms); calls fail fast with `lastFailure`. */
  private retryAt = 0;
  private readonly backoff: Backoff;
  private lastFailure: RpcError | undefined;

  constructor(
    private readonly endpoint: Endpoint,
    private readonly dialer: Dialer<C>,
    backoff: BackoffOptions,
  ) {
    this.backoff = new Backoff(backoff);
  }

  pick(): C | undefined {
    const c = this.current;
    return c !== undefined && c.usable ? c : undefined;
  }

  wait(waitForReady?: () => boolean): Promise<C> {
    const c = this.current;
    if (c !== undefined && c.usable) return Promise.resolve(c);
    if (this.closed) return Promise.reject(new RpcError(Code.UNAVAILABLE, "the channel is closed"));
    if (c !== undefined) {
      this.current = undefined;
      if (!c.isClosed) this.retired.add(c);
    }
    const wait = this.retryAt - Date.now();
    if (wait > 0 && this.connecting === undefined) {
      if (waitForReady === undefined || !waitForReady()) return Promise.reject(this.lastFailure);
      return new Promise<void>((r) => setTimeout(r, wait)).then(() => this.wait(waitForReady));
    }
    this.connecting ??= this.dial().finally(() => (this.connecting = undefined));
    if (waitForReady === undefined) return this.connecting;
    return this.connecting.catch((err: unknown) => (waitForReady() && !this.closed ? this.wait(waitForReady) : Promise.reject(err)));
  }

  private async dial(): Promise<C> {
    let c: C;
    try {
      c = await this.dialer(this.endpoint);
    } catch (err) {
      const delay = this.backoff.fail();
      this.retryAt = Date.now() + delay;
      this.lastFailure = new RpcError(Code.UNAVAILABLE, `cannot connect to ${this.endpoint.address}: ${(err as Error)?.message ?? String(err)} (next attempt in ${delay} ms)`, { cause: err });
      throw this.lastFailure;
    }
    this.retryAt = 0;
    this.backoff.reset();
    if (this.closed) {
      c.close();
      throw new RpcError(Code.UNAVAILABLE, "the channel is closed");
    }
    void c.closed.then(() => {
      if (this.current === c) this.current = undefined;
      this.retired.delete(c);
    });
    this.current = c;
    return c;
  }

  endpoints(): EndpointState[] {
    const c = this.current;
    const state = this.closed ? "shutdown" : c !== undefined && !c.isClosed ? "ready" : this.connecting !== undefined ? "connecting" : this.retryAt > Date.now() ? "transient_failure" : "idle";
    const live = c !== undefined && !c.isClosed && c.transport !== undefined;
    return [{ address: this.endpoint.address, state, outstanding: c?.outstanding ?? 0, ...(live ? { transport: c.transport } : {}) }];
  }

  close(): void {
    this.closed = true;
    this.current?.close();
    for (const c of this.retired) c.close();
    this.retired.clear();
    this.current = undefined;
  }
}
