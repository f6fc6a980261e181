/**
 * The `static` resolver: `static:///10.0.0.1:50051,10.0.0.2:50051` — a fixed list of addresses
 * (any form `connect()` takes, `tcp://…` and `unix:/…` included), checked when the channel is
 * created. An address may carry a weight for `weighted_round_robin`:
 * `static:///10.0.0.1:50051;weight=3,10.0.0.2:50051` (an integer from 1 to 1 000 000; default 1).
 */
import { ErrorCode, KoalaError } from "../errors.js";
import { parseAddress } from "../transport/address.js";
import type { Target } from "./target.js";
import type { Endpoint, Resolver, ResolverListener } from "./types.js";

/** Resolves a `static:` target to its list of addresses. */
export function staticResolver(target: Target, listener: ResolverListener): Resolver {
  if (target.authority !== "") throw new KoalaError(ErrorCode.INVALID_ADDRESS, `invalid target ${JSON.stringify(target.raw)}: static takes no authority (write static:///a:1,b:2)`);
  const endpoints: Endpoint[] = target.path.split(",").map((a) => a.trim()).filter((a) => a !== "").map((entry) => {
    const m = /^(.*);weight=([^;]*)$/.exec(entry);
    const address = m === null ? entry : m[1]!;
    let weight: number | undefined;
    if (m !== null) {
      weight = /^\d{1,7}$/.test(m[2]!) ? Number(m[2]) : NaN;
      if (!(weight >= 1 && weight <= 1_000_000)) throw new KoalaError(ErrorCode.INVALID_ADDRESS, `invalid target ${JSON.stringify(target.raw)}: weight ${JSON.stringify(m[2])} of ${address} must be an integer from 1 to 1000000`);
    }
    try {
      parseAddress(address);
    } catch (err) {
      throw new KoalaError(ErrorCode.INVALID_ADDRESS, `invalid target ${JSON.stringify(target.raw)}: ${(err as Error).message}`, { cause: err });
    }
    return weight === undefined ? { address } : { address, weight };
  });
  if (endpoints.length === 0) throw new KoalaError(ErrorCode.INVALID_ADDRESS, `invalid target ${JSON.stringify(target.raw)}: no addresses (write static:///a:1,b:2)`);
  let closed = false;
  queueMicrotask(() => {
    if (!closed) listener.onEndpoints(endpoints);
  });
  return {
    refresh() {},
    close() {
      closed = true;
    },
  };
}
