/**
 * Caller deadlines, clamped before the Connect adapter reads them: connect-node arms a timer with
 * the raw value, and one above 2^31-1 ms fires at once (the call is CANCELLED immediately).
 */

const GRPC_UNIT_MS: Record<string, number> = {
  H: 3_600_000,
  M: 60_000,
  S: 1_000,
  m: 1,
  u: 0.001,
  n: 0.000001,
};

/** The caller's deadline in ms from its header, or undefined if absent or unreadable. */
export function callerTimeoutMs(headers: Record<string, string | string[] | undefined>): number | undefined {
  const grpc = headers["grpc-timeout"];
  if (typeof grpc === "string") {
    const m = /^(\d{1,8})([HMSmun])$/.exec(grpc);
    return m ? Number(m[1]) * (GRPC_UNIT_MS[m[2] ?? "m"] ?? 1) : undefined;
  }
  const connect = headers["connect-timeout-ms"];
  if (typeof connect === "string" && /^\d{1,10}$/.test(connect)) return Number(connect);
  return undefined;
}

/**
 * Rewrites a deadline above `capMs` to `capMs` in place and returns the deadline the call now
 * has (`capMs` when it sent none). Unreadable values are left for the adapter to refuse.
 */
export function clampDeadline(headers: Record<string, string | string[] | undefined>, capMs: number): number {
  const given = callerTimeoutMs(headers);
  if (given === undefined) return capMs;
  if (given <= capMs) return given;
  if (typeof headers["grpc-timeout"] === "string") headers["grpc-timeout"] = `${capMs}m`;
  else headers["connect-timeout-ms"] = String(capMs);
  return capMs;
}
