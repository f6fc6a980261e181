/**
 * The bench client's view of a connection, the same for both systems: send a message, be told
 * of each echoed message, wait for drain. The raw one is {@link FramedSocket}; the koala one is
 * a `Connection` from `connect()`, used exactly as an application would.
 */
import { connect } from "../../src/transport/index.js";
import { connectFramed } from "./framed-socket.js";

/** A connection to an echo server, as the driver uses it. */
export interface EchoClient {
  /** Sends one message; false means wait for {@link drain} before sending more. */
  send(payload: Uint8Array): boolean;
  /** Resolves once more may be sent. */
  drain(): Promise<void>;
  /** Sets the callback told of every echoed message, with its length in bytes. */
  onReply(cb: (byteLength: number) => void): void;
  /** Closes the connection. */
  close(): void;
}

/** The systems compared. */
export type System = "raw" | "koala";

/** Connects a client of `system` to an echo server at `address`. */
export async function connectClient(system: System, address: string): Promise<EchoClient> {
  if (system === "raw") {
    const f = await connectFramed(address);
    return {
      send: (p) => f.send(p),
      drain: () => f.drain(),
      onReply: (cb) => f.onMessage((m) => cb(m.byteLength)),
      close: () => f.close(),
    };
  }
  const c = await connect(address);
  return {
    send: (p) => c.send([p]),
    drain: () => c.drain(),
    onReply: (cb) => c.onMessage((m) => cb(m.byteLength)),
    close: () => c.close(),
  };
}
