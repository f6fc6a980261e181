/**
 * `.proto` files loaded at run time, for scripts: the same service definitions as generated
 * code, built on protobufjs reflection (`loadProto`) or adapted from an @grpc/proto-loader
 * package definition (`fromPackageDefinition`), usable with createClient and server.add.
 *
 * Messages are plain objects as protobufjs' `toObject` makes them: 64-bit integers as decimal
 * strings, enums as numbers, bytes as Buffers, every field present with its default.
 */
import { dirname, isAbsolute, join, resolve } from "node:path";
import { existsSync } from "node:fs";
import protobuf from "protobufjs";
import type { PackageDefinition } from "@grpc/proto-loader";
import { ErrorCode, KoalaError } from "../errors.js";
import type { MessageType, MethodDefinition, MethodKind, ServiceDefinition } from "./definition.js";
import { ProtoReader } from "./wire/reader.js";
import type { ProtoWriter, SizeCounter } from "./wire/writer.js";

/** Options of {@link loadProto}. */
export interface LoadProtoOptions {
  /** Folders searched for imports after the importing file's folder. Default none. */
  includeDirs?: string[];
}

/** Encoded bytes kept between the size pass and the write pass of one message. */
const pending = new WeakMap<object, Uint8Array>();

function protocol(err: unknown, what: string): KoalaError {
  return new KoalaError(ErrorCode.PROTOCOL, `malformed ${what}: ${(err as Error).message}`, { cause: err });
}

/** A MessageType over encode / decode functions of whole messages. */
function messageType<T extends object>(typeName: string, encode: (m: T) => Uint8Array, decode: (b: Uint8Array) => T, create: (init?: Partial<T>) => T): MessageType<T> {
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
    encode,
    decode(bytes: Uint8Array): T {
      try {
        return decode(bytes);
      } catch (err) {
        throw protocol(err, typeName);
      }
    },
  };
  return type;
}

const objectOptions: protobuf.IConversionOptions = { longs: String, enums: Number, bytes: Buffer as never, defaults: true, oneofs: true };

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

/** Loads `.proto` files; returns their services by fully qualified name (`"hello.Greeter"`). */
export function loadProto(files: string | string[], options?: LoadProtoOptions): Record<string, ServiceDefinition> {
  const includeDirs = (options?.includeDirs ?? []).map((d) => resolve(d));
  const root = new protobuf.Root();
  root.resolvePath = (origin, target) => {
    if (isAbsolute(target)) return target;
    const candidates = [origin ? join(dirname(origin), target) : target, ...includeDirs.map((d) => join(d, target))];
    return candidates.find((c) => existsSync(c)) ?? target;
  };
  try {
    root.loadSync((Array.isArray(files) ? files : [files]).map((f) => resolve(f)), { keepCase: false });
    root.resolveAll();
  } catch (err) {
    throw new KoalaError(ErrorCode.INVALID_ARGUMENT, `loadProto(): ${(err as Error).message}`, { cause: err });
  }
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
}

/** Adapts an @grpc/proto-loader package definition: its services, by fully qualified name. */
export function fromPackageDefinition(definition: PackageDefinition): Record<string, ServiceDefinition> {
  const out: Record<string, ServiceDefinition> = {};
  const asBuffer = (b: Uint8Array) => (Buffer.isBuffer(b) ? b : Buffer.from(b.buffer, b.byteOffset, b.byteLength));
  for (const [name, entry] of Object.entries(definition)) {
    const values = Object.values(entry as object) as unknown[];
    if (values.length === 0 || !values.every((v) => typeof v === "object" && v !== null && typeof (v as GrpcMethod).path === "string")) continue;
    const methods: Record<string, MethodDefinition> = {};
    for (const [methodName, raw] of Object.entries(entry as Record<string, GrpcMethod>)) {
      const [, , last] = raw.path.split("/");
      const local = raw.originalName ?? lowerFirst(last ?? methodName);
      const typeName = (side: string) => `${name}/${last}.${side}`;
      methods[local] = {
        name: last ?? methodName,
        localName: local,
        path: raw.path,
        kind: kindOf(raw.requestStream, raw.responseStream),
        input: messageType(typeName("request"), (m) => raw.requestSerialize(m), (b) => raw.requestDeserialize(asBuffer(b)) as object, (init) => ({ ...init }) as object),
        output: messageType(typeName("response"), (m) => raw.responseSerialize(m), (b) => raw.responseDeserialize(asBuffer(b)) as object, (init) => ({ ...init }) as object),
      };
    }
    out[name] = { typeName: name, methods };
  }
  return out;
}
