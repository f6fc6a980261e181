/**
 * The `static` resolver: `static:///10.0.0.1:50051,10.0.0.2:50051` — a fixed list of addresses
 * (any form `connect()` takes, `tcp://…` and `unix:/…` included), checked when the channel is
 * created.
 */
import { ErrorCode, KoalaError } from "../errors.js";
import { parseAddress } from "../transport/address.js";
import type { Target } from "./target.js";
import type { Endpoint, Resolver, ResolverListener } from "./types.js";

/** Resolves a `static:` target to its list of addresses. */
export function staticResolver(target: Target, listener: ResolverListener): Resolver {
  if (target.authority !== "") throw new KoalaError(ErrorCode.INVALID_ADDRESS, `invalid target ${JSON.stringify(target.raw)}: static takes no authority (write static:///a:1,b:2)`);
  const endpoints: Endpoint[] = target.path.split(",").map((a) => a.trim()).filter((a) => a !== "").map((address) => {
    try {
      parseAddress(address);
    } catch (err) {
      throw new KoalaError(ErrorCode.INVALID_ADDRESS, `invalid target ${JSON.stringify(target.raw)}: ${(err as Error).message}`, { cause: err });
    }
    return { address };
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
