/**
 * Parsing `.proto` files with protobufjs, shared by `koala gen` and run-time loading: imports
 * are looked up next to the importing file, then in the include folders in order. The
 * well-known types come from protobufjs' bundled copies; other `google/protobuf/*.proto` files
 * (descriptor.proto, for custom options) fall back to the copies shipped with protobufjs.
 */
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, isAbsolute, join, resolve } from "node:path";
import protobuf from "protobufjs";
import { ErrorCode, KoalaError } from "../../errors.js";
import { custom } from "../../options.js";

/** Option spec of a list of folders (`includeDirs`), empty by default. */
export const stringList = custom<string[]>([], "an array of paths", (v) => Array.isArray(v) && v.every((d) => typeof d === "string"));

let protobufDir: string | undefined;

function bundledProto(target: string): string | undefined {
  protobufDir ??= dirname(createRequire(import.meta.url).resolve("protobufjs"));
  const path = join(protobufDir, target);
  return existsSync(path) ? path : undefined;
}

/**
 * Loads and resolves `files` (paths are taken relative to the working directory) into a new
 * protobufjs Root, field names as written when `keepCase` (the generator: it derives protoc's
 * names itself), else in protobufjs' lowerCamelCase; `comments` keeps every `//` and `/* *\/`
 * comment (protobufjs' alternate comment mode: the generator copies them into JSDoc). Throws KOALA_ERR_INVALID_ARGUMENT, its
 * message starting with `where`, when a file is missing or does not parse.
 */
export function loadRoot(files: readonly string[], includeDirs: readonly string[], where: string, keepCase = false, comments = false): protobuf.Root {
  const dirs = includeDirs.map((d) => resolve(d));
  const root = new protobuf.Root();
  root.resolvePath = (origin, target) => {
    if (isAbsolute(target)) return target;
    const candidates = [origin ? join(dirname(origin), target) : target, ...dirs.map((d) => join(d, target))];
    const found = candidates.find((c) => existsSync(c));
    if (found !== undefined) return found;
    return (target.startsWith("google/protobuf/") ? bundledProto(target) : undefined) ?? target;
  };
  try {
    withFileNames(() => root.loadSync(
      files.map((f) => resolve(f)),
      { keepCase, alternateCommentMode: comments },
    ));
    root.resolveAll();
  } catch (err) {
    throw new KoalaError(ErrorCode.INVALID_ARGUMENT, `${where}: ${(err as Error).message}`, { cause: err });
  }
  return root;
}

type Parse = typeof protobuf.parse;

/** The types, enums, services and extension fields below `ns` that have no file name. */
function unnamed(ns: protobuf.NamespaceBase, out: protobuf.ReflectionObject[] = []): protobuf.ReflectionObject[] {
  for (const o of ns.nestedArray) {
    if (o.filename === null && (o instanceof protobuf.Type || o instanceof protobuf.Enum || o instanceof protobuf.Service || o instanceof protobuf.Field)) out.push(o);
    if (o instanceof protobuf.Namespace || o instanceof protobuf.Type) unnamed(o, out);
  }
  return out;
}

/**
 * Runs `load` with each `.proto` parse wrapped so that what it declared knows its file.
 * protobufjs 8 drops the current file name after a parse error it recovers from (an editions
 * `reserved foo;` goes through a failed number parse first), so every later type of that file
 * would have none, and the generator would not know where to put it. Synchronous: protobufjs'
 * own parser is back in place before anything else runs.
 */
function withFileNames<T>(load: () => T): T {
  const original = protobuf.parse;
  const wrapped = ((source: string, root: protobuf.Root, options?: protobuf.IParseOptions) => {
    const file = (wrapped as unknown as { filename: string | null }).filename;
    (original as unknown as { filename: string | null }).filename = file;
    const before = new Set(unnamed(root));
    const parsed = original(source, root, options);
    for (const o of unnamed(root)) if (!before.has(o)) o.filename = file;
    return parsed;
  }) as Parse;
  const configure = (protobuf.Root as unknown as { _configure(type: unknown, parse: Parse, common: unknown): void })._configure;
  configure(protobuf.Type, wrapped, protobuf.common);
  try {
    return load();
  } finally {
    configure(protobuf.Type, original, protobuf.common);
  }
}
