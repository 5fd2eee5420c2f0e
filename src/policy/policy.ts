/**
 * The loaded, validated tenant policy. Everything in it is frozen: a `Policy` is a snapshot of
 * one file version, swapped as a whole on reload, never edited.
 */

/** Which instances a tenant may touch; an instance passes when it matches ANY listed selector. */
export interface InstanceSelectors {
  /** Exact instance ids (empty when not given). */
  readonly ids: ReadonlySet<string>;
  /** All listed tags must be equal on the instance; undefined when not given. */
  readonly tags: Readonly<Record<string, string>> | undefined;
  /** `Placement.ProjectId` values (empty when not given). */
  readonly projects: ReadonlySet<number>;
}

/** mTLS client identities (from the client certificate's SANs) that act as this tenant. */
export interface TenantIdentities {
  /** SPIFFE ids (URI SANs), compared exactly. */
  readonly spiffe: readonly string[];
  /** DNS SANs, lower-cased, compared exactly (no wildcards). */
  readonly dns: readonly string[];
}

export interface TenantPolicy {
  readonly name: string;
  readonly tokensSha256: readonly string[];
  readonly identities: TenantIdentities;
  readonly regions: ReadonlySet<string>;
  /** "*" = any instance of the account. */
  readonly instances: "*" | InstanceSelectors;
  /** "*" = any key pair of the account. */
  readonly keys: "*" | ReadonlySet<string>;
  readonly forceStop: boolean;
  /** 1..100. */
  readonly maxInstancesPerRequest: number;
  /** > 0; the tenant's share of the global limit when tenants compete. */
  readonly weight: number;
}

export interface Policy {
  /** Where it was loaded from (a path, or a name such as "demo"), for logs. */
  readonly source: string;
  /** sha256 hex of the file's bytes: tells which version is in force. */
  readonly digest: string;
  readonly tenants: ReadonlyMap<string, TenantPolicy>;
  /** Bearer-token sha256 (lower-case hex) → tenant; one hash belongs to at most one tenant. */
  readonly byTokenSha256: ReadonlyMap<string, TenantPolicy>;
  /** SPIFFE id → tenant. */
  readonly bySpiffe: ReadonlyMap<string, TenantPolicy>;
  /** Lower-cased DNS name → tenant. */
  readonly byDns: ReadonlyMap<string, TenantPolicy>;
}
