/** Joiners of an identical call in flight are woken by its finish, not by polling (fake clock). */
import { describe, expect, it } from "vitest";
import { FakeClock } from "./support/fake-clock.js";
import { createMemoryOperationStore } from "../src/dedup/memory-operation-store.js";
import { createOperations } from "../src/dedup/operations.js";

describe("coalescing joiners (in-memory store, fake clock)", () => {
  it("get the executor's answer as soon as it finishes, with the clock standing still", async () => {
    const clock = new FakeClock();
    const ops = createOperations({ clock, store: createMemoryOperationStore({ clock }), recheckMs: 60_000 });
    let finish: () => void = () => undefined;
    const gate = new Promise<void>((r) => (finish = r));
    const signal = new AbortController().signal;
    const run = () =>
      ops.run(
        {
          fingerprint: "fp-1",
          idempotency: undefined,
          execute: async () => {
            await gate;
            return { requestId: "req-1", deduplicated: false, instances: [] };
          },
        },
        { signal },
      );
    const first = run();
    const t0 = clock.now();
    const joined: { requestId: string; deduplicated: boolean }[] = [];
    const joiners = Array.from({ length: 5 }, () => run().then((r) => joined.push(r)));
    for (let i = 0; i < 10; i++) await new Promise((r) => setImmediate(r));
    expect(joined).toEqual([]);
    finish();
    await first;
    await Promise.all(joiners);
    expect(joined.map((r) => [r.requestId, r.deduplicated])).toEqual(Array(5).fill(["req-1", true]));
    expect(clock.now()).toBe(t0);
    await ops.close();
  });
});
