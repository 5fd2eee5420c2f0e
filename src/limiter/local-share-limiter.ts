import { type Clock, systemClock } from "../core/clock.js";
import { keygateError } from "../core/errors.js";
import type { AcquireRequest, BucketSpec } from "../core/ports.js";
import type { Limiter, LimiterGrant } from "./limiter.js";
import { isStoreDown } from "../store/local-share-mode.js";
import { spanOf } from "./window.js";

/** Which limiter decides right now. */
export type LocalShareMode = "primary" | "local-share" | "recovering";

export interface LocalShareLimiterOptions {
  /** The cluster-wide limiter (Redis). */
  primary: Limiter;
  /**
   * Makes a fresh local limiter (in-memory, cold hold-off on): one per outage, so it grants
   * nothing for one span after the switch (the primary's last grants may still be in the cloud's window).
   */
  createLocal: () => Limiter;
  /** Replicas sharing the limit: each gets floor(limit ÷ replicas), at least 1, while in local-share. */
  replicas: number;
  /** True when the primary's store is reachable again (e.g. ioredis `status === "ready"`). */
  primaryReady: () => boolean;
  clock?: Clock;
  /** The primary's margin, so the hand-back waits one full span. Default 40 ms. */
  marginMs?: number;
  /** How often to re-check the primary while in local-share. Default 500 ms. */
  probeMs?: number;
  onModeChange?: (mode: LocalShareMode) => void;
}

export interface LocalShareLimiter extends Limiter {
  mode(): LocalShareMode;
}

/**
 * `KEYGATE_ON_STORE_DOWN=local-share`: uses the primary while it works; when it fails with
 * STORE_UNAVAILABLE, each replica grants on its own from a local limiter whose buckets get
 * `floor(limit ÷ replicas)` (≥ 1), so the replicas together stay under the limit as long as
 * `KEYGATE_REPLICAS` is not lower than the real count.
 *
 * Switching is careful in both directions, so the two limiters never add up inside one window:
 * - into local-share: the fresh local limiter holds off one span (it cannot see the primary's last grants);
 * - back to primary: once the store is ready again, no new local grant is given, and the primary is
 *   asked only when the local limiter is idle and its last grant has left the span. If the store lost
 *   its data, its own cold hold-off adds one more span.
 */
export function createLocalShareLimiter(options: LocalShareLimiterOptions): LocalShareLimiter {
  const { primary, createLocal, primaryReady } = options;
  const clock = options.clock ?? systemClock;
  const replicas = Math.max(1, Math.floor(options.replicas));
  const marginMs = options.marginMs ?? 40;
  const probeMs = options.probeMs ?? 500;
  let mode: LocalShareMode = "primary";
  let localLimiter: Limiter | undefined;
  let localSince = 0;
  /** Latest local grant and the longest span it occupies. */
  let lastLocalGrantAt = 0;
  let localSpan = spanOf(1000, marginMs);
  const retired: Promise<void>[] = [];

  const currentMode = (): LocalShareMode => mode;
  const setMode = (m: LocalShareMode) => {
    if (mode === m) return;
    mode = m;
    try {
      options.onModeChange?.(m);
    } catch {
      /* an observer must not break the limiter */
    }
  };

  const share = (bucket: BucketSpec): BucketSpec => ({
    ...bucket,
    limit: Math.max(1, Math.floor(bucket.limit / replicas)),
  });

  const enterLocalShare = () => {
    if (mode === "local-share") return;
    localLimiter ??= createLocal();
    localSince = clock.now();
    setMode("local-share");
  };

  const local = async (req: AcquireRequest): Promise<LimiterGrant> => {
    localLimiter ??= createLocal();
    const g = await localLimiter.acquire({ ...req, bucket: share(req.bucket) });
    lastLocalGrantAt = Math.max(lastLocalGrantAt, clock.now());
    localSpan = Math.max(localSpan, spanOf(req.bucket.windowMs, marginMs));
    return g;
  };

  /** Waits until no local grant can still be in the cloud's window, then retires the local limiter. */
  const waitLocalQuiet = async (req: AcquireRequest): Promise<void> => {
    for (;;) {
      if (mode !== "recovering") return;
      const now = clock.now();
      const busy = (localLimiter?.queueDepth() ?? 0) > 0;
      const quietAt = lastLocalGrantAt + localSpan;
      if (!busy && now >= quietAt) return;
      const next = busy ? now + 20 : quietAt;
      if (req.deadline !== undefined && next > req.deadline) {
        throw keygateError("RATE_LIMITED", "upstream rate limit: handing back to the shared limiter", {
          retryAfterMs: Math.max(1, Math.ceil(next - now)),
        });
      }
      await clock.sleep(Math.max(1, next - now), req.signal).catch(() => {
        throw keygateError("CANCELLED", "the caller went away");
      });
    }
  };

  const viaPrimary = async (req: AcquireRequest): Promise<LimiterGrant> => {
    const g = await primary.acquire(req);
    if (mode === "recovering") {
      setMode("primary");
      const old = localLimiter;
      localLimiter = undefined;
      if (old) retired.push(old.close());
    }
    return g;
  };

  const closedBuckets = new Set<string>();
  const acquire = async (req: AcquireRequest): Promise<LimiterGrant> => {
    if (closedBuckets.has(req.bucket.key)) throw keygateError("SHUTTING_DOWN", "the limiter is closed");
    if (mode === "local-share" && clock.now() - localSince >= probeMs && primaryReady())
      setMode("recovering");
    if (mode === "local-share") return local(req);
    if (mode === "recovering") await waitLocalQuiet(req);
    // The mode may have changed while waiting (the primary failed again under another caller).
    if (currentMode() === "local-share") return local(req);
    try {
      return await viaPrimary(req);
    } catch (err) {
      if (!isStoreDown(err)) throw err;
      enterLocalShare();
      return local(req);
    }
  };

  return {
    acquire,
    mode: currentMode,
    async penalize(bucket: BucketSpec, ms: number): Promise<void> {
      if (mode === "primary" || mode === "recovering") {
        try {
          await primary.penalize(bucket, ms);
          return;
        } catch (err) {
          if (!isStoreDown(err)) throw err;
          enterLocalShare();
        }
      }
      localLimiter ??= createLocal();
      await localLimiter.penalize(share(bucket), ms);
    },
    queueDepth(bucketKey?: string): number {
      return primary.queueDepth(bucketKey) + (localLimiter?.queueDepth(bucketKey) ?? 0);
    },
    closeBucket(bucketKey: string): void {
      closedBuckets.add(bucketKey);
      primary.closeBucket(bucketKey);
      localLimiter?.closeBucket(bucketKey);
    },
    async close(): Promise<void> {
      await Promise.all([primary.close(), localLimiter?.close(), ...retired]);
    },
  };
}
