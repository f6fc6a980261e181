// `npm run build:rdma`: builds the native verbs addon (addons/rdma) with node-gyp, OFFLINE:
// node-gyp is pointed at the running Node's own headers (--nodedir = its installation prefix),
// so it never downloads anything. Needs a C++ compiler, make, python3 and the rdma-core
// headers (Debian: apt-get install libibverbs-dev librdmacm-dev); links nothing of rdma-core.
import { spawnSync } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { failer, gypRebuild, root } from "./node-gyp.mjs";

const addonDir = join(root, "addons", "rdma");
const fail = failer("build:rdma");

if (process.platform !== "linux") fail(`RDMA is Linux only (this is ${process.platform})`);
for (const header of ["/usr/include/infiniband/verbs.h", "/usr/include/rdma/rdma_cma.h"]) {
  if (!existsSync(header)) fail(`${header} is missing: install the rdma-core headers (Debian / Ubuntu: apt-get install libibverbs-dev librdmacm-dev)`);
}
gypRebuild(addonDir, fail);
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
