/**
 * Measurement loops of the RPC benchmark, the same for every system: ping-pong latency,
 * a fixed number of calls in flight, and a stream sender that keeps a bounded number of
 * messages unanswered.
 */

/** Median of `xs` (NaN when empty). */
export function median(xs: readonly number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/** The `p` quantile (0..1) of numbers sorted ascending (nearest rank). */
export function quantile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(sorted.length * p) - 1))]!;
}

/** Calls `fn` one at a time for `ms` milliseconds; returns each call's latency in µs, sorted ascending. */
export async function pingPong(ms: number, fn: () => Promise<unknown>): Promise<number[]> {
  const lat: number[] = [];
  const end = performance.now() + ms;
  let t = performance.now();
  while (t < end) {
    await fn();
    const now = performance.now();
    lat.push((now - t) * 1000);
    t = now;
  }
  return lat.sort((a, b) => a - b);
}

/** How many operations finished in how long. */
export interface Count {
  ops: number;
  seconds: number;
}

/**
 * Keeps `inFlight` calls of `fn` running for `ms` milliseconds (each finished call starts the
 * next); counts the finished calls, including those still in flight at the end, and the time
 * until the last one finished.
 */
export async function pipelined(ms: number, inFlight: number, fn: () => Promise<unknown>): Promise<Count> {
  let ops = 0;
  const t0 = performance.now();
  const end = t0 + ms;
  const lane = async () => {
    while (performance.now() < end) {
      await fn();
      ops++;
    }
  };
  await Promise.all(Array.from({ length: inFlight }, lane));
  return { ops, seconds: (performance.now() - t0) / 1000 };
}

/**
 * Paces a stream sender: at most `window` messages may be sent and not yet answered. The
 * sender waits for room; every reply makes room for one more.
 */
export class StreamWindow<T> {
  /** Messages handed to the stream so far. */
  sent = 0;
  /** Replies seen so far. */
  received = 0;
  private wake: (() => void) | undefined;

  constructor(
    private readonly window: number,
    private readonly message: T,
  ) {}

  /** Records one reply. */
  reply(): void {
    this.received++;
    const w = this.wake;
    if (w !== undefined) {
      this.wake = undefined;
      w();
    }
  }

  /** Resolves when another message may be sent. */
  room(): Promise<void> | undefined {
    if (this.sent - this.received < this.window) return undefined;
    return new Promise<void>((resolve) => (this.wake = resolve));
  }

  /** The messages to send until `end` (a performance.now() time), paced by the window. */
  async *messages(end: number): AsyncGenerator<T> {
    while (performance.now() < end) {
      const wait = this.room();
      if (wait !== undefined) await wait;
      this.sent++;
      yield this.message;
    }
  }
}
