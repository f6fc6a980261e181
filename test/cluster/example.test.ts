/** examples/cluster runs end to end: three replica processes, one killed and restarted, no call failed, the balancing shown live. */
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { test } from "uvu";
import * as assert from "uvu/assert";

const root = new URL("../..", import.meta.url).pathname;
const run = promisify(execFile);

// One run (about 5 s: three processes start, twice): weighted_round_robin shows the weights too.
for (const balancer of ["weighted_round_robin"]) {
  test(`examples/cluster with ${balancer}: every replica serves, the killed one gets nothing until it is back, no call fails`, async () => {
    const { stdout } = await run(process.execPath, ["--import", "tsx", "examples/cluster/main.ts"], { cwd: root, env: { ...process.env, BALANCER: balancer, KOALA_TRANSPORT: "tcp", PHASE_MS: "800" }, timeout: 60_000 });
    assert.match(stdout, `balancer ${balancer}`);
    assert.match(stdout, /killed 127\.0\.0\.3 \(SIGKILL\)/);
    assert.match(stdout, /127\.0\.0\.3:\s+0 .*transient_failure/, "a report with the dead replica out of the rotation");
    const [, calls, failed] = /calls: (\d+), failed: (\d+), attempts retried: \d+/.exec(stdout) ?? [];
    assert.ok(Number(calls) > 100, stdout);
    assert.is(failed, "0", stdout);
    // The last report: all three serve again.
    const last = stdout.trim().split("\n").filter((l) => l.startsWith("t=")).at(-1)!;
    const served = [...last.matchAll(/127\.0\.0\.\d: +(\d+)/g)].map((m) => Number(m[1]));
    assert.is(served.length, 3, last);
    assert.ok(served.every((n) => n > 0), last);
    if (balancer === "weighted_round_robin") assert.ok(served[2]! > served[0]! * 2, `weights 1 : 3 show: ${last}`);
  });
}

test.run();
