import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { ErrorDetailSchema, KeyPairService } from "../src/gen/keygate/v1/keygate_pb.js";
import type { Emulator } from "../src/upstream/emulator/index.js";
import { startEmulator, startGateway, type TestGateway } from "./support/app.js";
import { TOKEN_A, TWO_TENANTS } from "./support/policies.js";

/**
 * How the request path answers each way the cloud can fail, through the real SDK and the
 * emulator's fault injection. Each attempt is visible as an arrival at the emulator.
 */
let emulator: Emulator;
let gw: TestGateway;

beforeAll(async () => {
  // A task outlives the upstream timeout, so a blind resend after a lost reply would collide with it.
  emulator = await startEmulator(1_200);
  gw = await startGateway({
    emulator,
    policyText: TWO_TENANTS,
    env: { KEYGATE_UPSTREAM_TIMEOUT_MS: "400", KEYGATE_TASK_POLL_MS: "50" },
  });
});
afterAll(async () => {
  await gw?.stop();
  await emulator?.close();
});

let mark = 0;
beforeEach(() => {
  emulator.faults.reset();
  mark = emulator.stats.arrivals.length;
});
const associates = () =>
  emulator.stats.arrivals.slice(mark).filter((a) => a.action === "AssociateInstancesKeyPairs");

const client = () =>
  createClient(KeyPairService, createConnectTransport({ baseUrl: gw.url, httpVersion: "1.1" }));
const headers = { authorization: `Bearer ${TOKEN_A}` };
let k = 0;
/** Alternating keys keep each call's fingerprint distinct, so no call joins an earlier one. */
const request = (instanceId: string) => ({
  region: "ap-guangzhou",
  instanceIds: [instanceId],
  keyIds: [(k += 1) % 2 === 0 ? "skey-aaaaaaaa" : "skey-bbbbbbbb"],
  waitForCompletion: true,
});
const fail = (p: Promise<unknown>) =>
  p.then(
    () => expect.fail("expected an error"),
    (e: unknown) => ConnectError.from(e),
  );
const detail = (e: ConnectError) => e.findDetails(ErrorDetailSchema)[0];

describe("the cloud failing", () => {
  it("a 5xx once is retried (spending a second token) and succeeds", async () => {
    emulator.faults.set({ rules: [{ kind: "http500", action: "AssociateInstancesKeyPairs", next: 1 }] });
    const res = await client().associateKeyPairs(request("ins-gz000001"), { headers, timeoutMs: 15_000 });
    expect(res.instances[0]?.state).toBe("SUCCESS");
    expect(associates().map((a) => a.outcome)).toEqual(["HTTP500", "OK"]);
  });

  it("InternalError every time → UNAVAILABLE with the cloud's code after bounded retries", async () => {
    emulator.faults.set({ rules: [{ kind: "internalError", action: "AssociateInstancesKeyPairs" }] });
    const e = await fail(client().associateKeyPairs(request("ins-gz000002"), { headers, timeoutMs: 15_000 }));
    expect(e.code).toBe(Code.Unavailable);
    expect(detail(e)?.reason).toBe("InternalError");
    expect(detail(e)?.upstreamCode).toBe("InternalError");
    expect(associates().length).toBeGreaterThan(1);
    expect(associates().length).toBeLessThanOrEqual(4);
  });

  it("a reply lost after the cloud applied it: keygate asks the cloud instead of resending (one apply, its request id)", async () => {
    emulator.faults.set({ rules: [{ kind: "lostReply", action: "AssociateInstancesKeyPairs", next: 1 }] });
    const applied = emulator.stats.applies.length;
    const res = await client().associateKeyPairs(
      { ...request("ins-gz000001"), keyIds: ["skey-aaaaaaaa", "skey-bbbbbbbb"] },
      { headers, timeoutMs: 20_000 },
    );
    expect(res.instances[0]?.state).toBe("SUCCESS");
    expect(associates()).toHaveLength(1);
    const applies = emulator.stats.applies.slice(applied);
    expect(applies).toHaveLength(1);
    expect(res.requestId).toBe(applies[0]?.requestId);
  });

  it("a hanging cloud → UPSTREAM_TIMEOUT once the retries are spent, within the caller's deadline", async () => {
    emulator.faults.set({ rules: [{ kind: "hang", action: "AssociateInstancesKeyPairs" }] });
    const e = await fail(client().associateKeyPairs(request("ins-gz000002"), { headers, timeoutMs: 8_000 }));
    expect(e.code).toBe(Code.Unavailable);
    expect(detail(e)?.reason).toBe("UPSTREAM_TIMEOUT");
  });

  it.each([
    ["nonJson", "UPSTREAM_BAD_RESPONSE"],
    ["noResponse", "UPSTREAM_BAD_RESPONSE"],
    ["http503", "UPSTREAM_UNAVAILABLE"],
  ] as const)("%s every time → UNAVAILABLE %s", async (kind, reason) => {
    emulator.faults.set({ rules: [{ kind, action: "AssociateInstancesKeyPairs" }] });
    const e = await fail(
      client().associateKeyPairs(
        { ...request("ins-sh000001"), region: "ap-shanghai" },
        { headers, timeoutMs: 15_000 },
      ),
    );
    expect(e.code).toBe(Code.Unavailable);
    expect(detail(e)?.reason).toBe(reason);
  });

  it("after the faults clear, the same instances work again", async () => {
    const res = await client().associateKeyPairs(request("ins-gz000002"), { headers, timeoutMs: 15_000 });
    expect(res.instances[0]?.state).toBe("SUCCESS");
  });
});
