/**
 * koala-rpc: fast RPC for Node.js over TCP, Unix sockets and RDMA.
 *
 * The one public entry. Layers: transport (src/transport), memory (src/mem), RPC core (src/rpc).
 */
export { Code, ErrorCode, KoalaError, RpcError, codeName } from "./errors.js";
export type { ErrorCodeValue, MetadataInit } from "./errors.js";

export { listen, connect, setupTransports, transportInfo, registerTransport, chooseTransport, parseAddress } from "./transport/index.js";
export { encodeDescriptor, decodeDescriptor, DESCRIPTOR_BYTES } from "./transport/index.js";
export type {
  Address,
  Connection,
  Listener,
  Transport,
  TransportName,
  TransportOptions,
  RegionDescriptor,
  RegisteredRegion,
  RemoteAccess,
  ByteSource,
  RegisterRegionOptions,
} from "./transport/index.js";

export { Heap, Lease, createHeap, sharedHeap } from "./mem/index.js";
export type { HeapOptions, HeapStats, ClassStats, LeakReport, MemoryRegistrar } from "./mem/index.js";

export { Metadata } from "./rpc/metadata.js";
export type { MetadataValue } from "./rpc/metadata.js";
export type { MessageType, MethodDefinition, MethodKind, ServiceDefinition } from "./rpc/definition.js";
export { Channel, createChannel, createClient, closeClient, clientChannel } from "./rpc/client.js";
export type { CallOptions, Client, ClientMethod, RequestInit } from "./rpc/client.js";
export { Server, createServer } from "./rpc/server.js";
export type {
  CallContext,
  ServiceImplementation,
  MethodHandler,
  UnaryHandler,
  ServerStreamingHandler,
  ClientStreamingHandler,
  BidiStreamingHandler,
  ResponseInit,
} from "./rpc/server.js";
export type { ChannelOptions, ServerOptions } from "./rpc/options.js";
export * as wire from "./rpc/wire/index.js";
export { loadProto, fromPackageDefinition } from "./rpc/proto-loader.js";
export type { LoadProtoOptions } from "./rpc/proto-loader.js";
export { generate } from "./rpc/codegen/generate.js";
export type { GenerateOptions } from "./rpc/codegen/generate.js";
