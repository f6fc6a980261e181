// Runs every test file with uvu (through tsx) and ends with one plain summary line,
// "N passed, N failed", which CI reads. The exit code is uvu's.
import { spawn } from "node:child_process";

// An optional argument narrows the run to the test files (relative to test/) it matches, e.g.
// '^cluster/': only *.test.ts files ever run (test/ also holds helpers and fixtures).
const pattern = process.argv[2] === undefined ? "\\.test\\.ts$" : `(?=.*\\.test\\.ts$)(?:${process.argv[2]})`;
const args = ["--import", "tsx", "node_modules/uvu/bin.js", "test", pattern];
const child = spawn(process.execPath, args, { stdio: ["ignore", "pipe", "inherit"], env: { ...process.env, FORCE_COLOR: "0" } });
let out = "";
child.stdout.on("data", (d) => {
  out += d;
  process.stdout.write(d);
});
child.on("close", (code) => {
  const total = Number(/Total:\s+(\d+)/.exec(out)?.[1] ?? 0);
  const passed = Number(/Passed:\s+(\d+)/.exec(out)?.[1] ?? 0);
  process.stdout.write(`\n${passed} passed, ${total - passed} failed\n`);
  process.exitCode = code ?? 1;
  if (total === 0) process.exitCode = 1;
});
