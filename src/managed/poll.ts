/**
 * How long one end of a ring pair keeps looking at its empty receive ring (a setImmediate turn
 * at a time, never a blocking spin) before it sleeps on the wake-up byte.
 *
 * Sleeping costs the peer a send(2) and this process a wake from epoll (tens of µs each way on a
 * loaded host); looking costs a loop turn each time. `adaptive` looks only when something is
 * likely to come soon: after a tick that wrote records it expects an answer (the application: the
 * reply; the daemon: the application's next call), and keeps looking for twice the recent average
 * wait for one, at most `maxUs`; once as many records came back as went out (nothing awaited) it
 * sleeps at once. An idle end sleeps within `maxUs` of its last write.
 * Many calls in flight keep both ends looking between batches (answers are always awaited): on
 * the benchmark host that is what lets managed mode keep up with library mode at 256 in flight
 * (a rule that slept for batches over 4 records lost 26-38% of the calls/s).
 * `fixed` looks for `maxUs` after every event whatever came before. `maxUs` 0 never looks.
 */
import { ErrorCode, KoalaError } from "../errors.js";
import { integer, oneOf, resolveOptions, type OptionsSpec } from "../options.js";

/** `adaptive` (default) or `fixed`; see the module comment. */
export type PollMode = "adaptive" | "fixed";

/** Longest look at an empty ring by default, in microseconds (KOALA_MANAGED_POLL_US). */
export const DEFAULT_POLL_US = 200;
/** Largest `maxUs` accepted, in microseconds. */
export const MAX_POLL_US = 1_000_000;

/** Polling of one ring end, checked. */
export interface PollSettings {
  /** `adaptive` or `fixed`. Default `adaptive`. */
  readonly mode: PollMode;
  /** Longest look at an empty ring after an event, in microseconds; 0 sleeps at once. Default {@link DEFAULT_POLL_US}. */
  readonly maxUs: number;
}

/** The option of the longest look in µs (`maxUs`, the daemon's and its config's `pollUs`). */
export const pollUsOption = integer(DEFAULT_POLL_US, 0, MAX_POLL_US);
/** The option of the polling mode (`mode`, the daemon's and its config's `pollMode`). */
export const pollModeOption = oneOf<PollMode>("adaptive", ["adaptive", "fixed"]);

const spec: OptionsSpec<PollSettings> = { mode: pollModeOption, maxUs: pollUsOption };

/** Checks polling options (`where` names them in errors); absent fields take their defaults. */
export function resolvePollSettings(where: string, input: unknown): PollSettings {
  return resolveOptions(where, spec, input);
}

/** The application's polling from KOALA_MANAGED_POLL_US (the cap, µs) and KOALA_MANAGED_POLL (`adaptive` | `fixed`). */
export function pollSettingsFromEnv(env: NodeJS.ProcessEnv): PollSettings {
  const rawUs = env.KOALA_MANAGED_POLL_US;
  const rawMode = env.KOALA_MANAGED_POLL;
  let maxUs = DEFAULT_POLL_US;
  if (rawUs !== undefined && rawUs !== "") {
    maxUs = Number(rawUs);
    if (!Number.isInteger(maxUs) || maxUs < 0 || maxUs > MAX_POLL_US) throw new KoalaError(ErrorCode.INVALID_ARGUMENT, `KOALA_MANAGED_POLL_US must be an integer 0..${MAX_POLL_US} (microseconds), got ${JSON.stringify(rawUs)}`);
  }
  let mode: PollMode = "adaptive";
  if (rawMode !== undefined && rawMode !== "") {
    if (rawMode !== "adaptive" && rawMode !== "fixed") throw new KoalaError(ErrorCode.INVALID_ARGUMENT, `KOALA_MANAGED_POLL must be "adaptive" or "fixed", got ${JSON.stringify(rawMode)}`);
    mode = rawMode;
  }
  return { mode, maxUs };
}

/** Kinds of ring event a {@link PollWindow} is told of. */
export const READ = 0;
export const WRITE = 1;

/** The running estimate of one ring end: until when to keep looking at its receive ring. */
export class PollWindow {
  /** performance.now() (ms) until which the end keeps looking; 0 once nothing is expected. */
  deadline = 0;
  private readonly maxMs: number;
  private readonly adaptive: boolean;
  /** Average µs from a write that expects an answer to the first record read after it. */
  private waitUs: number;
  /** Records written and not answered by as many records read (a guess: one record each way a call is the common case). */
  private outstanding = 0;
  /** When the oldest unanswered write was noted. */
  private awaitSince = 0;
  /** The end slept since the last write: the count of that write's answers is stale. */
  private sleptSinceWrite = false;
  constructor(settings: PollSettings) {
    this.maxMs = settings.maxUs / 1000;
    this.adaptive = settings.mode === "adaptive";
    // Start at half the cap: the first calls look for maxUs, the average then follows the traffic.
    this.waitUs = settings.maxUs / 2;
  }

  /** True when this end never looks (maxUs 0). */
  get off(): boolean {
    return this.maxMs === 0;
  }

  /** The end went to sleep (its window had closed). */
  slept(): void {
    this.sleptSinceWrite = true;
  }

  /** An event of `kind` (READ: records found; WRITE: records published), of `records` records, at `now` (performance.now()). */
  note(kind: typeof READ | typeof WRITE, records: number, now: number): void {
    if (this.maxMs === 0) return;
    if (!this.adaptive) {
      this.deadline = now + this.maxMs;
      return;
    }
    if (kind === WRITE) {
      // After a sleep the count starts again: writes that get fewer records back than they sent
      // (a client stream, a message in several frames) must not keep an end looking for good.
      if (this.outstanding === 0 || this.sleptSinceWrite) {
        this.awaitSince = now;
        this.outstanding = 0;
      }
      this.sleptSinceWrite = false;
      this.outstanding += records;
    } else if (this.outstanding > 0) {
      // A wait longer than twice the cap says as much as one of twice the cap: one slow answer
      // must not keep the average out of reach for long.
      const waitUs = Math.min((now - this.awaitSince) * 1000, this.maxMs * 2000);
      this.waitUs += (waitUs - this.waitUs) / 8;
      this.outstanding = Math.max(0, this.outstanding - records);
      this.awaitSince = now;
    }
    // Nothing awaited: sleep.
    if (this.outstanding === 0) this.deadline = 0;
    else if (kind === WRITE) this.deadline = now + Math.min(this.maxMs, (2 * this.waitUs) / 1000);
  }
}
