// The offline node-gyp build shared by build-rdma.mjs and build-shm.mjs: node-gyp is pointed at
// the running Node's own headers (--nodedir = its installation prefix; /usr/bin/node -> /usr,
// whose include/node holds node_api.h and common.gypi), so it never downloads anything.
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

/** The repository's root folder. */
export const root = join(dirname(fileURLToPath(import.meta.url)), "..");

/** A failure reporter that prefixes `task` (e.g. `build:rdma`) and exits 1. */
export function failer(task) {
  return (message) => {
    process.stderr.write(`${task}: ${message}\n`);
    process.exit(1);
  };
}

/**
 * Runs `node-gyp rebuild` on `addonDir` offline (`--debug` passes through), failing through
 * `fail` when the Node headers or node-gyp are missing or the build fails.
 */
export function gypRebuild(addonDir, fail) {
  const nodedir = dirname(dirname(process.execPath));
  if (!existsSync(join(nodedir, "include", "node", "node_api.h"))) {
    fail(`no Node headers under ${nodedir}/include/node (the Node at ${process.execPath} was installed without them)`);
  }
  // node-gyp from this package's dev dependencies, else the copy npm itself ships.
  let gyp;
  try {
    gyp = createRequire(join(root, "package.json")).resolve("node-gyp/bin/node-gyp.js");
  } catch {
    gyp = process.env.npm_config_node_gyp;
  }
  if (gyp === undefined || !existsSync(gyp)) fail("node-gyp not found (npm install, or run through npm, which ships it)");
  const args = [gyp, "rebuild", `--nodedir=${nodedir}`, "--directory", addonDir, "--loglevel=warn"];
  if (process.argv.includes("--debug")) args.push("--debug");
  const r = spawnSync(process.execPath, args, { stdio: "inherit", env: { ...process.env, npm_config_nodedir: nodedir } });
  if (r.status !== 0) fail(`node-gyp failed (exit ${r.status ?? r.signal})`);
}
