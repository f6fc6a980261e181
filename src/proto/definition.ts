/**
 * Service definitions: what generated code and runtime-loaded `.proto` files both produce,
 * and what clients and servers are built from.
 */
import type { ProtoReader } from "./wire/reader.js";
import type { ProtoWriter, SizeCounter } from "./wire/writer.js";

/** Encodes and decodes one message type. */
export interface MessageType<T> {
  /** Fully qualified protobuf name, e.g. `"helloworld.HelloRequest"`. */
  readonly typeName: string;
  /** Encoded length of `message` in bytes; records nested lengths in `counter` (size pass). */
  sizeOf(message: T, counter: SizeCounter): number;
  /** Writes `message` (write pass, after `sizeOf` filled the writer's counter). */
  write(message: T, writer: ProtoWriter): void;
  /**
   * Reads a message that ends at `end` in the reader's buffer, merging into `into` when given
   * (a repeated occurrence of a message field); `group` is the field number of a group being
   * read (it ends at its end tag).
   */
  read(reader: ProtoReader, end: number, into?: T, group?: number): T;
  /** Encodes `message` (partial at any depth: absent fields take their defaults) into one new buffer. */
  encode(message: PartialMessage<T>): Uint8Array;
  /** Decodes one whole message. `bytes` fields are views into `bytes`, not copies. Throws KOALA_ERR_PROTOCOL on malformed input. */
  decode(bytes: Uint8Array): T;
  /** A message with every field at its default value, then the fields of `init`. */
  create(init?: PartialMessage<T>): T;
  /** The fields, for reflection (the JSON mapping). */
  readonly fields?: readonly FieldDesc[];
  /** `message` in the protobuf JSON mapping. Throws KOALA_ERR_INVALID_ARGUMENT for what JSON cannot carry. */
  toJson(message: T, options?: ToJsonOptions): JsonValue;
  /** A message from its protobuf JSON form. Throws KOALA_ERR_INVALID_ARGUMENT naming the field and the problem. */
  fromJson(json: JsonValue, options?: FromJsonOptions): T;
}

/** A JSON value. */
export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };

/** Options of `toJson`. */
export interface ToJsonOptions {
  /** Message types an `Any` may hold, looked up by type URL. Default none (an Any then fails). */
  typeRegistry?: readonly MessageType<any>[];
  /**
   * Also write the fields with implicit presence that hold their default: proto3 scalars and
   * enums without `optional` (0, "", false), and empty repeated fields and maps ([] and {}).
   * Fields with explicit presence (messages, `optional`, oneof members, proto2) stay out when
   * unset. Default false.
   */
  alwaysEmitImplicit?: boolean;
  /** Write enum values as numbers instead of their names. Default false. */
  enumAsInteger?: boolean;
  /** Key fields by their name in the `.proto` (`user_id`) instead of the JSON name (`userId`). Default false. */
  useProtoFieldName?: boolean;
}

/** Options of `fromJson`. */
export interface FromJsonOptions {
  /** Message types an `Any` may hold, looked up by type URL. Default none (an Any then fails). */
  typeRegistry?: readonly MessageType<any>[];
  /** Skip keys (and enum names) the type does not know instead of failing. Default false. */
  ignoreUnknownFields?: boolean;
}

/** A protobuf scalar type. */
export type ScalarName = "double" | "float" | "int32" | "int64" | "uint32" | "uint64" | "sint32" | "sint64" | "fixed32" | "fixed64" | "sfixed32" | "sfixed64" | "bool" | "string" | "bytes";

/** One field of a generated message type, as the JSON mapping sees it. */
export interface FieldDesc {
  /** Field number. */
  readonly no: number;
  /** Property name in the message (protoc's lowerCamelCase name). */
  readonly name: string;
  /** JSON name (`json_name`, else protoc's lowerCamelCase name). */
  readonly json: string;
  /** Name as written in the `.proto`. */
  readonly proto: string;
  /** Kind of the value (of each element for repeated fields, of the values for maps). */
  readonly kind: "scalar" | "enum" | "message";
  /** Scalar type (kind `scalar`). */
  readonly type?: ScalarName;
  /** The message type, or the TypeScript enum object (kinds `message` and `enum`). */
  readonly T?: () => MessageType<any> | Record<string | number, string | number>;
  /** Fully qualified enum name (kind `enum`). */
  readonly enumType?: string;
  /** A repeated field. */
  readonly repeated?: boolean;
  /** A map field: its key type. */
  readonly map?: ScalarName;
  /** Property of the oneof this field belongs to. */
  readonly oneof?: string;
  /** Explicit presence on a singular scalar (proto3 `optional`, proto2): unset is absent, not the default. */
  readonly opt?: boolean;
}

/**
 * What encoders accept for a message of type `T`: any field may be left out, at every depth
 * (absent fields encode as their defaults). A oneof keeps its `case`; map and array elements
 * are partial messages themselves. Decoded messages are always complete `T`s.
 */
export type PartialMessage<T> = T extends Uint8Array | bigint | number | string | boolean | null | undefined
  ? T
  : T extends readonly (infer E)[]
    ? PartialMessage<E>[]
    : T extends { case: string; value: unknown }
      ? { case: T["case"]; value: PartialMessage<T["value"]> }
      : T extends { case: undefined }
        ? T
        : string extends keyof T
          ? { [K in keyof T]: PartialMessage<T[K]> }
          : number extends keyof T
            ? { [K in keyof T]: PartialMessage<T[K]> }
            : { [K in keyof T]?: PartialMessage<T[K]> };

/** The four call kinds. */
export type MethodKind = "unary" | "server_streaming" | "client_streaming" | "bidi_streaming";

/** One method of a service; `K` is its call kind, kept as a literal type so clients are typed per kind. */
export interface MethodDefinition<I = any, O = any, K extends MethodKind = MethodKind> {
  /** Name as written in the `.proto`, e.g. `"SayHello"`. */
  readonly name: string;
  /** Name of the client and handler function, e.g. `"sayHello"`. */
  readonly localName: string;
  /** `/package.Service/Method`, as gRPC writes it. */
  readonly path: string;
  /** Which of the four call kinds. */
  readonly kind: K;
  /** Request message type. */
  readonly input: MessageType<I>;
  /** Response message type. */
  readonly output: MessageType<O>;
}

/** A service: its name and methods, keyed by local (camelCase) name. */
export interface ServiceDefinition<M extends Record<string, MethodDefinition> = Record<string, MethodDefinition>> {
  /** Fully qualified name, e.g. `"helloworld.Greeter"`. */
  readonly typeName: string;
  /** Methods by local name. */
  readonly methods: M;
}
