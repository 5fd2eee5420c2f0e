/**
 * The policy file's shape (the README, "Tenant policy"), as a zod schema. Every object is strict:
 * a misspelt field (`force-stop`, `instance`) must fail loudly, not silently fall back to a
 * default, because a silently ignored restriction is a widened permission.
 *
 * Messages are written for the operator reading `keygate policy check`; the ones zod generates
 * (wrong type, unknown field, missing field) are rewritten in `issues.ts`.
 */
import * as z from "zod";
import { INSTANCE_ID_PATTERN, KEY_ID_PATTERN, SHA256_HEX_PATTERN } from "../core/ids.js";
import { SUPPORTED_REGIONS } from "../core/regions.js";
import { excerptValue } from "./excerpt.js";

/** How a value is shown inside an error message: strings quoted, the rest as YAML would show them. */
export function show(value: unknown): string {
  if (typeof value === "string") return excerptValue(value);
  if (value === null) return "null";
  if (Array.isArray(value)) return "a list";
  if (typeof value === "object") return "a map";
  if (typeof value === "number" || typeof value === "boolean" || typeof value === "bigint")
    return String(value);
  return typeof value;
}

/** Tenant names end up in audit lines and metric labels: keep them short and plain. */
const TENANT_NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;
/** spiffe://trust-domain/path — trust domain and segments as the SPIFFE ID spec allows. */
const SPIFFE_ID_PATTERN = /^spiffe:\/\/[a-z0-9._-]+(\/[A-Za-z0-9._-]+)*$/;
/** A plain DNS name; wildcards are refused so that one SAN maps to exactly one tenant. */
const DNS_NAME_PATTERN =
  /^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;

const nonEmpty = { error: "must not be empty" };

function list<T extends z.ZodType>(item: T) {
  return z.array(item).min(1, nonEmpty);
}

const instanceId = z.string().regex(INSTANCE_ID_PATTERN, {
  error: (iss) => `${show(iss.input)} is not a valid instance id (ins- + 8 of [a-z0-9])`,
});

const keyId = z.string().regex(KEY_ID_PATTERN, {
  error: (iss) => `${show(iss.input)} is not a valid key pair id (skey- + 8 of [a-z0-9])`,
});

/** Never echoes the value: an operator who pasted a token instead of its hash must not see it logged. */
const tokenSha256 = z.string().regex(SHA256_HEX_PATTERN, {
  error: (iss) =>
    typeof iss.input === "string" && /^[0-9a-fA-F]{64}$/.test(iss.input)
      ? "is not lower-case: write the sha256 in lower-case hex"
      : `is not a sha256 hex digest (64 lower-case hex digits; "keygate token" prints one); the value is not shown in case it is a token`,
});

const region = z.enum(SUPPORTED_REGIONS as [string, ...string[]], {
  error: (iss) => `${show(iss.input)} is not a supported region (${SUPPORTED_REGIONS.join(", ")})`,
});

const spiffeId = z.string().regex(SPIFFE_ID_PATTERN, {
  error: (iss) => `${show(iss.input)} is not a SPIFFE id (spiffe://trust-domain/path)`,
});

const dnsName = z.string().regex(DNS_NAME_PATTERN, {
  error: (iss) => `${show(iss.input)} is not a DNS name (wildcards are not allowed)`,
});

const tags = z
  .record(z.string().min(1, { error: "tag keys must not be empty" }), z.string())
  .refine((t) => Object.keys(t).length > 0, nonEmpty);

const projectId = z
  .number()
  .int()
  .min(0, { error: (iss) => `${show(iss.input)} is not a project id (an integer ≥ 0)` });

const instanceSelectors = z
  .strictObject({
    ids: list(instanceId).optional(),
    tags: tags.optional(),
    projects: list(projectId).optional(),
  })
  .refine((s) => s.ids !== undefined || s.tags !== undefined || s.projects !== undefined, {
    error: 'names no selector: give ids, tags and/or projects (or "*" for any instance)',
  });

const identities = z
  .strictObject({
    spiffe: list(spiffeId).optional(),
    dns: list(dnsName).optional(),
  })
  .refine((i) => i.spiffe !== undefined || i.dns !== undefined, {
    error: "names no identity: give spiffe and/or dns",
  });

const tenantFields = z.strictObject({
  tokens_sha256: list(tokenSha256).optional(),
  identities: identities.optional(),
  regions: list(region),
  instances: z.union([z.literal("*"), instanceSelectors], {
    error: 'must be "*" or a map with ids, tags and/or projects',
  }),
  keys: z.union([z.literal("*"), list(keyId)], { error: 'must be "*" or a list of key pair ids' }),
  force_stop: z.boolean().default(false),
  max_instances_per_request: z
    .number()
    .int()
    .min(1, { error: "must be an integer from 1 to 100" })
    .max(100, { error: "must be an integer from 1 to 100" })
    .default(100),
  weight: z.number().positive({ error: "must be a number greater than 0" }).default(1),
});

export const tenantSchema = tenantFields.refine(
  (t) => t.tokens_sha256 !== undefined || t.identities !== undefined,
  {
    error: "has no way to authenticate: give tokens_sha256 and/or identities",
  },
);

const policyFields = z.strictObject({
  tenants: z
    .record(
      z.string().regex(TENANT_NAME_PATTERN, {
        error: (iss) =>
          `${show(iss.input)} is not a valid tenant name (letters, digits, ".", "_", "-"; at most 63)`,
      }),
      tenantSchema,
    )
    .refine((t) => Object.keys(t).length > 0, { error: "must define at least one tenant" }),
});

export const policyFileSchema = policyFields;

/** The fields each kind of map accepts, for "unknown field" messages. */
export const KNOWN_FIELDS = {
  top: Object.keys(policyFields.shape),
  tenant: Object.keys(tenantFields.shape),
  instances: ["ids", "tags", "projects"],
  identities: ["spiffe", "dns"],
} as const;

/** The file after validation, before indexing. */
export type PolicyFile = z.output<typeof policyFileSchema>;
export type TenantFile = z.output<typeof tenantSchema>;
