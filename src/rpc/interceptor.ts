/**
 * The seam between the RPC core and whatever watches or steers calls: application interceptors
 * and the policy engines of src/policy. The core hands each call's {@link CallInfo} to the chain
 * at four points (client before sending, server on receiving, server before replying, client on
 * the reply); each interceptor answers with a verdict:
 *
 * - `undefined`: pass (the fast path: no allocation, no await),
 * - an `RpcError`: reject the call with it,
 * - a promise: hold the call until it settles (resolving to `undefined` passes, to an RpcError
 *   rejects; a rejection rejects with RpcError.from(reason)).
 *
 * Annotating is changing `call.metadata` (request metadata at the request points, response
 * trailers at the response points). Interceptors also hear how each call ended (`onEnd`).
 *
 * This module is the RPC layer's: the policy layer above builds on it, never the reverse.
 */
import { Code, RpcError } from "../errors.js";
import type { MethodDefinition, MethodKind } from "../proto/definition.js";
import type { PeerCertificate } from "../transport/types.js";
import type { Metadata } from "./metadata.js";

/**
 * Where in a call's life an interceptor is asked: before the client sends the call, when the
 * server has received it (before the handler runs), before the server sends its reply, and when
 * the client has received the reply (before the caller sees it).
 */
export type InterceptPoint = "client-send" | "server-receive" | "server-send" | "client-receive";

/**
 * What an interceptor knows about a call. It is the core's own call object (nothing is
 * allocated for the interceptors), the same one at every point of the call; it stays readable
 * after the call ended.
 */
export interface CallInfo {
  /** `"client"` or `"server"`: the side this call object lives on. */
  readonly side: "client" | "server";
  /** Fully qualified service name, e.g. `hello.Greeter`. */
  readonly service: string;
  /** The method: `.name` as in the .proto (e.g. `SayHello`), `.path`, `.kind`, `.input` and `.output` types. */
  readonly method: MethodDefinition;
  /** `/service/Method`. */
  readonly path: string;
  /** The call kind. */
  readonly kind: MethodKind;
  /** The other end's address. */
  readonly peer: string;
  /**
   * On tls, the other end's certificate (subject, alternative names, whether it was verified):
   * a client's only under mutual TLS (`requestCert`). Undefined on other transports, and before
   * a client call has a connection.
   */
  readonly peerCertificate: PeerCertificate | undefined;
  /** Absolute deadline in epoch ms, or undefined. */
  readonly deadline: number | undefined;
  /** Request metadata (client-send may add to it: it is sent as it is after the chain). */
  readonly metadata: Metadata;
  /** The request message, when the call has exactly one (unary, server streaming); undefined for streams. */
  readonly request: unknown;
  /** The response message at `server-send` / `client-receive` of a call with exactly one (unary, client streaming). */
  readonly response: unknown;
  /** When the call started (epoch ms, `performance`-free so that engines can compare with deadlines). */
  readonly startedAt: number;
  /** True once the call ended (completed, failed or cancelled): a held call that ended is dropped from queues. */
  readonly ended: boolean;
  /** Free slot for interceptors to keep per-call state (e.g. a start time or a token); keyed by the interceptor. Made on first use. */
  readonly state: Map<object, unknown>;
}

/** An interceptor's answer (see the module comment). */
export type Verdict = void | undefined | RpcError | PromiseLike<void | undefined | RpcError>;

/** Something on every call's path: an application interceptor or a policy engine. */
export interface Interceptor {
  /** A name for logs and for replacing it (`koala ctl`, `policies.replace`). */
  readonly name: string;
  /** Asked at each of the four points (see {@link InterceptPoint}) before the call goes on. */
  onCall?(call: CallInfo, point: InterceptPoint): Verdict;
  /**
   * Asked for every message of a stream: at `client-send` / `server-send` before it is sent (a
   * held message waits, and so does the stream behind it), at `server-receive` /
   * `client-receive` when it arrives (pass or reject only: a promise there counts as pass).
   */
  onMessage?(call: CallInfo, point: InterceptPoint, message: unknown): Verdict;
  /**
   * Told once when a call ends, on its side: `error` is undefined when it succeeded (OK), else
   * the RpcError it ended with (its `code` is the status). Must not throw (an exception is
   * logged and ignored).
   */
  onEnd?(call: CallInfo, error: RpcError | undefined): void;
}

/** Marks a run of the `onCall` hooks (no stream message). */
const NO_MESSAGE: unique symbol = Symbol("no message");

/**
 * Runs the `onCall` hooks (with `message` NO_MESSAGE) or the `onMessage` hooks of `list[from..]`:
 * undefined when every interceptor passed at once, an RpcError to reject with, or a promise for
 * a held call (resolving the same way; the rest of the chain runs after the hold, unless the
 * call ended meanwhile).
 */
function runHooks(list: readonly Interceptor[], call: CallInfo, point: InterceptPoint, message: unknown, from: number): undefined | RpcError | Promise<undefined | RpcError> {
  for (let i = from; i < list.length; i++) {
    const icpt = list[i]!;
    let v: Verdict;
    try {
      if (message === NO_MESSAGE) {
        if (icpt.onCall === undefined) continue;
        v = icpt.onCall(call, point);
      } else {
        if (icpt.onMessage === undefined) continue;
        v = icpt.onMessage(call, point, message);
      }
    } catch (err) {
      return RpcError.from(err, Code.INTERNAL);
    }
    if (v === undefined) continue;
    if (v instanceof RpcError) return v;
    return afterHold(v, list, call, point, message, i + 1);
  }
  return undefined;
}

/**
 * The rest of a chain after a hold. Its own function: closures inside {@link runHooks} would make
 * V8 allocate a context on every call of it (and one per loop turn), hold or not.
 */
function afterHold(v: PromiseLike<void | undefined | RpcError>, list: readonly Interceptor[], call: CallInfo, point: InterceptPoint, message: unknown, next: number): Promise<undefined | RpcError> {
  return Promise.resolve(v).then(
    (r) => (r instanceof RpcError ? r : call.ended ? undefined : runHooks(list, call, point, message, next)),
    (err: unknown) => RpcError.from(err, Code.INTERNAL),
  );
}

/** Runs the chain's `onCall` hooks for `call` at `point` (see {@link runHooks} for what it returns). */
export function runChain(list: readonly Interceptor[], call: CallInfo, point: InterceptPoint): undefined | RpcError | Promise<undefined | RpcError> {
  return runHooks(list, call, point, NO_MESSAGE, 0);
}

/** Runs the chain's `onMessage` hooks for one stream message; like {@link runChain}. */
export function runMessageChain(list: readonly Interceptor[], call: CallInfo, point: InterceptPoint, message: unknown): undefined | RpcError | Promise<undefined | RpcError> {
  return runHooks(list, call, point, message, 0);
}

/**
 * What the RPC core's call objects (ServerCall, ClientCall) share as {@link CallInfo}: the
 * names derived from the method, and the interceptors' state slot, made on first use.
 */
export abstract class CallInfoBase {
  /** The method called. */
  abstract readonly method: MethodDefinition;
  private stateMap: Map<object, unknown> | undefined = undefined;
  /**
   * When the call started, in ms after {@link TIME_BASE}: a small integer V8 keeps unboxed,
   * where an epoch time in a field would be a heap number allocated per call.
   */
  private startedRel = 0;

  /** Records the start (only calls that have interceptors need it). */
  protected markStart(): void {
    const rel = Date.now() - TIME_BASE;
    // `| 0` makes it an integer V8 stores unboxed; past 2^30 ms (12 days) of uptime it stays a double (boxed, still right).
    this.startedRel = rel < 0x3fff_ffff ? rel | 0 : rel;
  }

  /** When the call started (epoch ms; 0 when no interceptor applies to it). */
  get startedAt(): number {
    return this.startedRel === 0 ? 0 : TIME_BASE + this.startedRel;
  }

  get service(): string {
    return serviceOf(this.method);
  }

  get path(): string {
    return this.method.path;
  }

  get kind(): MethodKind {
    return this.method.kind;
  }

  get state(): Map<object, unknown> {
    return (this.stateMap ??= new Map());
  }
}

/** The epoch ms call start times are counted from (a moment before any call of this process). */
const TIME_BASE = Date.now() - 1;

const services = new WeakMap<MethodDefinition, string>();

/** The service name of `method` (`pkg.Service`), computed once per method definition. */
export function serviceOf(method: MethodDefinition): string {
  let s = services.get(method);
  if (s === undefined) services.set(method, (s = serviceOfPath(method.path)));
  return s;
}

/** Tells every interceptor in `list` how `call` ended; one that throws is logged (by `logError`) and does not stop the others. */
export function runEndChain(list: readonly Interceptor[], call: CallInfo, error: RpcError | undefined, logError: (message: string) => void): void {
  for (const i of list) {
    if (i.onEnd === undefined) continue;
    try {
      i.onEnd(call, error);
    } catch (err) {
      logError(`interceptor ${i.name} threw in onEnd: ${(err as Error)?.message ?? String(err)}`);
    }
  }
}

/** The empty chain (the fast path allocates nothing). */
const NONE: readonly Interceptor[] = Object.freeze([]);

/**
 * Where interceptors are attached: the whole process, a service, or one method
 * (`/service/Method`); with `side`, only calls of that side (a server's incoming calls, or a
 * client's outgoing ones), else both; with `backend`, only the calls of the server created with
 * that `name` (a backend of the configuration file), so that two backends of one process that
 * serve the same service keep their engines apart.
 */
export type InterceptorScope = ({ global: true } | { service: string } | { method: string }) & { side?: "client" | "server"; backend?: string };

interface Attached {
  interceptor: Interceptor;
  scope: InterceptorScope;
}

/**
 * The process-wide interceptors (policy engines attach here): every channel and server of the
 * process consults it for each call, in attach order, after its own interceptors. Changes take
 * effect for calls that start afterwards; calls in flight keep the chain they started with.
 */
export class InterceptorRegistry {
  private attached: Attached[] = [];
  /** Bumped on every change (endpoints rebuild their cached chains). */
  version = 0;

  /** How many interceptors are attached. */
  get size(): number {
    return this.attached.length;
  }

  /** Attaches `interceptor` (names are unique: attaching a name again is an error; use `replace`). */
  attach(interceptor: Interceptor, scope: InterceptorScope = { global: true }): void {
    if (this.attached.some((a) => a.interceptor.name === interceptor.name)) {
      throw new RpcError(Code.ALREADY_EXISTS, `an interceptor named "${interceptor.name}" is attached already; replace() it instead`);
    }
    this.attached = [...this.attached, { interceptor, scope }];
    this.version++;
  }

  /** Detaches the interceptor named `name`; false when there is none. */
  detach(name: string): boolean {
    const before = this.attached.length;
    this.attached = this.attached.filter((a) => a.interceptor.name !== name);
    if (this.attached.length === before) return false;
    this.version++;
    return true;
  }

  /** Puts `next` where the interceptor named `name` was (same position and scope); returns the one replaced. */
  replace(name: string, next: Interceptor): Interceptor {
    const i = this.attached.findIndex((a) => a.interceptor.name === name);
    if (i < 0) throw new RpcError(Code.NOT_FOUND, `no interceptor named "${name}" is attached`);
    const old = this.attached[i]!;
    const copy = [...this.attached];
    copy[i] = { interceptor: next, scope: old.scope };
    this.attached = copy;
    this.version++;
    return old.interceptor;
  }

  /** The interceptor named `name`, if attached. */
  get(name: string): Interceptor | undefined {
    return this.attached.find((a) => a.interceptor.name === name)?.interceptor;
  }

  /** What is attached, in order, with its scope. */
  list(): { name: string; scope: InterceptorScope }[] {
    return this.attached.map((a) => ({ name: a.interceptor.name, scope: a.scope }));
  }

  /**
   * The interceptors that apply to a `side` call of `path` (`/service/Method`) at an endpoint
   * named `backend` (a server's `name`; undefined for channels and unnamed servers), in order.
   * Not cached here: each endpoint caches its chains ({@link EndpointChains}).
   */
  chainFor(path: string, side: "client" | "server", backend?: string): readonly Interceptor[] {
    if (this.attached.length === 0) return NONE;
    const service = serviceOfPath(path);
    return this.attached
      .filter(
        (a) =>
          (a.scope.side === undefined || a.scope.side === side) &&
          (a.scope.backend === undefined || (side === "server" && a.scope.backend === backend)) &&
          ("global" in a.scope ? true : "service" in a.scope ? a.scope.service === service : a.scope.method === path),
      )
      .map((a) => a.interceptor);
  }
}

/** The process's registry: what `koala-rpc/policy` and `koala ctl` attach to. */
export const processInterceptors = new InterceptorRegistry();

/**
 * The chains of one endpoint (a server or a channel): its own interceptors, then the process's
 * that apply to it, per method path. Built on first use and kept until the process registry
 * changes, so that finding a call's chain allocates nothing.
 */
export class EndpointChains {
  private version = -1;
  private readonly byPath = new Map<string, readonly Interceptor[]>();

  constructor(
    private readonly own: readonly Interceptor[],
    private readonly side: "client" | "server",
    private readonly backend: string | undefined,
  ) {}

  /** The chain of a call of `path` (the frozen empty chain when nothing applies). */
  of(path: string): readonly Interceptor[] {
    if (this.own.length === 0 && processInterceptors.size === 0) return NONE;
    if (this.version !== processInterceptors.version) {
      this.byPath.clear();
      this.version = processInterceptors.version;
    }
    let c = this.byPath.get(path);
    if (c === undefined) {
      const global = processInterceptors.chainFor(path, this.side, this.backend);
      c = this.own.length === 0 ? global : global.length === 0 ? this.own : [...this.own, ...global];
      this.byPath.set(path, c);
    }
    return c;
  }
}

/** The service part of a method path: `/pkg.Service/Method` → `pkg.Service`. */
export function serviceOfPath(path: string): string {
  const end = path.lastIndexOf("/");
  return path.slice(path.startsWith("/") ? 1 : 0, end < 1 ? path.length : end);
}

/**
 * Acts on a held verdict (the call sites handle a pass and a rejection inline, without a
 * closure): `next()` when the hold ends in a pass, `reject(error)` when it ends in a rejection —
 * or when `next` throws; nothing when the call ended while it was held.
 */
export function whenReleased(verdict: Promise<undefined | RpcError>, call: { readonly ended: boolean }, reject: (error: unknown) => void, next: () => void): void {
  void verdict.then((v) => {
    if (call.ended) return;
    if (v instanceof RpcError) reject(v);
    else {
      try {
        next();
      } catch (err) {
        reject(err);
      }
    }
  });
}
