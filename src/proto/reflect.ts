/**
 * Message types interpreted from a field table at run time (for `.proto` files loaded without
 * codegen): the same message shape and the same bytes as generated code — oneofs as
 * `{ case, value }`, defaults instead of null, bigint for 64-bit integers, maps as plain
 * objects, `$unknown` kept — on the same wire reader and writer, merging, nesting limit,
 * proto2 defaults, required fields, closed enums and groups included. Slower than generated
 * code (a loop over the table instead of straight-line code), never different.
 */
import type { FieldDesc, MessageType, PartialMessage, ScalarName } from "./definition.js";
import { fromJson, toJson } from "./json.js";
import { EMPTY_BYTES, bytesSize, missingRequired, setEntry } from "./wire/helpers.js";
import { decodeWith, type ProtoReader } from "./wire/reader.js";
import { encodeToBytes, sint32Size, sint64Size, stringSize, tagSize, unknownSize, varint32Size, varint64Size, type ProtoWriter, type SizeCounter } from "./wire/writer.js";

/** A message of a run-time loaded type: plain data, shaped as generated code shapes it. */
export type LoadedMessage = { [field: string]: any };

/** A field as the interpreted codec needs it: the JSON table's entry and how it is encoded. */
export interface CodecField extends FieldDesc {
  /** Repeated scalars written packed. */
  readonly packed?: boolean;
  /** A message field written as a group (start and end tags). */
  readonly group?: boolean;
  /** The values of a closed enum, sorted. */
  readonly closed?: readonly number[];
  /** A required field. */
  readonly required?: boolean;
  /** A string not validated as UTF-8. */
  readonly lax?: boolean;
  /** The `[default = …]` value. */
  readonly defaultValue?: unknown;
}

const WIRE_TYPE: Record<ScalarName, number> = {
  double: 1,
  float: 5,
  int32: 0,
  int64: 0,
  uint32: 0,
  uint64: 0,
  sint32: 0,
  sint64: 0,
  fixed32: 5,
  fixed64: 1,
  sfixed32: 5,
  sfixed64: 1,
  bool: 0,
  string: 2,
  bytes: 2,
};

function zero(t: ScalarName): unknown {
  return t === "string" ? "" : t === "bytes" ? EMPTY_BYTES : t === "bool" ? false : t.endsWith("64") && t !== "double" ? 0n : 0;
}

function isZero(t: ScalarName, v: unknown): boolean {
  if (t === "bytes") return (v as Uint8Array).byteLength === 0;
  if (t === "double" || t === "float") return v === 0 && 1 / (v as number) > 0;
  return v === zero(t);
}

/** Bytes a scalar value takes (tag excluded). */
function valueSize(t: ScalarName, v: any, c: SizeCounter): number {
  switch (t) {
    case "double":
    case "fixed64":
    case "sfixed64":
      return 8;
    case "float":
    case "fixed32":
    case "sfixed32":
      return 4;
    case "bool":
      return 1;
    case "int32":
    case "uint32":
      return varint32Size(v);
    case "sint32":
      return sint32Size(v);
    case "int64":
    case "uint64":
      return varint64Size(v);
    case "sint64":
      return sint64Size(v);
    case "string":
      return stringSize(v);
    case "bytes":
      return c.bytes(v);
  }
}

const scalarOf = (f: CodecField): ScalarName => f.type ?? "int32";
const messageOf = (f: CodecField) => f.T!() as MessageType<LoadedMessage>;

/** A MessageType over `fields` (sorted by number; `T` thunks may refer to types made later). */
export function reflectMessageType(typeName: string, fields: readonly CodecField[]): MessageType<LoadedMessage> {
  const byNumber = new Map(fields.map((f) => [f.no, f]));
  const required = fields.filter((f) => f.required).map((f) => f.name);
  const withDefaults = fields.filter((f) => f.defaultValue !== undefined);
  const defaults = withDefaults.length > 0 ? Object.fromEntries(withDefaults.map((f) => [f.name, f.defaultValue])) : undefined;

  const fresh = (): LoadedMessage => {
    const m: LoadedMessage = defaults === undefined ? {} : Object.create(defaults);
    for (const f of fields) {
      if (f.oneof !== undefined) m[f.oneof] ??= { case: undefined };
      else if (f.map !== undefined) m[f.name] = {};
      else if (f.repeated) m[f.name] = [];
      else if (f.defaultValue !== undefined) continue;
      else m[f.name] = f.kind === "message" || f.opt ? undefined : f.kind === "enum" ? 0 : zero(scalarOf(f));
    }
    return m;
  };

  const checkRequired = (m: LoadedMessage, decoding: boolean) => {
    if (required.some((n) => !Object.hasOwn(m, n) || m[n] === undefined)) missingRequired(typeName, m, required, decoding);
  };

  /** Size of one value of `f` with its tag. */
  const sizeOne = (f: CodecField, v: any, c: SizeCounter): number => {
    if (f.kind === "message") {
      if (f.group) {
        c.enter();
        const s = messageOf(f).sizeOf(v, c);
        c.leave();
        return 2 * tagSize(f.no, 3) + s;
      }
      const i = c.nested();
      const s = messageOf(f).sizeOf(v, c);
      c.done(i, s);
      return tagSize(f.no, 2) + varint32Size(s) + s;
    }
    const t = scalarOf(f);
    return tagSize(f.no, WIRE_TYPE[t]) + valueSize(t, v, c);
  };

  const writeOne = (f: CodecField, v: any, w: ProtoWriter): void => {
    if (f.kind === "message") {
      if (f.group) {
        w.tag(f.no, 3);
        messageOf(f).write(v, w);
        w.tag(f.no, 4);
      } else {
        w.tag(f.no, 2).uint32(w.nextSize());
        messageOf(f).write(v, w);
      }
      return;
    }
    const t = scalarOf(f);
    (w.tag(f.no, WIRE_TYPE[t])[t] as (x: unknown) => ProtoWriter)(v);
  };

  /** The value to write for a singular field outside a oneof, or undefined for none. */
  const present = (f: CodecField, m: LoadedMessage): unknown => {
    if (f.defaultValue !== undefined && !Object.hasOwn(m, f.name)) return undefined;
    const v = m[f.name];
    if (v === undefined || f.kind === "message" || f.opt) return v;
    return isZero(scalarOf(f), v) ? undefined : v;
  };

  /** Key of a map entry as its field value. */
  const keyValue = (t: ScalarName, k: string): unknown => (t === "bool" ? k === "true" : t.endsWith("64") ? BigInt(k) : t === "string" ? k : Number(k));

  const entrySize = (f: CodecField, k: string, v: any, c: SizeCounter): number => {
    const kt = f.map!;
    let e = tagSize(1, WIRE_TYPE[kt]) + valueSize(kt, keyValue(kt, k), c);
    if (f.kind === "message") {
      const i = c.nested();
      const s = messageOf(f).sizeOf(v, c);
      c.done(i, s);
      e += 1 + varint32Size(s) + s;
    } else {
      const t = scalarOf(f);
      e += 1 + (t === "bytes" ? bytesSize(v) : valueSize(t, v, c));
    }
    return e;
  };

  const type: MessageType<LoadedMessage> = {
    typeName,
    fields,
    create(init?: PartialMessage<LoadedMessage>): LoadedMessage {
      const m = fresh();
      if (init === undefined) return m;
      for (const f of fields) {
        if (f.oneof !== undefined) {
          const o = init[f.oneof] as { case?: string; value?: unknown } | undefined;
          if (o?.case === f.name) m[f.oneof] = { case: f.name, value: f.kind === "message" ? messageOf(f).create(o.value as never) : o.value };
          continue;
        }
        // A field with a [default] counts only when set on `init`: a message read through its defaults copies as it is.
        if (f.defaultValue !== undefined && !Object.hasOwn(init, f.name)) continue;
        const v = init[f.name];
        if (v === undefined) continue;
        if (f.kind !== "message") m[f.name] = v;
        else if (f.map !== undefined) for (const [k, x] of Object.entries(v as object)) setEntry(m[f.name], k, messageOf(f).create(x));
        else if (f.repeated) m[f.name] = (v as unknown[]).map((x) => messageOf(f).create(x as never));
        else m[f.name] = messageOf(f).create(v as never);
      }
      if (init.$unknown !== undefined) m.$unknown = init.$unknown;
      return m;
    },
    sizeOf(m: LoadedMessage, c: SizeCounter): number {
      if (required.length > 0) checkRequired(m, false);
      let n = 0;
      for (const f of fields) {
        if (f.oneof !== undefined) {
          const o = m[f.oneof];
          if (o?.case === f.name) n += sizeOne(f, o.value, c);
        } else if (f.map !== undefined) {
          for (const [k, v] of Object.entries(m[f.name] ?? {})) {
            const e = entrySize(f, k, v, c);
            n += tagSize(f.no, 2) + varint32Size(e) + e;
          }
        } else if (f.repeated) {
          const list: unknown[] | undefined = m[f.name];
          if (list === undefined || list.length === 0) continue;
          if (f.packed && f.kind !== "message") {
            const t = scalarOf(f);
            const i = c.slot();
            let l = 0;
            for (const v of list) l += valueSize(t, v, c);
            c.setSlot(i, l);
            n += tagSize(f.no, 2) + varint32Size(l) + l;
          } else for (const v of list) n += sizeOne(f, v, c);
        } else {
          const v = present(f, m);
          if (v !== undefined) n += sizeOne(f, v, c);
        }
      }
      if (m.$unknown !== undefined) n += unknownSize(m.$unknown);
      return n;
    },
    write(m: LoadedMessage, w: ProtoWriter): void {
      for (const f of fields) {
        if (f.oneof !== undefined) {
          const o = m[f.oneof];
          if (o?.case === f.name) writeOne(f, o.value, w);
        } else if (f.map !== undefined) {
          const kt = f.map;
          for (const [k, v] of Object.entries(m[f.name] ?? {})) {
            const key = keyValue(kt, k);
            // The write pass recomputes the entry length from the sizes the size pass recorded.
            if (f.kind === "message") {
              const s = w.nextSize();
              const e = tagSize(1, WIRE_TYPE[kt]) + valueSize(kt, key, NO_COUNT) + 1 + varint32Size(s) + s;
              (w.tag(f.no, 2).uint32(e).tag(1, WIRE_TYPE[kt])[kt] as (x: unknown) => ProtoWriter)(key).tag(2, 2).uint32(s);
              messageOf(f).write(v as LoadedMessage, w);
            } else {
              const t = scalarOf(f);
              const e = tagSize(1, WIRE_TYPE[kt]) + valueSize(kt, key, NO_COUNT) + 1 + (t === "bytes" ? bytesSize(v as Uint8Array) : valueSize(t, v, NO_COUNT));
              const after = (w.tag(f.no, 2).uint32(e).tag(1, WIRE_TYPE[kt])[kt] as (x: unknown) => ProtoWriter)(key).tag(2, WIRE_TYPE[t]);
              (after[t] as (x: unknown) => ProtoWriter)(v);
            }
          }
        } else if (f.repeated) {
          const list: unknown[] | undefined = m[f.name];
          if (list === undefined || list.length === 0) continue;
          if (f.packed && f.kind !== "message") {
            const t = scalarOf(f);
            w.tag(f.no, 2).uint32(w.nextSize());
            for (const v of list) (w[t] as (x: unknown) => ProtoWriter)(v);
          } else for (const v of list) writeOne(f, v, w);
        } else {
          const v = present(f, m);
          if (v !== undefined) writeOne(f, v, w);
        }
      }
      if (m.$unknown !== undefined) w.unknown(m.$unknown);
    },
    read(r: ProtoReader, end: number, into?: LoadedMessage, group?: number): LoadedMessage {
      const m = into ?? fresh();
      while (r.pos < end) {
        const p = r.pos;
        const t = r.tag();
        const f = byNumber.get(t >>> 3);
        if (f !== undefined && readField(r, m, f, t & 7, p, end)) continue;
        if (r.other(m, t, p, group)) {
          group = undefined;
          break;
        }
      }
      if (group !== undefined) r.unterminated(group);
      if (required.length > 0) checkRequired(m, true);
      return m;
    },
    encode(m: PartialMessage<LoadedMessage>): Uint8Array {
      return encodeToBytes(type, m);
    },
    decode(bytes: Uint8Array): LoadedMessage {
      return decodeWith(type, bytes);
    },
    toJson: (m, options) => toJson(type, m, options),
    fromJson: (json, options) => fromJson(type, json, options),
  };
  return type;
}

/** A size counter for sizes that are already known (map keys and scalar values count nothing). */
const NO_COUNT = { bytes: (b: Uint8Array) => bytesSize(b) } as unknown as SizeCounter;

function readScalar(r: ProtoReader, f: CodecField): unknown {
  const t = scalarOf(f);
  return t === "string" && f.lax ? r.stringLax() : (r[t] as () => unknown).call(r);
}

/** Reads one occurrence of `f` (wire type `wt`, tag at `p`); false when the wire type does not fit (the field is then unknown). */
function readField(r: ProtoReader, m: LoadedMessage, f: CodecField, wt: number, p: number, end: number): boolean {
  if (f.kind === "message" && f.map === undefined) {
    if (wt !== (f.group ? 3 : 2)) return false;
    const T = f.T!() as MessageType<LoadedMessage>;
    const existing = f.repeated ? undefined : f.oneof !== undefined ? (m[f.oneof]?.case === f.name ? m[f.oneof].value : undefined) : m[f.name];
    let v: LoadedMessage;
    if (f.group) {
      r.enterGroup();
      v = T.read(r, end, existing, f.no);
    } else {
      const e = r.enter();
      v = T.read(r, e, existing);
      r.leave(e);
    }
    if (f.repeated) m[f.name].push(v);
    else if (f.oneof !== undefined) m[f.oneof] = { case: f.name, value: v };
    else m[f.name] = v;
    return true;
  }
  if (f.map !== undefined) {
    if (wt !== 2) return false;
    const e = r.lengthEnd();
    const kt = f.map;
    let key: unknown = zero(kt);
    let value: unknown = f.kind === "message" ? undefined : f.kind === "enum" ? 0 : zero(scalarOf(f));
    const keyTag = 8 + WIRE_TYPE[kt];
    const valueTag = 16 + (f.kind === "message" ? 2 : WIRE_TYPE[scalarOf(f)]);
    while (r.pos < e) {
      const u = r.tag();
      if (u === keyTag) key = (r[kt] as () => unknown).call(r);
      else if (u === valueTag) {
        if (f.kind === "message") {
          const g = r.enter();
          value = (f.T!() as MessageType<LoadedMessage>).read(r, g, value as LoadedMessage | undefined);
          r.leave(g);
        } else value = readScalar(r, f);
      } else r.skip(u & 7, u >>> 3);
    }
    r.expectEnd(e);
    if (value === undefined) value = (f.T!() as MessageType<LoadedMessage>).create();
    // An entry whose value a closed enum does not know goes to the unknown fields whole (the spec).
    if (f.closed !== undefined && !f.closed.includes(value as number)) r.keep(m, p);
    else setEntry(m[f.name], String(key), value);
    return true;
  }
  const t = scalarOf(f);
  const swt = WIRE_TYPE[t];
  const keep = (v: unknown, at: number) => {
    if (f.closed !== undefined && !f.closed.includes(v as number)) {
      if (at < 0) r.keepVarint(m, f.no, v as number);
      else r.keep(m, at);
      return;
    }
    if (f.repeated) m[f.name].push(v);
    else if (f.oneof !== undefined) m[f.oneof] = { case: f.name, value: v };
    else m[f.name] = v;
  };
  if (f.repeated && wt === 2 && swt !== 2) {
    const e = r.lengthEnd();
    while (r.pos < e) keep(readScalar(r, f), -1);
    r.expectEnd(e);
    return true;
  }
  if (wt !== swt) return false;
  // An unknown closed-enum value: a singular one is kept as it came, a repeated one re-encoded alone (as generated code does).
  keep(readScalar(r, f), f.repeated ? -1 : p);
  return true;
}
