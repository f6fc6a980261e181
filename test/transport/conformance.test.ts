/** The transport conformance suite (conformance.ts) for tcp, tls, unix, memory and rdma (soft provider). */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { conformanceSuite } from "./conformance.js";
import { clientTls, serverTls } from "../fixtures/tls/certs.js";

conformanceSuite("tcp", () => "tcp://127.0.0.1:0");

// TLS with the test certificates: the server's, and a client that trusts the test CA only.
conformanceSuite("tls", () => "tls://127.0.0.1:0", { listenOptions: { tls: serverTls }, connectOptions: { tls: clientTls } });

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
