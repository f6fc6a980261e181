/**
 * The `[daemon]` table of the configuration file (KOALA_CONFIG), read by `koala daemon`:
 *
 * ```toml
 * [daemon]
 * socket = "/run/koala/1000/daemon.sock"   # default: $XDG_RUNTIME_DIR/koala/daemon.sock, …
 * pollUs = 200                             # longest look at an empty ring before sleeping, µs (0: never)
 * pollMode = "adaptive"                    # or "fixed" (look pollUs after every ring event)
 * control = true                           # control socket for `koala ctl` (default true)
 *
 * [[daemon.engines]]                       # on every attached application's calls
 * kind = "acl"
 * options = { rules = [{ action = "deny", service = "pkg.Admin" }] }
 *
 * [[daemon.engines]]                       # on one application's calls only
 * kind = "ratelimit"
 * scope = { uid = 1001 }                   # or { pid = 4242 }, { service = "…" }, { method = "/…/…" }
 * options = { ratePerSecond = 100 }
 * ```
 *
 * The rest of the file is the library's (src/policy/config.ts checks it; its `[daemon]` key is
 * left to this module). A mistyped key or a bad value is a KOALA_ERR_CONFIG error naming the file
 * and the key path.
 */
import { readFileSync } from "node:fs";
import { parse } from "smol-toml";
import { ErrorCode, KoalaError } from "../errors.js";
import { boolean, custom, resolveOptions, type OptionsSpec } from "../options.js";
import { createEngine, type AttachScope } from "../policy/index.js";
import { pollModeOption, pollUsOption, type PollMode } from "./poll.js";
import { defaultDaemonSocket } from "./setup.js";

/** One engine of the daemon, checked. */
export interface DaemonEngineConfig {
  readonly kind: string;
  readonly name: string;
  /** Where it applies (`backend` is `pid:N` / `uid:N` for a scope by application). */
  readonly scope: AttachScope;
  readonly options: Record<string, unknown>;
}

/** The `[daemon]` table, checked, with defaults. */
export interface DaemonConfig {
  readonly file: string;
  readonly socket: string;
  readonly pollUs: number;
  readonly pollMode: PollMode;
  readonly control: boolean;
  readonly engines: readonly DaemonEngineConfig[];
}

const isTable = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v) && !(v instanceof Date);

interface Raw {
  socket: string | undefined;
  pollUs: number;
  pollMode: PollMode;
  control: boolean;
  engines: readonly unknown[];
}
const spec: OptionsSpec<Raw> = {
  socket: custom<string | undefined>(undefined, "a socket path", (v) => typeof v === "string" && v !== "" && Buffer.byteLength(v) <= 107),
  pollUs: pollUsOption,
  pollMode: pollModeOption,
  control: boolean(true),
  engines: custom<readonly unknown[]>([], "an array of tables ([[daemon.engines]])", (v) => Array.isArray(v) && v.every(isTable)),
};

interface RawEngine {
  kind: string;
  name: string | undefined;
  scope: Record<string, unknown> | undefined;
  options: Record<string, unknown>;
}
const engineSpec: OptionsSpec<RawEngine> = {
  kind: custom<string>("", "an engine kind", (v) => typeof v === "string" && v !== ""),
  name: custom<string | undefined>(undefined, "a name", (v) => typeof v === "string" && /^[A-Za-z0-9_.:@/-]{1,100}$/.test(v)),
  scope: custom<Record<string, unknown> | undefined>(undefined, "a table { global = true } | { service } | { method } | { pid } | { uid }", isTable),
  options: custom<Record<string, unknown>>({}, "a table of the engine's options", isTable),
};

function fail(file: string, path: string, why: string): KoalaError {
  return new KoalaError(ErrorCode.CONFIG, `${file}: ${path}: ${why}`);
}

function check<T>(file: string, path: string, f: () => T): T {
  try {
    return f();
  } catch (err) {
    if (err instanceof KoalaError && err.code === ErrorCode.CONFIG) throw err;
    const message = (err as Error).message;
    // resolveOptions names the table itself ("daemon: unknown option …"): do not say it twice.
    throw message.startsWith(`${path.split(".").pop()!.replace(/\[\d+\]$/, "")}:`) ? new KoalaError(ErrorCode.CONFIG, `${file}: ${path}${message.slice(message.indexOf(":"))}`) : fail(file, path, message);
  }
}

function readScope(file: string, path: string, s: Record<string, unknown>): AttachScope {
  const keys = Object.keys(s);
  const bad = keys.find((k) => !["global", "service", "method", "pid", "uid"].includes(k));
  if (bad !== undefined) throw fail(file, `${path}.${bad}`, "unknown key (known: global, service, method, pid, uid)");
  if (keys.length !== 1) throw fail(file, path, "give exactly one of global, service, method, pid, uid");
  const k = keys[0]!;
  const v = s[k];
  if (k === "global") {
    if (v !== true) throw fail(file, `${path}.global`, "must be true");
    return { global: true };
  }
  if (k === "pid" || k === "uid") {
    if (typeof v !== "number" || !Number.isInteger(v) || v < 0) throw fail(file, `${path}.${k}`, "must be a non-negative integer");
    return { global: true, side: "server", backend: `${k}:${v}` };
  }
  if (typeof v !== "string" || v === "") throw fail(file, `${path}.${k}`, "must be a non-empty string");
  return k === "service" ? { service: v } : { method: v };
}

/** Checks the `[daemon]` table of the TOML text `text` (`file` names it in errors). */
export function parseDaemonConfig(text: string, file = "<config>"): DaemonConfig {
  let doc: Record<string, unknown>;
  try {
    doc = parse(text) as Record<string, unknown>;
  } catch (err) {
    throw new KoalaError(ErrorCode.CONFIG, `${file}: not valid TOML: ${(err as Error).message.split("\n")[0]}`, { cause: err });
  }
  const raw = doc.daemon ?? {};
  if (!isTable(raw)) throw fail(file, "daemon", "must be a table ([daemon])");
  const d = check(file, "daemon", () => resolveOptions("daemon", spec, raw));
  const names = new Set<string>();
  const engines = d.engines.map((e, i) => {
    const path = `daemon.engines[${i}]`;
    const r = check(file, path, () => resolveOptions("engine", engineSpec, e));
    if (r.kind === "") throw fail(file, `${path}.kind`, "missing: every engine needs a kind");
    const name = r.name ?? r.kind;
    if (names.has(name)) throw fail(file, `${path}.name`, `${JSON.stringify(name)} is taken (names are unique in the daemon)`);
    names.add(name);
    const scope = r.scope === undefined ? { global: true as const } : readScope(file, `${path}.scope`, r.scope);
    check(file, `${path}.options`, () => createEngine(r.kind, r.options, name).close?.());
    return { kind: r.kind, name, scope, options: r.options };
  });
  return { file, socket: d.socket ?? defaultDaemonSocket(), pollUs: d.pollUs, pollMode: d.pollMode, control: d.control, engines };
}

/** Reads and checks the `[daemon]` table of `path` (default KOALA_CONFIG); no file: the defaults. */
export function loadDaemonConfig(path: string | undefined = process.env.KOALA_CONFIG): DaemonConfig {
  if (path === undefined || path === "") return parseDaemonConfig("", "<defaults>");
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (err) {
    throw new KoalaError(ErrorCode.CONFIG, `${path}: cannot read the configuration file: ${(err as Error).message}`, { cause: err });
  }
  return parseDaemonConfig(text, path);
}
