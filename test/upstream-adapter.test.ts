import { createServer, type Socket } from "node:net";
import { inspect } from "node:util";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { isKeygateError, type KeygateError } from "../src/core/errors.js";
import { createEmulator, type Emulator, type FaultKind } from "../src/upstream/emulator/index.js";
import { retryingCredential } from "../src/upstream/credentials.js";
import { createUpstreamRoute } from "../src/upstream/redirect-agent.js";
import {
  createTencentUpstream,
  credentialIdentity,
  type TencentUpstream,
} from "../src/upstream/tencent-upstream.js";
import {
  isMutexBusy,
  isRateLimitedUpstream as isRateLimited,
  isTransientUpstream as isRetryableUpstream,
  mayHaveReachedUpstream,
} from "../src/core/cloud-errors.js";
import { freePort } from "./support/redis-server.js";

const SECRET_ID = "AKIDADAPTERTEST";
const SECRET_KEY = "adapter-secret-key-MUST-NOT-LEAK";
const TOKEN = "adapter-session-token-MUST-NOT-LEAK";
const input = {
  region: "ap-guangzhou",
  instanceIds: ["ins-gz000001"],
  keyIds: ["skey-aaaaaaaa"],
  forceStop: false,
};
const opts = (signal = new AbortController().signal, deadline?: number) => ({ signal, deadline });

async function failure(p: Promise<unknown>): Promise<KeygateError> {
  try {
    await p;
  } catch (e) {
    if (isKeygateError(e)) return e;
    throw new Error(`not a KeygateError: ${String(e)}`);
  }
  throw new Error("expected a failure");
}

describe("Tencent upstream adapter against the emulator", () => {
  let emu: Emulator;
  let up: TencentUpstream;
  const seen: KeygateError[] = [];
  const fail = async (p: Promise<unknown>) => {
    const e = await failure(p);
    seen.push(e);
    return e;
  };
  beforeAll(async () => {
    emu = await createEmulator({
      taskMs: 60_000,
      credentials: { [SECRET_ID]: { secretKey: SECRET_KEY, token: TOKEN } },
    });
    up = createTencentUpstream({
      upstreamUrl: emu.url,
      credential: {
        getCredential: () => Promise.resolve({ secretId: SECRET_ID, secretKey: SECRET_KEY, token: TOKEN }),
      },
      reqTimeoutMs: 400,
    });
  });
  afterEach(() => emu.reset());
  afterAll(async () => {
    up.close();
    await emu.close();
  });

  it("binds keys and returns the upstream RequestId", async () => {
    const { requestId } = await up.associateInstancesKeyPairs(input, opts());
    expect(requestId).toBe(emu.stats.arrivals[0]?.requestId);
    const { instances } = await up.describeInstances("ap-guangzhou", ["ins-gz000001"], opts());
    expect(instances[0]).toMatchObject({
      latestOperationRequestId: requestId,
      latestOperationState: "OPERATING",
    });
  });

  it("connects to 127.0.0.1 but sends Host and signature for the endpoint (service cvm)", async () => {
    await up.describeInstances("ap-shanghai", ["ins-sh000001"], opts());
    expect(emu.stats.arrivals[0]).toMatchObject({
      host: "cvm.tencentcloudapi.com",
      service: "cvm",
      region: "ap-shanghai",
      secretId: SECRET_ID,
    });
  });

  it("signs for cvm with a regional endpoint too", async () => {
    const regional = createTencentUpstream({
      endpoint: "cvm.ap-guangzhou.tencentcloudapi.com",
      upstreamUrl: emu.url,
      credential: { secretId: SECRET_ID, secretKey: SECRET_KEY, token: TOKEN },
    });
    try {
      await regional.describeInstances("ap-guangzhou", ["ins-gz000001"], opts());
      expect(emu.stats.arrivals[0]).toMatchObject({
        host: "cvm.ap-guangzhou.tencentcloudapi.com",
        service: "cvm",
      });
    } finally {
      regional.close();
    }
  });

  it.each([
    [{ instanceIds: ["ins-zzzzzzzz"] }, "not_found", "InvalidInstanceId.NotFound"],
    [{ keyIds: ["skey-zzzzzzzz"] }, "not_found", "InvalidKeyPairId.NotFound"],
    [{ instanceIds: ["ins-gz000004"] }, "failed_precondition", "UnsupportedOperation.InstanceStateRunning"],
    [{ instanceIds: ["ins-gz000005"] }, "failed_precondition", "UnsupportedOperation.InstanceOsWindows"],
    [{ instanceIds: ["ins-12"] }, "invalid_argument", "InvalidInstanceId.Malformed"],
    [{ region: "ap-mumbai" }, "invalid_argument", "UnsupportedRegion"],
  ])("maps an API error %j to %s / %s", async (over, kind, code) => {
    const e = await fail(up.associateInstancesKeyPairs({ ...input, ...over }, opts()));
    expect(e).toMatchObject({ kind, reason: code, upstreamCode: code });
    expect(e.upstreamRequestId).toBe(emu.stats.arrivals[0]?.requestId);
    expect(isRetryableUpstream(e)).toBe(false);
  });

  it.each<[FaultKind, string, string, boolean]>([
    ["http500", "unavailable", "UPSTREAM_UNAVAILABLE", true],
    ["http503", "unavailable", "UPSTREAM_UNAVAILABLE", true],
    ["nonJson", "unavailable", "UPSTREAM_BAD_RESPONSE", true],
    ["noResponse", "unavailable", "UPSTREAM_BAD_RESPONSE", true],
    ["hang", "unavailable", "UPSTREAM_TIMEOUT", true],
    ["lostReply", "unavailable", "UPSTREAM_TIMEOUT", true],
    ["internalError", "unavailable", "InternalError", true],
    ["requestLimitExceeded", "resource_exhausted", "RequestLimitExceeded", false],
    ["mutexTaskRunning", "aborted", "MutexOperation.TaskRunning", false],
    ["operationInProgress", "aborted", "OperationDenied.InstanceOperationInProgress", false],
  ])("maps fault %s to %s / %s", async (kind, errKind, reason, retryable) => {
    emu.faults.set({ rules: [{ kind, next: 1 }] });
    const e = await fail(up.associateInstancesKeyPairs(input, opts()));
    expect(e).toMatchObject({ kind: errKind, reason });
    expect(isRetryableUpstream(e)).toBe(retryable);
    expect(isRateLimited(e)).toBe(kind === "requestLimitExceeded");
    expect(isMutexBusy(e)).toBe(kind === "mutexTaskRunning" || kind === "operationInProgress");
  });

  it("a lost reply may have reached the cloud: the task runs although the call timed out", async () => {
    emu.faults.set({ rules: [{ kind: "lostReply", next: 1 }] });
    const e = await fail(up.associateInstancesKeyPairs(input, opts()));
    expect(e.reason).toBe("UPSTREAM_TIMEOUT");
    expect(mayHaveReachedUpstream(e)).toBe(true);
    const { instances } = await up.describeInstances("ap-guangzhou", ["ins-gz000001"], opts());
    expect(instances[0]?.latestOperationState).toBe("OPERATING");
  });

  it("an abort by the caller is CANCELLED", async () => {
    emu.faults.set({ rules: [{ kind: "hang", next: 1 }] });
    const ac = new AbortController();
    const p = fail(up.associateInstancesKeyPairs(input, opts(ac.signal)));
    setTimeout(() => ac.abort(), 50);
    expect((await p).reason).toBe("CANCELLED");
  });

  it("the caller's deadline bounds the wait and is DEADLINE_EXCEEDED", async () => {
    emu.faults.set({ rules: [{ kind: "hang", next: 1 }] });
    const e = await fail(up.associateInstancesKeyPairs(input, opts(undefined, Date.now() + 100)));
    expect(e).toMatchObject({ kind: "deadline_exceeded", reason: "DEADLINE_EXCEEDED" });
  });

  it("sends nothing when the deadline has already passed or the caller is gone", async () => {
    expect((await fail(up.associateInstancesKeyPairs(input, opts(undefined, Date.now() - 1)))).reason).toBe(
      "DEADLINE_EXCEEDED",
    );
    const ac = new AbortController();
    ac.abort();
    expect((await fail(up.associateInstancesKeyPairs(input, opts(ac.signal)))).reason).toBe("CANCELLED");
    expect(emu.stats.arrivals).toHaveLength(0);
  });

  it("maps AuthFailure (keygate's own misconfiguration) to failed_precondition, not retryable", async () => {
    const wrong = createTencentUpstream({
      upstreamUrl: emu.url,
      credential: { secretId: SECRET_ID, secretKey: `${SECRET_KEY}-old`, token: TOKEN },
    });
    try {
      const e = await fail(wrong.associateInstancesKeyPairs(input, opts()));
      expect(e).toMatchObject({ kind: "failed_precondition", reason: "AuthFailure.SignatureFailure" });
      expect(isRetryableUpstream(e)).toBe(false);
    } finally {
      wrong.close();
    }
  });

  it("a failing credential provider is UPSTREAM_UNAVAILABLE and nothing reached the cloud", async () => {
    const broken = createTencentUpstream({
      upstreamUrl: emu.url,
      credential: { getCredential: () => Promise.reject(new Error(`STS said no; key was ${SECRET_KEY}`)) },
    });
    try {
      const e = await fail(broken.describeInstances("ap-guangzhou", ["ins-gz000001"], opts()));
      expect(e.reason).toBe("UPSTREAM_UNAVAILABLE");
      expect(emu.stats.arrivals).toHaveLength(0);
    } finally {
      broken.close();
    }
  });

  it("never puts the secret key or the token in any error (message, JSON, inspect)", () => {
    expect(seen.length).toBeGreaterThan(20);
    for (const e of seen) {
      for (const text of [e.message, JSON.stringify(e), inspect(e, { depth: Infinity, showHidden: true })]) {
        expect(text).not.toContain(SECRET_KEY);
        expect(text).not.toContain(TOKEN);
      }
    }
  });
});

describe("unreachable upstream", () => {
  it("a refused connection is UPSTREAM_UNAVAILABLE and did not reach the cloud", async () => {
    const port = await freePort();
    const up = createTencentUpstream({
      upstreamUrl: `http://127.0.0.1:${port}`,
      credential: { secretId: SECRET_ID, secretKey: SECRET_KEY },
    });
    try {
      const e = await failure(up.associateInstancesKeyPairs(input, opts()));
      expect(e).toMatchObject({ kind: "unavailable", reason: "UPSTREAM_UNAVAILABLE" });
      expect(isRetryableUpstream(e)).toBe(true);
      // Conservative on purpose: keygate checks the instances are idle before resending.
      expect(mayHaveReachedUpstream(e)).toBe(true);
      expect(e.message).not.toContain(SECRET_KEY);
    } finally {
      up.close();
    }
  });

  it("an https upstream URL keeps TLS SNI for the endpoint while connecting elsewhere", async () => {
    let hello: Buffer = Buffer.alloc(0);
    const got = new Promise<void>((resolve) => {
      const server = createServer((socket: Socket) => {
        socket.once("data", (chunk: Buffer) => {
          hello = chunk;
          socket.destroy();
          server.close();
          resolve();
        });
      });
      server.listen(0, "127.0.0.1", () => {
        const address = server.address();
        const port = typeof address === "object" && address ? address.port : 0;
        const route = createUpstreamRoute(`https://127.0.0.1:${port}`, false);
        expect(route.protocol).toBe("https://");
        const up = createTencentUpstream({
          upstreamUrl: `https://127.0.0.1:${port}`,
          credential: { secretId: SECRET_ID, secretKey: SECRET_KEY },
        });
        void up.describeInstances("ap-guangzhou", ["ins-gz000001"], opts()).catch(() => up.close());
      });
    });
    await got;
    expect(hello.includes(Buffer.from("cvm.tencentcloudapi.com"))).toBe(true);
  });
});

describe("credentials", () => {
  it("identity is a short hash, never the SecretId", async () => {
    const id = await credentialIdentity({
      getCredential: () => Promise.resolve({ secretId: "AKIDX", secretKey: "k" }),
    });
    expect(id).toMatch(/^[0-9a-f]{16}$/);
    expect(await credentialIdentity("AKIDX")).toBe(id);
  });

  it("a provider that caches its rejected fetch is recreated after a failure", async () => {
    let made = 0;
    const provider = retryingCredential(() => {
      made++;
      const attempt = made;
      const task =
        attempt === 1
          ? Promise.reject(new Error("sts down"))
          : Promise.resolve({ secretId: "AKIDT", secretKey: "tk" });
      task.catch(() => undefined);
      return { getCredential: () => task };
    });
    await expect(provider.getCredential()).rejects.toThrow("sts down");
    await expect(provider.getCredential()).resolves.toMatchObject({ secretId: "AKIDT" });
    expect(made).toBe(2);
  });
});
