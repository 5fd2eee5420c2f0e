/**
 * What an error message may repeat from the file it refuses. The path may point at anything
 * (a mistaken symlink to /etc/shadow, a log file, /proc), and refusals go to logs: so only short
 * values made of the characters a policy uses are quoted; anything else is described by its
 * length, never shown. See docs/decisions/policy.md.
 */

/** Ids, regions, names, SPIFFE ids and DNS names (wildcards included, so the refusal can name them). */
const SHOWABLE_VALUE = /^[A-Za-z0-9 ._:/*@+-]{0,64}$/;
/** Map keys: field and tenant names (spaces and slashes allowed so a bad tenant name can be named). */
const SHOWABLE_KEY = /^[A-Za-z0-9 ._/-]{1,63}$/;
/** Parser messages are prose; one that carries a piece of the source is replaced by its code. */
const SHOWABLE_PROSE = /^[A-Za-z0-9 ,.;:'"()[\]{}-]{1,120}$/;

/** A string value from the file, quoted, or a description of it. */
export function excerptValue(value: string): string {
  return SHOWABLE_VALUE.test(value)
    ? JSON.stringify(value)
    : `a string of ${value.length} characters (not shown)`;
}

/** A map key from the file as it appears inside a path, or a description of it. */
export function excerptKey(key: string): string | undefined {
  return SHOWABLE_KEY.test(key) ? key : undefined;
}

export function hiddenKey(key: string): string {
  return `<a key of ${key.length} characters, not shown>`;
}

/** A YAML parser message, or `fallback` when it quotes the source. */
export function excerptProse(message: string, fallback: string): string {
  return SHOWABLE_PROSE.test(message) ? message : fallback;
}

/** At most this many errors are listed; a huge non-policy file would otherwise make one huge log line. */
export const MAX_LISTED_ERRORS = 50;

export function capErrors(errors: string[]): string[] {
  if (errors.length <= MAX_LISTED_ERRORS) return errors;
  const more = errors.length - MAX_LISTED_ERRORS;
  return [
    ...errors.slice(0, MAX_LISTED_ERRORS),
    `(file): ${more} more error${more === 1 ? "" : "s"} not listed`,
  ];
}
