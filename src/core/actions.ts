import type { BucketSpec } from "./ports.js";

/** The cloud actions keygate calls; each has its own cluster-wide bucket (docs/upstream-facts.md). */
export const ASSOCIATE_ACTION = "AssociateInstancesKeyPairs";
export const DESCRIBE_ACTION = "DescribeInstances";
export type CloudAction = typeof ASSOCIATE_ACTION | typeof DESCRIBE_ACTION;

/**
 * The buckets of one credential + access endpoint (`scope`): the cloud counts each action per
 * sub-account and endpoint, never per product region, so every replica with the same scope
 * shares them.
 */
export function bucketsOf(
  scope: string,
  limits: { associate: number; describe: number },
): Record<"associate" | "describe", BucketSpec> {
  return {
    associate: { key: `${scope}:${ASSOCIATE_ACTION}`, limit: limits.associate, windowMs: 1000 },
    describe: { key: `${scope}:${DESCRIBE_ACTION}`, limit: limits.describe, windowMs: 1000 },
  };
}

/** The action a bucket key belongs to (for metric labels). */
export function actionOfBucket(bucketKey: string): CloudAction {
  return bucketKey.endsWith(DESCRIBE_ACTION) ? DESCRIBE_ACTION : ASSOCIATE_ACTION;
}
