import http from "node:http";
import type { AddressInfo } from "node:net";
import type { Registry } from "prom-client";

/** Prometheus scrape endpoint on its own port, so the API port's NetworkPolicy can stay tight. */
export function createMetricsServer(registry: Registry, host: string, port: number) {
  const server = http.createServer((req, res) => {
    if (req.url === "/metrics" && req.method === "GET") {
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
    res.writeHead(404, { "content-type": "text/plain" }).end("see /metrics\n");
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
