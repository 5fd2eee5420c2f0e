import {
  createEmulator,
  EMULATOR_SECRET_ID,
  FORCE_STOP_READINGS,
  type FaultSettings,
  type ForceStopReading,
} from "../upstream/emulator/index.js";
import { createFaults } from "../upstream/emulator/faults.js";

const USAGE =
  "keygate emulator [--port N] [--inventory FILE] [--task-ms N] [--faults JSON] " +
  `[--force-stop ${FORCE_STOP_READINGS.join("|")}] [--busy-lag-ms N]`;

/** `keygate emulator …`: the CVM emulator alone, optionally with faults from the start. */
export async function runEmulator(
  args: string[],
  env: Record<string, string | undefined> = {},
): Promise<number | "running"> {
  const opts: {
    port: number;
    inventoryFile?: string;
    taskMs?: number;
    forceStopReading?: ForceStopReading;
    busyLagMs?: number;
  } = { port: 9000 };
  let faults: FaultSettings | undefined;
  for (let i = 0; i < args.length; i += 1) {
    const flag = args[i];
    const value = args[i + 1];
    if (value === undefined) return usage(`${flag ?? ""} needs a value`);
    if (flag === "--port" && /^\d+$/.test(value) && Number(value) <= 65535) opts.port = Number(value);
    else if (flag === "--inventory") opts.inventoryFile = value;
    else if (flag === "--task-ms" && /^\d+$/.test(value)) opts.taskMs = Number(value);
    else if (flag === "--busy-lag-ms" && /^\d+$/.test(value)) opts.busyLagMs = Number(value);
    else if (flag === "--force-stop") {
      const reading = FORCE_STOP_READINGS.find((r) => r === value);
      if (reading === undefined) {
        return usage(`--force-stop: "${value.slice(0, 40)}" is not one of ${FORCE_STOP_READINGS.join(", ")}`);
      }
      opts.forceStopReading = reading;
    } else if (flag === "--faults") {
      const problem = checkFaults(value);
      if (typeof problem === "string") return usage(`--faults: ${problem}`);
      faults = problem;
    } else return usage(`unexpected "${flag ?? ""} ${value}"`);
    i += 1;
  }
  // In a cluster (deploy/overlays/dev) the emulator verifies the same Secret the gateway signs with.
  const id = env.TENCENTCLOUD_SECRET_ID;
  const key = env.TENCENTCLOUD_SECRET_KEY;
  const emulator = await createEmulator({
    host: env.KEYGATE_HOST ?? "127.0.0.1",
    ...(id && key ? { credentials: { [id]: key } } : {}),
    ...opts,
  });
  if (faults) emulator.faults.set(faults);
  process.stdout.write(
    `CVM emulator listening on ${emulator.url} (SecretId ${id && key ? id : EMULATOR_SECRET_ID}; admin: GET ${emulator.url}/__emulator/stats)\n`,
  );
  const stop = () => {
    void emulator.close().then(() => process.exit(0));
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
  return "running";
}

/** The same JSON as `POST /__emulator/faults`, checked before anything starts; a problem as text. */
function checkFaults(json: string): FaultSettings | string {
  let value: unknown;
  try {
    value = JSON.parse(json);
  } catch {
    return "not valid JSON";
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) return "must be a JSON object";
  try {
    createFaults().set(value);
  } catch (e) {
    return e instanceof Error ? e.message : String(e);
  }
  return value;
}

function usage(problem: string): number {
  process.stderr.write(`keygate emulator: ${problem}\nusage: ${USAGE}\n`);
  return 2;
}
