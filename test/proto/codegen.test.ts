/**
 * koala gen: generated code compared byte for byte with the golden copies under test/golden
 * (KOALA_UPDATE_GOLDEN=1 rewrites them; tsc type-checks them with the project's strict
 * settings), the examples' generated code kept up to date, service definitions, and clear
 * errors for what the generator refuses. Encoding and decoding are tested in wire.test.ts.
 */
import { test } from "uvu";
import * as assert from "uvu/assert";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { generate } from "koala-rpc/codegen";
import { Everything, Everything_Nested, KindsService, type KindsClient, type KindsHandlers } from "../golden/everything.js";
import { Empty } from "../golden/google/protobuf/empty.js";
import { NamingService } from "../golden/edge/names.js";
import { thrownCode } from "../helpers.js";

const root = new URL("../..", import.meta.url).pathname;
const protos = join(root, "test/fixtures/protos");
const goldenDir = join(root, "test/golden");

/** Compares generated files with the golden ones below `dir`, or rewrites them when asked to. */
function checkGolden(out: Map<string, string>, dir: string): void {
  for (const [rel, text] of out) {
    const path = join(dir, rel);
    if (process.env.KOALA_UPDATE_GOLDEN === "1") {
      mkdirSync(dirname(path), { recursive: true });
      writeFileSync(path, text);
    }
    let golden = "";
    try {
      golden = readFileSync(path, "utf8");
    } catch {
      assert.unreachable(`${path} is missing: run KOALA_UPDATE_GOLDEN=1 npm run test:unit -- codegen`);
    }
    assert.fixture(text, golden, `${rel} differs from the golden copy (KOALA_UPDATE_GOLDEN=1 rewrites it)`);
  }
}

test("every field kind, imports across files and an include path: matches the golden copy", () => {
  const out = generate([join(protos, "app/everything.proto")], { includeDirs: [join(protos, "include")], runtimeImport: "../../src/index.js" });
  assert.equal([...out.keys()].sort(), ["everything.ts", "google/protobuf/duration.ts", "google/protobuf/empty.ts", "google/protobuf/timestamp.ts", "google/protobuf/wrappers.ts", "shared/common.ts"]);
  const everything = out.get("everything.ts")!;
  assert.match(everything, /^import \{ Color, Money \} from "\.\/shared\/common\.js";$/m, "relative imports with the .js suffix");
  assert.match(out.get("shared/common.ts")!, /^import \{ wire \} from "\.\.\/\.\.\/\.\.\/src\/index\.js";$/m, "a deeper file reaches the runtime with more ../");
  checkGolden(out, goldenDir);
});

test("proto2, clashing names, Struct/Any and custom options: match the golden copy", () => {
  const out = generate([join(protos, "edge/names.proto")], { runtimeImport: "../../../src/index.js" });
  // descriptor.proto is loaded for the custom option but nothing uses its types: no output for it.
  assert.equal([...out.keys()].sort(), ["google/protobuf/any.ts", "google/protobuf/struct.ts", "legacy.ts", "names.ts"]);
  const names = out.get("names.ts")!;
  assert.match(names, /^import \{ wire as wire\$ \} from /m, "the runtime namespace is aliased when a message is named wire");
  assert.match(names, /import type \{ Client as Client\$, MessageType as MessageType\$, /, "runtime types are aliased, not the user's");
  assert.match(names, /^export interface value\$ \{$/m, "a name the generated code uses itself gets a $ suffix");
  assert.match(names, /globalThis\.Object\.entries/, "globals shadowed by a message are reached through globalThis");
  assert.match(out.get("legacy.ts")!, /^export const extra: wire\.Extension<Legacy, number> = \{$/m, "an extension of a message is generated");
  assert.not.match(out.get("legacy.ts")!, /hint/, "a custom option (an extension of FieldOptions) is not");
  checkGolden(out, join(goldenDir, "edge"));
});

test("proto3, proto2 (groups, defaults, closed enums), editions 2023, every well-known type and the conformance messages: match the golden copy", () => {
  const files = ["spec3", "spec2", "editions", "wkt", "test_messages_proto2", "test_messages_proto3"];
  const out = generate(files.map((f) => join(protos, `spec/${f}.proto`)), { runtimeImport: "../../../src/index.js" });
  assert.equal([...out.keys()].filter((k) => !k.startsWith("google/")).sort(), files.map((f) => `${f}.ts`).sort());
  checkGolden(out, join(goldenDir, "spec"));
});

test("hostile text from a .proto (comment closers, quotes, backslashes, `${`, line separators): matches the golden copy", () => {
  const out = generate([join(protos, "hostile/hostile.proto")], { runtimeImport: "../../../src/index.js" });
  assert.equal([...out.keys()], ["hostile.ts"]);
  checkGolden(out, join(goldenDir, "hostile"));
});

test("a well-known-type file alone generates; two runs sharing an output folder agree on google/protobuf/*", () => {
  const ts = generate([join(root, "node_modules/protobufjs/google/protobuf/api.proto")]);
  assert.ok([...ts.keys()].includes("google/protobuf/api.ts") || [...ts.keys()].includes("api.ts"), [...ts.keys()].join());
  const dir = mkdtempSync(join(tmpdir(), "koala-gen-wkt-"));
  try {
    const stamp = join(dir, "google/protobuf/timestamp.proto");
    mkdirSync(dirname(stamp), { recursive: true });
    writeFileSync(stamp, 'syntax = "proto3"; package google.protobuf; message Timestamp { int64 seconds = 1; int32 nanos = 2; }');
    const alone = generate([stamp]);
    assert.equal([...alone.keys()], ["google/protobuf/timestamp.ts"]);
    assert.match(alone.get("google/protobuf/timestamp.ts")!, /export interface Timestamp \{/);
    // Two .proto files each using a different well-known type: each WKT has its own output file.
    const a = generate([join(protos, "app/everything.proto")], { includeDirs: [join(protos, "include")] });
    const b = generate([join(protos, "edge/names.proto")]);
    for (const [rel, text] of b) if (a.has(rel)) assert.is(a.get(rel), text, rel);
    assert.ok(a.has("google/protobuf/timestamp.ts") && b.has("google/protobuf/struct.ts") && !a.has("google/protobuf/struct.ts"));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("the examples' generated code is up to date", () => {
  for (const [proto, dir, runtime] of [
    ["examples/hello/hello.proto", "examples/hello/gen", "../../../src/index.js"],
    ["examples/kv/kv.proto", "examples/kv/gen", "../../../src/index.js"],
    ["examples/backends/gateway.proto", "examples/backends/gen", "../../../src/index.js"],
    ["test/fixtures/rpc/echo.proto", "test/fixtures/rpc/gen", "../../../../src/index.js"],
    ["src/health/health.proto", "src/health/gen", "../runtime.js"],
  ] as const) {
    for (const [rel, text] of generate([join(root, proto)], { runtimeImport: runtime })) {
      assert.fixture(readFileSync(join(root, dir, rel), "utf8"), text, `${dir}/${rel}: run npm run gen:examples`);
    }
  }
});

test("service definitions carry names, paths, call kinds and message types", () => {
  const m = KindsService.methods;
  assert.is(KindsService.typeName, "app.v1.Kinds");
  assert.equal(
    Object.values(m).map((x) => [x.name, x.localName, x.path, x.kind]),
    [
      ["Unary", "unary", "/app.v1.Kinds/Unary", "unary"],
      ["ServerStream", "serverStream", "/app.v1.Kinds/ServerStream", "server_streaming"],
      ["ClientStream", "clientStream", "/app.v1.Kinds/ClientStream", "client_streaming"],
      ["Bidi", "bidi", "/app.v1.Kinds/Bidi", "bidi_streaming"],
    ],
  );
  assert.is(m.unary.input, Everything);
  assert.is(m.clientStream.output, Empty);
  assert.is(m.bidi.input, Everything_Nested);
  assert.is(NamingService.methods.chat.kind, "bidi_streaming");
  assert.is(Everything.typeName, "app.v1.Everything");
  assert.is(Everything_Nested.typeName, "app.v1.Everything.Nested");
});

test("the generated client and handler types have the four call shapes", () => {
  // Checked by tsc: each assignment fails to compile if a generated type has the wrong shape.
  const handlers: KindsHandlers = {
    unary: (req, ctx) => (void ctx, Everything.create({ fString: req.fString })),
    serverStream: async function* (req) {
      yield req;
    },
    clientStream: async (reqs) => {
      for await (const _ of reqs) void _;
      return {};
    },
    bidi: async function* (reqs) {
      for await (const r of reqs) yield r;
    },
  };
  const call = async (client: KindsClient) => {
    const one: Everything = await client.unary({ fString: "partial is fine" });
    for await (const r of client.serverStream(Everything.create())) void (r satisfies Everything);
    await client.clientStream([Everything.create()]);
    for await (const r of client.bidi([Everything_Nested.create()])) void (r satisfies Everything_Nested);
    return one;
  };
  assert.type(handlers.unary, "function");
  assert.type(call, "function");
});

test("refused input is a clear KOALA_ERR_INVALID_ARGUMENT naming the file or field", () => {
  const dir = mkdtempSync(join(tmpdir(), "koala-gen-"));
  try {
    const write = (name: string, text: string) => (writeFileSync(join(dir, name), text), join(dir, name));
    assert.throws(() => generate([join(protos, "nope.proto")]), /koala gen: .*nope\.proto/);
    assert.throws(() => generate([write("syntax.proto", 'syntax = "proto3"; message {')]), /koala gen: .*syntax\.proto|illegal/);
    assert.throws(() => generate([write("unknown.proto", 'syntax = "proto3"; message A { Missing m = 1; }')]), /koala gen: .*Missing/);
    const clash = write("clash.proto", 'syntax = "proto3"; package c; message Foo {} message BarService {} service Bar { rpc X (Foo) returns (Foo); }');
    assert.throws(() => generate([clash]), /c\.Bar and c\.BarService would both be named BarService in clash\.ts/);
    const nested = write("nested.proto", 'syntax = "proto3"; package n; message A { message B {} } message A_B {}');
    assert.throws(() => generate([nested]), /n\.A_B and n\.A\.B would both be named A_B|n\.A\.B and n\.A_B would both be named A_B/);
    assert.is(thrownCode(() => generate([clash])), "KOALA_ERR_INVALID_ARGUMENT");
    assert.throws(() => generate([clash], { includeDir: [dir] } as never), /unknown option "includeDir" \(did you mean "includeDirs"\?\)/);
    assert.throws(() => generate([]), /files must be a non-empty array/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a file with enums only imports nothing it does not use", () => {
  const dir = mkdtempSync(join(tmpdir(), "koala-gen-"));
  try {
    writeFileSync(join(dir, "enums.proto"), 'syntax = "proto3"; package e; enum E { E_UNSPECIFIED = 0; ONE = 1; }');
    const out = generate([join(dir, "enums.proto")]);
    assert.is(out.get("enums.ts"), "// Generated by koala gen from enums.proto. Do not edit.\n\n/** Enum e.E. */\nexport enum E {\n  E_UNSPECIFIED = 0,\n  ONE = 1,\n}\n\n");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test.run();
