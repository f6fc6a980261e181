/** The transport conformance suite (conformance.ts) for tcp, unix, memory and rdma (soft provider). */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { conformanceSuite } from "./conformance.js";

conformanceSuite("tcp", () => "tcp://127.0.0.1:0");

const dir = mkdtempSync(join(tmpdir(), "koala-conf-"));
let socketN = 0;
conformanceSuite("unix", () => `unix:${join(dir, `${++socketN}.sock`)}`, {
  after: () => rmSync(dir, { recursive: true, force: true }),
});

let memoryN = 0;
conformanceSuite("memory", () => `memory:conf-${++memoryN}`);

// RDMA over the software verbs provider: the variable is set only while its suite runs.
const savedProvider = process.env.KOALA_RDMA_PROVIDER;
conformanceSuite("rdma", () => "rdma://127.0.0.1:0", {
  before: () => {
    process.env.KOALA_RDMA_PROVIDER = "soft";
  },
  after: () => {
    if (savedProvider === undefined) delete process.env.KOALA_RDMA_PROVIDER;
    else process.env.KOALA_RDMA_PROVIDER = savedProvider;
  },
});
