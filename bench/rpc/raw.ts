/**
 * The raw baseline of the RPC benchmark: what a competent hand-written protocol over a plain
 * `net.Socket` costs. A message is a 4-byte little-endian length and the payload; the server
 * echoes every message. Both sides set TCP_NODELAY, cork the writes of one tick into one (up to
 * {@link EAGER_BYTES}, past which they go out at once, as koala's socket transport does), and
 * parse without quadratic copying (a message inside one chunk is a view of it; one that spans
 * chunks is copied once into a buffer of its final size).
 */
import net from "node:net";

/** Bytes corked in one tick past which they are written at once (koala's socket transport does the same: writeEagerBytes). */
const EAGER_BYTES = 16 * 1024;

/** Splits a byte stream into length-prefixed messages. */
export class FrameParser {
  private readonly head = Buffer.alloc(4);
  private headHave = 0;
  private body: Buffer | undefined;
  private bodyHave = 0;

  constructor(private readonly onFrame: (body: Buffer) => void) {}

  /** Feeds one chunk read from the socket; calls `onFrame` for every message completed by it. */
  push(chunk: Buffer): void {
    const len = chunk.length;
    let at = 0;
    while (at < len) {
      if (this.body !== undefined) {
        const k = Math.min(len - at, this.body.length - this.bodyHave);
        chunk.copy(this.body, this.bodyHave, at, at + k);
        this.bodyHave += k;
        at += k;
        if (this.bodyHave === this.body.length) {
          const b = this.body;
          this.body = undefined;
          this.onFrame(b);
        }
        continue;
      }
      let n: number;
      if (this.headHave === 0 && len - at >= 4) {
        n = chunk.readUInt32LE(at);
        at += 4;
      } else {
        while (this.headHave < 4 && at < len) this.head[this.headHave++] = chunk[at++]!;
        if (this.headHave < 4) return;
        this.headHave = 0;
        n = this.head.readUInt32LE(0);
      }
      if (len - at >= n) {
        this.onFrame(chunk.subarray(at, at + n));
        at += n;
      } else {
        this.body = Buffer.allocUnsafe(n);
        this.bodyHave = 0;
      }
    }
  }
}

function lengthPrefix(n: number): Buffer {
  // allocUnsafe takes small buffers from Node's pool, so a 4-byte header costs no allocation of its own.
  const h = Buffer.allocUnsafe(4);
  h.writeUInt32LE(n, 0);
  return h;
}

/** Starts the raw echo server on 127.0.0.1 (port 0); resolves with its `tcp://` address. */
export function startRawServer(): Promise<{ address: string; close(): void }> {
  const server = net.createServer((s) => {
    s.setNoDelay(true);
    let corked = false;
    let corkedBytes = 0;
    const uncork = () => {
      if (!corked) return;
      corked = false;
      s.uncork();
    };
    const parser = new FrameParser((body) => {
      if (!corked) {
        corked = true;
        corkedBytes = 0;
        s.cork();
        process.nextTick(uncork);
      }
      s.write(lengthPrefix(body.length));
      s.write(body);
      corkedBytes += 4 + body.length;
      if (corkedBytes >= EAGER_BYTES) uncork();
    });
    s.on("data", (chunk: Buffer) => parser.push(chunk));
    s.on("error", () => undefined);
  });
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as net.AddressInfo;
      resolve({ address: `tcp://127.0.0.1:${port}`, close: () => server.close() });
    });
  });
}

/** A raw client connection: `request()` sends one message and resolves with its echo (replies come in order). */
export class RawClient {
  /** Resolvers of the requests in flight, oldest at `head`. */
  private waiting: ((b: Buffer) => void)[] = [];
  /** Rejecters of the same requests. */
  private failing: ((err: Error) => void)[] = [];
  private failure: Error | undefined;
  private head = 0;
  private corked = false;
  private corkedBytes = 0;
  private readonly parser = new FrameParser((b) => this.deliver(b));
  private readonly uncork = () => {
    if (!this.corked) return;
    this.corked = false;
    this.socket.uncork();
  };

  private constructor(private readonly socket: net.Socket) {
    socket.on("data", (chunk: Buffer) => this.parser.push(chunk));
    // A lost server fails the requests in flight instead of leaving them pending forever.
    socket.on("close", () => this.fail(new Error("raw connection closed")));
  }

  /** Connects to `tcp://host:port`. */
  static async connect(address: string): Promise<RawClient> {
    const m = /^tcp:\/\/(.+):(\d+)$/.exec(address);
    if (m === null) throw new Error(`raw client: expected tcp://host:port, got ${address}`);
    const socket = net.connect({ host: m[1]!, port: Number(m[2]) });
    socket.setNoDelay(true);
    await new Promise((resolve, reject) => {
      socket.once("connect", resolve);
      socket.once("error", reject);
    });
    socket.on("error", () => undefined);
    return new RawClient(socket);
  }

  /** Sends one message; resolves with the echoed payload. */
  request(payload: Uint8Array): Promise<Buffer> {
    if (this.failure !== undefined) return Promise.reject(this.failure);
    if (!this.corked) {
      this.corked = true;
      this.corkedBytes = 0;
      this.socket.cork();
      process.nextTick(this.uncork);
    }
    this.socket.write(lengthPrefix(payload.byteLength));
    this.socket.write(payload);
    this.corkedBytes += 4 + payload.byteLength;
    if (this.corkedBytes >= EAGER_BYTES) this.uncork();
    return new Promise((resolve, reject) => {
      this.waiting.push(resolve);
      this.failing.push(reject);
    });
  }

  private fail(err: Error): void {
    this.failure ??= err;
    const pending = this.failing.slice(this.head);
    this.waiting = [];
    this.failing = [];
    this.head = 0;
    for (const reject of pending) reject(err);
  }

  private deliver(b: Buffer): void {
    const w = this.waiting[this.head]!;
    // Drop the slots so a settled promise's functions do not pin its reply; compact now and then.
    this.waiting[this.head] = undefined as never;
    this.failing[this.head++] = undefined as never;
    if (this.head === this.waiting.length) {
      this.waiting.length = 0;
      this.failing.length = 0;
      this.head = 0;
    } else if (this.head >= 4096) {
      this.waiting = this.waiting.slice(this.head);
      this.failing = this.failing.slice(this.head);
      this.head = 0;
    }
    w(b);
  }

  /** Closes the connection. */
  close(): void {
    this.socket.destroy();
  }
}
