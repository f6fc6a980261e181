/**
 * The Echo service the RPC tests call, with handlers that obey the knobs in the request
 * (count, delay, failure code) and report what they saw (deadline, metadata, cancellation).
 */
import { setTimeout as sleep } from "node:timers/promises";
import { Code, RpcError, type CallContext, type ServiceImplementation } from "../../src/index.js";
import { EchoService, type EchoReply, type EchoRequest } from "../fixtures/rpc/gen/echo.js";

/** What the handlers observed, for assertions. */
export interface Observed {
  /** Abort reasons seen by handlers, by request text. */
  aborted: Map<string, unknown>;
  /** Calls that started, by request text. */
  started: Set<string>;
  /** Resolvers waiting for a handler to see its abort. */
  waiters: Map<string, () => void>;
  /** Replies a server-streaming handler has handed over, by request text. */
  produced: Map<string, number>;
}

/** A fresh record of observations. */
export function observe(): Observed {
  return { aborted: new Map(), started: new Set(), waiters: new Map(), produced: new Map() };
}

/** Resolves once the handler of the call whose request text is `text` saw its signal abort. */
export function abortSeen(o: Observed, text: string): Promise<unknown> {
  if (o.aborted.has(text)) return Promise.resolve(o.aborted.get(text));
  return new Promise((resolve) => o.waiters.set(text, () => resolve(o.aborted.get(text))));
}

function watch(o: Observed, req: EchoRequest, ctx: CallContext): void {
  o.started.add(req.text);
  ctx.signal.addEventListener("abort", () => {
    o.aborted.set(req.text, ctx.signal.reason);
    o.waiters.get(req.text)?.();
  });
}

async function pause(ms: number, ctx: CallContext): Promise<void> {
  if (ms > 0) await sleep(ms, undefined, { signal: ctx.signal }).catch(() => undefined);
}

function reply(req: EchoRequest, ctx: CallContext, index: number): Partial<EchoReply> {
  const seen = ctx.requestMetadata.get("x-echo");
  return {
    text: req.text,
    payload: req.payload,
    index,
    timeLeftMs: ctx.deadline === undefined ? -1 : Math.round(ctx.timeRemainingMs()),
    seenMetadata: typeof seen === "string" ? seen : "",
    big: req.big,
  };
}

function maybeFail(req: EchoRequest): void {
  if (req.failCode === 0) return;
  if (req.failCode === 999) throw new Error(`plain failure for ${req.text}`);
  throw new RpcError(req.failCode as Code, `asked to fail with ${req.failCode}`, { metadata: { "x-fail": String(req.failCode) } });
}

/** Handlers of the Echo service. */
export function echoImpl(o: Observed): ServiceImplementation<typeof EchoService> {
  return {
    async unary(req, ctx) {
      watch(o, req, ctx);
      ctx.responseHeaders.set("x-header", "h1");
      ctx.responseTrailers.set("x-trailer", "t1");
      await pause(req.delayMs, ctx);
      if (ctx.signal.aborted) throw ctx.signal.reason;
      maybeFail(req);
      return EchoReplyOf(reply(req, ctx, 0));
    },
    async *serverStream(req, ctx) {
      watch(o, req, ctx);
      ctx.responseHeaders.set("x-header", "h2");
      for (let i = 0; i < req.count; i++) {
        if (i === 1) await pause(req.delayMs, ctx);
        if (ctx.signal.aborted) return;
        yield EchoReplyOf(reply(req, ctx, i));
        o.produced.set(req.text, i + 1);
      }
      maybeFail(req);
    },
    async clientStream(requests, ctx) {
      const texts: string[] = [];
      let first: EchoRequest | undefined;
      for await (const r of requests) {
        if (first === undefined) {
          first = r;
          watch(o, r, ctx);
        }
        maybeFail(r);
        texts.push(r.text);
      }
      return EchoReplyOf({ text: texts.join(","), index: texts.length });
    },
    async *bidi(requests, ctx) {
      let i = 0;
      for await (const r of requests) {
        if (i === 0) watch(o, r, ctx);
        maybeFail(r);
        await pause(r.delayMs, ctx);
        yield EchoReplyOf(reply(r, ctx, i++));
      }
    },
  };
}

function EchoReplyOf(init: Partial<EchoReply>): EchoReply {
  return EchoService.methods.unary.output.create(init);
}
