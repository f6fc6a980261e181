/**
 * `koala daemon`: runs managed mode's per-host daemon (src/managed/daemon.ts) from the
 * `[daemon]` table of KOALA_CONFIG (or --config), attaches the engines it names, opens the
 * control socket for `koala ctl` (unless `control = false`), prints where it listens, and serves
 * until SIGINT / SIGTERM.
 */
import { parseArgs } from "node:util";
import { KoalaError } from "../errors.js";
import { setLogLevel, type LogLevel } from "../log.js";
import { loadDaemonConfig } from "../managed/config.js";
import { startDaemon } from "../managed/daemon.js";
import { enableControl } from "../policy/control.js";
import { policies } from "../policy/index.js";

const USAGE = `usage: koala daemon [--config FILE] [--socket PATH]

Runs the managed-mode daemon: applications with KOALA_MODE=managed or a managed:///<target>
address attach to it through its set-up socket (0600), and it dials their targets and applies
the engines of the [daemon] table to all their calls. Serves until SIGINT / SIGTERM.
`;

/** Runs `koala daemon …`; resolves with the exit code once it has shut down. */
export async function runDaemon(argv: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options: { config: { type: "string" }, socket: { type: "string" }, help: { type: "boolean", short: "h" } } });
  } catch (err) {
    process.stderr.write(`koala daemon: ${(err as Error).message}\n\n${USAGE}`);
    return 2;
  }
  if (parsed.values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  // The daemon dials real targets: a KOALA_MODE=managed inherited from the shell must not send them back to itself.
  delete process.env.KOALA_MODE;
  const level = process.env.KOALA_LOG;
  if (level !== undefined && ["off", "error", "warn", "info", "debug"].includes(level)) setLogLevel(level as LogLevel | "off");
  let daemon;
  let control;
  try {
    const config = loadDaemonConfig(parsed.values.config);
    for (const e of config.engines) policies.attach(e.kind, e.options, { name: e.name, scope: e.scope });
    daemon = await startDaemon({ socketPath: parsed.values.socket ?? config.socket, pollUs: config.pollUs, pollMode: config.pollMode });
    if (config.control) control = await enableControl();
  } catch (err) {
    if (!(err instanceof KoalaError)) throw err;
    process.stderr.write(`koala daemon: ${err.message}\n`);
    await daemon?.close();
    return 1;
  }
  process.stdout.write(`koala daemon listening on ${daemon.socketPath}${control === undefined ? "" : ` (control ${control.path})`}\n`);
  const signal = await new Promise<NodeJS.Signals>((resolveSignal) => {
    process.once("SIGINT", resolveSignal);
    process.once("SIGTERM", resolveSignal);
  });
  process.stdout.write(`${signal}: shutting down\n`);
  await daemon.close();
  await control?.close();
  return 0;
}
