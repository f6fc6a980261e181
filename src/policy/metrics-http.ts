/**
 * The optional HTTP metrics endpoint: `GET /metrics` answers the Prometheus text of every
 * attached `metrics` engine (what `koala ctl metrics` prints), for a Prometheus server to scrape.
 * Started by the configuration's `metricsPort` (or `KOALA_METRICS_PORT`) or {@link serveMetrics}.
 */
import { createServer, type Server as HttpServer } from "node:http";
import type { AddressInfo } from "node:net";
import { log } from "../log.js";
import { policies } from "./index.js";

/** A running metrics endpoint. */
export interface MetricsEndpoint {
  /** Where to scrape, e.g. `http://127.0.0.1:9464/metrics`. */
  url: string;
  /** Stops serving. */
  close(): Promise<void>;
}

/**
 * Serves `GET /metrics` at `port` (0: any free one) on `host` (default 127.0.0.1: give
 * `0.0.0.0` to let other hosts scrape). The server does not keep the process alive.
 */
export async function serveMetrics(port: number, host = "127.0.0.1"): Promise<MetricsEndpoint> {
  const server: HttpServer = createServer((req, res) => {
    const path = (req.url ?? "/").split("?")[0];
    if (req.method !== "GET" || path !== "/metrics") {
      res.writeHead(404, { "content-type": "text/plain" }).end("koala: GET /metrics\n");
      return;
    }
    res.writeHead(200, { "content-type": "text/plain; version=0.0.4; charset=utf-8" }).end(policies.metricsText());
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  server.unref();
  const a = server.address() as AddressInfo;
  const url = `http://${a.family === "IPv6" ? `[${a.address}]` : a.address}:${a.port}/metrics`;
  log("info", "policy", `metrics served at ${url}`);
  return { url, close: () => new Promise<void>((r) => server.close(() => r())) };
}
