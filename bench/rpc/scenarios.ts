/** The RPC benchmark's scenarios and their payloads, shared by the parent and the client children. */

/** The scenarios, in the order they run. */
export const SCENARIOS = ["latency", "calls", "mbps", "stream"] as const;
/** One scenario. */
export type ScenarioName = (typeof SCENARIOS)[number];

/** Calls in flight for the call-rate scenario, and unanswered messages allowed on the stream. */
export const MANY_IN_FLIGHT = 256;
/** Calls in flight for the 1 MiB scenario. */
export const BIG_IN_FLIGHT = 4;
/** The 64 B payload. */
export const SMALL = new Uint8Array(64).fill(0x61);
/** The 1 MiB payload. */
export const BIG = new Uint8Array(1 << 20).fill(0x62);
