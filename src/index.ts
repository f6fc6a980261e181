/**
 * koala-rpc: fast RPC for Node.js over TCP, Unix sockets and RDMA.
 *
 * The one public entry. Layers: transport (src/transport), memory (src/mem), protobuf runtime
 * (src/proto), RPC core (src/rpc). Loading `.proto` files at run time is the subpath export
 * `koala-rpc/proto-loader` and the code generator `koala-rpc/codegen`: both use protobufjs, which
 * this entry never loads.
 */
export { Code, ErrorCode, KoalaError, RpcError, codeName } from "./errors.js";
export type { ErrorCodeValue, MetadataInit } from "./errors.js";

export { listen, connect, setupTransports, transportInfo, registerTransport, chooseTransport, parseAddress } from "./transport/index.js";
export { encodeDescriptor, decodeDescriptor, DESCRIPTOR_BYTES } from "./transport/index.js";
export type {
  Address,
  Connection,
  Listener,
  PeerCertificate,
  TlsOptions,
  TlsPem,
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
export { registerResolver, registerBalancer, registeredResolvers, registeredBalancers, parseTarget, registerHealthChecker, liveChannels } from "./cluster/index.js";
export type { Balancer, BalancerFactory, ChannelView, ConnectivityState, Endpoint, EndpointState, HealthChecker, HealthWatch, PooledConnection, Resolver, ResolverFactory, ResolverListener, ResolverOptions, Subchannel, Target } from "./cluster/index.js";
export type { HeapOptions, HeapStats, ClassStats, LeakReport, MemoryRegistrar } from "./mem/index.js";

export { Metadata } from "./rpc/metadata.js";
export type { MetadataValue } from "./rpc/metadata.js";
export type { MessageType, MethodDefinition, MethodKind, PartialMessage, ServiceDefinition } from "./proto/definition.js";
export { Channel, createChannel, createClient, closeClient, clientChannel } from "./rpc/client.js";
export type { CallOptions, Client, ClientMethod, RequestInit } from "./rpc/client.js";
export { Server, createServer } from "./rpc/server.js";
export { setupManaged, defaultDaemonSocket } from "./managed/index.js";
export { addHealthService, setupHealthChecking, HealthStatus, HealthService, HealthCheckRequest, HealthCheckResponse, HealthCheckResponse_ServingStatus } from "./health/index.js";
export type { HealthClient, ServingStatus } from "./health/index.js";
export type {
  CallContext,
  ServerStats,
  ServiceImplementation,
  MethodHandler,
  UnaryHandler,
  ServerStreamingHandler,
  ClientStreamingHandler,
  BidiStreamingHandler,
  ResponseInit,
} from "./rpc/server.js";
export type { ChannelOptions, HealthCheckOptions, OutlierDetectionOptions, ServerOptions } from "./rpc/options.js";
export * as wire from "./proto/wire/index.js";
export { toJson, fromJson } from "./proto/json.js";
export type { FieldDesc, FromJsonOptions, JsonValue, ScalarName, ToJsonOptions } from "./proto/definition.js";
export {
  anyIs,
  anyPack,
  anyUnpack,
  durationFromMs,
  durationToMs,
  structFromJson,
  structToJson,
  timestampFromDate,
  timestampNow,
  timestampToDate,
  unwrap,
  valueFromJson,
  valueToJson,
  wrap,
} from "./proto/wkt.js";
export type { AnyMessage, SecondsNanos } from "./proto/wkt.js";
export { clearExtension, getExtension, hasExtension, setExtension } from "./proto/extension.js";
export type { Extension } from "./proto/extension.js";

export { InterceptorRegistry, processInterceptors } from "./rpc/interceptor.js";
export type { CallInfo, Interceptor, InterceptorScope, InterceptPoint, Verdict } from "./rpc/interceptor.js";

import { log } from "./log.js";
import { onServerCreated } from "./rpc/server.js";
import { onChannelCreated } from "./cluster/index.js";
import { setupHealthChecking } from "./health/index.js";
import { setupManaged } from "./managed/index.js";

// Channels with the `healthCheck` option need a checker; the cluster layer below rpc cannot
// import it, so the entry registers the standard one (an explicit call, as setupCluster()).
setupHealthChecking();
// Managed mode's `shm` transport and `managed:` resolver (src/managed): registered, not loaded
// (the shared-memory addon loads at the first managed connection).
setupManaged();

// KOALA_CONTROL=1 asks every koala process for live control: each server is listed by
// `koala ctl ps` and the control socket opens with the first server or channel (a client-only
// process shows its channels to `koala ctl channels`). The policy layer is loaded only then, so
// an app that does not ask for it never loads it.
if (process.env.KOALA_CONTROL === "1") {
  const removeHook = onChannelCreated(() => {
    removeHook();
    import("./policy/control.js")
      .then((control) => control.enableControl())
      .catch((err: unknown) => log("warn", "control", `KOALA_CONTROL=1, but the control socket could not be opened: ${(err as Error)?.message ?? String(err)}`));
  });
  let n = 0;
  onServerCreated((server) => {
    const name = server.options.name === "" ? `server-${++n}` : server.options.name;
    import("./policy/control.js")
      .then(async (control) => {
        control.trackServer(server, name, { keepName: true });
        await control.enableControl();
      })
      .catch((err: unknown) => log("warn", "control", `KOALA_CONTROL=1, but the control socket could not be opened: ${(err as Error)?.message ?? String(err)}`));
  });
}
