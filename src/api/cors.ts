import { cors as connectCors } from "@connectrpc/connect";

/** Headers keygate's callers send beyond the protocols' own: the bearer token, request id, trace context. */
const APP_REQUEST_HEADERS = ["authorization", "x-request-id", "traceparent", "tracestate"];
/** How long a browser may cache a preflight answer (seconds). */
const PREFLIGHT_MAX_AGE_S = 7200;

export type CorsAnswer =
  | { kind: "preflight"; status: 204; headers: Record<string, string> }
  | { kind: "refused"; status: 403; text: string }
  | { kind: "simple"; headers: Record<string, string> };

/**
 * Cross-origin calls from browsers (Connect and gRPC-Web), off unless KEYGATE_CORS_ORIGINS lists
 * origins (docs/decisions.md, "CORS"). The protocol header lists come from @connectrpc/connect.
 * Requests without an Origin header (every non-browser client) are never affected.
 */
export function createCors(origins: readonly string[]) {
  const any = origins.includes("*");
  const allowed = new Set(origins);
  const list = (names: string[]) => names.map((n) => n.toLowerCase()).join(", ");
  const allowHeaders = list([...connectCors.allowedHeaders, ...APP_REQUEST_HEADERS]);
  const exposeHeaders = list([...connectCors.exposedHeaders, "x-request-id"]);

  function allowOrigin(origin: string): Record<string, string> {
    return any
      ? { "access-control-allow-origin": "*" }
      : { "access-control-allow-origin": origin, vary: "Origin" };
  }

  return {
    enabled: origins.length > 0,
    /**
     * What to do with a request: `undefined` when CORS plays no part (no Origin, not a preflight);
     * a preflight is answered here, allowed or refused with a reason; an allowed cross-origin call
     * gets the headers that let the browser read the answer.
     */
    check(
      method: string | undefined,
      origin: string | undefined,
      requestedMethod: string | undefined,
    ): CorsAnswer | undefined {
      const preflight = method === "OPTIONS";
      if (!preflight && origin === undefined) return undefined;
      if (!preflight) {
        if (!any && !allowed.has(origin!)) return undefined; // the browser keeps the answer from the page
        return {
          kind: "simple",
          headers: { ...allowOrigin(origin!), "access-control-expose-headers": exposeHeaders },
        };
      }
      if (origins.length === 0)
        return refused(
          "CORS is off on this keygate: set KEYGATE_CORS_ORIGINS to the browser origins that may call it",
        );
      if (origin === undefined) return refused("a CORS preflight needs an Origin header");
      if (!any && !allowed.has(origin))
        return refused(`origin ${printable(origin)} is not in KEYGATE_CORS_ORIGINS`);
      if (requestedMethod !== undefined && !connectCors.allowedMethods.includes(requestedMethod))
        return refused(
          `method ${printable(requestedMethod)} is not allowed: use ${connectCors.allowedMethods.join(" or ")}`,
        );
      return {
        kind: "preflight",
        status: 204,
        headers: {
          ...allowOrigin(origin),
          "access-control-allow-methods": connectCors.allowedMethods.join(", "),
          "access-control-allow-headers": allowHeaders,
          "access-control-max-age": String(PREFLIGHT_MAX_AGE_S),
        },
      };
    },
  };
}

function refused(text: string): CorsAnswer {
  return { kind: "refused", status: 403, text: `${text}\n` };
}

function printable(s: string): string {
  const t = s.replace(/[^\x20-\x7e]/g, "?");
  return t.length > 100 ? `${t.slice(0, 100)}…` : t;
}
