import { test } from "uvu";
import * as assert from "uvu/assert";
import { Code, ErrorCode, KoalaError, RpcError, codeName } from "../src/errors.js";
import { integer, oneOf, resolveOptions } from "../src/options.js";

test("RpcError keeps code, message, metadata and cause", () => {
  const cause = new Error("disk on fire");
  const e = new RpcError(Code.UNAVAILABLE, "try later", { cause, metadata: { "retry-after": "5" } });
  assert.is(e.code, 14);
  assert.is(e.message, "[UNAVAILABLE] try later");
  assert.is(e.rawMessage, "try later");
  assert.is(e.metadata["retry-after"], "5");
  assert.is(e.cause, cause);
  assert.is(e.name, "RpcError");
});

test("RpcError.from maps what was thrown", () => {
  const rpc = new RpcError(Code.NOT_FOUND, "x");
  assert.is(RpcError.from(rpc), rpc);
  assert.is(RpcError.from(new KoalaError(ErrorCode.CONNECTION_REFUSED, "nobody home")).code, Code.UNAVAILABLE);
  assert.is(RpcError.from(new KoalaError(ErrorCode.MESSAGE_TOO_LARGE, "big")).code, Code.RESOURCE_EXHAUSTED);
  assert.is(RpcError.from(new DOMException("stop", "AbortError")).code, Code.CANCELLED);
  assert.is(RpcError.from(new Error("boom")).code, Code.UNKNOWN);
  assert.is(RpcError.from("text", Code.INTERNAL).code, Code.INTERNAL);
  assert.is(codeName(4), "DEADLINE_EXCEEDED");
  assert.is(codeName(77), "CODE_77");
});

test("instanceof recognises errors made by another copy of the package", () => {
  // A second copy has its own classes but brands its errors with the same registered symbol.
  const foreign = Object.assign(new Error("from the other copy"), { code: "KOALA_ERR_CLOSED" });
  Object.defineProperty(foreign, Symbol.for("koala-rpc.KoalaError"), { value: true });
  assert.ok(foreign instanceof KoalaError);
  assert.not.ok(new Error("plain") instanceof KoalaError);
  assert.not.ok(new KoalaError(ErrorCode.CLOSED, "x") instanceof RpcError);
});

test("options: defaults, a misspelled key named with a suggestion, a bad value named", () => {
  const spec = { timeoutMs: integer(100, 0), mode: oneOf("a", ["a", "b"] as const) };
  assert.equal({ ...resolveOptions("f()", spec, undefined) }, { timeoutMs: 100, mode: "a" });
  assert.equal({ ...resolveOptions("f()", spec, { timeoutMs: 5 }) }, { timeoutMs: 5, mode: "a" });
  try {
    resolveOptions("f()", spec, { timeoutMS: 5 });
    assert.unreachable();
  } catch (err) {
    assert.is((err as KoalaError).code, "KOALA_ERR_INVALID_ARGUMENT");
    assert.match((err as Error).message, /f\(\): unknown option "timeoutMS" \(did you mean "timeoutMs"\?\)/);
  }
  assert.throws(() => resolveOptions("f()", spec, { timeoutMs: -1 }), /option "timeoutMs" must be an integer from 0/);
  assert.throws(() => resolveOptions("f()", spec, { mode: "c" }), /option "mode" must be one of "a", "b", got "c"/);
  assert.throws(() => resolveOptions("f()", spec, 5), /options must be an object/);
});

test.run();
