/**
 * The RDMA transport (`rdma://host:port`): listeners and dialing over the connection manager
 * of the Verbs interface; the live connection is {@link RdmaConnection}.
 */
import { ErrorCode, KoalaError } from "../../errors.js";
import { logLimited } from "../../log.js";
import { QueuedListener } from "../accept-queue.js";
import { formatAddress } from "../address.js";
import type { Address, Connection, Listener, ResolvedTransportOptions, Transport } from "../types.js";
import { RECV_DEPTH, RdmaConnection, decodeHello, encodeHello, HEADER_BYTES } from "./connection.js";
import { rdmaContext, type RdmaContext } from "./context.js";
import { readRdmaConfig } from "./config.js";
import { selectRdma } from "./providers.js";
import type { CmEvent, CmId, CmListener, Qp, QpCaps } from "./verbs.js";

/** Send-queue depth of every queue pair: the peer's credits, the RDMA READs of rendezvous and room for protocol messages. */
const SEND_DEPTH = 64;
/** Inline bytes asked of each queue pair (the device may grant less). */
const INLINE_BYTES = 256;

function qpCaps(ctx: RdmaContext): QpCaps {
  const d = ctx.selection.device!;
  return {
    maxSendWr: Math.min(SEND_DEPTH, d.maxQpWr),
    maxRecvWr: RECV_DEPTH,
    maxSendSge: d.maxSge,
    maxRecvSge: 1,
    // Room for a small RPC (header, call frame, a few dozen bytes of message): those go inline
    // and unsignaled (connection.ts), the cheapest send a NIC offers.
    maxInlineData: Math.min(INLINE_BYTES, d.maxInlineData),
  };
}

function contextFor(): { ctx: RdmaContext; bufferBytes: number } {
  const thresh = readRdmaConfig().rndvThreshBytes;
  const bufferBytes = HEADER_BYTES + thresh;
  return { ctx: rdmaContext(RECV_DEPTH * bufferBytes), bufferBytes };
}

class RdmaListener extends QueuedListener implements Listener {
  readonly transport = "rdma" as const;
  /** Connections by CM identifier, from the request until they end (events arrive by identifier). */
  private readonly byId = new Map<CmId, RdmaConnection | undefined>();
  /** Accepted, not yet established: closed with the listener. */
  private readonly handshaking = new Set<RdmaConnection>();
  cm: CmListener | undefined;

  constructor(
    readonly address: string,
    private readonly ctx: RdmaContext,
    private readonly bufferBytes: number,
    private readonly options: ResolvedTransportOptions,
  ) {
    super();
  }

  /** Handles a CM event; runs from the provider's event source, so nothing may escape it. */
  onEvent(e: CmEvent): void {
    try {
      this.handle(e);
    } catch (err) {
      logLimited("rdma.listener-error", "error", "transport", `RDMA listener ${this.address}: ${e.type}: ${(err as Error)?.stack ?? String(err)}`);
      this.byId.get(e.id)?.close(err as Error);
    }
  }

  private handle(e: CmEvent): void {
    const v = this.ctx.verbs;
    switch (e.type) {
      case "connect_request": {
        if (this.queue.isClosed) {
          v.reject(e.id, new Uint8Array(0));
          v.destroyId(e.id);
          return;
        }
        let peer;
        try {
          peer = decodeHello(e.privateData);
        } catch (err) {
          logLimited("rdma.bad-request", "debug", "transport", `refused an RDMA connection request on ${this.address}: ${(err as Error).message}`);
          v.reject(e.id, new Uint8Array(0));
          v.destroyId(e.id);
          return;
        }
        let conn: RdmaConnection;
        let qp: Qp | undefined;
        try {
          qp = v.createQp(e.id, this.ctx.pd, this.ctx.cq, this.ctx.cq, qpCaps(this.ctx));
          conn = new RdmaConnection(this.ctx, e.id, qp, this.options, this.address, e.id.remoteAddress || `${this.address}#peer`, peer);
        } catch (err) {
          // Out of queue pairs or registered memory: this request is refused, the listener goes on.
          logLimited("rdma.refused", "warn", "transport", `refused an RDMA connection on ${this.address}: ${(err as Error).message}`);
          if (qp !== undefined) v.destroyQp(qp);
          v.reject(e.id, new Uint8Array(0));
          v.destroyId(e.id);
          return;
        }
        this.byId.set(e.id, conn);
        this.handshaking.add(conn);
        void conn.closed.then(() => {
          this.byId.delete(e.id);
          this.handshaking.delete(conn);
        });
        v.accept(e.id, encodeHello(RECV_DEPTH, this.bufferBytes));
        return;
      }
      case "established": {
        const conn = this.byId.get(e.id);
        if (conn !== undefined && this.handshaking.delete(conn)) this.queue.push(conn);
        return;
      }
      case "disconnected":
      case "rejected":
      case "unreachable":
        this.byId.get(e.id)?.onDisconnected(e.reason ?? e.type);
        return;
    }
  }

  async close(): Promise<void> {
    if (this.queue.isClosed) return;
    this.queue.close();
    for (const c of [...this.handshaking]) c.close(new Error("the listener closed during the handshake"));
    if (this.cm !== undefined) this.ctx.verbs.closeListener(this.cm);
  }
}

async function listenRdma(address: Address, options: ResolvedTransportOptions): Promise<Listener> {
  const { ctx, bufferBytes } = contextFor();
  let listener: RdmaListener | undefined;
  const events: CmEvent[] = [];
  const cm = await ctx.verbs.listen(address.host, address.port, (e) => (listener === undefined ? events.push(e) : listener.onEvent(e)));
  listener = new RdmaListener(formatAddress("rdma", address.host, cm.port, ""), ctx, bufferBytes, options);
  listener.cm = cm;
  for (const e of events) listener.onEvent(e);
  return listener;
}

async function connectRdma(address: Address, options: ResolvedTransportOptions): Promise<Connection> {
  const { ctx, bufferBytes } = contextFor();
  const v = ctx.verbs;
  let conn: RdmaConnection | undefined;
  let settle: ((e: CmEvent) => void) | undefined;
  const id = v.createId((e) => {
    if (settle !== undefined) settle(e);
    else if (e.type === "disconnected") conn?.onDisconnected(e.reason ?? e.type);
  });
  // The identifier is resolved to the device that reaches the host before its QP can be made there.
  const started = performance.now();
  let qp: Qp;
  try {
    await v.resolve(id, address.host, address.port, options.connectTimeoutMs);
    qp = v.createQp(id, ctx.pd, ctx.cq, ctx.cq, qpCaps(ctx));
  } catch (err) {
    v.destroyId(id);
    const code = err instanceof KoalaError ? err.code : ErrorCode.SYSTEM;
    throw new KoalaError(code, `connect to ${address.uri}: ${(err as Error).message}`, { cause: err });
  }
  try {
    conn = new RdmaConnection(ctx, id, qp, options, `rdma://127.0.0.1:0#${qp.qpNum}`, address.uri, undefined);
  } catch (err) {
    // Refused before connecting (this thread's CQ is at the device's max_cqe, no registered memory).
    v.destroyQp(qp);
    v.destroyId(id);
    const code = err instanceof KoalaError ? err.code : ErrorCode.SYSTEM;
    throw new KoalaError(code, `connect to ${address.uri}: ${(err as Error).message}`, { cause: err });
  }
  const left = Math.max(1, Math.round(options.connectTimeoutMs - (performance.now() - started)));
  const event = await new Promise<CmEvent>((resolve) => {
    settle = resolve;
    v.connect(id, address.host, address.port, encodeHello(RECV_DEPTH, bufferBytes), left);
  });
  settle = undefined;
  if (event.type === "established") {
    try {
      conn.setPeer(decodeHello(event.privateData));
      return conn;
    } catch (err) {
      conn.close(err as Error);
      throw new KoalaError((err as KoalaError).code, `connect to ${address.uri}: ${(err as Error).message}`, { cause: err });
    }
  }
  conn.close(new Error(event.reason ?? event.type));
  const code = event.type === "rejected" ? ErrorCode.CONNECTION_REFUSED : event.timedOut === true ? ErrorCode.CONNECT_TIMEOUT : ErrorCode.HOST_NOT_FOUND;
  throw new KoalaError(code, `connect to ${address.uri}: ${event.reason ?? event.type}`);
}

/** The RDMA transport; unavailable (with the reason) when no provider has an active port. */
export const rdmaTransport: Transport = {
  name: "rdma",
  // A bad RDMA variable throws (KOALA_ERR_INVALID_ARGUMENT naming it), also under `auto`:
  // a typo must not turn into a silent fallback to TCP.
  unavailableReason: (env = process.env) => selectRdma(env).unavailable,
  describe: (env = process.env) => {
    const sel = selectRdma(env);
    return sel.unavailable ?? `${sel.device!.name}:${sel.port} through provider ${sel.provider.name}${sel.provider.software ? " (a software provider)" : ""}`;
  },
  listen: listenRdma,
  connect: connectRdma,
};
