/**
 * A deadline the caller sends (`connect-timeout-ms`) ends keygate's waits with the reason, not a
 * bare CANCELLED: keygate stops waiting just before the server aborts the call.
 */
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, expect, it } from "vitest";
import { ErrorDetailSchema, KeyPairService } from "../src/gen/keygate/v1/keygate_pb.js";
import { createEmulator, type Emulator } from "../src/upstream/emulator/index.js";
import { startGateway, type TestGateway } from "./support/app.js";
import { TOKEN_B, TWO_TENANTS } from "./support/policies.js";

let emulator: Emulator;
let gw: TestGateway;
beforeAll(async () => {
  emulator = await createEmulator({ host: "127.0.0.1", port: 0, taskMs: 5_000 });
  gw = await startGateway({ emulator, policyText: TWO_TENANTS });
});
afterAll(async () => {
  await gw?.stop();
  await emulator?.close();
});

const client = () =>
  createClient(KeyPairService, createConnectTransport({ baseUrl: gw.url, httpVersion: "1.1" }));
const auth = { authorization: `Bearer ${TOKEN_B}` };

it("an instance leased by another keygate call past the caller's deadline → ABORTED INSTANCE_BUSY", async () => {
  // team-b, ins-gz000003: the first call leases it for the 5 s task (wait_for_completion false).
  await client().associateKeyPairs(
    { region: "ap-guangzhou", instanceIds: ["ins-gz000003"], keyIds: ["skey-aaaaaaaa"] },
    { headers: auth },
  );
  const err = await client()
    .associateKeyPairs(
      { region: "ap-guangzhou", instanceIds: ["ins-gz000003"], keyIds: ["skey-bbbbbbbb"] },
      { headers: { ...auth, "connect-timeout-ms": "1500" } },
    )
    .catch((e: unknown) => ConnectError.from(e));
  const reason = (err as ConnectError).findDetails(ErrorDetailSchema)[0]?.reason;
  expect([Code[(err as ConnectError).code], reason]).toEqual(["Aborted", "INSTANCE_BUSY"]);
});
