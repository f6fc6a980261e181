/**
 * The standard health service, `grpc.health.v1.Health` (Check and Watch), served by a koala
 * server with one call: `const health = addHealthService(server)`. The server as a whole (the
 * empty service name) is SERVING from then on; `health.set(name, status)` reports one service;
 * when the server begins to shut down, every status turns NOT_SERVING, so that watching clients
 * (balancers, Kubernetes probes) move away before connections close.
 *
 * This module sits above rpc in the layer order (it serves RPCs); the cluster layer below rpc
 * consumes health through the checker registered with it (check.ts, `setupHealthChecking()`),
 * never by importing this module.
 */
import { Code, ErrorCode, KoalaError, RpcError } from "../errors.js";
import type { Server } from "../rpc/server.js";
import { HealthCheckResponse_ServingStatus as Wire, HealthService } from "./gen/health.js";

export { HealthCheckRequest, HealthCheckResponse, HealthCheckResponse_ServingStatus, HealthService } from "./gen/health.js";
export type { HealthClient } from "./gen/health.js";
export { setupHealthChecking, watchHealth } from "./check.js";

/** A status a service can be set to. */
export type ServingStatus = "SERVING" | "NOT_SERVING";

/** The statuses a server's health service reports (see {@link addHealthService}). */
export class HealthStatus {
  private readonly statuses = new Map<string, ServingStatus>([["", "SERVING"]]);
  private readonly watchers = new Map<string, Set<(status: Wire) => void>>();

  /** Sets the status of `service` (a full name such as `hello.Greeter`; "" is the server as a whole); watchers hear of a change at once. */
  set(service: string, status: ServingStatus): void {
    if (typeof service !== "string") throw new KoalaError(ErrorCode.INVALID_ARGUMENT, `health.set(): the service name must be a string, got ${typeof service}`);
    if (status !== "SERVING" && status !== "NOT_SERVING") throw new KoalaError(ErrorCode.INVALID_ARGUMENT, `health.set(${JSON.stringify(service)}): the status must be "SERVING" or "NOT_SERVING", got ${JSON.stringify(status)}`);
    if (this.statuses.get(service) === status) return;
    this.statuses.set(service, status);
    for (const w of this.watchers.get(service) ?? []) w(Wire[status]);
  }

  /** The status of `service`, or undefined when it was never set. */
  get(service: string): ServingStatus | undefined {
    return this.statuses.get(service);
  }

  /** Every known service NOT_SERVING (the server shuts down); later `set` calls still apply. */
  shutdown(): void {
    for (const service of [...this.statuses.keys()]) this.set(service, "NOT_SERVING");
  }

  /** @internal The wire status of `service` now (SERVICE_UNKNOWN when never set). */
  wireStatus(service: string): Wire {
    const s = this.statuses.get(service);
    return s === undefined ? Wire.SERVICE_UNKNOWN : Wire[s];
  }

  /** @internal Calls `listener` with every change of `service`; returns the function that stops it. */
  watch(service: string, listener: (status: Wire) => void): () => void {
    let set = this.watchers.get(service);
    if (set === undefined) this.watchers.set(service, (set = new Set()));
    set.add(listener);
    return () => {
      set.delete(listener);
      if (set.size === 0) this.watchers.delete(service);
    };
  }
}

/**
 * Adds `grpc.health.v1.Health` to `server` and returns the statuses it reports. Check answers
 * the status now (NOT_FOUND for a service never set); Watch sends it, then every change, until
 * the client cancels (SERVICE_UNKNOWN for a service not set yet, then its status once set).
 */
export function addHealthService(server: Server, status: HealthStatus = new HealthStatus()): HealthStatus {
  server.add(HealthService, {
    check(req) {
      const s = status.get(req.service);
      if (s === undefined) throw new RpcError(Code.NOT_FOUND, `unknown service ${JSON.stringify(req.service)}`);
      return { status: Wire[s] };
    },
    async *watch(req, ctx) {
      const queue: Wire[] = [status.wireStatus(req.service)];
      let wake: (() => void) | undefined;
      const stop = status.watch(req.service, (s) => {
        queue.push(s);
        wake?.();
      });
      const onAbort = () => wake?.();
      ctx.signal.addEventListener("abort", onAbort);
      try {
        while (!ctx.signal.aborted) {
          const s = queue.shift();
          if (s !== undefined) yield { status: s };
          else await new Promise<void>((r) => (wake = r));
          wake = undefined;
        }
      } finally {
        stop();
        ctx.signal.removeEventListener("abort", onAbort);
      }
    },
  });
  server.onShutdown(() => status.shutdown());
  return status;
}
