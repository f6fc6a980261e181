/**
 * The xDS client: one ADS stream (envoy.service.discovery.v3.AggregatedDiscoveryService/
 * StreamAggregatedResources, state of the world) per control plane, shared by every xds target
 * of the process, over @grpc/grpc-js (loaded with import() on the first xds target; real gRPC
 * over HTTP/2 as control planes expect).
 *
 * Watchers subscribe to resources by type and name; the client asks for the union of the names
 * per type, checks every resource of a response (resources.ts), ACKs a response whose resources
 * are all valid and NACKs one that has an invalid resource (`error_detail` says which and why),
 * applying the valid ones and keeping the previous version of the invalid ones. A listener or
 * cluster the client had that is missing from a response was deleted (state of the world lists
 * them all); a resource no response has named within the does-not-exist timeout (15 s as in
 * gRPC, `KOALA_XDS_RESOURCE_TIMEOUT_MS`) from the request that asked for it does not exist. The
 * stream reconnects with backoff and asks again for everything; what it had stays in use.
 * When the last watcher leaves, the stream and its channel close (nothing keeps the process up).
 */
import type * as GrpcJs from "@grpc/grpc-js";
import { ErrorCode, KoalaError } from "../../errors.js";
import { log } from "../../log.js";
import { Backoff } from "../backoff.js";
import type { Bootstrap } from "./bootstrap.js";
import { ADS_METHOD, loadXdsProtos, requirePeer, type XdsProtos } from "./protos.js";
import type { ResourceType } from "./resources.js";

/** How long a subscribed resource may stay unnamed by the control plane before it counts as absent, by default (gRPC: 15 s). */
export const DOES_NOT_EXIST_MS = 15_000;

/** The does-not-exist timeout: `KOALA_XDS_RESOURCE_TIMEOUT_MS` (an integer ≥ 1), else {@link DOES_NOT_EXIST_MS}; KOALA_ERR_CONFIG when it is not valid. */
export function resourceTimeoutMs(env: NodeJS.ProcessEnv = process.env): number {
  const v = env.KOALA_XDS_RESOURCE_TIMEOUT_MS;
  if (v === undefined || v === "") return DOES_NOT_EXIST_MS;
  if (!/^\d{1,9}$/.test(v) || Number(v) < 1) throw new KoalaError(ErrorCode.CONFIG, `KOALA_XDS_RESOURCE_TIMEOUT_MS=${JSON.stringify(v)} is not a whole number of milliseconds ≥ 1`);
  return Number(v);
}

/** What a watcher of one resource hears. */
export interface ResourceWatcher<T> {
  /** The resource, the first time and at every change. */
  onResource(value: T): void;
  /** The control plane says it does not exist (or never named it). */
  onMissing(): void;
  /** The newest version was rejected (the previous one, if any, stays in use), or the stream failed. */
  onError(message: string): void;
}

interface Entry {
  value: unknown;
  /** True once the control plane sent it (`value` is valid then), false once it said it does not exist. */
  known: boolean | undefined;
  watchers: Set<ResourceWatcher<unknown>>;
  timer: NodeJS.Timeout | undefined;
}

interface TypeState {
  readonly type: ResourceType<unknown>;
  readonly entries: Map<string, Entry>;
  /** The last version ACKed, and the nonce of the last response. */
  version: string;
  nonce: string;
}

type Stream = GrpcJs.ClientDuplexStream<Record<string, unknown>, Record<string, unknown>>;

/** One control plane's ADS stream and the resources watched through it. */
export class XdsClient {
  private readonly types = new Map<string, TypeState>();
  private grpc: typeof GrpcJs | undefined;
  private channel: GrpcJs.Client | undefined;
  private stream: Stream | undefined;
  /** True until the first request of the current stream went out (it carries the node). */
  private firstRequest = true;
  private readonly backoff = new Backoff({ initialMs: 1000, maxMs: 30_000, multiplier: 1.6, jitter: 0.2 });
  private retryTimer: NodeJS.Timeout | undefined;
  private loading = false;
  private readonly protos: XdsProtos;
  private readonly timeoutMs = resourceTimeoutMs();
  private closed = false;

  constructor(
    private readonly bootstrap: Bootstrap,
    private readonly onIdle: () => void,
  ) {
    requirePeer("@grpc/grpc-js");
    this.protos = loadXdsProtos();
  }

  /** The control plane's address. */
  get server(): string {
    return this.bootstrap.serverUri;
  }

  /** Watches `name` of `type`; returns the function that stops watching. */
  watch<T>(type: ResourceType<T>, name: string, watcher: ResourceWatcher<T>): () => void {
    let ts = this.types.get(type.typeUrl);
    if (ts === undefined) {
      ts = { type: type as ResourceType<unknown>, entries: new Map(), version: "", nonce: "" };
      this.types.set(type.typeUrl, ts);
    }
    let entry = ts.entries.get(name);
    const w = watcher as ResourceWatcher<unknown>;
    if (entry === undefined) {
      entry = { value: undefined, known: undefined, watchers: new Set([w]), timer: undefined };
      ts.entries.set(name, entry);
      this.request(ts);
    } else {
      entry.watchers.add(w);
      const e = entry;
      if (e.known !== undefined) {
        queueMicrotask(() => {
          if (!e.watchers.has(w)) return;
          if (e.known === true) w.onResource(e.value);
          else w.onMissing();
        });
      }
    }
    return () => this.unwatch(ts, name, w);
  }

  private unwatch(ts: TypeState, name: string, w: ResourceWatcher<unknown>): void {
    const entry = ts.entries.get(name);
    if (entry === undefined || !entry.watchers.delete(w) || entry.watchers.size > 0) return;
    if (entry.timer !== undefined) clearTimeout(entry.timer);
    ts.entries.delete(name);
    if ([...this.types.values()].every((t) => t.entries.size === 0)) {
      this.close();
      this.onIdle();
    } else this.request(ts);
  }

  /** Starts the does-not-exist timers of the resources of `ts` not known yet (their request just went out). */
  private startTimers(ts: TypeState): void {
    for (const [name, entry] of ts.entries) {
      if (entry.known !== undefined || entry.timer !== undefined) continue;
      entry.timer = setTimeout(() => {
        entry.timer = undefined;
        if (entry.known === undefined && ts.entries.get(name) === entry) this.missing(entry);
      }, this.timeoutMs);
      entry.timer.unref();
    }
  }

  /** Stops every does-not-exist timer (the stream failed: they start again with the next request). */
  private stopTimers(): void {
    for (const ts of this.types.values()) {
      for (const e of ts.entries.values()) {
        if (e.timer !== undefined) clearTimeout(e.timer);
        e.timer = undefined;
      }
    }
  }

  private missing(entry: Entry): void {
    entry.known = false;
    entry.value = undefined;
    for (const w of [...entry.watchers]) w.onMissing();
  }

  /** Sends the subscription of `ts` (opening the stream first if there is none). */
  private request(ts: TypeState, errorDetail?: string): void {
    if (this.closed) return;
    if (this.stream === undefined) {
      this.connect();
      return; // connecting sends every type's subscription
    }
    const req: Record<string, unknown> = {
      version_info: ts.version,
      resource_names: [...ts.entries.keys()],
      type_url: ts.type.typeUrl,
      response_nonce: ts.nonce,
    };
    if (this.firstRequest) req.node = { ...this.bootstrap.node, user_agent_name: "koala-rpc" };
    this.firstRequest = false;
    if (errorDetail !== undefined) req.error_detail = { code: 3, message: errorDetail }; // INVALID_ARGUMENT
    this.stream.write(req);
    this.startTimers(ts);
  }

  private connect(): void {
    if (this.closed || this.stream !== undefined || this.retryTimer !== undefined || this.loading) return;
    if (this.grpc === undefined) {
      // The stream opens once grpc-js is loaded; the subscriptions are sent then.
      this.loading = true;
      import("@grpc/grpc-js").then(
        (m) => {
          this.loading = false;
          this.grpc = ((m as unknown as { default?: typeof GrpcJs }).default ?? m) as typeof GrpcJs;
          this.connect();
        },
        (err: unknown) => {
          this.loading = false;
          this.failAll(`cannot load @grpc/grpc-js: ${(err as Error).message}`);
        },
      );
      return;
    }
    const grpc = this.grpc;
    this.channel ??= new grpc.Client(this.bootstrap.serverUri, grpc.credentials.createInsecure());
    const p = this.protos;
    const stream = this.channel.makeBidiStreamRequest(
      ADS_METHOD,
      (m: Record<string, unknown>) => p.encode("envoy.service.discovery.v3.DiscoveryRequest", m),
      (b: Buffer) => p.decode("envoy.service.discovery.v3.DiscoveryResponse", b),
    );
    this.stream = stream;
    this.firstRequest = true;
    stream.on("data", (res: Record<string, unknown>) => {
      if (this.stream !== stream) return;
      this.backoff.reset();
      this.onResponse(res);
    });
    const ended = (why: string) => {
      if (this.stream !== stream) return;
      this.stream = undefined;
      this.stopTimers();
      if (this.closed) return;
      log("warn", "client", `xDS: the ADS stream to ${this.bootstrap.serverUri} ended (${why}); reconnecting`);
      this.failAll(`the ADS stream to ${this.bootstrap.serverUri} failed: ${why}`);
      const delay = this.backoff.fail();
      this.retryTimer = setTimeout(() => {
        this.retryTimer = undefined;
        this.connect();
      }, delay);
      this.retryTimer.unref();
    };
    stream.on("error", (err: Error) => ended(err.message));
    stream.on("end", () => ended("the control plane closed it"));
    for (const ts of this.types.values()) {
      ts.nonce = ""; // nonces belong to a stream
      if (ts.entries.size > 0) this.request(ts);
    }
  }

  /** Tells the watchers of resources not yet known that the stream failed (known ones keep their value, quietly). */
  private failAll(message: string): void {
    for (const ts of this.types.values()) {
      for (const e of ts.entries.values()) if (e.known !== true) for (const w of [...e.watchers]) w.onError(message);
    }
  }

  private onResponse(res: Record<string, unknown>): void {
    const typeUrl = String(res.type_url ?? "");
    const ts = this.types.get(typeUrl);
    const version = String(res.version_info ?? "");
    const nonce = String(res.nonce ?? "");
    if (ts === undefined) return; // a type never asked for: nothing to ACK (an empty list would ask for every listener)
    const errors: string[] = [];
    const named = new Set<string>();
    const changed: [Entry, unknown][] = [];
    let unnamed = false;
    for (const [i, any] of ((res.resources as unknown[] | undefined) ?? []).entries()) {
      let checked;
      try {
        const r = this.protos.unpack(any, typeUrl);
        checked = ts.type.check(this.protos, r);
      } catch (err) {
        errors.push(`resources[${i}]: ${(err as Error).message}`);
        unnamed = true;
        continue;
      }
      named.add(checked.name);
      const entry = ts.entries.get(checked.name);
      if ("error" in checked) {
        errors.push(checked.error);
        if (entry !== undefined) for (const w of [...entry.watchers]) w.onError(checked.error);
        continue;
      }
      if (entry === undefined) continue; // not subscribed
      if (entry.known === true && JSON.stringify(entry.value) === JSON.stringify(checked.value)) continue;
      changed.push([entry, checked.value]);
    }
    ts.nonce = nonce;
    if (errors.length === 0) ts.version = version;
    else log("warn", "client", `xDS: NACK of ${typeUrl} version ${JSON.stringify(version)} from ${this.bootstrap.serverUri}: ${errors.join("; ")}`);
    this.request(ts, errors.length === 0 ? undefined : errors.join("; "));
    for (const [entry, value] of changed) {
      if (entry.timer !== undefined) clearTimeout(entry.timer);
      entry.timer = undefined;
      entry.known = true;
      entry.value = value;
      for (const w of [...entry.watchers]) w.onResource(value);
    }
    // A resource that could not be read may be any of them: absence says nothing then.
    // Only a resource the client had: one never seen waits for its timer (the response may
    // answer a request that did not name it yet).
    if (ts.type.allInEveryResponse && !unnamed) {
      for (const [name, entry] of ts.entries) {
        if (!named.has(name) && entry.known === true) {
          if (entry.timer !== undefined) clearTimeout(entry.timer);
          entry.timer = undefined;
          this.missing(entry);
        }
      }
    }
  }

  /** Closes the stream and the channel. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.retryTimer !== undefined) clearTimeout(this.retryTimer);
    const s = this.stream;
    this.stream = undefined;
    s?.cancel();
    this.channel?.close();
    this.stopTimers();
  }
}

const clients = new Map<string, XdsClient>();

/** The process's client for the bootstrap's control plane (one per server URI and node), made on first use. */
export function xdsClientFor(bootstrap: Bootstrap): XdsClient {
  const key = `${bootstrap.serverUri}\n${JSON.stringify(bootstrap.node)}`;
  let c = clients.get(key);
  if (c === undefined) {
    c = new XdsClient(bootstrap, () => {
      if (clients.get(key) === c) clients.delete(key);
    });
    clients.set(key, c);
  }
  return c;
}
