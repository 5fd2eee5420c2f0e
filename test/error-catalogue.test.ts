import { readFileSync } from "node:fs";
import { Code } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { codeOfKind, toConnectError } from "../src/api/error-mapping.js";
import { keygateError, Reason, reasonCatalogue } from "../src/core/errors.js";
import { ErrorDetailSchema } from "../src/gen/keygate/v1/keygate_pb.js";

const readme = readFileSync(new URL("../README.md", import.meta.url), "utf8");
const errorTable = readme.slice(
  readme.indexOf("## Status codes and errors"),
  readme.indexOf("## Operating keygate"),
);

describe("error catalogue", () => {
  it.each(Object.values(Reason))("%s has a status code and a line in the README error table", (reason) => {
    const kind = reasonCatalogue[reason].kind;
    expect(codeOfKind[kind]).toBeDefined();
    expect(errorTable).toContain(`\`${reason}\``);
    const codeName = Code[codeOfKind[kind]].replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
    const row = errorTable.split("\n").find((l) => l.includes(`\`${reason}\``)) ?? "";
    expect(row.replace("CANCELLED", "CANCELED")).toContain(codeName);
  });

  it("a KeygateError becomes a ConnectError with an ErrorDetail; anything else says only 'internal error'", () => {
    const e = toConnectError(keygateError("RATE_LIMITED", "wait", { retryAfterMs: 250.2 }));
    expect(e.code).toBe(Code.ResourceExhausted);
    const d = e.findDetails(ErrorDetailSchema)[0];
    expect(d?.reason).toBe("RATE_LIMITED");
    expect(d?.retryAfterMs).toBe(251n);

    const internal = toConnectError(new Error("db password is hunter2"));
    expect(internal.code).toBe(Code.Internal);
    expect(internal.message).not.toContain("hunter2");
  });
});
