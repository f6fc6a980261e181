/**
 * The `acl` engine: allow or deny calls by service, method, peer (its address, or on tls the
 * subject of its verified certificate), request metadata and request message fields. Rules are tried in order; the first that matches decides; with none matching,
 * `default` decides. A denied call fails with PERMISSION_DENIED.
 *
 * Fields are read from the decoded request when the engine is asked (`server-receive` on a
 * server, `client-send` on a client) and copied (as strings) before any rule compares them: the
 * decision is about those values, whatever the handler does with the object later.
 */
import { Code, RpcError } from "../../errors.js";
import { custom, oneOf, resolveOptions, type OptionsSpec } from "../../options.js";
import type { CallInfo, InterceptPoint } from "../../rpc/interceptor.js";
import type { Engine } from "../engine.js";

/** One ACL rule: every condition given must hold for it to match. */
export interface AclRule {
  /** `allow` or `deny`. */
  action: "allow" | "deny";
  /** Fully qualified service name. */
  service?: string;
  /** Method name (as in the .proto) or full path `/service/Method`. */
  method?: string;
  /** Prefix of the peer address, e.g. `tcp://10.1.`. */
  peerPrefix?: string;
  /** Subject (CN) of the peer's TLS certificate, which must have been verified (a client's: mutual TLS, `requestCert`). */
  peerSubject?: string;
  /** Request metadata that must be present with these values. */
  metadata?: Record<string, string>;
  /** Request fields (dotted paths, e.g. `user.name`) that must equal these values (compared as strings). */
  fields?: Record<string, string | number | boolean>;
}

/** Options of the `acl` engine. */
export interface AclOptions {
  /** The rules, tried in order. Default none. */
  rules: readonly AclRule[];
  /** What a call no rule matches gets. Default `allow`. */
  default: "allow" | "deny";
}

const RULE_KEYS = new Set(["action", "service", "method", "peerPrefix", "peerSubject", "metadata", "fields"]);

function isRule(r: unknown): boolean {
  if (typeof r !== "object" || r === null) return false;
  const o = r as Record<string, unknown>;
  return (
    Object.keys(o).every((k) => RULE_KEYS.has(k)) &&
    (o.action === "allow" || o.action === "deny") &&
    ["service", "method", "peerPrefix", "peerSubject"].every((k) => o[k] === undefined || typeof o[k] === "string") &&
    ["metadata", "fields"].every((k) => o[k] === undefined || (typeof o[k] === "object" && o[k] !== null))
  );
}

const spec: OptionsSpec<AclOptions> = {
  rules: custom<readonly AclRule[]>([], "an array of rules ({ action: allow|deny, service?, method?, peerPrefix?, peerSubject?, metadata?, fields? }, no other keys)", (v) => Array.isArray(v) && v.every(isRule)),
  default: oneOf("allow", ["allow", "deny"]),
};

/** The value at a dotted `path` of a message (undefined when a step is missing). */
function fieldAt(message: unknown, path: string): unknown {
  let v: unknown = message;
  for (const step of path.split(".")) {
    if (v === null || typeof v !== "object") return undefined;
    v = (v as Record<string, unknown>)[step];
  }
  return v;
}

function matches(rule: AclRule, call: CallInfo, seen: Map<string, string>): boolean {
  if (rule.service !== undefined && rule.service !== call.service) return false;
  if (rule.method !== undefined && rule.method !== call.method.name && rule.method !== call.path) return false;
  if (rule.peerPrefix !== undefined && !call.peer.startsWith(rule.peerPrefix)) return false;
  if (rule.peerSubject !== undefined) {
    const cert = call.peerCertificate;
    if (cert === undefined || !cert.authorized || cert.subject !== rule.peerSubject) return false;
  }
  if (rule.metadata !== undefined) for (const [k, want] of Object.entries(rule.metadata)) if (call.metadata.get(k) !== want) return false;
  if (rule.fields !== undefined) {
    for (const [path, want] of Object.entries(rule.fields)) {
      let got = seen.get(path);
      if (got === undefined) {
        const v = fieldAt(call.request, path);
        got = typeof v === "bigint" || typeof v === "number" || typeof v === "boolean" || typeof v === "string" ? String(v) : "";
        seen.set(path, got); // a copy of what was checked
      }
      if (got !== String(want)) return false;
    }
  }
  return true;
}

/** Creates an `acl` engine. */
export function aclEngine(name: string, input: Record<string, unknown> = {}): Engine {
  let o = resolveOptions(`engine ${name} (acl)`, spec, input);
  return {
    kind: "acl",
    name,
    get options() {
      return o;
    },
    onCall(call: CallInfo, point: InterceptPoint) {
      if (point !== "client-send" && point !== "server-receive") return undefined;
      const seen = new Map<string, string>();
      let action = o.default;
      for (const r of o.rules) {
        if (matches(r, call, seen)) {
          action = r.action;
          break;
        }
      }
      return action === "allow" ? undefined : new RpcError(Code.PERMISSION_DENIED, `${call.path} denied by engine ${name}`);
    },
    configure(input2) {
      o = resolveOptions(`engine ${name} (acl)`, spec, { ...o, ...input2 });
    },
  };
}
