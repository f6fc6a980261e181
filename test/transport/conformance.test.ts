/** The transport conformance suite (conformance.ts) for tcp, unix and memory. */
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
