/**
 * One endpoint's connection and its connectivity state, as gRPC defines them: idle →
 * connecting → ready; a failed connect goes to transient_failure and back to idle when its
 * backoff ends; a lost connection goes to idle; shutdown is final (the endpoint was removed or
 * the channel closed).
 */
import { Backoff, type BackoffOptions } from "./backoff.js";
import type { ConnectivityState, Dialer, Endpoint, HealthWatch, PooledConnection, Subchannel } from "./types.js";

/** A subchannel, driven by its {@link ClusterSource}. */
export class EndpointSubchannel<C extends PooledConnection> implements Subchannel<C> {
  state: ConnectivityState = "idle";
  connection: C | undefined;
  /** Why the last connect failed (while in transient_failure). */
  lastError: unknown;
  /**
   * The health check's verdict while ready: undefined when the channel does not check health
   * (or the subchannel is not ready), null until the first answer, then true for SERVING.
   */
  serving: boolean | null | undefined;
  /** The running health check of the ready connection, if any. */
  healthWatch: HealthWatch | undefined;
  /** True while ejected as an outlier. */
  ejected = false;
  /** UNAVAILABLE calls in a row (outlier detection). */
  consecutiveFailures = 0;
  /** Times ejected so far (each ejection lasts base × this), decaying while it behaves. */
  timesEjected = 0;
  /** When the last ejection ended (ms since epoch), for the decay of `timesEjected`. */
  returnedAt = 0;
  /** Ends the ejection. */
  ejectionTimer: NodeJS.Timeout | undefined;
  private readonly backoff: Backoff;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    /** The endpoint; replaced when the resolver reports the same address with other attributes (a new weight). */
    public endpoint: Endpoint,
    private readonly dialer: Dialer<C>,
    backoff: BackoffOptions,
    /** Called after every state change. */
    private readonly changed: (s: EndpointSubchannel<C>) => void,
  ) {
    this.backoff = new Backoff(backoff);
  }

  get pickable(): boolean {
    return this.state === "ready" && this.serving !== false && this.serving !== null && !this.ejected;
  }

  requestConnection(): void {
    if (this.state !== "idle") return;
    this.set("connecting");
    this.dialer(this.endpoint).then(
      (c) => {
        if (this.state === "shutdown") {
          c.close();
          return;
        }
        this.backoff.reset();
        this.connection = c;
        void c.closed.then(() => {
          if (this.connection !== c) return;
          this.connection = undefined;
          if (this.state === "ready") this.set("idle");
        });
        this.set("ready");
      },
      (err: unknown) => {
        if (this.state === "shutdown") return;
        this.lastError = err;
        const delay = this.backoff.fail();
        this.timer = setTimeout(() => {
          this.timer = undefined;
          if (this.state === "transient_failure") this.set("idle");
        }, delay);
        this.timer.unref();
        this.set("transient_failure");
      },
    );
  }

  /**
   * The ready connection stopped taking new calls (the server sent GOAWAY) but is still open:
   * let its calls finish there and go idle, so that the next connection is made.
   */
  retireUnusable(): void {
    const c = this.connection;
    if (this.state !== "ready" || c === undefined || c.usable) return;
    this.connection = undefined;
    c.drain();
    this.set("idle");
  }

  /** Removed or closed: no more calls are picked here; calls in flight finish, then the connection closes (or at once with `now`). */
  shutdown(now: boolean): void {
    if (this.state === "shutdown") return;
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    if (this.ejectionTimer !== undefined) clearTimeout(this.ejectionTimer);
    this.ejectionTimer = undefined;
    this.healthWatch?.close();
    this.healthWatch = undefined;
    const c = this.connection;
    this.connection = undefined;
    if (c !== undefined) {
      if (now) c.close();
      else c.drain();
    }
    this.set("shutdown");
  }

  private set(state: ConnectivityState): void {
    this.state = state;
    this.changed(this);
  }
}
