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
 * names itself), else in protobufjs' lowerCamelCase. Throws KOALA_ERR_INVALID_ARGUMENT, its
 * message starting with `where`, when a file is missing or does not parse.
 */
export function loadRoot(files: readonly string[], includeDirs: readonly string[], where: string, keepCase = false): protobuf.Root {
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
    root.loadSync(
      files.map((f) => resolve(f)),
      { keepCase },
    );
    root.resolveAll();
  } catch (err) {
    throw new KoalaError(ErrorCode.INVALID_ARGUMENT, `${where}: ${(err as Error).message}`, { cause: err });
  }
  return root;
}
