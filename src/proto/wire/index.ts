/** The protobuf runtime that generated code calls: writer, reader and size helpers. */
export { ProtoWriter, SizeCounter, encodeMessage, encodeToBytes, encodedLength, varint32Size, varint64Size, sint32Size, sint64Size, utf8Size, stringSize, unknownSize, tagSize } from "./writer.js";
export type { EncodeOptions, Encodable } from "./writer.js";
export { ProtoReader, decodeWith, decodeRange, MAX_DEPTH } from "./reader.js";
export { toJson, fromJson } from "../json.js";
export type { JsonValue, ToJsonOptions, FromJsonOptions } from "../definition.js";
export type { Extension } from "../extension.js";

export { EMPTY_BYTES, bytesSize, missingRequired, setEntry } from "./helpers.js";
