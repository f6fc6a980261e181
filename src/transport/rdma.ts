/**
 * The RDMA transport's place in the registry. The verbs datapath (native addon and soft
 * provider) is not part of this version yet, so the transport reports itself unavailable with
 * the reason: an explicit `rdma://` address or `KOALA_TRANSPORT=rdma` fails loudly with it,
 * and `auto` falls back to TCP.
 */
import { ErrorCode, KoalaError } from "../errors.js";
import type { Connection, Listener, Transport } from "./types.js";

function reason(): string {
  if (process.env.KOALA_NO_NATIVE === "1") return "KOALA_NO_NATIVE=1 forbids loading the native verbs addon";
  return "the RDMA datapath (native verbs addon and soft provider) is not built into this version of koala-rpc";
}

function fail(): never {
  throw new KoalaError(ErrorCode.TRANSPORT_UNAVAILABLE, `rdma transport unavailable: ${reason()}`);
}

/** The RDMA transport (unavailable in this version; see the module comment). */
export const rdmaTransport: Transport = {
  name: "rdma",
  unavailableReason: reason,
  listen: async (): Promise<Listener> => fail(),
  connect: async (): Promise<Connection> => fail(),
};
