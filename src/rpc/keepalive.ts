/**
 * Keepalive on one RPC connection, the same on both ends: a PING every interval, and the
 * connection is closed (its calls fail) when a PING goes unanswered for the timeout.
 */
import { ErrorCode, KoalaError } from "../errors.js";
import { logLimited } from "../log.js";
import type { Connection } from "../transport/types.js";
import { FrameType, controlFrame } from "./frame.js";

/** Pings `conn` every `intervalMs` (0: never) and closes it when an answer takes over `timeoutMs`. */
export class Keepalive {
  private readonly timer: NodeJS.Timeout | undefined;
  private deadline: NodeJS.Timeout | undefined;
  private seq = 0;

  constructor(
    private readonly conn: Connection,
    intervalMs: number,
    private readonly timeoutMs: number,
    /** Names the peer in the log, e.g. "server" or "client". */
    private readonly peer: string,
  ) {
    if (intervalMs > 0) {
      this.timer = setInterval(() => this.ping(), intervalMs);
      this.timer.unref();
    }
  }

  private ping(): void {
    if (this.deadline !== undefined || this.conn.isClosed) return;
    try {
      this.conn.send([controlFrame(FrameType.PING, 0, ++this.seq)]);
    } catch {
      return;
    }
    this.deadline = setTimeout(() => {
      logLimited(`${this.peer === "server" ? "client" : "server"}.keepalive-timeout`, "warn", "keepalive", `no keepalive answer from ${this.peer} ${this.conn.remoteAddress} within ${this.timeoutMs} ms; closing`);
      this.conn.close(new KoalaError(ErrorCode.CONNECTION_RESET, `keepalive: no answer within ${this.timeoutMs} ms`));
    }, this.timeoutMs);
    this.deadline.unref();
  }

  /** Answers a PING from the peer. */
  answer(seq: number): void {
    try {
      this.conn.send([controlFrame(FrameType.PONG, 0, seq)]);
    } catch {
      /* the connection is closing; nothing to answer on */
    }
  }

  /** The peer answered our PING. */
  pong(): void {
    if (this.deadline !== undefined) clearTimeout(this.deadline);
    this.deadline = undefined;
  }

  /** Stops pinging (the connection closed). */
  stop(): void {
    if (this.timer !== undefined) clearInterval(this.timer);
    this.pong();
  }
}
