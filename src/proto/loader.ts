/**
 * `.proto` files loaded at run time (the `koala-rpc/proto-loader` entry; it loads protobufjs,
 * which the main entry never does): service definitions and message types built from
 * protobufjs' parse of the files (`loadProto`, `loadService`, `loadMessageTypes`), or adapted
 * from an @grpc/proto-loader package definition (`fromPackageDefinition`), usable with
 * createClient and server.add.
 *
 * Loaded messages have exactly the shape of generated ones — oneofs as `{ case, value }`,
 * fields at their defaults (not null), bigint for 64-bit integers, `Uint8Array` views for
 * bytes, maps as plain objects, `$unknown` — and encode to the same bytes, through koala's own
 * codec interpreting the field table (see reflect.ts). `fromPackageDefinition` messages are
 * whatever the package definition's own (de)serializers make of them (its `longs`, `enums`, …
 * options); such a type encodes the whole message during the size pass and copies the bytes
 * during the write pass.
 */
import protobuf from "protobufjs";
import type { PackageDefinition } from "@grpc/proto-loader";
import { ErrorCode, KoalaError, check } from "../errors.js";
import { resolveOptions, type OptionsSpec } from "../options.js";
import { fieldFacts, ownFields, type FieldFacts } from "./codegen/facts.js";
import { loadRoot, stringList } from "./codegen/load.js";
import type { MessageType, MethodDefinition, MethodKind, PartialMessage, ServiceDefinition } from "./definition.js";
import { fromJson, toJson } from "./json.js";
import { reflectMessageType, type CodecField, type LoadedMessage } from "./reflect.js";

export type { LoadedMessage } from "./reflect.js";
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

/** Builds (once each, lazily) the interpreted message types of a loaded root. */
class LoadedTypes {
  private readonly types = new Map<protobuf.Type, MessageType<LoadedMessage>>();
  private readonly enums = new Map<protobuf.Enum, Record<string | number, string | number>>();

  /** The message type of `t`. */
  message(t: protobuf.Type): MessageType<LoadedMessage> {
    let type = this.types.get(t);
    if (type === undefined) {
      const fields = ownFields(t).map((f) => this.field(f));
      type = reflectMessageType(t.fullName.slice(1), fields);
      this.types.set(t, type);
    }
    return type;
  }

  /** An enum as TypeScript compiles one: names to numbers and numbers to names. */
  private enumObject(e: protobuf.Enum): Record<string | number, string | number> {
    let o = this.enums.get(e);
    if (o === undefined) {
      o = {};
      for (const [name, n] of Object.entries(e.values)) {
        o[name] = n;
        // The first name of a number is its name (aliases come later).
        o[n] ??= name;
      }
      this.enums.set(e, o);
    }
    return o;
  }

  private field(f: protobuf.Field): CodecField {
    let x: FieldFacts;
    try {
      x = fieldFacts(f);
    } catch (err) {
      throw new KoalaError(ErrorCode.INVALID_ARGUMENT, `loadProto(): ${(err as Error).message}`);
    }
    const msg = x.message;
    const en = x.enumType;
    return {
      no: x.number,
      name: x.name,
      json: x.jsonName,
      proto: x.protoName,
      kind: msg ? "message" : en ? "enum" : "scalar",
      ...(x.scalar === undefined ? {} : { type: x.scalar }),
      ...(msg ? { T: () => this.message(msg) } : en ? { T: () => this.enumObject(en), enumType: en.fullName.slice(1) } : {}),
      ...(x.mapKey !== undefined ? { map: x.mapKey } : x.repeated ? { repeated: true } : {}),
      ...(x.oneof === undefined ? {} : { oneof: x.oneof }),
      ...(x.optional || x.defaultValue !== undefined ? { opt: true } : {}),
      packed: x.packed,
      group: x.group,
      required: x.required,
      lax: x.lax,
      ...(x.closed === undefined ? {} : { closed: x.closed }),
      ...(x.defaultValue === undefined ? {} : { defaultValue: x.defaultValue }),
    };
  }
}

function kindOf(requestStream: boolean | undefined, responseStream: boolean | undefined): MethodKind {
  return requestStream ? (responseStream ? "bidi_streaming" : "client_streaming") : responseStream ? "server_streaming" : "unary";
}

const lowerFirst = (s: string) => s.charAt(0).toLowerCase() + s.slice(1);

function loadFiles(where: string, files: string | string[], options: LoadProtoOptions | undefined): protobuf.Root {
  const o = resolveOptions(`${where}()`, loadProtoOptionsSpec, options);
  const list = typeof files === "string" ? [files] : files;
  check(Array.isArray(list) && list.length > 0 && list.every((f) => typeof f === "string"), `${where}(): files must be a path or a non-empty array of paths`);
  return loadRoot(list, o.includeDirs, `${where}()`, true);
}

function walk(ns: protobuf.NamespaceBase, visit: (o: protobuf.ReflectionObject) => void): void {
  for (const o of ns.nestedArray) {
    visit(o);
    if (o instanceof protobuf.Namespace || o instanceof protobuf.Type) walk(o, visit);
  }
}

/** A service of a loaded root, its message types interpreted by `types`. */
function serviceOf(s: protobuf.Service, types: LoadedTypes): ServiceDefinition<Record<string, MethodDefinition<LoadedMessage, LoadedMessage>>> {
  const full = s.fullName.slice(1);
  const methods: Record<string, MethodDefinition<LoadedMessage, LoadedMessage>> = {};
  for (const m of s.methodsArray) {
    m.resolve();
    methods[lowerFirst(m.name)] = {
      name: m.name,
      localName: lowerFirst(m.name),
      path: `/${full}/${m.name}`,
      kind: kindOf(m.requestStream, m.responseStream),
      input: types.message(m.resolvedRequestType!),
      output: types.message(m.resolvedResponseType!),
    };
  }
  return { typeName: full, methods };
}

/**
 * Loads `.proto` files; returns their services (and those of the files they import) by fully
 * qualified name (`"hello.Greeter"`). Messages have the shape generated code gives them. Every
 * method is typed as any call kind (the kinds are known only once the file is read);
 * {@link loadService} types them by kind and checks them, or cast one service yourself,
 * unchecked: `loadProto(f)["hello.Greeter"] as LoadedService<{ sayHello: "unary" }>`. A missing
 * or malformed file throws KOALA_ERR_INVALID_ARGUMENT.
 */
export function loadProto(files: string | string[], options?: LoadProtoOptions): Record<string, ServiceDefinition> {
  const root = loadFiles("loadProto", files, options);
  const types = new LoadedTypes();
  const out: Record<string, ServiceDefinition> = {};
  walk(root, (o) => {
    if (o instanceof protobuf.Service) out[o.fullName.slice(1)] = serviceOf(o, types);
  });
  return out;
}

/** Loaded method definitions typed by the call kinds `K` declares for them. */
export type LoadedService<K extends Record<string, MethodKind>> = ServiceDefinition<{ [M in keyof K]: MethodDefinition<LoadedMessage, LoadedMessage, K[M]> }>;

/**
 * Loads one service, typed: `K` names each method's call kind (`{ sayHello: "unary", … }`), so
 * its client and handlers are typed per kind. `kinds` repeats them for the check at load time:
 * a method missing from the `.proto`, a method left out of `kinds` or a kind that differs
 * throws KOALA_ERR_INVALID_ARGUMENT naming it.
 */
export function loadService<const K extends Record<string, MethodKind>>(files: string | string[], serviceName: string, kinds: K, options?: LoadProtoOptions): LoadedService<K> {
  check(typeof serviceName === "string" && serviceName !== "", "loadService(): serviceName must be a fully qualified service name");
  const root = loadFiles("loadService", files, options);
  const s = root.lookup(serviceName);
  if (!(s instanceof protobuf.Service)) throw new KoalaError(ErrorCode.INVALID_ARGUMENT, `loadService(): no service ${serviceName} in the loaded files`);
  const def = serviceOf(s, new LoadedTypes());
  const declared = new Set(Object.keys(kinds));
  for (const [name, m] of Object.entries(def.methods)) {
    if (!declared.has(name)) throw new KoalaError(ErrorCode.INVALID_ARGUMENT, `loadService(${serviceName}): method ${name} (${m.kind}) is missing from kinds`);
    if (kinds[name] !== m.kind) throw new KoalaError(ErrorCode.INVALID_ARGUMENT, `loadService(${serviceName}): ${name} is ${m.kind} in the .proto, not ${kinds[name]}`);
    declared.delete(name);
  }
  if (declared.size > 0) throw new KoalaError(ErrorCode.INVALID_ARGUMENT, `loadService(${serviceName}): no method ${[...declared].join(", ")} in the .proto`);
  return def as unknown as LoadedService<K>;
}

/** Loads `.proto` files; returns their message types (interpreted, shaped as generated code) by fully qualified name. */
export function loadMessageTypes(files: string | string[], options?: LoadProtoOptions): Record<string, MessageType<LoadedMessage>> {
  const root = loadFiles("loadMessageTypes", files, options);
  const types = new LoadedTypes();
  const out: Record<string, MessageType<LoadedMessage>> = {};
  walk(root, (o) => {
    if (o instanceof protobuf.Type) out[o.fullName.slice(1)] = types.message(o);
  });
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
