/**
 * What both ends of an RPC connection share: framing on top of a transport connection,
 * keepalive, sending frames whose memory returns to the heap once written, and one place
 * that turns a malformed frame into a closed connection.
 */
import { ErrorCode, KoalaError } from "../errors.js";
import { log } from "../log.js";
import type { Connection } from "../transport/types.js";
import { FrameType, decodeFrame, type Frame } from "./frame.js";
import { Keepalive } from "./keepalive.js";
import type { OutgoingFrame } from "./outgoing.js";

/** Keepalive settings of an endpoint. */
export interface KeepaliveSettings {
  keepaliveIntervalMs: number;
  keepaliveTimeoutMs: number;
}

/** One RPC connection; subclasses handle the frames of their side. */
export abstract class RpcEndpoint {
  private readonly keepalive: Keepalive;
  /** Reused for every received frame: handlers finish with a frame before the next arrives and keep no reference to it. */
  private readonly scratch: Frame = { type: FrameType.DATA, flags: 0, callId: 0, arg: 0, arg2: 0, metadata: undefined, trailers: undefined, text: "", body: undefined };

  /**
   * @param conn the transport connection
   * @param settings keepalive interval and timeout
   * @param side "client" or "server": who this end is, for logs and errors
   */
  constructor(
    readonly conn: Connection,
    settings: KeepaliveSettings,
    private readonly side: "client" | "server",
  ) {
    this.keepalive = new Keepalive(conn, settings.keepaliveIntervalMs, settings.keepaliveTimeoutMs, side === "client" ? "server" : "client");
  }

  /**
   * Starts receiving. Subclass constructors call it last: a connection may already hold
   * messages, delivered at once, and the subclass's fields must exist by then.
   */
  protected start(): void {
    this.conn.onMessage((m) => this.receive(m));
    void this.conn.closed.then((reason) => {
      this.keepalive.stop();
      this.onClosed(reason);
    });
  }

  /** Sends a frame; its memory goes back to the heap once written, or at once if the send fails. */
  send(frame: OutgoingFrame): boolean {
    try {
      return this.conn.send(frame.parts, frame.release);
    } catch (err) {
      frame.release?.();
      throw err;
    }
  }

  private receive(message: Uint8Array): void {
    let frame: Frame;
    try {
      frame = decodeFrame(message, this.scratch);
    } catch (err) {
      log("warn", this.side, `closing the connection with ${this.conn.remoteAddress}: ${(err as Error).message}`);
      this.conn.close(err as Error);
      return;
    }
    if (frame.type === FrameType.PING) this.keepalive.answer(frame.arg);
    else if (frame.type === FrameType.PONG) this.keepalive.pong();
    else if (!this.onFrame(frame)) {
      this.conn.close(new KoalaError(ErrorCode.PROTOCOL, `unexpected frame type ${frame.type} sent to the ${this.side}`));
    }
  }

  /** Handles a frame of this side; returns false for a frame this side never receives. */
  protected abstract onFrame(frame: Frame): boolean;

  /** The transport connection closed (keepalive already stopped). */
  protected abstract onClosed(reason: KoalaError): void;
}
