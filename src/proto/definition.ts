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
