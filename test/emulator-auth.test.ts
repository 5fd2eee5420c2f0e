import { request } from "node:http";
import tencentcloud from "tencentcloud-sdk-nodejs-cvm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { isKeygateError } from "../src/core/errors.js";
import {
  createEmulator,
  EMULATOR_SECRET_ID,
  EMULATOR_SECRET_KEY,
  type Emulator,
} from "../src/upstream/emulator/index.js";
import { tc3Signature } from "../src/upstream/emulator/signature.js";
import { createUpstreamRoute } from "../src/upstream/redirect-agent.js";
import { createTencentUpstream, type CloudCredential } from "../src/upstream/tencent-upstream.js";

const opts = () => ({ signal: new AbortController().signal });
const input = {
  region: "ap-guangzhou",
  instanceIds: ["ins-gz000001"],
  keyIds: ["skey-aaaaaaaa"],
  forceStop: false,
};

/** The real SDK, signing for `endpoint`, connected to the emulator. */
function upstream(emu: Emulator, credential: CloudCredential, endpoint = "cvm.tencentcloudapi.com") {
  return createTencentUpstream({ upstreamUrl: emu.url, credential, endpoint, keepAlive: false });
}

async function codeOf(p: Promise<unknown>): Promise<string | undefined> {
  try {
    await p;
    return "OK";
  } catch (e) {
    if (!isKeygateError(e)) throw e;
    return e.upstreamCode ?? e.reason;
  }
}

describe("emulator signature verification (real SDK signing)", () => {
  let emu: Emulator;
  beforeAll(async () => {
    emu = await createEmulator({
      taskMs: 50,
      credentials: {
        [EMULATOR_SECRET_ID]: EMULATOR_SECRET_KEY,
        AKIDTEMPORARY: { secretKey: "temporary-secret-key", token: "session-token-123" },
      },
    });
  });
  afterAll(() => emu.close());

  it("accepts a correct signature", async () => {
    const up = upstream(emu, { secretId: EMULATOR_SECRET_ID, secretKey: EMULATOR_SECRET_KEY });
    expect(await codeOf(up.describeInstances("ap-guangzhou", ["ins-gz000001"], opts()))).toBe("OK");
  });

  it("refuses a wrong secret key with AuthFailure.SignatureFailure", async () => {
    const up = upstream(emu, { secretId: EMULATOR_SECRET_ID, secretKey: "not-the-key" });
    expect(await codeOf(up.associateInstancesKeyPairs(input, opts()))).toBe("AuthFailure.SignatureFailure");
  });

  it("refuses an unknown SecretId with AuthFailure.SecretIdNotFound", async () => {
    const up = upstream(emu, { secretId: "AKIDUNKNOWN", secretKey: EMULATOR_SECRET_KEY });
    expect(await codeOf(up.associateInstancesKeyPairs(input, opts()))).toBe("AuthFailure.SecretIdNotFound");
  });

  it("refuses a signature for another service (scope not cvm)", async () => {
    const up = upstream(
      emu,
      { secretId: EMULATOR_SECRET_ID, secretKey: EMULATOR_SECRET_KEY },
      "cbs.tencentcloudapi.com",
    );
    expect(await codeOf(up.associateInstancesKeyPairs(input, opts()))).toBe("AuthFailure.SignatureFailure");
    expect(emu.stats.arrivals.at(-1)?.service).toBe("cbs");
  });

  it("requires the session token of temporary credentials", async () => {
    const bad = upstream(emu, { secretId: "AKIDTEMPORARY", secretKey: "temporary-secret-key" });
    expect(await codeOf(bad.describeInstances("ap-guangzhou", ["ins-gz000001"], opts()))).toBe(
      "AuthFailure.TokenFailure",
    );
    const good = upstream(emu, {
      secretId: "AKIDTEMPORARY",
      secretKey: "temporary-secret-key",
      token: "session-token-123",
    });
    expect(await codeOf(good.describeInstances("ap-guangzhou", ["ins-gz000001"], opts()))).toBe("OK");
  });

  it("answers InvalidAction for an action it does not emulate", async () => {
    const route = createUpstreamRoute(emu.url, false);
    const client = new tencentcloud.cvm.v20170312.Client({
      credential: { secretId: EMULATOR_SECRET_ID, secretKey: EMULATOR_SECRET_KEY },
      region: "ap-guangzhou",
      profile: {
        httpProfile: { endpoint: "cvm.tencentcloudapi.com", protocol: route.protocol, agent: route.agent },
      },
    });
    await expect(client.request("RunInstances", {})).rejects.toMatchObject({ code: "InvalidAction" });
  });

  it("refuses a body changed after signing", async () => {
    const ts = Math.floor(Date.now() / 1000);
    const body = JSON.stringify({ InstanceIds: ["ins-gz000001"] });
    const signature = tc3Signature({
      secretKey: EMULATOR_SECRET_KEY,
      timestamp: ts,
      service: "cvm",
      signedHeaders: ["content-type", "host"],
      headerValues: { "content-type": "application/json", host: "cvm.tencentcloudapi.com" },
      body,
    });
    const date = new Date(ts * 1000).toISOString().slice(0, 10);
    const send = (payload: string) =>
      new Promise<string>((resolve, reject) => {
        const req = request(
          `${emu.url}/`,
          {
            method: "POST",
            headers: {
              host: "cvm.tencentcloudapi.com",
              "content-type": "application/json",
              "x-tc-action": "DescribeInstances",
              "x-tc-version": "2017-03-12",
              "x-tc-region": "ap-guangzhou",
              "x-tc-timestamp": String(ts),
              authorization: `TC3-HMAC-SHA256 Credential=${EMULATOR_SECRET_ID}/${date}/cvm/tc3_request, SignedHeaders=content-type;host, Signature=${signature}`,
            },
          },
          (res) => {
            let text = "";
            res.on("data", (c: Buffer) => (text += c.toString()));
            res.on("end", () => resolve(text));
          },
        );
        req.on("error", reject);
        req.end(payload);
      });
    expect(await send(body)).not.toContain('"Error"');
    const tampered = JSON.parse(await send(body.replace("gz000001", "gz000002"))) as {
      Response: { Error?: { Code: string } };
    };
    expect(tampered.Response.Error?.Code).toBe("AuthFailure.SignatureFailure");
  });
});

describe("emulator timestamp check", () => {
  it("refuses a timestamp more than 5 minutes off with AuthFailure.SignatureExpire", async () => {
    // The emulator's clock runs 6 minutes ahead of the SDK's.
    const emu = await createEmulator({
      clock: {
        now: () => Date.now() + 6 * 60_000,
        sleep: () => Promise.resolve(),
        timer: () => () => undefined,
      },
    });
    try {
      const up = upstream(emu, { secretId: EMULATOR_SECRET_ID, secretKey: EMULATOR_SECRET_KEY });
      expect(await codeOf(up.describeInstances("ap-guangzhou", ["ins-gz000001"], opts()))).toBe(
        "AuthFailure.SignatureExpire",
      );
    } finally {
      await emu.close();
    }
  });
});
