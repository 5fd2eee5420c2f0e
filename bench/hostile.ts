/**
 * Issue 9's speed target: health stays fast (< 50 ms) while the API port is attacked. One
 * `keygate serve` child; health is probed from this process while a separate flooder process
 * (this file with `--flood`) sends HTTP/2 rapid-reset floods, and then while three compression
 * bombs arrive at once. Prints health latency (p50 / p99 / max) per phase and keygate's peak RSS.
 *
 * Run: npm run bench:hostile [-- resets]   (default 200000 reset streams)
 */
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";
import { EMULATOR_SECRET_ID, EMULATOR_SECRET_KEY } from "../src/upstream/emulator/index.js";
import { startEmulator } from "../test/support/app.js";
import {
  H2_PREFACE,
  headersFrame,
  healthCheck,
  post,
  rstFrame,
  SETTINGS_EMPTY,
  watchRss,
} from "../test/support/hostile.js";
import { percentile } from "../test/support/fleet.js";
import { startGatewayProcess } from "./support/processes.js";

const HEAD: [string, string][] = [
  [":method", "POST"],
  [":scheme", "http"],
  [":path", "/grpc.health.v1.Health/Check"],
  [":authority", "keygate"],
  ["content-type", "application/grpc"],
];

/** The flooder: connection after connection of HEADERS + RST_STREAM pairs, as fast as it can. */
async function flood(port: number, total: number): Promise<void> {
  let sent = 0;
  let connections = 0;
  while (sent < total) {
    connections++;
    const s = net.connect(port, "127.0.0.1");
    s.on("error", () => undefined);
    s.resume();
    const gone = new Promise<void>((r) => s.once("close", () => r()));
    await new Promise<void>((r) => s.once("connect", () => r()));
    s.write(Buffer.concat([H2_PREFACE, SETTINGS_EMPTY]));
    for (let id = 1; !s.destroyed && id < 20_000 && sent < total; sent += 100) {
      const batch: Buffer[] = [];
      for (let i = 0; i < 100; i++, id += 2) batch.push(headersFrame(id, HEAD, false), rstFrame(id));
      if (!s.write(Buffer.concat(batch))) await new Promise((r) => setTimeout(r, 1));
    }
    s.end();
    await Promise.race([gone, new Promise((r) => setTimeout(r, 1_000))]);
    s.destroy();
  }
  process.stdout.write(`${connections}\n`);
}

async function probe(port: number, until: () => boolean): Promise<number[]> {
  const ms: number[] = [];
  while (!until()) {
    const h = await healthCheck(port);
    if (!h.serving) throw new Error("health did not answer SERVING");
    ms.push(h.ms);
    await new Promise((r) => setTimeout(r, 10));
  }
  return ms;
}

const fmt = (xs: number[]) =>
  `p50 ${percentile(xs, 50).toFixed(1)} ms | p99 ${percentile(xs, 99).toFixed(1)} ms | max ${Math.max(...xs).toFixed(1)} ms | n ${xs.length}`;

async function main(): Promise<void> {
  const total = Number(process.argv[2] ?? 200_000);
  const emulator = await startEmulator(100);
  const dir = mkdtempSync(join(tmpdir(), "keygate-bench-hostile-"));
  writeFileSync(
    join(dir, "policy.yaml"),
    'tenants:\n  t:\n    tokens_sha256: ["0000000000000000000000000000000000000000000000000000000000000000"]\n    regions: [ap-guangzhou]\n    instances: { ids: [ins-gz000001] }\n    keys: [skey-aaaaaaaa]\n',
  );
  const gw = await startGatewayProcess({
    KEYGATE_POLICY_FILE: join(dir, "policy.yaml"),
    KEYGATE_UPSTREAM_URL: emulator.url,
    TENCENTCLOUD_SECRET_ID: EMULATOR_SECRET_ID,
    TENCENTCLOUD_SECRET_KEY: EMULATOR_SECRET_KEY,
  });
  try {
    const rss = watchRss(gw.pid);
    let stop = false;
    const quiet = probe(gw.port, () => stop);
    await new Promise((r) => setTimeout(r, 3_000));
    stop = true;
    const baseline = await quiet;

    const t0 = Date.now();
    const flooder = spawn(
      process.execPath,
      ["--import", "tsx", fileURLToPath(import.meta.url), "--flood", String(gw.port), String(total)],
      { stdio: ["ignore", "pipe", "inherit"] },
    );
    let out = "";
    flooder.stdout.on("data", (d: Buffer) => (out += d.toString()));
    let flooding = true;
    flooder.once("exit", () => (flooding = false));
    const during = await probe(gw.port, () => !flooding);
    const floodSeconds = (Date.now() - t0) / 1000;

    const bomb = gzipSync(Buffer.alloc(50 * 1024 * 1024), { level: 9 });
    let bombing = true;
    const bombs = Promise.all(
      Array.from({ length: 3 }, () =>
        post(
          gw.port,
          "/keygate.v1.KeyPairService/AssociateKeyPairs",
          {
            "content-type": "application/json",
            "content-encoding": "gzip",
          },
          bomb,
        ),
      ),
    ).finally(() => (bombing = false));
    const duringBombs = await probe(gw.port, () => !bombing);
    await bombs;

    process.stdout.write(
      [
        `health, quiet:              ${fmt(baseline)}`,
        `health, rapid-reset flood:  ${fmt(during)}  (${total} resets on ${out.trim()} connections in ${floodSeconds.toFixed(1)} s)`,
        `health, 3 gzip bombs:       ${fmt(duringBombs)}`,
        `keygate peak RSS:           ${rss.stop().toFixed(0)} MB`,
        `cloud calls:                ${emulator.stats.arrivals.length}`,
        "",
      ].join("\n"),
    );
  } finally {
    await gw.stop(2_000);
    await emulator.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[2] === "--flood") {
  await flood(Number(process.argv[3]), Number(process.argv[4]));
} else {
  await main();
}
