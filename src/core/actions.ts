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
    describe: {
      key: `${scope}:${DESCRIBE_ACTION}`,
      // DescribeInstances is not the scarce quota: a tenth is left unused as headroom against the
      // scheduling delay between a grant and the request's arrival at the cloud.
      limit: Math.max(1, Math.floor(limits.describe * 0.9)),
      windowMs: 1000,
      // 40 grants due in the same ms cannot all be sent within the send-by bound by one event
      // loop; spread over half the window they can (no cost in rate: rounds keep their spread).
      slotGapMs: Math.floor(500 / limits.describe),
    },
  };
}

/**
 * The cloud action a bucket meters, or undefined for keygate's own buckets (a tenant's lookup
 * budget is not a cloud action).
 */
export function actionOfBucket(
  buckets: Record<"associate" | "describe", BucketSpec>,
  bucketKey: string,
): CloudAction | undefined {
  if (bucketKey === buckets.associate.key) return ASSOCIATE_ACTION;
  if (bucketKey === buckets.describe.key) return DESCRIBE_ACTION;
  return undefined;
}

/**
 * The well-formed id that names no instance, which each replica's warm-up DescribeInstances asks
 * for before it reports SERVING (src/main.ts, "ready means warm"): the cloud answers an empty set.
 */
export const WARM_UP_INSTANCE_ID = "ins-00000000";
