/** Small assertions shared by test files. */
import * as assert from "uvu/assert";
import { KoalaError } from "../src/errors.js";

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
