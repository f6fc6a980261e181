/**
 * The one way text taken from a `.proto` file (names, comments, `json_name`, defaults, file
 * paths) enters generated code. A `.proto` is input, maybe hostile: protobuf's own
 * `unittest.proto` has a string default starting with a comment closer (star, slash) to test
 * that generators do not let it end a comment. Everything the generator copies goes through one of these, never
 * through hand concatenation into quotes or comments.
 */
import { ErrorCode, KoalaError } from "../../errors.js";

/** Line terminators as JavaScript sees them: in a `//` comment any of them ends the comment. */
const LINE_BREAK = /\r\n|[\n\r\u2028\u2029]/;

/**
 * A TypeScript string literal whose value is exactly `s`. U+2028 / U+2029 are escaped as well
 * (JSON.stringify leaves them raw: legal in a string since ES2019, but a line break to older
 * tools and to anyone reading the file); lone surrogates come out as `\uXXXX` escapes.
 */
export function str(s: string): string {
  return JSON.stringify(s).replace(/[\u2028\u2029]/g, (c) => `\\u${c.charCodeAt(0).toString(16)}`);
}

/** `text` made safe inside a block comment: a star followed by a slash is written `*\/`, which does not close it. */
function inComment(text: string): string {
  return text.replace(/\*\//g, "*\\/");
}

/**
 * A JSDoc comment of `text` (lines split at every line terminator, U+2028 / U+2029 too),
 * each line prefixed with `indent`; a comment closer in the text is written `*\/`. Empty text: no comment.
 */
export function doc(text: string, indent = ""): string[] {
  const lines = inComment(text)
    .split(LINE_BREAK)
    .map((l) => l.trimEnd());
  while (lines.length > 0 && lines[lines.length - 1] === "") lines.pop();
  while (lines.length > 0 && lines[0] === "") lines.shift();
  if (lines.length === 0) return [];
  if (lines.length === 1) return [`${indent}/** ${lines[0]} */`];
  return [`${indent}/**`, ...lines.map((l) => (l === "" ? `${indent} *` : `${indent} * ${l}`)), `${indent} */`];
}

/** `text` made safe on one `//` line: each line terminator is written as its escape (`\n`, `\u2028`). */
export function lineComment(text: string): string {
  return text.replace(/[\n\r\u2028\u2029]/g, (c) => (c === "\n" ? "\\n" : c === "\r" ? "\\r" : `\\u${c.charCodeAt(0).toString(16)}`));
}

/**
 * `name` checked to be an identifier (what protobuf allows for a message, field, enum value or
 * package part) before it is written as code: property access, a local, a type name. Throws
 * KOALA_ERR_INVALID_ARGUMENT otherwise (a name from a hand-built protobufjs root, say).
 */
export function ident(name: string): string {
  if (!/^[A-Za-z_][A-Za-z0-9_]*\$?$/.test(name)) throw new KoalaError(ErrorCode.INVALID_ARGUMENT, `koala gen: ${str(name)} is not an identifier`);
  return name;
}
