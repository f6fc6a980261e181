/**
 * The envoy / xds / udpa protos koala's xDS client speaks, loaded at run time from the `deps/`
 * folder that `@grpc/grpc-js-xds` ships (envoy-api, xds, googleapis, protoc-gen-validate) through
 * protobufjs; nothing is hand-written or copied. Loaded once, on the first xds: target (about
 * 200 ms), never by importing this module. Both peer packages are optional: their absence is
 * KOALA_ERR_DEPENDENCY_MISSING naming the package.
 */
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, isAbsolute, join } from "node:path";
import type * as Protobuf from "protobufjs";
import { ErrorCode, KoalaError } from "../../errors.js";

const require = createRequire(import.meta.url);

/** Type URLs of the four resource types. */
export const LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener";
/** RouteConfiguration's type URL. */
export const ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
/** Cluster's type URL. */
export const CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/** ClusterLoadAssignment's type URL. */
export const ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
/** HttpConnectionManager's type URL (inside a Listener's api_listener). */
export const HTTP_CONNECTION_MANAGER = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
/** The router filter's type URL. */
export const ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
/** The ADS method. */
export const ADS_METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";

const FILES = [
  "envoy/service/discovery/v3/ads.proto",
  "envoy/config/listener/v3/listener.proto",
  "envoy/config/route/v3/route.proto",
  "envoy/config/cluster/v3/cluster.proto",
  "envoy/config/endpoint/v3/endpoint.proto",
  "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto",
  "envoy/extensions/filters/http/router/v3/router.proto",
];

/**
 * Resolves an optional peer package's file, or throws KOALA_ERR_DEPENDENCY_MISSING naming the
 * package and what needs it.
 */
export function requirePeer(pkg: string, file = "package.json"): string {
  try {
    return require.resolve(`${pkg}/${file}`);
  } catch (err) {
    throw new KoalaError(ErrorCode.DEPENDENCY_MISSING, `xds: targets need the optional peer dependency ${pkg}, which is not installed (npm install @grpc/grpc-js @grpc/grpc-js-xds)`, { cause: err });
  }
}

/** The loaded protos: encode / decode by type name, and Any helpers. */
export interface XdsProtos {
  /** The message type of a fully qualified name (`envoy.config.listener.v3.Listener`). */
  type(name: string): Protobuf.Type;
  /** Encodes a plain object (snake_case field names, enums by name) as `name`. */
  encode(name: string, value: Record<string, unknown>): Buffer;
  /** Decodes `bytes` as `name` to a plain object (snake_case names, enums by name, 64-bit as numbers, absent fields absent, oneof case names set). */
  decode(name: string, bytes: Uint8Array): Record<string, unknown>;
  /** Decodes an Any (`{ type_url, value }`) whose type_url must be `expected`; throws saying what it was. */
  unpack(any: unknown, expected: string): Record<string, unknown>;
  /** An Any holding `value` encoded as the type of `typeUrl`. */
  pack(typeUrl: string, value: Record<string, unknown>): { type_url: string; value: Buffer };
}

let loaded: XdsProtos | undefined;

/** Loads the protos (once; synchronous after the first call). */
export function loadXdsProtos(): XdsProtos {
  if (loaded !== undefined) return loaded;
  const deps = join(dirname(requirePeer("@grpc/grpc-js-xds")), "deps");
  const protobuf = require("protobufjs") as typeof Protobuf;
  const dirs = ["envoy-api", "xds", "googleapis", "protoc-gen-validate"].map((d) => join(deps, d));
  // google/protobuf/descriptor.proto (imported by the annotation protos) ships with protobufjs.
  dirs.push(dirname(require.resolve("protobufjs/package.json")));
  const root = new protobuf.Root();
  root.resolvePath = (_origin, target) => {
    if (isAbsolute(target)) return target;
    for (const d of dirs) {
      const p = join(d, target);
      if (existsSync(p)) return p;
    }
    return null;
  };
  root.loadSync(FILES, { keepCase: true });
  root.resolveAll();
  const types = new Map<string, Protobuf.Type>();
  const type = (name: string): Protobuf.Type => {
    let t = types.get(name);
    if (t === undefined) {
      t = root.lookupType(name);
      types.set(name, t);
    }
    return t;
  };
  const decode = (name: string, bytes: Uint8Array): Record<string, unknown> => {
    const t = type(name);
    return t.toObject(t.decode(bytes), { enums: String, longs: Number, arrays: true, oneofs: true }) as Record<string, unknown>;
  };
  const typeName = (url: string) => url.slice(url.lastIndexOf("/") + 1);
  loaded = {
    type,
    encode: (name, value) => {
      const t = type(name);
      return Buffer.from(t.encode(t.fromObject(value)).finish());
    },
    decode,
    unpack: (any, expected) => {
      const a = any as { type_url?: unknown; value?: unknown } | undefined;
      if (a?.type_url !== expected) throw new Error(`expected a ${typeName(expected)}, got ${a?.type_url === undefined ? "nothing" : JSON.stringify(a.type_url)}`);
      return decode(typeName(expected), (a.value as Uint8Array | undefined) ?? new Uint8Array(0));
    },
    pack: (typeUrl, value) => ({ type_url: typeUrl, value: loaded!.encode(typeName(typeUrl), value) }),
  };
  return loaded;
}
