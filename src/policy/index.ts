/**
 * Policy engines on every call's path, attached for the whole process (every channel and
 * server), a service or a method — from code, from the configuration file, or live through
 * the control socket. Engines replaced or reconfigured keep their state (token buckets, queues,
 * counters) and no call in flight is dropped or let through twice.
 *
 * ```ts
 * import { policies } from "koala-rpc/policy";
 * policies.attach("ratelimit", { ratePerSecond: 500 }, { name: "rl" });
 * policies.replace("rl", "ratelimit", { ratePerSecond: 1000 }); // tokens and queued calls carried over
 * ```
 */
import { Code, ErrorCode, KoalaError, RpcError } from "../errors.js";
import { log } from "../log.js";
import { processInterceptors, type Interceptor, type InterceptorScope } from "../rpc/interceptor.js";
import type { Engine, EngineFactory } from "./engine.js";
import { aclEngine } from "./engines/acl.js";
import { admissionEngine } from "./engines/admission.js";
import { faultEngine } from "./engines/fault.js";
import { loggingEngine } from "./engines/logging.js";
import { metricsEngine, type MetricsEngine } from "./engines/metrics.js";
import { nullEngine } from "./engines/null.js";
import { qosEngine } from "./engines/qos.js";
import { rateLimitEngine } from "./engines/ratelimit.js";

export type { Engine, EngineFactory } from "./engine.js";
export type { AclRule, AclOptions } from "./engines/acl.js";
export type { AdmissionOptions } from "./engines/admission.js";
export type { FaultOptions } from "./engines/fault.js";
export type { CallLogLine, LoggingOptions } from "./engines/logging.js";
export type { MetricsEngine, MetricsOptions } from "./engines/metrics.js";
export type { QosOptions } from "./engines/qos.js";
export type { RateLimitOptions } from "./engines/ratelimit.js";
export { aclEngine, admissionEngine, faultEngine, loggingEngine, metricsEngine, nullEngine, qosEngine, rateLimitEngine };
export { renderLogEventCounters } from "./engines/metrics.js";
export { limitedEventCounts, type LimitedEventCount } from "../log.js";

const factories = new Map<string, EngineFactory>([
  ["null", nullEngine],
  ["ratelimit", rateLimitEngine],
  ["qos", qosEngine],
  ["acl", aclEngine],
  ["admission", admissionEngine],
  ["fault", faultEngine],
  ["metrics", metricsEngine],
  ["logging", loggingEngine],
]);

/** Engine kinds known to {@link createEngine}. */
export function engineKinds(): string[] {
  return [...factories.keys()];
}

/** Makes an engine of `kind` (one of {@link engineKinds}) named `name`; options are validated (a bad key or value is an error naming it). */
export function createEngine(kind: string, options: Record<string, unknown> = {}, name: string = kind): Engine {
  const f = factories.get(kind);
  if (f === undefined) throw new KoalaError(ErrorCode.INVALID_ARGUMENT, `unknown engine "${kind}"; known: ${engineKinds().join(", ")}`);
  return f(name, options);
}

/** Where to attach: `{ service }`, `{ method: "/pkg.Service/Method" }`, or the whole process (default). */
export type AttachScope = InterceptorScope;

/** Options of {@link Policies.attach}. */
export interface AttachOptions {
  /** The engine's name (unique in the process). Default: its kind. */
  name?: string;
  /** Where it applies. Default: every call of the process. */
  scope?: AttachScope;
}

/** What {@link Policies.list} reports per engine. */
export interface AttachedEngine {
  name: string;
  kind: string;
  scope: AttachScope;
  options: object;
}

function isEngine(i: Interceptor | undefined): i is Engine {
  return i !== undefined && typeof (i as Engine).kind === "string" && typeof (i as Engine).configure === "function";
}

/** The engines attached to this process (one registry per process; `policies` is it). */
export class Policies {
  /** Attaches a new engine of `kind`, or an engine made in code; returns it. */
  attach(kind: string | Engine, options: Record<string, unknown> = {}, where: AttachOptions = {}): Engine {
    const engine = typeof kind === "string" ? createEngine(kind, options, where.name ?? kind) : kind;
    processInterceptors.attach(engine, where.scope ?? { global: true });
    log("info", "policy", `attached engine ${engine.name} (${engine.kind})`);
    return engine;
  }

  /** Detaches the engine `name`: its held calls go on (they are not dropped). False when none. */
  detach(name: string): boolean {
    const e = processInterceptors.get(name);
    if (!processInterceptors.detach(name)) return false;
    if (isEngine(e)) e.close?.();
    log("info", "policy", `detached engine ${name}`);
    return true;
  }

  /**
   * Replaces the engine `name` by a new one of `kind` with `options`, at the same place. When
   * both are of the same kind the old one's state (held calls, tokens, counters) moves to the
   * new one; calls the old one was holding are then released by the new one, none twice.
   */
  replace(name: string, kind: string, options: Record<string, unknown> = {}): Engine {
    const old = processInterceptors.get(name);
    if (old === undefined) throw new RpcError(Code.NOT_FOUND, `no engine named "${name}" is attached`);
    const next = createEngine(kind, options, name);
    const state = isEngine(old) && old.kind === next.kind ? old.exportState?.() : undefined;
    processInterceptors.replace(name, next);
    if (state !== undefined) next.importState?.(state);
    else if (isEngine(old)) old.close?.();
    log("info", "policy", `replaced engine ${name} by a ${kind} engine${state !== undefined ? " (state carried over)" : ""}`);
    return next;
  }

  /** Changes options of the engine `name` in place (validated; state kept). */
  configure(name: string, options: Record<string, unknown>): Engine {
    const e = processInterceptors.get(name);
    if (!isEngine(e)) throw new RpcError(Code.NOT_FOUND, `no engine named "${name}" is attached`);
    e.configure(options);
    return e;
  }

  /** The engine `name`, if attached. */
  get(name: string): Engine | undefined {
    const e = processInterceptors.get(name);
    return isEngine(e) ? e : undefined;
  }

  /** The attached engines, in chain order. */
  list(): AttachedEngine[] {
    return processInterceptors.list().flatMap(({ name, scope }) => {
      const e = processInterceptors.get(name);
      return isEngine(e) ? [{ name, kind: e.kind, scope, options: e.options }] : [];
    });
  }

  /** Prometheus text of every attached `metrics` engine. */
  metricsText(): string {
    return this.list()
      .filter((e) => e.kind === "metrics")
      // The process-wide log event counters once, after the first engine's series.
      .map((e, i) => (this.get(e.name) as MetricsEngine).render({ logEvents: i === 0 }))
      .join("");
  }

  /** Detaches every engine (tests, shutdown). */
  clear(): void {
    for (const e of this.list()) this.detach(e.name);
  }
}

/** This process's engines. */
export const policies = new Policies();
