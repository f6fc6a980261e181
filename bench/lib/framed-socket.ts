/**
 * The raw baseline: a length-prefixed message protocol over a plain `net.Socket`, written the
 * way a competent Node engineer would without any framework, used by both the raw echo server
 * and the raw bench client.
 *
 * - Frame: 4-byte little-endian length, then the payload.
 * - Send: one `write()` per message — header and a small payload copied into one buffer, a
 *   large payload written after its header without being joined to it. Writes are corked
 *   until the end of the tick, or until 16 KiB are corked, so the messages of one tick leave in
 *   one system call per 16 KiB: the same syscall pattern as koala's per-tick coalescing (with its
 *   `writeEagerBytes` default), which keeps the comparison about the code path, not about batching.
 * - Receive: a streaming parser. A frame inside one chunk is handed out as a view; a frame
 *   spanning chunks is gathered into one buffer allocated once at its header, so every byte
 *   is copied at most once (no re-concatenation of a growing buffer).
 */
import net from "node:net";

/** Payloads up to this size are copied next to their header into one buffer (koala's `coalesceMaxBytes` default). */
const COPY_MAX_BYTES = 16 * 1024;
/** Corked bytes past which they are written at once (koala's `writeEagerBytes` default). */
const EAGER_BYTES = 16 * 1024;
/** Frames over this size are refused (the socket is destroyed), like koala's `maxMessageBytes` default. */
const MAX_FRAME_BYTES = 64 * 1024 * 1024;
/** Write buffer size past which `send()` reports backpressure (koala's `highWaterMarkBytes` default). */
export const RAW_HIGH_WATER_MARK_BYTES = 1024 * 1024;

/** One framed connection over a connected socket. */
export class FramedSocket {
  private receiver: (message: Buffer) => void = () => undefined;
  private corked = false;
  private corkedBytes = 0;
  private readonly uncorkBound = (): void => {
    if (!this.corked) return;
    this.corked = false;
    this.socket.uncork();
  };
  /** Header bytes of a frame whose header is split across chunks. */
  private readonly head = Buffer.alloc(4);
  private headFill = 0;
  /** The frame being gathered across chunks, and how much of it has arrived. */
  private body: Buffer | undefined;
  private bodyFill = 0;

  /** Takes over `socket` (connected); sets TCP_NODELAY. */
  constructor(readonly socket: net.Socket) {
    socket.setNoDelay(true);
    socket.on("data", (chunk: Buffer) => this.onData(chunk));
    // A peer that goes away ends the bench run through its own checks; no crash on EPIPE.
    socket.on("error", () => undefined);
  }

  /** Sets the receiver of whole messages. A message is a view into a read chunk or a buffer of its own. */
  onMessage(receiver: (message: Buffer) => void): void {
    this.receiver = receiver;
  }

  /** Sends one message; false means the write buffer is over the high-water mark (wait for {@link drain}). */
  send(payload: Uint8Array): boolean {
    const socket = this.socket;
    if (!this.corked) {
      this.corked = true;
      this.corkedBytes = 0;
      socket.cork();
      process.nextTick(this.uncorkBound);
    }
    const n = payload.byteLength;
    let ok: boolean;
    if (n <= COPY_MAX_BYTES) {
      const frame = Buffer.allocUnsafe(4 + n); // small: carved from Node's buffer pool
      frame.writeUInt32LE(n, 0);
      frame.set(payload, 4);
      ok = socket.write(frame);
    } else {
      const header = Buffer.allocUnsafe(4);
      header.writeUInt32LE(n, 0);
      socket.write(header);
      ok = socket.write(payload);
    }
    this.corkedBytes += 4 + n;
    if (this.corkedBytes >= EAGER_BYTES) this.uncorkBound();
    return ok;
  }

  /** Resolves once the socket's write buffer has drained (at once when it is not over the mark). */
  drain(): Promise<void> {
    if (!this.socket.writableNeedDrain) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const onDrain = () => {
        this.socket.off("close", onClose);
        resolve();
      };
      const onClose = () => {
        this.socket.off("drain", onDrain);
        reject(new Error("the raw socket closed while waiting for drain"));
      };
      this.socket.once("drain", onDrain);
      this.socket.once("close", onClose);
    });
  }

  /** Destroys the socket. */
  close(): void {
    this.socket.destroy();
  }

  private onData(chunk: Buffer): void {
    const n = chunk.length;
    let at = 0;
    while (at < n) {
      const body = this.body;
      if (body !== undefined) {
        const k = Math.min(n - at, body.length - this.bodyFill);
        chunk.copy(body, this.bodyFill, at, at + k);
        this.bodyFill += k;
        at += k;
        if (this.bodyFill === body.length) {
          this.body = undefined;
          this.receiver(body);
        }
        continue;
      }
      let len: number;
      if (this.headFill === 0 && n - at >= 4) {
        len = chunk.readUInt32LE(at);
        at += 4;
      } else {
        const k = Math.min(4 - this.headFill, n - at);
        chunk.copy(this.head, this.headFill, at, at + k);
        this.headFill += k;
        at += k;
        if (this.headFill < 4) return;
        this.headFill = 0;
        len = this.head.readUInt32LE(0);
      }
      if (len > MAX_FRAME_BYTES) {
        this.socket.destroy(new Error(`raw frame of ${len} bytes is over the limit`));
        return;
      }
      if (n - at >= len) {
        this.receiver(chunk.subarray(at, at + len));
        at += len;
      } else {
        this.body = Buffer.allocUnsafe(len);
        this.bodyFill = 0;
      }
    }
  }
}

/** Splits `tcp://host:port` or `unix:/path` into what `net.connect` / `server.listen` take. */
export function socketTarget(address: string): { path: string } | { host: string; port: number } {
  if (address.startsWith("unix:")) return { path: address.slice("unix:".length) };
  const m = /^tcp:\/\/(.+):(\d+)$/.exec(address);
  if (m === null) throw new Error(`bench: cannot parse address ${address}`);
  return { host: m[1]!, port: Number(m[2]) };
}

/** Connects a raw framed socket to `address`. */
export async function connectFramed(address: string): Promise<FramedSocket> {
  const target = socketTarget(address);
  const options = { writableHighWaterMark: RAW_HIGH_WATER_MARK_BYTES };
  const socket = "path" in target ? net.connect({ ...options, path: target.path }) : net.connect({ ...options, host: target.host, port: target.port });
  await new Promise<void>((resolve, reject) => {
    socket.once("connect", () => {
      socket.off("error", reject);
      resolve();
    });
    socket.once("error", reject);
  });
  return new FramedSocket(socket);
}
