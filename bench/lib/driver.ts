/**
 * Drives one echo client: keeps `window` messages in flight for a fixed time, sending the next
 * message from the reply callback (no promise or closure per message, so the driver's own cost
 * is small and the same for both systems), and honours backpressure.
 */
import type { EchoClient } from "./clients.js";

/** What one timed run measured. */
export interface RunResult {
  /** Echoed messages. */
  messages: number;
  /** From the first send to the last reply, in seconds. */
  seconds: number;
  /** Round-trip times in µs, sorted (window 1 only; empty otherwise). */
  latenciesUs: Float64Array;
}

/** Most round trips whose latency one run records; beyond that, later ones are counted but not timed. */
const MAX_SAMPLES = 1 << 21;

/**
 * Sends `payload` with `window` messages in flight for `durationMs` milliseconds, then waits for
 * the messages still in flight. Rejects when an echo has the wrong length or the connection
 * fails to drain.
 */
export function runWindow(client: EchoClient, payload: Uint8Array, window: number, durationMs: number): Promise<RunResult> {
  return new Promise<RunResult>((resolve, reject) => {
    const timeLatency = window === 1;
    const samples = timeLatency ? new Float64Array(MAX_SAMPLES) : new Float64Array(0);
    let sampleCount = 0;
    let inFlight = 0;
    let messages = 0;
    /** Sends wanted while the client reported backpressure. */
    let owed = 0;
    let blocked = false;
    let stopped = false;
    let failed = false;
    let sentAt = 0;
    const start = performance.now();
    const end = start + durationMs;

    const fail = (err: unknown): void => {
      if (failed) return;
      failed = true;
      client.onReply(() => undefined);
      reject(err);
    };
    const sendOne = (): void => {
      inFlight++;
      if (timeLatency) sentAt = performance.now();
      if (!client.send(payload)) {
        blocked = true;
        client.drain().then(onDrain, fail);
      }
    };
    const onDrain = (): void => {
      blocked = false;
      while (owed > 0 && !blocked && !stopped) {
        owed--;
        sendOne();
      }
    };

    client.onReply((byteLength) => {
      if (failed) return;
      const now = performance.now();
      if (byteLength !== payload.byteLength) {
        fail(new Error(`bench: echo of ${byteLength} bytes for a message of ${payload.byteLength}`));
        return;
      }
      inFlight--;
      messages++;
      if (timeLatency && sampleCount < MAX_SAMPLES) samples[sampleCount++] = (now - sentAt) * 1000;
      if (now < end) {
        if (blocked) owed++;
        else sendOne();
      } else {
        stopped = true;
        owed = 0;
        if (inFlight === 0) {
          client.onReply(() => undefined);
          resolve({ messages, seconds: (now - start) / 1000, latenciesUs: samples.subarray(0, sampleCount).sort() });
        }
      }
    });

    for (let i = 0; i < window && !blocked; i++) sendOne();
    owed = window - inFlight;
  });
}
