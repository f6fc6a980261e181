/**
 * The `koala` command line: `koala info`, `koala gen`, `koala serve`, `koala daemon`, `koala ctl`, `koala help`.
 */
import { transportInfo } from "../transport/index.js";
import type { ChannelsInfo, ProcessInfo } from "../policy/control.js";

const USAGE = `usage: koala <command> [options]

commands:
  info                      transports available here, what KOALA_TRANSPORT=auto picks and why
  info <pid> [--dir DIR]    a running koala process (control socket, KOALA_CONTROL=1): its
                            servers, engines and channels, each endpoint with its transport
  gen <protos…> --out DIR   generate TypeScript from .proto files (-I DIR adds an include path)
  serve <module> [backend…] start backends of KOALA_CONFIG (or --config FILE) with the
                            handlers <module> exports as \`backends\`; serve until SIGTERM
  daemon [--config FILE]    run the managed-mode daemon ([daemon] table of KOALA_CONFIG):
                            applications attach with KOALA_MODE=managed or managed:///<target>
  ctl <command> …           live control of koala processes: ps, attach, detach, replace,
                            configure, metrics, channels (koala ctl help)
  help                      this text
`;

/** Runs the command line; returns the exit code. */
export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case "info":
      return rest.some((a) => /^\d+$/.test(a)) ? infoOfProcess(rest) : info(rest);
    case "gen": {
      const { runGen } = await import("../proto/codegen/cli.js");
      return runGen(rest);
    }
    case "serve": {
      const { runServe } = await import("./serve.js");
      return runServe(rest);
    }
    case "daemon": {
      const { runDaemon } = await import("./daemon.js");
      return runDaemon(rest);
    }
    case "ctl": {
      const { runCtl } = await import("./ctl.js");
      return runCtl(rest);
    }
    case undefined:
    case "help":
    case "--help":
    case "-h":
      process.stdout.write(USAGE);
      return command === undefined ? 2 : 0;
    default:
      process.stderr.write(`koala: unknown command "${command}"\n\n${USAGE}`);
      return 2;
  }
}

/** `koala info <pid>`: what `koala ctl ps` and `koala ctl channels` say of one process. */
async function infoOfProcess(args: string[]): Promise<number> {
  const { parseArgs } = await import("node:util");
  let parsed;
  try {
    parsed = parseArgs({ args, allowPositionals: true, options: { dir: { type: "string" }, json: { type: "boolean" } } });
  } catch (err) {
    process.stderr.write(`koala info: ${(err as Error).message}\n`);
    return 2;
  }
  if (parsed.positionals.length !== 1) {
    process.stderr.write("koala info: give one pid\n");
    return 2;
  }
  const pid = Number(parsed.positionals[0]);
  const { controlRequest } = await import("../policy/control.js");
  const { channelLines } = await import("./ctl.js");
  const reach = { dir: parsed.values.dir };
  const [ps, channels] = [await controlRequest(pid, { cmd: "ps" }, reach), await controlRequest(pid, { cmd: "channels" }, reach)];
  for (const a of [ps, channels]) {
    if (!a.ok) {
      process.stderr.write(`koala info: process ${pid}: ${a.error.code}: ${a.error.message}\n`);
      return 1;
    }
  }
  const p = (ps as { result: ProcessInfo }).result;
  const c = (channels as { result: ChannelsInfo }).result;
  if (parsed.values.json) {
    process.stdout.write(`${JSON.stringify({ ...p, channels: c.channels }, null, 2)}\n`);
    return 0;
  }
  const lines = channelLines(c);
  const more: string[] = [];
  for (const s of p.servers) more.push(`  server ${s.name}: ${s.services.join(", ") || "(no services)"} at ${s.addresses.join(", ") || "(not listening)"}`);
  for (const e of p.engines) more.push(`  engine ${e.name} (${e.kind}) on ${JSON.stringify(e.scope)}`);
  lines.splice(1, 0, ...more);
  process.stdout.write(`${lines.join("\n")}\n`);
  return 0;
}

function info(args: string[]): number {
  const json = args.includes("--json");
  const unknown = args.filter((a) => a !== "--json");
  if (unknown.length > 0) {
    process.stderr.write(`koala info: unknown argument ${unknown[0]}\n`);
    return 2;
  }
  const i = transportInfo();
  if (json) {
    process.stdout.write(`${JSON.stringify(i, null, 2)}\n`);
    return 0;
  }
  const lines = ["transports:"];
  for (const t of i.transports) lines.push(`  ${t.name.padEnd(7)} ${t.available ? "available" : `unavailable: ${t.reason}`}`);
  lines.push("", "rdma providers (KOALA_RDMA_PROVIDER):");
  for (const p of i.rdma.providers) {
    const state = p.available ? "available" : `unavailable: ${p.reason}`;
    lines.push(`  ${p.name.padEnd(7)} ${state}${p.selected ? " [selected]" : ""}  (${p.description})`);
    for (const d of p.devices) {
      const limits = `max_sge ${d.maxSge}, max_qp_wr ${d.maxQpWr}, max_inline_data ${d.maxInlineData}, max_cqe ${d.maxCqe}`;
      for (const port of d.ports) lines.push(`    ${d.name}:${port.port} ${port.state}, ${port.linkLayer}, MTU ${port.mtu}, GID ${port.gid}; ${limits}`);
    }
  }
  if (i.rdma.using !== undefined) lines.push(`  rdma uses ${i.rdma.using}; KOALA_RNDV_THRESH ${i.rdma.rndvThreshBytes} bytes, KOALA_RDMA_BUSY_POLL_US ${i.rdma.busyPollUs}`);
  else lines.push(`  rdma unavailable: ${i.rdma.unavailable}`);
  lines.push("");
  lines.push(`KOALA_TRANSPORT=${process.env.KOALA_TRANSPORT ?? "auto"} (mode ${i.choice.mode})`);
  lines.push(i.choice.transport === undefined ? `  no transport: ${i.choice.reason}` : `  host:port addresses use ${i.choice.transport}: ${i.choice.reason}`);
  process.stdout.write(`${lines.join("\n")}\n`);
  return i.choice.transport === undefined ? 1 : 0;
}
