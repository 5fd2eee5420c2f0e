/**
 * G7 and G6 through a whole gateway: a scenario with every kind of decision (allowed, denied,
 * malformed, unauthenticated, a coalesced join, upstream errors), run with recognisable secrets
 * (bearer tokens, the cloud SecretKey and a session token). Every decision is exactly one audit
 * line with the fields an operator needs; then every log line (at trace level), every answer and
 * error sent to callers, and the /metrics text are searched for the secrets: none may appear.
 */
import { randomBytes } from "node:crypto";
import { toJson } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ErrorDetailSchema, KeyPairService } from "../src/gen/keygate/v1/keygate_pb.js";
import { createEmulator, type Emulator } from "../src/upstream/emulator/index.js";
import { withoutWarmUp } from "./support/fleet.js";
import { startGateway, type TestGateway } from "./support/app.js";
import { sha256 } from "./support/policies.js";

/** A secret that is easy to find: a label and 32 random hex digits. */
const canary = (label: string) => `${label}-${randomBytes(16).toString("hex")}`;

const SECRET_ID = "AKIDAUDITTEST0000000000000000001";
const SECRET_KEY = canary("SECRETKEY");
const SESSION_TOKEN = canary("SESSIONTOKEN");
const WRONG_SECRET_KEY = canary("WRONGSECRETKEY");
const TOKEN_A = canary("tokA");
const TOKEN_B = canary("tokB");
const UNKNOWN_TOKEN = canary("tokUnknown");
const SECRETS = { SECRET_KEY, SESSION_TOKEN, WRONG_SECRET_KEY, TOKEN_A, TOKEN_B, UNKNOWN_TOKEN };

const POLICY = `
tenants:
  team-a:
    tokens_sha256: ["${sha256(TOKEN_A)}"]
    regions: [ap-guangzhou, ap-shanghai]
    instances:
      ids: [ins-zz000001]
      tags: { owner: team-a }
    keys: [skey-aaaaaaaa, skey-bbbbbbbb]
    force_stop: true
  team-b:
    tokens_sha256: ["${sha256(TOKEN_B)}"]
    regions: [ap-guangzhou]
    instances:
      projects: [1002]
    keys: "*"
`;

let emulator: Emulator;
let gw: TestGateway;
/** Same cloud account, but signing with the wrong SecretKey (an operator's mistake). */
let gwBadKey: TestGateway;

beforeAll(async () => {
  emulator = await createEmulator({
    host: "127.0.0.1",
    port: 0,
    taskMs: 100,
    credentials: { [SECRET_ID]: { secretKey: SECRET_KEY, token: SESSION_TOKEN } },
  });
  const env = {
    TENCENTCLOUD_SECRET_ID: SECRET_ID,
    TENCENTCLOUD_SECRET_KEY: SECRET_KEY,
    TENCENTCLOUD_SESSION_TOKEN: SESSION_TOKEN,
    KEYGATE_LOG_LEVEL: "trace",
  };
  gw = await startGateway({ emulator, policyText: POLICY, env });
  gwBadKey = await startGateway({
    emulator,
    policyText: POLICY,
    env: { ...env, TENCENTCLOUD_SECRET_KEY: WRONG_SECRET_KEY },
  });
});
afterAll(async () => {
  await gw?.stop();
  await gwBadKey?.stop();
  await emulator?.close();
});

interface Req {
  region: string;
  instanceIds: string[];
  keyIds: string[];
  forceStop?: boolean;
  waitForCompletion?: boolean;
  idempotencyKey?: string;
}

/** Everything a caller was told, as text, for the secret search. */
const seenByCallers: string[] = [];
/** The x-request-id of every call, with the gateway it went to. */
const calls: { id: string; gw: TestGateway }[] = [];
let seq = 0;

type Outcome =
  | { ok: true; requestId: string; deduplicated: boolean; id: string }
  | {
      ok: false;
      err: ConnectError;
      reason: string;
      upstreamCode: string;
      upstreamRequestId: string;
      id: string;
    };

async function call(
  target: TestGateway,
  req: Req,
  authorization: string | undefined,
  protocol: "connect" | "grpc" = "connect",
): Promise<Outcome> {
  seq += 1;
  const id = `audit-${seq}`;
  calls.push({ id, gw: target });
  const transport =
    protocol === "grpc"
      ? createGrpcTransport({ baseUrl: target.url })
      : createConnectTransport({ baseUrl: target.url, httpVersion: "1.1" });
  const headers: Record<string, string> = { "x-request-id": id };
  if (authorization !== undefined) headers.authorization = authorization;
  try {
    const res = await createClient(KeyPairService, transport).associateKeyPairs(req, {
      headers,
      timeoutMs: 20_000,
    });
    seenByCallers.push(JSON.stringify({ requestId: res.requestId, instances: res.instances }));
    return { ok: true, requestId: res.requestId, deduplicated: res.deduplicated, id };
  } catch (e) {
    const err = ConnectError.from(e);
    const detail = err.findDetails(ErrorDetailSchema)[0];
    seenByCallers.push(
      err.message,
      err.rawMessage,
      JSON.stringify(detail ? toJson(ErrorDetailSchema, detail) : null),
      JSON.stringify([...err.metadata.entries()]),
    );
    return {
      ok: false,
      err,
      reason: detail?.reason ?? "",
      upstreamCode: detail?.upstreamCode ?? "",
      upstreamRequestId: detail?.upstreamRequestId ?? "",
      id,
    };
  }
}

const bearer = (t: string) => `Bearer ${t}`;
const auditOf = (target: TestGateway, id: string) => target.logs.audits().filter((a) => a.requestId === id);

/** Results of the scenario, by step, filled in the first test and checked by the others. */
const r: Record<string, Outcome> = {};

describe("a scenario with every kind of decision", () => {
  it("runs: allowed, denied, malformed, unauthenticated, coalesced, upstream errors", async () => {
    r.allowed = await call(
      gw,
      {
        region: "ap-guangzhou",
        instanceIds: ["ins-gz000004"], // RUNNING: needs force_stop, which team-a may use
        keyIds: ["skey-aaaaaaaa"],
        forceStop: true,
        waitForCompletion: true,
      },
      bearer(TOKEN_A),
    );
    expect(r.allowed.ok).toBe(true);

    r.denied = await call(
      gw,
      { region: "ap-guangzhou", instanceIds: ["ins-gz000003"], keyIds: ["skey-aaaaaaaa"] },
      bearer(TOKEN_A),
    );
    r.malformed = await call(
      gw,
      { region: "ap-guangzhou", instanceIds: ["INS-GZ000001"], keyIds: ["skey-aaaaaaaa"] },
      bearer(TOKEN_A),
      "grpc",
    );
    r.unauthenticated = await call(
      gw,
      { region: "ap-guangzhou", instanceIds: ["ins-gz000001"], keyIds: ["skey-aaaaaaaa"] },
      bearer(UNKNOWN_TOKEN),
    );
    r.basic = await call(
      gw,
      { region: "ap-guangzhou", instanceIds: ["ins-gz000001"], keyIds: ["skey-aaaaaaaa"] },
      `Basic ${Buffer.from(`team-a:${TOKEN_A}`).toString("base64")}`,
    );

    // Two identical calls while the cloud is slow: the second joins the first.
    emulator.faults.set({ latencyMs: 400 });
    const same = { region: "ap-guangzhou", instanceIds: ["ins-gz000002"], keyIds: ["skey-bbbbbbbb"] };
    const [j1, j2] = await Promise.all([
      call(gw, same, bearer(TOKEN_A)),
      call(gw, same, bearer(TOKEN_A), "grpc"),
    ]);
    emulator.faults.set({});
    r.join1 = j1;
    r.join2 = j2;

    // Allowed by the policy (listed by id) but unknown to the cloud: the cloud's own refusal.
    r.notFound = await call(
      gw,
      { region: "ap-guangzhou", instanceIds: ["ins-zz000001"], keyIds: ["skey-aaaaaaaa"] },
      bearer(TOKEN_A),
    );

    // The cloud fails every attempt with InternalError: retried, then UNAVAILABLE.
    emulator.faults.set({
      rules: [{ kind: "internalError", action: "AssociateInstancesKeyPairs", next: 10 }],
    });
    r.internal = await call(
      gw,
      { region: "ap-shanghai", instanceIds: ["ins-sh000001"], keyIds: ["skey-aaaaaaaa"] },
      bearer(TOKEN_A),
    );
    emulator.faults.set({});

    // keygate's own SecretKey is wrong: an operator problem, reported without the key. The
    // instance is listed by id, so the policy needs no DescribeInstances and the associate fails.
    r.badKey = await call(
      gwBadKey,
      { region: "ap-guangzhou", instanceIds: ["ins-zz000001"], keyIds: ["skey-aaaaaaaa"] },
      bearer(TOKEN_A),
    );
    // Same, but team-b's project selector needs a DescribeInstances first, and that one fails.
    r.badKeyLookup = await call(
      gwBadKey,
      { region: "ap-guangzhou", instanceIds: ["ins-gz000003"], keyIds: ["skey-cccccccc"] },
      bearer(TOKEN_B),
    );
  });

  it("gives each caller the right answer", () => {
    const fail = (o: Outcome | undefined) => {
      if (!o || o.ok) throw new Error("expected a refusal");
      return o;
    };
    expect(fail(r.denied).err.code).toBe(Code.PermissionDenied);
    expect(fail(r.malformed).reason).toBe("InvalidInstanceId.Malformed");
    expect(fail(r.unauthenticated).err.code).toBe(Code.Unauthenticated);
    expect(fail(r.basic).err.code).toBe(Code.Unauthenticated);
    expect(r.join1?.ok && r.join2?.ok).toBe(true);
    if (r.join1?.ok && r.join2?.ok) {
      expect(r.join1.requestId).toBe(r.join2.requestId);
      expect([r.join1.deduplicated, r.join2.deduplicated].sort()).toEqual([false, true]);
    }
    expect(fail(r.notFound)).toMatchObject({ reason: "InvalidInstanceId.NotFound" });
    expect(fail(r.notFound).err.code).toBe(Code.NotFound);
    expect(fail(r.notFound).upstreamRequestId).not.toBe("");
    expect(fail(r.internal).err.code).toBe(Code.Unavailable);
    expect(fail(r.internal).upstreamCode).toBe("InternalError");
    // keygate's own cloud identity refused: an operator problem, not retried blindly.
    expect(fail(r.badKey).err.code).toBe(Code.FailedPrecondition);
    expect(fail(r.badKey).upstreamCode).toMatch(/^AuthFailure\./);
    expect(fail(r.badKeyLookup).err.code).toBe(Code.FailedPrecondition);
    expect(fail(r.badKeyLookup).upstreamCode).toMatch(/^AuthFailure\./);
  });

  it("writes exactly one audit line per decision, with every field", () => {
    for (const { id, gw: target } of calls) expect(auditOf(target, id), id).toHaveLength(1);
    expect(gw.logs.audits()).toHaveLength(calls.filter((c) => c.gw === gw).length);
    expect(gwBadKey.logs.audits()).toHaveLength(calls.filter((c) => c.gw === gwBadKey).length);

    const FIELDS = [
      "requestId",
      "tenant",
      "region",
      "instances",
      "keys",
      "forceStop",
      "decision",
      "rule",
      "reason",
      "deduplicated",
      "limiterWaitMs",
      "leaseWaitMs",
      "attempts",
      "upstreamRequestId",
      "upstreamCode",
      "durationMs",
    ];
    for (const line of [...gw.logs.audits(), ...gwBadKey.logs.audits()]) {
      for (const f of FIELDS) expect(line, `${String(line.requestId)} has ${f}`).toHaveProperty(f);
      expect(line.limiterWaitMs).toBeGreaterThanOrEqual(0);
      expect(line.leaseWaitMs).toBeGreaterThanOrEqual(0);
    }

    const one = (o: Outcome | undefined) => auditOf(gw, o?.id ?? "")[0];
    const allowed = r.allowed?.ok ? r.allowed : undefined;
    expect(one(r.allowed)).toMatchObject({
      tenant: "team-a",
      region: "ap-guangzhou",
      instances: ["ins-gz000004"],
      keys: ["skey-aaaaaaaa"],
      forceStop: true,
      decision: "allowed",
      rule: null,
      reason: null,
      deduplicated: false,
      attempts: 1,
      upstreamRequestId: allowed?.requestId,
      upstreamCode: null,
    });
    expect(one(r.denied)).toMatchObject({
      tenant: "team-a",
      instances: ["ins-gz000003"],
      decision: "denied",
      rule: "instances",
      reason: "POLICY_DENIED",
      attempts: 0,
      upstreamRequestId: null,
      upstreamCode: null,
    });
    expect(one(r.malformed)).toMatchObject({
      tenant: "team-a",
      instances: ["INS-GZ000001"],
      decision: "denied",
      reason: "InvalidInstanceId.Malformed",
      attempts: 0,
    });
    for (const o of [r.unauthenticated, r.basic]) {
      expect(one(o)).toMatchObject({
        tenant: null,
        decision: "denied",
        rule: "authentication",
        reason: "UNAUTHENTICATED",
        attempts: 0,
      });
    }
    const joins = [one(r.join1), one(r.join2)];
    expect(joins.map((j) => j?.decision)).toEqual(["allowed", "allowed"]);
    expect(joins.map((j) => j?.deduplicated).sort()).toEqual([false, true]);
    expect(joins.map((j) => j?.attempts).sort()).toEqual([0, 1]);
    const joinedId = r.join1?.ok ? r.join1.requestId : "";
    expect(joins.map((j) => j?.upstreamRequestId)).toEqual([joinedId, joinedId]);

    const notFound = r.notFound?.ok === false ? r.notFound : undefined;
    expect(one(r.notFound)).toMatchObject({
      tenant: "team-a",
      decision: "failed",
      reason: "InvalidInstanceId.NotFound",
      upstreamCode: "InvalidInstanceId.NotFound",
      upstreamRequestId: notFound?.upstreamRequestId,
      attempts: 1,
    });
    const internal = one(r.internal);
    expect(internal).toMatchObject({
      tenant: "team-a",
      region: "ap-shanghai",
      decision: "failed",
      reason: "InternalError",
      upstreamCode: "InternalError",
    });
    expect(internal?.attempts).toBeGreaterThan(1);
    expect(internal?.upstreamRequestId).toEqual(expect.any(String));
    const bad = gwBadKey.logs.audits().find((a) => a.requestId === r.badKey?.id);
    expect(bad).toMatchObject({
      tenant: "team-a",
      decision: "failed",
      upstreamCode: expect.stringMatching(/^AuthFailure\./) as unknown,
      attempts: 1,
    });
  });

  it("audits a policy lookup that failed upstream as failed, not as a policy denial", () => {
    // The request was never judged by the policy: DescribeInstances (needed for team-b's project
    // selector) failed. "denied" would count a cloud outage as callers breaking their policy.
    const line = gwBadKey.logs.audits().find((a) => a.requestId === r.badKeyLookup?.id);
    expect(line).toMatchObject({
      tenant: "team-b",
      reason: expect.stringMatching(/^AuthFailure\./) as unknown,
      rule: null,
      attempts: 0,
    });
    expect(line?.decision).toBe("failed");
  });
});

/** The forms a secret could leak in: whole, either half, or base64-encoded. */
function needles(secret: string): string[] {
  const hex = secret.slice(secret.lastIndexOf("-") + 1);
  return [secret, hex, hex.slice(0, 16), hex.slice(16), Buffer.from(secret).toString("base64")];
}

function leaks(where: string, haystack: string): string[] {
  const found: string[] = [];
  for (const [name, secret] of Object.entries(SECRETS)) {
    for (const n of needles(secret)) if (haystack.includes(n)) found.push(`${name} in ${where}`);
  }
  return found;
}

describe("no secret anywhere (G6)", () => {
  it("the canaries are real: the cloud saw keygate's credential and the scenario reached it", () => {
    const arrivals = emulator.stats.arrivals.filter((a) => a.action === "AssociateInstancesKeyPairs");
    expect(arrivals.filter((a) => a.secretId === SECRET_ID && a.outcome === "OK").length).toBeGreaterThan(0);
    expect(
      withoutWarmUp(emulator.stats.arrivals).filter((a) => a.outcome.startsWith("AuthFailure")).length,
    ).toBe(2);
    // A sanity check of the search itself.
    expect(leaks("probe", `x ${TOKEN_A.slice(-16)} y`)).toEqual(["TOKEN_A in probe"]);
  });

  it("not in any log line, at trace level", () => {
    const lines = [...gw.logs.lines, ...gwBadKey.logs.lines];
    expect(lines.length).toBeGreaterThan(calls.length);
    expect(lines.flatMap((l, i) => leaks(`log line ${i}: ${l.slice(0, 200)}`, l))).toEqual([]);
  });

  it("not in any answer or error message sent to a caller", () => {
    expect(seenByCallers.length).toBeGreaterThan(calls.length);
    expect(seenByCallers.flatMap((s) => leaks(`caller text: ${s.slice(0, 200)}`, s))).toEqual([]);
  });

  it("not in the raw HTTP error bodies, as curl would show them", async () => {
    for (const authorization of [
      bearer(UNKNOWN_TOKEN),
      `Basic ${TOKEN_A}`,
      `Bearer ${TOKEN_A} ${SECRET_KEY}`,
    ]) {
      const res = await fetch(`${gw.url}/keygate.v1.KeyPairService/AssociateKeyPairs`, {
        method: "POST",
        headers: { "Content-Type": "application/json", Authorization: authorization },
        body: JSON.stringify({
          region: "ap-guangzhou",
          instanceIds: ["ins-gz000001"],
          keyIds: ["skey-aaaaaaaa"],
        }),
      });
      const text = `${JSON.stringify([...res.headers.entries()])}\n${await res.text()}`;
      expect(res.status).toBe(401);
      expect(leaks("HTTP error body", text)).toEqual([]);
    }
  });

  it("not in /metrics", async () => {
    for (const target of [gw, gwBadKey]) {
      const res = await fetch(target.metricsUrl);
      expect(res.status).toBe(200);
      const text = await res.text();
      expect(text).toContain("keygate_requests_total");
      expect(leaks("/metrics", text)).toEqual([]);
    }
  });
});
