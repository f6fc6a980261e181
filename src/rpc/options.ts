/** Options of channels, servers and calls, validated once into resolved objects. */
import { boolean, custom, integer, resolveOptions, type OptionsSpec } from "../options.js";
import { resolveTransportOptions } from "../transport/options.js";
import type { TransportOptions } from "../transport/types.js";
import type { Interceptor } from "./interceptor.js";
import { Heap, sharedHeap } from "../mem/index.js";
import { ErrorCode, KoalaError } from "../errors.js";
import { resolveServiceConfig, type ResolvedServiceConfig, type ServiceConfig } from "./retry.js";

const MiB = 1024 * 1024;

/** Options of a client channel (one logical connection to one address). */
export interface ChannelOptions {
  /** Largest request or response body, in bytes; larger ones fail with RESOURCE_EXHAUSTED. Default 4 MiB. */
  maxMessageBytes?: number;
  /** `bytes` fields at least this long are sent from the caller's memory without a copy, in bytes. Default 64 KiB. */
  externalBytesThreshold?: number;
  /** Interval between keepalive pings, in milliseconds; 0 turns them off. Default 30 000. */
  keepaliveIntervalMs?: number;
  /** Time a ping may go unanswered before the connection counts as dead, in milliseconds. Default 10 000. */
  keepaliveTimeoutMs?: number;
  /** Time allowed to connect, in milliseconds. Default 10 000. */
  connectTimeoutMs?: number;
  /** First wait before connecting again after a failed connect, in milliseconds (grows 1.6× per failure, ±20% jitter). Default 100. */
  reconnectBackoffInitialMs?: number;
  /** Longest wait between connect attempts, in milliseconds. Default 5 000. */
  reconnectBackoffMaxMs?: number;
  /** Largest response headers or trailers section accepted, in bytes; a larger one fails its call with RESOURCE_EXHAUSTED. Default 16 KiB. */
  maxMetadataBytes?: number;
  /** Options passed to the transport (see TransportOptions), checked when the channel is created; `maxMessageBytes` defaults to 4× the RPC limit plus 64 KiB. */
  transport?: TransportOptions;
  /** Heap requests are encoded into (see src/mem); null encodes into plain buffers. Default: the shared heap. */
  heap?: Heap | null;
  /** Interceptors every call of this channel passes, in order, before the process-wide ones (see interceptor.ts). Default none. */
  interceptors?: readonly Interceptor[];
  /**
   * How the calls of a resolved target (`dns:`, `static:`, …) spread over its endpoints: a
   * registered balancer — `pick_first` (one endpoint at a time), `round_robin`,
   * `least_outstanding` (power of two choices on calls open), `weighted_round_robin` (in
   * proportion to the endpoints' weights, e.g. `static:///a:1;weight=3,b:2`),
   * `weighted_locality` (groups of endpoints by weight, round robin within each), or one added
   * with `registerBalancer`. A name not registered is an error naming it. Default `pick_first`
   * (`weighted_locality` for `xds:` targets: localities by the control plane's weights, round
   * robin within each).
   */
  loadBalancing?: string;
  /** Options of the balancer (none for the built-in ones). Default {}. */
  loadBalancingOptions?: Record<string, unknown>;
  /** First wait before an endpoint of a resolved target is dialled again after a failure, in ms (×1.6 per failure, ±20% jitter, as gRPC). Default 1 000. */
  endpointBackoffInitialMs?: number;
  /** Longest wait between connect attempts to an endpoint of a resolved target, in ms. Default 120 000. */
  endpointBackoffMaxMs?: number;
  /** Fewest milliseconds between two resolutions of the target (on TTL expiry or after a connection failure). Default 30 000. */
  minResolveIntervalMs?: number;
  /**
   * Client-side health checking of a resolved target's endpoints, as gRPC's `healthCheckConfig`:
   * each ready endpoint watches `grpc.health.v1.Health/Watch` for the service, and while it is
   * not SERVING no call is picked there (its connection stays open). A server without the health
   * service (UNIMPLEMENTED) counts as serving. Default null (no health checking).
   */
  healthCheck?: HealthCheckOptions | null;
  /** Outlier ejection on consecutive failures of a resolved target's endpoints (see {@link OutlierDetectionOptions}). Default null (off). */
  outlierDetection?: OutlierDetectionOptions | null;
  /**
   * gRPC's service config in its JSON shape (see {@link ServiceConfig}): per method (or service)
   * a `retryPolicy` or `hedgingPolicy`, a default `timeout` and `waitForReady`, and
   * `retryThrottling` for the channel. Checked when the channel is created; a bad value is an
   * error naming its key path. Default null (no retries: a call is sent again only when it
   * never left the client).
   */
  serviceConfig?: ServiceConfig | null;
  /**
   * Bytes of a streamed request kept per call so that a retry or hedge can send it again; past
   * this the call commits to the attempt in flight (no more retries). Default 256 KiB (gRPC's
   * per-call default).
   */
  retryBufferBytes?: number;
}

/** The channel option `healthCheck`. */
export interface HealthCheckOptions {
  /** The service name each endpoint's health is watched for; "" is the server as a whole. Default "". */
  serviceName?: string;
}

/**
 * The channel option `outlierDetection`, named as gRPC's `outlier_detection`: an endpoint whose
 * calls fail with UNAVAILABLE `consecutiveFailures` times in a row is ejected (no calls are
 * picked there) for `baseEjectionTimeMs` × the times it was ejected, at most
 * `maxEjectionTimeMs`; no endpoint is ejected while `maxEjectionPercent` of them are.
 */
export interface OutlierDetectionOptions {
  /** UNAVAILABLE calls in a row that eject an endpoint. Default 5. */
  consecutiveFailures?: number;
  /** Length of a first ejection, in ms; the n-th lasts n times as long. Default 30 000. */
  baseEjectionTimeMs?: number;
  /** Longest ejection, in ms. Default 300 000. */
  maxEjectionTimeMs?: number;
  /** Largest share of the endpoints ejected at once, in percent (as gRPC, one may go whatever the count). Default 10. */
  maxEjectionPercent?: number;
}

/** Options of a server. */
export interface ServerOptions {
  /** Largest request or response body, in bytes; larger ones fail with RESOURCE_EXHAUSTED. Default 4 MiB. */
  maxMessageBytes?: number;
  /** `bytes` fields at least this long are sent without a copy, in bytes. Default 64 KiB. */
  externalBytesThreshold?: number;
  /** Interval between keepalive pings to each client, in milliseconds; 0 turns them off. Default 60 000. */
  keepaliveIntervalMs?: number;
  /** Time a ping may go unanswered before the client counts as gone, in milliseconds. Default 20 000. */
  keepaliveTimeoutMs?: number;
  /**
   * Calls one connection may have open at once. Clients learn it when they connect and queue
   * calls beyond it; a call past it anyway is refused with RESOURCE_EXHAUSTED. Default 100.
   */
  maxConcurrentStreams?: number;
  /** Connections served at once; more are closed as they arrive, with a log line. Default 10 000. */
  maxConnections?: number;
  /** Largest request headers section accepted, in bytes; a larger one fails its call with RESOURCE_EXHAUSTED. Default 16 KiB. */
  maxMetadataBytes?: number;
  /**
   * Memory one connection may hold on the server, in bytes: request bodies of calls in flight
   * plus replies waiting to be sent. A call that would pass it fails with RESOURCE_EXHAUSTED.
   * Default 64 MiB.
   */
  connectionBudgetBytes?: number;
  /** A connection with no call for this long is closed gracefully (GOAWAY), in milliseconds; 0: never. Default 300 000. */
  idleTimeoutMs?: number;
  /** A connection older than this (±10% jitter) is closed gracefully (GOAWAY; calls in flight finish), in milliseconds; 0: never. Default 0. */
  maxConnectionAgeMs?: number;
  /** After `maxConnectionAgeMs`, calls still running after this long are cancelled, in milliseconds; 0: they may run to the end. Default 0. */
  maxConnectionAgeGraceMs?: number;
  /**
   * A connection whose replies cannot be written (the client stopped reading) for this long is
   * closed, in milliseconds; 0: never. While replies wait, the server stops reading requests from
   * that connection. Default 30 000.
   */
  sendTimeoutMs?: number;
  /** Options passed to the transport of every listener, checked when the server is created. */
  transport?: TransportOptions;
  /** Log handler failures (at warn level) besides sending them to the client. Default true. */
  logHandlerErrors?: boolean;
  /** Heap responses are encoded into; null encodes into plain buffers. Default: the shared heap. */
  heap?: Heap | null;
  /** Interceptors every call to this server passes, in order, before the process-wide ones (see interceptor.ts). Default none. */
  interceptors?: readonly Interceptor[];
  /**
   * The server's name (a backend of the configuration file sets it): engines attached with
   * `scope.backend` equal to it apply to this server's calls only. Default "" (unnamed).
   */
  name?: string;
}

const isObject = (v: unknown) => typeof v === "object" && v !== null && !Array.isArray(v);
const isHeap = (v: unknown) => v === null || v instanceof Heap;
const isInterceptorList = (v: unknown) =>
  Array.isArray(v) && v.every((i) => typeof i === "object" && i !== null && typeof (i as Interceptor).name === "string");


const healthCheckSpec: OptionsSpec<Required<HealthCheckOptions>> = {
  serviceName: custom<string>("", "a string", (v) => typeof v === "string"),
};

const outlierSpec: OptionsSpec<Required<OutlierDetectionOptions>> = {
  consecutiveFailures: integer(5, 1, 2 ** 31 - 1),
  baseEjectionTimeMs: integer(30_000, 1, 2 ** 31 - 1),
  maxEjectionTimeMs: integer(300_000, 1, 2 ** 31 - 1),
  maxEjectionPercent: integer(10, 0, 100),
};

const isObjectOrNull = (v: unknown) => v === null || isObject(v);

const channelSpec: OptionsSpec<Required<ChannelOptions>> = {
  maxMessageBytes: integer(4 * MiB, 1, 2 ** 31),
  externalBytesThreshold: integer(64 * 1024, 0, Number.MAX_SAFE_INTEGER),
  keepaliveIntervalMs: integer(30_000, 0, 2 ** 31 - 1),
  keepaliveTimeoutMs: integer(10_000, 1, 2 ** 31 - 1),
  connectTimeoutMs: integer(10_000, 1, 2 ** 31 - 1),
  reconnectBackoffInitialMs: integer(100, 0, 2 ** 31 - 1),
  reconnectBackoffMaxMs: integer(5_000, 0, 2 ** 31 - 1),
  maxMetadataBytes: integer(16 * 1024, 1, 2 ** 31),
  transport: custom<TransportOptions>({}, "an object of transport options", isObject),
  heap: custom<Heap | null>(null, "a Heap or null", isHeap),
  interceptors: custom<readonly Interceptor[]>([], "an array of interceptors (objects with a name)", isInterceptorList),
  loadBalancing: custom<string>("", "the name of a registered balancer", (v) => typeof v === "string" && v !== ""),
  loadBalancingOptions: custom<Record<string, unknown>>({}, "an object of balancer options", isObject),
  endpointBackoffInitialMs: integer(1_000, 0, 2 ** 31 - 1),
  endpointBackoffMaxMs: integer(120_000, 0, 2 ** 31 - 1),
  minResolveIntervalMs: integer(30_000, 0, 2 ** 31 - 1),
  healthCheck: custom<HealthCheckOptions | null>(null, "an object ({ serviceName }) or null", isObjectOrNull),
  outlierDetection: custom<OutlierDetectionOptions | null>(null, "an object of outlier detection options or null", isObjectOrNull),
  serviceConfig: custom<ServiceConfig | null>(null, "a service config object ({ methodConfig, retryThrottling }) or null", isObjectOrNull),
  retryBufferBytes: integer(256 * 1024, 0, Number.MAX_SAFE_INTEGER),
};

const serverSpec: OptionsSpec<Required<ServerOptions>> = {
  maxMessageBytes: integer(4 * MiB, 1, 2 ** 31),
  externalBytesThreshold: integer(64 * 1024, 0, Number.MAX_SAFE_INTEGER),
  keepaliveIntervalMs: integer(60_000, 0, 2 ** 31 - 1),
  keepaliveTimeoutMs: integer(20_000, 1, 2 ** 31 - 1),
  maxConcurrentStreams: integer(100, 1, 2 ** 31 - 1),
  maxConnections: integer(10_000, 1, 2 ** 31 - 1),
  maxMetadataBytes: integer(16 * 1024, 1, 2 ** 31),
  connectionBudgetBytes: integer(64 * MiB, 1, Number.MAX_SAFE_INTEGER),
  idleTimeoutMs: integer(300_000, 0, 2 ** 31 - 1),
  maxConnectionAgeMs: integer(0, 0, 2 ** 31 - 1),
  maxConnectionAgeGraceMs: integer(0, 0, 2 ** 31 - 1),
  sendTimeoutMs: integer(30_000, 0, 2 ** 31 - 1),
  transport: custom<TransportOptions>({}, "an object of transport options", isObject),
  logHandlerErrors: boolean(true),
  heap: custom<Heap | null>(null, "a Heap or null", isHeap),
  interceptors: custom<readonly Interceptor[]>([], "an array of interceptors (objects with a name)", isInterceptorList),
  name: custom<string>("", "a string", (v) => typeof v === "string"),
};

/** Resolved channel options: every field set, the nested `healthCheck`, `outlierDetection` and `serviceConfig` checked too. */
export type ResolvedChannelOptions = Readonly<
  Omit<Required<ChannelOptions>, "healthCheck" | "outlierDetection" | "serviceConfig"> & {
    healthCheck: Readonly<Required<HealthCheckOptions>> | null;
    outlierDetection: Readonly<Required<OutlierDetectionOptions>> | null;
    serviceConfig: ResolvedServiceConfig | null;
  }
>;
/** Resolved server options. */
export type ResolvedServerOptions = Readonly<Required<ServerOptions>>;

/** Validates channel options. */
export function resolveChannelOptions(input: unknown): ResolvedChannelOptions {
  const o = resolveOptions("createChannel()", channelSpec, input);
  resolveTransportOptions("createChannel(): option \"transport\"", transportOptionsFor(o.maxMessageBytes, o.transport));
  const healthCheck = o.healthCheck === null ? null : resolveOptions('createChannel(): option "healthCheck"', healthCheckSpec, o.healthCheck);
  const outlierDetection = o.outlierDetection === null ? null : resolveOptions('createChannel(): option "outlierDetection"', outlierSpec, o.outlierDetection);
  const serviceConfig = o.serviceConfig === null ? null : resolveServiceConfig(o.serviceConfig, serviceConfigProblem);
  return Object.freeze({ ...o, healthCheck, outlierDetection, serviceConfig });
}

function serviceConfigProblem(path: string, value: unknown, why: string): KoalaError {
  const shown = value === undefined ? "" : ` = ${showValue(value)}`;
  return new KoalaError(ErrorCode.INVALID_ARGUMENT, `createChannel(): option "serviceConfig${path === "" ? "" : `.${path}`}"${shown}: ${why}`);
}

function showValue(v: unknown): string {
  try {
    const s = JSON.stringify(v);
    if (s === undefined) return String(v);
    return s.length > 80 ? `${s.slice(0, 80)}…` : s;
  } catch {
    return String(v);
  }
}

/** Validates server options. */
export function resolveServerOptions(input: unknown): ResolvedServerOptions {
  const o = resolveOptions("createServer()", serverSpec, input);
  resolveTransportOptions("createServer(): option \"transport\"", transportOptionsFor(o.maxMessageBytes, o.transport));
  return o;
}

/** The heap an endpoint encodes into: the one given, none for null, the shared heap when the option is absent. */
export function heapFor(given: { heap?: Heap | null } | undefined): Heap | null {
  return given?.heap === undefined ? sharedHeap() : given.heap;
}

/** Transport options for an RPC endpoint: room for a body at the RPC limit plus headers and metadata. */
export function transportOptionsFor(rpcMaxMessageBytes: number, given: TransportOptions): TransportOptions {
  return { maxMessageBytes: Math.min(0xffff_0000, rpcMaxMessageBytes * 4 + 64 * 1024), ...given };
}
