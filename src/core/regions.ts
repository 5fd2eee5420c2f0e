/**
 * Product regions where AssociateInstancesKeyPairs exists (docs/upstream-facts.md). The policy loader
 * rejects any other region, and the API validation layer answers `UnsupportedRegion` for them
 * before a token is spent, so both read this one list.
 */
export const SUPPORTED_REGIONS: readonly string[] = Object.freeze([
  "ap-bangkok",
  "ap-beijing",
  "ap-chengdu",
  "ap-chongqing",
  "ap-guangzhou",
  "ap-hongkong",
  "ap-jakarta",
  "ap-nanjing",
  "ap-seoul",
  "ap-shanghai",
  "ap-shanghai-fsi",
  "ap-shenzhen-fsi",
  "ap-singapore",
  "ap-tokyo",
  "eu-frankfurt",
  "na-ashburn",
  "na-siliconvalley",
  "sa-saopaulo",
]);

const supported: ReadonlySet<string> = new Set(SUPPORTED_REGIONS);

/** True when the action can be called in `region`. */
export function isSupportedRegion(region: string): boolean {
  return supported.has(region);
}
