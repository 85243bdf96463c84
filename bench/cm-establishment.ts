/**
 * Figure: CM establishment. The real appliance (`bun src/main.ts run`, upstream broker mode, SG on) between a
 * test client doing hello → authenticate → get-resource-list → allocate-resource → bye (one kept-alive TLS
 * connection per login, test/peers/pcoip-client.ts) and upstreams that answer every request after 50 ms: a
 * broker (whose allocate names only the host) and a fake agent on which the CM launches the session
 * (bench/lib/cm-upstreams.ts, in its own process). The CM's certificate is RSA-3072, as `--self-signed` makes.
 *
 * Peer: the same logins straight to the same broker, which then launches on the same agent itself — the same
 * six 50 ms waits with no CM in between; "added" latency is the CM path's p99 minus the direct path's p99.
 *   0. open loop at BENCH_CM_LOW_RATE (100) logins/s: the p99 the CM adds when it has CPU to spare;
 *   1. open loop at BENCH_CM_RATE (500) logins/s: completed/s and p99 added (targets ≥500/s, ≤10 ms);
 *   2. closed loop, BENCH_CM_IN_FLIGHT (1000) logins in flight at once: completed/s, failures (target: all held).
 * The CM's own guard `cm.maxConcurrentEstablishments` (default 200: beyond it clients get a clear busy answer)
 * is raised to 2000 for run 2, and sg.maxSessions to 50000 (every login leaves a pending admission for 90 s).
 *
 * Env: BENCH_CM_SECONDS (6), BENCH_CM_RATE (500), BENCH_CM_LOW_RATE (100), BENCH_CM_IN_FLIGHT (1000),
 * BENCH_CM_KEY_BITS (3072), BENCH_CM_PROFILE=1 (CPU profile of the CM into bench/.work/prof). Run: npx bun bench/cm-establishment.ts
 */
import { join } from "node:path";
import { testPki } from "../test/peers/test-certs.ts";
import { startApplianceRun } from "./lib/appliance.ts";
import { createCpuMeter } from "./lib/cpu.ts";
import { type LoginStats, type LoginTarget, runLogins } from "./lib/logins.ts";
import { machineNote } from "./lib/machine.ts";
import { createProcessSet } from "./lib/processes.ts";
import { detail, envNumber, figureLine, fmt, print, verdictLine } from "./lib/report.ts";

const SECONDS = envNumber("BENCH_CM_SECONDS", 6);
const RATE = envNumber("BENCH_CM_RATE", 500);
const IN_FLIGHT = envNumber("BENCH_CM_IN_FLIGHT", 1000);
const LOW_RATE = envNumber("BENCH_CM_LOW_RATE", 100);
const MAX_ADDED_P99_MS = 10;
const cpu = createCpuMeter();

/** CPU share (of one core) of each process over a run: where the cores went. */
type Shares = Record<string, number>;

async function measured(
  pids: Record<string, number>,
  run: () => Promise<LoginStats>,
): Promise<[LoginStats, Shares]> {
  const before = Object.fromEntries(Object.entries(pids).map(([k, pid]) => [k, cpu.seconds(pid)]));
  const t0 = performance.now();
  const own = process.cpuUsage();
  const s = await run();
  const wall = (performance.now() - t0) / 1000;
  const shares: Shares = {};
  for (const [k, pid] of Object.entries(pids)) shares[k] = (cpu.seconds(pid) - before[k]!) / wall;
  // The client is this process: its own time only (cpu.seconds would add its children, the CM and upstreams).
  const used = process.cpuUsage(own);
  shares.client = (used.user + used.system) / 1e6 / wall;
  return [s, shares];
}

function describe(label: string, s: LoginStats, shares?: Shares): void {
  const c = shares
    ? `; CPU % of a core: ${Object.entries(shares)
        .map(([k, v]) => `${k} ${fmt(v * 100)}`)
        .join(", ")}`
    : "";
  const skipped = s.skipped ? `, ${s.skipped} not started (cap in flight)` : "";
  detail(
    `${label}: ${s.completed} done (${fmt(s.perSecond)}/s), ${s.failed} failed${skipped}, login p50 ` +
      `${fmt(s.p50Ms)} / p99 ${fmt(s.p99Ms)} ms, most in flight ${s.maxInFlight}${c}` +
      (s.errors.length ? `; errors: ${s.errors.join(" | ")}` : ""),
  );
}

async function main(): Promise<void> {
  const procs = createProcessSet();
  try {
    detail(await machineNote());
    const pki = testPki();
    const keyBits = envNumber("BENCH_CM_KEY_BITS", 3072);
    const cert = pki.leaf(["localhost", "127.0.0.1"], { bits: keyBits });
    // The broker's certificate is the fixture's, not the CM's: RSA-2048 keeps the peer path from being the limit.
    const brokerCert = pki.leaf(["localhost", "127.0.0.1"], { bits: 2048 });
    const agentProc = procs.spawn(
      "cm-agent",
      [process.execPath, join(import.meta.dir, "lib/cm-upstreams.ts"), "--role", "agent"],
      { stdin: "pipe" },
    );
    await agentProc.waitForLine((l) => l.includes('"event":"ready"'), 20_000);
    const up = procs.spawn(
      "cm-broker",
      [
        process.execPath,
        join(import.meta.dir, "lib/cm-upstreams.ts"),
        "--role",
        "broker",
        "--cert",
        brokerCert.certFile,
        "--key",
        brokerCert.keyFile,
      ],
      { stdin: "pipe" },
    );
    const ready = JSON.parse(await up.waitForLine((l) => l.includes('"event":"ready"'), 20_000)) as {
      cmBrokerPort: number;
      directBrokerPort: number;
      delayMs: number;
    };
    const cm = await startApplianceRun(procs, {
      name: "cm-establishment",
      certFile: cert.certFile,
      keyFile: cert.keyFile,
      caCertFile: pki.ca.certFile,
      brokerUrl: `https://127.0.0.1:${ready.cmBrokerPort}`,
      cm: { maxConcurrentEstablishments: 2000 },
      sg: { maxSessions: 50000, udpSourcePorts: "10000-60000" },
    });
    detail(
      `upstreams answer after ${ready.delayMs} ms each (broker ×5, agent ×1 per login); CM cert RSA-${keyBits}; ` +
        `${SECONDS} s per run; client, CM and upstreams share this machine's cores`,
    );
    const viaCm: LoginTarget = { port: cm.cmPort, ca: pki.ca.cert };
    const direct: LoginTarget = { port: ready.directBrokerPort, ca: pki.ca.cert };

    // Warm-up: JIT, the CM's keep-alive connections to the broker.
    await runLogins(viaCm, { rate: 50, seconds: 1 });
    await runLogins(direct, { rate: 50, seconds: 1 });

    const pids = { cm: cm.pid, broker: up.pid, agent: agentProc.pid };
    // A light load first: what the CM adds to a login when it is not short of CPU.
    const [dl, dlS] = await measured(pids, () => runLogins(direct, { rate: LOW_RATE, seconds: SECONDS }));
    describe(`direct to the broker, open loop ${LOW_RATE}/s`, dl, dlS);
    const [ol, olS] = await measured(pids, () => runLogins(viaCm, { rate: LOW_RATE, seconds: SECONDS }));
    describe(`via the CM, open loop ${LOW_RATE}/s`, ol, olS);
    const [d, dS] = await measured(pids, () => runLogins(direct, { rate: RATE, seconds: SECONDS }));
    describe(`direct to the broker, open loop ${RATE}/s`, d, dS);
    const [o, oS] = await measured(pids, () => runLogins(viaCm, { rate: RATE, seconds: SECONDS }));
    describe(`via the CM, open loop ${RATE}/s`, o, oS);
    const [closed, cS] = await measured(pids, () =>
      runLogins(viaCm, { concurrency: IN_FLIGHT, seconds: SECONDS }),
    );
    describe(`via the CM, closed loop ${IN_FLIGHT} in flight`, closed, cS);
    const [dc, dcS] = await measured(pids, () =>
      runLogins(direct, { concurrency: IN_FLIGHT, seconds: SECONDS }),
    );
    describe(`direct to the broker, closed loop ${IN_FLIGHT} in flight`, dc, dcS);

    print(
      figureLine({
        name: `CM establishment, login p99 at ${LOW_RATE}/s`,
        value: ol.p99Ms,
        unit: "ms",
        peer: "direct to the broker",
        peerValue: dl.p99Ms,
      }),
    );
    detail(`added p99 through the CM at ${LOW_RATE}/s: ${fmt(ol.p99Ms - dl.p99Ms)} ms`);
    print(
      figureLine({
        name: `CM establishment, open loop ${RATE}/s offered`,
        value: o.perSecond,
        unit: "logins/s",
        peer: "direct to the broker",
        peerValue: d.perSecond,
      }),
    );
    const added = o.p99Ms - d.p99Ms;
    print(
      figureLine({
        name: `CM establishment, login p99 at ${RATE}/s`,
        value: o.p99Ms,
        unit: "ms",
        peer: "direct to the broker",
        peerValue: d.p99Ms,
      }),
    );
    detail(
      `added p99 through the CM: ${fmt(added)} ms (login = 6 upstream waits of ${ready.delayMs} ms + TLS)`,
    );
    print(
      figureLine({
        name: `CM establishment, closed loop ${IN_FLIGHT} in flight`,
        value: closed.perSecond,
        unit: "logins/s",
        peer: "direct to the broker",
        peerValue: dc.perSecond,
      }),
    );
    const rateOk = o.perSecond >= 500 && o.failed === 0;
    print(
      verdictLine(
        "≥500 completed/s",
        rateOk,
        `${fmt(Math.max(0, 500 - o.perSecond))}/s${o.failed ? ` (${o.failed} failed)` : ""}`,
      ),
    );
    print(
      verdictLine(
        `p99 added ≤${MAX_ADDED_P99_MS} ms`,
        added <= MAX_ADDED_P99_MS,
        `${fmt(added - MAX_ADDED_P99_MS)} ms`,
      ),
    );
    const heldOk = closed.maxInFlight >= 1000 && closed.failed === 0;
    print(
      verdictLine(
        "≥1,000 in flight",
        heldOk,
        `${closed.failed} of ${closed.completed + closed.failed} failed, most in flight ${closed.maxInFlight}`,
      ),
    );
  } finally {
    await procs.stopAll();
  }
}

await main();
