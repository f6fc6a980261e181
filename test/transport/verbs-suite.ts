/**
 * The Verbs interface suite, for any provider: checked handles, receives consumed in order,
 * receiver-not-ready, RDMA READ / WRITE checked by the target, in-order and flushed
 * completions, memory windows, the connection manager and the typed-array batches.
 * rdma-verbs.test.ts runs it on the software provider; rdma-verbs-srnic.test.ts on the native
 * provider over the software RNIC srnic (fixtures/transport/native-interface.ts, a child process).
 */
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { KoalaError } from "../../src/errors.js";
import { softCounters } from "../../src/transport/rdma/soft.js";
import {
  Access,
  Opcode,
  SendFlags,
  WC,
  WC_WITH_IMM,
  WcOpcode,
  WcStatus,
  WorkBatch,
  type CmEvent,
  type CmId,
  type Cq,
  type Mr,
  type Pd,
  type Qp,
  type VerbsContext,
  type VerbsProvider,
} from "../../src/transport/rdma/verbs.js";
import { thrownCode } from "../helpers.js";

/** Where providers may differ, within the Verbs interface. */
export interface VerbsSuiteOptions {
  /** The device to open (port 1). */
  device: string;
  /** The code an argument or limit the provider refuses throws (soft: KOALA_ERR_VERBS). */
  refused: string;
  /**
   * Whether receiver-not-ready retries run out (soft: 7 retries). On the native provider the
   * connection manager sets rnr_retry_count 7, which means "without limit" on InfiniBand and srnic.
   */
  rnrExhausts: boolean;
  /** Whether the soft provider's counters (RNR NAKs, refused remote accesses) count this provider's work. */
  softCounters: boolean;
}

const caps = { maxSendWr: 64, maxRecvWr: 64, maxSendSge: 4, maxRecvSge: 4, maxInlineData: 64 };

/** One side of a connected pair of queue pairs. */
interface End {
  ctx: VerbsContext;
  pd: Pd;
  cq: Cq;
  qp: Qp;
  id: CmId;
  events: CmEvent[];
}

/** Completions polled from `cq`: [wrId, status, opcode, byteLen, imm, flags] each. */
function poll(ctx: VerbsContext, cq: Cq): number[][] {
  const out = new Float64Array(16 * WC.STRIDE);
  const got: number[][] = [];
  for (let n = ctx.pollCq(cq, out, 16); n > 0; n = ctx.pollCq(cq, out, 16)) {
    for (let i = 0; i < n; i++) {
      const r = out.subarray(i * WC.STRIDE, (i + 1) * WC.STRIDE);
      got.push([r[WC.WR_ID]!, r[WC.STATUS]!, r[WC.OPCODE]!, r[WC.BYTE_LEN]!, r[WC.IMM]!, r[WC.FLAGS]!]);
    }
  }
  return got;
}

/** Waits until `cq` has given `n` completions (through the notification), then returns them. */
async function completions(end: End, n: number, ms = 5000): Promise<number[][]> {
  const got: number[][] = [];
  const deadline = Date.now() + ms;
  while (got.length < n) {
    got.push(...poll(end.ctx, end.cq));
    if (got.length >= n) break;
    if (Date.now() > deadline) throw new Error(`${got.length} of ${n} completions after ${ms} ms: ${JSON.stringify(got)}`);
    await new Promise((r) => setTimeout(r, 2));
  }
  return got;
}

/** Registers the suite for `provider` as one uvu suite and runs it. */
export function verbsSuite(provider: VerbsProvider, opts: VerbsSuiteOptions): void {
  const ends: End[] = [];
  const listeners: { ctx: VerbsContext; l: Awaited<ReturnType<VerbsContext["listen"]>> }[] = [];

  /** Two contexts (as two processes would have), with a connected RC queue pair each; `setup` runs on the passive side before accept. */
  async function pair(setup?: (server: End) => void): Promise<{ a: End; b: End }> {
    const bctx = provider.open(opts.device, 1);
    const bpd = bctx.allocPd();
    const bcq = bctx.createCq(256, () => undefined);
    let b: End | undefined;
    const bEvents: CmEvent[] = [];
    const serverUp = new Promise<void>((resolve) => {
      void bctx
        .listen("127.0.0.1", 0, (e) => {
          bEvents.push(e);
          if (e.type === "connect_request") {
            const qp = bctx.createQp(e.id, bpd, bcq, bcq, caps);
            b = { ctx: bctx, pd: bpd, cq: bcq, qp, id: e.id, events: bEvents };
            setup?.(b);
            bctx.accept(e.id, new Uint8Array([2]));
          }
          if (e.type === "established") resolve();
        })
        .then((l) => {
          listeners.push({ ctx: bctx, l });
          void connectA(l.port);
        });
    });
    const actx = provider.open(opts.device, 1);
    const apd = actx.allocPd();
    const acq = actx.createCq(256, () => undefined);
    const aEvents: CmEvent[] = [];
    let clientUp!: () => void;
    const clientReady = new Promise<void>((r) => (clientUp = r));
    const id = actx.createId((e) => {
      aEvents.push(e);
      if (e.type === "established") clientUp();
    });
    let a: End | undefined;
    async function connectA(port: number): Promise<void> {
      // The identifier is resolved to the device that reaches the listener, then its QP made there.
      await actx.resolve(id, "127.0.0.1", port, 2000);
      a = { ctx: actx, pd: apd, cq: acq, qp: actx.createQp(id, apd, acq, acq, caps), id, events: aEvents };
      actx.connect(id, "127.0.0.1", port, new Uint8Array([1]), 2000);
    }
    await Promise.all([serverUp, clientReady]);
    ends.push(a!, b!);
    return { a: a!, b: b! };
  }

  function mr(end: End, size: number, access: number, fill = 0): { mr: Mr; bytes: Uint8Array } {
    const bytes = new Uint8Array(size).fill(fill);
    return { mr: end.ctx.regMr(end.pd, bytes, access), bytes };
  }

  function postRecv(end: End, m: Mr, wrId: number, offset: number, length: number): void {
    const b = new WorkBatch(1);
    b.addSge(m.addr + offset, length, m.lkey);
    b.addRecv(wrId, 1);
    end.ctx.postRecv(end.qp, b);
  }

  function postSend(end: End, wrId: number, opcode: number, sge: [number, number, number][], opts: { flags?: number; imm?: number; raddr?: number; rkey?: number } = {}): void {
    const b = new WorkBatch(1);
    for (const [addr, len, lkey] of sge) b.addSge(addr, len, lkey);
    b.addSend(wrId, opcode, opts.flags ?? SendFlags.SIGNALED, sge.length, opts.imm ?? 0, opts.raddr ?? 0, opts.rkey ?? 0);
    end.ctx.postSend(end.qp, b);
  }

  const s = suite(`rdma verbs: ${provider.name} provider (${opts.device})`);

  s.after.each(() => {
    // Every pair is torn down in the dependency order the handles enforce.
    for (const e of ends.splice(0)) {
      try {
        e.ctx.disconnect(e.id);
      } catch {
        /* already */
      }
      if (!e.qp.destroyed) e.ctx.destroyQp(e.qp);
      if (!e.id.destroyed) e.ctx.destroyId(e.id);
    }
    for (const { ctx, l } of listeners.splice(0)) ctx.closeListener(l);
  });

  s("handles are checked on use and destroyed in dependency order only", async () => {
    const ctx = provider.open(opts.device, 1);
    const pd = ctx.allocPd();
    const m = ctx.regMr(pd, new Uint8Array(64), Access.LOCAL_WRITE);
    const cq = ctx.createCq(16, () => undefined);
    const id = ctx.createId(() => undefined);
    await ctx.resolve(id, "127.0.0.1", 1, 2000);
    const qp = ctx.createQp(id, pd, cq, cq, caps);
    assert.is(thrownCode(() => ctx.deallocPd(pd)), "KOALA_ERR_HANDLE_IN_USE", "a PD with an MR and a QP");
    assert.is(thrownCode(() => ctx.destroyCq(cq)), "KOALA_ERR_HANDLE_IN_USE", "a CQ attached to a QP");
    assert.is(thrownCode(() => ctx.destroyId(id)), "KOALA_ERR_HANDLE_IN_USE", "an identifier with its QP");
    assert.is(thrownCode(() => ctx.close()), "KOALA_ERR_HANDLE_IN_USE", "a context with objects left");
    ctx.destroyQp(qp);
    assert.is(thrownCode(() => ctx.destroyQp(qp)), "KOALA_ERR_HANDLE_DESTROYED", "a QP destroyed twice");
    assert.is(thrownCode(() => ctx.postRecv(qp, new WorkBatch())), "KOALA_ERR_HANDLE_DESTROYED", "posting to a destroyed QP");
    ctx.destroyCq(cq);
    assert.is(thrownCode(() => ctx.pollCq(cq, new Float64Array(WC.STRIDE), 1)), "KOALA_ERR_HANDLE_DESTROYED", "polling a destroyed CQ");
    assert.is(thrownCode(() => ctx.deallocPd(pd)), "KOALA_ERR_HANDLE_IN_USE", "still the MR");
    ctx.deregMr(m);
    assert.is(thrownCode(() => ctx.deregMr(m)), "KOALA_ERR_HANDLE_DESTROYED");
    ctx.deallocPd(pd);
    assert.is(thrownCode(() => ctx.regMr(pd, new Uint8Array(8), 0)), "KOALA_ERR_HANDLE_DESTROYED", "registering on a destroyed PD");
    ctx.destroyId(id);
    ctx.close();
    assert.is(thrownCode(() => ctx.allocPd()), "KOALA_ERR_HANDLE_DESTROYED", "a closed context");
    // Limits of the device are refused, naming them.
    const c2 = provider.open(opts.device, 1);
    const pd2 = c2.allocPd();
    const cq2 = c2.createCq(4, () => undefined);
    const id2 = c2.createId(() => undefined);
    assert.is(thrownCode(() => c2.createQp(id2, pd2, cq2, cq2, { ...caps, maxSendSge: 99 })), opts.refused);
    assert.is(thrownCode(() => c2.regMr(pd2, new Uint8Array(8), Access.REMOTE_WRITE)), opts.refused, "REMOTE_WRITE without LOCAL_WRITE");
    assert.ok(thrownCode(() => provider.open("mlx5_0", 1)) === "KOALA_ERR_VERBS");
  });

  s("receives are consumed in the order posted; completions in order, with immediate data", async () => {
    const recvMr: { m?: { mr: Mr; bytes: Uint8Array } } = {};
    const { a, b } = await pair((server) => {
      recvMr.m = mr(server, 3 * 64, Access.LOCAL_WRITE);
      for (const i of [0, 1, 2]) postRecv(server, recvMr.m.mr, 100 + i, i * 64, 64);
    });
    const src = mr(a, 64, 0);
    for (const i of [0, 1, 2]) {
      src.bytes.fill(0x10 + i, i * 8, i * 8 + 8);
      postSend(a, i, i === 2 ? Opcode.SEND_WITH_IMM : Opcode.SEND, [[src.mr.addr + i * 8, 8, src.mr.lkey]], { imm: 77 });
    }
    const sent = await completions(a, 3);
    assert.equal(sent.map((c) => [c[0], c[1], c[2]]), [[0, 0, WcOpcode.SEND], [1, 0, WcOpcode.SEND], [2, 0, WcOpcode.SEND]]);
    const got = await completions(b, 3);
    assert.equal(got.map((c) => c[0]), [100, 101, 102], "the receives in the order posted");
    assert.equal(got.map((c) => c[3]), [8, 8, 8]);
    assert.equal(got[2]!.slice(4), [77, WC_WITH_IMM], "immediate data on SEND_WITH_IMM only");
    assert.is(got[0]![5], 0);
    for (const i of [0, 1, 2]) assert.equal([...recvMr.m!.bytes.subarray(i * 64, i * 64 + 8)], Array(8).fill(0x10 + i), `buffer ${i}`);
  });

  s("RDMA WRITE with immediate consumes a receive and reports the immediate; unsignaled successes complete silently", async () => {
    let target: { mr: Mr; bytes: Uint8Array } | undefined;
    let slot: { mr: Mr; bytes: Uint8Array } | undefined;
    const { a, b } = await pair((server) => {
      target = mr(server, 64, Access.LOCAL_WRITE | Access.REMOTE_WRITE);
      slot = mr(server, 8, Access.LOCAL_WRITE);
      postRecv(server, slot.mr, 7, 0, 8);
    });
    const src = mr(a, 16, 0, 0x33);
    postSend(a, 1, Opcode.RDMA_WRITE, [[src.mr.addr, 4, src.mr.lkey]], { flags: 0, raddr: target!.mr.addr, rkey: target!.mr.rkey });
    postSend(a, 2, Opcode.RDMA_WRITE_WITH_IMM, [[src.mr.addr, 16, src.mr.lkey]], { imm: 0xabcdef, raddr: target!.mr.addr + 32, rkey: target!.mr.rkey });
    assert.equal((await completions(a, 1)).map((x) => [x[0], x[1], x[2]]), [[2, WcStatus.SUCCESS, WcOpcode.RDMA_WRITE]], "only the signaled one reports");
    const got = await completions(b, 1);
    assert.equal(got.map((x) => [x[0], x[1], x[2], x[3], x[4], x[5]]), [[7, WcStatus.SUCCESS, WcOpcode.RECV_RDMA_WITH_IMM, 16, 0xabcdef, WC_WITH_IMM]]);
    assert.equal([...target!.bytes.subarray(0, 4)], [0x33, 0x33, 0x33, 0x33]);
    assert.equal([...target!.bytes.subarray(32, 48)], Array(16).fill(0x33));
    assert.equal([...slot!.bytes], Array(8).fill(0), "the receive buffer itself is untouched");
    assert.equal(poll(a.ctx, a.cq), [], "nothing more");
  });

  (opts.rnrExhausts ? s : s.skip)("a SEND with no posted receive: retried, then RNR_RETRY_EXC_ERR, the QP in error and the rest flushed", async () => {
    const { a, b } = await pair();
    const src = mr(a, 16, 0);
    const before = softCounters.rnrNaks;
    postSend(a, 1, Opcode.SEND, [[src.mr.addr, 16, src.mr.lkey]]);
    postSend(a, 2, Opcode.SEND, [[src.mr.addr, 16, src.mr.lkey]], { flags: 0 });
    const c = await completions(a, 2);
    assert.equal(c.map((x) => [x[0], x[1]]), [[1, WcStatus.RNR_RETRY_EXC_ERR], [2, WcStatus.WR_FLUSH_ERR]], "an unsignaled request still reports its flush");
    assert.ok(softCounters.rnrNaks - before >= 8, `retried: ${softCounters.rnrNaks - before} RNR NAKs`);
    // In the error state a new request completes at once with a flush.
    postSend(a, 3, Opcode.SEND, [[src.mr.addr, 16, src.mr.lkey]]);
    assert.equal((await completions(a, 1)).map((x) => [x[0], x[1]]), [[3, WcStatus.WR_FLUSH_ERR]]);
    assert.equal(poll(b.ctx, b.cq), [], "the receiver saw nothing");
  });

  s("a receive posted while the sender retries saves the SEND (receiver not ready is transient)", async () => {
    const { a, b } = await pair();
    const src = mr(a, 4, 0, 9);
    const dst = mr(b, 4, Access.LOCAL_WRITE);
    postSend(a, 1, Opcode.SEND, [[src.mr.addr, 4, src.mr.lkey]]);
    await new Promise((r) => setTimeout(r, 3));
    postRecv(b, dst.mr, 5, 0, 4);
    assert.equal((await completions(a, 1)).map((x) => [x[0], x[1]]), [[1, WcStatus.SUCCESS]]);
    assert.equal((await completions(b, 1)).map((x) => [x[0], x[1], x[3]]), [[5, WcStatus.SUCCESS, 4]]);
    assert.equal([...dst.bytes], [9, 9, 9, 9]);
  });

  s("RDMA READ and WRITE are checked by the target: rkey, bounds, access flags, protection domain, deregistration", async () => {
    const { a, b } = await pair();
    const rw = mr(b, 1024, Access.LOCAL_WRITE | Access.REMOTE_READ | Access.REMOTE_WRITE, 3);
    const local = mr(a, 1024, Access.LOCAL_WRITE);
    // Valid accesses work.
    postSend(a, 1, Opcode.RDMA_READ, [[local.mr.addr, 100, local.mr.lkey]], { raddr: rw.mr.addr + 10, rkey: rw.mr.rkey });
    local.bytes.fill(7, 200, 220);
    postSend(a, 2, Opcode.RDMA_WRITE, [[local.mr.addr + 200, 20, local.mr.lkey]], { raddr: rw.mr.addr + 500, rkey: rw.mr.rkey });
    assert.equal((await completions(a, 2)).map((x) => [x[0], x[1], x[2]]), [[1, 0, WcOpcode.RDMA_READ], [2, 0, WcOpcode.RDMA_WRITE]]);
    assert.equal([...local.bytes.subarray(0, 100)], Array(100).fill(3));
    assert.equal([...rw.bytes.subarray(500, 520)], Array(20).fill(7));
    // Each violation: REM_ACCESS_ERR from the target, the requester's QP to error. A fresh pair each time.
    type Regions = { rw: Mr; ro: Mr; local: Mr; other: Mr };
    const cases: [string, (x: End, r: Regions) => void][] = [
      ["a forged rkey", (x, r) => postSend(x, 9, Opcode.RDMA_READ, [[r.local.addr, 8, r.local.lkey]], { raddr: r.rw.addr, rkey: (r.rw.rkey ^ 0x5a5a5a5a) >>> 0 })],
      ["a read past the end", (x, r) => postSend(x, 9, Opcode.RDMA_READ, [[r.local.addr, 8, r.local.lkey]], { raddr: r.rw.addr + 1020, rkey: r.rw.rkey })],
      ["a write before the start", (x, r) => postSend(x, 9, Opcode.RDMA_WRITE, [[r.local.addr, 8, r.local.lkey]], { raddr: r.rw.addr - 1, rkey: r.rw.rkey })],
      ["a write to a read-only region", (x, r) => postSend(x, 9, Opcode.RDMA_WRITE, [[r.local.addr, 8, r.local.lkey]], { raddr: r.ro.addr, rkey: r.ro.rkey })],
      ["a region of another protection domain", (x, r) => postSend(x, 9, Opcode.RDMA_READ, [[r.local.addr, 8, r.local.lkey]], { raddr: r.other.addr, rkey: r.other.rkey })],
    ];
    let roBytes: Uint8Array | undefined;
    for (const [what, op] of cases) {
      const p = await pair();
      const ro2 = mr(p.b, 256, Access.REMOTE_READ, 4);
      roBytes = ro2.bytes;
      const regions: Regions = {
        rw: mr(p.b, 1024, Access.LOCAL_WRITE | Access.REMOTE_READ | Access.REMOTE_WRITE).mr,
        ro: ro2.mr,
        local: mr(p.a, 64, Access.LOCAL_WRITE).mr,
        other: p.b.ctx.regMr(p.b.ctx.allocPd(), new Uint8Array(64), Access.REMOTE_READ),
      };
      const refusedBefore = softCounters.remoteAccessErrors;
      op(p.a, regions);
      postSend(p.a, 10, Opcode.SEND, [[regions.local.addr, 1, regions.local.lkey]]);
      const c = await completions(p.a, 2);
      assert.equal(c.map((x) => [x[0], x[1]]), [[9, WcStatus.REM_ACCESS_ERR], [10, WcStatus.WR_FLUSH_ERR]], what);
      if (opts.softCounters) assert.is(softCounters.remoteAccessErrors - refusedBefore, 1, `${what}: refused by the target's provider`);
    }
    assert.equal([...roBytes!], Array(256).fill(4), "the read-only region is unchanged");
    // Deregistration revokes at once.
    const p2 = await pair();
    const gone = mr(p2.b, 64, Access.REMOTE_READ);
    const dst = mr(p2.a, 64, Access.LOCAL_WRITE);
    p2.b.ctx.deregMr(gone.mr);
    postSend(p2.a, 1, Opcode.RDMA_READ, [[dst.mr.addr, 8, dst.mr.lkey]], { raddr: gone.mr.addr, rkey: gone.mr.rkey });
    assert.equal((await completions(p2.a, 1)).map((x) => x[1]), [WcStatus.REM_ACCESS_ERR]);
    // A READ into memory without LOCAL_WRITE fails locally, in its turn.
    const p3 = await pair();
    const src3 = mr(p3.b, 64, Access.REMOTE_READ);
    const noWrite = mr(p3.a, 64, 0);
    postSend(p3.a, 1, Opcode.RDMA_READ, [[noWrite.mr.addr, 8, noWrite.mr.lkey]], { raddr: src3.mr.addr, rkey: src3.mr.rkey });
    assert.equal((await completions(p3.a, 1)).map((x) => x[1]), [WcStatus.LOC_PROT_ERR]);
  });

  s("a memory window grants remote access where its region does not; handles in use cannot go", async () => {
    const p1 = await pair();
    const region = mr(p1.b, 128, Access.LOCAL_WRITE | Access.MW_BIND, 5);
    const mw = p1.b.ctx.bindMw(p1.b.qp, region.mr, region.mr.addr + 16, 64, Access.REMOTE_READ);
    assert.is(thrownCode(() => p1.b.ctx.deregMr(region.mr)), "KOALA_ERR_HANDLE_IN_USE", "a region with a window bound");
    assert.is(thrownCode(() => p1.b.ctx.destroyQp(p1.b.qp)), "KOALA_ERR_HANDLE_IN_USE", "a QP with a window bound");
    assert.is(thrownCode(() => p1.b.ctx.bindMw(p1.b.qp, mr(p1.b, 8, Access.LOCAL_WRITE).mr, 0, 8, Access.REMOTE_READ)), opts.refused, "a region without MW_BIND");
    const dst = mr(p1.a, 64, Access.LOCAL_WRITE);
    postSend(p1.a, 1, Opcode.RDMA_READ, [[dst.mr.addr, 64, dst.mr.lkey]], { raddr: mw.addr, rkey: mw.rkey });
    assert.equal((await completions(p1.a, 1)).map((x) => x[1]), [WcStatus.SUCCESS]);
    assert.equal([...dst.bytes], Array(64).fill(5));
    // The region's own key grants nothing remotely (no REMOTE_* flags): only the window's does.
    // (That a window's key is refused on another queue pair of the same PD is checked through
    // the transport: the conformance suite's "another connection" case.)
    postSend(p1.a, 2, Opcode.RDMA_READ, [[dst.mr.addr, 8, dst.mr.lkey]], { raddr: region.mr.addr, rkey: region.mr.rkey });
    assert.equal((await completions(p1.a, 1)).map((x) => x[1]), [WcStatus.REM_ACCESS_ERR]);
    p1.b.ctx.deallocMw(mw);
    assert.is(thrownCode(() => p1.b.ctx.deallocMw(mw)), "KOALA_ERR_HANDLE_DESTROYED");
    p1.b.ctx.deregMr(region.mr);
    // A window exposes its bytes only, not the rest of the region (a rendezvous exposes one message of a slab).
    const p2 = await pair();
    const slab = mr(p2.b, 256, Access.LOCAL_WRITE | Access.MW_BIND);
    const win = p2.b.ctx.bindMw(p2.b.qp, slab.mr, slab.mr.addr + 64, 64, Access.REMOTE_READ);
    const into = mr(p2.a, 8, Access.LOCAL_WRITE);
    postSend(p2.a, 1, Opcode.RDMA_READ, [[into.mr.addr, 8, into.mr.lkey]], { raddr: win.addr + 64, rkey: win.rkey });
    assert.equal((await completions(p2.a, 1)).map((x) => x[1]), [WcStatus.REM_ACCESS_ERR], "the bytes right after the window");
    p2.b.ctx.deallocMw(win);
  });

  s("destroying a QP or disconnecting flushes outstanding receives in order; the peer hears disconnected", async () => {
    const { a, b } = await pair();
    const m = mr(b, 4 * 32, Access.LOCAL_WRITE);
    for (let i = 0; i < 4; i++) postRecv(b, m.mr, 40 + i, i * 32, 32);
    b.ctx.disconnect(b.id);
    const flushed = await completions(b, 4);
    assert.equal(flushed.map((x) => [x[0], x[1]]), [40, 41, 42, 43].map((w) => [w, WcStatus.WR_FLUSH_ERR]));
    const deadline = Date.now() + 2000;
    while (!a.events.some((e) => e.type === "disconnected") && Date.now() < deadline) await new Promise((r) => setTimeout(r, 2));
    assert.ok(a.events.some((e) => e.type === "disconnected"), "the peer got disconnected");
    // The peer's QP is in the error state too.
    const src = mr(a, 8, 0);
    postSend(a, 1, Opcode.SEND, [[src.mr.addr, 8, src.mr.lkey]]);
    assert.equal((await completions(a, 1)).map((x) => x[1]), [WcStatus.WR_FLUSH_ERR]);
  });

  s("the connection manager: a request with private data can be rejected; nobody listening is a rejection too", async () => {
    const ctx = provider.open(opts.device, 1);
    const l = await ctx.listen("127.0.0.1", 0, (e) => {
      if (e.type === "connect_request") {
        assert.equal([...e.privateData!], [1, 2, 3]);
        ctx.reject(e.id, new Uint8Array([9]));
        ctx.destroyId(e.id);
      }
    });
    listeners.push({ ctx, l });
    const pd = ctx.allocPd();
    const cq = ctx.createCq(8, () => undefined);
    const outcome = (port: number) =>
      new Promise<CmEvent>((resolve) => {
        const id = ctx.createId(resolve);
        void ctx.resolve(id, "127.0.0.1", port, 2000).then(() => {
          ctx.createQp(id, pd, cq, cq, caps);
          ctx.connect(id, "127.0.0.1", port, new Uint8Array([1, 2, 3]), 2000);
        });
      });
    const rejected = await outcome(l.port);
    assert.is(rejected.type, "rejected");
    assert.equal([...rejected.privateData!], [9]);
    ctx.closeListener(l);
    listeners.length = 0;
    const nobody = await outcome(l.port);
    assert.is(nobody.type, "rejected");
    assert.match(nobody.reason!, /no RDMA listener/);
    const err = await ctx.listen("203.0.113.9", 0, () => undefined).catch((e: unknown) => e);
    assert.ok(err instanceof KoalaError && err.code === "KOALA_ERR_HOST_NOT_FOUND", "the soft fabric reaches only this host");
  });

  s.run();
}
