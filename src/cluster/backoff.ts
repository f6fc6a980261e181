/**
 * Reconnect backoff as gRPC's connection-backoff document defines it: the first retry after
 * `initialMs`, each next one `multiplier` times longer up to `maxMs`, every delay spread by
 * ±`jitter` so that many clients do not retry in step; a success starts over.
 */

/** Settings of a {@link Backoff}. */
export interface BackoffOptions {
  /** Delay after the first failure, in ms. */
  readonly initialMs: number;
  /** Longest delay, in ms. */
  readonly maxMs: number;
  /** Growth per failure (gRPC: 1.6). */
  readonly multiplier: number;
  /** Relative spread of each delay (gRPC: 0.2, i.e. ±20%). */
  readonly jitter: number;
}

/** The backoff state of one connection target. */
export class Backoff {
  private nextMs: number;

  constructor(private readonly options: BackoffOptions) {
    this.nextMs = options.initialMs;
  }

  /** The delay before the next attempt after a failure (jittered), and grows the one after. */
  fail(): number {
    const o = this.options;
    const delay = Math.round(this.nextMs * (1 - o.jitter + Math.random() * 2 * o.jitter));
    this.nextMs = Math.min(o.maxMs, this.nextMs * o.multiplier);
    return Math.min(delay, Math.round(o.maxMs * (1 + o.jitter)));
  }

  /** A connection succeeded: the next failure waits `initialMs` again. */
  reset(): void {
    this.nextMs = this.options.initialMs;
  }
}
