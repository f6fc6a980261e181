// `npm run build:shm`: builds managed mode's shared-memory addon (addons/shm) with node-gyp,
// OFFLINE, as build-rdma.mjs does: node-gyp is pointed at the running Node's own headers
// (--nodedir = its installation prefix), so it never downloads anything. Needs a C++ compiler,
// make and python3; links nothing beyond libc.
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const addonDir = join(root, "addons", "shm");
const nodedir = dirname(dirname(process.execPath));

function fail(message) {
  process.stderr.write(`build:shm: ${message}\n`);
  process.exit(1);
}

if (process.platform !== "linux") fail(`managed mode's shared memory is Linux only (this is ${process.platform})`);
if (!existsSync(join(nodedir, "include", "node", "node_api.h"))) {
  fail(`no Node headers under ${nodedir}/include/node (the Node at ${process.execPath} was installed without them)`);
}
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
process.stdout.write(`build:shm: built ${join(addonDir, "build", "Release", "koala_shm.node")}\n`);
