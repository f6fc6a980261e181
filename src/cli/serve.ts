/**
 * `koala serve <module> [backend…]`: starts backends of the configuration file (KOALA_CONFIG or
 * --config) with the handlers a module exports, and serves until SIGINT or SIGTERM, then shuts
 * down gracefully. The module exports `backends`: for each backend name, a list of
 * `[service definition, handlers]` pairs, or a function of the backends started before it that
 * returns one (a gateway that calls them). Backends start in the module's order.
 */
import { resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { parseArgs } from "node:util";
import { KoalaError } from "../errors.js";
import type { Server } from "../rpc/server.js";
import { loadConfig, startBackend, type ServiceEntry } from "../policy/config.js";

const USAGE = `usage: koala serve <module> [backend…] [--config FILE]

Starts the backends named (default: every backend of the configuration file) with the handlers
exported by <module> as \`backends\` ({ name: [[definition, handlers], …] | (started) => […] }),
prints where each listens, and serves until SIGINT / SIGTERM. A .ts module needs a checkout
(tsx) or node --import tsx.
`;

type BackendServices = readonly ServiceEntry[] | ((started: ReadonlyMap<string, Server>) => readonly ServiceEntry[] | Promise<readonly ServiceEntry[]>);

/** Runs `koala serve …`; resolves with the exit code once the backends have shut down. */
export async function runServe(argv: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({ args: argv, allowPositionals: true, options: { config: { type: "string" }, help: { type: "boolean", short: "h" } } });
  } catch (err) {
    process.stderr.write(`koala serve: ${(err as Error).message}\n\n${USAGE}`);
    return 2;
  }
  const [modulePath, ...names] = parsed.positionals;
  if (parsed.values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  if (modulePath === undefined) {
    process.stderr.write(`koala serve: name the module that exports the handlers\n\n${USAGE}`);
    return 2;
  }
  let config;
  try {
    config = loadConfig(parsed.values.config);
  } catch (err) {
    if (!(err instanceof KoalaError)) throw err;
    process.stderr.write(`koala serve: ${err.message}\n`);
    return 1;
  }
  const mod = (await import(pathToFileURL(resolve(modulePath)).href)) as { backends?: Record<string, BackendServices> };
  const provided = mod.backends;
  if (provided === undefined || typeof provided !== "object") {
    process.stderr.write(`koala serve: ${modulePath} exports no \`backends\` object\n`);
    return 1;
  }
  const wanted = names.length > 0 ? names : [...config.backends.keys()];
  for (const n of wanted) {
    if (!config.backends.has(n)) {
      process.stderr.write(`koala serve: ${config.file} has no backend "${n}" (backends: ${[...config.backends.keys()].join(", ")})\n`);
      return 1;
    }
    if (!(n in provided)) {
      process.stderr.write(`koala serve: ${modulePath} has no handlers for backend "${n}" (it has: ${Object.keys(provided).join(", ")})\n`);
      return 1;
    }
  }
  const started = new Map<string, Server>();
  const stop = () => Promise.all([...started.values()].map((s) => s.shutdown({ timeoutMs: 5000 })));
  try {
    for (const n of Object.keys(provided).filter((k) => wanted.includes(k))) {
      const entry = provided[n]!;
      const services = typeof entry === "function" ? await entry(started) : entry;
      const server = await startBackend(config, n, { services });
      started.set(n, server);
      process.stdout.write(`${n} listening on ${server.addresses.join(", ")}\n`);
    }
  } catch (err) {
    await stop();
    if (!(err instanceof KoalaError)) throw err;
    process.stderr.write(`koala serve: ${err.message}\n`);
    return 1;
  }
  const signal = await new Promise<NodeJS.Signals>((resolveSignal) => {
    process.once("SIGINT", resolveSignal);
    process.once("SIGTERM", resolveSignal);
  });
  process.stdout.write(`${signal}: shutting down\n`);
  await stop();
  return 0;
}
