/**
 * `koala ctl`: live control of the koala processes of this host (those that opened a control
 * socket, see src/policy/control.ts). `all` as the target applies a command to every one of
 * them: one policy for every koala service of the host, without touching them.
 */
import { parseArgs } from "node:util";
import { controlAll, controlRequest, type ChannelsInfo, type ControlAnswer, type ControlRequest, type ProcessInfo } from "../policy/control.js";

const USAGE = `usage: koala ctl <command> [options]

commands:
  ps                                        koala processes of this host: pid, servers, engines
  attach <pid|all> <kind> [--name N] [--scope S] [--side client|server] [--backend B] [--options JSON]
                                            attach an engine (kind: null, ratelimit, qos, acl,
                                            admission, fault, metrics, logging); S is global
                                            (default), service=pkg.Service or method=/pkg.Service/Method;
                                            --backend: only the server named B (see ps)
  detach <pid|all> <name>                   detach an engine
  replace <pid|all> <name> [--kind K] [--options JSON]
                                            replace an engine in place, state carried over
                                            (options not given stay as they are)
  configure <pid|all> <name> --options JSON change options of an engine in place
  metrics <pid|all>                         Prometheus text of the metrics engines
  channels <pid|all>                        the process's channels: target, balancer, and each
                                            endpoint's address, state, transport, weight, locality

options:
  --dir DIR     the runtime directory of control sockets (default: KOALA_RUNTIME_DIR,
                $XDG_RUNTIME_DIR/koala or $TMPDIR/koala-<uid>)
  --json        print the answers as JSON
`;

class UsageError extends Error {}

function parseScope(text: string | undefined, side: string | undefined, backend: string | undefined): Record<string, unknown> | undefined {
  if (side !== undefined && side !== "client" && side !== "server") throw new UsageError(`--side must be client or server, got ${JSON.stringify(side)}`);
  if (backend === "") throw new UsageError("--backend needs a server name (see koala ctl ps)");
  const sideOf = { ...(side === undefined ? {} : { side }), ...(backend === undefined ? {} : { backend }) };
  if (text === undefined || text === "global") return side === undefined && backend === undefined ? undefined : { global: true, ...sideOf };
  const m = /^(service|method)=(.+)$/.exec(text);
  if (m === null) throw new UsageError(`--scope must be global, service=pkg.Service or method=/pkg.Service/Method, got ${JSON.stringify(text)}`);
  return { [m[1]!]: m[2]!, ...sideOf };
}

function parseJsonOptions(text: string | undefined): Record<string, unknown> | undefined {
  if (text === undefined) return undefined;
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (err) {
    throw new UsageError(`--options is not JSON: ${(err as Error).message}`);
  }
  if (typeof v !== "object" || v === null || Array.isArray(v)) throw new UsageError("--options must be a JSON object");
  return v as Record<string, unknown>;
}

function target(text: string | undefined): number | "all" {
  if (text === "all") return "all";
  if (text !== undefined && /^\d+$/.test(text)) return Number(text);
  throw new UsageError(`the target must be a pid or all, got ${text === undefined ? "nothing" : JSON.stringify(text)}`);
}

function describeResult(cmd: string, result: unknown): string {
  switch (cmd) {
    case "detach":
      return `detached ${(result as { detached: string }).detached}`;
    default: {
      const e = result as { name: string; kind: string; scope: unknown; options: unknown };
      return `${cmd === "attach" ? "attached" : cmd === "replace" ? "replaced" : "configured"} ${e.name} (${e.kind}) on ${JSON.stringify(e.scope)} with ${JSON.stringify(e.options)}`;
    }
  }
}

function printPs(answers: ControlAnswer[]): void {
  const lines: string[] = [];
  for (const a of answers) {
    if (!a.ok) {
      lines.push(`${a.pid}  unreachable: ${a.error.message}`);
      continue;
    }
    const p = a.result as ProcessInfo;
    lines.push(`${p.pid}  ${p.command}`);
    for (const s of p.servers) lines.push(`  server ${s.name}: ${s.services.join(", ") || "(no services)"} at ${s.addresses.join(", ") || "(not listening)"}`);
    for (const e of p.engines) lines.push(`  engine ${e.name} (${e.kind}) on ${JSON.stringify(e.scope)}`);
    if (p.servers.length === 0 && p.engines.length === 0) lines.push("  (no servers registered, no engines)");
  }
  if (answers.length === 0) lines.push("no koala process with a control socket here");
  process.stdout.write(`${lines.join("\n")}\n`);
}

/**
 * The lines that show one process's channels: a line per channel (target and balancer), under it
 * a line per endpoint (address, state, transport while connected, calls open, weight, locality,
 * health and ejection where they apply).
 */
export function channelLines(info: ChannelsInfo): string[] {
  const lines = [`${info.pid}  ${info.command}`];
  if (info.channels.length === 0) lines.push("  (no channels)");
  for (const c of info.channels) {
    lines.push(`  channel ${c.target}  balancer ${c.balancer === "" ? "none (single address)" : c.balancer}`);
    if (c.endpoints.length === 0) lines.push("    (no endpoints yet: not used, or its target resolved to none)");
    for (const e of c.endpoints) {
      const parts = [e.address, e.state, e.transport ?? "-", `${e.outstanding} open`];
      if (e.weight !== undefined) parts.push(`weight ${e.weight}`);
      if (e.locality !== undefined) parts.push(`locality ${e.locality.name} (weight ${e.locality.weight}, priority ${e.locality.priority})`);
      if (e.health !== undefined) parts.push(`health ${e.health}`);
      if (e.ejected === true) parts.push("ejected");
      lines.push(`    ${parts.join("  ")}`);
    }
  }
  return lines;
}

/** Runs `koala ctl …`; returns the exit code (0: every process answered ok, 1: some failed, 2: usage). */
export async function runCtl(argv: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        dir: { type: "string" },
        json: { type: "boolean" },
        name: { type: "string" },
        kind: { type: "string" },
        scope: { type: "string" },
        side: { type: "string" },
        backend: { type: "string" },
        options: { type: "string" },
        help: { type: "boolean", short: "h" },
      },
    });
  } catch (err) {
    process.stderr.write(`koala ctl: ${(err as Error).message}\n\n${USAGE}`);
    return 2;
  }
  const { values: v, positionals: [cmd, ...rest] } = parsed;
  if (v.help || cmd === undefined || cmd === "help") {
    process.stdout.write(USAGE);
    return cmd === undefined && !v.help ? 2 : 0;
  }
  const reach = { dir: v.dir };
  let request: ControlRequest;
  let to: number | "all";
  try {
    const arity = (n: number) => {
      if (rest.length !== n) throw new UsageError(`${cmd} takes ${n} argument${n === 1 ? "" : "s"}, got ${rest.length}`);
    };
    switch (cmd) {
      case "ps":
        arity(0);
        to = "all";
        request = { cmd: "ps" };
        break;
      case "metrics":
        arity(1);
        to = target(rest[0]);
        request = { cmd: "metrics" };
        break;
      case "channels":
        arity(1);
        to = target(rest[0]);
        request = { cmd: "channels" };
        break;
      case "attach": {
        arity(2);
        to = target(rest[0]);
        const scope = parseScope(v.scope, v.side, v.backend);
        const options = parseJsonOptions(v.options);
        request = { cmd: "attach", kind: rest[1]!, ...(v.name === undefined ? {} : { name: v.name }), ...(scope === undefined ? {} : { scope }), ...(options === undefined ? {} : { options }) } as ControlRequest;
        break;
      }
      case "detach":
        arity(2);
        to = target(rest[0]);
        request = { cmd: "detach", name: rest[1]! };
        break;
      case "replace": {
        arity(2);
        to = target(rest[0]);
        const options = parseJsonOptions(v.options);
        request = { cmd: "replace", name: rest[1]!, ...(v.kind === undefined ? {} : { kind: v.kind }), ...(options === undefined ? {} : { options }) };
        break;
      }
      case "configure": {
        arity(2);
        to = target(rest[0]);
        const options = parseJsonOptions(v.options);
        if (options === undefined) throw new UsageError("configure needs --options JSON");
        request = { cmd: "configure", name: rest[1]!, options };
        break;
      }
      default:
        throw new UsageError(`unknown command "${cmd}"`);
    }
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    process.stderr.write(`koala ctl: ${err.message}\n\n${USAGE}`);
    return 2;
  }

  const answers = to === "all" ? await controlAll(request, reach) : [await controlRequest(to, request, reach)];
  if (v.json) {
    process.stdout.write(`${JSON.stringify(answers, null, 2)}\n`);
  } else if (cmd === "ps") {
    printPs(answers);
  } else if (cmd === "channels") {
    const lines = answers.flatMap((a) => (a.ok ? channelLines(a.result as ChannelsInfo) : []));
    if (lines.length > 0) process.stdout.write(`${lines.join("\n")}\n`);
    if (answers.length === 0) process.stderr.write("koala ctl: no koala process with a control socket here\n");
  } else if (cmd === "metrics") {
    for (const a of answers) {
      if (!a.ok) continue;
      const text = (a.result as { text: string }).text;
      if (to === "all") process.stdout.write(`# koala process ${a.pid}\n`);
      // No metrics engine: say so, with the command that attaches one (a comment line keeps
      // the output valid Prometheus text when several processes answer).
      const none = `no metrics engine is attached to process ${a.pid}; attach one with: koala ctl attach ${a.pid} metrics`;
      if (text !== "") process.stdout.write(text);
      else if (to === "all") process.stdout.write(`# ${none}\n`);
      else process.stderr.write(`koala ctl: ${none}\n`);
    }
  } else {
    for (const a of answers) if (a.ok) process.stdout.write(`${a.pid}: ${describeResult(cmd, a.result)}\n`);
    if (answers.length === 0) process.stderr.write("koala ctl: no koala process with a control socket here\n");
  }
  for (const a of answers) if (!a.ok && !(cmd === "ps" && !v.json)) process.stderr.write(`koala ctl: process ${a.pid}: ${a.error.code}: ${a.error.message}\n`);
  return answers.every((a) => a.ok) && (answers.length > 0 || cmd === "ps") ? 0 : 1;
}
