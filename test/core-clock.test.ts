/** Clock.timer and every(): keygate's own timers without an AbortController (fake clock). */
import { describe, expect, it } from "vitest";
import { every, systemClock } from "../src/core/clock.js";
import { FakeClock } from "./support/fake-clock.js";

describe("every", () => {
  it("steps every interval until a step says stop; a throwing step tries again", async () => {
    const clock = new FakeClock();
    const start = clock.now();
    const at: number[] = [];
    let n = 0;
    const r = every(clock, 100, () => {
      at.push(clock.now() - start);
      n += 1;
      if (n === 2) return Promise.reject(new Error("store blinked"));
      return Promise.resolve(n < 4);
    });
    await clock.advance(1_000);
    expect(at).toEqual([100, 200, 300, 400]);
    expect(r.stopped).toBe(false);
  });

  it("stop() cancels the next step and waits for one that is running", async () => {
    const clock = new FakeClock();
    let release!: (more: boolean) => void;
    let steps = 0;
    const r = every(clock, 50, () => {
      steps += 1;
      return new Promise<boolean>((resolve) => (release = resolve));
    });
    await clock.advance(50);
    expect(steps).toBe(1);
    let stopped = false;
    const stopping = r.stop().then(() => (stopped = true));
    await clock.advance(0);
    expect(stopped).toBe(false);
    expect(r.stopped).toBe(true);
    release(true);
    await stopping;
    await clock.advance(500);
    expect(steps).toBe(1);
  });
});

describe("systemClock.timer", () => {
  it("fires once, and not at all when cancelled", async () => {
    const fired: string[] = [];
    systemClock.timer(5, () => fired.push("kept"));
    const cancel = systemClock.timer(5, () => fired.push("cancelled"));
    cancel();
    await new Promise((r) => setTimeout(r, 30));
    expect(fired).toEqual(["kept"]);
  });
});
