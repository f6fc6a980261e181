/**
 * The configuration file (`KOALA_CONFIG`): a TOML file naming backends (servers with their
 * listen addresses, transport, server options and engines) and the engines of the whole
 * process, so that several servers run side by side on one machine from one file.
 *
 * ```toml
 * log = "info"                 # KOALA_LOG wins over it
 * transport = "tcp"            # for host:port addresses; KOALA_TRANSPORT wins over it
 * control = true               # open the control socket (koala ctl); KOALA_CONTROL wins over it
 * metricsPort = 9464           # GET /metrics on 127.0.0.1 (Prometheus text); KOALA_METRICS_PORT wins
 *
 * [[engines]]                  # process-wide: every channel and server of the process
 * kind = "metrics"
 *
 * [backends.greeter]
 * listen = "localhost:0"       # or a list of addresses
 * server = { maxConcurrentStreams = 64 }
 * [[backends.greeter.engines]] # on this backend's server only (its service, server side)
 * kind = "ratelimit"
 * options = { ratePerSecond = 100, burst = 10 }
 *
 * [serviceConfig]              # gRPC's service config, for channels: createChannel(t, { serviceConfig: config.serviceConfig })
 * retryThrottling = { maxTokens = 10, tokenRatio = 0.1 }
 * [[serviceConfig.methodConfig]]
 * name = [{ service = "hello.Greeter" }]
 * retryPolicy = { maxAttempts = 3, initialBackoff = "0.1s", maxBackoff = "1s", backoffMultiplier = 2, retryableStatusCodes = ["UNAVAILABLE"] }
 * ```
 *
 * Everything is checked when the file is loaded: an unknown key, a value of the wrong kind or
 * an engine option an engine refuses is a KOALA_ERR_CONFIG error naming the file, the key path
 * (`backends.greeter.engines[0].options.burst`) and the value.
 */
import { readFileSync } from "node:fs";
import { parse, TomlError } from "smol-toml";
import { ErrorCode, KoalaError } from "../errors.js";
import { setLogLevel, type LogLevel } from "../log.js";
import { boolean, custom, integer, oneOf, resolveOptions, type OptionsSpec } from "../options.js";
import type { ServiceDefinition } from "../proto/definition.js";
import { resolveServerOptions, type ServerOptions } from "../rpc/options.js";
import { resolveServiceConfig, type ServiceConfig } from "../rpc/retry.js";
import { createServer, type Server, type ServiceImplementation } from "../rpc/server.js";
import { bindAddress, parseAddress } from "../transport/address.js";
import type { TransportName } from "../transport/types.js";
import { enableControl, trackServer, type ControlHandle } from "./control.js";
import { serveMetrics, type MetricsEndpoint } from "./metrics-http.js";
import { createEngine, policies, type AttachScope, type Engine } from "./index.js";

/** Transports a configuration may name for `host:port` addresses (`tls`: certificates from the server options or `KOALA_TLS_*`). */
export const CONFIG_TRANSPORTS = ["auto", "tcp", "unix", "rdma", "tls"] as const;

/** One engine to attach, as the file describes it (checked). */
export interface EngineConfig {
  /** Engine kind (`ratelimit`, `acl`, …). */
  kind: string;
  /** Unique name in the process. Default: the kind (process-wide) or `<backend>.<kind>`. */
  name: string;
  /** Where it applies; undefined: the default of its place (the whole process, or the backend's service, server side). */
  scope: AttachScope | undefined;
  /** The engine's options (checked by the engine). */
  options: Record<string, unknown>;
}

/** One backend: a server started by {@link startBackend}. */
export interface BackendConfig {
  /** Its name (the key under `[backends]`). */
  name: string;
  /** Addresses to listen at (host:port addresses use `transport`). */
  listen: string[];
  /** Transport for host:port addresses; undefined: KOALA_TRANSPORT's choice. */
  transport: (typeof CONFIG_TRANSPORTS)[number] | undefined;
  /** Server options (as `createServer` takes them; no heap or interceptors from a file). */
  server: ServerOptions;
  /** Engines on this backend's calls. */
  engines: EngineConfig[];
}

/** A loaded, checked configuration, with the environment's overrides applied. */
export interface KoalaConfig {
  /** The file it came from (in error messages). */
  file: string;
  /** Log level (`KOALA_LOG` wins over the file); undefined: leave it as it is. */
  log: LogLevel | "off" | undefined;
  /** Transport for host:port addresses of every backend (`KOALA_TRANSPORT` wins over it). */
  transport: (typeof CONFIG_TRANSPORTS)[number] | undefined;
  /** Whether the process opens a control socket for `koala ctl` (`KOALA_CONTROL=1|0` wins over it). Default false. */
  control: boolean;
  /** Port of the HTTP metrics endpoint (`GET /metrics` on 127.0.0.1; 0: any free port; `KOALA_METRICS_PORT` wins over it); undefined: none. */
  metricsPort: number | undefined;
  /** Process-wide engines. */
  engines: EngineConfig[];
  /** Backends by name, in file order. */
  backends: Map<string, BackendConfig>;
  /**
   * The `[serviceConfig]` table: gRPC's service config (retries, hedging, timeouts per method),
   * checked as the channel option of that name checks it; give it to `createChannel(target,
   * { serviceConfig })`. Undefined when the file has none.
   */
  serviceConfig: ServiceConfig | undefined;
}

function show(v: unknown): string {
  if (typeof v === "bigint") return String(v);
  try {
    const s = JSON.stringify(v, (_k, x: unknown) => (typeof x === "bigint" ? String(x) : x));
    if (s === undefined) return String(v);
    return s.length > 80 ? `${s.slice(0, 80)}…` : s;
  } catch {
    return String(v);
  }
}

/** Builds the error of a bad value: file, key path and value. */
function configError(file: string, path: string, value: unknown, why: string): KoalaError {
  const shown = value === undefined ? "" : ` = ${show(value)}`;
  return new KoalaError(ErrorCode.CONFIG, `${file}: ${path}${shown}: ${why}`);
}

/**
 * Checks `value` (a table at `path`) with `check`, which throws option errors as
 * `resolveOptions` does; the error is re-thrown naming the file, the key path and the value.
 */
function checked<T>(file: string, path: string, value: unknown, check: (v: unknown) => T): T {
  try {
    return check(value);
  } catch (err) {
    if (!(err instanceof KoalaError) || err.code === ErrorCode.CONFIG) throw err;
    // Nested options (a server's transport options) name one key per level: follow them all.
    const found = [...err.message.matchAll(/(unknown option|option) "([^"]+)"/g)];
    if (found.length === 0 || typeof value !== "object" || value === null) throw configError(file, path, value, err.message);
    let given: unknown = value;
    const keys: string[] = [];
    for (const f of found) {
      keys.push(f[2]!);
      given = typeof given === "object" && given !== null ? (given as Record<string, unknown>)[f[2]!] : undefined;
    }
    const last = found[found.length - 1]!;
    const rest = err.message.slice(last.index! + last[0].length).replace(/^[:\s]+/, "").replace("; known options", "; known keys");
    const why = last[1] === "unknown option" ? `unknown key${rest === "" || rest.startsWith(";") ? "" : " "}${rest}` : rest;
    const key = keys.join(".");
    throw configError(file, path === "" ? key : `${path}.${key}`, given, why);
  }
}

const isTable = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v) && !(v instanceof Date);
const isName = (v: unknown) => typeof v === "string" && /^[A-Za-z0-9_.:@/-]{1,100}$/.test(v);

interface TopLevel {
  log: LogLevel | "off" | undefined;
  transport: (typeof CONFIG_TRANSPORTS)[number] | undefined;
  control: boolean;
  metricsPort: number | undefined;
  engines: readonly unknown[];
  backends: Record<string, unknown>;
  daemon: Record<string, unknown>;
  serviceConfig: Record<string, unknown> | undefined;
}
const topSpec: OptionsSpec<TopLevel> = {
  log: oneOf<"off" | LogLevel>("warn", ["off", "error", "warn", "info", "debug"]) as never,
  transport: oneOf<(typeof CONFIG_TRANSPORTS)[number]>("auto", CONFIG_TRANSPORTS) as never,
  control: boolean(false),
  metricsPort: integer(0, 0, 65535) as never,
  engines: custom<readonly unknown[]>([], "an array of tables ([[engines]])", (v) => Array.isArray(v) && v.every(isTable)),
  backends: custom<Record<string, unknown>>({}, "a table of backends ([backends.NAME])", (v) => isTable(v) && Object.values(v).every(isTable)),
  // Read by `koala daemon` (src/managed/config.ts), which checks its keys.
  daemon: custom<Record<string, unknown>>({}, "a table ([daemon], read by koala daemon)", isTable),
  serviceConfig: custom<Record<string, unknown> | undefined>(undefined, "a table ([serviceConfig], gRPC's service config)", isTable),
};

interface RawEngine {
  kind: string;
  name: string | undefined;
  scope: Record<string, unknown> | undefined;
  options: Record<string, unknown>;
}
const engineSpec: OptionsSpec<RawEngine> = {
  kind: custom<string>("", "an engine kind (null, ratelimit, qos, acl, admission, fault, metrics, logging)", (v) => typeof v === "string"),
  name: custom<string | undefined>(undefined, "a name of letters, digits and _ . : @ / -", isName),
  scope: custom<Record<string, unknown> | undefined>(undefined, "a table { global = true } | { service = \"pkg.Service\" } | { method = \"/pkg.Service/Method\" }, with side = \"client\" | \"server\"", isTable),
  options: custom<Record<string, unknown>>({}, "a table of the engine's options", isTable),
};

interface RawScope {
  global: boolean | undefined;
  service: string | undefined;
  method: string | undefined;
  side: "client" | "server" | undefined;
  backend: string | undefined;
}
const scopeSpec: OptionsSpec<RawScope> = {
  global: custom<boolean | undefined>(undefined, "true", (v) => v === true),
  service: custom<string | undefined>(undefined, "a service name, e.g. \"hello.Greeter\"", (v) => typeof v === "string" && /^[A-Za-z_][\w.]*$/.test(v)),
  method: custom<string | undefined>(undefined, "a method path, e.g. \"/hello.Greeter/SayHello\"", (v) => typeof v === "string" && /^\/[A-Za-z_][\w.]*\/\w+$/.test(v)),
  side: oneOf<"client" | "server">("server", ["client", "server"]) as never,
  backend: custom<string | undefined>(undefined, "the name of a backend of this file", (v) => typeof v === "string" && v !== ""),
};

interface RawBackend {
  listen: string | readonly string[];
  transport: (typeof CONFIG_TRANSPORTS)[number] | undefined;
  server: Record<string, unknown>;
  engines: readonly unknown[];
}
const backendSpec: OptionsSpec<RawBackend> = {
  listen: custom<string | readonly string[]>([], "an address or a list of addresses", (v) => typeof v === "string" || (Array.isArray(v) && v.length > 0 && v.every((a) => typeof a === "string"))),
  transport: oneOf<(typeof CONFIG_TRANSPORTS)[number]>("auto", CONFIG_TRANSPORTS) as never,
  server: custom<Record<string, unknown>>({}, "a table of server options", isTable),
  engines: custom<readonly unknown[]>([], "an array of tables ([[backends.NAME.engines]])", (v) => Array.isArray(v) && v.every(isTable)),
};

/** Keys read from the environment, and what they override. */
export const CONFIG_ENV = ["KOALA_CONFIG", "KOALA_LOG", "KOALA_TRANSPORT", "KOALA_CONTROL", "KOALA_METRICS_PORT"] as const;

function readEngine(file: string, path: string, raw: unknown, defaultName: (kind: string) => string, names: Set<string>): EngineConfig {
  const e = checked(file, path, raw, (v) => resolveOptions("engine", engineSpec, v));
  if (e.kind === "") throw configError(file, `${path}.kind`, undefined, "missing: every engine needs a kind");
  const name = e.name ?? defaultName(e.kind);
  if (names.has(name)) throw configError(file, `${path}.name`, name, "an engine of that name is configured already (names are unique in a process)");
  names.add(name);
  let scope: AttachScope | undefined;
  if (e.scope !== undefined) {
    const given = e.scope;
    const s = checked(file, `${path}.scope`, given, (v) => resolveOptions("scope", scopeSpec, v));
    const where = (["global", "service", "method"] as const).filter((k) => s[k] !== undefined);
    if (where.length > 1) throw configError(file, `${path}.scope`, given, `give one of global, service, method (not ${where.join(" and ")})`);
    const side = { ...(given.side === undefined ? {} : { side: s.side! }), ...(s.backend === undefined ? {} : { backend: s.backend }) };
    scope = s.service !== undefined ? { service: s.service, ...side } : s.method !== undefined ? { method: s.method, ...side } : { global: true, ...side };
  }
  // The engine checks its own options: make one now so that the error comes at load time.
  checked(file, `${path}.options`, e.options, (v) => {
    try {
      return createEngine(e.kind, v as Record<string, unknown>, name).close?.();
    } catch (err) {
      if (err instanceof KoalaError && /unknown engine/.test(err.message)) throw configError(file, `${path}.kind`, e.kind, err.message);
      throw err;
    }
  });
  return { kind: e.kind, name, scope, options: e.options };
}

/**
 * Checks a configuration given as TOML text. `file` names it in errors; `env` supplies the
 * overrides (`KOALA_LOG`, `KOALA_TRANSPORT`, `KOALA_CONTROL`). Throws KOALA_ERR_CONFIG.
 */
export function parseConfig(text: string, file = "<config>", env: NodeJS.ProcessEnv = process.env): KoalaConfig {
  let doc: Record<string, unknown>;
  try {
    doc = parse(text) as Record<string, unknown>;
  } catch (err) {
    const where = err instanceof TomlError ? `:${err.line}:${err.column}` : "";
    throw new KoalaError(ErrorCode.CONFIG, `${file}${where}: not valid TOML: ${(err as Error).message.split("\n")[0]}`, { cause: err });
  }
  const top = checked(file, "", doc, (v) => resolveOptions("config", topSpec, v));
  const names = new Set<string>();
  const engines = top.engines.map((raw, i) => readEngine(file, `engines[${i}]`, raw, (kind) => kind, names));
  const backends = new Map<string, BackendConfig>();
  for (const [name, raw] of Object.entries(top.backends)) {
    const path = `backends.${name}`;
    if (!isName(name)) throw configError(file, path, undefined, "a backend name is letters, digits and _ . : @ / -");
    const b = checked(file, path, raw, (v) => resolveOptions("backend", backendSpec, v));
    const listen = typeof b.listen === "string" ? [b.listen] : [...b.listen];
    if (listen.length === 0) throw configError(file, `${path}.listen`, undefined, "missing: a backend needs an address to listen at (e.g. \"localhost:0\")");
    listen.forEach((a, i) => {
      try {
        parseAddress(a);
      } catch (err) {
        throw configError(file, typeof b.listen === "string" ? `${path}.listen` : `${path}.listen[${i}]`, a, (err as Error).message);
      }
    });
    const server = checked(file, `${path}.server`, b.server, (v) => {
      resolveServerOptions(v);
      return v as ServerOptions;
    });
    for (const k of ["heap", "interceptors", "name"] as const) {
      if (k in server) throw configError(file, `${path}.server.${k}`, server[k], k === "name" ? "is the backend's name (the key under [backends])" : "cannot be set from a file (set it in code)");
    }
    const engs = b.engines.map((e, i) => readEngine(file, `${path}.engines[${i}]`, e, (kind) => `${name}.${kind}`, names));
    engs.forEach((e, i) => {
      if (e.scope?.side === "client") throw configError(file, `${path}.engines[${i}].scope.side`, "client", `the engines of backend ${name} see its server's calls: side is "server" (put client-side engines under [[engines]])`);
      if (e.scope?.backend !== undefined && e.scope.backend !== name) throw configError(file, `${path}.engines[${i}].scope.backend`, e.scope.backend, `the engines of backend ${name} apply to it alone: leave backend out`);
    });
    backends.set(name, { name, listen, transport: (raw as Record<string, unknown>).transport === undefined ? undefined : b.transport, server, engines: engs });
  }
  engines.forEach((e, i) => {
    const bk = e.scope?.backend;
    if (bk !== undefined && !backends.has(bk)) throw configError(file, `engines[${i}].scope.backend`, bk, `no such backend (backends: ${[...backends.keys()].join(", ") || "none"})`);
  });
  if (top.serviceConfig !== undefined) {
    resolveServiceConfig(top.serviceConfig, (path, value, why) => configError(file, path === "" ? "serviceConfig" : `serviceConfig.${path}`, value, why));
  }
  const config: KoalaConfig = {
    file,
    serviceConfig: top.serviceConfig as ServiceConfig | undefined,
    log: doc.log === undefined ? undefined : top.log,
    transport: doc.transport === undefined ? undefined : top.transport,
    control: top.control,
    metricsPort: doc.metricsPort === undefined ? undefined : top.metricsPort,
    engines,
    backends,
  };
  return withEnvironment(config, env);
}

/** Applies the environment's overrides (each is checked; a bad one names the variable). */
function withEnvironment(config: KoalaConfig, env: NodeJS.ProcessEnv): KoalaConfig {
  const c = { ...config };
  const bad = (key: string, why: string) => new KoalaError(ErrorCode.CONFIG, `${key}=${show(env[key])}: ${why}`);
  if (env.KOALA_LOG !== undefined && env.KOALA_LOG !== "") {
    const v = env.KOALA_LOG.toLowerCase();
    if (!["off", "error", "warn", "info", "debug"].includes(v)) throw bad("KOALA_LOG", "must be one of off, error, warn, info, debug");
    c.log = v as LogLevel | "off";
  }
  if (env.KOALA_TRANSPORT !== undefined && env.KOALA_TRANSPORT !== "") {
    const v = env.KOALA_TRANSPORT.trim().toLowerCase();
    if (!(CONFIG_TRANSPORTS as readonly string[]).includes(v)) throw bad("KOALA_TRANSPORT", `must be one of ${CONFIG_TRANSPORTS.join(", ")}`);
    c.transport = v as KoalaConfig["transport"];
    // The variable wins over the file everywhere, backends included.
    c.backends = new Map([...c.backends].map(([k, b]) => [k, { ...b, transport: undefined }]));
  }
  if (env.KOALA_CONTROL !== undefined && env.KOALA_CONTROL !== "") {
    if (!["0", "1"].includes(env.KOALA_CONTROL)) throw bad("KOALA_CONTROL", "must be 1 (open the control socket) or 0");
    c.control = env.KOALA_CONTROL === "1";
  }
  if (env.KOALA_METRICS_PORT !== undefined && env.KOALA_METRICS_PORT !== "") {
    const v = env.KOALA_METRICS_PORT;
    if (!/^\d{1,5}$/.test(v) || Number(v) > 65535) throw bad("KOALA_METRICS_PORT", "must be a port number, 0 to 65535");
    c.metricsPort = Number(v);
  }
  return c;
}

/** Reads and checks the configuration file `file` (default: `KOALA_CONFIG`). Throws KOALA_ERR_CONFIG. */
export function loadConfig(path?: string, env: NodeJS.ProcessEnv = process.env): KoalaConfig {
  const file = path ?? env.KOALA_CONFIG;
  if (file === undefined || file === "") throw new KoalaError(ErrorCode.CONFIG, "no configuration file: set KOALA_CONFIG or pass a path");
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (err) {
    throw new KoalaError(ErrorCode.CONFIG, `${file}: cannot read the configuration file: ${(err as Error).message}`, { cause: err });
  }
  return parseConfig(text, file, env);
}

export { controlAll, controlFromEnvironment, controlRequest, enableControl, handleControlRequest, processInfo, runtimeDir, trackServer } from "./control.js";
export type { ControlAnswer, ControlHandle, ControlRequest, ProcessInfo, TrackedServer } from "./control.js";
export { serveMetrics } from "./metrics-http.js";
export type { MetricsEndpoint } from "./metrics-http.js";

const applied = new WeakMap<KoalaConfig, Promise<AppliedPolicies>>();

/** What {@link applyPolicies} put in force. */
export interface AppliedPolicies {
  /** The process-wide engines attached (or replaced). */
  engines: Engine[];
  /** The control socket, when `control` is set. */
  control: ControlHandle | undefined;
  /** The HTTP metrics endpoint, when `metricsPort` is set. */
  metrics: MetricsEndpoint | undefined;
}

/**
 * Puts the process-wide part of `config` in force: the log level, the process-wide engines
 * (an engine of the same name already attached is replaced, its state carried over when of the
 * same kind), the control socket when `control` is set and the HTTP metrics endpoint when
 * `metricsPort` is. Once per config object (later calls return the first result);
 * {@link startBackend} calls it.
 */
export function applyPolicies(config: KoalaConfig): Promise<AppliedPolicies> {
  let done = applied.get(config);
  if (done === undefined) {
    done = (async () => {
      if (config.log !== undefined) setLogLevel(config.log);
      const engines = config.engines.map((e) => attachConfigured(e, e.scope ?? { global: true }));
      const control = config.control ? await enableControl() : undefined;
      const metrics = config.metricsPort === undefined ? undefined : await serveMetrics(config.metricsPort);
      return { engines, control, metrics };
    })();
    applied.set(config, done);
  }
  return done;
}

function attachConfigured(e: EngineConfig, scope: AttachScope): Engine {
  if (policies.get(e.name) !== undefined) return policies.replace(e.name, e.kind, e.options);
  return policies.attach(e.kind, e.options, { name: e.name, scope });
}

/** A service and its handlers, for {@link startBackend}. */
export type ServiceEntry = readonly [ServiceDefinition, object];

/** What {@link startBackend} needs besides the file: the code. */
export interface StartBackendOptions {
  /** The services this backend serves, with their handlers. */
  services: readonly ServiceEntry[];
}

/** Builds a `[service, handlers]` entry with the handlers typed by the service. */
export function service<S extends ServiceDefinition>(definition: S, implementation: Partial<ServiceImplementation<S>>): ServiceEntry {
  return [definition, implementation];
}

/** The address a backend listens at: a host:port address gets the backend's transport, when one is set. */
function listenAddress(address: string, transport: TransportName | "auto" | undefined): string {
  const parsed = parseAddress(address);
  if (parsed.scheme !== undefined || transport === undefined || transport === "auto") return address;
  return bindAddress(parsed, transport, address).uri;
}

/**
 * Starts the backend `name` of `config` with the services given: applies the process-wide
 * policies (once), creates the server with the file's options and the backend's name, attaches
 * the backend's engines (by default to its service, server side; always to this server alone)
 * and listens at every address. Returns the server;
 * `server.addresses` has the addresses bound (port 0 replaced).
 */
export async function startBackend(config: KoalaConfig, name: string, options: StartBackendOptions): Promise<Server> {
  const b = config.backends.get(name);
  if (b === undefined) {
    throw new KoalaError(ErrorCode.CONFIG, `${config.file}: no backend "${name}" (backends: ${[...config.backends.keys()].join(", ") || "none"})`);
  }
  if (!Array.isArray(options?.services) || options.services.length === 0) {
    throw new KoalaError(ErrorCode.INVALID_ARGUMENT, `startBackend(${name}): option "services" must list [definition, handlers] pairs`);
  }
  await applyPolicies(config);
  const server = createServer({ ...b.server, name });
  for (const [def, impl] of options.services) server.add(def, impl as never);
  const serviceNames = options.services.map(([def]) => def.typeName);
  for (const [i, e] of b.engines.entries()) {
    if (e.scope === undefined && serviceNames.length > 1) {
      throw new KoalaError(
        ErrorCode.CONFIG,
        `${config.file}: backends.${name}.engines[${i}].scope: missing: the backend serves ${serviceNames.join(", ")}; say which (scope = { service = "…" })`,
      );
    }
  }
  const attached: string[] = [];
  try {
    for (const e of b.engines) {
      // Scoped to this backend's server: another backend of the process serving the same service keeps its own engines.
      attachConfigured(e, { ...(e.scope ?? { service: serviceNames[0]! }), side: "server", backend: name });
      attached.push(e.name);
    }
    const transport = b.transport ?? config.transport;
    for (const a of b.listen) await server.listen(listenAddress(a, transport));
  } catch (err) {
    for (const n of attached) policies.detach(n);
    server.forceShutdown();
    throw err;
  }
  trackServer(server, name);
  return server;
}
