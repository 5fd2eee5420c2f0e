/**
 * Identifier formats shared by the policy file and request validation. They mirror the cloud's
 * own (`ins-` / `skey-` + 8 lower-case letters or digits), so a policy can never name something
 * the upstream would reject as malformed.
 */
export const INSTANCE_ID_PATTERN = /^ins-[a-z0-9]{8}$/;
export const KEY_ID_PATTERN = /^skey-[a-z0-9]{8}$/;
/** A SHA-256 digest as written in the policy file: exactly 64 lower-case hex digits. */
export const SHA256_HEX_PATTERN = /^[0-9a-f]{64}$/;

export function isInstanceId(value: string): boolean {
  return INSTANCE_ID_PATTERN.test(value);
}

export function isKeyId(value: string): boolean {
  return KEY_ID_PATTERN.test(value);
}
