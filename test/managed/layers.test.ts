/**
 * Where managed mode sits (src/managed/index.ts): the application's part (the shm transport and
 * the managed resolver) beside the transports, importing only mem, transport and cluster, so the
 * package entry can register it without loading rpc's or the policy layer's code through it; the
 * daemon's part (daemon, policy, config) above the policy layer. Nothing below src/managed
 * imports it but the package entry.
 */
import { readFileSync, readdirSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { test } from "uvu";
import * as assert from "uvu/assert";

const root = new URL("../..", import.meta.url).pathname;
const src = join(root, "src");
const APP_PART = ["index.ts", "native.ts", "ring.ts", "setup.ts", "shm-connection.ts"];
const APP_MAY_IMPORT = new Set(["mem", "transport", "cluster", "managed", "errors.js", "log.js", "fifo.js", "options.js"]);

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? sources(join(dir, e.name)) : e.name.endsWith(".ts") ? [join(dir, e.name)] : []));
}

function runtimeImports(file: string): string[] {
  const text = readFileSync(file, "utf8");
  const out: string[] = [];
  for (const m of text.matchAll(/^(?:import|export)\s+(type\s+)?[^;]*?from\s+"([^"]+)";/gms)) if (m[1] === undefined) out.push(m[2]!);
  return out.filter((s) => s.startsWith("."));
}

test("the application's part of src/managed imports only mem, transport, cluster and the shared modules", () => {
  const wrong: string[] = [];
  for (const name of APP_PART) {
    const file = join(src, "managed", name);
    for (const spec of runtimeImports(file)) {
      const top = relative(src, resolve(dirname(file), spec)).split("/")[0]!;
      if (!APP_MAY_IMPORT.has(top)) wrong.push(`src/managed/${name} imports ${spec}`);
    }
  }
  assert.equal(wrong, []);
});

test("nothing outside src/managed imports it, but the package entry and the koala command", () => {
  const wrong = sources(src)
    .filter((f) => !f.startsWith(join(src, "managed")) && f !== join(src, "index.ts") && !f.startsWith(join(src, "cli")))
    .filter((f) => runtimeImports(f).some((s) => resolve(dirname(f), s).startsWith(join(src, "managed"))))
    .map((f) => relative(root, f));
  assert.equal(wrong, []);
});

test.run();
