/** `koala gen <protos…> --out DIR [-I DIR…] [--runtime MODULE] [--target ts] [--check]`: writes generated TypeScript. */
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { generate } from "./generate.js";

const USAGE = `usage: koala gen <file.proto…> --out DIR [-I DIR]… [--runtime MODULE] [--target ts] [--check]

  --out DIR         where the generated files go (one .ts per .proto, paths as below the include dir)
  -I DIR            add an include folder for imports (repeatable; also -IDIR)
  --runtime MODULE  module the generated code imports koala from (default "koala-rpc";
                    a relative path is taken from the output folder)
  --target ts       the output language; TypeScript is the only one
  --check           write nothing; exit 1 when a generated file is missing or differs
`;

/** Runs `koala gen` with `argv` (the arguments after `gen`); returns the exit code. */
export async function runGen(argv: string[]): Promise<number> {
  const files: string[] = [];
  const includeDirs: string[] = [];
  let out: string | undefined;
  let runtime: string | undefined;
  let check = false;
  for (let i = 0; i < argv.length; i++) {
    let a = argv[i]!;
    // `--name=value` is the same as `--name value`.
    let inline: string | undefined;
    const eq = a.indexOf("=");
    if (a.startsWith("--") && eq > 0) {
      inline = a.slice(eq + 1);
      a = a.slice(0, eq);
    }
    const value = () => {
      const v = inline ?? argv[++i];
      if (v === undefined || v === "") throw new Error(`${a} needs a value`);
      return v;
    };
    try {
      if (a === "--out" || a === "-o") out = value();
      else if (a === "-I" || a === "--include") includeDirs.push(value());
      else if (a.startsWith("-I") && a.length > 2) includeDirs.push(a.slice(2));
      else if (a === "--runtime") runtime = value();
      else if (a === "--target") {
        const target = value();
        if (target !== "ts") throw new Error(`unknown target "${target}" (the only target is "ts")`);
      } else if (a === "--check") check = true;
      else if (a === "--help" || a === "-h") {
        process.stdout.write(USAGE);
        return 0;
      } else if (a.startsWith("-")) throw new Error(`unknown option ${a}`);
      else files.push(a);
    } catch (err) {
      process.stderr.write(`koala gen: ${(err as Error).message}\n${USAGE}`);
      return 2;
    }
  }
  if (files.length === 0 || out === undefined) {
    process.stderr.write(`koala gen: ${files.length === 0 ? "no .proto files given" : "--out is required"}\n${USAGE}`);
    return 2;
  }
  let generated: Map<string, string>;
  try {
    generated = generate(files, { includeDirs, ...(runtime === undefined ? {} : { runtimeImport: runtime }) });
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n`);
    return 1;
  }
  let stale = 0;
  for (const [rel, text] of generated) {
    const path = join(out, rel);
    if (check) {
      let current = "";
      try {
        current = readFileSync(path, "utf8");
      } catch {
        /* missing counts as stale */
      }
      if (current !== text) {
        process.stderr.write(`koala gen --check: ${path} is out of date\n`);
        stale++;
      }
      continue;
    }
    try {
      mkdirSync(dirname(path), { recursive: true });
      writeFileSync(path, text);
    } catch (err) {
      process.stderr.write(`koala gen: cannot write ${path}: ${(err as Error).message}\n`);
      return 1;
    }
    process.stdout.write(`wrote ${path}\n`);
  }
  return stale === 0 ? 0 : 1;
}
