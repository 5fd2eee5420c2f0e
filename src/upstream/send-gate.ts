/**
 * The last lateness check, at the moment a request is handed its socket (docs/decisions/limiter.md,
 * "The last check is at the socket"). The adapter runs each SDK call inside a `SendGate` context;
 * the agent it gives the SDK sees every request it creates (`addRequest`), and at the request's
 * `socket` event — after the SDK has signed and serialised it, before Node writes the headers —
 * asks the gate whether it may still leave. A fresh connection is corked until it is connected
 * (or its TLS handshake is done) and asked again then, as nothing reaches the wire before.
 * A request the gate refuses is destroyed with nothing written.
 */
import { AsyncLocalStorage } from "node:async_hooks";
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

const gates = new AsyncLocalStorage<SendGate>();

/** Runs `f` (one SDK call) so that requests it creates pass `gate` before they are written. */
export function withSendGate<T>(gate: SendGate, f: () => Promise<T>): Promise<T> {
  return gates.run(gate, f);
}

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

/** Makes `agent` ask the current gate (if any) before each request it carries is written. */
export function gateAgent<A extends HttpAgent>(agent: A): A {
  const internals = agent as unknown as AgentInternals;
  const inner = internals.addRequest.bind(agent);
  internals.addRequest = (req, options) => {
    const gate = gates.getStore();
    if (gate) watch(req, gate);
    inner(req, options);
  };
  return agent;
}
