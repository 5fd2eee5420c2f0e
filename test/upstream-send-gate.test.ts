/**
 * The send gate travels from the SDK call to the agent in a request header (src/upstream/send-gate.ts):
 * the header never reaches the wire, every request of a call asks its own gate, a refused request
 * writes nothing, and no AsyncLocalStorage (a whole-process promise-hook cost) is involved.
 * A real http server on loopback and the real SDK through keygate's adapter.
 */
import { readdirSync, readFileSync } from "node:fs";
import { createServer, request, Agent, type IncomingHttpHeaders, type Server } from "node:http";
import { join } from "node:path";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { GATE_HEADER, gateAgent, type SendGate } from "../src/upstream/send-gate.js";
import { createTencentUpstream } from "../src/upstream/tencent-upstream.js";

let server: Server;
let url: string;
const seen: IncomingHttpHeaders[] = [];
beforeAll(async () => {
  server = createServer((req, res) => {
    seen.push(req.headers);
    req.resume();
    req.once("end", () => {
      res.setHeader("content-type", "application/json");
      res.end(JSON.stringify({ Response: { RequestId: `req-${seen.length}` } }));
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(async () => {
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
});

const never = new AbortController().signal;

function get(agent: Agent, headers: Record<string, string>): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request(`${url}/`, { agent, headers }, (res) => {
      res.resume();
      res.once("end", () => resolve(res.statusCode ?? 0));
    });
    req.once("error", reject);
    req.end();
  });
}

describe("send gate by header", () => {
  it("asks the named gate, strips the header, and forgets the gate when closed", async () => {
    const gated = gateAgent(new Agent({ keepAlive: true }));
    const asked: string[] = [];
    const gate = (name: string, ok: boolean): SendGate => ({
      pass: () => {
        asked.push(name);
        return ok;
      },
    });
    const a = gated.open(gate("a", true));
    const b = gated.open(gate("b", false));
    expect(a.headers[GATE_HEADER]).not.toBe(b.headers[GATE_HEADER]);
    const before = seen.length;
    expect(await get(gated.agent, { ...a.headers, "x-other": "1" })).toBe(200);
    await expect(get(gated.agent, b.headers)).rejects.toThrow(/after its grant allowed/);
    // A request without the header passes untouched (no gate to ask).
    expect(await get(gated.agent, {})).toBe(200);
    expect(asked).toEqual(["a", "b"]);
    // The refused request wrote nothing: the server saw two requests, neither with the header.
    expect(seen.length - before).toBe(2);
    for (const h of seen.slice(before)) expect(h[GATE_HEADER]).toBeUndefined();
    expect(seen.at(-2)?.["x-other"]).toBe("1");
    a.close();
    b.close();
    expect(gated.openCount()).toBe(0);
    gated.agent.destroy();
  });

  it("through the SDK: the grant is asked at the socket, the header stays off the wire", async () => {
    const up = createTencentUpstream({
      upstreamUrl: url,
      credential: { secretId: "AKIDtest", secretKey: "secret" },
    });
    const sent: number[] = [];
    const before = seen.length;
    const now = Date.now();
    const r = await up.describeInstances("ap-guangzhou", ["ins-00000001"], {
      signal: never,
      grant: { waitedMs: 0, sendBy: now + 60_000, sent: (at) => sent.push(at) },
    });
    expect(r.requestId).toBe(`req-${before + 1}`);
    expect(sent).toHaveLength(1);
    expect(seen[before]?.[GATE_HEADER]).toBeUndefined();
    expect(seen[before]?.authorization).toMatch(/^TC3-HMAC-SHA256 .*SignedHeaders=content-type;host,/);
    // A grant already past its send-by moment: nothing is written.
    await expect(
      up.describeInstances("ap-guangzhou", ["ins-00000001"], {
        signal: never,
        grant: { waitedMs: 0, sendBy: Date.now() - 1_000 },
      }),
    ).rejects.toMatchObject({ reason: "SEND_TOO_LATE" });
    expect(seen.length).toBe(before + 1);
    up.close();
  });

  it("keygate's source uses no AsyncLocalStorage (it would tax every promise)", () => {
    const walk = (d: string): string[] =>
      readdirSync(d, { withFileTypes: true }).flatMap((e) =>
        e.isDirectory() ? walk(join(d, e.name)) : e.name.endsWith(".ts") ? [join(d, e.name)] : [],
      );
    const users = walk("src").filter((f) => /\bAsyncLocalStorage\b/.test(readFileSync(f, "utf8")));
    expect(users).toEqual(["src/upstream/send-gate.ts"]); // its comment says why not
    expect(readFileSync("src/upstream/send-gate.ts", "utf8")).not.toMatch(/from "node:async_hooks"/);
  });
});
