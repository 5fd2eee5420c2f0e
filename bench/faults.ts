/**
 * bench:faults — exactly once under faults. Real processes: keygate replicas (`keygate serve`) on
 * one private redis-server, the CVM emulator as its own process; faults injected into the cloud
 * (lost, late, stalled replies; busy answers), into Redis (SIGKILL + empty restart, SIGSTOP, down)
 * and into replicas (SIGKILL at a crash point, SIGTERM). Prints one row per scenario with its
 * target: exactly one apply per request, zero MutexOperation at the cloud, exactly one answer per
 * caller, recovery within 1.5 s.
 *
 * Scenarios: (a) 20 callers, one idempotency key, 3 replicas, busy cores; (b) 20 identical calls
 * without key, 2 replicas, busy cores; (c) replica SIGKILLed after its cloud call, retry elsewhere;
 * (d) reply lost / late, also with force_stop; (e) Redis restarted empty during a task; (f) Redis
 * SIGSTOPped 10 s; (g) SIGTERM to a replica holding leases; (h) Redis down 5 s; (i) retryable cloud
 * error, then a retry with the same key; (j) busy while idle. (a′, d′: the naive SDK for comparison.)
 *
 * Run: npm run bench:faults [-- LETTERS]   e.g. `npm run bench:faults -- a d h` (default: all)
 */
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { cpus, tmpdir } from "node:os";
import { join } from "node:path";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { isKeygateError } from "../src/core/errors.js";
import { Health, HealthCheckResponse_ServingStatus } from "../src/gen/health/v1/health_pb.js";
import { ErrorDetailSchema, KeyPairService } from "../src/gen/keygate/v1/keygate_pb.js";
import {
  EMULATOR_SECRET_ID,
  EMULATOR_SECRET_KEY,
  type Apply,
  type FaultSettings,
  type InstanceSpec,
} from "../src/upstream/emulator/index.js";
import { createTencentUpstream } from "../src/upstream/tencent-upstream.js";
import { startRedis, type RedisProcess } from "../test/support/redis-server.js";
import { sha256 } from "../test/support/policies.js";
import { type Child, emulatorAdmin, startEmulatorProcess, startGatewayProcess } from "./support/processes.js";

const TASK_MS = 4_000;
const UPSTREAM_TIMEOUT_MS = 2_000;
const DRAIN_MS = 20_000;
const RECOVERY_TARGET_MS = 1_500;
/** keygate's Redis command timeout (src/store/redis.ts): a caller should fail within about one. */
const STORE_COMMAND_TIMEOUT_MS = 2_000;
const REGION = "ap-guangzhou";
const TOKEN = "token-bench-faults-0123456789";
const K1 = "skey-fault001";
const K2 = "skey-fault002";
const ASSOCIATE = "AssociateInstancesKeyPairs";
const ALL = "abcdefghij";
/** Distinguishes this run's idempotency keys from any other. */
const RUN = Date.now().toString(36);
const POOL = 600;

/** `ins-f<letter>NNNNNN` (STOPPED) per scenario, and `ins-frNNNNNN` RUNNING ones for force_stop. */
const inst = (letter: string, n: number) => `ins-f${letter}${String(n).padStart(6, "0")}`;
const running = (n: number) => `ins-fr${String(n).padStart(6, "0")}`;

function inventory(): { instances: InstanceSpec[]; keyPairs: { keyId: string }[] } {
  const make = (instanceId: string, instanceState: string): InstanceSpec => ({
    instanceId,
    region: REGION,
    zone: `${REGION}-3`,
    projectId: 0,
    osName: "TencentOS Server 3.1 (TK4)",
    instanceState,
  });
  return {
    instances: [
      ...[...`${ALL}n`].flatMap((l) =>
        Array.from({ length: POOL }, (_, i) => make(inst(l, i + 1), "STOPPED")),
      ),
      ...Array.from({ length: 20 }, (_, i) => make(running(i + 1), "RUNNING")),
    ],
    keyPairs: [{ keyId: K1 }, { keyId: K2 }],
  };
}

const POLICY = `
tenants:
  faults:
    tokens_sha256: ["${sha256(TOKEN)}"]
    regions: [${REGION}]
    instances: "*"
    keys: "*"
    force_stop: true
`;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------------------------
// The world: emulator, Redis, replicas, clients.

interface World {
  dir: string;
  redis: RedisProcess;
  emulator: Child;
  admin: ReturnType<typeof emulatorAdmin>;
  replicas: Child[];
  clients: Client<typeof KeyPairService>[];
  policyFile: string;
}

const replicaEnv = (w: { redis: RedisProcess; emulator: Child; policyFile: string }, extra = {}) => ({
  KEYGATE_POLICY_FILE: w.policyFile,
  KEYGATE_REDIS_URL: w.redis.url,
  KEYGATE_UPSTREAM_URL: w.emulator.url,
  TENCENTCLOUD_SECRET_ID: EMULATOR_SECRET_ID,
  TENCENTCLOUD_SECRET_KEY: EMULATOR_SECRET_KEY,
  KEYGATE_UPSTREAM_TIMEOUT_MS: String(UPSTREAM_TIMEOUT_MS),
  KEYGATE_TASK_POLL_MS: "200",
  KEYGATE_DRAIN_MS: String(DRAIN_MS),
  ...extra,
});

const clientFor = (c: Child) => createClient(KeyPairService, createGrpcTransport({ baseUrl: c.url }));

interface Answer {
  /** "OK", "<grpc code>/<reason>", or "NO_ANSWER/<grpc code>" when keygate never answered. */
  code: string;
  requestId: string;
  deduplicated: boolean;
  startedAt: number;
  endedAt: number;
}

async function call(
  client: Client<typeof KeyPairService>,
  req: {
    instanceIds: string[];
    keyIds?: string[];
    idempotencyKey?: string;
    forceStop?: boolean;
    wait?: boolean;
  },
  timeoutMs: number,
): Promise<Answer> {
  const startedAt = Date.now();
  try {
    const r = await client.associateKeyPairs(
      {
        region: REGION,
        instanceIds: req.instanceIds,
        keyIds: req.keyIds ?? [K1],
        forceStop: req.forceStop ?? false,
        idempotencyKey: req.idempotencyKey ?? "",
        waitForCompletion: req.wait ?? false,
      },
      { headers: { authorization: `Bearer ${TOKEN}` }, timeoutMs },
    );
    return {
      code: "OK",
      requestId: r.requestId,
      deduplicated: r.deduplicated,
      startedAt,
      endedAt: Date.now(),
    };
  } catch (e) {
    const err = ConnectError.from(e);
    const detail = err.findDetails(ErrorDetailSchema)[0];
    // Every keygate error carries an ErrorDetail; none means the client's own deadline or a lost connection.
    const code = detail ? `${Code[err.code]}/${detail.reason}` : `NO_ANSWER/${Code[err.code]}`;
    return {
      code,
      requestId: detail?.upstreamRequestId ?? "",
      deduplicated: false,
      startedAt,
      endedAt: Date.now(),
    };
  }
}

/** Busy loops that keep the cores busy; each ends by itself after `maxMs` and is killed by PID on stop. */
function busyCores(n: number, maxMs: number): { stop(): void } {
  const pids = Array.from({ length: n }, () => {
    const p = spawn(
      process.execPath,
      ["-e", `const end = Date.now() + ${maxMs}; while (Date.now() < end) {}`],
      {
        stdio: "ignore",
      },
    );
    return p.pid ?? 0;
  });
  return {
    stop() {
      for (const pid of pids) {
        try {
          process.kill(pid, "SIGKILL");
        } catch {
          /* already ended */
        }
      }
    },
  };
}

async function readiness(c: Child): Promise<boolean> {
  const health = createClient(Health, createGrpcTransport({ baseUrl: c.url }));
  return health.check({ service: "" }, { timeoutMs: 500 }).then(
    (r) => r.status === HealthCheckResponse_ServingStatus.SERVING,
    () => false,
  );
}

// ---------------------------------------------------------------------------------------------
// Figures and rows.

interface Row {
  id: string;
  scenario: string;
  target: string;
  applies: string;
  mutex: string;
  answers: string;
  timing: string;
  met: boolean | "n/a";
}

const tally = (answers: readonly Answer[]) => {
  const counts: Record<string, number> = {};
  for (const a of answers) counts[a.code] = (counts[a.code] ?? 0) + 1;
  return Object.entries(counts)
    .sort((a, b) => b[1] - a[1])
    .map(([c, n]) => `${c} ${n}`)
    .join(", ");
};

async function cloudOn(w: World, ids: readonly string[]) {
  const { applies, instances } = await w.admin.applied();
  const set = new Set(ids);
  const mine = applies.filter((a) => a.instanceIds.some((i) => set.has(i)));
  let mutex = 0;
  let injected = 0;
  for (const id of ids) {
    mutex += instances[id]?.mutexAnswers ?? 0;
    injected += instances[id]?.injectedMutexAnswers ?? 0;
  }
  const per = (id: string) => mine.filter((a) => a.instanceIds.includes(id)).length;
  return { applies: mine, mutex, injected, per };
}

const ms = (n: number) => (Number.isFinite(n) ? `${(n / 1000).toFixed(1)} s` : "—");
const appliesText = (total: number, expected: number, max: number) =>
  `${total} / ${expected} expected (max ${max} per request)`;

// ---------------------------------------------------------------------------------------------
// Scenarios.

type Scenario = (w: World) => Promise<Row[]>;

/** (a) 20 callers, one idempotency_key, 3 replicas, busy cores, 12 rounds. */
const scenarioA: Scenario = async (w) => {
  const rounds = 12;
  const busy = busyCores(2, 120_000);
  const answers: Answer[] = [];
  let splitRounds = 0;
  try {
    for (let r = 1; r <= rounds; r++) {
      const id = inst("a", r);
      const key = `${RUN}-a-${r}`;
      const got = await Promise.all(
        Array.from({ length: 20 }, (_, i) =>
          call(
            w.clients[i % 3] as Client<typeof KeyPairService>,
            { instanceIds: [id], idempotencyKey: key },
            30_000,
          ),
        ),
      );
      answers.push(...got);
      if (new Set(got.filter((a) => a.code === "OK").map((a) => a.requestId)).size > 1) splitRounds += 1;
    }
  } finally {
    busy.stop();
  }
  const ids = Array.from({ length: rounds }, (_, i) => inst("a", i + 1));
  const cloud = await cloudOn(w, ids);
  const max = Math.max(...ids.map(cloud.per));
  const allOk = answers.every((a) => a.code === "OK");
  const rows: Row[] = [
    {
      id: "a",
      scenario: "20 callers, one idempotency_key, 3 replicas, 2 busy cores, 12 rounds",
      target: "1 apply per key; all 20 get the same request id",
      applies: appliesText(cloud.applies.length, rounds, max),
      mutex: String(cloud.mutex),
      answers: `${tally(answers)}; rounds with >1 request id: ${splitRounds}/${rounds}`,
      timing: `p100 answer ${ms(Math.max(...answers.map((a) => a.endedAt - a.startedAt)))}`,
      met: cloud.applies.length === rounds && max === 1 && cloud.mutex === 0 && allOk && splitRounds === 0,
    },
  ];
  // The naive alternative: the same 20 callers straight to the cloud with the SDK.
  const sdk = direct(w);
  try {
    const id = inst("n", 1);
    const got = await Promise.all(Array.from({ length: 20 }, () => sdk.associate([id], false)));
    const c = await cloudOn(w, [id]);
    rows.push({
      id: "a′",
      scenario: "naive: the same 20 callers, SDK straight to the cloud (1 round; no coalescing, no limiter)",
      target: "(comparison)",
      applies: appliesText(c.applies.length, 1, c.per(id)),
      mutex: String(c.mutex),
      answers: countStrings(got),
      timing: "",
      met: "n/a",
    });
  } finally {
    sdk.close();
  }
  return rows;
};

/** (b) 20 identical calls without key, 2 replicas, busy cores. */
const scenarioB: Scenario = async (w) => {
  const rounds = 12;
  const busy = busyCores(2, 60_000);
  const answers: Answer[] = [];
  let splitRounds = 0;
  try {
    for (let r = 1; r <= rounds; r++) {
      const id = inst("b", r);
      const got = await Promise.all(
        Array.from({ length: 20 }, (_, i) =>
          call(w.clients[i % 2] as Client<typeof KeyPairService>, { instanceIds: [id] }, 30_000),
        ),
      );
      answers.push(...got);
      if (new Set(got.filter((a) => a.code === "OK").map((a) => a.requestId)).size > 1) splitRounds += 1;
    }
  } finally {
    busy.stop();
  }
  const ids = Array.from({ length: rounds }, (_, i) => inst("b", i + 1));
  const cloud = await cloudOn(w, ids);
  const max = Math.max(...ids.map(cloud.per));
  return [
    {
      id: "b",
      scenario: `20 identical calls without key, 2 replicas, 2 busy cores, ${rounds} rounds`,
      target: "1 apply per round (coalesced); one request id",
      applies: appliesText(cloud.applies.length, rounds, max),
      mutex: String(cloud.mutex),
      answers: `${tally(answers)}; rounds with >1 request id: ${splitRounds}/${rounds}`,
      timing: `p100 answer ${ms(Math.max(...answers.map((a) => a.endedAt - a.startedAt)))}`,
      met:
        cloud.applies.length === rounds &&
        max === 1 &&
        cloud.mutex === 0 &&
        splitRounds === 0 &&
        answers.every((a) => a.code === "OK"),
    },
  ];
};

/** (c) The executing replica is SIGKILLed right after its cloud call; the caller retries elsewhere. */
const scenarioC: Scenario = async (w) => {
  const doomed = await startGatewayProcess(replicaEnv(w, { KEYGATE_TEST_CRASH_AT: "after-send" }));
  const id = inst("c", 1);
  const key = `${RUN}-c`;
  const first = await call(clientFor(doomed), { instanceIds: [id], idempotencyKey: key }, 10_000);
  await doomed.stop(1_000);
  const retry = await call(
    w.clients[0] as Client<typeof KeyPairService>,
    { instanceIds: [id], idempotencyKey: key },
    45_000,
  );
  const cloud = await cloudOn(w, [id]);
  const appliedId = cloud.applies[0]?.requestId ?? "";
  return [
    {
      id: "c",
      scenario:
        "replica SIGKILLed after its cloud call (crash point after-send); retry, same key, other replica",
      target: `1 apply; the retry answers OK with the applied request id, once the dead call's deadline + the resend horizon have passed (${(10_000 + 2 * UPSTREAM_TIMEOUT_MS) / 1000} s)`,
      applies: appliesText(cloud.applies.length, 1, cloud.per(id)),
      mutex: String(cloud.mutex),
      answers: `first: ${first.code}; retry: ${retry.code}, ${retry.requestId === appliedId ? "the applied request id" : "another request id"}`,
      timing: `retry answered after ${ms(retry.endedAt - retry.startedAt)}`,
      met:
        cloud.applies.length === 1 &&
        cloud.mutex === 0 &&
        retry.code === "OK" &&
        retry.requestId === appliedId &&
        retry.endedAt - retry.startedAt <= 10_000 + 2 * UPSTREAM_TIMEOUT_MS + 1_000,
    },
  ];
};

/** (d) The cloud applies but the reply is lost or late; also with force_stop; and the naive SDK. */
const scenarioD: Scenario = async (w) => {
  const rows: Row[] = [];
  let n = 0;
  const variant = async (
    name: string,
    faults: FaultSettings,
    requests: number,
    opts: { forceStop?: boolean; timeoutMs: number },
  ) => {
    const ids = Array.from({ length: requests }, () => (opts.forceStop ? running(++n) : inst("d", ++n)));
    await w.admin.faults(faults);
    let answers: Answer[];
    try {
      answers = await Promise.all(
        ids.map((id, i) =>
          call(
            w.clients[i % 3] as Client<typeof KeyPairService>,
            { instanceIds: [id], idempotencyKey: `${RUN}-d-${id}`, forceStop: opts.forceStop ?? false },
            opts.timeoutMs,
          ),
        ),
      );
    } finally {
      await w.admin.faults({});
    }
    await sleep(500); // a held late reply's task is already counted; nothing else is pending
    const cloud = await cloudOn(w, ids);
    const max = Math.max(...ids.map(cloud.per));
    const stops = opts.forceStop
      ? `; instance stops (force_stop applies): ${cloud.applies.filter((a) => a.forceStop).length}`
      : "";
    rows.push({
      id: "d",
      scenario: name,
      target: "1 apply per request; caller told OK with the applied request id",
      applies: appliesText(cloud.applies.length, requests, max) + stops,
      mutex: String(cloud.mutex),
      answers: tally(answers),
      timing: `answers after ${answers.map((a) => ms(a.endedAt - a.startedAt)).join(", ")}`,
      met:
        cloud.applies.length === requests &&
        max === 1 &&
        cloud.mutex === 0 &&
        answers.every((a) => a.code === "OK"),
    });
  };
  const A = { action: ASSOCIATE };
  await variant(
    "reply lost once (lostReply), 2 requests",
    { rules: [{ kind: "lostReply", ...A, next: 2 }] },
    2,
    {
      timeoutMs: 20_000,
    },
  );
  await variant(
    `reply late once (lateReply ${2 * UPSTREAM_TIMEOUT_MS} ms > upstream timeout ${UPSTREAM_TIMEOUT_MS} ms), 2 requests`,
    { rules: [{ kind: "lateReply", ...A, delayMs: 2 * UPSTREAM_TIMEOUT_MS, next: 2 }] },
    2,
    { timeoutMs: 20_000 },
  );
  await variant(
    "every reply lost (lostReply always), 1 request, 15 s deadline",
    { rules: [{ kind: "lostReply", ...A }] },
    1,
    {
      timeoutMs: 15_000,
    },
  );
  await variant(
    "force_stop on a RUNNING instance, reply lost once, 1 request",
    { rules: [{ kind: "lostReply", ...A, next: 1 }] },
    1,
    { forceStop: true, timeoutMs: 20_000 },
  );
  // Naive: the SDK straight to the cloud, every reply lost, retrying a timeout 3 times after a
  // backoff longer than the task (a shorter one collides with its own task instead: MutexOperation).
  const sdk = direct(w);
  const id = inst("n", 2);
  await w.admin.faults({ rules: [{ kind: "lostReply", ...A }] });
  const codes: string[] = [];
  try {
    for (let i = 0; i < 3; i++) {
      if (i > 0) await sleep(TASK_MS + 500);
      codes.push(await sdk.associate([id], false));
    }
  } finally {
    await w.admin.faults({});
    sdk.close();
  }
  const c = await cloudOn(w, [id]);
  rows.push({
    id: "d′",
    scenario: `naive: SDK straight to the cloud, every reply lost, 3 tries ${(TASK_MS + 500) / 1000} s apart`,
    target: "(comparison)",
    applies: appliesText(c.applies.length, 1, c.per(id)),
    mutex: String(c.mutex),
    answers: codes.join(", "),
    timing: "",
    met: "n/a",
  });
  return rows;
};

/** (e) Redis restarted empty while a cloud task runs; then a call on that instance; then a replay. */
const scenarioE: Scenario = async (w) => {
  const id = inst("e", 1);
  const key = `${RUN}-e`;
  const c = (i: number) => w.clients[i] as Client<typeof KeyPairService>;
  const first = await call(c(0), { instanceIds: [id], idempotencyKey: key }, 10_000);
  await w.redis.kill();
  await w.redis.restart();
  const back = Date.now();
  // The caller replays its key (retrying STORE_UNAVAILABLE while keygate reconnects).
  let replay = await call(c(2), { instanceIds: [id], idempotencyKey: key }, 20_000);
  while (replay.code.endsWith("STORE_UNAVAILABLE") && Date.now() - back < 15_000) {
    await sleep(100);
    replay = await call(c(2), { instanceIds: [id], idempotencyKey: key }, 20_000);
  }
  // Another request on the same instance, retried by its caller until keygate takes it.
  const attempts: Answer[] = [];
  let second: Answer | undefined;
  while (Date.now() - back < 15_000) {
    const a = await call(c(1), { instanceIds: [id], keyIds: [K2] }, 10_000);
    attempts.push(a);
    if (!a.code.endsWith("STORE_UNAVAILABLE") && !a.code.startsWith("NO_ANSWER")) {
      second = a;
      break;
    }
    await sleep(100);
  }
  const cloud = await cloudOn(w, [id]);
  const replayed = replay.requestId === first.requestId;
  return [
    {
      id: "e",
      scenario: `Redis SIGKILLed + restarted empty during a ${TASK_MS / 1000} s task; then a replay of the key, then another call on that instance`,
      target: "2 applies (2 requests), 0 MutexOperation; the replay returns the first request id",
      applies: `${cloud.applies.length} / 2 expected`,
      mutex: String(cloud.mutex),
      answers: `first: ${first.code}; replay: ${replay.code}, ${replayed ? "first request id" : "another request id"}; next call: ${tally(attempts)}`,
      timing: `next call taken ${second ? ms(second.endedAt - back) : "never"} after Redis was back`,
      met:
        cloud.applies.length === 2 &&
        cloud.mutex === 0 &&
        second?.code === "OK" &&
        replay.code === "OK" &&
        replayed,
    },
  ];
};

/** (f) Redis SIGSTOPped 10 s under load, then SIGCONT. */
const scenarioF: Scenario = async (w) => {
  const stallMs = 10_000;
  let next = 0;
  const answers: { a: Answer; id: string }[] = [];
  const t0 = Date.now();
  const stopAt = t0 + 1_500;
  const contAt = stopAt + stallMs;
  const endAt = contAt + 2_000;
  const loop = async (caller: number) => {
    while (Date.now() < endAt && next < POOL) {
      const id = inst("f", ++next);
      answers.push({
        a: await call(w.clients[caller % 3] as Client<typeof KeyPairService>, { instanceIds: [id] }, 5_000),
        id,
      });
      await sleep(200);
    }
  };
  const load = Promise.all(Array.from({ length: 6 }, (_, i) => loop(i)));
  const samples: boolean[] = [];
  const same = inst("f", POOL);
  const during: Promise<Answer>[] = [];
  await sleep(stopAt - Date.now());
  process.kill(w.redis.pid, "SIGSTOP");
  const stoppedAt = Date.now();
  try {
    while (Date.now() < contAt) {
      // The request the identical calls below repeat, tried during the stall: its claim commands
      // wait in Redis's socket buffer and run when Redis resumes.
      if (samples.length % 4 === 0) {
        during.push(
          call(
            w.clients[samples.length % 3] as Client<typeof KeyPairService>,
            { instanceIds: [same] },
            5_000,
          ),
        );
      }
      // A sample taken before one command timeout has passed cannot know yet: it does not count.
      const detected = Date.now() - stoppedAt > STORE_COMMAND_TIMEOUT_MS;
      const sample = await readiness(w.replicas[0] as Child);
      if (detected) samples.push(sample);
      await sleep(250);
    }
  } finally {
    process.kill(w.redis.pid, "SIGCONT");
  }
  const contedAt = Date.now();
  // Identical calls right after the stall, retrying STORE_UNAVAILABLE as the README tells callers
  // to: how long until they are answered OK (a claim left behind by the stall would hold them)?
  const identical = await Promise.all(
    Array.from({ length: 10 }, async (_, i) => {
      for (;;) {
        const a = await call(
          w.clients[i % 3] as Client<typeof KeyPairService>,
          { instanceIds: [same] },
          30_000,
        );
        if (!a.code.endsWith("STORE_UNAVAILABLE") || Date.now() - contedAt > 30_000) return a;
        await sleep(50);
      }
    }),
  );
  const duringAnswers = await Promise.all(during);
  await load;
  const inflight = answers.filter(({ a }) => a.startedAt < stoppedAt && a.endedAt > stoppedAt);
  const failTimes = inflight.filter(({ a }) => a.code !== "OK").map(({ a }) => a.endedAt - a.startedAt);
  const ids = [...answers.map((x) => x.id), inst("f", POOL)];
  const cloud = await cloudOn(w, ids);
  const okIds =
    answers.filter(({ a }) => a.code === "OK").length + (identical.some((a) => a.code === "OK") ? 1 : 0);
  const max = Math.max(...answers.map((x) => cloud.per(x.id)));
  const sameApplies = cloud.per(same);
  const serving = samples.filter(Boolean).length;
  const maxIdentical = Math.max(...identical.map((a) => a.endedAt - contedAt));
  return [
    {
      id: "f",
      scenario: `Redis SIGSTOPped ${stallMs / 1000} s under load (6 callers, 3 replicas), then SIGCONT; one request tried during the stall, then 10 identical calls of it`,
      target: `in-flight calls fail within one ${STORE_COMMAND_TIMEOUT_MS / 1000} s command timeout; NOT_SERVING once a timeout has passed; identical calls (retrying STORE_UNAVAILABLE) answered OK ≤ ${RECOVERY_TARGET_MS / 1000} s after SIGCONT`,
      applies: `${cloud.applies.length} for ${okIds} OK requests (load: max ${max} per request; the request tried during the stall and repeated: ${sameApplies})`,
      mutex: String(cloud.mutex),
      answers: `load: ${tally(answers.map((x) => x.a))}; during the stall: ${tally(duringAnswers)}; identical after: ${tally(identical)}`,
      timing:
        `in-flight calls failed ${failTimes.length ? `${ms(Math.min(...failTimes))}–${ms(Math.max(...failTimes))}` : "—"}` +
        ` after they started (${inflight.length} in flight at SIGSTOP); SERVING in ${serving}/${samples.length} samples after the first ${STORE_COMMAND_TIMEOUT_MS / 1000} s of the stall;` +
        ` identical calls answered within ${ms(maxIdentical)} of SIGCONT`,
      met:
        serving === 0 &&
        max <= 1 &&
        sameApplies === 1 &&
        cloud.mutex === 0 &&
        maxIdentical <= RECOVERY_TARGET_MS &&
        identical.every((a) => a.code === "OK") &&
        failTimes.every((t) => t <= STORE_COMMAND_TIMEOUT_MS + 500) &&
        inflight.every(({ a }) => !a.code.startsWith("NO_ANSWER")),
    },
  ];
};

/** (g) SIGTERM to a replica whose instances are leased for running tasks. */
const scenarioG: Scenario = async (w) => {
  const victim = w.replicas[2] as Child;
  const ids = Array.from({ length: 4 }, (_, i) => inst("g", i + 1));
  const vc = clientFor(victim);
  const firsts = await Promise.all(ids.map((id) => call(vc, { instanceIds: [id] }, 10_000)));
  const termAt = Date.now();
  const exited = victim.stop(DRAIN_MS + 10_000).then(() => Date.now() - termAt);
  const other = await call(
    w.clients[0] as Client<typeof KeyPairService>,
    { instanceIds: [ids[0] ?? ""], keyIds: [K2] },
    40_000,
  );
  const exitMs = await exited;
  const cloud = await cloudOn(w, ids);
  const firstApply = cloud.applies.find(
    (a: Apply) => a.instanceIds.includes(ids[0] ?? "") && a.keyIds.includes(K1),
  );
  const taskEnd = (firstApply?.at ?? termAt) + TASK_MS;
  const heldPastTask = other.endedAt - taskEnd;
  // Counted per instance: the victim's four calls may share one cloud call (batching).
  const instanceApplies = ids.reduce((n, id) => n + cloud.per(id), 0);
  const expected = ids.length + 1;
  const eachOnce = ids.every((id, i) => cloud.per(id) === (i === 0 ? 2 : 1));
  return [
    {
      id: "g",
      scenario: `SIGTERM to a replica holding 4 leases for ${TASK_MS / 1000} s tasks; a call on one of them via another replica`,
      target: `lease released ≤ ${RECOVERY_TARGET_MS / 1000} s after the task; the replica exits when its work is done`,
      applies: `${instanceApplies} instance applies / ${expected} expected (in ${cloud.applies.length} cloud calls)`,
      mutex: String(cloud.mutex),
      answers: `victim's calls: ${tally(firsts)}; other caller: ${other.code}`,
      timing: `other caller waited ${ms(other.endedAt - other.startedAt)} (${ms(heldPastTask)} past the task end); victim exited ${ms(exitMs)} after SIGTERM`,
      met:
        instanceApplies === expected &&
        eachOnce &&
        cloud.mutex === 0 &&
        other.code === "OK" &&
        heldPastTask <= RECOVERY_TARGET_MS &&
        exitMs <= TASK_MS + RECOVERY_TARGET_MS,
    },
  ];
};

/** (h) Redis down 5 s, then back: time to the first OK. */
const scenarioH: Scenario = async (w) => {
  let n = 0;
  await w.redis.kill();
  const down: Answer[] = [];
  const downUntil = Date.now() + 5_000;
  while (Date.now() < downUntil) {
    down.push(
      await call(w.clients[0] as Client<typeof KeyPairService>, { instanceIds: [inst("h", ++n)] }, 2_000),
    );
    await sleep(250);
  }
  await w.redis.restart();
  const back = Date.now();
  const after: Answer[] = [];
  let firstOk = Number.POSITIVE_INFINITY;
  while (Date.now() - back < 20_000) {
    const a = await call(
      w.clients[0] as Client<typeof KeyPairService>,
      { instanceIds: [inst("h", ++n)] },
      2_000,
    );
    after.push(a);
    if (a.code === "OK") {
      firstOk = a.endedAt - back;
      break;
    }
    await sleep(100);
  }
  const ids = Array.from({ length: n }, (_, i) => inst("h", i + 1));
  const cloud = await cloudOn(w, ids);
  return [
    {
      id: "h",
      scenario: "Redis down 5 s (SIGKILL), then back on the same port",
      target: `first OK ≤ ${RECOVERY_TARGET_MS / 1000} s after Redis is back; nothing sent while down`,
      applies: `${cloud.applies.length} / 1 expected (the first OK)`,
      mutex: String(cloud.mutex),
      answers: `while down: ${tally(down)}; after: ${tally(after)}`,
      timing: `first OK ${ms(firstOk)} after Redis was back`,
      met: firstOk <= RECOVERY_TARGET_MS && cloud.applies.length === 1 && cloud.mutex === 0,
    },
  ];
};

/** (i) A retryable cloud error, then a retry with the same key: does it call the cloud again? */
const scenarioI: Scenario = async (w) => {
  const rows: Row[] = [];
  const cases = [
    {
      name: "InternalError",
      faults: { rules: [{ kind: "internalError" as const, action: ASSOCIATE }] },
      timeoutMs: 6_000,
    },
    {
      name: "MutexOperation.TaskRunning",
      faults: { rules: [{ kind: "mutexTaskRunning" as const }] },
      timeoutMs: 3_000,
    },
  ];
  let n = 0;
  for (const c of cases) {
    const id = inst("i", ++n);
    const key = `${RUN}-i-${n}`;
    const client = w.clients[n % 3] as Client<typeof KeyPairService>;
    await w.admin.faults(c.faults);
    let first: Answer;
    try {
      first = await call(client, { instanceIds: [id], idempotencyKey: key }, c.timeoutMs);
    } finally {
      await w.admin.faults({});
    }
    const retry = await call(client, { instanceIds: [id], idempotencyKey: key }, 20_000);
    const cloud = await cloudOn(w, [id]);
    rows.push({
      id: "i",
      scenario: `cloud answers ${c.name} until the deadline, then the caller retries with the same key`,
      target: "the retry calls the cloud: 1 apply, OK",
      applies: appliesText(cloud.applies.length, 1, cloud.per(id)),
      mutex: String(cloud.mutex),
      answers: `first: ${first.code}; retry: ${retry.code}${retry.code === first.code ? " (the stored error replayed)" : ""}`,
      timing: `retry answered after ${ms(retry.endedAt - retry.startedAt)}`,
      met: cloud.applies.length === 1 && retry.code === "OK",
    });
  }
  return rows;
};

/** (j) The cloud says busy while DescribeInstances shows the instance idle. */
const scenarioJ: Scenario = async (w) => {
  const id = inst("j", 1);
  const deadlineMs = 3_000;
  await w.admin.faults({ rules: [{ kind: "mutexTaskRunning" }] });
  let a: Answer;
  try {
    a = await call(w.clients[0] as Client<typeof KeyPairService>, { instanceIds: [id] }, deadlineMs);
  } finally {
    await w.admin.faults({});
  }
  const cloud = await cloudOn(w, [id]);
  const calls = cloud.injected;
  return [
    {
      id: "j",
      scenario: `busy while idle: the cloud answers MutexOperation.TaskRunning, DescribeInstances shows idle; one request, ${deadlineMs / 1000} s deadline`,
      target: "≤ 5 cloud calls for the request, backed off",
      applies: appliesText(cloud.applies.length, 0, cloud.per(id)),
      mutex: `${cloud.mutex} (+${calls} injected)`,
      answers: a.code,
      timing: `${calls} AssociateInstancesKeyPairs calls in ${ms(a.endedAt - a.startedAt)}`,
      met: calls <= 5 && a.code !== "OK" && !a.code.startsWith("NO_ANSWER"),
    },
  ];
};

// ---------------------------------------------------------------------------------------------

/** The naive client: the SDK straight to the emulator (upstream timeout as keygate's). */
function direct(w: World) {
  const up = createTencentUpstream({
    upstreamUrl: w.emulator.url,
    credential: { secretId: EMULATOR_SECRET_ID, secretKey: EMULATOR_SECRET_KEY },
    reqTimeoutMs: UPSTREAM_TIMEOUT_MS,
  });
  return {
    async associate(instanceIds: string[], forceStop: boolean): Promise<string> {
      try {
        await up.associateInstancesKeyPairs(
          { region: REGION, instanceIds, keyIds: [K1], forceStop },
          { signal: AbortSignal.timeout(30_000), deadline: Date.now() + 30_000 },
        );
        return "OK";
      } catch (e) {
        if (isKeygateError(e)) return e.upstreamCode ?? e.reason;
        throw e;
      }
    },
    close: () => up.close(),
  };
}

function countStrings(xs: readonly string[]): string {
  const counts: Record<string, number> = {};
  for (const x of xs) counts[x] = (counts[x] ?? 0) + 1;
  return Object.entries(counts)
    .map(([c, n]) => `${c} ${n}`)
    .join(", ");
}

const SCENARIOS: Record<string, Scenario> = {
  a: scenarioA,
  b: scenarioB,
  i: scenarioI,
  j: scenarioJ,
  d: scenarioD,
  c: scenarioC,
  e: scenarioE,
  f: scenarioF,
  h: scenarioH,
  g: scenarioG, // last: it stops a replica
};

function table(rows: readonly Row[]): string {
  const head = [
    "",
    "scenario",
    "target",
    "cloud applies",
    "MutexOperation at the cloud",
    "answers (by code)",
    "timing / recovery",
    "met",
  ];
  const cell = (s: string) => s.replace(/\|/g, "\\|");
  const lines = [
    `| ${head.join(" | ")} |`,
    `|${head.map(() => " --- ").join("|")}|`,
    ...rows.map(
      (r) =>
        `| ${[r.id, r.scenario, r.target, r.applies, r.mutex, r.answers, r.timing, r.met === "n/a" ? "—" : r.met ? "yes" : "**no**"].map(cell).join(" | ")} |`,
    ),
  ];
  return lines.join("\n");
}

async function main(): Promise<void> {
  const wanted = process.argv.slice(2).join("").toLowerCase() || ALL;
  const unknown = [...wanted].filter((l) => !ALL.includes(l));
  if (unknown.length > 0) {
    process.stderr.write(`unknown scenario(s) "${unknown.join("")}"; choose letters from ${ALL}\n`);
    process.exit(2);
  }
  console.error(
    `bench:faults scenarios=${wanted} taskMs=${TASK_MS} upstreamTimeoutMs=${UPSTREAM_TIMEOUT_MS} drainMs=${DRAIN_MS} cpus=${cpus().length}`,
  );
  const started = Date.now();
  const dir = mkdtempSync(join(tmpdir(), "keygate-bench-faults-"));
  const policyFile = join(dir, "policy.yaml");
  writeFileSync(policyFile, POLICY);
  const inventoryFile = join(dir, "inventory.json");
  writeFileSync(inventoryFile, JSON.stringify(inventory()));
  const redis = await startRedis();
  const children: Child[] = [];
  const rows: Row[] = [];
  try {
    const emulator = await startEmulatorProcess(inventoryFile, TASK_MS);
    children.push(emulator);
    const base = { redis, emulator, policyFile };
    const replicas = await Promise.all([0, 1, 2].map(() => startGatewayProcess(replicaEnv(base))));
    children.push(...replicas);
    const w: World = {
      dir,
      ...base,
      admin: emulatorAdmin(emulator.url),
      replicas,
      clients: replicas.map(clientFor),
    };
    console.error(`started in ${ms(Date.now() - started)}`);
    for (const [letter, run] of Object.entries(SCENARIOS)) {
      if (!wanted.includes(letter)) continue;
      const t = Date.now();
      const got = await run(w).catch((e: unknown): Row[] => [
        {
          id: letter,
          scenario: "(failed to run)",
          target: "",
          applies: "",
          mutex: "",
          answers: String(e),
          timing: "",
          met: false,
        },
      ]);
      rows.push(...got);
      console.error(`(${letter}) done in ${ms(Date.now() - t)}`);
    }
  } finally {
    for (const c of children) await c.stop(2_000);
    await redis.stop();
    rmSync(dir, { recursive: true, force: true });
  }
  console.log(table(rows));
  console.error(`bench:faults took ${ms(Date.now() - started)}`);
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(err);
    process.exit(1);
  },
);
