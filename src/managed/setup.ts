/**
 * The set-up socket of managed mode (PROTOCOL.md §7): where it lives, the one-line JSON exchange
 * that hands the daemon an application's ring pair, and the daemon's side of it. After the
 * exchange the socket carries wake-up bytes only.
 */
import { chmodSync, mkdirSync, statSync, unlinkSync } from "node:fs";
import { createConnection, createServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { ErrorCode, KoalaError, type ErrorCodeValue } from "../errors.js";
import { log } from "../log.js";
import type { ResolvedTransportOptions } from "../transport/index.js";
import { closeFd, createSealedMemory, openSealedMemory, peerCredentials, type PeerCredentials } from "./native.js";
import type { PollSettings } from "./poll.js";
import { checkRingBytes, checkRingPair, formatRingPair, ringPairBytes } from "./ring.js";
import { ShmConnection } from "./shm-connection.js";

/** Version of the set-up exchange. */
export const SETUP_VERSION = 1;
/** Longest set-up line accepted, in bytes. */
const MAX_LINE_BYTES = 8192;

/**
 * The daemon's set-up socket by default: `$XDG_RUNTIME_DIR/koala/daemon.sock`, else
 * `/run/koala/<uid>/daemon.sock` when /run/koala/<uid> exists, else `<tmpdir>/koala-<uid>/daemon.sock`.
 * `KOALA_DAEMON_SOCKET` overrides it (for the application and the daemon alike).
 */
export function defaultDaemonSocket(env: NodeJS.ProcessEnv = process.env): string {
  if (env.KOALA_DAEMON_SOCKET !== undefined && env.KOALA_DAEMON_SOCKET !== "") return env.KOALA_DAEMON_SOCKET;
  if (env.XDG_RUNTIME_DIR !== undefined && env.XDG_RUNTIME_DIR !== "") return join(env.XDG_RUNTIME_DIR, "koala", "daemon.sock");
  const uid = process.getuid?.() ?? 0;
  try {
    if (statSync(`/run/koala/${uid}`).isDirectory()) return `/run/koala/${uid}/daemon.sock`;
  } catch {
    // not there: the temporary folder
  }
  return join(tmpdir(), `koala-${uid}`, "daemon.sock");
}

/** The first line an application sends. */
export interface SetupHello {
  readonly v: number;
  /** The application's descriptor of the ring pair's memfd (the daemon opens `/proc/<pid>/fd/<fd>`). */
  readonly fd: number;
  /** Bytes of each ring. */
  readonly ringBytes: number;
  /** The target the daemon dials for this connection (`tcp://…`, `unix:/…`, `rdma://…`). */
  readonly target: string;
}

/** Reads one newline-ended line from `socket` (at most MAX_LINE_BYTES); resolves with it and whatever arrived after it. */
function readLine(socket: Socket, timeoutMs: number, what: string): Promise<{ line: string; rest: Buffer }> {
  return new Promise((resolve, reject) => {
    let got = Buffer.alloc(0);
    const timer = setTimeout(() => done(new KoalaError(ErrorCode.CONNECT_TIMEOUT, `${what}: nothing within ${timeoutMs} ms`)), timeoutMs);
    const onData = (chunk: Buffer): void => {
      got = Buffer.concat([got, chunk]);
      const nl = got.indexOf(10);
      if (nl >= 0) return done(undefined, { line: got.subarray(0, nl).toString("utf8"), rest: got.subarray(nl + 1) });
      if (got.length > MAX_LINE_BYTES) done(new KoalaError(ErrorCode.PROTOCOL, `${what}: a line longer than ${MAX_LINE_BYTES} bytes`));
    };
    const onEnd = (): void => done(new KoalaError(ErrorCode.PEER_CLOSED, `${what}: the peer closed the socket`));
    const onError = (err: Error): void => done(new KoalaError(ErrorCode.CONNECTION_RESET, `${what}: ${err.message}`, { cause: err }));
    const done = (err: KoalaError | undefined, value?: { line: string; rest: Buffer }): void => {
      clearTimeout(timer);
      socket.off("data", onData).off("end", onEnd).off("error", onError);
      socket.pause();
      if (err !== undefined) reject(err);
      else resolve(value!);
    };
    socket.on("data", onData).on("end", onEnd).on("error", onError);
    socket.resume();
  });
}

/** Application side: creates a ring pair, hands it to the daemon at `socketPath` for `target`, and returns the connection. */
export async function dialDaemon(socketPath: string, target: string, ringBytes: number, poll: PollSettings, options: ResolvedTransportOptions): Promise<ShmConnection> {
  checkRingBytes("ringBytes", ringBytes);
  const { buffer: memory, fd } = createSealedMemory(ringPairBytes(ringBytes));
  let socket: Socket | undefined;
  try {
    formatRingPair(memory, ringBytes);
    socket = await new Promise<Socket>((resolve, reject) => {
      const s = createConnection(socketPath);
      const timer = setTimeout(() => {
        s.destroy();
        reject(new KoalaError(ErrorCode.CONNECT_TIMEOUT, `no koala daemon answered at ${socketPath} within ${options.connectTimeoutMs} ms`));
      }, options.connectTimeoutMs);
      s.once("connect", () => {
        clearTimeout(timer);
        s.off("error", onError);
        resolve(s);
      });
      const onError = (err: NodeJS.ErrnoException): void => {
        clearTimeout(timer);
        const code = err.code === "ENOENT" || err.code === "ECONNREFUSED" ? ErrorCode.CONNECTION_REFUSED : err.code === "EACCES" ? ErrorCode.ACCESS_DENIED : ErrorCode.CONNECTION_RESET;
        reject(new KoalaError(code, `no koala daemon at ${socketPath} (${err.code ?? err.message}); start one with \`koala daemon\``, { cause: err }));
      };
      s.once("error", onError);
    });
    const hello: SetupHello = { v: SETUP_VERSION, fd, ringBytes, target };
    socket.write(`${JSON.stringify(hello)}\n`);
    const { line, rest } = await readLine(socket, options.connectTimeoutMs, `the koala daemon at ${socketPath}`);
    let answer: { ok?: boolean; error?: string; code?: string };
    try {
      answer = JSON.parse(line) as typeof answer;
    } catch {
      throw new KoalaError(ErrorCode.PROTOCOL, `the koala daemon at ${socketPath} answered something that is not JSON`);
    }
    if (answer.ok !== true) {
      const known = Object.values(ErrorCode) as string[];
      const code = (typeof answer.code === "string" && known.includes(answer.code) ? answer.code : ErrorCode.CONNECTION_REFUSED) as ErrorCodeValue;
      throw new KoalaError(code, `the koala daemon at ${socketPath} refused ${target}: ${String(answer.error)}`);
    }
    const conn = new ShmConnection({
      memory,
      ringBytes,
      side: "app",
      socket,
      copyReceived: true,
      poll,
      localAddress: `shm:pid/${process.pid}`,
      remoteAddress: `shm:${socketPath}#${target}`,
      options,
    });
    socket.resume();
    if (rest.length > 0) socket.emit("data", rest);
    return conn;
  } catch (err) {
    socket?.destroy();
    throw err;
  } finally {
    // The daemon has its own descriptor now (or refused): the mapping keeps the memory alive.
    closeFd(fd);
  }
}

/** What the daemon knows of an application asking to attach. */
export interface AttachRequest {
  /** The target it asked for. */
  readonly target: string;
  /** Its process, from the kernel. */
  readonly peer: PeerCredentials;
}

/** The daemon's set-up socket. */
export interface SetupListener {
  /** The socket's path. */
  readonly path: string;
  /** Stops accepting (attached applications stay) and removes the socket file. */
  close(): Promise<void>;
}

/** Options of {@link listenSetup}. */
export interface SetupListenOptions {
  /** Socket path. */
  readonly path: string;
  /** Transport options of every attached connection. */
  readonly transport: ResolvedTransportOptions;
  /** How the daemon's side of each ring pair polls it (poll.ts). */
  readonly poll: PollSettings;
  /**
   * Called for each application whose ring pair passed the checks, before it is answered;
   * throwing (or rejecting) refuses it with that error. Resolves with what takes the connection
   * once it is accepted.
   */
  readonly onAttach: (request: AttachRequest) => Promise<(connection: ShmConnection) => void>;
}

function fdOf(socket: Socket): number {
  const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (typeof fd !== "number" || fd < 0) throw new KoalaError(ErrorCode.SYSTEM, "the set-up socket has no file descriptor");
  return fd;
}

/**
 * Daemon side: listens at `options.path` (0600, in a directory made 0700 if this call creates
 * it), maps each application's ring pair after checking it, and hands it to `onAttach`.
 */
export async function listenSetup(options: SetupListenOptions): Promise<SetupListener> {
  const dir = dirname(options.path);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const st = statSync(dir);
  if ((st.mode & 0o077) !== 0 && dir !== tmpdir()) {
    chmodSync(dir, 0o700);
  }
  try {
    // A socket file left by a daemon that died: nobody answers on it.
    if (statSync(options.path).isSocket()) unlinkSync(options.path);
  } catch {
    // none
  }
  const server: Server = createServer({ pauseOnConnect: true }, (socket) => {
    void attach(socket, options).catch((err: unknown) => {
      const e = err instanceof KoalaError ? err : new KoalaError(ErrorCode.SYSTEM, String(err));
      log("warn", "managed", `set-up refused: ${e.message}`);
      if (!socket.destroyed) socket.end(`${JSON.stringify({ error: e.message, code: e.code })}\n`);
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", (err: NodeJS.ErrnoException) =>
      reject(new KoalaError(err.code === "EADDRINUSE" ? ErrorCode.ADDRESS_IN_USE : ErrorCode.SYSTEM, `cannot listen at ${options.path}: ${err.message}`, { cause: err })),
    );
    // Made 0600 before anyone can connect: the umask makes it so at bind, chmod makes sure.
    const oldMask = process.umask(0o177);
    server.listen(options.path, () => {
      process.umask(oldMask);
      resolve();
    });
  });
  chmodSync(options.path, 0o600);
  return {
    path: options.path,
    close: async () => {
      await new Promise<void>((r) => server.close(() => r()));
      try {
        unlinkSync(options.path);
      } catch {
        // gone already
      }
    },
  };
}

async function attach(socket: Socket, options: SetupListenOptions): Promise<void> {
  socket.on("error", () => {});
  const peer = peerCredentials(fdOf(socket));
  const { line, rest } = await readLine(socket, options.transport.connectTimeoutMs, `set-up from pid ${peer.pid}`);
  let hello: SetupHello;
  try {
    hello = JSON.parse(line) as SetupHello;
  } catch {
    throw new KoalaError(ErrorCode.PROTOCOL, `pid ${peer.pid} sent a set-up line that is not JSON`);
  }
  if (typeof hello !== "object" || hello === null || hello.v !== SETUP_VERSION) throw new KoalaError(ErrorCode.PROTOCOL, `pid ${peer.pid} speaks set-up version ${JSON.stringify((hello as { v?: unknown } | null)?.v)}, this daemon ${SETUP_VERSION}`);
  if (typeof hello.target !== "string" || hello.target === "") throw new KoalaError(ErrorCode.INVALID_ADDRESS, `pid ${peer.pid} named no target`);
  if (typeof hello.fd !== "number" || !Number.isInteger(hello.fd) || hello.fd < 0) throw new KoalaError(ErrorCode.PROTOCOL, `pid ${peer.pid} named no ring descriptor`);
  const ringBytes = checkRingBytes("ringBytes", hello.ringBytes);
  // The pid is the kernel's (SO_PEERCRED) and its socket is open: /proc/<pid> is that process.
  const memory = openSealedMemory(peer.pid, hello.fd, peer.uid, ringPairBytes(ringBytes));
  checkRingPair(memory, ringBytes);
  const take = await options.onAttach({ target: hello.target, peer });
  const connection = new ShmConnection({
    memory,
    ringBytes,
    side: "daemon",
    socket,
    copyReceived: false,
    poll: options.poll,
    localAddress: `shm:${options.path}`,
    remoteAddress: `shm:pid/${peer.pid}`,
    options: options.transport,
  });
  take(connection);
  socket.write(`${JSON.stringify({ ok: true })}\n`);
  socket.resume();
  if (rest.length > 0) socket.emit("data", rest);
}
