/**
 * A raw RPC peer for hostile-input tests: frames written by hand on a transport connection,
 * with no client or server logic in the way.
 */
import { connect, listen, type Connection, type Listener } from "../../src/index.js";
import { FrameFlag, FrameType, HEADER_BYTES, controlFrame, decodeFrame, writeHeader, type Frame } from "../../src/rpc/frame.js";

/** The SETTINGS frame a server sends first. */
export function settingsFrame(maxStreams = 100, maxMessageBytes = 4 * 1024 * 1024): Uint8Array {
  const out = new Uint8Array(HEADER_BYTES);
  writeHeader(out, FrameType.SETTINGS, 0, 0, maxStreams, maxMessageBytes, 0, 0);
  return out;
}

/** A frame with the given sections, written by hand (the body and metadata as raw bytes). */
export function rawFrame(f: { type: FrameType; flags?: number; callId: number; arg?: number; arg2?: number; metadata?: Uint8Array; text?: string; body?: Uint8Array }): Uint8Array {
  const text = Buffer.from(f.text ?? "");
  const md = f.metadata ?? new Uint8Array(0);
  const body = f.body ?? new Uint8Array(0);
  const out = new Uint8Array(HEADER_BYTES + md.length + text.length + body.length);
  let flags = f.flags ?? 0;
  if (md.length > 0) flags |= FrameFlag.METADATA;
  if (f.body !== undefined) flags |= FrameFlag.MESSAGE;
  writeHeader(out, f.type, flags, f.callId, f.arg ?? 0, f.arg2 ?? 0, md.length, text.length);
  out.set(md, HEADER_BYTES);
  out.set(text, HEADER_BYTES + md.length);
  out.set(body, HEADER_BYTES + md.length + text.length);
  return out;
}

/** A CALL that defines `path` as method id 1 (or `methodId`) and carries one whole request. */
export function callFrame(callId: number, path: string, body: Uint8Array, extra?: { metadata?: Uint8Array; streaming?: boolean; methodId?: number }): Uint8Array {
  return rawFrame({
    type: FrameType.CALL,
    flags: FrameFlag.DEFINE_METHOD | (extra?.streaming === true ? 0 : FrameFlag.END_STREAM),
    callId,
    arg: extra?.methodId ?? 1,
    metadata: extra?.metadata,
    text: path,
    body: extra?.streaming === true ? undefined : body,
  });
}

/** A raw client connection to an RPC server: every frame the server sends is recorded (SETTINGS included). */
export async function rawClient(address: string, options?: Parameters<typeof connect>[1]) {
  const conn = await connect(address, options);
  const received: Frame[] = [];
  const waiters: { test: (f: Frame) => boolean; resolve: (f: Frame) => void }[] = [];
  conn.onMessage((m) => {
    const f = decodeFrame(m);
    received.push(f);
    for (let i = 0; i < waiters.length; i++) {
      if (waiters[i]!.test(f)) {
        waiters.splice(i, 1)[0]!.resolve(f);
        break;
      }
    }
  });
  return {
    conn,
    received,
    /** Resolves with the first frame (already received or still to come) that passes `test`. */
    next(test: (f: Frame) => boolean): Promise<Frame> {
      const seen = received.find(test);
      if (seen !== undefined) return Promise.resolve(seen);
      return new Promise((resolve) => waiters.push({ test, resolve }));
    },
    /** The STATUS of call `callId`. */
    status(callId: number): Promise<Frame> {
      return this.next((f) => f.type === FrameType.STATUS && f.callId === callId);
    },
    send(frame: Uint8Array): boolean {
      return conn.send([frame]);
    },
    credit(callId: number, bytes: number): void {
      conn.send([controlFrame(FrameType.CREDIT, callId, bytes)]);
    },
  };
}

/** A raw server that says SETTINGS to every connection and hands each received frame to `onFrame`. */
export async function rawServer(address: string, onFrame: (f: Frame, conn: Connection) => void, settings = settingsFrame()): Promise<Listener> {
  const listener = await listen(address);
  listener.onConnection((conn) => {
    conn.send([settings]);
    conn.onMessage((m) => onFrame(decodeFrame(m), conn));
  });
  return listener;
}
