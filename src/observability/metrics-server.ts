import http from "node:http";
import type { AddressInfo } from "node:net";
import type { Registry } from "prom-client";

/** What /readyz reports; main.ts reads it from the same state the gRPC health service answers from. */
export type Readiness = () => { ready: boolean; reason: string };

/**
 * The operator port: Prometheus scrapes `/metrics`; `/livez` and `/readyz` are plain-HTTP probes
 * for kubelets and load balancers that cannot speak gRPC over the API port's TLS
 * (docs/decisions.md, "HTTP probes on the metrics port"). Its own port, so the API port's
 * NetworkPolicy can stay tight.
 */
export function createMetricsServer(registry: Registry, host: string, port: number, readiness: Readiness) {
  const server = http.createServer((req, res) => {
    const path = (req.url ?? "").split("?", 1)[0];
    const isRead = req.method === "GET" || req.method === "HEAD";
    if (path === "/metrics" && req.method === "GET") {
      registry
        .metrics()
        .then((body) => {
          res.writeHead(200, { "content-type": registry.contentType });
          res.end(body);
        })
        .catch(() => {
          res.writeHead(500).end("metrics unavailable\n");
        });
      return;
    }
    if (path === "/livez" && isRead) return text(res, 200, "ok\n");
    if (path === "/readyz" && isRead) {
      const r = readiness();
      return text(res, r.ready ? 200 : 503, `${r.reason}\n`);
    }
    text(res, 404, "see /metrics, /livez, /readyz\n");
  });
  return {
    listen: () =>
      new Promise<AddressInfo>((resolve, reject) => {
        server.once("error", reject);
        server.listen(port, host, () => resolve(server.address() as AddressInfo));
      }),
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

function text(res: http.ServerResponse, status: number, body: string): void {
  res.writeHead(status, {
    "content-type": "text/plain; charset=utf-8",
    "cache-control": "no-store",
    "content-length": Buffer.byteLength(body),
  });
  res.end(body);
}
