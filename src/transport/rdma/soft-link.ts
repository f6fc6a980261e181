/**
 * The wire of the software provider: length-prefixed packets over one stream socket between
 * two soft "NICs". Each packet is a u32 length (little-endian, of what follows) and a type byte.
 */
import type net from "node:net";

/** Packet types of the soft wire. */
export const Pkt = {
  CM_REQ: 1,
  CM_ACCEPT: 2,
  CM_REJECT: 3,
  CM_RTU: 4,
  CM_DISCONNECT: 5,
  SEND: 10,
  WRITE: 11,
  READ: 12,
  ACK: 20,
  NAK: 21,
  RNR_NAK: 22,
  READ_RESP: 23,
} as const;

/** Largest packet accepted from a peer (a 64 MiB message plus headers, with room). */
const MAX_PACKET = 2 ** 31;

/** One socket carrying soft-wire packets; writes in one tick leave corked together. */
export class SoftLink {
  private readonly out: Buffer[] = [];
  private scheduled = false;
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private closedFlag = false;

  /**
   * @param onPacket gets each packet's type and body (a view, valid during the call)
   * @param onClose called once when the socket is gone; `error` when it ended badly
   */
  constructor(
    readonly socket: net.Socket,
    private readonly onPacket: (type: number, body: Buffer) => void,
    private readonly onClose: (error: Error | undefined) => void,
  ) {
    socket.on("data", (chunk: Buffer) => this.onData(chunk));
    socket.on("error", () => undefined);
    socket.on("close", (hadError) => {
      if (this.closedFlag) return;
      this.closedFlag = true;
      this.onClose(hadError ? new Error("the link to the peer failed") : undefined);
    });
  }

  /** True once the socket is closed or closing. */
  get closed(): boolean {
    return this.closedFlag || this.socket.destroyed;
  }

  /** Queues a packet of `type` made of `parts`. */
  send(type: number, ...parts: Uint8Array[]): void {
    if (this.closed) return;
    let len = 1;
    for (const p of parts) len += p.byteLength;
    const head = Buffer.allocUnsafe(5);
    head.writeUInt32LE(len, 0);
    head[4] = type;
    this.out.push(head, ...parts.map((p) => (Buffer.isBuffer(p) ? p : Buffer.from(p.buffer, p.byteOffset, p.byteLength))));
    if (!this.scheduled) {
      this.scheduled = true;
      process.nextTick(() => this.flush());
    }
  }

  private flush(): void {
    this.scheduled = false;
    if (this.closed) {
      this.out.length = 0;
      return;
    }
    this.socket.cork();
    for (const b of this.out) this.socket.write(b);
    this.socket.uncork();
    this.out.length = 0;
  }

  /** Sends what is queued, then ends the socket. */
  end(): void {
    if (this.closed) return;
    this.flush();
    this.socket.end();
  }

  /** Drops the socket at once. */
  destroy(): void {
    this.out.length = 0;
    this.socket.destroy();
  }

  private onData(chunk: Buffer): void {
    this.pending.push(chunk);
    this.pendingBytes += chunk.length;
    while (this.pendingBytes >= 5) {
      let first = this.pending[0]!;
      if (first.length < 5) {
        first = Buffer.concat(this.pending);
        this.pending = [first];
      }
      const len = first.readUInt32LE(0);
      if (len < 1 || len > MAX_PACKET) {
        this.destroy();
        return;
      }
      if (this.pendingBytes < 4 + len) return;
      if (first.length < 4 + len) {
        first = Buffer.concat(this.pending);
        this.pending = [first];
      }
      const type = first[4]!;
      const body = first.subarray(5, 4 + len);
      const rest = first.subarray(4 + len);
      if (rest.length > 0) this.pending[0] = rest;
      else this.pending.shift();
      this.pendingBytes -= 4 + len;
      this.onPacket(type, body);
      if (this.closedFlag) return;
    }
  }
}
