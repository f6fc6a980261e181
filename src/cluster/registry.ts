/**
 * Resolvers by scheme and balancers by name. Both are added by explicit calls
 * ({@link registerResolver}, {@link registerBalancer}; the built-in ones by `setupCluster` in
 * index.ts), never as a side effect of importing a module, so an application can add its own or
 * replace a built-in one.
 */
import { ErrorCode, KoalaError } from "../errors.js";
import type { BalancerFactory, HealthChecker, ResolverFactory } from "./types.js";

const resolvers = new Map<string, ResolverFactory>();
const balancers = new Map<string, BalancerFactory>();
let healthChecker: HealthChecker | undefined;

const SCHEME = /^[a-z][a-z0-9+.-]*$/;
/** Schemes of transport addresses: a target with one of them is an address, never a resolver's name. */
const TRANSPORT_SCHEMES = new Set(["tcp", "tls", "unix", "rdma", "memory", "koala"]);

/** Makes targets `scheme:…` resolve through `factory`; replaces a resolver registered under the same scheme. */
export function registerResolver(scheme: string, factory: ResolverFactory): void {
  if (typeof scheme !== "string" || !SCHEME.test(scheme)) throw new KoalaError(ErrorCode.INVALID_ARGUMENT, `registerResolver(): a scheme is lower-case letters, digits, "+", "-" or ".", starting with a letter; got ${JSON.stringify(scheme)}`);
  if (TRANSPORT_SCHEMES.has(scheme)) throw new KoalaError(ErrorCode.INVALID_ARGUMENT, `registerResolver(): "${scheme}:" is a transport's scheme; its addresses are connected to directly`);
  if (typeof factory !== "function") throw new KoalaError(ErrorCode.INVALID_ARGUMENT, `registerResolver("${scheme}"): the factory must be a function`);
  resolvers.set(scheme, factory);
}

/** The resolver registered for `scheme`, if any. */
export function resolverFor(scheme: string): ResolverFactory | undefined {
  return resolvers.get(scheme);
}

/** Schemes with a registered resolver. */
export function registeredResolvers(): string[] {
  return [...resolvers.keys()];
}

/** Makes `name` a value of the channel option `loadBalancing`; replaces a balancer registered under the same name. */
export function registerBalancer(name: string, factory: BalancerFactory): void {
  if (typeof name !== "string" || !/^[a-z][a-z0-9_]*$/.test(name)) throw new KoalaError(ErrorCode.INVALID_ARGUMENT, `registerBalancer(): a name is lower-case letters, digits and "_", starting with a letter; got ${JSON.stringify(name)}`);
  if (typeof factory !== "function") throw new KoalaError(ErrorCode.INVALID_ARGUMENT, `registerBalancer("${name}"): the factory must be a function`);
  balancers.set(name, factory);
}

/** The balancer registered as `name`; throws KOALA_ERR_UNKNOWN_NAME naming it and the registered ones. */
export function balancerFor(name: string): BalancerFactory {
  const b = balancers.get(name);
  if (b === undefined) throw new KoalaError(ErrorCode.UNKNOWN_NAME, `no balancer named ${JSON.stringify(name)} is registered (registered: ${[...balancers.keys()].join(", ") || "none"})`);
  return b;
}

/** Names of the registered balancers. */
export function registeredBalancers(): string[] {
  return [...balancers.keys()];
}

/**
 * Sets what runs the health checks of channels with the `healthCheck` option. The cluster layer
 * cannot make calls itself; src/health registers the standard one (`setupHealthChecking()`,
 * called by the package entry), and this lets an application replace it.
 */
export function registerHealthChecker(checker: HealthChecker): void {
  if (typeof checker !== "function") throw new KoalaError(ErrorCode.INVALID_ARGUMENT, "registerHealthChecker(): the checker must be a function");
  healthChecker = checker;
}

/** The registered health checker, if any. */
export function registeredHealthChecker(): HealthChecker | undefined {
  return healthChecker;
}
