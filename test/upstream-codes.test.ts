import { describe, expect, it } from "vitest";
import { KeygateError } from "../src/core/errors.js";
import { parseInstance, parseInstanceSet } from "../src/upstream/parse-instances.js";
import { redactSecrets as redact } from "../src/upstream/sdk-errors.js";
import {
  statusOf as classifyUpstreamCode,
  isMutexBusy,
  isRateLimitedUpstream as isRateLimited,
  isTransientUpstream as isRetryableUpstream,
} from "../src/core/cloud-errors.js";

describe("classifyUpstreamCode follows the README's status table", () => {
  // Every code on the AssociateInstancesKeyPairs API page, plus the common ones keygate can meet.
  it.each([
    ["MissingParameter", "invalid_argument"],
    ["UnsupportedRegion", "invalid_argument"],
    ["InvalidInstanceId.Malformed", "invalid_argument"],
    ["InvalidKeyPairId.Malformed", "invalid_argument"],
    ["InvalidParameterValue", "invalid_argument"],
    ["InvalidParameterValue.InstanceIdMalformed", "invalid_argument"],
    ["InvalidParameterValue.LimitExceeded", "invalid_argument"],
    ["InvalidParameter", "invalid_argument"],
    ["InvalidInstanceId.NotFound", "not_found"],
    ["InvalidKeyPairId.NotFound", "not_found"],
    ["InvalidInstance.NotSupported", "failed_precondition"],
    ["InvalidParameterValue.KeyPairNotSupported", "failed_precondition"],
    ["UnsupportedOperation.InstanceOsWindows", "failed_precondition"],
    ["UnsupportedOperation.InstanceStateRunning", "failed_precondition"],
    ["UnsupportedOperation.InstanceStateEnterServiceLiveMigrate", "aborted"],
    ["UnsupportedOperation.InstanceStateStopping", "aborted"],
    ["UnsupportedOperation.StoppedModeStopCharging", "failed_precondition"],
    ["MutexOperation.TaskRunning", "aborted"],
    ["OperationDenied.InstanceOperationInProgress", "aborted"],
    ["RequestLimitExceeded", "resource_exhausted"],
    ["RequestLimitExceeded.UinLimitExceeded", "resource_exhausted"],
    ["RequestLimitExceeded.GlobalRegionUinLimitExceeded", "resource_exhausted"],
    ["RequestLimitExceeded.IPLimitExceeded", "resource_exhausted"],
    ["InternalError", "unavailable"],
    ["InternalServerError", "unavailable"],
    ["ServiceUnavailable", "unavailable"],
    ["ResourceUnavailable", "unavailable"],
    ["AuthFailure.SignatureFailure", "failed_precondition"],
    ["AuthFailure.SecretIdNotFound", "failed_precondition"],
    ["UnauthorizedOperation.MFAExpired", "failed_precondition"],
    ["InvalidAction", "internal"],
    ["SomethingNobodyDocumented", "internal"],
  ])("%s → %s", (code, kind) => {
    expect(classifyUpstreamCode(code)).toBe(kind);
  });

  it("predicates read the upstream code", () => {
    const err = (code: string) =>
      new KeygateError({ kind: classifyUpstreamCode(code), reason: code, message: code, upstreamCode: code });
    expect(isRateLimited(err("RequestLimitExceeded.UinLimitExceeded"))).toBe(true);
    expect(isMutexBusy(err("OperationDenied.InstanceOperationInProgress"))).toBe(true);
    expect(isRetryableUpstream(err("InternalError"))).toBe(true);
    expect(isRetryableUpstream(err("RequestLimitExceeded"))).toBe(false);
  });
});

describe("redact", () => {
  it("removes known secrets and key-shaped words, keeps ordinary text", () => {
    expect(redact("key abc123secret here", ["abc123secret"])).toBe("key [redacted] here");
    expect(redact("token AKIDz8krbsJ5yKBZQpn74WFkmLPx3gnPhESA", [])).toBe("token [redacted]");
    expect(redact("env TKE_WEB_IDENTITY_TOKEN_FILE not exist", [])).toBe(
      "env TKE_WEB_IDENTITY_TOKEN_FILE not exist",
    );
  });
});

describe("parseInstance", () => {
  it("reads the fields keygate uses", () => {
    expect(
      parseInstance({
        InstanceId: "ins-abcdefgh",
        InstanceState: "STOPPED",
        OsName: "Ubuntu",
        Placement: { Zone: "ap-guangzhou-3", ProjectId: 1001 },
        Tags: [{ Key: "owner", Value: "team-a" }],
        LoginSettings: { KeyIds: ["skey-aaaaaaaa"] },
        LatestOperation: "AssociateInstancesKeyPairs",
        LatestOperationState: "OPERATING",
        LatestOperationRequestId: "r-1",
        LatestOperationErrorMsg: null,
      }),
    ).toEqual({
      instanceId: "ins-abcdefgh",
      instanceState: "STOPPED",
      osName: "Ubuntu",
      projectId: 1001,
      tags: { owner: "team-a" },
      keyIds: ["skey-aaaaaaaa"],
      latestOperation: "AssociateInstancesKeyPairs",
      latestOperationState: "OPERATING",
      latestOperationRequestId: "r-1",
      latestOperationErrorMsg: null,
    });
  });

  it("tolerates nulls and missing fields, drops entries without an id", () => {
    expect(
      parseInstanceSet({
        InstanceSet: [
          {
            InstanceId: "ins-abcdefgh",
            Tags: null,
            LoginSettings: { KeyIds: null },
            LatestOperationState: "WEIRD",
          },
          {},
        ],
      }),
    ).toEqual([
      {
        instanceId: "ins-abcdefgh",
        instanceState: "",
        osName: "",
        projectId: 0,
        tags: {},
        keyIds: [],
        latestOperation: null,
        latestOperationState: null,
        latestOperationRequestId: null,
        latestOperationErrorMsg: null,
      },
    ]);
    expect(parseInstanceSet(undefined)).toEqual([]);
  });
});
