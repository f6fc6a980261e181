/**
 * A real DNS server for the cluster tests: Debian's dnsmasq, started on 127.0.0.1 at a random
 * high port with nothing but the records a test gives it (no /etc/hosts, no upstream, no
 * configuration file). `setHosts` rewrites its hosts file and sends SIGHUP, which makes dnsmasq
 * read it again. Every server started is killed when the test ends, and at process exit.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir, userInfo } from "node:os";
import { join } from "node:path";
import { Resolver } from "node:dns/promises";

/** Where Debian's dnsmasq-base installs it. */
export const DNSMASQ = "/usr/sbin/dnsmasq";

/** Why the DNS tests cannot run here, or undefined when they can. */
export function dnsmasqMissing(): string | undefined {
  return existsSync(DNSMASQ) ? undefined : `${DNSMASQ} is not installed (Debian / Ubuntu: apt-get install dnsmasq-base)`;
}

/** A running dnsmasq. */
export interface Dnsmasq {
  /** `127.0.0.1:port`, the authority of a `dns://…/name` target. */
  readonly server: string;
  /** How many A queries for `name` it answered so far. */
  queries(name: string): number;
  /** Replaces the hosts file (lines "ip name") and makes dnsmasq re-read it. */
  setHosts(lines: readonly string[]): Promise<void>;
  /** Stops it and removes its files. */
  stop(): void;
}

const running = new Set<ChildProcess>();
process.on("exit", () => {
  for (const p of running) p.kill("SIGKILL");
});

/**
 * Starts dnsmasq with `hosts` in its hosts file and extra arguments (`--srv-host=…`,
 * `--host-record=…`); its answers carry a TTL of `ttlSeconds` (default 1).
 */
export async function startDnsmasq(hosts: readonly string[], extra: readonly string[] = [], ttlSeconds = 1): Promise<Dnsmasq> {
  const dir = mkdtempSync(join(tmpdir(), "koala-dns-"));
  const hostsFile = join(dir, "hosts");
  writeFileSync(hostsFile, hosts.join("\n") + "\n");
  for (let attempt = 0; attempt < 8; attempt++) {
    const port = 20_000 + Math.floor(Math.random() * 40_000);
    const child = spawn(
      DNSMASQ,
      [
        "--no-daemon",
        "--no-resolv",
        "--no-hosts",
        "--conf-file=/dev/null",
        `--addn-hosts=${hostsFile}`,
        `--port=${port}`,
        "--listen-address=127.0.0.1",
        "--bind-interfaces",
        `--local-ttl=${ttlSeconds}`, // answers say when to ask again: the resolver re-resolves on the TTL
        "--log-queries",
        "--pid-file=",
        `--user=${userInfo().username}`,
        "--log-facility=-",
        ...extra,
      ],
      { stdio: ["ignore", "ignore", "pipe"] },
    );
    running.add(child);
    let stderr = "";
    child.stderr!.on("data", (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<void>((r) => child.once("exit", () => r()));
    const server = `127.0.0.1:${port}`;
    const probe = new Resolver({ timeout: 200, tries: 1 });
    probe.setServers([server]);
    const up = await (async () => {
      for (let i = 0; i < 50; i++) {
        if (child.exitCode !== null) return false;
        try {
          await probe.resolve4("koala-probe.invalid");
        } catch (err) {
          // Any DNS answer (NXDOMAIN, REFUSED) means it is serving; a timeout means not yet.
          if ((err as { code?: string }).code !== "ETIMEOUT" && (err as { code?: string }).code !== "ECONNREFUSED") return true;
        }
        await new Promise((r) => setTimeout(r, 50));
      }
      return false;
    })();
    if (!up) {
      child.kill("SIGKILL");
      running.delete(child);
      await exited;
      if (/address already in use/i.test(stderr)) continue;
      rmSync(dir, { recursive: true, force: true });
      throw new Error(`dnsmasq did not start: ${stderr.trim()}`);
    }
    return {
      server,
      queries(name) {
        return stderr.split("\n").filter((l) => l.includes(`query[A] ${name} from`)).length;
      },
      async setHosts(lines) {
        writeFileSync(hostsFile, lines.join("\n") + "\n");
        const reread = stderr.length;
        child.kill("SIGHUP");
        for (let i = 0; i < 100 && !stderr.slice(reread).includes(`read ${hostsFile}`); i++) await new Promise((r) => setTimeout(r, 20));
      },
      stop() {
        child.kill("SIGKILL");
        running.delete(child);
        rmSync(dir, { recursive: true, force: true });
      },
    };
  }
  rmSync(dir, { recursive: true, force: true });
  throw new Error("dnsmasq: no free port after 8 attempts");
}
