import type { ServiceImpl } from "@connectrpc/connect";
import { Code, ConnectError } from "@connectrpc/connect";
import type { Health } from "../gen/health/v1/health_pb.js";
import { HealthCheckResponse_ServingStatus as Status } from "../gen/health/v1/health_pb.js";

/** The service names the Health API answers for. "" is overall readiness. */
export const HEALTH_SERVICES = ["", "keygate.v1.KeyPairService", "liveness"] as const;

/**
 * Per-component health. Readiness ("" and the API service) is SERVING only when every
 * component is up and we are not draining; "liveness" stays SERVING while the process can
 * answer at all, so Kubernetes restarts us for a wedged process, never for a Redis outage.
 */
export function createHealth() {
  const components = new Map<string, boolean>();
  let draining = false;
  /** Set at the very end of a drain: Watch streams send their last status and end cleanly. */
  let closed = false;
  const listeners = new Set<() => void>();
  const notify = () => listeners.forEach((l) => l());

  function status(service: string): Status | undefined {
    if (service === "liveness") return Status.SERVING;
    if (service !== "" && service !== "keygate.v1.KeyPairService") return undefined;
    if (draining) return Status.NOT_SERVING;
    return [...components.values()].every(Boolean) ? Status.SERVING : Status.NOT_SERVING;
  }

  const impl: ServiceImpl<typeof Health> = {
    check(req) {
      const s = status(req.service);
      if (s === undefined) throw new ConnectError(`unknown service "${req.service}"`, Code.NotFound);
      return { status: s };
    },
    async *watch(req, ctx) {
      let last: Status | undefined;
      let wake: () => void = () => {};
      const onChange = () => wake();
      listeners.add(onChange);
      try {
        while (!ctx.signal.aborted) {
          const s = status(req.service) ?? Status.SERVICE_UNKNOWN;
          if (s !== last) {
            last = s;
            yield { status: s };
          }
          if (closed) return;
          await new Promise<void>((resolve) => {
            wake = resolve;
            ctx.signal.addEventListener("abort", () => resolve(), { once: true });
          });
        }
      } finally {
        listeners.delete(onChange);
      }
    },
    list() {
      return {
        statuses: Object.fromEntries(
          HEALTH_SERVICES.map((s) => [s, { status: status(s) ?? Status.UNKNOWN }]),
        ),
      };
    },
  };

  return {
    impl,
    /** Sets a component's health (e.g. "policy", "redis"); unknown components start unhealthy. */
    set(component: string, healthy: boolean) {
      if (components.get(component) === healthy) return;
      components.set(component, healthy);
      notify();
    },
    setDraining() {
      draining = true;
      notify();
    },
    /** Ends every Watch stream after its latest status, so a closing server cuts none mid-message. */
    close() {
      closed = true;
      notify();
    },
    isServing: () => status("") === Status.SERVING,
    /**
     * Readiness as the HTTP probes see it (/readyz on the metrics port): the same answer as the
     * gRPC check of "", with the reason when it is not SERVING.
     */
    readiness(): { ready: boolean; reason: string } {
      if (status("") === Status.SERVING) return { ready: true, reason: "serving" };
      if (draining) return { ready: false, reason: "draining: this replica is shutting down" };
      const down = [...components].filter(([, up]) => !up).map(([name]) => name);
      return {
        ready: false,
        reason: down.length > 0 ? `not ready: ${down.join(", ")} down` : "not ready yet",
      };
    },
    components: () => Object.fromEntries(components),
  };
}

export type HealthState = ReturnType<typeof createHealth>;
