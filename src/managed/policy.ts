/**
 * The operator's policy in the daemon: the policy engines attached to the daemon process (from
 * the `[daemon]` table of the configuration file, or at run time with `koala ctl attach` on the
 * daemon's pid) run on every call of every attached application, at `server-receive` on the
 * `server` side, before the call goes upstream. The application has no say: its frames reach
 * the real connection only through this check, and the engines live in the daemon's process.
 *
 * Scopes: `{ global }`, `{ service }` and `{ method }` as in a library process; `backend`
 * names one application here: `pid:<pid>` or `uid:<uid>` (the kernel's credentials of the set-up
 * socket's peer, which the application cannot choose).
 *
 * What an engine sees: the method path, request metadata, deadline and the peer (`pid:N uid:U`);
 * not the request message (the daemon does not decode bodies, so `acl` rules on `fields` do not
 * match here) and the call kind only as the CALL frame shows it (`unary` when its first frame
 * ends the request stream, else `bidi_streaming`).
 *
 * Time of check, time of use: when engines apply to a call, the CALL frame's header, metadata
 * and method path are copied out of the shared ring into the daemon's memory before the checks,
 * and that copy is what goes upstream (the body is still sent from the ring): an application that
 * rewrites its ring after the check changes nothing the engines decided on.
 */
import { Code, RpcError } from "../errors.js";
import { log } from "../log.js";
import type { MethodDefinition, MethodKind } from "../proto/definition.js";
import { FrameFlag, FrameType, HEADER_BYTES, decodeFrame, writeHeader, type Frame } from "../rpc/frame.js";
import { processInterceptors, runChain, serviceOfPath, type CallInfo, type Interceptor } from "../rpc/interceptor.js";
import { Metadata, decodeMetadata } from "../rpc/metadata.js";
import type { PeerCredentials } from "./native.js";

/** What the relay lets a session do with an application's records. */
export interface RelayPort {
  readonly id: number;
  readonly peer: PeerCredentials;
  readonly target: string;
  /** Sends `parts` upstream; `record` (when given) goes back to the ring once they are written. */
  forward(parts: readonly Uint8Array[], record?: Uint8Array): void;
  /** Hands `record` back to the ring without sending it. */
  drop(record: Uint8Array): void;
  /** Sends a frame to the application. */
  reply(frame: Uint8Array): void;
}

/** One attached connection's view of the policy. */
export interface FrameSession {
  /** A frame from the application: false lets the relay send it on as it is; true: the session took it (forwarded, held or dropped). */
  fromApp(message: Uint8Array): boolean;
  /** A frame from upstream, before it is copied to the application. */
  fromUpstream(message: Uint8Array): void;
  /** Calls open now. */
  readonly openCalls: number;
  /** The connection is gone: calls held or open end (CANCELLED for the engines). */
  close(): void;
}

/** The daemon's policy. */
export interface FramePolicy {
  /** A session for a new attached connection. */
  session(port: RelayPort): FrameSession;
}

interface DaemonCall extends CallInfo {
  ended: boolean;
  chain: readonly Interceptor[];
  /** Frames of this call waiting for a hold to end, copied out of the ring so that a long hold holds no ring space (undefined: not held). */
  held: Uint8Array[] | undefined;
  denied: boolean;
  /** The CALL frame ended the request stream. */
  requestEnded: boolean;
}

function statusFrame(callId: number, code: Code, message: string): Uint8Array {
  const text = Buffer.from(message);
  const out = new Uint8Array(HEADER_BYTES + text.length);
  writeHeader(out, FrameType.STATUS, FrameFlag.END_STREAM, callId, code, 0, 0, text.length);
  out.set(text, HEADER_BYTES);
  return out;
}

/** The chain of `path` for one application: the process's engines whose scope takes in its pid or uid. */
function chainOf(path: string, peer: PeerCredentials): readonly Interceptor[] {
  const byPid = processInterceptors.chainFor(path, "server", `pid:${peer.pid}`);
  const byUid = processInterceptors.chainFor(path, "server", `uid:${peer.uid}`);
  if (byUid.length === 0) return byPid;
  if (byPid.length === 0) return byUid;
  // Both: in attach order, each once.
  const names = new Set([...byPid, ...byUid].map((i) => i.name));
  return processInterceptors.list().filter((a) => names.has(a.name)).map((a) => processInterceptors.get(a.name)!);
}

class Session implements FrameSession {
  private readonly methods = new Map<number, string>();
  private readonly calls = new Map<number, DaemonCall>();
  private readonly open = new Set<number>();
  private readonly frame: Frame = { type: FrameType.PING, flags: 0, callId: 0, arg: 0, arg2: 0, metadata: undefined, trailers: undefined, text: "", message: new Uint8Array(0), bodyAt: -1, bodyBytes: 0 };
  private readonly peerName: string;

  constructor(private readonly port: RelayPort) {
    this.peerName = `pid:${port.peer.pid} uid:${port.peer.uid}`;
  }

  get openCalls(): number {
    return this.open.size;
  }

  fromApp(message: Uint8Array): boolean {
    let f: Frame;
    try {
      f = decodeFrame(message, this.frame);
    } catch {
      return false; // the server refuses it and closes the connection; not the daemon's to judge
    }
    if (f.type === FrameType.CALL) return this.onCall(f, message);
    const call = this.calls.get(f.callId);
    if (call === undefined) {
      if (f.type === FrameType.CANCEL) this.open.delete(f.callId);
      return false;
    }
    if (call.denied) {
      this.port.drop(message);
      if (f.type === FrameType.CANCEL || (f.flags & FrameFlag.END_STREAM) !== 0) this.calls.delete(f.callId);
      return true;
    }
    if (call.held !== undefined) {
      call.held.push(message.slice());
      this.port.drop(message);
      return true;
    }
    if (f.type === FrameType.CANCEL) this.end(f.callId, new RpcError(Code.CANCELLED, "cancelled by the application"));
    return false;
  }

  private onCall(f: Frame, message: Uint8Array): boolean {
    const callId = f.callId;
    let path: string | undefined;
    if ((f.flags & FrameFlag.DEFINE_METHOD) !== 0) {
      path = f.text;
      this.methods.set(f.arg, path);
    } else {
      path = this.methods.get(f.arg);
    }
    this.open.add(callId);
    if (path === undefined) return false;
    const chain = chainOf(path, this.port.peer);
    if (chain.length === 0) return false;
    // The engines decide on a private copy of everything but the body (module comment).
    const prefixEnd = f.bodyAt < 0 ? message.byteLength : f.bodyAt;
    const prefix = message.slice(0, prefixEnd);
    const parts = f.bodyAt < 0 ? [prefix] : [prefix, message.subarray(f.bodyAt)];
    const metadata = f.metadata === undefined ? new Metadata() : decodeMetadata(prefix.subarray(HEADER_BYTES, HEADER_BYTES + f.metadata.byteLength));
    const kind: MethodKind = (f.flags & FrameFlag.END_STREAM) !== 0 ? "unary" : "bidi_streaming";
    const name = path.slice(path.lastIndexOf("/") + 1);
    const call: DaemonCall = {
      side: "server",
      service: serviceOfPath(path),
      method: { name, localName: name, path, kind, input: undefined, output: undefined } as unknown as MethodDefinition,
      path,
      kind,
      peer: this.peerName,
      peerCertificate: undefined,
      deadline: f.arg2 === 0 ? undefined : Date.now() + f.arg2,
      metadata,
      request: undefined,
      response: undefined,
      startedAt: Date.now(),
      ended: false,
      state: new Map(),
      chain,
      held: undefined,
      denied: false,
      requestEnded: (f.flags & FrameFlag.END_STREAM) !== 0,
    };
    this.calls.set(callId, call);
    const verdict = runChain(chain, call, "server-receive");
    if (verdict === undefined) {
      this.port.forward(parts, message);
      return true;
    }
    if (verdict instanceof RpcError) {
      this.deny(call, callId, verdict, message);
      return true;
    }
    call.held = [];
    const whole = f.bodyAt < 0 ? parts : [prefix, message.slice(f.bodyAt)];
    this.port.drop(message);
    void verdict.then((v) => {
      const held = call.held!;
      call.held = undefined;
      if (call.ended) return;
      if (v instanceof RpcError) return this.deny(call, callId, v, undefined);
      this.port.forward(whole);
      for (const m of held) this.port.forward([m]);
    });
    return true;
  }

  private deny(call: DaemonCall, callId: number, error: RpcError, message: Uint8Array | undefined): void {
    call.denied = true;
    if (message !== undefined) this.port.drop(message);
    log("info", "managed", `${this.peerName}: ${call.path} refused by the daemon's policy: ${error.rawMessage}`);
    this.port.reply(statusFrame(callId, error.code, error.rawMessage));
    this.end(callId, error, true);
    // Frames the application still sends for it are dropped until its request stream ends.
    if (!call.requestEnded) this.calls.set(callId, call);
  }

  fromUpstream(message: Uint8Array): void {
    if (message.byteLength < HEADER_BYTES || message[0] !== FrameType.STATUS) return;
    const callId = (message[4]! | (message[5]! << 8) | (message[6]! << 16)) + message[7]! * 0x1000000;
    const code = (message[8]! | (message[9]! << 8) | (message[10]! << 16)) + message[11]! * 0x1000000;
    this.end(callId, code === Code.OK ? undefined : new RpcError(code as Code, "ended upstream"));
  }

  private end(callId: number, error: RpcError | undefined, keep = false): void {
    this.open.delete(callId);
    const call = this.calls.get(callId);
    if (call === undefined || call.ended) return;
    call.ended = true;
    if (!keep) this.calls.delete(callId);
    for (const i of call.chain) {
      try {
        i.onEnd?.(call, error);
      } catch (err) {
        log("warn", "managed", `engine ${i.name} threw in onEnd: ${(err as Error).message}`);
      }
    }
  }

  close(): void {
    for (const [id, call] of [...this.calls]) {
      if (call.held !== undefined) call.held.length = 0;
      this.end(id, new RpcError(Code.CANCELLED, "the application detached"));
    }
    this.calls.clear();
    this.open.clear();
  }
}

/** The daemon's policy: the engines attached to this process (see the module comment). */
export const enginePolicy: FramePolicy = {
  session: (port) => new Session(port),
};
