/**
 * The raw baseline's client: a competent length-prefixed protocol over a plain net.Socket —
 * 4-byte length then payload, the writes of one tick corked into one, a streaming parser
 * without quadratic copying, TCP_NODELAY. Replies are matched in order (the server echoes in order).
 */
import net from "node:net";

/** A raw framed connection whose `request()` resolves with the echoed payload. */
export class RawClient {
  private readonly waiting: ((b: Buffer) => void)[] = [];
  private head = 0;
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private need = -1;
  private corked = false;
  private readonly uncork = () => {
    this.corked = false;
    this.socket.uncork();
  };

  private constructor(private readonly socket: net.Socket) {
    socket.on("data", (chunk: Buffer) => this.onData(chunk));
  }

  /** Connects to `tcp://host:port` or `unix:/path`. */
  static async connect(address: string): Promise<RawClient> {
    const socket = address.startsWith("unix:") ? net.connect({ path: address.slice(5) }) : net.connect({ host: "127.0.0.1", port: Number(address.split(":").pop()) });
    socket.setNoDelay(true);
    await new Promise((r, j) => (socket.once("connect", r), socket.once("error", j)));
    return new RawClient(socket);
  }

  /** Sends one framed payload; resolves with the echo. */
  request(payload: Uint8Array): Promise<Buffer> {
    const header = Buffer.allocUnsafe(4);
    header.writeUInt32LE(payload.byteLength, 0);
    // Requests made in one tick leave in one write (cork until the next tick), as koala does.
    if (!this.corked) {
      this.corked = true;
      this.socket.cork();
      process.nextTick(this.uncork);
    }
    this.socket.write(header);
    this.socket.write(payload);
    return new Promise((resolve) => this.waiting.push(resolve));
  }

  private deliver(b: Buffer): void {
    // Clear the slot: a kept resolver would pin its promise and the reply it resolved with.
    const w = this.waiting[this.head]!;
    this.waiting[this.head++] = undefined as never;
    if (this.head > 1024) {
      this.waiting.splice(0, this.head);
      this.head = 0;
    }
    w(b);
  }

  private onData(chunk: Buffer): void {
    this.pending.push(chunk);
    this.pendingBytes += chunk.length;
    for (;;) {
      if (this.need < 0) {
        if (this.pendingBytes < 4) return;
        const head = this.take(4);
        this.need = head.readUInt32LE(0);
      }
      if (this.pendingBytes < this.need) return;
      const body = this.take(this.need);
      this.need = -1;
      this.deliver(body);
    }
  }

  private take(n: number): Buffer {
    const first = this.pending[0]!;
    if (first.length >= n) {
      const out = first.subarray(0, n);
      if (first.length === n) this.pending.shift();
      else this.pending[0] = first.subarray(n);
      this.pendingBytes -= n;
      return out;
    }
    const out = Buffer.allocUnsafe(n);
    let at = 0;
    while (at < n) {
      const c = this.pending[0]!;
      const k = Math.min(c.length, n - at);
      c.copy(out, at, 0, k);
      at += k;
      if (k === c.length) this.pending.shift();
      else this.pending[0] = c.subarray(k);
    }
    this.pendingBytes -= n;
    return out;
  }

  /** Closes the socket. */
  close(): void {
    this.socket.destroy();
  }
}
