/** The validated form of {@link TransportOptions}. */
import { boolean, integer, resolveOptions, type OptionsSpec } from "../options.js";
import type { ResolvedTransportOptions, TransportOptions } from "./types.js";

const MiB = 1024 * 1024;

/** Largest message size a socket frame header can describe (4-byte length, less the header). */
export const MAX_FRAME_PAYLOAD = 0xffff_ffff - 16;

const spec: OptionsSpec<Required<TransportOptions>> = {
  maxMessageBytes: integer(64 * MiB, 1, MAX_FRAME_PAYLOAD),
  highWaterMarkBytes: integer(1 * MiB, 1, 2 ** 31),
  connectTimeoutMs: integer(10_000, 1, 2 ** 31 - 1),
  receiveQueueMessages: integer(1024, 1, 2 ** 24),
  receiveQueueBytes: integer(8 * MiB, 1, Number.MAX_SAFE_INTEGER),
  coalesceMaxBytes: integer(16 * 1024, 0, 1 * MiB),
  closeLingerMs: integer(10_000, 0, 2 ** 31 - 1),
  noDelay: boolean(true),
  oneSided: boolean(false),
  socketFileMode: integer(0o660, 0, 0o777),
};

/** Checks transport options (a misspelled key is an error naming it) and fills in defaults. */
export function resolveTransportOptions(where: string, input: TransportOptions | undefined): ResolvedTransportOptions {
  return resolveOptions(where, spec, input);
}
