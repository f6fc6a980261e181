/** Small assertions shared by test files. */
import * as assert from "uvu/assert";
import { KoalaError, RpcError } from "../src/errors.js";
import { resetLogLevel } from "../src/log.js";

/** The stable code of the KoalaError `fn` throws; "none" when it throws nothing. */
export function thrownCode(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof KoalaError, `expected a KoalaError, got ${String(err)}`);
    return (err as KoalaError).code;
  }
  return "none";
}

/** The RpcError `p` rejects with; fails the test when `p` resolves or rejects with something else. */
export async function rejection(p: Promise<unknown>): Promise<RpcError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof RpcError, `expected an RpcError, got ${String(err)}`);
    return err as RpcError;
  }
  throw new Error("the call succeeded");
}

/** Waits until `cond()` holds, polling every 5 ms; fails after `ms` naming `what`. */
export async function until(cond: () => boolean, what: string, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`still waiting for ${what} after ${ms} ms`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** Runs `fn` with KOALA_LOG=off: the tests that provoke errors on purpose keep the output clean. */
export async function quietly<T>(fn: () => Promise<T>): Promise<T> {
  const saved = process.env.KOALA_LOG;
  process.env.KOALA_LOG = "off";
  resetLogLevel();
  try {
    return await fn();
  } finally {
    if (saved === undefined) delete process.env.KOALA_LOG;
    else process.env.KOALA_LOG = saved;
    resetLogLevel();
  }
}
