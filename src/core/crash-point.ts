/**
 * Test-only crash points (`KEYGATE_TEST_CRASH_AT`): the process kills itself with SIGKILL when the
 * request path reaches the armed point, so fault tests can leave an operation at each step of its
 * life. Unarmed (always, in production) `crashPoint` does nothing.
 */
export const CRASH_POINTS = [
  "after-claim",
  "after-lease",
  "before-send",
  "after-send",
  "after-record",
] as const;
export type CrashPoint = (typeof CRASH_POINTS)[number];

let armed: CrashPoint | undefined;

/** Set once at start-up from the settings; undefined disarms. */
export function armCrashPoint(point: CrashPoint | undefined): void {
  armed = point;
}

export function crashPoint(name: CrashPoint): void {
  // SIGKILL, not exit(): no finally blocks, no drain, no lease release, like a node that lost power.
  if (armed === name) process.kill(process.pid, "SIGKILL");
}
