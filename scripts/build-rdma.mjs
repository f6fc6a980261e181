// `npm run build:rdma`: builds the native verbs addon (addons/rdma) with node-gyp, OFFLINE:
// node-gyp is pointed at the running Node's own headers (--nodedir = its installation prefix),
// so it never downloads anything. Needs a C++ compiler, make, python3 and the rdma-core
// headers (Debian: apt-get install libibverbs-dev librdmacm-dev); links nothing of rdma-core.
import { spawnSync } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const addonDir = join(root, "addons", "rdma");
// /usr/bin/node → /usr, whose include/node holds node_api.h and common.gypi.
const nodedir = dirname(dirname(process.execPath));

function fail(message) {
  process.stderr.write(`build:rdma: ${message}\n`);
  process.exit(1);
}

if (process.platform !== "linux") fail(`RDMA is Linux only (this is ${process.platform})`);
if (!existsSync(join(nodedir, "include", "node", "node_api.h"))) {
  fail(`no Node headers under ${nodedir}/include/node (the Node at ${process.execPath} was installed without them)`);
}
for (const header of ["/usr/include/infiniband/verbs.h", "/usr/include/rdma/rdma_cma.h"]) {
  if (!existsSync(header)) fail(`${header} is missing: install the rdma-core headers (Debian / Ubuntu: apt-get install libibverbs-dev librdmacm-dev)`);
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
const built = join(addonDir, "build", "Release", "koala_rdma.node");
process.stdout.write(`build:rdma: built ${built}\n`);

// --prebuild (npm run package:rdma): also put a stripped copy where a published package looks
// for it, prebuilds/<platform>-<arch>/, named with the node-gyp-build tags (napi: any Node
// >= 20; glibc: not for musl). The npm tarball ships it; git ignores it.
if (process.argv.includes("--prebuild")) {
  const dir = join(root, "prebuilds", `${process.platform}-${process.arch}`);
  mkdirSync(dir, { recursive: true });
  const target = join(dir, "koala-rpc.napi.glibc.node");
  copyFileSync(built, target);
  const strip = spawnSync("strip", ["--strip-unneeded", target], { stdio: "inherit" });
  process.stdout.write(`build:rdma: prebuilt ${target}${strip.status === 0 ? " (stripped)" : " (strip unavailable: not stripped)"}\n`);
}
