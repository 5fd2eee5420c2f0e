import { createHash } from "node:crypto";
import common from "tencentcloud-sdk-nodejs-common";

/** What the SDK signs with. */
export interface CloudCredential {
  secretId: string;
  secretKey: string;
  token?: string | undefined;
}

/**
 * A source of cloud credentials, asked before every request (temporary ones rotate).
 * `identity` names the account the cloud rate-limits (a hash, never a secret): for temporary
 * credentials the SecretId changes on every refresh while the sub-account stays the same.
 */
export interface CredentialProvider {
  getCredential(): Promise<CloudCredential>;
  readonly identity?: string | undefined;
}

/** How credentials are configured (the shape `src/config` produces). */
export type CredentialSettings =
  | { kind: "static"; secretId: string; secretKey: string; token?: string | undefined }
  | { kind: "oidc"; roleArn?: string | undefined; providerId?: string | undefined }
  | { kind: "none" };

/** A short, stable, non-reversible name for an account: safe in Redis keys, logs and metrics. */
export function secretIdentity(value: string): string {
  return createHash("sha256").update(value).digest("hex").slice(0, 16);
}

/**
 * The rate-limit identity of a credential source: its declared `identity`, else a hash of the
 * SecretId it hands out. Accepts a plain SecretId too.
 */
export async function credentialIdentity(source: string | CredentialProvider): Promise<string> {
  if (typeof source === "string") return secretIdentity(source);
  if (source.identity !== undefined) return source.identity;
  return secretIdentity((await source.getCredential()).secretId);
}

interface SdkDynamicCredential {
  getCredential(): Promise<{ secretId?: string; secretKey?: string; token?: string }>;
}

/**
 * Wraps a provider that caches its pending fetch (the SDK's STS, CVM-role and OIDC providers keep a
 * rejected promise forever): after a failure the next call starts from a fresh provider.
 */
export function retryingCredential(make: () => SdkDynamicCredential, identity?: string): CredentialProvider {
  let inner = make();
  return {
    identity,
    async getCredential() {
      try {
        const c = await inner.getCredential();
        if (!c.secretId || !c.secretKey)
          throw new Error("the credential provider returned an empty SecretId or SecretKey");
        return { secretId: c.secretId, secretKey: c.secretKey, token: c.token || undefined };
      } catch (e) {
        inner = make();
        throw e;
      }
    },
  };
}

/**
 * The credential provider for keygate's settings: static keys (TENCENTCLOUD_SECRET_ID/KEY and an
 * optional TENCENTCLOUD_SESSION_TOKEN), or TKE workload identity through the SDK's
 * OIDCRoleArnCredential (reads TKE_REGION, TKE_PROVIDER_ID, TKE_WEB_IDENTITY_TOKEN_FILE, TKE_ROLE_ARN).
 */
export function createCredentialProvider(settings: CredentialSettings): CredentialProvider {
  switch (settings.kind) {
    case "static": {
      const credential = {
        secretId: settings.secretId,
        secretKey: settings.secretKey,
        token: settings.token,
      };
      return {
        identity: secretIdentity(settings.secretId),
        getCredential: () => Promise.resolve(credential),
      };
    }
    case "oidc": {
      const role = settings.roleArn;
      return retryingCredential(
        () => new common.OIDCRoleArnCredential(),
        role === undefined ? undefined : secretIdentity(`role:${role}`),
      );
    }
    case "none":
      return {
        identity: "none",
        getCredential: () => Promise.reject(new Error("no cloud credentials are configured")),
      };
  }
}
