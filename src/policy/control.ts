/**
 * Live control: a process that opts in (`KOALA_CONTROL=1` with {@link controlFromEnvironment},
 * `control = true` in the configuration file, or {@link enableControl}) serves a control
 * socket through which `koala ctl` lists it and attaches, detaches, replaces or reconfigures its
 * engines and reads its metrics, without a restart and without application code.
 *
 * Where: a Unix socket `<pid>.sock` in the runtime directory — `KOALA_RUNTIME_DIR`, else
 * `$XDG_RUNTIME_DIR/koala`, else `<tmpdir>/koala-<uid>` — a directory of mode 0700 owned by
 * the user (one owned by anybody else is refused, so that nobody can plant one in /tmp); the
 * socket itself is 0600. Only the owner (and root) can connect: connecting to a Unix socket
 * needs write permission on its file and search permission on its directory. Node has no API
 * for the peer's credentials (SO_PEERCRED), so these permissions are the check.
 *
 * Protocol: JSON lines. A request `{"id":1,"cmd":"ps"}`, an answer `{"id":1,"ok":true,"result":…}`
 * or `{"id":1,"ok":false,"error":{"code":"KOALA_ERR_…","message":"…"}}`. Commands: `ps`,
 * `attach {kind, name?, scope?, options?}`, `detach {name}`, `replace {name, kind?, options?}`,
 * `configure {name, options}`, `metrics` (Prometheus text), `channels` (the process's channels: target,
 * balancer, and each endpoint's address, state, transport, weight and locality).
 *
 * A process removes its socket when it exits (and on SIGINT / SIGTERM when nothing else
 * handles them); a socket left by a killed process is removed by the next `ps` that finds no
 * process behind it.
 */
import { chmodSync, lstatSync, mkdirSync, readdirSync, unlinkSync } from "node:fs";
import { createConnection, createServer as createNetServer, type Server as NetServer, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ErrorCode, KoalaError, RpcError, codeName } from "../errors.js";
import { log } from "../log.js";
import { serviceOfPath } from "../rpc/interceptor.js";
import type { Server } from "../rpc/server.js";
import { liveChannels, type ChannelView } from "../cluster/index.js";
import { engineKinds, policies, type AttachedEngine, type AttachScope } from "./index.js";

/** The directory of control sockets for this user (created 0700 by {@link enableControl}). */
export function runtimeDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.KOALA_RUNTIME_DIR) return env.KOALA_RUNTIME_DIR;
  if (env.XDG_RUNTIME_DIR) return join(env.XDG_RUNTIME_DIR, "koala");
  return join(tmpdir(), `koala-${process.getuid?.() ?? "user"}`);
}

/** Makes sure `dir` exists, is a directory of ours and has mode 0700; throws KOALA_ERR_CONTROL otherwise. */
function secureDir(dir: string): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const st = lstatSync(dir);
  if (!st.isDirectory()) throw new KoalaError(ErrorCode.CONTROL, `control directory ${dir} is not a directory`);
  const uid = process.getuid?.();
  if (uid !== undefined && st.uid !== uid) throw new KoalaError(ErrorCode.CONTROL, `control directory ${dir} belongs to uid ${st.uid}, not to this user (uid ${uid}); refusing to use it`);
  if ((st.mode & 0o777) !== 0o700) chmodSync(dir, 0o700);
}

/** A server shown by `koala ctl ps`. */
export interface TrackedServer {
  /** A name for it (the backend name from the configuration file, or given to {@link trackServer}). */
  name: string;
  /** Services it serves. */
  services: string[];
  /** Addresses it listens at. */
  addresses: string[];
}

/** What `ps` reports for one process. */
export interface ProcessInfo {
  pid: number;
  /** The command line. */
  command: string;
  /** Servers the process registered (see {@link trackServer}). */
  servers: TrackedServer[];
  /** Engines attached, in chain order. */
  engines: AttachedEngine[];
}

const tracked = new Map<Server, string>();

/**
 * Lists `server` under `name` in `koala ctl ps` (startBackend does it for backends; with
 * KOALA_CONTROL=1 every server is listed as `server-N` unless named so); untracked when it
 * shuts down. With `keepName`, a server listed already keeps the name it has.
 */
export function trackServer(server: Server, name: string, options?: { keepName?: boolean }): void {
  if (tracked.has(server)) {
    if (options?.keepName !== true) tracked.set(server, name);
    return;
  }
  tracked.set(server, name);
  const shutdown = server.shutdown.bind(server);
  const forceShutdown = server.forceShutdown.bind(server);
  server.shutdown = (o) => {
    tracked.delete(server);
    return shutdown(o);
  };
  server.forceShutdown = () => {
    tracked.delete(server);
    forceShutdown();
  };
}

/** This process, as `ps` reports it. */
export function processInfo(): ProcessInfo {
  const servers = [...tracked].map(([s, name]) => ({
    name,
    services: [...new Set([...s.routes.keys()].map(serviceOfPath))],
    addresses: s.addresses,
  }));
  return { pid: process.pid, command: process.argv.slice(1).join(" "), servers, engines: policies.list() };
}

/** What `channels` reports for one process. */
export interface ChannelsInfo {
  pid: number;
  /** The command line. */
  command: string;
  /** Its channels, in the order they were made (closed ones left out). */
  channels: ChannelView[];
}

/** A control request (one JSON line). */
export type ControlRequest =
  | { cmd: "ps" }
  | { cmd: "metrics" }
  | { cmd: "channels" }
  | { cmd: "attach"; kind: string; name?: string; scope?: AttachScope; options?: Record<string, unknown> }
  | { cmd: "detach"; name: string }
  | { cmd: "replace"; name: string; kind?: string; options?: Record<string, unknown> }
  | { cmd: "configure"; name: string; options: Record<string, unknown> };

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);

function need(req: Record<string, unknown>, key: string, test: (v: unknown) => boolean, what: string, optional = false): void {
  const v = req[key];
  if (v === undefined && optional) return;
  if (!test(v)) throw new KoalaError(ErrorCode.INVALID_ARGUMENT, `control request "${String(req.cmd)}": "${key}" must be ${what}`);
}

function engineView(name: string): AttachedEngine {
  return policies.list().find((e) => e.name === name)!;
}

/** Carries out one control request in this process; throws on a bad one. */
export function handleControlRequest(req: unknown): unknown {
  if (!isObject(req)) throw new KoalaError(ErrorCode.INVALID_ARGUMENT, "a control request must be a JSON object");
  const isString = (v: unknown) => typeof v === "string" && v !== "";
  switch (req.cmd) {
    case "ps":
      return processInfo();
    case "metrics":
      return { text: policies.metricsText() };
    case "channels":
      return { pid: process.pid, command: process.argv.slice(1).join(" "), channels: liveChannels() } satisfies ChannelsInfo;
    case "attach": {
      need(req, "kind", (v) => typeof v === "string" && engineKinds().includes(v), `one of ${engineKinds().join(", ")}`);
      need(req, "name", isString, "a string", true);
      need(req, "scope", isObject, "an object ({ global: true } | { service } | { method }, with side)", true);
      need(req, "options", isObject, "an object", true);
      const scope = req.scope === undefined ? undefined : checkScope(req.scope as Record<string, unknown>);
      const e = policies.attach(req.kind as string, (req.options as Record<string, unknown>) ?? {}, { name: req.name as string | undefined, scope });
      return engineView(e.name);
    }
    case "detach":
      need(req, "name", isString, "an engine name");
      if (!policies.detach(req.name as string)) throw new KoalaError(ErrorCode.CONTROL, `no engine named "${String(req.name)}" is attached`);
      return { detached: req.name };
    case "replace": {
      need(req, "name", isString, "an engine name");
      need(req, "kind", isString, "an engine kind", true);
      need(req, "options", isObject, "an object", true);
      const old = policies.get(req.name as string);
      if (old === undefined) throw new KoalaError(ErrorCode.CONTROL, `no engine named "${String(req.name)}" is attached`);
      const kind = (req.kind as string | undefined) ?? old.kind;
      // Options not given stay as they were when the kind stays the same.
      const options = (req.options as Record<string, unknown> | undefined) ?? (kind === old.kind ? { ...old.options } : {});
      policies.replace(req.name as string, kind, options);
      return engineView(req.name as string);
    }
    case "configure":
      need(req, "name", isString, "an engine name");
      need(req, "options", isObject, "an object");
      if (policies.get(req.name as string) === undefined) throw new KoalaError(ErrorCode.CONTROL, `no engine named "${String(req.name)}" is attached`);
      policies.configure(req.name as string, req.options as Record<string, unknown>);
      return engineView(req.name as string);
    default:
      throw new KoalaError(ErrorCode.INVALID_ARGUMENT, `unknown control command ${JSON.stringify(req.cmd)} (known: ps, attach, detach, replace, configure, metrics, channels)`);
  }
}

function checkScope(s: Record<string, unknown>): AttachScope {
  const keys = Object.keys(s);
  const bad = keys.find((k) => !["global", "service", "method", "side", "backend"].includes(k));
  if (bad !== undefined) throw new KoalaError(ErrorCode.INVALID_ARGUMENT, `scope: unknown key "${bad}" (known: global, service, method, side, backend)`);
  if (s.side !== undefined && s.side !== "client" && s.side !== "server") throw new KoalaError(ErrorCode.INVALID_ARGUMENT, `scope: "side" must be "client" or "server"`);
  if (s.backend !== undefined && (typeof s.backend !== "string" || s.backend === "")) throw new KoalaError(ErrorCode.INVALID_ARGUMENT, `scope: "backend" must be a server's name (a non-empty string)`);
  if (s.backend !== undefined && s.side === "client") throw new KoalaError(ErrorCode.INVALID_ARGUMENT, `scope: "backend" names a server: its side is "server"`);
  const side = { ...(s.side === undefined ? {} : { side: s.side as "client" | "server" }), ...(s.backend === undefined ? {} : { backend: s.backend as string }) };
  const where = ["global", "service", "method"].filter((k) => s[k] !== undefined);
  if (where.length > 1) throw new KoalaError(ErrorCode.INVALID_ARGUMENT, `scope: give one of global, service, method`);
  if (typeof s.service === "string") return { service: s.service, ...side };
  if (typeof s.method === "string") return { method: s.method, ...side };
  if (s.global === undefined || s.global === true) return { global: true, ...side };
  throw new KoalaError(ErrorCode.INVALID_ARGUMENT, `scope: "service" and "method" are strings, "global" is true`);
}

function errorOf(err: unknown): { code: string; message: string } {
  if (err instanceof KoalaError) return { code: err.code, message: err.message };
  if (err instanceof RpcError) return { code: codeName(err.code), message: err.rawMessage };
  return { code: ErrorCode.CONTROL, message: err instanceof Error ? err.message : String(err) };
}

/** Largest request line accepted, in bytes (a longer one closes the connection). */
const MAX_LINE_BYTES = 1024 * 1024;

function serveConnection(socket: Socket): void {
  socket.setEncoding("utf8");
  let buffered = "";
  socket.on("data", (chunk: string) => {
    buffered += chunk;
    if (buffered.length > MAX_LINE_BYTES) {
      socket.destroy();
      return;
    }
    let nl: number;
    while ((nl = buffered.indexOf("\n")) >= 0) {
      const line = buffered.slice(0, nl);
      buffered = buffered.slice(nl + 1);
      if (line.trim() === "") continue;
      let id: unknown = null;
      let answer: object;
      try {
        const req: unknown = JSON.parse(line);
        if (isObject(req)) id = req.id ?? null;
        answer = { id, ok: true, result: handleControlRequest(req) };
      } catch (err) {
        answer = { id, ok: false, error: errorOf(err) };
      }
      socket.write(`${JSON.stringify(answer)}\n`);
    }
  });
  socket.on("error", () => undefined);
}

/** The control socket of this process, once opened. */
export interface ControlHandle {
  /** Path of the socket. */
  path: string;
  /** Closes the socket and removes its file. */
  close(): Promise<void>;
}

let opened: Promise<ControlHandle> | undefined;

/**
 * Opens this process's control socket (once; later calls return the same handle). The
 * socket does not keep the process alive. `dir` defaults to {@link runtimeDir}.
 */
export function enableControl(options: { dir?: string } = {}): Promise<ControlHandle> {
  if (opened !== undefined) return opened;
  opened = open(options.dir ?? runtimeDir()).catch((err: unknown) => {
    opened = undefined;
    throw err;
  });
  return opened;
}

/** Opens the control socket when `KOALA_CONTROL=1`; resolves to undefined otherwise. */
export async function controlFromEnvironment(env: NodeJS.ProcessEnv = process.env): Promise<ControlHandle | undefined> {
  return env.KOALA_CONTROL === "1" ? enableControl() : undefined;
}

async function open(dir: string): Promise<ControlHandle> {
  secureDir(dir);
  const path = join(dir, `${process.pid}.sock`);
  try {
    unlinkSync(path); // left by an earlier process with the same pid
  } catch {
    // none
  }
  const server: NetServer = createNetServer(serveConnection);
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(path, () => {
      server.off("error", reject);
      resolve();
    });
  });
  // The directory (0700) already keeps others out between bind and chmod.
  chmodSync(path, 0o600);
  server.unref();
  const remove = () => {
    try {
      unlinkSync(path);
    } catch {
      // gone already
    }
  };
  const onSignal = (signal: NodeJS.Signals) => {
    remove();
    // Nobody else handles it: die of it as the process would have without us.
    if (process.listenerCount(signal) === 0) process.kill(process.pid, signal);
  };
  process.on("exit", remove);
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
  log("info", "control", `control socket at ${path}`);
  return {
    path,
    close: () =>
      new Promise<void>((resolve) => {
        process.off("exit", remove);
        process.off("SIGINT", onSignal);
        process.off("SIGTERM", onSignal);
        opened = undefined;
        server.close(() => resolve());
        remove();
      }),
  };
}

// ——— the client side (koala ctl) ———

/** One process's answer to a control request. */
export type ControlAnswer = { pid: number; ok: true; result: unknown } | { pid: number; ok: false; error: { code: string; message: string } };

function pidsIn(dir: string): number[] {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return [];
  }
  return names.flatMap((n) => (/^\d+\.sock$/.test(n) ? [Number(n.slice(0, -5))] : [])).sort((a, b) => a - b);
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** Sends `request` to the process `pid` through its socket in `dir`; the answer, or a failure as an answer. */
export function controlRequest(pid: number, request: ControlRequest, options: { dir?: string; timeoutMs?: number } = {}): Promise<ControlAnswer> {
  const path = join(options.dir ?? runtimeDir(), `${pid}.sock`);
  return new Promise((resolve) => {
    const socket = createConnection(path);
    let buffered = "";
    let done = false;
    const finish = (a: ControlAnswer) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.destroy();
      resolve(a);
    };
    const timer = setTimeout(() => finish({ pid, ok: false, error: { code: ErrorCode.CONTROL, message: `process ${pid} did not answer within ${options.timeoutMs ?? 5000} ms` } }), options.timeoutMs ?? 5000);
    socket.setEncoding("utf8");
    socket.on("connect", () => socket.write(`${JSON.stringify({ id: 1, ...request })}\n`));
    socket.on("data", (d: string) => {
      buffered += d;
      const nl = buffered.indexOf("\n");
      if (nl < 0) return;
      try {
        const a = JSON.parse(buffered.slice(0, nl)) as { ok: boolean; result?: unknown; error?: { code: string; message: string } };
        finish(a.ok ? { pid, ok: true, result: a.result } : { pid, ok: false, error: a.error ?? { code: ErrorCode.CONTROL, message: "no error text" } });
      } catch (err) {
        finish({ pid, ok: false, error: { code: ErrorCode.PROTOCOL, message: `bad answer from process ${pid}: ${(err as Error).message}` } });
      }
    });
    socket.on("error", (err: NodeJS.ErrnoException) => {
      const code = err.code === "ENOENT" || err.code === "ECONNREFUSED" ? ErrorCode.CONNECTION_REFUSED : err.code === "EACCES" ? ErrorCode.ACCESS_DENIED : ErrorCode.CONTROL;
      finish({ pid, ok: false, error: { code, message: `process ${pid}: ${err.message}` } });
    });
    socket.on("close", () => finish({ pid, ok: false, error: { code: ErrorCode.CONTROL, message: `process ${pid} closed the control connection without an answer` } }));
  });
}

/**
 * Sends `request` to every koala process of this user that has a control socket in `dir`
 * (the "global policy" of `koala ctl … all`). A socket with no process behind it (its pid is
 * gone and nothing listens) is removed and left out.
 */
export async function controlAll(request: ControlRequest, options: { dir?: string; timeoutMs?: number } = {}): Promise<ControlAnswer[]> {
  const dir = options.dir ?? runtimeDir();
  const answers = await Promise.all(pidsIn(dir).map((pid) => controlRequest(pid, request, options)));
  return answers.filter((a) => {
    if (a.ok || a.error.code !== ErrorCode.CONNECTION_REFUSED || alive(a.pid)) return true;
    try {
      unlinkSync(join(dir, `${a.pid}.sock`));
      log("info", "control", `removed the stale control socket of process ${a.pid}`);
    } catch {
      // removed meanwhile
    }
    return false;
  });
}
