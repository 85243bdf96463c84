/**
 * Figure: footprint of the compiled appliance (dist/pcoip-cmsg; built with `npm run build` when missing).
 * - start-up to ready: spawn `pcoip-cmsg run --config <temp toml>` (built-in broker, CM + SG + admin on
 *   loopback) until admin /readyz answers 200, polled every 2 ms; median of BENCH_FOOTPRINT_RUNS (5);
 * - idle RSS: VmRSS 2 s after ready, nothing connected;
 * - binary size, and bundle size: the binary gzipped as `create-darksite-bundle` packs it (tar -z, gzip -6).
 * Peer: nginx (one worker, a stream server and an https server on loopback), started the same way until it
 * listens; its RSS is master + worker.
 * Targets: start-up ≤50 ms, idle RSS ≤70 MB, bundle ≤60 MB.
 *
 * Env: BENCH_FOOTPRINT_RUNS (5). Run: npx bun bench/footprint.ts
 */
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { testPki } from "../test/peers/test-certs.ts";
import { applianceArgv, BINARY, cleanEnv, rssBytes, writeApplianceConfig } from "./lib/appliance.ts";
import { machineNote } from "./lib/machine.ts";
import { freePort, isBound } from "./lib/net.ts";
import { createProcessSet, type ProcessSet } from "./lib/processes.ts";
import { detail, envNumber, figureLine, fmt, print, verdictLine } from "./lib/report.ts";
import { BENCH_DIR, ensurePeers, workDir } from "./lib/tools.ts";

const RUNS = envNumber("BENCH_FOOTPRINT_RUNS", 5);
const MB = 1024 * 1024;

const median = (v: number[]) => [...v].sort((a, b) => a - b)[Math.floor(v.length / 2)]!;

/** RSS of a process and its children (nginx's master and worker). */
function treeRss(pid: number): number {
  let total = rssBytes(pid);
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, "utf8");
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      if (ppid === pid) total += rssBytes(Number(name));
    } catch {
      // gone
    }
  }
  return total;
}

/** Newest modification time under `dir` (recursive). */
function newestMtime(dir: string): number {
  let newest = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    newest = Math.max(newest, e.isDirectory() ? newestMtime(p) : statSync(p).mtimeMs);
  }
  return newest;
}

/** Builds dist/pcoip-cmsg (npm run build, without the baseline variant) when missing or older than src/. */
function ensureBinary(): void {
  const src = join(BENCH_DIR, "../src");
  if (existsSync(BINARY) && statSync(BINARY).mtimeMs >= newestMtime(src)) return;
  detail("dist/pcoip-cmsg missing or older than src/: building it (npm run build)");
  const r = Bun.spawnSync([process.execPath, join(BENCH_DIR, "../scripts/build.ts")], {
    cwd: join(BENCH_DIR, ".."),
    env: { ...process.env, PCOIP_CMSG_SKIP_BASELINE: "1" },
    stdout: "inherit",
    stderr: "inherit",
  });
  if (r.exitCode !== 0 || !existsSync(BINARY)) throw new Error("building dist/pcoip-cmsg failed (see above)");
}

/** One start of the appliance: ms until /readyz answers 200, and RSS 2 s later. */
async function startOnce(procs: ProcessSet, configFile: string, adminPort: number) {
  const t0 = performance.now();
  const child = procs.spawn("pcoip-cmsg", applianceArgv({ binary: true, name: "footprint" }, configFile), {
    env: cleanEnv(),
  });
  let readyMs = Number.NaN;
  while (performance.now() - t0 < 20_000) {
    try {
      const r = await fetch(`http://127.0.0.1:${adminPort}/readyz`);
      if (r.status === 200) {
        readyMs = performance.now() - t0;
        break;
      }
    } catch {
      // not listening yet
    }
    await Bun.sleep(2);
  }
  if (!Number.isFinite(readyMs))
    throw new Error(`pcoip-cmsg not ready within 20 s: ${child.stderr().slice(-800)}`);
  await Bun.sleep(2000);
  const rss = rssBytes(child.pid);
  await child.stop();
  return { readyMs, rss };
}

async function startNginxOnce(procs: ProcessSet, cert: { certFile: string; keyFile: string }) {
  const dir = workDir("nginx-footprint");
  const [tcpPort, httpsPort] = [await freePort("tcp"), await freePort("tcp")];
  const module = "/usr/lib/nginx/modules/ngx_stream_module.so";
  const conf = [
    "daemon off;",
    "worker_processes 1;",
    `pid ${join(dir, "nginx.pid")};`,
    "error_log stderr warn;",
    ...(existsSync(module) ? [`load_module ${module};`] : []),
    "events { worker_connections 1024; }",
    `stream { server { listen 127.0.0.1:${tcpPort}; proxy_pass 127.0.0.1:9; } }`,
    `http { access_log off; server { listen 127.0.0.1:${httpsPort} ssl; ssl_certificate ${cert.certFile}; ` +
      `ssl_certificate_key ${cert.keyFile}; location / { return 200; } } }`,
  ].join("\n");
  const file = join(dir, "nginx.conf");
  writeFileSync(file, `${conf}\n`);
  const t0 = performance.now();
  const child = procs.spawn("nginx-footprint", ["nginx", "-e", "stderr", "-p", dir, "-c", file]);
  while (!isBound("tcp", httpsPort) || !isBound("tcp", tcpPort)) {
    if (performance.now() - t0 > 10_000)
      throw new Error(`nginx did not listen: ${child.stderr().slice(-800)}`);
    await Bun.sleep(2);
  }
  const readyMs = performance.now() - t0;
  await Bun.sleep(2000);
  const rss = treeRss(child.pid);
  await child.stop();
  return { readyMs, rss };
}

async function main(): Promise<void> {
  ensurePeers();
  ensureBinary();
  const procs = createProcessSet();
  try {
    detail(await machineNote());
    const pki = testPki();
    const cert = pki.leaf(["localhost", "127.0.0.1"], { bits: 3072 });
    const adminPort = await freePort("tcp");
    const configFile = await writeApplianceConfig(
      { name: "footprint", certFile: cert.certFile, keyFile: cert.keyFile, caCertFile: pki.ca.certFile },
      adminPort,
    );
    const ours: { readyMs: number; rss: number }[] = [];
    const peer: { readyMs: number; rss: number }[] = [];
    for (let i = 0; i < RUNS; i++) {
      ours.push(await startOnce(procs, configFile, adminPort));
      peer.push(await startNginxOnce(procs, cert));
    }
    detail(`pcoip-cmsg start-up runs (ms): ${ours.map((r) => fmt(r.readyMs)).join(", ")}`);
    detail(`nginx start-up runs (ms): ${peer.map((r) => fmt(r.readyMs)).join(", ")}`);
    const readyMs = median(ours.map((r) => r.readyMs));
    const rss = median(ours.map((r) => r.rss)) / MB;
    const nReady = median(peer.map((r) => r.readyMs));
    const nRss = median(peer.map((r) => r.rss)) / MB;

    const binary = statSync(BINARY).size / MB;
    const gz = Bun.spawnSync(["bash", "-c", 'gzip -6 -c "$1" | wc -c', "gzip", BINARY]);
    const bundle = Number(gz.stdout.toString().trim()) / MB;
    const nginxBin = statSync("/usr/sbin/nginx").size / MB;
    const nGz = Bun.spawnSync(["bash", "-c", 'gzip -6 -c "$1" | wc -c', "gzip", "/usr/sbin/nginx"]);
    const nBundle = Number(nGz.stdout.toString().trim()) / MB;

    const peerName = "nginx 1 worker (stream + https)";
    print(
      figureLine({
        name: "start-up to ready (/readyz 200)",
        value: readyMs,
        unit: "ms",
        peer: peerName,
        peerValue: nReady,
      }),
    );
    print(figureLine({ name: "idle RSS", value: rss, unit: "MB", peer: peerName, peerValue: nRss }));
    print(
      figureLine({
        name: "binary size",
        value: binary,
        unit: "MB",
        peer: "nginx binary (+ shared libs)",
        peerValue: nginxBin,
      }),
    );
    print(
      figureLine({
        name: "bundle size (binary, gzip -6)",
        value: bundle,
        unit: "MB",
        peer: "nginx binary gzip -6",
        peerValue: nBundle,
      }),
    );
    print(verdictLine("start-up ≤50 ms", readyMs <= 50, `${fmt(readyMs - 50)} ms`));
    print(verdictLine("idle RSS ≤70 MB", rss <= 70, `${fmt(rss - 70)} MB`));
    print(verdictLine("bundle ≤60 MB gzip", bundle <= 60, `${fmt(bundle - 60)} MB`));
  } finally {
    await procs.stopAll();
  }
}

await main();
