/**
 * The code generator: `.proto` files (parsed by protobufjs) in, TypeScript out — one module
 * per `.proto` file, with an interface and a static `MessageType` per message (no reflection
 * at run time), a TypeScript enum per enum, and per service a `ServiceDefinition`, a typed
 * client type and a handler type.
 *
 * Mapping:
 * - 64-bit integers → bigint; bytes → Uint8Array; enums → numeric TS enums (open: an unknown
 *   number is kept as it is; closed — proto2, `enum_type = CLOSED` — an unknown number goes to
 *   the unknown fields).
 * - A message field, and a scalar field with presence (proto3 `optional`, proto2 `optional` and
 *   `required`) → `T | undefined`. A proto2 `[default = …]` is read through the prototype
 *   (`Type.defaults`), so an unset field reads as its default and presence is an own property,
 *   as in @bufbuild/protobuf. Missing `required` fields fail encoding and decoding.
 * - `repeated` → arrays, scalars packed unless the field says otherwise (decoding accepts both).
 * - `map<K, V>` → a plain object keyed by the key's string form (decimal for 64-bit keys,
 *   `"true"` / `"false"` for bool keys), chosen over `Map` so messages stay plain data.
 * - A oneof → one field holding `{ case: "fieldName", value } | { case: undefined }`.
 * - Groups (proto2 `group`, editions `DELIMITED`) → message fields framed by start / end tags.
 * - Field names are protoc's lowerCamelCase names (`field__name4_` → `fieldName4`).
 * - Fields the type does not declare (newer fields, extensions) are kept in `$unknown` (whole
 *   fields as received) and written back after the known fields.
 * - Nested types are named `Outer_Inner`. A top-level name that is a reserved word or one of
 *   the generated code's local names gets a `$` suffix. Runtime imports that would clash with
 *   a generated name are imported under an alias.
 * - The well-known types that protobufjs bundles go to `google/protobuf/<file>.ts`, one file
 *   per `.proto` as for any other file, so several runs into one folder agree.
 *
 * - An extension (`extend Foo { … }`) → an `Extension<Foo, V>` constant; its values live in
 *   `$unknown` and are read and written with getExtension / setExtension, as in
 *   @bufbuild/protobuf. Custom options (extensions of google.protobuf.*Options) are skipped.
 *
 * Output: every input file, plus every imported file whose types they use (transitively). A
 * file imported only for its custom options produces nothing.
 */
import { dirname, isAbsolute, relative, resolve as resolvePath } from "node:path";
import protobuf from "protobufjs";
import { ErrorCode, KoalaError, check } from "../../errors.js";
import { custom, resolveOptions, type OptionsSpec } from "../../options.js";
import { fieldFacts, ownFields, type FieldFacts } from "./facts.js";
import { loadRoot, stringList } from "./load.js";
import { doc, ident, lineComment, str } from "./quote.js";

/** Options of {@link generate}. */
export interface GenerateOptions {
  /** Folders searched for imported `.proto` files, in order, after the importing file's folder. Default none. */
  includeDirs?: string[];
  /** Module the generated code imports the runtime from; a relative path is relative to the output folder. Default `"koala-rpc"`. */
  runtimeImport?: string;
}

const generateOptionsSpec: OptionsSpec<Required<GenerateOptions>> = {
  includeDirs: stringList,
  runtimeImport: custom("koala-rpc", "a module specifier", (v) => typeof v === "string" && v !== ""),
};

/*
 * Generated text refers to the runtime and to JavaScript globals through markers, replaced
 * once the file's own names are known: a `.proto` may well declare a message named `Client`
 * or `Object`. NUL and SOH never occur in names or comments taken from a `.proto`.
 */
/** The runtime's `wire` namespace. */
const WIRE = "\u0000wire";
/** A type exported by the runtime. */
const rt = (name: string) => `\u0000${name}`;
/** A JavaScript global. */
const gl = (name: string) => `\u0001${name}`;

interface Scalar {
  ts: string;
  def: string;
  wt: number;
  size: (v: string) => string;
  write: string;
  read: string;
  packable: boolean;
  isDefault: (v: string) => string;
}

const varint32 = (v: string) => `${WIRE}.varint32Size(${v})`;
const varint64 = (v: string) => `${WIRE}.varint64Size(${v})`;
const fixed = (n: number) => () => String(n);
const num = (v: string) => `${v} === 0`;
const big = (v: string) => `${v} === 0n`;

const SCALARS: Record<string, Scalar> = {
  double: { ts: "number", def: "0", wt: 1, size: fixed(8), write: "double", read: "double", packable: true, isDefault: (v) => `${v} === 0 && 1 / ${v} > 0` },
  float: { ts: "number", def: "0", wt: 5, size: fixed(4), write: "float", read: "float", packable: true, isDefault: (v) => `${v} === 0 && 1 / ${v} > 0` },
  int32: { ts: "number", def: "0", wt: 0, size: varint32, write: "int32", read: "int32", packable: true, isDefault: num },
  uint32: { ts: "number", def: "0", wt: 0, size: varint32, write: "uint32", read: "uint32", packable: true, isDefault: num },
  sint32: { ts: "number", def: "0", wt: 0, size: (v) => `${WIRE}.sint32Size(${v})`, write: "sint32", read: "sint32", packable: true, isDefault: num },
  fixed32: { ts: "number", def: "0", wt: 5, size: fixed(4), write: "fixed32", read: "fixed32", packable: true, isDefault: num },
  sfixed32: { ts: "number", def: "0", wt: 5, size: fixed(4), write: "sfixed32", read: "sfixed32", packable: true, isDefault: num },
  int64: { ts: "bigint", def: "0n", wt: 0, size: varint64, write: "int64", read: "int64", packable: true, isDefault: big },
  uint64: { ts: "bigint", def: "0n", wt: 0, size: varint64, write: "uint64", read: "uint64", packable: true, isDefault: big },
  sint64: { ts: "bigint", def: "0n", wt: 0, size: (v) => `${WIRE}.sint64Size(${v})`, write: "sint64", read: "sint64", packable: true, isDefault: big },
  fixed64: { ts: "bigint", def: "0n", wt: 1, size: fixed(8), write: "fixed64", read: "fixed64", packable: true, isDefault: big },
  sfixed64: { ts: "bigint", def: "0n", wt: 1, size: fixed(8), write: "sfixed64", read: "sfixed64", packable: true, isDefault: big },
  bool: { ts: "boolean", def: "false", wt: 0, size: fixed(1), write: "bool", read: "bool", packable: true, isDefault: (v) => `${v} === false` },
  string: { ts: "string", def: '""', wt: 2, size: (v) => `${WIRE}.stringSize(${v})`, write: "string", read: "string", packable: false, isDefault: (v) => `${v} === ""` },
  bytes: { ts: gl("Uint8Array"), def: `${WIRE}.EMPTY_BYTES`, wt: 2, size: (v) => `c.bytes(${v})`, write: "bytes", read: "bytes", packable: false, isDefault: (v) => `${v}.byteLength === 0` },
};

const ENUM_SCALAR = SCALARS.int32!;

/** The file of each well-known type protobufjs bundles (bundled types carry no file name): `google.protobuf.Timestamp` → `google/protobuf/timestamp.proto`. */
const BUNDLED = new Map<string, string>();
for (const [file, json] of Object.entries(protobuf.common as unknown as Record<string, { nested?: Record<string, { nested?: Record<string, { nested?: Record<string, unknown> }> }> }>)) {
  for (const name of Object.keys(json.nested?.google?.nested?.protobuf?.nested ?? {})) BUNDLED.set(`.google.protobuf.${name}`, file);
}

/** The bundled file an input path names (`…/google/protobuf/timestamp.proto`), if any. */
function bundledInput(path: string): string | undefined {
  const m = /(?:^|\/)(google\/protobuf\/[^/]+\.proto)$/.exec(path);
  return m !== null && [...BUNDLED.values()].includes(m[1]!) ? m[1] : undefined;
}

/** Identifiers a top-level type may not take: reserved words, and the generated code's own locals and parameters. */
const RESERVED = new Set(
  (
    "break case catch class const continue debugger default delete do else enum export extends false finally for function if import in " +
    "instanceof new null return super switch this throw true try typeof var void while with implements interface let package private " +
    "protected public static yield await any boolean number string symbol never unknown object undefined bigint " +
    "m c w r t e i s v k n l u f key value init end bytes globalThis"
  ).split(" "),
);

function fileOf(obj: protobuf.ReflectionObject): string {
  if (obj.filename) return bundledInput(obj.filename) ?? obj.filename;
  const bundled = BUNDLED.get(obj.fullName);
  if (bundled !== undefined) return bundled;
  return obj.parent ? fileOf(obj.parent) : "unknown.proto";
}

/** Local TypeScript name of a type: its path inside the package joined with `_`. */
function tsName(obj: protobuf.ReflectionObject): string {
  // An extension: named as written, after the message it is declared in, if any.
  if (obj instanceof protobuf.Field) return ident(obj.parent instanceof protobuf.Type ? `${tsName(obj.parent)}_${obj.name}` : RESERVED.has(obj.name) ? `${obj.name}$` : obj.name);
  const parts: string[] = [];
  let o: protobuf.ReflectionObject | null = obj;
  while (o && (o instanceof protobuf.Type || o instanceof protobuf.Enum || o instanceof protobuf.Service)) {
    parts.unshift(o.name);
    o = o.parent;
  }
  const name = parts.join("_");
  return ident(RESERVED.has(name) ? `${name}$` : name);
}

/** A generated description with the `.proto` comment of the object (if any) before it. */
function withProtoComment(generated: string, comment: string | null | undefined): string {
  return comment ? `${comment}\n\n${generated}` : generated;
}

function lowerFirst(s: string): string {
  return s.charAt(0).toLowerCase() + s.slice(1);
}

function outPath(protoFile: string, roots: string[]): string {
  let rel = protoFile;
  if (isAbsolute(protoFile)) {
    const base = roots.find((r) => protoFile.startsWith(r + "/"));
    rel = base ? relative(base, protoFile) : protoFile.split("/").pop()!;
  }
  return rel.replace(/\.proto$/, ".ts");
}

class FileGen {
  readonly lines: string[] = [];
  private readonly imports = new Map<string, Map<string, string>>();
  private readonly local = new Map<string, string>();

  constructor(
    readonly out: string,
    readonly runtime: string,
    private readonly outOf: (obj: protobuf.ReflectionObject) => string,
  ) {}

  /** Declares a name this file exports; two objects wanting the same name are an error. */
  declare(name: string, what: string): void {
    const other = this.local.get(name);
    if (other !== undefined) {
      throw new KoalaError(ErrorCode.INVALID_ARGUMENT, `koala gen: ${what} and ${other} would both be named ${name} in ${this.out}`);
    }
    this.local.set(name, what);
  }

  private taken(name: string): boolean {
    return this.local.has(name) || [...this.imports.values()].some((m) => [...m.values()].includes(name));
  }

  /** The identifier for `obj` in this file, importing it when it lives elsewhere. */
  ref(obj: protobuf.ReflectionObject): string {
    const target = this.outOf(obj);
    const name = tsName(obj);
    if (target === this.out) return name;
    let spec = relative(dirname(this.out), target).replace(/\.ts$/, ".js");
    if (!spec.startsWith(".")) spec = `./${spec}`;
    let names = this.imports.get(spec);
    if (names === undefined) this.imports.set(spec, (names = new Map()));
    let alias = names.get(name);
    if (alias === undefined) {
      alias = this.taken(name) || RUNTIME_NAMES.has(name) ? `${name}$${this.imports.size}` : name;
      names.set(name, alias);
    }
    return alias;
  }

  render(header: string): string {
    const body = this.lines.join("\n");
    const used = new Set<string>();
    for (const m of body.matchAll(/\u0000(\w+)/g)) used.add(m[1]!);
    const alias = (n: string) => (this.taken(n) ? `${n}$` : n);
    const head = [header];
    if (used.has("wire")) head.push(`import { ${alias("wire") === "wire" ? "wire" : "wire as wire$"} } from ${str(this.runtime)};`);
    const types = [...used].filter((n) => n !== "wire").sort();
    if (types.length > 0) head.push(`import type { ${types.map((n) => (alias(n) === n ? n : `${n} as ${alias(n)}`)).join(", ")} } from ${str(this.runtime)};`);
    for (const [spec, names] of [...this.imports].sort(([a], [b]) => (a < b ? -1 : 1))) {
      const list = [...names].map(([n, a]) => (n === a ? n : `${n} as ${a}`)).join(", ");
      head.push(`import { ${list} } from ${str(spec)};`);
    }
    const text = body.replace(/\u0000(\w+)/g, (_, n: string) => alias(n)).replace(/\u0001(\w+)/g, (_, n: string) => (this.taken(n) ? `globalThis.${n}` : n));
    return `${head.join("\n")}\n\n${text}\n`;
  }
}

/** Names the generated code imports from the runtime. */
const RUNTIME_NAMES = new Set(["wire", "MessageType", "PartialMessage", "MethodDefinition", "ServiceDefinition", "Client", "ServiceImplementation"]);

/**
 * Generates TypeScript for `files`. Returns a map from output path (relative, `.ts`) to
 * source text. Throws KOALA_ERR_INVALID_ARGUMENT naming the file and problem on bad input.
 */
export function generate(files: string[], options?: GenerateOptions): Map<string, string> {
  const o = resolveOptions("generate()", generateOptionsSpec, options);
  check(Array.isArray(files) && files.length > 0 && files.every((f) => typeof f === "string"), "generate(): files must be a non-empty array of paths");
  const includeDirs = o.includeDirs.map((d) => resolvePath(d));
  const runtime = o.runtimeImport;
  const inputs = files.map((f) => resolvePath(f));
  const roots = [...includeDirs, ...inputs.map((f) => dirname(f))];
  const root = loadRoot(inputs, includeDirs, "koala gen", true, true);

  const byFile = new Map<string, protobuf.ReflectionObject[]>();
  const collect = (ns: protobuf.NamespaceBase) => {
    for (const o of ns.nestedArray) {
      if (o instanceof protobuf.Type || o instanceof protobuf.Enum || o instanceof protobuf.Service || isExtension(o)) {
        const f = fileOf(o);
        if (!byFile.has(f)) byFile.set(f, []);
        byFile.get(f)!.push(o);
      }
      if (o instanceof protobuf.Namespace || o instanceof protobuf.Type) collect(o);
    }
  };
  collect(root);

  // The input files and, transitively, the files declaring a type they use.
  const wanted = new Set(inputs.map((f) => bundledInput(f) ?? f).filter((f) => byFile.has(f)));
  for (const file of wanted) {
    for (const o of byFile.get(file)!) {
      const used: (protobuf.ReflectionObject | null)[] = [];
      if (o instanceof protobuf.Type) for (const f of ownFields(o)) used.push(f.resolve().resolvedType);
      if (isExtension(o)) used.push(o.resolve().resolvedType, extendee(o));
      if (o instanceof protobuf.Service) {
        for (const m of o.methodsArray) {
          m.resolve();
          used.push(m.resolvedRequestType, m.resolvedResponseType);
        }
      }
      for (const u of used) if (u !== null) wanted.add(fileOf(u));
    }
  }

  const outOf = (obj: protobuf.ReflectionObject) => outPath(fileOf(obj), roots);
  const result = new Map<string, string>();
  for (const [file, objects] of byFile) {
    if (!wanted.has(file)) continue;
    const out = outPath(file, roots);
    // A relative runtime module is relative to the output root: deeper files need more "../".
    const depth = out.split("/").length - 1;
    const fileRuntime = runtime.startsWith(".") ? `${"../".repeat(depth)}${runtime}`.replace(/^(\.\.\/)+\.\//, (m) => m.slice(0, -2)) : runtime;
    const g = new FileGen(out, fileRuntime, outOf);
    for (const o of objects) {
      const what = `${o.fullName.slice(1)}`;
      g.declare(tsName(o) + (o instanceof protobuf.Service ? "Service" : ""), what);
      if (o instanceof protobuf.Service) {
        g.declare(`${tsName(o)}Client`, `${what} (its client type)`);
        g.declare(`${tsName(o)}Handlers`, `${what} (its handler type)`);
      }
    }
    for (const o of objects) {
      if (o instanceof protobuf.Enum) genEnum(g, o);
    }
    for (const o of objects) {
      if (o instanceof protobuf.Type) genMessage(g, o);
    }
    for (const o of objects) {
      if (o instanceof protobuf.Service) genService(g, o);
    }
    for (const o of objects) {
      if (isExtension(o)) genExtension(g, o);
    }
    const source = isAbsolute(file) ? relative(roots.find((r) => file.startsWith(r + "/")) ?? dirname(file), file) : file;
    const header = `// Generated by koala gen from ${lineComment(source)}. Do not edit.`;
    result.set(out, g.render(header));
  }
  return result;
}

function genEnum(g: FileGen, e: protobuf.Enum): void {
  const name = tsName(e);
  g.lines.push(...doc(withProtoComment(`Enum ${e.fullName.slice(1)}.`, e.comment)));
  g.lines.push(`export enum ${name} {`);
  // With aliases (allow_alias) the first name of a number is its name (JSON, protoc): TypeScript's
  // reverse mapping keeps the last one written, so the first name goes after its aliases.
  const entries = Object.entries(e.values);
  const first = new Map<number, string>();
  const last = new Map<number, string>();
  for (const [k, v] of entries) {
    if (!first.has(v)) first.set(v, k);
    last.set(v, k);
  }
  const ordered: [string, number][] = [];
  for (const [k, v] of entries) {
    if (first.get(v) === k && last.get(v) !== k) continue;
    ordered.push([k, v]);
    if (last.get(v) === k && first.get(v) !== k) ordered.push([first.get(v)!, v]);
  }
  for (const [k, v] of ordered) g.lines.push(...doc(e.comments[k] ?? "", "  "), `  ${ident(k)} = ${v},`);
  g.lines.push("}", "");
}

interface FieldInfo extends Omit<FieldFacts, "scalar"> {
  /** How the value is sized, written and read. */
  scalar: Scalar | undefined;
  /** The enum's TypeScript name in this file. */
  enumRef: string | undefined;
  /** The value's TypeScript type. */
  typeRef: string;
  /** The `[default = …]` as a TypeScript expression. */
  explicitDefault: string | undefined;
}

/** A default value as a TypeScript expression. */
function literal(v: NonNullable<FieldFacts["defaultValue"]>): string {
  if (typeof v === "bigint") return `${v}n`;
  if (typeof v === "string") return str(v);
  if (typeof v === "boolean") return String(v);
  if (v instanceof Uint8Array) return `new ${gl("Uint8Array")}([${[...v].join(", ")}])`;
  return Number.isNaN(v) ? "NaN" : v === Infinity ? "Infinity" : v === -Infinity ? "-Infinity" : Object.is(v, -0) ? "-0" : String(v);
}

function fieldInfo(g: FileGen, f: protobuf.Field): FieldInfo {
  let facts: FieldFacts;
  try {
    facts = fieldFacts(f);
  } catch (err) {
    throw new KoalaError(ErrorCode.INVALID_ARGUMENT, `koala gen: ${(err as Error).message}`);
  }
  let scalar = facts.enumType ? ENUM_SCALAR : facts.scalar ? SCALARS[facts.scalar] : undefined;
  if (facts.lax) scalar = { ...scalar!, read: "stringLax" };
  const enumRef = facts.enumType ? g.ref(facts.enumType) : undefined;
  ident(facts.name);
  if (facts.oneof !== undefined) ident(facts.oneof);
  return {
    ...facts,
    scalar,
    enumRef,
    typeRef: facts.message ? g.ref(facts.message) : (enumRef ?? scalar!.ts),
    explicitDefault: facts.defaultValue === undefined ? undefined : literal(facts.defaultValue),
  };
}

function tagBytes(n: number, wt: number): number {
  const v = n * 8 + wt;
  return v < 0x80 ? 1 : v < 0x4000 ? 2 : v < 0x200000 ? 3 : v < 0x10000000 ? 4 : 5;
}

/** A condition true when `v` is one of a closed enum's values. */
function knownEnum(values: number[], v: string): string {
  const lo = values[0]!;
  const hi = values[values.length - 1]!;
  if (hi - lo + 1 === values.length) return lo === hi ? `${v} === ${lo}` : `${v} >= ${lo} && ${v} <= ${hi}`;
  return values.map((x) => `${v} === ${x}`).join(" || ");
}

function mapKeyScalar(m: protobuf.MapField): Scalar {
  return SCALARS[m.keyType]!;
}

function mapKeyTs(m: protobuf.MapField): string {
  const k = mapKeyScalar(m);
  return k.ts === "number" ? "number" : "string";
}

/** Expression turning an object key (a string) into the key field's value. */
function keyFromProp(m: protobuf.MapField, k: string): string {
  const s = mapKeyScalar(m);
  if (s.ts === "bigint") return `${gl("BigInt")}(${k})`;
  if (s.ts === "number") return `${gl("Number")}(${k})`;
  if (s.ts === "boolean") return `${k} === "true"`;
  return k;
}

function genMessage(g: FileGen, t: protobuf.Type): void {
  const name = tsName(t);
  const fields = ownFields(t).map((f) => fieldInfo(g, f));
  const oneofs = new Map<string, FieldInfo[]>();
  for (const fi of fields) if (fi.oneof) (oneofs.get(fi.oneof) ?? oneofs.set(fi.oneof, []).get(fi.oneof)!).push(fi);

  const valueTs = (fi: FieldInfo): string => {
    if (fi.map) {
      const v = fi.message ? g.ref(fi.message) : fi.typeRef;
      return `{ [key: ${mapKeyTs(fi.map)}]: ${v} }`;
    }
    if (fi.repeated) return `${fi.typeRef}[]`;
    return fi.typeRef;
  };

  // Interface.
  g.lines.push(...doc(withProtoComment(`Message ${t.fullName.slice(1)}.`, t.comment)));
  g.lines.push(`export interface ${name} {`);
  const seenOneofs = new Set<string>();
  for (const fi of fields) {
    if (fi.oneof) {
      if (seenOneofs.has(fi.oneof)) continue;
      seenOneofs.add(fi.oneof);
      const cases = oneofs.get(fi.oneof)!.map((o) => `{ case: ${str(o.name)}; value: ${o.typeRef} }`);
      // The members' comments go with the oneof's own: they share one property.
      const memberNotes = oneofs.get(fi.oneof)!.flatMap((o) => (o.f.comment ? [`\`${o.name}\`: ${o.f.comment}`] : []));
      g.lines.push(...doc([fi.f.partOf?.comment ?? "", ...memberNotes].filter((x) => x !== "").join("\n\n"), "  "));
      g.lines.push(`  ${fi.oneof}: ${cases.join(" | ")} | { case: undefined; value?: undefined };`);
    } else if (fi.message && !fi.repeated && !fi.map) g.lines.push(...doc(fi.f.comment ?? "", "  "), `  ${fi.name}?: ${fi.typeRef} | undefined;`);
    else if (fi.explicitDefault !== undefined) {
      const about = `\`[default = ${fi.explicitDefault}]\`: an unset field reads as that (from the prototype); set means an own property.`;
      g.lines.push(...doc(withProtoComment(about, fi.f.comment), "  "));
      g.lines.push(`  ${fi.name}: ${fi.typeRef};`);
    } else if (fi.optional) g.lines.push(...doc(fi.f.comment ?? "", "  "), `  ${fi.name}?: ${fi.typeRef} | undefined;`);
    else g.lines.push(...doc(fi.f.comment ?? "", "  "), `  ${fi.name}: ${valueTs(fi)};`);
  }
  g.lines.push(`  /** Fields this type does not declare (newer fields, extensions), kept from decoding and written back when encoding. */`);
  g.lines.push(`  $unknown?: ${gl("Uint8Array")}[];`);
  g.lines.push("}", "");

  // Defaults used by create() and read().
  const defaults: string[] = [];
  seenOneofs.clear();
  for (const fi of fields) {
    if (fi.oneof) {
      if (!seenOneofs.has(fi.oneof)) defaults.push(`${fi.oneof}: { case: undefined }`);
      seenOneofs.add(fi.oneof);
    } else if (fi.map) defaults.push(`${fi.name}: {}`);
    else if (fi.repeated) defaults.push(`${fi.name}: []`);
    else if (fi.explicitDefault !== undefined) continue;
    else if (fi.message || fi.optional) defaults.push(`${fi.name}: undefined`);
    else defaults.push(`${fi.name}: ${fi.scalar!.def}`);
  }
  const explicit = fields.filter((fi) => fi.explicitDefault !== undefined);
  const required = fields.filter((fi) => fi.required);
  // Unset fields with a `[default]` read it from the prototype, as in @bufbuild/protobuf.
  const fresh = explicit.length > 0 ? `${gl("Object")}.assign(${gl("Object")}.create(${name}.defaults) as ${name}, { ${defaults.join(", ")} })` : `{ ${defaults.join(", ")} }`;

  const S: string[] = []; // sizeOf body
  const W: string[] = []; // write body
  const R: string[] = []; // read cases
  for (let i = 0; i < fields.length; i++) {
    const fi = fields[i]!;
    if (fi.oneof === undefined) {
      genField(fi, S, W, R);
      continue;
    }
    // Members of a oneof next to each other by number share one switch on its case (instead of
    // a test per member). A oneof interleaved with other fields gets a switch per run, so that
    // fields are written in field-number order (the spec's "should", what byte comparisons of
    // encodings need), as protoc's and bufbuild's encoders do.
    const run = [fi];
    while (i + 1 < fields.length && fields[i + 1]!.oneof === fi.oneof) run.push(fields[++i]!);
    const s: string[] = [];
    const w: string[] = [];
    for (const member of run) genField(member, s, w, R);
    const prefix = (member: FieldInfo) => `if (m.${fi.oneof}?.case === ${str(member.name)}) `;
    const cases = (lines: string[]) => lines.map((l, j) => `  case ${str(run[j]!.name)}: ${l.slice(prefix(run[j]!).length)} break;`);
    S.push(`switch (m.${fi.oneof}?.case) {`, ...cases(s), `}`);
    W.push(`switch (m.${fi.oneof}?.case) {`, ...cases(w), `}`);
  }
  // Tags are constants: one byte written as such, longer ones as their varint value.
  for (let i = 0; i < W.length; i++) W[i] = W[i]!.replace(/\.tag\((\d+), (\d)\)/g, (_, f: string, t: string) => (Number(f) * 8 + Number(t) < 0x80 ? `.byte(${Number(f) * 8 + Number(t)})` : `.uint32(${Number(f) * 8 + Number(t)})`));
  S.push(`if (m.$unknown !== undefined) n += ${WIRE}.unknownSize(m.$unknown);`);
  W.push(`if (m.$unknown !== undefined) w.unknown(m.$unknown);`);
  // Required fields: one cheap test on the way, the list of the missing ones only on failure.
  const missing = (decoding: boolean) =>
    `if (${required.map((fi) => (fi.explicitDefault !== undefined ? `!${gl("Object")}.hasOwn(m, ${str(fi.name)})` : `m.${fi.name} === undefined`)).join(" || ")}) ${WIRE}.missingRequired(${str(t.fullName.slice(1))}, m, [${required.map((fi) => str(fi.name)).join(", ")}], ${decoding});`;
  if (required.length > 0) S.unshift(missing(false));

  g.lines.push(`/** Encoding, decoding and defaults of {@link ${name}}. */`);
  g.lines.push(`export const ${name}: ${rt("MessageType")}<${name}>${explicit.length > 0 ? ` & { readonly defaults: { ${explicit.map((fi) => `readonly ${fi.name}: ${fi.typeRef}`).join("; ")} } }` : ""} = {`);
  g.lines.push(`  typeName: ${str(t.fullName.slice(1))},`);
  g.lines.push(`  fields: [`, ...fields.map((fi) => `    ${fieldDesc(fi)},`), `  ],`);
  if (explicit.length > 0) g.lines.push(`  defaults: { ${explicit.map((fi) => `${fi.name}: ${fi.explicitDefault}`).join(", ")} },`);
  g.lines.push(`  create(init?: ${rt("PartialMessage")}<${name}>): ${name} {`);
  g.lines.push(`    const m: ${name} = ${fresh};`);
  g.lines.push(`    if (init !== undefined) {`);
  seenOneofs.clear();
  for (const fi of fields) {
    if (fi.oneof) {
      if (seenOneofs.has(fi.oneof)) continue;
      seenOneofs.add(fi.oneof);
      const msgCases = oneofs.get(fi.oneof)!.filter((o) => o.message);
      if (msgCases.length === 0) g.lines.push(`      if (init.${fi.oneof} !== undefined) m.${fi.oneof} = init.${fi.oneof};`);
      else {
        g.lines.push(`      const ${fi.oneof}$ = init.${fi.oneof};`);
        g.lines.push(`      if (${fi.oneof}$ !== undefined) {`);
        g.lines.push(`        switch (${fi.oneof}$.case) {`);
        for (const o of msgCases) g.lines.push(`          case ${str(o.name)}: m.${fi.oneof} = { case: ${str(o.name)}, value: ${o.typeRef}.create(${fi.oneof}$.value) }; break;`);
        g.lines.push(`          default: m.${fi.oneof} = ${fi.oneof}$ as ${name}[${str(fi.oneof)}];`);
        g.lines.push(`        }`, `      }`);
      }
    } else if (fi.message && !fi.map) {
      if (fi.repeated) g.lines.push(`      if (init.${fi.name} !== undefined) m.${fi.name} = init.${fi.name}.map((v) => ${fi.typeRef}.create(v));`);
      else g.lines.push(`      if (init.${fi.name} !== undefined) m.${fi.name} = ${fi.typeRef}.create(init.${fi.name});`);
    } else if (fi.message && fi.map) {
      g.lines.push(`      if (init.${fi.name} !== undefined) for (const [k, v] of ${gl("Object")}.entries(init.${fi.name})) ${WIRE}.setEntry(m.${fi.name}, k, ${fi.typeRef}.create(v));`);
    } else if (fi.explicitDefault !== undefined) {
      // Only a field set on `init` (an own property): a decoded or created message reads unset ones from its defaults, and a copy must not set them.
      g.lines.push(`      if (${gl("Object")}.hasOwn(init, ${str(fi.name)}) && init.${fi.name} !== undefined) m.${fi.name} = init.${fi.name};`);
    } else g.lines.push(`      if (init.${fi.name} !== undefined) m.${fi.name} = init.${fi.name};`);
  }
  g.lines.push(`      if (init.$unknown !== undefined) m.$unknown = init.$unknown;`);
  g.lines.push(`    }`, `    return m;`, `  },`);
  const usesC = S.some((l) => l.includes("c."));
  g.lines.push(`  sizeOf(m: ${name}, ${usesC ? "c" : "_c"}: ${WIRE}.SizeCounter): number {`);
  g.lines.push(`    let n = 0;`, ...S.map((l) => `    ${l}`), `    return n;`, `  },`);
  g.lines.push(`  write(m: ${name}, w: ${WIRE}.ProtoWriter): void {`, ...W.map((l) => `    ${l}`), `  },`);
  g.lines.push(`  read(r: ${WIRE}.ProtoReader, end: number, into?: ${name}, group?: number): ${name} {`);
  g.lines.push(`    const m: ${name} = into ?? ${fresh};`);
  g.lines.push(`    while (r.pos < end) {`);
  g.lines.push(`      const p = r.pos;`);
  g.lines.push(`      const t = r.tag();`);
  if (R.length > 0) {
    g.lines.push(`      switch (t >>> 3) {`, ...R.map((l) => `        ${l}`), `      }`);
  }
  // Unknown fields are kept; the end tag of the group being read ends it.
  g.lines.push(`      if (r.other(m, t, p, group)) {`, `        group = undefined;`, `        break;`, `      }`, `    }`, `    if (group !== undefined) r.unterminated(group);`);
  if (required.length > 0) g.lines.push(`    ${missing(true)}`);
  g.lines.push(`    return m;`, `  },`);
  g.lines.push(`  encode(m: ${rt("PartialMessage")}<${name}>): ${gl("Uint8Array")} {`, `    return ${WIRE}.encodeToBytes(${name}, m as ${name});`, `  },`);
  g.lines.push(`  decode(bytes: ${gl("Uint8Array")}): ${name} {`, `    return ${WIRE}.decodeWith(${name}, bytes);`, `  },`);
  g.lines.push(`  toJson(m: ${name}, options?: ${WIRE}.ToJsonOptions): ${WIRE}.JsonValue {`, `    return ${WIRE}.toJson(${name}, m, options);`, `  },`);
  g.lines.push(`  fromJson(json: ${WIRE}.JsonValue, options?: ${WIRE}.FromJsonOptions): ${name} {`, `    return ${WIRE}.fromJson(${name}, json, options);`, `  },`);
  g.lines.push(`};`, "");
}

/** The field's entry in the generated `fields` table (see FieldDesc). */
function fieldDesc(fi: FieldInfo): string {
  const f = fi.f;
  const parts = [`no: ${fi.number}`, `name: ${str(fi.name)}`, `json: ${str(fi.jsonName)}`, `proto: ${str(fi.protoName)}`];
  if (fi.message) parts.push(`kind: "message"`, `T: () => ${fi.typeRef}`);
  else if (fi.enumRef) parts.push(`kind: "enum"`, `T: () => ${fi.enumRef}`, `enumType: ${str(f.resolvedType!.fullName.slice(1))}`);
  else parts.push(`kind: "scalar"`, `type: ${str(f.type)}`);
  if (fi.map) parts.push(`map: ${str(fi.map.keyType)}`);
  else if (fi.repeated) parts.push(`repeated: true`);
  if (fi.oneof) parts.push(`oneof: ${str(fi.oneof)}`);
  if (fi.optional || fi.explicitDefault !== undefined) parts.push(`opt: true`);
  return `{ ${parts.join(", ")} }`;
}

function genField(fi: FieldInfo, S: string[], W: string[], R: string[]): void {
  const n = fi.number;
  if (fi.map) return genMap(fi, S, W, R);
  const acc = fi.oneof ? `m.${fi.oneof}.value` : `m.${fi.name}`;
  const guardOneof = fi.oneof ? `m.${fi.oneof}?.case === ${str(fi.name)}` : undefined;
  if (fi.message) {
    const T = fi.typeRef;
    // A length-prefixed message counts a slot for its length; a group is framed by start and end tags.
    const sizeOne = (v: string) =>
      fi.group
        ? `{ c.enter(); n += ${2 * tagBytes(n, 3)} + ${T}.sizeOf(${v}, c); c.leave(); }`
        : `{ const i = c.nested(); const s = ${T}.sizeOf(${v}, c); c.done(i, s); n += ${tagBytes(n, 2)} + ${WIRE}.varint32Size(s) + s; }`;
    const writeOne = (v: string) => (fi.group ? `{ w.tag(${n}, 3); ${T}.write(${v}, w); w.tag(${n}, 4); }` : `{ w.tag(${n}, 2).uint32(w.nextSize()); ${T}.write(${v}, w); }`);
    // Occurrences of a singular message field merge into one (the protobuf spec), in a oneof too.
    const readOne = (into: string) => (fi.group ? `{ r.enterGroup(); const v = ${T}.read(r, end, ${into}, ${n});` : `{ const e = r.enter(); const v = ${T}.read(r, e, ${into}); r.leave(e);`);
    const wt = fi.group ? 3 : 2;
    if (fi.repeated) {
      S.push(`if (m.${fi.name} !== undefined) for (const v of m.${fi.name}) ${sizeOne("v")}`);
      W.push(`if (m.${fi.name} !== undefined) for (const v of m.${fi.name}) ${writeOne("v")}`);
      R.push(`case ${n}: if ((t & 7) === ${wt}) ${readOne("undefined")} m.${fi.name}.push(v); continue; } break;`);
    } else {
      const cond = guardOneof ?? `${acc} !== undefined`;
      S.push(`if (${cond}) ${sizeOne(acc)}`);
      W.push(`if (${cond}) ${writeOne(acc)}`);
      const into = fi.oneof ? `m.${fi.oneof}.case === ${str(fi.name)} ? m.${fi.oneof}.value : undefined` : `m.${fi.name}`;
      const assign = fi.oneof ? `m.${fi.oneof} = { case: ${str(fi.name)}, value: v }` : `m.${fi.name} = v`;
      R.push(`case ${n}: if ((t & 7) === ${wt}) ${readOne(into)} ${assign}; continue; } break;`);
    }
    return;
  }
  const s = fi.scalar!;
  const tb = tagBytes(n, s.wt);
  const read = fi.enumRef ? `r.${s.read}() as ${fi.enumRef}` : `r.${s.read}()`;
  if (fi.repeated) {
    if (s.packable && fi.packed) {
      const ptb = tagBytes(n, 2);
      const fixedSize = s.size("v");
      const total = /^\d+$/.test(fixedSize) ? `const l = m.${fi.name}.length * ${fixedSize};` : `let l = 0; for (const v of m.${fi.name}) l += ${fixedSize};`;
      S.push(`if (m.${fi.name} !== undefined && m.${fi.name}.length > 0) { const i = c.slot(); ${total} c.setSlot(i, l); n += ${ptb} + ${WIRE}.varint32Size(l) + l; }`);
      W.push(`if (m.${fi.name} !== undefined && m.${fi.name}.length > 0) { w.tag(${n}, 2).uint32(w.nextSize()); for (const v of m.${fi.name}) w.${s.write}(v); }`);
    } else {
      const each = s.size("v");
      S.push(/^\d+$/.test(each) ? `if (m.${fi.name} !== undefined) n += m.${fi.name}.length * ${tb + Number(each)};` : `if (m.${fi.name} !== undefined) for (const v of m.${fi.name}) n += ${tb} + ${each};`);
      W.push(`if (m.${fi.name} !== undefined) for (const v of m.${fi.name}) w.tag(${n}, ${s.wt}).${s.write}(v);`);
    }
    if (fi.closed) {
      // A value a closed enum does not know goes to the unknown fields, one varint field each.
      const one = `{ const v = r.int32(); if (${knownEnum(fi.closed, "v")}) m.${fi.name}.push(v as ${fi.enumRef}); else r.keepVarint(m, ${n}, v); }`;
      R.push(`case ${n}: if ((t & 7) === 2) { const e = r.lengthEnd(); while (r.pos < e) ${one} r.expectEnd(e); continue; } if ((t & 7) === 0) ${one.slice(0, -1)} continue; } break;`);
    } else if (s.packable) {
      // A packable field is read in either form, whichever the writer chose.
      R.push(
        `case ${n}: if ((t & 7) === 2) { const e = r.lengthEnd(); while (r.pos < e) m.${fi.name}.push(${read}); r.expectEnd(e); continue; } if ((t & 7) === ${s.wt}) { m.${fi.name}.push(${read}); continue; } break;`,
      );
    } else {
      R.push(`case ${n}: if ((t & 7) === ${s.wt}) { m.${fi.name}.push(${read}); continue; } break;`);
    }
    return;
  }
  // Encoders accept partial messages (a handler may return `{ message }` alone): absent = default.
  const cond =
    guardOneof ??
    (fi.explicitDefault !== undefined
      ? `${gl("Object")}.hasOwn(m, ${str(fi.name)}) && ${acc} !== undefined`
      : fi.optional
        ? `${acc} !== undefined`
        : `${acc} !== undefined && !(${s.isDefault(acc)})`);
  const val = fi.oneof ? `(${acc} as ${fi.typeRef})` : fi.optional && fi.explicitDefault === undefined ? `${acc}!` : acc;
  S.push(`if (${cond}) n += ${tb} + ${s.size(val)};`);
  W.push(`if (${cond}) w.tag(${n}, ${s.wt}).${s.write}(${val});`);
  const assign = (v: string) => (fi.oneof ? `m.${fi.oneof} = { case: ${str(fi.name)}, value: ${v} }` : `m.${fi.name} = ${v}`);
  if (fi.closed) {
    R.push(`case ${n}: if ((t & 7) === 0) { const v = r.int32(); if (${knownEnum(fi.closed, "v")}) ${assign(`v as ${fi.enumRef}`)}; else r.keep(m, p); continue; } break;`);
  } else R.push(`case ${n}: if ((t & 7) === ${s.wt}) { ${assign(read)}; continue; } break;`);
}

function genMap(fi: FieldInfo, S: string[], W: string[], R: string[]): void {
  const m = fi.map!;
  const n = fi.number;
  const k = mapKeyScalar(m);
  const ktb = tagBytes(1, k.wt);
  const key = keyFromProp(m, "k");
  const ptb = tagBytes(n, 2);
  const keyDefault = k.ts === "bigint" ? "0n" : k.ts === "number" ? "0" : k.ts === "boolean" ? "false" : '""';
  const keyProp = k.ts === "string" || k.ts === "number" ? "key" : `${gl("String")}(key)`;
  // A string key may be "__proto__": set through the runtime so it stays an ordinary entry.
  const store = (value: string) => (k.ts === "string" ? `${WIRE}.setEntry(m.${fi.name}, key, ${value});` : `m.${fi.name}[${keyProp}] = ${value};`);
  const entries = `${gl("Object")}.entries(m.${fi.name} ?? {})`;
  // The size pass names only what it uses (a bool key or a fixed-size value has a fixed size).
  const pattern = (...sizes: string[]) => {
    const useK = sizes.some((x) => /\bk\b/.test(x));
    const useV = sizes.some((x) => /\bv\b/.test(x));
    return useK && useV ? "[k, v]" : useK ? "[k]" : useV ? "[, v]" : "[]";
  };
  if (fi.message) {
    const T = fi.typeRef;
    S.push(
      `for (const [${/\bk\b/.test(k.size(key)) ? "k" : ""}, v] of ${entries}) { const i = c.nested(); const s = ${T}.sizeOf(v, c); c.done(i, s); const e = ${ktb} + ${k.size(key)} + 1 + ${WIRE}.varint32Size(s) + s; n += ${ptb} + ${WIRE}.varint32Size(e) + e; }`,
    );
    W.push(
      `for (const [k, v] of ${entries}) { const s = w.nextSize(); const e = ${ktb} + ${k.size(key)} + 1 + ${WIRE}.varint32Size(s) + s; w.tag(${n}, 2).uint32(e).tag(1, ${k.wt}).${k.write}(${key}).tag(2, 2).uint32(s); ${T}.write(v, w); }`,
    );
    R.push(
      `case ${n}: if ((t & 7) === 2) { const e = r.lengthEnd(); let key: ${k.ts} = ${keyDefault}; let value: ${T} | undefined; while (r.pos < e) { const u = r.tag(); if (u === ${(1 << 3) | k.wt}) key = r.${k.read}(); else if (u === ${(2 << 3) | 2}) { const f = r.enter(); value = ${T}.read(r, f, value); r.leave(f); } else r.skip(u & 7, u >>> 3); } r.expectEnd(e); ${store(`value ?? ${T}.create()`)} continue; } break;`,
    );
    return;
  }
  const v = fi.scalar!;
  const sizeV = v.write === "bytes" ? (x: string) => `${WIRE}.bytesSize(${x})` : v.size;
  const vtb = tagBytes(2, v.wt);
  const sizeExpr = `${ktb} + ${k.size(key)} + ${vtb} + ${v.size("v")}`;
  S.push(`for (const ${pattern(k.size(key), v.size("v"))} of ${entries}) { const e = ${sizeExpr}; n += ${ptb} + ${WIRE}.varint32Size(e) + e; }`);
  W.push(
    `for (const [k, v] of ${entries}) { const e = ${ktb} + ${k.size(key)} + ${vtb} + ${sizeV("v")}; w.tag(${n}, 2).uint32(e).tag(1, ${k.wt}).${k.write}(${key}).tag(2, ${v.wt}).${v.write}(v); }`,
  );
  const vts = fi.enumRef ?? v.ts;
  // An entry whose value a closed enum does not know goes to the unknown fields whole (the spec; protoc's runtimes do so).
  const closedEntry = fi.closed ? `if (!(${knownEnum(fi.closed, "value")})) { r.keep(m, p); continue; } ` : "";
  const read = fi.enumRef ? `r.${v.read}() as ${fi.enumRef}` : `r.${v.read}()`;
  R.push(
    `case ${n}: if ((t & 7) === 2) { const e = r.lengthEnd(); let key: ${k.ts} = ${keyDefault}; let value: ${vts} = ${v.def}; while (r.pos < e) { const u = r.tag(); if (u === ${(1 << 3) | k.wt}) key = r.${k.read}(); else if (u === ${(2 << 3) | v.wt}) value = ${read}; else r.skip(u & 7, u >>> 3); } r.expectEnd(e); ${closedEntry}${store("value")} continue; } break;`,
  );
}

/**
 * Whether `o` is an extension field to generate: declared with `extend`, of a message other
 * than the descriptor's option messages (custom options describe the schema, not data).
 */
function isExtension(o: protobuf.ReflectionObject): o is protobuf.Field {
  if (!(o instanceof protobuf.Field) || o.extend === undefined) return false;
  const target = extendee(o);
  return target !== null && !/^\.google\.protobuf\.\w*Options$/.test(target.fullName);
}

/** The message an extension field extends. */
function extendee(f: protobuf.Field): protobuf.Type | null {
  const sister = (f as unknown as { extensionField?: protobuf.Field | null }).extensionField;
  return sister?.parent instanceof protobuf.Type ? sister.parent : null;
}

function genExtension(g: FileGen, f: protobuf.Field): void {
  const fi = fieldInfo(g, f);
  const name = tsName(f);
  const target = g.ref(extendee(f)!);
  const value = fi.repeated ? `${fi.typeRef}[]` : fi.typeRef;
  const extras: string[] = [];
  if (fi.packed) extras.push("packed: true");
  if (fi.group) extras.push("group: true");
  if (fi.closed) extras.push(`closed: [${fi.closed.join(", ")}]`);
  if (fi.lax) extras.push("lax: true");
  if (fi.explicitDefault !== undefined) extras.push(`defaultValue: ${fi.explicitDefault}`);
  const desc = fieldDesc({ ...fi, jsonName: `[${f.fullName.slice(1)}]` });
  g.lines.push(...doc(withProtoComment(`Extension ${f.fullName.slice(1)} of {@link ${target}} (read and write it with getExtension / setExtension).`, f.comment)));
  g.lines.push(`export const ${name}: ${WIRE}.Extension<${target}, ${value}> = {`);
  g.lines.push(`  typeName: ${str(f.fullName.slice(1))},`, `  extendee: ${str(extendee(f)!.fullName.slice(1))},`);
  g.lines.push(`  field: ${extras.length > 0 ? desc.replace(/ }$/, `, ${extras.join(", ")} }`) : desc},`);
  g.lines.push(`};`, "");
}

function genService(g: FileGen, s: protobuf.Service): void {
  const name = tsName(s);
  const full = s.fullName.slice(1);
  g.lines.push(...doc(withProtoComment(`Service ${full}.`, s.comment)));
  g.lines.push(`export const ${name}Service = {`);
  g.lines.push(`  typeName: ${str(full)},`);
  g.lines.push(`  methods: {`);
  for (const m of s.methodsArray) {
    m.resolve();
    const input = g.ref(m.resolvedRequestType!);
    const output = g.ref(m.resolvedResponseType!);
    const kind = m.requestStream ? (m.responseStream ? "bidi_streaming" : "client_streaming") : m.responseStream ? "server_streaming" : "unary";
    const local = lowerFirst(m.name);
    g.lines.push(
      ...doc(m.comment ?? "", "    "),
      `    ${local}: { name: ${str(m.name)}, localName: ${str(local)}, path: ${str(`/${full}/${m.name}`)}, kind: ${str(kind)}, input: ${input}, output: ${output} } as ${rt("MethodDefinition")}<${input}, ${output}, ${str(kind)}>,`,
    );
  }
  g.lines.push(`  },`);
  g.lines.push(`} as const satisfies ${rt("ServiceDefinition")};`, "");
  g.lines.push(...doc(`A typed client of ${full}.`));
  g.lines.push(`export type ${name}Client = ${rt("Client")}<typeof ${name}Service>;`, "");
  g.lines.push(...doc(`The handlers a server implements for ${full}.`));
  g.lines.push(`export type ${name}Handlers = ${rt("ServiceImplementation")}<typeof ${name}Service>;`, "");
}
