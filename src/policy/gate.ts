import type { PolicyDecision, PolicyGate, Tenant } from "../core/ports.js";
import { authenticateBearer, authenticateIdentity } from "./authenticate.js";
import { evaluate, needsLookup } from "./decide.js";
import type { Policy } from "./policy.js";

const TENANT_GONE: PolicyDecision = {
  allowed: false,
  rule: "tenant",
  message: "the tenant no longer exists in the policy",
  offending: [],
};

/**
 * The orchestration's view of the hot-reloaded policy: every call reads the version in force.
 * Which credential decides the tenant is settled here: a bearer token, when sent, decides alone —
 * an unknown token is refused even on a connection with a valid client certificate (no silent
 * fallback to another identity); without a token, a verified certificate's SANs decide.
 */
export function createPolicyGate(current: () => Policy): PolicyGate {
  const tenantOf = (t: Tenant) => current().tenants.get(t.name);
  return {
    authenticate(cred) {
      const p = current();
      const t =
        cred.bearer !== undefined
          ? authenticateBearer(p, cred.bearer)
          : cred.uris || cred.dnsNames
            ? authenticateIdentity(p, cred)
            : undefined;
      return t ? { name: t.name, weight: t.weight } : undefined;
    },
    needsLookup(t, input) {
      const tp = tenantOf(t);
      return tp ? needsLookup(tp, input) : [];
    },
    decide(t, input, found) {
      const tp = tenantOf(t);
      return tp ? evaluate(tp, input, found) : TENANT_GONE;
    },
  };
}
