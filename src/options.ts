/**
 * Validation of option objects: every factory takes one options object, checks it once with
 * {@link resolveOptions} and works from the resolved copy. A misspelled key or a value of the
 * wrong kind is a KOALA_ERR_INVALID_ARGUMENT error that names the key.
 */
import { ErrorCode, KoalaError } from "./errors.js";

/** How one option is checked: its default and a test that returns an error text or undefined. */
export interface OptionSpec<T> {
  /** Value used when the option is absent or undefined. */
  default: T;
  /** Returns why `value` is not acceptable, or undefined when it is. */
  check(value: unknown): string | undefined;
}

/** Spec of a whole options object. */
export type OptionsSpec<T> = { [K in keyof T]: OptionSpec<T[K]> };

/** An integer in [min, max]. */
export function integer(def: number, min: number, max = Number.MAX_SAFE_INTEGER): OptionSpec<number> {
  return {
    default: def,
    check: (v) =>
      typeof v === "number" && Number.isInteger(v) && v >= min && v <= max
        ? undefined
        : `must be an integer from ${min} to ${max}, got ${describe(v)}`,
  };
}

/** A finite number in [min, max]. */
export function number(def: number, min: number, max = Number.MAX_VALUE): OptionSpec<number> {
  return {
    default: def,
    check: (v) =>
      typeof v === "number" && Number.isFinite(v) && v >= min && v <= max
        ? undefined
        : `must be a number from ${min} to ${max}, got ${describe(v)}`,
  };
}

/** A boolean. */
export function boolean(def: boolean): OptionSpec<boolean> {
  return { default: def, check: (v) => (typeof v === "boolean" ? undefined : `must be a boolean, got ${describe(v)}`) };
}

/** One of a fixed set of strings. */
export function oneOf<const S extends string>(def: S, values: readonly S[]): OptionSpec<S> {
  return {
    default: def,
    check: (v) =>
      typeof v === "string" && (values as readonly string[]).includes(v)
        ? undefined
        : `must be one of ${values.map((s) => JSON.stringify(s)).join(", ")}, got ${describe(v)}`,
  };
}

/** Any value accepted by `test` (described by `what` in the error). */
export function custom<T>(def: T, what: string, test: (v: unknown) => boolean): OptionSpec<T> {
  return { default: def, check: (v) => (test(v) ? undefined : `must be ${what}, got ${describe(v)}`) };
}

/**
 * Checks `input` against `spec` and returns a complete, frozen options object.
 * `where` names the factory in error messages, e.g. `"connect()"`.
 */
export function resolveOptions<T extends object>(where: string, spec: OptionsSpec<T>, input: unknown): Readonly<T> {
  if (input !== undefined && (typeof input !== "object" || input === null || Array.isArray(input))) {
    throw new KoalaError(ErrorCode.INVALID_ARGUMENT, `${where}: options must be an object, got ${describe(input)}`);
  }
  const given = (input ?? {}) as Record<string, unknown>;
  for (const key of Object.keys(given)) {
    if (!Object.hasOwn(spec, key)) {
      const known = Object.keys(spec);
      const hint = suggest(key, known);
      throw new KoalaError(
        ErrorCode.INVALID_ARGUMENT,
        `${where}: unknown option "${key}"${hint ? ` (did you mean "${hint}"?)` : ""}; known options: ${known.join(", ")}`,
      );
    }
  }
  const out: Record<string, unknown> = {};
  for (const [key, s] of Object.entries(spec) as [string, OptionSpec<unknown>][]) {
    const v = given[key];
    if (v === undefined) {
      out[key] = s.default;
      continue;
    }
    const problem = s.check(v);
    if (problem !== undefined) throw new KoalaError(ErrorCode.INVALID_ARGUMENT, `${where}: option "${key}" ${problem}`);
    out[key] = v;
  }
  return Object.freeze(out) as Readonly<T>;
}

function describe(v: unknown): string {
  if (typeof v === "string") return JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}…` : v);
  if (typeof v === "number" || typeof v === "boolean" || v === null || v === undefined) return String(v);
  if (Array.isArray(v)) return "an array";
  return `a ${typeof v}`;
}

/** The known key closest to `key` by edit distance, if it is close enough to be a typo. */
function suggest(key: string, known: string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = Math.max(2, Math.floor(key.length / 3)) + 1;
  for (const k of known) {
    const d = editDistance(key.toLowerCase(), k.toLowerCase());
    if (d < bestDistance) {
      best = k;
      bestDistance = d;
    }
  }
  return best;
}

function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) {
      cur[j] = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    prev = cur;
  }
  return prev[b.length]!;
}
