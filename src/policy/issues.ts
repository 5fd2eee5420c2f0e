/**
 * Turns zod issues into `path: message` lines. The operator fixing a rejected policy needs every
 * problem with the exact place it is at, in the file's own words (`tenants.team-a.keys[1]`), not
 * zod's internal vocabulary ("invalid_union", "record").
 */
import type * as z from "zod";
import { excerptKey, hiddenKey } from "./excerpt.js";
import { KNOWN_FIELDS, show } from "./schema.js";

type Issue = z.core.$ZodIssue;
type Segment = PropertyKey;

/** `tenants.team-a.instances.ids[2]`; keys that are not plain words are quoted. */
export function formatPath(path: readonly Segment[]): string {
  if (path.length === 0) return "(top level)";
  let out = "";
  for (const seg of path) {
    if (typeof seg === "number") out += `[${seg}]`;
    else if (typeof seg === "string" && /^[A-Za-z0-9_-]{1,63}$/.test(seg))
      out += out === "" ? seg : `.${seg}`;
    else {
      const key = String(seg);
      const shown = excerptKey(key);
      out += shown === undefined ? `[${hiddenKey(key)}]` : `[${JSON.stringify(shown)}]`;
    }
  }
  return out;
}

const typeNames: Record<string, string> = {
  string: "a string",
  number: "a number",
  int: "an integer",
  boolean: "true or false",
  object: "a map",
  record: "a map",
  array: "a list",
};

/** Values under these fields may be secrets pasted by mistake; messages describe them without echoing. */
function isSecret(path: readonly Segment[]): boolean {
  return path.includes("tokens_sha256");
}

function showAt(path: readonly Segment[], value: unknown): string {
  if (!isSecret(path)) return show(value);
  return typeof value === "string"
    ? "a string (not shown)"
    : show(typeof value === "object" ? value : typeof value);
}

/** Which map an unknown field was found in, by where it is. */
function knownFieldsAt(path: readonly Segment[]): readonly string[] | undefined {
  if (path.length === 0) return KNOWN_FIELDS.top;
  if (path.length === 2 && path[0] === "tenants") return KNOWN_FIELDS.tenant;
  if (path.length === 3 && path[2] === "instances") return KNOWN_FIELDS.instances;
  if (path.length === 3 && path[2] === "identities") return KNOWN_FIELDS.identities;
  return undefined;
}

/** A union branch that failed only because the value had the other branch's type. */
function isWrongBranch(issues: readonly Issue[]): boolean {
  return issues.every(
    (i) => i.path.length === 0 && (i.code === "invalid_type" || i.code === "invalid_value"),
  );
}

/** Lines for one zod issue, relative to `base`. */
export function formatIssue(issue: Issue, base: readonly Segment[] = []): string[] {
  const path = [...base, ...issue.path];
  switch (issue.code) {
    case "unrecognized_keys": {
      const known = knownFieldsAt(path);
      const hint = known ? ` (known fields: ${known.join(", ")})` : "";
      return issue.keys.map((k) => `${formatPath([...path, k])}: unknown field${hint}`);
    }
    case "invalid_union": {
      const candidates = issue.errors.filter((branch) => !isWrongBranch(branch));
      const only = candidates.length === 1 ? candidates[0] : undefined;
      if (only) return only.flatMap((i) => formatIssue(i, path));
      return [`${formatPath(path)}: ${issue.message}`];
    }
    case "invalid_key":
      return issue.issues.map((i) => `${formatPath(path)}: ${i.message}`);
    case "invalid_type": {
      if (issue.input === undefined) return [`${formatPath(path)}: is required`];
      const expected = typeNames[issue.expected] ?? issue.expected;
      return [`${formatPath(path)}: expected ${expected}, got ${showAt(path, issue.input)}`];
    }
    default:
      return [`${formatPath(path)}: ${issue.message}`];
  }
}
