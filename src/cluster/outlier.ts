/**
 * Outlier ejection on consecutive failures, with the knobs of gRPC's `outlier_detection`
 * (base_ejection_time, max_ejection_time, max_ejection_percent) and Envoy's consecutive-errors
 * trigger: an endpoint whose calls fail `consecutiveFailures` times in a row with UNAVAILABLE is
 * taken out of the balancer's picks for base × (times ejected) ms, capped, its connection kept;
 * never while `maxEjectionPercent` of the endpoints are ejected already. Each base period it
 * then behaves takes one off its count of ejections, so an endpoint that failed once long ago
 * starts from the base again.
 */
import { log } from "../log.js";
import type { EndpointSubchannel } from "./subchannel.js";
import type { PooledConnection } from "./types.js";

/** Settings of outlier detection, resolved (see the channel option `outlierDetection`). */
export interface OutlierDetectionSettings {
  /** UNAVAILABLE calls in a row that eject an endpoint. */
  readonly consecutiveFailures: number;
  /** First ejection's length, in ms; the n-th lasts n times as long. */
  readonly baseEjectionTimeMs: number;
  /** Longest ejection, in ms (the base when smaller than it). */
  readonly maxEjectionTimeMs: number;
  /** No ejection while at least this percentage of the endpoints is ejected. */
  readonly maxEjectionPercent: number;
}

/** Counts failures per endpoint of one source and ejects the outliers. */
export class OutlierDetector<C extends PooledConnection> {
  constructor(
    private readonly settings: OutlierDetectionSettings,
    /** The source's subchannels now (for the percentage). */
    private readonly all: () => Iterable<EndpointSubchannel<C>>,
    /** Called after an endpoint was ejected or came back. */
    private readonly changed: (s: EndpointSubchannel<C>) => void,
  ) {}

  /** Hooks the ready connection of `s`, so that its calls report here. */
  attach(s: EndpointSubchannel<C>, connection: C): void {
    connection.callEnded = (failed) => this.record(s, failed);
  }

  /** One call on `s` ended. */
  record(s: EndpointSubchannel<C>, failed: boolean): void {
    if (!failed) {
      s.consecutiveFailures = 0;
      return;
    }
    if (++s.consecutiveFailures < this.settings.consecutiveFailures || s.ejected || s.state === "shutdown") return;
    let total = 0;
    let ejected = 0;
    for (const o of this.all()) {
      total++;
      if (o.ejected) ejected++;
    }
    // As gRPC: eject while fewer than the maximum share are out (so at least one can always go).
    if (total === 0 || (ejected * 100) / total >= this.settings.maxEjectionPercent) return;
    const { baseEjectionTimeMs: base, maxEjectionTimeMs } = this.settings;
    if (s.timesEjected > 0 && base > 0) s.timesEjected = Math.max(0, s.timesEjected - Math.floor((Date.now() - s.returnedAt) / base));
    s.timesEjected++;
    const ms = Math.min(base * s.timesEjected, Math.max(base, maxEjectionTimeMs));
    s.ejected = true;
    s.consecutiveFailures = 0;
    log("info", "client", `endpoint ${s.endpoint.address} ejected for ${ms} ms after ${this.settings.consecutiveFailures} failed calls in a row (ejection ${s.timesEjected})`);
    s.ejectionTimer = setTimeout(() => {
      s.ejectionTimer = undefined;
      s.ejected = false;
      s.returnedAt = Date.now();
      if (s.state === "shutdown") return;
      log("info", "client", `endpoint ${s.endpoint.address} returns after its ejection`);
      this.changed(s);
    }, ms);
    s.ejectionTimer.unref();
    this.changed(s);
  }
}
