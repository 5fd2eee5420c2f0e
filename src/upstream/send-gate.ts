/**
 * The last lateness check, at the moment a request is handed its socket (docs/decisions/limiter.md,
 * "The last check is at the socket"). The adapter opens a gate for each SDK call and hands the SDK
 * one extra request header naming it; the agent it gives the SDK sees every request it creates
 * (`addRequest`, before anything is written), takes the header off again and, at the request's
 * `socket` event — after the SDK has signed and serialised it, before Node writes the headers —
 * asks the gate whether it may still leave. A fresh connection is corked until it is connected
 * (or its TLS handshake is done) and asked again then, as nothing reaches the wire before.
 * A request the gate refuses is destroyed with nothing written.
 *
 * A header, not AsyncLocalStorage: an AsyncLocalStorage in use turns on promise hooks for the whole
 * process, which cost every request keygate serves about a tenth of its CPU (docs/benchmarks.md,
 * "Where a replica's CPU goes"). The header is not signed (TC3 signs content-type and host only) and
 * never reaches the wire.
 */
import type { Agent as HttpAgent, ClientRequest } from "node:http";
import type { Socket } from "node:net";
import { TLSSocket } from "node:tls";

/** One upstream call's gate: `pass` is asked at the write moment. */
export interface SendGate {
  /** True: the request may be written now (and is recorded as leaving now). False: destroy it. */
  pass(): boolean;
}

/** Marks the error a refused request is destroyed with (the adapter reads the gate, not this). */
export class SendTooLateError extends Error {
  readonly code = "KEYGATE_SEND_TOO_LATE";
  constructor() {
    super("keygate: the request would have left after its grant allowed; not sent");
  }
}

/** The request header that carries a gate's name from the SDK call to the agent. */
export const GATE_HEADER = "x-keygate-send-gate";

/** The part of Node's Agent the gate hooks into (public in Node, untyped in @types/node). */
interface AgentInternals {
  addRequest(req: ClientRequest, options: unknown): void;
}

function watch(req: ClientRequest, gate: SendGate): void {
  req.once("socket", (socket: Socket) => {
    if (!socket.connecting) {
      if (!gate.pass()) req.destroy(new SendTooLateError());
      return;
    }
    // Nothing goes out before the connection is up: hold the writes and decide then.
    socket.cork();
    const event = socket instanceof TLSSocket ? "secureConnect" : "connect";
    socket.once(event, () => {
      if (gate.pass()) socket.uncork();
      else req.destroy(new SendTooLateError());
    });
  });
}

export interface GatedAgent<A> {
  agent: A;
  /**
   * Opens `gate` for one SDK call: pass the returned headers with the call's request, and call
   * `close` when the call has ended.
   */
  open(gate: SendGate): { headers: Record<string, string>; close(): void };
  /** Gates open now (0 when no call is in flight; for tests). */
  openCount(): number;
}

/** Makes `agent` ask the gate a request names (if any) before the request is written. */
export function gateAgent<A extends HttpAgent>(agent: A): GatedAgent<A> {
  const gates = new Map<string, SendGate>();
  let next = 0;
  const internals = agent as unknown as AgentInternals;
  const inner = internals.addRequest.bind(agent);
  internals.addRequest = (req, options) => {
    const name = req.getHeader(GATE_HEADER);
    if (name !== undefined) {
      req.removeHeader(GATE_HEADER);
      const gate = gates.get(String(name));
      if (gate) watch(req, gate);
    }
    inner(req, options);
  };
  return {
    agent,
    open(gate) {
      const name = (next = (next + 1) % Number.MAX_SAFE_INTEGER).toString(36);
      gates.set(name, gate);
      return { headers: { [GATE_HEADER]: name }, close: () => gates.delete(name) };
    },
    openCount: () => gates.size,
  };
}
