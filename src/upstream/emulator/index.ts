/** The CVM emulator's public surface (the CLI, `keygate dev`, tests and benchmarks use it). */
export { FORCE_STOP_READINGS, type ForceStopReading } from "./actions.js";
export {
  BUSY_CODES,
  type BusyCode,
  createEmulator,
  EMULATOR_SECRET_ID,
  EMULATOR_SECRET_KEY,
  EMULATOR_VERSION,
  type Emulator,
  type EmulatorOptions,
} from "./emulator.js";
export {
  DELAYED_KINDS,
  FAULT_KINDS,
  type FaultKind,
  type FaultRule,
  type FaultSettings,
  type Faults,
} from "./faults.js";
export {
  defaultInventory,
  loadInventoryFile,
  type InstanceSpec,
  type Inventory,
  type InventorySpec,
  type KeyPairSpec,
  type LiveInstance,
} from "./inventory.js";
export { maxInSlidingWindow } from "./sliding-window.js";
export type { Apply, Arrival, EmulatorStats, InstanceCounts, StatsFilter } from "./stats.js";
