/**
 * The policy decision for one request: pure, synchronous, and explainable. The rules are
 * checked in a fixed order and the refusal names the first one that fails, so the same request
 * against the same policy is always refused for the same reason (the audit line depends on it).
 *
 * A refusal only ever mentions values from the caller's own request. It never says whether an
 * instance exists: "not allowed" is the answer both for another tenant's instance and for one
 * that does not exist, so probing ids reveals nothing about the account.
 */
import type { AssociateInput, InstanceInfo } from "../core/model.js";
import type { PolicyDecision } from "../core/ports.js";
import type { InstanceSelectors, TenantPolicy } from "./policy.js";

/** The rules a refusal can name (the gate adds "tenant" for a tenant gone from the policy). */
export type PolicyRule = "regions" | "force_stop" | "max_instances_per_request" | "keys" | "instances";

/** What DescribeInstances said; an id absent from the map, or mapped to undefined, is unknown to the cloud. */
export type FoundInstances = ReadonlyMap<string, InstanceInfo | undefined>;

const ALLOWED: PolicyDecision = Object.freeze({ allowed: true });

/** Keeps messages readable for 100-id requests; `offending` still lists them all. */
const MAX_IDS_IN_MESSAGE = 10;

function listForMessage(ids: readonly string[]): string {
  const shown = ids.slice(0, MAX_IDS_IN_MESSAGE).join(", ");
  return ids.length > MAX_IDS_IN_MESSAGE ? `${shown} and ${ids.length - MAX_IDS_IN_MESSAGE} more` : shown;
}

function unique(values: readonly string[]): string[] {
  return [...new Set(values)];
}

function deny(rule: PolicyRule, message: string, offending: string[]): PolicyDecision {
  return { allowed: false, rule, message, offending };
}

/** The rules that need no knowledge of the instances; undefined when they all pass. */
function decideWithoutInstances(tenant: TenantPolicy, request: AssociateInput): PolicyDecision | undefined {
  if (!tenant.regions.has(request.region)) {
    return deny("regions", `region ${request.region} is not allowed for this tenant`, [request.region]);
  }
  if (request.forceStop && !tenant.forceStop) {
    return deny("force_stop", "force_stop is not allowed for this tenant", []);
  }
  // The raw length, duplicates included: that is what the upstream would receive.
  const count = request.instanceIds.length;
  if (count > tenant.maxInstancesPerRequest) {
    return deny(
      "max_instances_per_request",
      `${count} instances in one request; this tenant may send at most ${tenant.maxInstancesPerRequest}`,
      [],
    );
  }
  const keys = tenant.keys;
  if (keys !== "*") {
    const bad = unique(request.keyIds.filter((k) => !keys.has(k)));
    if (bad.length > 0) {
      return deny("keys", `key pairs not allowed for this tenant: ${listForMessage(bad)}`, bad);
    }
  }
  return undefined;
}

function tagsMatch(wanted: Readonly<Record<string, string>>, info: InstanceInfo): boolean {
  return Object.entries(wanted).every(([k, v]) => Object.hasOwn(info.tags, k) && info.tags[k] === v);
}

/** ids OR all tags OR project; a selector that needs cloud data fails when the instance is unknown. */
export function instanceMatches(
  selectors: InstanceSelectors,
  id: string,
  info: InstanceInfo | undefined,
): boolean {
  if (selectors.ids.has(id)) return true;
  if (info === undefined) return false;
  if (selectors.tags !== undefined && tagsMatch(selectors.tags, info)) return true;
  return selectors.projects.has(info.projectId);
}

/** Allows the request only when every rule passes; `lookup` needs the ids `needsLookup` returned. */
export function evaluate(
  tenant: TenantPolicy,
  request: AssociateInput,
  lookup: FoundInstances,
): PolicyDecision {
  const early = decideWithoutInstances(tenant, request);
  if (early) return early;
  const selectors = tenant.instances;
  if (selectors === "*") return ALLOWED;
  const bad = unique(request.instanceIds.filter((id) => !instanceMatches(selectors, id, lookup.get(id))));
  if (bad.length > 0) {
    return deny("instances", `instances not allowed for this tenant: ${listForMessage(bad)}`, bad);
  }
  return ALLOWED;
}

/**
 * The instance ids whose decision needs DescribeInstances: those not listed in `ids` when the
 * tenant also has tag or project selectors. Empty when an earlier rule already refuses the
 * request, so a request that is denied anyway costs no describe call.
 */
export function needsLookup(tenant: TenantPolicy, request: AssociateInput): string[] {
  const selectors = tenant.instances;
  if (selectors === "*") return [];
  if (selectors.tags === undefined && selectors.projects.size === 0) return [];
  if (decideWithoutInstances(tenant, request)) return [];
  return unique(request.instanceIds.filter((id) => !selectors.ids.has(id)));
}
