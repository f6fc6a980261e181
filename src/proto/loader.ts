/**
 * `.proto` files loaded at run time, for scripts: the same service definitions as generated
 * code, built on protobufjs reflection (`loadProto`) or adapted from an @grpc/proto-loader
 * package definition (`fromPackageDefinition`), usable with createClient and server.add.
 *
 * `loadProto` messages are plain objects as protobufjs' `toObject` makes them: 64-bit integers
 * as bigint (as in generated code), enums as numbers, bytes as Buffer views of the received
 * message, every field present with its default, and for each oneof a property naming the
 * field that is set. Encoding accepts what protobufjs' `fromObject` accepts (64-bit integers
 * as bigint, number or decimal string). `fromPackageDefinition` messages are whatever the
 * package definition's own (de)serializers make of them (its `longs`, `enums`, … options).
 *
 * A run-time type encodes the whole message with protobufjs during the size pass and copies
 * the bytes during the write pass: one copy more than generated code, and `bytes` fields are
 * never sent as parts of their own.
 */
import protobuf from "protobufjs";
import type { PackageDefinition } from "@grpc/proto-loader";
import { ErrorCode, KoalaError, check } from "../errors.js";
import { resolveOptions, type OptionsSpec } from "../options.js";
import { loadRoot, stringList } from "./codegen/load.js";
import type { MessageType, MethodDefinition, MethodKind, PartialMessage, ServiceDefinition } from "./definition.js";
import { fromJson, toJson } from "./json.js";
import { ProtoReader } from "./wire/reader.js";
import type { ProtoWriter, SizeCounter } from "./wire/writer.js";

/** Options of {@link loadProto}. */
export interface LoadProtoOptions {
  /** Folders searched for imports after the importing file's folder. Default none. */
  includeDirs?: string[];
}

const loadProtoOptionsSpec: OptionsSpec<Required<LoadProtoOptions>> = { includeDirs: stringList };

/** Encoded bytes kept between the size pass and the write pass of one message. */
const pending = new WeakMap<object, Uint8Array>();

function asBuffer(b: Uint8Array): Buffer {
  return Buffer.isBuffer(b) ? b : Buffer.from(b.buffer, b.byteOffset, b.byteLength);
}

/** A MessageType over encode / decode functions of whole messages. */
function messageType<T extends object>(typeName: string, encode: (m: T) => Uint8Array, decode: (b: Buffer) => T, create: (init?: PartialMessage<T>) => T): MessageType<T> {
  const type: MessageType<T> = {
    typeName,
    create,
    sizeOf(m: T, _c: SizeCounter): number {
      const bytes = encode(m);
      pending.set(m, bytes);
      return bytes.byteLength;
    },
    write(m: T, w: ProtoWriter): void {
      const bytes = pending.get(m) ?? encode(m);
      pending.delete(m);
      w.raw(bytes);
    },
    read(r: ProtoReader, end: number): T {
      const m = type.decode(r.buf.subarray(r.pos, end));
      r.pos = end;
      return m;
    },
    encode: (m) => encode(m as T),
    toJson: (m, o) => toJson(type, m, o),
    fromJson: (j, o) => fromJson(type, j, o),
    decode(bytes: Uint8Array): T {
      try {
        return decode(asBuffer(bytes));
      } catch (err) {
        throw new KoalaError(ErrorCode.PROTOCOL, `malformed ${typeName}: ${(err as Error).message}`, { cause: err });
      }
    },
  };
  return type;
}

const objectOptions: protobuf.IConversionOptions = { longs: BigInt, enums: Number, defaults: true, oneofs: true };

function reflectType(t: protobuf.Type): MessageType<Record<string, unknown>> {
  return messageType(
    t.fullName.slice(1),
    (m) => t.encode(t.fromObject(m)).finish(),
    (b) => t.toObject(t.decode(b), objectOptions),
    (init) => t.toObject(t.fromObject(init ?? {}), objectOptions),
  );
}

function kindOf(requestStream: boolean | undefined, responseStream: boolean | undefined): MethodKind {
  return requestStream ? (responseStream ? "bidi_streaming" : "client_streaming") : responseStream ? "server_streaming" : "unary";
}

const lowerFirst = (s: string) => s.charAt(0).toLowerCase() + s.slice(1);

/**
 * Loads `.proto` files; returns their services (and those of the files they import) by fully
 * qualified name (`"hello.Greeter"`). A missing or malformed file throws
 * KOALA_ERR_INVALID_ARGUMENT.
 */
export function loadProto(files: string | string[], options?: LoadProtoOptions): Record<string, ServiceDefinition> {
  const o = resolveOptions("loadProto()", loadProtoOptionsSpec, options);
  const list = typeof files === "string" ? [files] : files;
  check(Array.isArray(list) && list.length > 0 && list.every((f) => typeof f === "string"), "loadProto(): files must be a path or a non-empty array of paths");
  const root = loadRoot(list, o.includeDirs, "loadProto()");
  const types = new Map<protobuf.Type, MessageType<Record<string, unknown>>>();
  const typeOf = (t: protobuf.Type) => types.get(t) ?? (types.set(t, reflectType(t)), types.get(t)!);
  const out: Record<string, ServiceDefinition> = {};
  const walk = (ns: protobuf.NamespaceBase) => {
    for (const o of ns.nestedArray) {
      if (o instanceof protobuf.Service) {
        const full = o.fullName.slice(1);
        const methods: Record<string, MethodDefinition> = {};
        for (const m of o.methodsArray) {
          m.resolve();
          methods[lowerFirst(m.name)] = {
            name: m.name,
            localName: lowerFirst(m.name),
            path: `/${full}/${m.name}`,
            kind: kindOf(m.requestStream, m.responseStream),
            input: typeOf(m.resolvedRequestType!),
            output: typeOf(m.resolvedResponseType!),
          };
        }
        out[full] = { typeName: full, methods };
      }
      if (o instanceof protobuf.Namespace || o instanceof protobuf.Type) walk(o);
    }
  };
  walk(root);
  return out;
}

interface GrpcMethod {
  path: string;
  originalName?: string;
  requestStream: boolean;
  responseStream: boolean;
  requestSerialize: (m: unknown) => Buffer;
  requestDeserialize: (b: Buffer) => unknown;
  responseSerialize: (m: unknown) => Buffer;
  responseDeserialize: (b: Buffer) => unknown;
  requestType?: { type?: { name?: unknown } };
  responseType?: { type?: { name?: unknown } };
}

function isMethod(v: unknown): v is GrpcMethod {
  if (typeof v !== "object" || v === null) return false;
  const m = v as Partial<GrpcMethod>;
  return typeof m.path === "string" && typeof m.requestSerialize === "function" && typeof m.responseDeserialize === "function";
}

/**
 * Checks the top-level structure of an encoded message (tags, wire types, lengths), for
 * deserializers that accept a truncated message silently (protobufjs 7, under @grpc/proto-loader).
 */
function checkFields(bytes: Buffer): Buffer {
  const r = new ProtoReader(bytes);
  while (r.pos < r.end) {
    const t = r.tag();
    r.skip(t & 7, t >>> 3);
  }
  return bytes;
}

/**
 * Adapts an @grpc/proto-loader package definition: its services, by fully qualified name.
 * Entries that are not services (message and enum types) are left out.
 */
export function fromPackageDefinition(definition: PackageDefinition): Record<string, ServiceDefinition> {
  check(typeof definition === "object" && definition !== null, "fromPackageDefinition(): expected a package definition from @grpc/proto-loader");
  // Message types are listed by fully qualified name; a method knows only the short name of its own.
  const byShortName = new Map<string, string[]>();
  for (const [name, entry] of Object.entries(definition)) {
    if (typeof (entry as { format?: unknown }).format !== "string") continue;
    const short = name.slice(name.lastIndexOf(".") + 1);
    byShortName.set(short, [...(byShortName.get(short) ?? []), name]);
  }
  const typeName = (side: { type?: { name?: unknown } } | undefined, fallback: string) => {
    const short = side?.type?.name;
    if (typeof short !== "string") return fallback;
    const candidates = byShortName.get(short) ?? [];
    return candidates.length === 1 ? candidates[0]! : short;
  };
  const out: Record<string, ServiceDefinition> = {};
  for (const [name, entry] of Object.entries(definition)) {
    const values = Object.values(entry as object) as unknown[];
    if (values.length === 0 || !values.every(isMethod)) continue;
    const methods: Record<string, MethodDefinition> = {};
    for (const [methodName, raw] of Object.entries(entry as Record<string, GrpcMethod>)) {
      const last = raw.path.slice(raw.path.lastIndexOf("/") + 1) || methodName;
      const local = raw.originalName ?? lowerFirst(last);
      methods[local] = {
        name: last,
        localName: local,
        path: raw.path,
        kind: kindOf(raw.requestStream, raw.responseStream),
        input: messageType(typeName(raw.requestType, `${name}/${last} request`), (m) => raw.requestSerialize(m), (b) => raw.requestDeserialize(checkFields(b)) as object, (init) => ({ ...init }) as object),
        output: messageType(typeName(raw.responseType, `${name}/${last} response`), (m) => raw.responseSerialize(m), (b) => raw.responseDeserialize(checkFields(b)) as object, (init) => ({ ...init }) as object),
      };
    }
    out[name] = { typeName: name, methods };
  }
  return out;
}
