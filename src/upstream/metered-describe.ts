import type { Clock } from "../core/clock.js";
import type { InstanceInfo } from "../core/model.js";
import type { BucketSpec, CallOptions, RateLimiter, Upstream } from "../core/ports.js";

export interface MeteredDescribeOptions {
  upstream: Pick<Upstream, "describeInstances">;
  limiter: RateLimiter;
  /** The cluster-wide DescribeInstances bucket (40/s), shared by policy lookups and task polling. */
  bucket: BucketSpec;
  clock: Clock;
  /** One finished call: its cloud code ("OK" or the error's) and duration. */
  onCall?: (code: string, seconds: number) => void;
}

/** DescribeInstances through its own cluster-wide bucket, counted like every cloud call. */
export function createMeteredDescribe(options: MeteredDescribeOptions) {
  const { upstream, limiter, bucket, clock } = options;
  return async (region: string, ids: string[], call: CallOptions): Promise<InstanceInfo[]> => {
    await limiter.acquire({ bucket, tenant: "keygate", weight: 1, ...call });
    const t0 = clock.now();
    let code = "OK";
    try {
      return (await upstream.describeInstances(region, ids, call)).instances;
    } catch (err) {
      const e = err as { upstreamCode?: string; reason?: string };
      code = e.upstreamCode ?? e.reason ?? "UNKNOWN";
      throw err;
    } finally {
      options.onCall?.(code, (clock.now() - t0) / 1000);
    }
  };
}
