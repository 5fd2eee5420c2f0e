/**
 * A caller for load benches that costs the bench process little CPU: Connect unary calls in
 * binary (`application/proto`) over `node:http2`, one session per group of callers, the same bytes
 * on the wire as `@connectrpc/connect-node` sends with `useBinaryFormat`. Real callers run on
 * their own hosts; 200 Connect-ES clients in one bench process spend about half a core of the two
 * that the replica under test shares with them, and each caller's turn waits on that process'
 * event loop (docs/benchmarks.md, "Callers"). Errors come back as the Connect JSON error body; the
 * reason is read from its `keygate.v1.ErrorDetail`.
 */
import http2 from "node:http2";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import {
  AssociateKeyPairsRequestSchema,
  AssociateKeyPairsResponseSchema,
  ErrorDetailSchema,
  type AssociateKeyPairsResponse,
} from "../../src/gen/keygate/v1/keygate_pb.js";

const PATH = "/keygate.v1.KeyPairService/AssociateKeyPairs";

/** A refused call: the Connect code and, when keygate sent one, its ErrorDetail reason. */
export class LeanCallError extends Error {
  override name = "LeanCallError";
  constructor(
    readonly code: string,
    message: string,
    readonly reason: string | undefined,
  ) {
    super(`${code}: ${message}`);
  }
}

export interface LeanRequest {
  region: string;
  instanceIds: string[];
  keyIds: string[];
}

interface ConnectErrorBody {
  code?: string;
  message?: string;
  details?: { type?: string; value?: string }[];
}

function errorOf(status: number, body: Buffer): LeanCallError {
  let parsed: ConnectErrorBody = {};
  try {
    parsed = JSON.parse(body.toString("utf8")) as ConnectErrorBody;
  } catch {
    return new LeanCallError("unknown", `HTTP ${status}: ${body.toString("utf8").slice(0, 200)}`, undefined);
  }
  const detail = parsed.details?.find((d) => d.type === ErrorDetailSchema.typeName);
  const reason = detail?.value
    ? fromBinary(ErrorDetailSchema, Buffer.from(detail.value, "base64")).reason
    : undefined;
  return new LeanCallError(parsed.code ?? "unknown", parsed.message ?? "", reason);
}

/** One HTTP/2 connection to `baseUrl`; `call` sends one AssociateKeyPairs on it. */
export function leanConnection(baseUrl: string, bearer: string) {
  const session = http2.connect(baseUrl);
  // A session error fails the streams open on it; the calls report those.
  session.on("error", () => undefined);
  const auth = `Bearer ${bearer}`;
  return {
    call(request: LeanRequest, timeoutMs: number): Promise<AssociateKeyPairsResponse> {
      const body = toBinary(AssociateKeyPairsRequestSchema, create(AssociateKeyPairsRequestSchema, request));
      return new Promise((resolve, reject) => {
        const stream = session.request({
          ":method": "POST",
          ":path": PATH,
          "content-type": "application/proto",
          "connect-protocol-version": "1",
          "connect-timeout-ms": String(timeoutMs),
          authorization: auth,
        });
        let status = 0;
        const chunks: Buffer[] = [];
        stream.on("response", (headers) => (status = Number(headers[":status"])));
        stream.on("data", (c: Buffer) => chunks.push(c));
        stream.on("error", (e: Error) => reject(e));
        stream.on("end", () => {
          const all = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks);
          if (status === 200) resolve(fromBinary(AssociateKeyPairsResponseSchema, all));
          else reject(errorOf(status, all));
        });
        stream.end(body);
      });
    },
    close(): void {
      session.close();
    },
  };
}
