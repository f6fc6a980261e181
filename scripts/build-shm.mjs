// `npm run build:shm`: builds managed mode's shared-memory addon (addons/shm) with node-gyp,
// OFFLINE, as build-rdma.mjs does: node-gyp is pointed at the running Node's own headers
// (--nodedir = its installation prefix), so it never downloads anything. Needs a C++ compiler,
// make and python3; links nothing beyond libc.
import { join } from "node:path";
import { failer, gypRebuild, root } from "./node-gyp.mjs";

const addonDir = join(root, "addons", "shm");
const fail = failer("build:shm");

if (process.platform !== "linux") fail(`managed mode's shared memory is Linux only (this is ${process.platform})`);
gypRebuild(addonDir, fail);
process.stdout.write(`build:shm: built ${join(addonDir, "build", "Release", "koala_shm.node")}\n`);
