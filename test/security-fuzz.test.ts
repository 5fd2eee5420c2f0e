/**
 * A bounded, seeded fuzz run against a real `keygate serve` process: mutated AssociateKeyPairs
 * requests over Connect JSON, Connect binary, gRPC and gRPC-Web. No credentials that could pass,
 * so every answer must be a documented refusal (INVALID_ARGUMENT or UNAUTHENTICATED), never a
 * 5xx or INTERNAL; the process survives with bounded memory, every call is one audit line, and
 * nothing reaches the cloud.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import http2 from "node:http2";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { create, toBinary, toJsonString } from "@bufbuild/protobuf";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AssociateKeyPairsRequestSchema } from "../src/gen/keygate/v1/keygate_pb.js";
import type { Emulator } from "../src/upstream/emulator/index.js";
import { withoutWarmUp } from "./support/fleet.js";
import { startEmulator } from "./support/app.js";
import {
  type CallStatus,
  connectStatus,
  envelope,
  grpcCall,
  grpcWebStatus,
  healthCheck,
  post,
  watchRss,
} from "./support/hostile.js";
import { sha256 } from "./support/policies.js";
import { type Child, killStrays, serveEnv, spawnKeygate, waitListening } from "./support/process.js";
import { pollUntil } from "./support/wait.js";

const SEED = 0x6b657967; // "keyg"
const REQUESTS = 2_000;
const CONCURRENCY = 8;
const RSS_BOUND_MB = 300;
const PATH = "/keygate.v1.KeyPairService/AssociateKeyPairs";
const POLICY = `
tenants:
  team-a:
    tokens_sha256: ["${sha256("a-token-nobody-sends-0123456789")}"]
    regions: [ap-guangzhou]
    instances:
      ids: [ins-gz000001]
    keys: [skey-aaaaaaaa]
`;

/** mulberry32: small, fast, and the same sequence on every machine. */
function prng(seed: number) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const int = (n: number) => Math.floor(next() * n);
  return { next, int, pick: <T>(xs: readonly T[]): T => xs[int(xs.length)] as T };
}

type Rng = ReturnType<typeof prng>;

function baseRequest(rng: Rng) {
  const n = 1 + rng.int(4);
  return create(AssociateKeyPairsRequestSchema, {
    region: rng.pick(["ap-guangzhou", "ap-shanghai", "", "ap-nowhere"]),
    instanceIds: Array.from({ length: n }, (_, i) => `ins-gz00000${i + 1}`),
    keyIds: ["skey-aaaaaaaa"],
    forceStop: rng.next() < 0.3,
    idempotencyKey: rng.next() < 0.3 ? `k-${rng.int(1000)}` : "",
    waitForCompletion: rng.next() < 0.5,
  });
}

/** Byte-level damage: flips, truncation, insertion, splices, or plain noise. */
function mutate(rng: Rng, input: Uint8Array): Buffer {
  let b = Buffer.from(input);
  const rounds = 1 + rng.int(4);
  for (let r = 0; r < rounds; r++) {
    switch (rng.int(6)) {
      case 0:
        if (b.length > 0) b[rng.int(b.length)] = rng.int(256);
        break;
      case 1:
        b = b.subarray(0, rng.int(b.length + 1));
        break;
      case 2: {
        const at = rng.int(b.length + 1);
        const noise = Buffer.from(Array.from({ length: 1 + rng.int(16) }, () => rng.int(256)));
        b = Buffer.concat([b.subarray(0, at), noise, b.subarray(at)]);
        break;
      }
      case 3: {
        const from = rng.int(b.length + 1);
        b = Buffer.concat([b, b.subarray(from, from + rng.int(64))]);
        break;
      }
      case 4:
        if (b.length > 0) b[rng.int(b.length)] = rng.pick([0x00, 0x0a, 0x12, 0x22, 0x7b, 0x7d, 0x22, 0xff]);
        break;
      default:
        b = Buffer.from(Array.from({ length: rng.int(200) }, () => rng.int(256)));
    }
  }
  return b;
}

/** A gRPC / gRPC-Web frame, now and then with a lying length or a compressed flag without encoding. */
function frameFor(rng: Rng, body: Buffer): Buffer {
  const env = envelope(body);
  const roll = rng.next();
  if (roll < 0.1) env[0] = 1;
  else if (roll < 0.2) env.writeUInt32BE(rng.int(1 << 20), 1);
  else if (roll < 0.25) return env.subarray(0, rng.int(env.length));
  return env;
}

const PROTOCOLS = ["connect-json", "connect-proto", "grpc", "grpc-web"] as const;
const DOCUMENTED = new Set(["invalid_argument", "unauthenticated"]);

let emulator: Emulator;
let dir: string;
let child: Child;
let port: number;

beforeAll(async () => {
  emulator = await startEmulator(100);
  dir = mkdtempSync(join(tmpdir(), "keygate-fuzz-"));
  writeFileSync(join(dir, "policy.yaml"), POLICY);
  child = spawnKeygate(["serve"], serveEnv(join(dir, "policy.yaml"), emulator.url));
  port = (await waitListening(child)).api;
}, 60_000);

afterAll(async () => {
  await killStrays();
  await emulator?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe("fuzzing the API port", () => {
  it(`answers ${REQUESTS} mutated requests with documented refusals only`, async () => {
    const rng = prng(SEED);
    const rss = watchRss(child.pid);
    const session = http2.connect(`http://127.0.0.1:${port}`);
    session.on("error", () => undefined);
    const auditsBefore = child.logs().filter((l) => l.audit === true).length;
    // Build every request first, so the sequence depends on the seed only, not on timing.
    const jobs = Array.from({ length: REQUESTS }, (_, i) => {
      const protocol = PROTOCOLS[i % PROTOCOLS.length] ?? "grpc";
      const msg = baseRequest(rng);
      const pristine =
        protocol === "connect-json"
          ? Buffer.from(toJsonString(AssociateKeyPairsRequestSchema, msg))
          : Buffer.from(toBinary(AssociateKeyPairsRequestSchema, msg));
      const body = rng.next() < 0.1 ? pristine : mutate(rng, pristine);
      const auth: Record<string, string> =
        rng.next() < 0.5 ? {} : { authorization: `Bearer wrong-${rng.int(1e6)}` };
      return {
        protocol,
        body,
        auth,
        framed: protocol === "grpc" || protocol === "grpc-web" ? frameFor(rng, body) : body,
      };
    });

    const seen = new Map<string, number>();
    const bad: string[] = [];
    let next = 0;
    const worker = async () => {
      while (next < jobs.length) {
        const job = jobs[next++];
        if (!job) break;
        let s: CallStatus;
        if (job.protocol === "grpc") {
          s = await grpcCall(session, PATH, job.framed, job.auth);
        } else {
          const ct = {
            "connect-json": "application/json",
            "connect-proto": "application/proto",
            "grpc-web": "application/grpc-web+proto",
          }[job.protocol];
          const r = await post(port, PATH, { "content-type": ct, ...job.auth }, job.framed);
          s = job.protocol === "grpc-web" ? grpcWebStatus(r) : connectStatus(r);
        }
        const key = `${job.protocol} ${s.code}`;
        seen.set(key, (seen.get(key) ?? 0) + 1);
        if (!DOCUMENTED.has(s.code) || s.httpStatus >= 500) {
          bad.push(
            `${job.protocol} ${s.code} http ${s.httpStatus} "${s.message}" body ${job.framed.toString("hex").slice(0, 80)}`,
          );
        }
      }
    };
    await Promise.all(Array.from({ length: CONCURRENCY }, () => worker()));
    session.close();
    console.log(`fuzz: ${JSON.stringify(Object.fromEntries([...seen].sort()))}`);

    expect(bad.slice(0, 10)).toEqual([]);
    expect(child.hasExited()).toBe(false);
    expect((await healthCheck(port)).serving).toBe(true);
    const peak = rss.stop();
    console.log(`fuzz: peak RSS ${peak.toFixed(0)} MB`);
    expect(peak).toBeLessThan(RSS_BOUND_MB);
    expect(withoutWarmUp(emulator.stats.arrivals)).toHaveLength(0);
    expect(child.logs().filter((l) => l.msg === "request handler failed")).toEqual([]);
    // Every refusal is one audit line, whether keygate's handler or the transport refused it.
    await pollUntil(
      () => child.logs().filter((l) => l.audit === true).length - auditsBefore === REQUESTS,
      "one audit line per request",
    );
  }, 120_000);
});
