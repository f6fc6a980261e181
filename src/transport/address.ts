/**
 * Address parsing. Addresses are URIs: `tcp://host:port`, `tls://host:port`, `unix:/path/to.sock`,
 * `rdma://host:port`, `memory:name`. An address with no scheme (`host:port`) or with the
 * scheme `koala://` goes to the transport that {@link chooseTransport} picks.
 */
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ErrorCode, KoalaError } from "../errors.js";
import type { Address, TransportName } from "./types.js";

/** An address as written, before a scheme-less one is given a transport. */
export interface ParsedAddress {
  /** The transport named by the scheme, or undefined for `host:port` and `koala://`. */
  readonly scheme: TransportName | undefined;
  readonly host: string;
  readonly port: number;
  readonly path: string;
}

function bad(address: string, why: string): KoalaError {
  return new KoalaError(ErrorCode.INVALID_ADDRESS, `invalid address ${JSON.stringify(address)}: ${why}`);
}

function parseHostPort(address: string, rest: string): { host: string; port: number } {
  let host: string;
  let portText: string;
  if (rest.startsWith("[")) {
    const end = rest.indexOf("]");
    if (end < 0 || rest[end + 1] !== ":") throw bad(address, "an IPv6 host must be written [host]:port");
    host = rest.slice(1, end);
    portText = rest.slice(end + 2);
  } else {
    const colon = rest.lastIndexOf(":");
    if (colon < 0) throw bad(address, "expected host:port");
    host = rest.slice(0, colon);
    portText = rest.slice(colon + 1);
    // "::1:80" is itself an IPv6 address: without brackets the port cannot be told apart.
    if (host.includes(":")) throw bad(address, "an IPv6 host must be written [host]:port");
  }
  if (host === "" || /[\s/]/.test(host)) throw bad(address, "missing or malformed host");
  if (!/^\d{1,5}$/.test(portText) || Number(portText) > 65535) throw bad(address, `port must be 0..65535, got ${JSON.stringify(portText)}`);
  return { host, port: Number(portText) };
}

const KNOWN_SCHEMES = new Set(["tcp", "tls", "unix", "rdma", "memory", "shm", "koala"]);

/** Splits an address into its parts. Throws KOALA_ERR_INVALID_ADDRESS. */
export function parseAddress(address: string): ParsedAddress {
  if (typeof address !== "string" || address === "") throw bad(String(address), "an address must be a non-empty string");
  if (address.startsWith("/")) return { scheme: "unix", host: "", port: 0, path: address };
  const m = /^([a-z][a-z0-9+.-]*):(.*)$/i.exec(address);
  const scheme = m?.[1]?.toLowerCase() ?? "";
  if (m === null || !KNOWN_SCHEMES.has(scheme)) {
    if (m !== null && m[2]!.startsWith("//")) throw bad(address, `unknown scheme "${scheme}:" (known: ${[...KNOWN_SCHEMES].join(", ")})`);
    // No scheme: host:port (a host name followed by ":port" looks like a scheme to the pattern).
    return { scheme: undefined, ...parseHostPort(address, address), path: "" };
  }
  const rest = m[2]!;
  switch (scheme) {
    case "tcp":
    case "tls":
    case "rdma":
    case "koala": {
      if (!rest.startsWith("//")) throw bad(address, `expected ${scheme}://host:port`);
      const hp = parseHostPort(address, rest.slice(2).replace(/\/$/, ""));
      return { scheme: scheme === "koala" ? undefined : scheme, ...hp, path: "" };
    }
    case "unix": {
      // unix:/abs, unix:///abs and unix:relative, as grpc writes them.
      const path = rest.startsWith("//") ? rest.slice(2) : rest;
      if (path === "") throw bad(address, "missing socket path");
      if (Buffer.byteLength(path) > 107) throw bad(address, "socket path longer than 107 bytes");
      return { scheme: "unix", host: "", port: 0, path };
    }
    case "memory": {
      const name = rest.startsWith("//") ? rest.slice(2) : rest;
      if (name === "") throw bad(address, "missing name");
      return { scheme: "memory", host: "", port: 0, path: name };
    }
    case "shm": {
      // shm:<daemon's set-up socket>#<target the daemon dials> (src/managed/shm-transport.ts checks both halves).
      if (rest === "") throw bad(address, "missing set-up socket path");
      return { scheme: "shm", host: "", port: 0, path: rest };
    }
    default:
      throw bad(address, `unknown scheme "${scheme}:"`);
  }
}

/** The URI of an address. */
export function formatAddress(transport: TransportName, host: string, port: number, path: string): string {
  switch (transport) {
    case "unix":
      return `unix:${path}`;
    case "memory":
      return `memory:${path}`;
    case "shm":
      return `shm:${path}`;
    default:
      return `${transport}://${host.includes(":") ? `[${host}]` : host}:${port}`;
  }
}

/**
 * Gives a parsed address the transport `name`. A `host:port` address used over `unix` maps to
 * a socket file in the temporary folder named after host and port (port 0: a fresh name), so
 * that switching `KOALA_TRANSPORT` between tcp and unix needs no other change.
 */
export function bindAddress(parsed: ParsedAddress, name: TransportName, written: string): Address {
  if (name === "unix" && parsed.path === "") {
    // Port 0 means "any free one", as with TCP: a fresh file name, reported by the listener.
    const port = parsed.port === 0 ? `0-${process.pid}-${Math.random().toString(36).slice(2, 10)}` : String(parsed.port);
    const path = join(tmpdir(), `koala-${parsed.host.replace(/[^A-Za-z0-9.-]/g, "_")}-${port}.sock`);
    return { transport: "unix", host: "", port: 0, path, uri: formatAddress("unix", "", 0, path) };
  }
  if ((name === "tcp" || name === "tls" || name === "rdma") && parsed.host === "") throw bad(written, `the ${name} transport needs host:port`);
  if (name === "memory" && parsed.path === "") {
    const path = `${parsed.host}:${parsed.port}`;
    return { transport: "memory", host: "", port: 0, path, uri: formatAddress("memory", "", 0, path) };
  }
  return { transport: name, host: parsed.host, port: parsed.port, path: parsed.path, uri: formatAddress(name, parsed.host, parsed.port, parsed.path) };
}
