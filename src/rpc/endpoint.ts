/**
 * What both ends of an RPC connection share: framing on top of a transport connection,
 * keepalive, the connection-level flow-control windows, sending frames whose memory returns to
 * the heap once written, and one place that turns a malformed frame into a closed connection.
 */
import { Code, ErrorCode, KoalaError, RpcError } from "../errors.js";
import { logLimited } from "../log.js";
import type { Connection } from "../transport/types.js";
import { FrameType, controlFrame, decodeFrame, type Frame } from "./frame.js";

/** The scratch frame's message between frames (it holds no received memory then). */
const NO_BYTES = new Uint8Array(0);
import { Keepalive } from "./keepalive.js";
import { bodySizeInPlace, sendDataInPlace, sendInPlace, type EncodeSettings, type OutgoingFrame } from "./outgoing.js";
import type { Metadata } from "./metadata.js";
import type { MessageType } from "../proto/definition.js";
import { CONNECTION_GRANT_BYTES, CONNECTION_WINDOW_BYTES, ReceiveWindow, SendWindow } from "./stream.js";

/** Settings of an endpoint. */
export interface EndpointSettings {
  keepaliveIntervalMs: number;
  keepaliveTimeoutMs: number;
}

/** One RPC connection; subclasses handle the frames of their side. */
export abstract class RpcEndpoint {
  private readonly keepalive: Keepalive;
  /** Reused for every received frame: handlers finish with a frame before the next arrives and keep no reference to it. */
  private readonly scratch: Frame = { type: FrameType.DATA, flags: 0, callId: 0, arg: 0, arg2: 0, metadata: undefined, trailers: undefined, text: "", message: NO_BYTES, bodyAt: -1, bodyBytes: 0 };
  /** Credit for stream messages on this connection, granted by the peer. */
  readonly sendWindow = new SendWindow(CONNECTION_WINDOW_BYTES);
  /** Stream bytes the peer sent on this connection and the application has not consumed yet. */
  readonly receiveWindow: ReceiveWindow;

  /**
   * @param conn the transport connection
   * @param settings keepalive interval and timeout
   * @param side "client" or "server": who this end is, for logs and errors
   */
  constructor(
    readonly conn: Connection,
    settings: EndpointSettings,
    protected readonly side: "client" | "server",
  ) {
    this.keepalive = new Keepalive(conn, settings.keepaliveIntervalMs, settings.keepaliveTimeoutMs, side === "client" ? "server" : "client");
    this.receiveWindow = new ReceiveWindow(
      CONNECTION_WINDOW_BYTES,
      CONNECTION_GRANT_BYTES,
      (n) => this.control(FrameType.CREDIT, 0, n),
      (err) => this.protocolError(err),
    );
  }

  /**
   * Starts receiving. Subclass constructors call it last: a connection may already hold
   * messages, delivered at once, and the subclass's fields must exist by then.
   */
  protected start(): void {
    this.conn.onMessage((m) => this.receive(m, 0, m.byteLength));
    // Where the transport offers it, a message that can be handled at once comes as a range of
    // the bytes read: no view is made for it (two fewer allocations per unary call).
    this.conn.onMessageRange?.((buf, start, end) => this.receive(buf, start, end));
    void this.conn.closed.then((reason) => {
      this.keepalive.stop();
      this.sendWindow.fail(new RpcError(Code.UNAVAILABLE, `connection lost: ${reason.message}`, { cause: reason }));
      this.onClosed(reason);
    });
  }

  /** Sends a frame; its memory goes back to the heap once written, or at once if the send fails. False: the transport is over its high-water mark. */
  send(frame: OutgoingFrame): boolean {
    let ok: boolean;
    try {
      ok = this.conn.send(frame.parts, frame.release);
    } catch (err) {
      frame.release?.();
      throw err;
    }
    if (!ok) this.onBackpressure();
    return ok;
  }

  /**
   * A frame sent as {@link sendInPlace} sends it (see there), with {@link send}'s backpressure
   * handling. False: not sent (use the general path); true: sent.
   */
  sendFrameInPlace<T>(
    settings: EncodeSettings,
    type: FrameType,
    flags: number,
    callId: number,
    arg: number,
    arg2: number,
    metadata: Metadata | undefined,
    trailers: Metadata | undefined,
    text: string,
    bodyType: MessageType<T> | undefined,
    body: T | undefined,
    room: number,
  ): boolean {
    const ok = sendInPlace(this.conn, settings, type, flags, callId, arg, arg2, metadata, trailers, text, bodyType, body, room);
    if (ok === undefined) return false;
    if (!ok) this.onBackpressure();
    return true;
  }

  /** Sends a frame without a body or sections (CANCEL, CREDIT, PING...); nothing when the connection is closing. */
  control(type: FrameType, callId: number, arg: number): void {
    if (this.conn.isClosed) return;
    try {
      if (!this.conn.send([controlFrame(type, callId, arg)])) this.onBackpressure();
    } catch {
      /* closing: the calls fail through onClosed */
    }
  }

  /**
   * Sends one stream message once both the stream's `window` and this connection's window have
   * credit, then waits for the transport to drain when it is over its high-water mark. Resolves
   * without sending (the frame released, taken credit given back) when `call.ended` turned true
   * meanwhile; rejects when a window failed. Returns undefined when it sent at once with room
   * to spare, so the common case costs no promise.
   */
  sendStreamMessage(frame: OutgoingFrame, window: SendWindow, call: { readonly ended: boolean }): Promise<void> | undefined {
    const bytes = frame.bodyBytes;
    if (window.tryTake(bytes)) {
      if (this.sendWindow.tryTake(bytes)) return this.sendNow(frame);
      return this.waitConnection(frame, call);
    }
    return this.waitStream(frame, window, call);
  }

  /**
   * A stream message without sections (every one after the first) encoded straight into the
   * transport's send buffer, when the transport has one, both windows have credit now and the
   * body fits in `room` (the caller's memory budget). Returns false, having taken nothing, when
   * that cannot be done (use {@link sendStreamMessage}); otherwise what sendStreamMessage would.
   * Throws RpcError as encodeFrame does; nothing is sent or taken then.
   */
  sendStreamMessageInPlace<T>(settings: EncodeSettings, callId: number, bodyType: MessageType<T>, body: T, window: SendWindow, room: number): Promise<void> | undefined | false {
    if (this.conn.reserve === undefined) return false;
    const bytes = bodySizeInPlace(settings, bodyType, body);
    if (bytes < 0 || bytes > room) return false;
    if (!window.tryTake(bytes)) return false;
    if (!this.sendWindow.tryTake(bytes)) {
      window.add(bytes);
      return false;
    }
    let ok: boolean | undefined;
    try {
      ok = sendDataInPlace(this.conn, callId, bodyType, body, bytes);
    } finally {
      // Not sent (no room in the transport's buffer, or the body failed to encode): the credit goes back.
      if (ok === undefined) {
        window.add(bytes);
        this.sendWindow.add(bytes);
      }
    }
    if (ok === undefined) return false;
    if (ok) return undefined;
    this.onBackpressure();
    return this.conn.drain();
  }

  /** Waits for the stream's credit, then the connection's (closures kept out of the fast path: see sendStreamMessage). */
  private waitStream(frame: OutgoingFrame, window: SendWindow, call: { readonly ended: boolean }): Promise<void> {
    const bytes = frame.bodyBytes;
    return window.take(bytes).then(
      () => {
        if (call.ended) {
          frame.release?.();
          return undefined;
        }
        return this.sendWindow.tryTake(bytes) ? this.sendNow(frame) : this.waitConnection(frame, call);
      },
      (err: unknown) => {
        frame.release?.();
        throw err;
      },
    );
  }

  private waitConnection(frame: OutgoingFrame, call: { readonly ended: boolean }): Promise<void> {
    return this.sendWindow.take(frame.bodyBytes).then(
      () => {
        if (call.ended) {
          this.sendWindow.add(frame.bodyBytes);
          frame.release?.();
          return undefined;
        }
        return this.sendNow(frame);
      },
      (err: unknown) => {
        frame.release?.();
        throw err;
      },
    );
  }

  private sendNow(frame: OutgoingFrame): Promise<void> | undefined {
    return this.send(frame) ? undefined : this.conn.drain();
  }

  /**
   * A frame for a call this side no longer knows (it ended, or never existed): a stream
   * message's bytes still count against the connection window and are given back at once,
   * since the peer spent credit on them (a peer that had none is cut off by the window).
   */
  discard(frame: Frame): void {
    if (frame.type !== FrameType.DATA || frame.bodyAt < 0) return;
    const n = frame.bodyBytes;
    if (this.receiveWindow.receive(n)) this.receiveWindow.release(n);
  }

  /** The transport is over its high-water mark; the server side stops reading until it drains. */
  protected onBackpressure(): void {}

  /** The message being handled, while a frame handler may still take it over with {@link keepMessage}. */
  private current: Uint8Array | undefined;

  /**
   * Takes over the received message of the frame being handled (its sections and body are
   * views into it): the caller hands it back with `conn.release()` once nothing refers to
   * it any more. Messages nobody keeps are released as soon as their frame was handled.
   */
  protected keepMessage(): Uint8Array {
    const m = this.current!;
    this.current = undefined;
    return m;
  }

  /**
   * Whether this side hands received messages back to the transport (see the ownership rule in
   * PROTOCOL.md). The server does: requests live no longer than their call. A client does not:
   * a response belongs to the application for as long as it likes, so the transport must give
   * the client messages it will never reuse (copies on RDMA, chunks nobody reuses on sockets).
   */
  protected abstract readonly releasesMessages: boolean;

  /** One received message: `message[start, end)` (all of it, or a range of the buffer read, which then stands for the message). */
  private receive(message: Uint8Array, start: number, end: number): void {
    if (!this.releasesMessages) {
      this.handle(message, start, end);
      this.scratch.message = NO_BYTES;
      return;
    }
    this.current = message;
    try {
      this.handle(message, start, end);
    } finally {
      this.scratch.message = NO_BYTES;
      if (this.current !== undefined) {
        this.current = undefined;
        this.conn.release(message);
      }
    }
  }

  private handle(message: Uint8Array, start: number, end: number): void {
    let frame: Frame;
    try {
      frame = decodeFrame(message, this.scratch, start, end);
    } catch (err) {
      this.protocolError(err as KoalaError);
      return;
    }
    if (frame.type === FrameType.PING) this.keepalive.answer(frame.arg);
    else if (frame.type === FrameType.PONG) this.keepalive.pong();
    else if (frame.type === FrameType.CREDIT && frame.callId === 0) this.sendWindow.add(frame.arg);
    else {
      let handled: boolean;
      try {
        handled = this.onFrame(frame);
      } catch (err) {
        // A bug found while handling the frame: this connection cannot be trusted any more;
        // nothing escapes into the transport.
        this.protocolError(err instanceof KoalaError ? err : new KoalaError(ErrorCode.PROTOCOL, `cannot handle a frame: ${(err as Error)?.message ?? String(err)}`, { cause: err }));
        return;
      }
      if (!handled) this.protocolError(new KoalaError(ErrorCode.PROTOCOL, `unexpected frame type ${frame.type} sent to the ${this.side}`));
    }
  }

  /** Closes the connection for a protocol error, with a rate-limited log line (no stack, no flood; see logLimited). */
  protected protocolError(err: KoalaError): void {
    const peer = this.conn.remoteAddress;
    logLimited(`${this.side}.protocol`, "warn", this.side, `closing the connection with ${peer}: ${err.message}`);
    this.conn.close(err);
  }

  /** Handles a frame of this side; returns false for a frame this side never receives. May throw KOALA_ERR_PROTOCOL. */
  protected abstract onFrame(frame: Frame): boolean;

  /** The transport connection closed (keepalive already stopped). */
  protected abstract onClosed(reason: KoalaError): void;
}
