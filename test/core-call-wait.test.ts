/** linkSignals: what AbortSignal.any gives the request path, minus its per-call cost. */
import { describe, expect, it } from "vitest";
import { linkSignals } from "../src/core/call-wait.js";

describe("linkSignals", () => {
  it("aborts with the reason of the first source that aborts", () => {
    const a = new AbortController();
    const b = new AbortController();
    const linked = linkSignals([a.signal, b.signal]);
    expect(linked.signal.aborted).toBe(false);
    b.abort(new Error("b went"));
    expect(linked.signal.aborted).toBe(true);
    expect((linked.signal.reason as Error).message).toBe("b went");
    a.abort(new Error("a went"));
    expect((linked.signal.reason as Error).message).toBe("b went");
  });

  it("is born aborted when a source already is", () => {
    const a = new AbortController();
    a.abort("early");
    const linked = linkSignals([new AbortController().signal, a.signal]);
    expect(linked.signal.aborted).toBe(true);
    expect(linked.signal.reason).toBe("early");
  });

  it("stops following its sources after unlink, and leaves no listener behind", () => {
    const a = new AbortController();
    let added = 0;
    let removed = 0;
    const add = a.signal.addEventListener.bind(a.signal);
    const remove = a.signal.removeEventListener.bind(a.signal);
    a.signal.addEventListener = (...args: Parameters<typeof add>) => {
      added++;
      add(...args);
    };
    a.signal.removeEventListener = (...args: Parameters<typeof remove>) => {
      removed++;
      remove(...args);
    };
    const linked = linkSignals([a.signal]);
    linked.unlink();
    linked.unlink();
    a.abort("late");
    expect(linked.signal.aborted).toBe(false);
    expect([added, removed]).toEqual([1, 1]);
  });
});
