/**
 * The xDS bootstrap, read as gRPC reads it: the file named by `GRPC_XDS_BOOTSTRAP`, else the JSON
 * in `GRPC_XDS_BOOTSTRAP_CONFIG`. koala uses `xds_servers[0]` (its `server_uri`; `channel_creds`
 * must offer `insecure`, the only kind it dials), `node` (sent on the first request of each ADS
 * stream) and `client_default_listener_resource_name_template` (default `%s`). Read again for
 * each new xds target, so a process that changes the variables gets the new control plane.
 */
import { readFileSync } from "node:fs";
import { ErrorCode, KoalaError } from "../../errors.js";

/** What koala takes from a bootstrap. */
export interface Bootstrap {
  /** The control plane's address, as grpc-js dials it (`host:port`, `dns:///host:port`, …). */
  readonly serverUri: string;
  /** The `node` object as written (id, cluster, locality, metadata), sent to the control plane. */
  readonly node: Readonly<Record<string, unknown>>;
  /** How a target's name becomes its listener's name (`%s` is replaced by the name). */
  readonly listenerTemplate: string;
}

function bad(where: string, why: string, cause?: unknown): KoalaError {
  return new KoalaError(ErrorCode.CONFIG, `xDS bootstrap (${where}): ${why}`, { cause });
}

/** Reads and checks the bootstrap; throws KOALA_ERR_CONFIG naming the source and the problem. */
export function readBootstrap(env: NodeJS.ProcessEnv = process.env): Bootstrap {
  let text: string;
  let where: string;
  const file = env.GRPC_XDS_BOOTSTRAP;
  if (file !== undefined && file !== "") {
    where = `GRPC_XDS_BOOTSTRAP=${file}`;
    try {
      text = readFileSync(file, "utf8");
    } catch (err) {
      throw bad(where, `cannot read the file: ${(err as Error).message}`, err);
    }
  } else if (env.GRPC_XDS_BOOTSTRAP_CONFIG !== undefined && env.GRPC_XDS_BOOTSTRAP_CONFIG !== "") {
    where = "GRPC_XDS_BOOTSTRAP_CONFIG";
    text = env.GRPC_XDS_BOOTSTRAP_CONFIG;
  } else {
    throw new KoalaError(ErrorCode.CONFIG, "xds: targets need a bootstrap: set GRPC_XDS_BOOTSTRAP to a bootstrap file or GRPC_XDS_BOOTSTRAP_CONFIG to its JSON");
  }
  return parseBootstrap(text, where);
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);

/** Checks the JSON text of a bootstrap (`where` names its source in errors). */
export function parseBootstrap(text: string, where: string): Bootstrap {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw bad(where, `not JSON: ${(err as Error).message}`, err);
  }
  if (!isObject(json)) throw bad(where, "expected a JSON object");
  const servers = json.xds_servers;
  if (!Array.isArray(servers) || servers.length === 0) throw bad(where, "xds_servers must be a non-empty array");
  const server: unknown = servers[0];
  if (!isObject(server) || typeof server.server_uri !== "string" || server.server_uri === "") throw bad(where, "xds_servers[0].server_uri must be a non-empty string");
  const creds = server.channel_creds;
  if (!Array.isArray(creds) || !creds.some((c: unknown) => isObject(c) && c.type === "insecure")) {
    throw bad(where, `xds_servers[0].channel_creds must include {"type": "insecure"} (the only credentials koala dials a control plane with); got ${JSON.stringify(creds)}`);
  }
  const node = json.node ?? {};
  if (!isObject(node)) throw bad(where, "node must be an object");
  for (const key of ["id", "cluster"]) if (node[key] !== undefined && typeof node[key] !== "string") throw bad(where, `node.${key} must be a string`);
  const template = json.client_default_listener_resource_name_template ?? "%s";
  if (typeof template !== "string" || template === "") throw bad(where, "client_default_listener_resource_name_template must be a non-empty string");
  if (template.startsWith("xdstp:")) throw bad(where, "xdstp: resource names are not supported");
  return { serverUri: server.server_uri, node, listenerTemplate: template };
}
