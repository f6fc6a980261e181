/**
 * The layer rule (mem → transport → cluster → proto → rpc → health → policy, each importing only the layers below;
 * mem is lowest because transports register its slabs with the NIC)
 * read from the sources' import statements, and the promise that an app using only generated
 * code never loads protobufjs: `import "koala-rpc"` checked in a child process.
 */
import { test } from "uvu";
import * as assert from "uvu/assert";
import { execFileSync } from "node:child_process";
import { readFileSync, readdirSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";

const root = new URL("../..", import.meta.url).pathname;
const src = join(root, "src");
const LAYERS = ["mem", "transport", "cluster", "proto", "rpc", "health", "policy"];

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? sources(join(dir, e.name)) : e.name.endsWith(".ts") ? [join(dir, e.name)] : []));
}

/** Relative specifiers of the static imports and re-exports of `file` that exist at run time (not `import type`). */
function runtimeImports(file: string): string[] {
  const text = readFileSync(file, "utf8");
  const out: string[] = [];
  for (const m of text.matchAll(/^(?:import|export)\s+(type\s+)?[^;]*?from\s+"([^"]+)";/gms)) if (m[1] === undefined) out.push(m[2]!);
  for (const m of text.matchAll(/^import\s+"([^"]+)";/gm)) out.push(m[1]!);
  return out;
}

function layerOf(file: string): number {
  return LAYERS.indexOf(relative(src, file).split("/")[0]!);
}

test("each layer imports only the layers below it", () => {
  const wrong: string[] = [];
  for (const file of sources(src)) {
    const own = layerOf(file);
    if (own < 0) continue;
    for (const spec of runtimeImports(file)) {
      if (!spec.startsWith(".")) continue;
      const target = layerOf(resolve(dirname(file), spec));
      if (target > own) wrong.push(`${relative(root, file)} imports ${spec}`);
    }
  }
  assert.equal(wrong, []);
});

test("src/proto has no type-level reference to src/rpc either", () => {
  const wrong = sources(join(src, "proto")).filter((f) => /from\s+"(\.\.\/)+rpc\//.test(readFileSync(f, "utf8")));
  assert.equal(wrong.map((f) => relative(root, f)), []);
});

/** CommonJS modules (protobufjs is one) loaded after importing `module` in a fresh process. */
function loadedAfterImport(module: string): string[] {
  const script = `await import(${JSON.stringify(module)}); const { createRequire } = await import("node:module"); console.log(JSON.stringify(Object.keys(createRequire(import.meta.url).cache)));`;
  const out = execFileSync(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], { cwd: root, encoding: "utf8" });
  return JSON.parse(out) as string[];
}

test('import "koala-rpc" does not load protobufjs or @grpc/proto-loader; the proto-loader subpath does', () => {
  const main = loadedAfterImport("./src/index.ts");
  assert.equal(main.filter((p) => /node_modules\/(protobufjs|@grpc\/proto-loader)\//.test(p)), []);
  const loader = loadedAfterImport("koala-rpc/proto-loader");
  assert.ok(loader.some((p) => /node_modules\/protobufjs\//.test(p)), "the check sees protobufjs when it is loaded");
});

test.run();
