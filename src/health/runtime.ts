/**
 * What the health service's generated code imports (its `--runtime`): the same names as the
 * package entry exports, taken from the layers below, so that src/index.ts can export the health
 * service without an import cycle.
 */
export * as wire from "../proto/wire/index.js";
export type { MessageType, MethodDefinition, PartialMessage, ServiceDefinition } from "../proto/definition.js";
export type { Client } from "../rpc/client.js";
export type { ServiceImplementation } from "../rpc/server.js";
