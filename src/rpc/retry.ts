/**
 * Retries and hedging as gRPC's service config defines them (gRPC proposal A6, "Client
 * Retries"): the `serviceConfig` channel option (and the `serviceConfig` table of the TOML
 * configuration) in gRPC's JSON shape, checked here into resolved policies; the per-channel
 * retry throttle; the backoff between attempts; the server's pushback; and the buffer that
 * replays a streamed request to a second attempt. The attempts themselves run in client.ts.
 * This module imports nothing of the rpc layer's calls, so client.ts and config.ts both use it.
 */
import { Code, ErrorCode, KoalaError } from "../errors.js";

/** gRPC caps maxAttempts of both policies at this, whatever the config says. */
export const MAX_ATTEMPTS_CAP = 5;

/** `retryPolicy` of a method config, as gRPC's JSON service config writes it. */
export interface RetryPolicyConfig {
  /** Attempts in all, the first one included: 2 or more (more than 5 counts as 5). */
  maxAttempts: number;
  /** Backoff before the first retry, a duration such as "0.1s". */
  initialBackoff: string;
  /** Longest backoff, a duration. */
  maxBackoff: string;
  /** Growth of the backoff per retry, > 0. */
  backoffMultiplier: number;
  /** Status codes that are retried, by name ("UNAVAILABLE") or number; not empty. */
  retryableStatusCodes: readonly (string | number)[];
}

/** `hedgingPolicy` of a method config. */
export interface HedgingPolicyConfig {
  /** Attempts in all, the first one included: 2 or more (more than 5 counts as 5). */
  maxAttempts: number;
  /** Time between two attempts, a duration; default "0s" (all at once). */
  hedgingDelay?: string;
  /** Status codes after which the other attempts go on (any other status ends the call); default none. */
  nonFatalStatusCodes?: readonly (string | number)[];
}

/** One `methodConfig` entry. */
export interface MethodConfig {
  /** The methods it applies to: `{ service, method }` (one method), `{ service }` (every method of a service), `{}` (every method). */
  name: readonly { service?: string; method?: string }[];
  /** Retry policy (not together with `hedgingPolicy`). */
  retryPolicy?: RetryPolicyConfig;
  /** Hedging policy (not together with `retryPolicy`). */
  hedgingPolicy?: HedgingPolicyConfig;
  /** Default timeout of the calls, a duration (a call's own shorter deadline wins). */
  timeout?: string;
  /** Default of the call option `waitForReady`. */
  waitForReady?: boolean;
}

/** The `serviceConfig` channel option: gRPC's service config, in its JSON shape. */
export interface ServiceConfig {
  /** Per-method settings. */
  methodConfig?: readonly MethodConfig[];
  /** The channel's token bucket for retries and hedges: `maxTokens` in (0, 1000], `tokenRatio` > 0. */
  retryThrottling?: { maxTokens: number; tokenRatio: number };
}

/** A checked retry policy. */
export interface RetryPolicy {
  readonly kind: "retry";
  /** Attempts in all, capped at 5. */
  readonly maxAttempts: number;
  readonly initialBackoffMs: number;
  readonly maxBackoffMs: number;
  readonly backoffMultiplier: number;
  /** Retryable codes. */
  readonly codes: ReadonlySet<Code>;
}

/** A checked hedging policy. */
export interface HedgingPolicy {
  readonly kind: "hedging";
  /** Attempts in all, capped at 5. */
  readonly maxAttempts: number;
  readonly hedgingDelayMs: number;
  /** Non-fatal codes. */
  readonly codes: ReadonlySet<Code>;
}

/** What a call of one method gets from the service config. */
export interface MethodPolicy {
  readonly policy: RetryPolicy | HedgingPolicy | undefined;
  /** Default timeout in ms, or undefined. */
  readonly timeoutMs: number | undefined;
  /** Default waitForReady, or undefined. */
  readonly waitForReady: boolean | undefined;
}

/** A checked service config. */
export interface ResolvedServiceConfig {
  /** The policy of a method path (`/pkg.Service/Method`), or undefined when no entry names it. */
  lookup(path: string): MethodPolicy | undefined;
  /** The throttle settings, or undefined (no throttling). */
  readonly throttling: { readonly maxTokens: number; readonly tokenRatio: number } | undefined;
}

/** Reports a bad value: the key path within the service config, the value and why. */
export type ConfigProblem = (path: string, value: unknown, why: string) => Error;

const isTable = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v) && !(v instanceof Date);

/** A protobuf JSON Duration ("1.5s", "0.000100s") in milliseconds, or undefined when it is not one. */
export function parseDuration(v: unknown): number | undefined {
  if (typeof v !== "string") return undefined;
  const m = /^(\d{1,12})(?:\.(\d{1,9}))?s$/.exec(v);
  if (m === null) return undefined;
  return Number(m[1]) * 1000 + (m[2] === undefined ? 0 : Number(`0.${m[2]}`) * 1000);
}

function codeOf(v: unknown): Code | undefined {
  if (typeof v === "number") return Number.isInteger(v) && v >= 0 && v <= 16 ? (v as Code) : undefined;
  if (typeof v !== "string") return undefined;
  const c = (Code as unknown as Record<string, unknown>)[v.toUpperCase()];
  return typeof c === "number" ? (c as Code) : undefined;
}

function keys(path: string, value: Record<string, unknown>, known: readonly string[], problem: ConfigProblem): void {
  for (const k of Object.keys(value)) {
    if (!known.includes(k)) throw problem(`${path === "" ? "" : `${path}.`}${k}`, value[k], `unknown key; known keys: ${known.join(", ")}`);
  }
}

function duration(path: string, v: unknown, problem: ConfigProblem, positive: boolean): number {
  const ms = parseDuration(v);
  if (ms === undefined) throw problem(path, v, 'must be a duration in seconds, e.g. "0.1s"');
  if (positive && !(ms > 0)) throw problem(path, v, "must be greater than 0s");
  return ms;
}

function attempts(path: string, v: unknown, problem: ConfigProblem): number {
  if (typeof v !== "number" || !Number.isInteger(v) || v < 2) throw problem(path, v, "must be an integer of 2 or more (values above 5 count as 5)");
  return Math.min(v, MAX_ATTEMPTS_CAP);
}

function codes(path: string, v: unknown, problem: ConfigProblem, required: boolean): Set<Code> {
  if (v === undefined && !required) return new Set();
  if (!Array.isArray(v) || (required && v.length === 0)) throw problem(path, v, `must be a${required ? " non-empty" : ""} list of status codes, e.g. ["UNAVAILABLE"]`);
  const out = new Set<Code>();
  v.forEach((c, i) => {
    const code = codeOf(c);
    if (code === undefined || code === Code.OK) throw problem(`${path}[${i}]`, c, "is not a gRPC status code other than OK (a name such as \"UNAVAILABLE\", or 1 to 16)");
    out.add(code);
  });
  return out;
}

function retryPolicy(path: string, v: unknown, problem: ConfigProblem): RetryPolicy {
  if (!isTable(v)) throw problem(path, v, "must be an object");
  keys(path, v, ["maxAttempts", "initialBackoff", "maxBackoff", "backoffMultiplier", "retryableStatusCodes"], problem);
  const maxAttempts = attempts(`${path}.maxAttempts`, v.maxAttempts, problem);
  const initialBackoffMs = duration(`${path}.initialBackoff`, v.initialBackoff, problem, true);
  const maxBackoffMs = duration(`${path}.maxBackoff`, v.maxBackoff, problem, true);
  const m = v.backoffMultiplier;
  if (typeof m !== "number" || !Number.isFinite(m) || !(m > 0)) throw problem(`${path}.backoffMultiplier`, m, "must be a number greater than 0");
  const c = codes(`${path}.retryableStatusCodes`, v.retryableStatusCodes, problem, true);
  return { kind: "retry", maxAttempts, initialBackoffMs, maxBackoffMs, backoffMultiplier: m, codes: c };
}

function hedgingPolicy(path: string, v: unknown, problem: ConfigProblem): HedgingPolicy {
  if (!isTable(v)) throw problem(path, v, "must be an object");
  keys(path, v, ["maxAttempts", "hedgingDelay", "nonFatalStatusCodes"], problem);
  const maxAttempts = attempts(`${path}.maxAttempts`, v.maxAttempts, problem);
  const hedgingDelayMs = v.hedgingDelay === undefined ? 0 : duration(`${path}.hedgingDelay`, v.hedgingDelay, problem, false);
  const c = codes(`${path}.nonFatalStatusCodes`, v.nonFatalStatusCodes, problem, false);
  return { kind: "hedging", maxAttempts, hedgingDelayMs, codes: c };
}

const SERVICE_RE = /^[A-Za-z_][\w.]*$/;
const METHOD_RE = /^[A-Za-z_]\w*$/;

/**
 * Checks a service config (the JSON shape of gRPC's `ServiceConfig`, with `methodConfig` and
 * `retryThrottling`). `problem` builds the error of a bad value from its key path
 * (`methodConfig[0].retryPolicy.maxAttempts`), the value and why; an unknown key is an error too.
 */
export function resolveServiceConfig(input: unknown, problem: ConfigProblem): ResolvedServiceConfig {
  if (!isTable(input)) throw problem("", input, "must be an object ({ methodConfig, retryThrottling })");
  keys("", input, ["methodConfig", "retryThrottling"], problem);
  const exact = new Map<string, MethodPolicy>();
  const byService = new Map<string, MethodPolicy>();
  let fallback: MethodPolicy | undefined;
  const list = input.methodConfig ?? [];
  if (!Array.isArray(list)) throw problem("methodConfig", list, "must be a list of method configs");
  list.forEach((raw: unknown, i) => {
    const path = `methodConfig[${i}]`;
    if (!isTable(raw)) throw problem(path, raw, "must be an object");
    keys(path, raw, ["name", "retryPolicy", "hedgingPolicy", "timeout", "waitForReady"], problem);
    if (raw.retryPolicy !== undefined && raw.hedgingPolicy !== undefined) throw problem(path, undefined, "give retryPolicy or hedgingPolicy, not both");
    const policy = raw.retryPolicy !== undefined ? retryPolicy(`${path}.retryPolicy`, raw.retryPolicy, problem) : raw.hedgingPolicy !== undefined ? hedgingPolicy(`${path}.hedgingPolicy`, raw.hedgingPolicy, problem) : undefined;
    const timeoutMs = raw.timeout === undefined ? undefined : duration(`${path}.timeout`, raw.timeout, problem, true);
    if (raw.waitForReady !== undefined && typeof raw.waitForReady !== "boolean") throw problem(`${path}.waitForReady`, raw.waitForReady, "must be a boolean");
    const entry: MethodPolicy = Object.freeze({ policy, timeoutMs, waitForReady: raw.waitForReady as boolean | undefined });
    const names = raw.name;
    if (!Array.isArray(names) || names.length === 0) throw problem(`${path}.name`, names, 'must be a non-empty list of { service, method } (e.g. [{ service: "pkg.Service" }])');
    names.forEach((n: unknown, j) => {
      const np = `${path}.name[${j}]`;
      if (!isTable(n)) throw problem(np, n, "must be an object { service, method }");
      keys(np, n, ["service", "method"], problem);
      const service = n.service ?? "";
      const method = n.method ?? "";
      if (typeof service !== "string" || (service !== "" && !SERVICE_RE.test(service))) throw problem(`${np}.service`, service, 'must be a full service name, e.g. "pkg.Service" ("" or absent: every service)');
      if (typeof method !== "string" || (method !== "" && !METHOD_RE.test(method))) throw problem(`${np}.method`, method, "must be a method name (absent: every method of the service)");
      if (method !== "" && service === "") throw problem(np, n, "a method needs its service");
      const dup = () => problem(np, n, "is named by another method config already");
      if (method !== "") {
        const key = `/${service}/${method}`;
        if (exact.has(key)) throw dup();
        exact.set(key, entry);
      } else if (service !== "") {
        if (byService.has(service)) throw dup();
        byService.set(service, entry);
      } else {
        if (fallback !== undefined) throw dup();
        fallback = entry;
      }
    });
  });
  let throttling: ResolvedServiceConfig["throttling"];
  if (input.retryThrottling !== undefined) {
    const t = input.retryThrottling;
    if (!isTable(t)) throw problem("retryThrottling", t, "must be an object { maxTokens, tokenRatio }");
    keys("retryThrottling", t, ["maxTokens", "tokenRatio"], problem);
    if (typeof t.maxTokens !== "number" || !(t.maxTokens > 0 && t.maxTokens <= 1000)) throw problem("retryThrottling.maxTokens", t.maxTokens, "must be a number greater than 0, at most 1000");
    if (typeof t.tokenRatio !== "number" || !(t.tokenRatio > 0) || !Number.isFinite(t.tokenRatio)) throw problem("retryThrottling.tokenRatio", t.tokenRatio, "must be a number greater than 0");
    // gRPC keeps three decimals of the ratio.
    throttling = Object.freeze({ maxTokens: t.maxTokens, tokenRatio: Math.floor(t.tokenRatio * 1000) / 1000 || 0.001 });
  }
  const lookup = (path: string): MethodPolicy | undefined => {
    const hit = exact.get(path);
    if (hit !== undefined) return hit;
    const slash = path.indexOf("/", 1);
    const s = slash > 0 ? byService.get(path.slice(1, slash)) : undefined;
    return s ?? fallback;
  };
  return Object.freeze({ lookup, throttling });
}

/**
 * The channel's retry throttle (A6): a token bucket starting full at `maxTokens`; a failed
 * attempt (a retryable or non-fatal status) takes 1, a success gives back `tokenRatio`; retries
 * and hedges are sent only while more than half the tokens are left.
 */
export class RetryThrottle {
  private tokens: number;
  constructor(
    readonly maxTokens: number,
    readonly tokenRatio: number,
  ) {
    this.tokens = maxTokens;
  }

  /** Tokens now. */
  get level(): number {
    return this.tokens;
  }

  /** True while retries and hedges may be sent. */
  get allows(): boolean {
    return this.tokens > this.maxTokens / 2;
  }

  failed(): void {
    this.tokens = Math.max(0, this.tokens - 1);
  }

  succeeded(): void {
    this.tokens = Math.min(this.maxTokens, this.tokens + this.tokenRatio);
  }
}

/** The wait before retry number `n` (1 for the first retry): random in [0, min(initial × multiplier^(n-1), max)], in ms. */
export function retryBackoffMs(p: RetryPolicy, n: number, random: () => number = Math.random): number {
  return random() * Math.min(p.initialBackoffMs * p.backoffMultiplier ** (n - 1), p.maxBackoffMs);
}

/** The trailer a server sends to say when (or whether) to retry. */
export const PUSHBACK_KEY = "grpc-retry-pushback-ms";
/** The request header on every attempt after the first: how many came before. */
export const PREVIOUS_ATTEMPTS_KEY = "grpc-previous-rpc-attempts";

/**
 * The server's pushback in trailers: undefined when absent, a delay in ms for a non-negative
 * integer, and "stop" for a negative or malformed value (A6: no more attempts).
 */
export function pushbackOf(trailers: Readonly<Record<string, unknown>> | undefined): number | "stop" | undefined {
  const v = trailers?.[PUSHBACK_KEY];
  if (v === undefined) return undefined;
  const s = Array.isArray(v) ? v[0] : v;
  if (typeof s !== "string" || !/^\d{1,10}$/.test(s.trim())) return "stop";
  return Number(s.trim());
}

/**
 * A streamed request kept for the attempts of one call: each attempt reads it from the start;
 * messages are pulled from the application's iterable only when the attempt furthest ahead
 * needs the next one. Once the call commits to one attempt, nothing is kept any more.
 */
export class ReplayBuffer<T> {
  private items: T[] = [];
  /** Index of items[0] in the whole request (messages dropped after the commit come before it). */
  private base = 0;
  private done = false;
  private pulling: Promise<void> | undefined;
  private keep = true;
  /** Encoded bytes of the messages kept. */
  bytes = 0;

  constructor(
    /** The next message of the request and its encoded size; `done` at its end. */
    private readonly next: () => Promise<{ done: true } | { done: false; value: T; bytes: number }>,
  ) {}

  /** From now on only one reader is left: messages it read are dropped. */
  commit(): void {
    this.keep = false;
  }

  /** The request from its first message (or, after the commit, from where the one reader is). */
  async *reader(): AsyncGenerator<T, void, undefined> {
    let i = 0;
    for (;;) {
      if (i < this.base + this.items.length) {
        if (i < this.base) throw new KoalaError(ErrorCode.INVALID_ARGUMENT, "a committed request stream was read again");
        const item = this.items[i - this.base]!;
        i++;
        // After the commit the one reader is never more than a message behind the pulls: once it
        // has read everything pulled, drop it all.
        if (!this.keep && i === this.base + this.items.length) {
          this.items.length = 0;
          this.base = i;
          this.bytes = 0;
        }
        yield item;
      } else if (this.done) return;
      else await (this.pulling ??= this.pull());
    }
  }

  private async pull(): Promise<void> {
    try {
      const r = await this.next();
      if (r.done) this.done = true;
      else {
        this.items.push(r.value);
        if (this.keep) this.bytes += r.bytes;
      }
    } finally {
      this.pulling = undefined;
    }
  }
}
