/** `koala gen` on the command line: files written, --check, options and exit codes. */
import { test } from "uvu";
import * as assert from "uvu/assert";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { runGen } from "../../src/proto/codegen/cli.js";

const root = new URL("../..", import.meta.url).pathname;
const everything = join(root, "test/fixtures/protos/app/everything.proto");
const include = join(root, "test/fixtures/protos/include");

/** Runs `koala gen` in this process, capturing what it prints. */
async function gen(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = { stdout: "", stderr: "" };
  const saved = [process.stdout.write, process.stderr.write] as const;
  process.stdout.write = ((s: string) => ((out.stdout += s), true)) as typeof process.stdout.write;
  process.stderr.write = ((s: string) => ((out.stderr += s), true)) as typeof process.stderr.write;
  try {
    return { code: await runGen(args), ...out };
  } finally {
    [process.stdout.write, process.stderr.write] = saved;
  }
}

function tempDir(): string {
  return mkdtempSync(join(tmpdir(), "koala-gen-cli-"));
}

test("writes one file per .proto below --out, then --check passes until a file changes", async () => {
  const dir = tempDir();
  try {
    const r = await gen([everything, "--out", dir, "-I", include, "--target", "ts", "--runtime=koala-rpc"]);
    assert.is(r.code, 0, r.stderr);
    for (const rel of ["everything.ts", "shared/common.ts", "google/protobuf/timestamp.ts"]) {
      assert.ok(existsSync(join(dir, rel)), rel);
      assert.match(r.stdout, `wrote ${join(dir, rel)}`);
    }
    assert.match(readFileSync(join(dir, "everything.ts"), "utf8"), /^import \{ wire \} from "koala-rpc";$/m);
    assert.is((await gen([everything, `--out=${dir}`, `-I${include}`, "--check"])).code, 0);
    writeFileSync(join(dir, "shared/common.ts"), "// edited\n");
    const stale = await gen([everything, "--out", dir, "--include", include, "--check"]);
    assert.is(stale.code, 1);
    assert.match(stale.stderr, /shared\/common\.ts is out of date/);
    assert.is(readFileSync(join(dir, "shared/common.ts"), "utf8"), "// edited\n", "--check writes nothing");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("usage errors exit 2 with the usage, a bad .proto exits 1 with the reason", async () => {
  const dir = tempDir();
  try {
    for (const [args, why] of [
      [[everything], /--out is required/],
      [["--out", dir], /no \.proto files given/],
      [[everything, "--out"], /--out needs a value/],
      [[everything, "--out", dir, "--target", "js"], /unknown target "js" \(the only target is "ts"\)/],
      [[everything, "--out", dir, "--frobnicate"], /unknown option --frobnicate/],
    ] as const) {
      const r = await gen([...args]);
      assert.is(r.code, 2, args.join(" "));
      assert.match(r.stderr, why);
      assert.match(r.stderr, /usage: koala gen/);
    }
    const missingImport = await gen([everything, "--out", dir]);
    assert.is(missingImport.code, 1, "shared/common.proto is not found without -I");
    assert.match(missingImport.stderr, /koala gen: .*shared\/common\.proto/);
    assert.ok(!existsSync(join(dir, "everything.ts")), "nothing is written when generation fails");
    const help = await gen(["--help"]);
    assert.is(help.code, 0);
    assert.match(help.stdout, /--runtime MODULE/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("the koala bin runs gen", () => {
  const dir = tempDir();
  try {
    const r = spawnSync(process.execPath, [join(root, "bin/koala.js"), "gen", everything, "--out", dir, "-I", include], { encoding: "utf8" });
    assert.is(r.status, 0, r.stderr);
    assert.ok(existsSync(join(dir, "everything.ts")));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test.run();
