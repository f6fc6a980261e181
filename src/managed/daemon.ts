/**
 * `koala daemon`: the per-host service of managed mode. Applications attach through the set-up
 * socket (setup.ts), one ring pair per connection; for each, the daemon dials the target the
 * application named (tcp, unix, rdma: any transport address) and relays RPC frames both ways.
 *
 * Frames from an application go out from the ring's memory: the upstream connection is given the
 * record's view as its message part, and the record is released to the ring in the transport's
 * `onWritten` (no copy between application and daemon on the way to the socket or the NIC).
 * Frames from upstream are copied once into the application's ring.
 *
 * Everything an application holds here (its mapping, its upstream connection, its calls) is
 * released when its set-up socket closes, however it went (exit, kill -9): the kernel closes the
 * socket, the daemon sees the end.
 *
 * A target with a resolver (`dns:`, `static:`) is resolved here with the cluster layer, as a
 * channel resolves it; each application connection gets one upstream connection (pick_first).
 * The daemon process must not run with KOALA_MODE=managed (its own targets would go back to
 * itself): `koala daemon` removes the variable.
 */
import { createConnectionSource, parseTarget, resolverFor, type ConnectionSource, type PooledConnection } from "../cluster/index.js";
import { ErrorCode, KoalaError } from "../errors.js";
import { log } from "../log.js";
import { connect, parseAddress, type Connection, type ResolvedTransportOptions, type TransportOptions } from "../transport/index.js";
import { resolveTransportOptions } from "../transport/options.js";
import type { PeerCredentials } from "./native.js";
import { shmNative } from "./native.js";
import { resolveOptions, type OptionsSpec } from "../options.js";
import { pollModeOption, pollUsOption, type PollMode } from "./poll.js";

const pollSpec: OptionsSpec<{ pollUs: number; pollMode: PollMode }> = { pollUs: pollUsOption, pollMode: pollModeOption };
import { defaultDaemonSocket, listenSetup, type SetupListener } from "./setup.js";
import type { ShmConnection } from "./shm-connection.js";
import { enginePolicy, type FramePolicy, type FrameSession, type RelayPort } from "./policy.js";

/** Options of {@link startDaemon}. */
export interface DaemonOptions {
  /** The set-up socket's path. Default: {@link defaultDaemonSocket}. */
  socketPath?: string;
  /**
   * Longest look at an application's empty ring after a ring event before sleeping, in
   * microseconds (poll.ts); 0 sleeps at once. Default {@link DEFAULT_POLL_US} (200).
   */
  pollUs?: number;
  /** `adaptive` (look for twice the recent wait, at most `pollUs`) or `fixed` (look for `pollUs` after every event). Default `adaptive`. */
  pollMode?: PollMode;
  /** Options of the upstream connections the daemon dials (and of the ring connections). */
  transport?: TransportOptions;
  /** What checks every call of every attached application. Default: the engines attached to this process ({@link enginePolicy}); null: none. */
  policy?: FramePolicy | null;
}

/** One attached application connection, as `koala ctl` and tests see it. */
export interface AttachedApp {
  /** A number for this attachment, from 1. */
  readonly id: number;
  /** The application's process, from the kernel. */
  readonly peer: PeerCredentials;
  /** The target it asked for. */
  readonly target: string;
  /** The address of the daemon's connection to that target. */
  readonly upstream: string;
  /** Calls open through it now. */
  readonly calls: number;
}

/** A running daemon. */
export interface Daemon {
  /** The set-up socket's path. */
  readonly socketPath: string;
  /** The applications attached now. */
  attached(): AttachedApp[];
  /** Stops accepting and closes every attached connection and its upstream. */
  close(): Promise<void>;
}

function checkAddress(target: string): void {
  const parsed = parseAddress(target);
  if (parsed.scheme === "shm" || parsed.scheme === "memory") throw new KoalaError(ErrorCode.INVALID_ADDRESS, `the daemon does not dial ${parsed.scheme}: targets`);
}

/** A transport connection as the cluster layer holds it (the daemon's relay counts the calls, not the source). */
class Upstream implements PooledConnection {
  constructor(readonly connection: Connection) {}
  get usable(): boolean {
    return !this.connection.isClosed;
  }
  get isClosed(): boolean {
    return this.connection.isClosed;
  }
  readonly outstanding = 0;
  get closed(): Promise<unknown> {
    return this.connection.closed;
  }
  close(): void {
    this.connection.close();
  }
  drain(): void {
    this.connection.close();
  }
}

/**
 * Dials `target` for one application connection: a transport address directly; a target with a
 * registered resolver (`dns:///orders:50051`, `static:///a:1,b:2`) through the cluster layer, as
 * a channel does, taking the connection its `pick_first` balancer makes ready. Resolves with the
 * connection and what closes everything behind it.
 */
async function dialUpstream(target: string, transport: ResolvedTransportOptions): Promise<{ connection: Connection; close: () => void }> {
  const t = parseTarget(target, (scheme) => resolverFor(scheme) !== undefined);
  if (t.scheme === undefined) {
    checkAddress(target);
    const connection = await connect(target, transport);
    return { connection, close: () => connection.close() };
  }
  if (t.scheme === "managed") throw new KoalaError(ErrorCode.INVALID_ADDRESS, `the daemon does not dial managed: targets (${target})`);
  const backoff = { initialMs: 100, maxMs: 5000, multiplier: 1.6, jitter: 0.2 };
  const source: ConnectionSource<Upstream> = createConnectionSource<Upstream>(
    target,
    async (endpoint) => {
      checkAddress(endpoint.address);
      return new Upstream(await connect(endpoint.address, transport));
    },
    { backoff, endpointBackoff: backoff, balancer: "pick_first", balancerOptions: {}, minResolveIntervalMs: 1000 },
  );
  try {
    const up = source.pick() ?? (await source.wait());
    return { connection: up.connection, close: () => source.close() };
  } catch (err) {
    source.close();
    throw err;
  }
}

/** One application connection and its upstream connection. */
class Relay implements RelayPort {
  private closed = false;
  private readonly session: FrameSession | undefined;

  constructor(
    readonly id: number,
    readonly peer: PeerCredentials,
    readonly target: string,
    readonly app: ShmConnection,
    readonly upstream: Connection,
    private readonly closeUpstream: () => void,
    policy: FramePolicy | undefined,
    private readonly onClose: (relay: Relay) => void,
  ) {
    const session = (this.session = policy?.session(this));
    app.onMessage((m) => {
      if (session === undefined || !session.fromApp(m)) this.forward([m], m);
    });
    upstream.onMessage((m) => {
      session?.fromUpstream(m);
      this.toApp(m);
    });
    void app.closed.then((why) => this.close(`the application closed (${why.message})`));
    void upstream.closed.then((why) => this.close(`${this.target} closed (${why.message})`));
  }

  get calls(): number {
    return this.session?.openCalls ?? 0;
  }

  forward(parts: readonly Uint8Array[], record?: Uint8Array): void {
    let ok: boolean;
    try {
      ok = this.upstream.send(parts, record === undefined ? undefined : () => this.app.release(record));
    } catch (err) {
      if (record !== undefined) this.app.release(record);
      if (this.upstream.isClosed) return;
      // Only MESSAGE_TOO_LARGE leaves the connection up: that frame is refused, its call fails there.
      log("warn", "managed", `pid ${this.peer.pid}: a frame for ${this.target} was refused: ${(err as Error).message}`);
      return;
    }
    if (!ok) {
      this.app.pause();
      this.upstream.drain().then(
        () => this.app.resume(),
        () => {},
      );
    }
  }

  drop(record: Uint8Array): void {
    this.app.release(record);
  }

  reply(frame: Uint8Array): void {
    if (!this.app.isClosed) this.app.send([frame]);
  }

  private toApp(message: Uint8Array): void {
    if (this.app.isClosed) return this.upstream.release(message);
    let ok: boolean;
    try {
      ok = this.app.send([message], () => this.upstream.release(message));
    } catch {
      return this.upstream.release(message);
    }
    if (!ok) {
      this.upstream.pause();
      this.app.drain().then(
        () => this.upstream.resume(),
        () => {},
      );
    }
  }

  close(why: string): void {
    if (this.closed) return;
    this.closed = true;
    log("info", "managed", `pid ${this.peer.pid} (uid ${this.peer.uid}) detached from ${this.target}: ${why}`);
    this.session?.close();
    this.app.close(new Error(why));
    this.closeUpstream();
    this.onClose(this);
  }
}

/** Starts a daemon: the set-up socket, and a relay per attached application connection. */
export async function startDaemon(options: DaemonOptions = {}): Promise<Daemon> {
  shmNative(); // fails now, naming the build command, when the addon is missing
  const socketPath = options.socketPath ?? defaultDaemonSocket();
  const checked = resolveOptions("startDaemon()", pollSpec, { pollUs: options.pollUs, pollMode: options.pollMode });
  const poll = { maxUs: checked.pollUs, mode: checked.pollMode };
  const transport: ResolvedTransportOptions = resolveTransportOptions("startDaemon(): option \"transport\"", options.transport);
  const relays = new Set<Relay>();
  const policy = options.policy === null ? undefined : (options.policy ?? enginePolicy);
  let nextId = 1;
  const setup: SetupListener = await listenSetup({
    path: socketPath,
    transport,
    poll,
    onAttach: async ({ target, peer }) => {
      const upstream = await dialUpstream(target, transport);
      log("info", "managed", `pid ${peer.pid} (uid ${peer.uid}) attached to ${target}`);
      return (app) => {
        relays.add(new Relay(nextId++, peer, target, app, upstream.connection, upstream.close, policy, (r) => relays.delete(r)));
      };
    },
  });
  return {
    socketPath,
    attached: () => [...relays].map((r) => ({ id: r.id, peer: r.peer, target: r.target, upstream: r.upstream.remoteAddress, calls: r.calls })),
    close: async () => {
      // Relays first: the set-up server's close waits for its sockets, the relays' sockets.
      const closing = setup.close();
      for (const r of [...relays]) r.close("the daemon is shutting down");
      await closing;
    },
  };
}
