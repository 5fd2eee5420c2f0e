import { describe, expect, it } from "vitest";
import { ResetMeter } from "../src/api/server.js";
import { frame, H2_PREFACE, headersFrame, rstFrame, SETTINGS_EMPTY } from "./support/hostile.js";

const HEAD: [string, string][] = [
  [":method", "POST"],
  [":path", "/x"],
];

describe("ResetMeter (rapid-reset detection on the plain-text front)", () => {
  it("counts RST_STREAM frames however the bytes are split, and nothing else", () => {
    const meter = new ResetMeter(3, () => 0);
    const wire = Buffer.concat([
      H2_PREFACE,
      SETTINGS_EMPTY,
      // A DATA frame whose payload holds RST_STREAM-looking bytes: payloads are skipped, not read.
      frame(0x0, 0, 1, Buffer.concat([rstFrame(1), rstFrame(3)])),
      ...[1, 3, 5].flatMap((id) => [headersFrame(id, HEAD, false), rstFrame(id)]),
    ]);
    // One byte at a time: frame headers straddle every chunk boundary.
    for (const b of wire) expect(meter.admit(Buffer.from([b]))).toBe(true);
    expect(meter.admit(Buffer.concat([headersFrame(7, HEAD, false), rstFrame(7)]))).toBe(false);
  });

  it("allows the same number again in the next second", () => {
    let now = 0;
    const meter = new ResetMeter(2, () => now, 0);
    expect(meter.admit(Buffer.concat([rstFrame(1), rstFrame(3)]))).toBe(true);
    now = 999;
    expect(meter.admit(rstFrame(5))).toBe(false);
    const fresh = new ResetMeter(2, () => now, 0);
    expect(fresh.admit(Buffer.concat([rstFrame(1), rstFrame(3)]))).toBe(true);
    now += 1_000;
    expect(fresh.admit(Buffer.concat([rstFrame(5), rstFrame(7)]))).toBe(true);
  });
});
