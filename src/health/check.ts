/**
 * Client-side health checking, as gRPC's `healthCheckConfig`: each ready endpoint of a channel
 * with the `healthCheck` option keeps one `grpc.health.v1.Health/Watch` stream open on its own
 * connection and reports SERVING or not to the cluster layer, which picks calls only among the
 * serving endpoints. It plugs into src/cluster through `registerHealthChecker` (the cluster
 * layer sits below rpc and cannot make the call itself).
 *
 * A server without the health service (UNIMPLEMENTED) counts as serving, as in gRPC, with a
 * debug line. A stream that ends otherwise while the connection is up (the server restarted its
 * health service, a transient error) reports not serving and is opened again after a backoff.
 */
import { Backoff, registerHealthChecker, type HealthChecker, type HealthWatch, type PooledConnection } from "../cluster/index.js";
import { Code, RpcError } from "../errors.js";
import { log } from "../log.js";
import { invokeOn } from "../rpc/client.js";
import { HealthCheckResponse_ServingStatus as Wire, HealthService, type HealthCheckResponse } from "./gen/health.js";

/** Backoff between two Watch streams of one connection, in ms. */
const RETRY = { initialMs: 1_000, maxMs: 120_000, multiplier: 1.6, jitter: 0.2 } as const;

/** The standard health checker: `Health/Watch` on the endpoint's own connection. */
export const watchHealth: HealthChecker = (connection, serviceName, report) => new HealthWatchStream(connection, serviceName, report);

class HealthWatchStream implements HealthWatch {
  private readonly abort = new AbortController();
  private readonly backoff = new Backoff(RETRY);
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly connection: PooledConnection,
    private readonly serviceName: string,
    private readonly report: (serving: boolean) => void,
  ) {
    void this.run();
  }

  private async run(): Promise<void> {
    const stream = invokeOn(this.connection, HealthService.methods.watch, { service: this.serviceName }, { signal: this.abort.signal }) as AsyncIterable<HealthCheckResponse>;
    try {
      for await (const r of stream) {
        this.backoff.reset();
        this.report(r.status === Wire.SERVING);
      }
      if (this.abort.signal.aborted) return;
      this.retry("the server ended the health stream");
    } catch (err) {
      if (this.abort.signal.aborted || this.connection.isClosed) return;
      if (err instanceof RpcError && err.code === Code.UNIMPLEMENTED) {
        log("debug", "client", `the server has no health service (UNIMPLEMENTED); it counts as serving ${JSON.stringify(this.serviceName)}`);
        this.report(true);
        return;
      }
      this.retry((err as Error)?.message ?? String(err));
    }
  }

  private retry(why: string): void {
    if (this.connection.isClosed) return;
    const ms = this.backoff.fail();
    log("debug", "client", `health watch of ${JSON.stringify(this.serviceName)} ended (${why}); not serving until it answers again, retry in ${ms} ms`);
    this.report(false);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      if (!this.abort.signal.aborted && !this.connection.isClosed) void this.run();
    }, ms);
    this.timer.unref();
  }

  close(): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    this.abort.abort();
  }
}

/** Makes the standard health checker the one channels with the `healthCheck` option use. Idempotent; the package entry calls it. */
export function setupHealthChecking(): void {
  registerHealthChecker(watchHealth);
}
