/**
 * Fuzz of the native addon's own argument checks: every exported function is called straight
 * (past the TypeScript loader's checks) with wrong types, wrong counts, out-of-range and
 * hostile values. The process must survive every call, each call must either succeed or throw
 * a KoalaError (KOALA_ERR_INVALID_ARGUMENT for a bad argument), and the addon must still work
 * afterwards. Skipped, with a printed reason, only when the addon is not built.
 */
import { test } from "uvu";
import * as assert from "uvu/assert";
import fc from "fast-check";
import { createRequire } from "node:module";
import { KoalaError } from "../../src/errors.js";
import { loadNative, locateAddon, NOT_BUILT, type NativeBinding } from "../../src/transport/rdma/native.js";

const built = locateAddon(new URL("../../", import.meta.url).pathname) !== undefined;
if (!built) {
  if (process.env.KOALA_REQUIRE_NATIVE === "1") throw new Error(`KOALA_REQUIRE_NATIVE=1 but ${NOT_BUILT}`);
  process.stdout.write(`\n  rdma-addon-fuzz: SKIPPING: ${NOT_BUILT}\n`);
}
const t = built ? test : test.skip;

/** The raw binding with its libraries loaded (the system's, or whatever KOALA_VERBS_LIB names). */
function binding(): NativeBinding {
  const state = loadNative();
  if (!("binding" in state)) {
    // The addon loads even when the libraries do not; reach it anyway so its checks are fuzzed.
    assert.ok(state.path !== undefined, state.reason);
    return createRequire(import.meta.url)(state.path!) as NativeBinding;
  }
  return state.binding;
}

/** Values of every JavaScript type, with the edge cases a C++ check might miss. */
const hostile = fc.oneof(
  fc.anything({ withBigInt: true, withTypedArray: true, withSparseArray: true, withMap: true, withSet: true, withDate: true, withNullPrototype: true }),
  fc.constantFrom(NaN, Infinity, -Infinity, -0, 2 ** 53, -(2 ** 31), 2 ** 32, Number.MAX_VALUE, "", "\0", "a\0b", "x".repeat(5000), Symbol("s"), () => 1, new ArrayBuffer(0), new Uint8Array(3), Object.create(null), null, undefined),
);
const args = fc.array(hostile, { maxLength: 4 });

/** Calls `fn(...a)`; true when it returned, after checking a throw was a KoalaError with a stable code. */
function survive(fn: (...a: unknown[]) => unknown, a: unknown[]): boolean {
  try {
    fn(...a);
    return true;
  } catch (err) {
    assert.ok(err instanceof KoalaError, `expected a KoalaError, got ${String(err)}`);
    assert.match((err as KoalaError).code, /^KOALA_ERR_(INVALID_ARGUMENT|VERBS)$/);
    return false;
  }
}

t("load(verbsPath, rdmacmPath): anything but two sane strings is KOALA_ERR_INVALID_ARGUMENT", () => {
  const b = binding();
  for (const bad of [[], ["libibverbs.so.1"], [1, 2], ["", "librdmacm.so.1"], ["a\0b", "librdmacm.so.1"], ["x".repeat(4096), "y"], [null, undefined], ["a", "b", "c"]]) {
    let code: string | undefined;
    try {
      b.load(...(bad as [string, string]));
    } catch (err) {
      code = (err as KoalaError).code;
    }
    assert.is(code, "KOALA_ERR_INVALID_ARGUMENT", JSON.stringify(bad));
  }
  fc.assert(
    fc.property(args, (a) => {
      // Only non-strings are fuzzed here: two strings would dlopen whatever they name.
      if (a.length === 2 && typeof a[0] === "string" && typeof a[1] === "string") return;
      assert.is(survive(b.load as (...x: unknown[]) => unknown, a), false, "a bad call never succeeds");
    }),
    { numRuns: 500 },
  );
});

t("devices(probeInline?): a non-boolean or extra argument is KOALA_ERR_INVALID_ARGUMENT; the addon still works after", () => {
  const b = binding();
  fc.assert(
    fc.property(args, (a) => {
      const ok = survive(b.devices as (...x: unknown[]) => unknown, a);
      const valid = a.length === 0 || (a.length === 1 && (typeof a[0] === "boolean" || a[0] === undefined));
      if (!valid) assert.is(ok, false, `devices(${a.map((x) => typeof x).join(", ")}) must be refused`);
    }),
    { numRuns: 500 },
  );
  // The object functions are fuzzed with live and dead handles in rdma-addon-objects.test.ts.
  assert.equal(Object.keys(b), [...OBJECT_FNS.slice(0, 3), "openDevice", "closeDevice", ...OBJECT_FNS.slice(3), ...CM_FNS, "abiVersion"]);
});

const OBJECT_FNS = ["init", "load", "devices", "allocPd", "deallocPd", "regMr", "deregMr", "createCq", "resizeCq", "reqNotifyCq", "pollCq", "destroyCq", "createQp", "destroyQp", "postSend", "postRecv"] as const;
/** The connection manager's and memory windows' exports. */
const CM_FNS = ["bindMw", "deallocMw", "invalidateMw", "cmInit", "cmRef", "listen", "closeListener", "createId", "resolveAddr", "resolveRoute", "createCmQp", "connect", "accept", "reject", "disconnect", "destroyId", "cmAddresses", "cmEventName"] as const;

t("connection manager and window calls: with no handle of this thread anywhere, hostile arguments never succeed and never crash", () => {
  const b = binding();
  fc.assert(
    fc.property(fc.constantFrom(...CM_FNS), args, (name, a) => {
      // cmInit with a function sets up the event channel: fuzzed with live objects in rdma-addon-objects.test.ts.
      if (name === "cmInit" && typeof a[0] === "function") return;
      // Valid calls that may succeed: an event type's name; cmRef(boolean) once some test set up the channel.
      const named = (name === "cmEventName" && a.length === 1 && Number.isInteger(a[0]) && (a[0] as number) >= 0 && (a[0] as number) <= 64) || (name === "cmRef" && a.length === 1 && typeof a[0] === "boolean");
      const ok = survive(b[name] as unknown as (...x: unknown[]) => unknown, a);
      if (!named) assert.is(ok, false, `${name}(${a.map((x) => typeof x).join(", ")}) must be refused`);
    }),
    { numRuns: 2000 },
  );
});

t("init(makeError): a non-function is refused and the old factory stays; a throwing or odd factory cannot crash the process", () => {
  const b = binding();
  fc.assert(
    fc.property(args, (a) => {
      if (a.length === 1 && typeof a[0] === "function") return;
      assert.is(survive(b.init as (...x: unknown[]) => unknown, a), false);
    }),
    { numRuns: 300 },
  );
  // The factory installed by the loader is still the one used.
  try {
    (b.devices as (...x: unknown[]) => unknown)(1);
    assert.unreachable("devices(1) must throw");
  } catch (err) {
    assert.ok(err instanceof KoalaError);
  }
  const strange: unknown[] = [undefined, null, 42, "text", {}];
  try {
    for (const value of strange) {
      b.init(() => value as Error);
      let threw = false;
      try {
        (b.devices as (...x: unknown[]) => unknown)(1);
      } catch (err) {
        threw = true;
        assert.is(err, value, "whatever the factory returns is what is thrown");
      }
      assert.ok(threw);
    }
    b.init(() => {
      throw new RangeError("factory failed");
    });
    try {
      (b.devices as (...x: unknown[]) => unknown)(1);
      assert.unreachable("must throw");
    } catch (err) {
      assert.instance(err, RangeError);
    }
  } finally {
    loadNative(); // puts the loader's factory back (init is called on every load)
  }
  try {
    (b.devices as (...x: unknown[]) => unknown)(1);
  } catch (err) {
    assert.ok(err instanceof KoalaError, "the loader's factory is back");
  }
});

test.run();
