import fc from "fast-check";
import { describe, expect, it } from "vitest";
import type { AssociateInput, InstanceInfo } from "../src/core/model.js";
import { evaluate, needsLookup, type FoundInstances } from "../src/policy/decide.js";
import type { TenantPolicy } from "../src/policy/policy.js";
import { SUPPORTED_REGIONS } from "../src/core/regions.js";

function tenant(over: Partial<TenantPolicy> = {}): TenantPolicy {
  return {
    name: "team-a",
    tokensSha256: [],
    identities: { spiffe: [], dns: [] },
    regions: new Set(["ap-guangzhou", "ap-shanghai"]),
    instances: { ids: new Set(["ins-aaaaaaa1"]), tags: { owner: "team-a" }, projects: new Set([1001]) },
    keys: new Set(["skey-aaaaaaaa", "skey-bbbbbbbb"]),
    forceStop: false,
    maxInstancesPerRequest: 10,
    weight: 1,
    ...over,
  };
}

function info(instanceId: string, projectId: number, tags: Record<string, string>): InstanceInfo {
  return {
    instanceId,
    instanceState: "STOPPED",
    osName: "TencentOS",
    projectId,
    tags,
    keyIds: [],
    latestOperation: null,
    latestOperationState: null,
    latestOperationRequestId: null,
    latestOperationErrorMsg: null,
  };
}

function request(over: Partial<AssociateInput> = {}): AssociateInput {
  return {
    region: "ap-guangzhou",
    instanceIds: ["ins-aaaaaaa1"],
    keyIds: ["skey-aaaaaaaa"],
    forceStop: false,
    ...over,
  };
}

const lookupOf = (...infos: InstanceInfo[]): FoundInstances => new Map(infos.map((i) => [i.instanceId, i]));

describe("decide: examples", () => {
  it("allows an instance matched by id, by all tags, or by project", () => {
    const lookup = lookupOf(
      info("ins-tagged01", 7, { owner: "team-a", env: "dev" }),
      info("ins-project1", 1001, { owner: "team-b" }),
    );
    const r = request({ instanceIds: ["ins-aaaaaaa1", "ins-tagged01", "ins-project1"] });
    expect(evaluate(tenant(), r, lookup)).toEqual({ allowed: true });
  });

  it("requires every listed tag to be equal", () => {
    const t = tenant({
      instances: { ids: new Set(), tags: { owner: "team-a", env: "prod" }, projects: new Set() },
    });
    const lookup = lookupOf(info("ins-tagged01", 7, { owner: "team-a", env: "dev" }));
    expect(evaluate(t, request({ instanceIds: ["ins-tagged01"] }), lookup)).toMatchObject({
      allowed: false,
      rule: "instances",
      offending: ["ins-tagged01"],
    });
  });

  it("denies an instance unknown to the cloud unless its id is listed", () => {
    const r = request({ instanceIds: ["ins-aaaaaaa1", "ins-nothere1"] });
    expect(evaluate(tenant(), r, new Map([["ins-nothere1", undefined]]))).toEqual({
      allowed: false,
      rule: "instances",
      message: "instances not allowed for this tenant: ins-nothere1",
      offending: ["ins-nothere1"],
    });
    expect(evaluate(tenant(), r, new Map())).toMatchObject({ allowed: false, rule: "instances" });
  });

  it("names the first failing rule in a fixed order", () => {
    const t = tenant({ maxInstancesPerRequest: 1 });
    const bad = request({
      region: "ap-tokyo",
      forceStop: true,
      instanceIds: ["ins-zzzzzzz1", "ins-zzzzzzz2"],
      keyIds: ["skey-zzzzzzzz"],
    });
    expect(evaluate(t, bad, new Map())).toMatchObject({ rule: "regions", offending: ["ap-tokyo"] });
    expect(evaluate(t, { ...bad, region: "ap-shanghai" }, new Map())).toMatchObject({ rule: "force_stop" });
    expect(evaluate(t, { ...bad, region: "ap-shanghai", forceStop: false }, new Map())).toMatchObject({
      rule: "max_instances_per_request",
      message: "2 instances in one request; this tenant may send at most 1",
    });
    expect(
      evaluate(
        t,
        { ...bad, region: "ap-shanghai", forceStop: false, instanceIds: ["ins-zzzzzzz1"] },
        new Map(),
      ),
    ).toMatchObject({ rule: "keys", offending: ["skey-zzzzzzzz"] });
  });

  it("allows force_stop only to tenants that have it", () => {
    expect(evaluate(tenant({ forceStop: true }), request({ forceStop: true }), new Map()).allowed).toBe(true);
    expect(evaluate(tenant(), request({ forceStop: true }), new Map())).toMatchObject({ rule: "force_stop" });
  });

  it("lists offending ids once each, and shortens long messages", () => {
    const ids = Array.from({ length: 12 }, (_, i) => `ins-zzzzzz${String(i).padStart(2, "0")}`);
    const d = evaluate(
      tenant({ maxInstancesPerRequest: 100 }),
      request({ instanceIds: [...ids, ids[0]!] }),
      new Map(),
    );
    expect(d).toMatchObject({ allowed: false, offending: ids });
    if (!d.allowed) expect(d.message).toMatch(/ins-zzzzzz09 and 2 more$/);
  });
});

describe("needsLookup", () => {
  it("asks only for ids not listed, and only when tags or projects are used", () => {
    const r = request({ instanceIds: ["ins-aaaaaaa1", "ins-other001", "ins-other001"] });
    expect(needsLookup(tenant(), r)).toEqual(["ins-other001"]);
    const idsOnly = tenant({
      instances: { ids: new Set(["ins-aaaaaaa1"]), tags: undefined, projects: new Set() },
    });
    expect(needsLookup(idsOnly, r)).toEqual([]);
    expect(needsLookup(tenant({ instances: "*" }), r)).toEqual([]);
  });

  it("asks for nothing when the request is refused anyway", () => {
    expect(needsLookup(tenant(), request({ region: "ap-tokyo", instanceIds: ["ins-other001"] }))).toEqual([]);
    expect(
      needsLookup(tenant(), request({ keyIds: ["skey-zzzzzzzz"], instanceIds: ["ins-other001"] })),
    ).toEqual([]);
  });
});

// --- properties ----------------------------------------------------------------------------

/** A small pool so that generated requests and policies overlap often. */
const ids = ["ins-aaaaaaa1", "ins-aaaaaaa2", "ins-bbbbbbb1", "ins-bbbbbbb2", "ins-ccccccc1", "ins-ccccccc2"];
const keyIds = ["skey-aaaaaaaa", "skey-bbbbbbbb", "skey-cccccccc"];
const regions = ["ap-guangzhou", "ap-shanghai", "ap-tokyo"];
const owners = ["team-a", "team-b", "secret-owner"];

const idArb = fc.oneof(fc.constantFrom(...ids), fc.stringMatching(/^ins-[a-z0-9]{8}$/));
const infoArb = (id: string) =>
  fc
    .record({
      projectId: fc.constantFrom(0, 1001, 1002),
      tags: fc.dictionary(fc.constantFrom("owner", "env"), fc.constantFrom(...owners, "dev")),
    })
    .map((r) => info(id, r.projectId, r.tags));

const tenantArb: fc.Arbitrary<TenantPolicy> = fc
  .record({
    regions: fc.uniqueArray(fc.constantFrom(...regions), { minLength: 1 }),
    instances: fc.oneof(
      fc.constant("*" as const),
      fc.record({
        ids: fc.uniqueArray(fc.constantFrom(...ids)).map((a) => new Set(a)),
        tags: fc.option(
          fc.dictionary(fc.constantFrom("owner", "env"), fc.constantFrom(...owners), { minKeys: 1 }),
          {
            nil: undefined,
          },
        ),
        projects: fc.uniqueArray(fc.constantFrom(0, 1001, 1002)).map((a) => new Set(a)),
      }),
    ),
    keys: fc.oneof(
      fc.constant("*" as const),
      fc.uniqueArray(fc.constantFrom(...keyIds), { minLength: 1 }).map((a) => new Set(a)),
    ),
    forceStop: fc.boolean(),
    maxInstancesPerRequest: fc.integer({ min: 1, max: 100 }),
  })
  .map((r) => tenant({ ...r, regions: new Set(r.regions) }));

const requestArb: fc.Arbitrary<AssociateInput> = fc.record({
  region: fc.constantFrom(...regions),
  instanceIds: fc.uniqueArray(idArb, { minLength: 1, maxLength: 8 }),
  keyIds: fc.uniqueArray(fc.constantFrom(...keyIds), { minLength: 1 }),
  forceStop: fc.boolean(),
});

/** A request plus what the cloud knows: each id exists (with some tags/project) or not. */
const scenarioArb = requestArb.chain((req) =>
  fc.tuple(...req.instanceIds.map((id) => fc.option(infoArb(id), { nil: undefined }))).map((infos) => ({
    req,
    lookup: new Map(req.instanceIds.map((id, i) => [id, infos[i]])),
  })),
);

describe("decide: properties", () => {
  it("adding an instance never turns a refusal into an allow", () => {
    fc.assert(
      fc.property(
        tenantArb,
        scenarioArb,
        idArb.chain((id) => fc.tuple(fc.constant(id), fc.option(infoArb(id), { nil: undefined }))),
        (t, { req, lookup }, [extraId, extraInfo]) => {
          fc.pre(!req.instanceIds.includes(extraId));
          const before = evaluate(t, req, lookup);
          const bigger = { ...req, instanceIds: [...req.instanceIds, extraId] };
          const after = evaluate(t, bigger, new Map([...lookup, [extraId, extraInfo]]));
          if (!before.allowed) expect(after.allowed).toBe(false);
        },
      ),
    );
  });

  it('a tenant with "*" everywhere allows any valid request in its regions', () => {
    fc.assert(
      fc.property(requestArb, (req) => {
        const t = tenant({
          regions: new Set([req.region]),
          instances: "*",
          keys: "*",
          forceStop: true,
          maxInstancesPerRequest: 100,
        });
        expect(evaluate(t, req, new Map())).toEqual({ allowed: true });
      }),
    );
  });

  it("a request with any foreign instance is refused, naming it", () => {
    fc.assert(
      fc.property(tenantArb, scenarioArb, fc.boolean(), (t, { req, lookup }, knownToCloud) => {
        fc.pre(t.instances !== "*");
        // Foreign: not listed, and unknown to the cloud or matching neither tags nor project.
        const foreign = "ins-foreign1";
        const withForeign = { ...req, instanceIds: [...req.instanceIds, foreign] };
        const full = new Map(lookup);
        if (knownToCloud) full.set(foreign, info(foreign, 4242, {}));
        const d = evaluate(t, withForeign, full);
        expect(d.allowed).toBe(false);
        if (!d.allowed && d.rule === "instances") expect(d.offending).toContain(foreign);
      }),
    );
  });

  it("a refusal mentions only the request's own values, never the policy's", () => {
    fc.assert(
      fc.property(tenantArb, scenarioArb, (t, { req, lookup }) => {
        const d = evaluate(t, req, lookup);
        if (d.allowed) return;
        const own = new Set([req.region, ...req.instanceIds, ...req.keyIds]);
        for (const o of d.offending) expect(own.has(o)).toBe(true);
        const policyOnly = [
          ...(t.instances === "*" ? [] : [...t.instances.ids, ...Object.values(t.instances.tags ?? {})]),
          ...(t.keys === "*" ? [] : [...t.keys]),
          ...t.regions,
        ].filter((v) => !own.has(v));
        for (const v of policyOnly) expect(d.message).not.toContain(v);
      }),
    );
  });

  it("looking up only what needsLookup asks for gives the same decision as knowing everything", () => {
    fc.assert(
      fc.property(tenantArb, scenarioArb, (t, { req, lookup }) => {
        const asked = new Set(needsLookup(t, req));
        const partial = new Map([...lookup].filter(([id]) => asked.has(id)));
        expect(evaluate(t, req, partial)).toEqual(evaluate(t, req, lookup));
      }),
    );
  });

  it("every supported region is usable by a tenant that lists it", () => {
    for (const region of SUPPORTED_REGIONS) {
      const t = tenant({ regions: new Set([region]), instances: "*", keys: "*" });
      expect(evaluate(t, request({ region }), new Map()).allowed).toBe(true);
    }
  });
});
