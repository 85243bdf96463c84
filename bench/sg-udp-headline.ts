/**
 * Figure: SG UDP media, headline. 1200-byte datagrams offered at 365 Mbit/s (the vendor's 2-vCPU figure) from
 * 500 client sockets — 500 admitted sessions, each ACTIVE through its own control connection, one flow each —
 * toward an agent that echoes every datagram, so the same 365 Mbit/s also flows agent→client (730 Mbit/s
 * relayed in all). Loss counts both directions; latency is the kernel-timed round trip, and "added" is the SG
 * path's p99 minus the direct path's p99 (client ↔ the same echo, same load, same run); nginx stream udp (one
 * worker, default session per client) carries the same headline load as the peer. Target: loss ≤0.1 % and
 * added p99 ≤2 ms. Then the highest offered load that still meets both: up from 365 (500, 750, 1000, 1500, 2000,
 * 3000 Mbit/s) until the first miss, or — when 365 misses — down (250, 180, 125, 90, 60, 30) to the first pass.
 * The socket buffer defaults are those `pcoip-cmsg install` sets (bench/lib/sysctl.ts); one more run shows the
 * headline with the kernel's own defaults.
 *
 * Then "during 200 logins/s on the CM" and the Worker question (SPEC §4), at the headline load: the same media
 * while 200 real logins/s (hello → authenticate → get-resource-list → allocate-resource → bye over TLS with an
 * RSA-3072 key, bench/lib/logins.ts) hit the real CM (src/cm/server.ts, upstream broker mode, admitting into
 * this SG; broker and agent answer after 50 ms from their own processes) running in the SG's own event loop,
 * against the same logins served by a CM in another process (what a Worker would give). BENCH_CM_SYNTHETIC=1
 * uses a CM-like front door instead (one TLS handshake + four XML POSTs, bench/lib/cm-load.ts).
 *
 * Env: BENCH_UDP_SECONDS (5) per run, BENCH_UDP_FLOWS (500), BENCH_UDP_MAX_MBPS (3000), BENCH_CM_LOGINS (200,
 * 0 skips the Worker runs), BENCH_CM_SYNTHETIC (0), BENCH_UDP_DEFAULT_BUFFERS (1; 0 skips that run). Run: npx bun bench/sg-udp-headline.ts
 */

import { join } from "node:path";
import { testPki } from "../test/peers/test-certs.ts";
import { startLoginLoad } from "./lib/cm-load.ts";
import { type ControlAgent, openControlConnections, startControlAgent } from "./lib/control.ts";
import { createCpuMeter } from "./lib/cpu.ts";
import { runUdpLoad, startUdpEcho, type UdpLoadResult } from "./lib/load.ts";
import { runLogins } from "./lib/logins.ts";
import { machineNote } from "./lib/machine.ts";
import { udpKernelCounters } from "./lib/net.ts";
import { startNginxStream } from "./lib/peers.ts";
import { createProcessSet, type ProcessSet } from "./lib/processes.ts";
import { detail, envNumber, figureLine, fmt, print, verdictLine } from "./lib/report.ts";
import { type SgProcess, startSgProcess } from "./lib/sg-process.ts";
import { readSocketBufferDefaults, setSocketBufferDefaults } from "./lib/sysctl.ts";
import { ensurePeers } from "./lib/tools.ts";

const SECONDS = envNumber("BENCH_UDP_SECONDS", 5);
const FLOWS = envNumber("BENCH_UDP_FLOWS", 500);
const MAX_MBPS = envNumber("BENCH_UDP_MAX_MBPS", 3000);
const LOGINS = Number(process.env.BENCH_CM_LOGINS ?? 200);
/** The real CM (default) or the CM-like front door (BENCH_CM_SYNTHETIC=1) for the Worker question. */
const REAL_CM = process.env.BENCH_CM_SYNTHETIC !== "1";
const HEADLINE_MBPS = 365;
const STEPS = [365, 500, 750, 1000, 1500, 2000, 3000].filter((m) => m <= MAX_MBPS);
/** Tried only when the headline misses: where the SG does meet the target. */
const STEPS_DOWN = [250, 180, 125, 90, 60, 30];
const MAX_LOSS_PCT = 0.1;
const MAX_ADDED_P99_MS = 2;

const cpu = createCpuMeter();

interface SgRun {
  readonly load: UdpLoadResult;
  /** SG CPU seconds over the run, per second of offered load. */
  readonly cpuShare: number;
  readonly kernelRcvbufErrors: number;
  readonly drops: Record<string, number>;
  readonly flowsBound: number;
}

/** One run through the SG with fresh sessions: admit, open control connections, offer load, end the sessions. */
async function runThroughSg(
  procs: ProcessSet,
  sg: SgProcess,
  agent: ControlAgent,
  echoPort: number,
  mbps: number,
) {
  const snis = await sg.admit(FLOWS, agent.port, echoPort);
  const control = await openControlConnections(sg.tcpPort, snis, agent);
  try {
    const before = await sg.counters();
    const kBefore = udpKernelCounters();
    const c0 = cpu.seconds(sg.pid);
    const load = await runUdpLoad(procs, {
      mode: "open",
      port: sg.udpPort,
      flows: FLOWS,
      mbps,
      seconds: SECONDS,
    });
    const used = cpu.seconds(sg.pid) - c0;
    const kAfter = udpKernelCounters();
    const after = await sg.counters();
    const drops: Record<string, number> = {};
    for (const [k, v] of Object.entries(after.udp.drops)) {
      const d = v - (before.udp.drops[k] ?? 0);
      if (d > 0) drops[k] = d;
    }
    const run: SgRun = {
      load,
      cpuShare: used / load.seconds,
      kernelRcvbufErrors: kAfter.rcvbufErrors - kBefore.rcvbufErrors,
      drops,
      flowsBound: after.udp.flowsBound - before.udp.flowsBound,
    };
    return run;
  } finally {
    await sg.endAll();
    control.closeAll();
  }
}

const addedP99Ms = (sg: UdpLoadResult, direct: UdpLoadResult) => (sg.p99Us - direct.p99Us) / 1000;
const meets = (sg: UdpLoadResult, direct: UdpLoadResult) =>
  (sg.lossPct ?? 100) <= MAX_LOSS_PCT && addedP99Ms(sg, direct) <= MAX_ADDED_P99_MS;

function describe(label: string, r: UdpLoadResult, extra = ""): void {
  detail(
    `${label}: sent ${r.sent}, loss ${fmt(r.lossPct ?? 0)} %, round trip p50 ${fmt(r.p50Us / 1000)} / p99 ` +
      `${fmt(r.p99Us / 1000)} / p99.9 ${fmt(r.p999Us / 1000)} / max ${fmt(r.maxUs / 1000)} ms, achieved ` +
      `${fmt(r.achievedMbps ?? 0)} Mbit/s, flows answered in warm-up ${r.warmFlowsAnswered}/${r.flows}${extra}`,
  );
}

function describeSg(label: string, run: SgRun): void {
  const drops = Object.keys(run.drops).length ? `, SG drops ${JSON.stringify(run.drops)}` : "";
  describe(
    label,
    run.load,
    `, SG CPU ≈${fmt(run.cpuShare * 100)} % of a core, kernel rcvbuf overflows ${run.kernelRcvbufErrors}${drops}`,
  );
}

/** One load step: the direct path, then the SG, at the same offered load. */
async function step(procs: ProcessSet, sg: SgProcess, agent: ControlAgent, echoPort: number, mbps: number) {
  const direct = await runUdpLoad(procs, {
    mode: "open",
    port: echoPort,
    flows: FLOWS,
    mbps,
    seconds: SECONDS,
  });
  describe(`${mbps} Mbit/s direct`, direct);
  const run = await runThroughSg(procs, sg, agent, echoPort, mbps);
  describeSg(`${mbps} Mbit/s via SG`, run);
  return { direct, run, ok: meets(run.load, direct), directOk: (direct.lossPct ?? 100) <= MAX_LOSS_PCT };
}

const missText = (mbps: number, r: SgRun, direct: UdpLoadResult, directOk: boolean) =>
  `${mbps} Mbit/s: loss ${fmt(r.load.lossPct ?? 0)} %, added p99 ${fmt(addedP99Ms(r.load, direct))} ms` +
  (directOk
    ? ""
    : ` — the direct path lost ${fmt(direct.lossPct ?? 0)} % too: this machine's limit, not only the SG's`);

async function main(): Promise<void> {
  ensurePeers();
  const procs = createProcessSet();
  const agent = startControlAgent();
  const buffers = setSocketBufferDefaults();
  try {
    detail(await machineNote());
    const echo = await startUdpEcho(procs);
    const sg = await startSgProcess(procs, "udp-headline");
    detail(
      `${FLOWS} flows = ${FLOWS} admitted sessions of 127.0.0.1, each with a control connection; 1200-byte ` +
        `datagrams; ${SECONDS} s per run; offered Mbit/s is client→agent, echoed back at the same rate; socket ` +
        `buffer defaults as installed: rmem_default ${buffers.now.rmem_default}, wmem_default ` +
        `${buffers.now.wmem_default}${buffers.skipped ? ` (${buffers.skipped})` : ""}`,
    );

    // Up from the headline until the first miss; when the headline itself misses, down until the first pass.
    const first = await step(procs, sg, agent, echo.port, HEADLINE_MBPS);
    const headline = { sg: first.run, direct: first.direct };
    let highest: number | undefined;
    let highestDirect: number | undefined = first.directOk ? HEADLINE_MBPS : undefined;
    let boundary: string;
    if (first.ok) {
      highest = HEADLINE_MBPS;
      boundary = `no miss up to ${STEPS.at(-1)} Mbit/s (BENCH_UDP_MAX_MBPS)`;
      for (const mbps of STEPS.filter((m) => m > HEADLINE_MBPS)) {
        const s = await step(procs, sg, agent, echo.port, mbps);
        if (s.directOk) highestDirect = mbps;
        if (s.ok) {
          highest = mbps;
          continue;
        }
        boundary = `first miss: ${missText(mbps, s.run, s.direct, s.directOk)}`;
        break;
      }
    } else {
      boundary = `no pass down to ${STEPS_DOWN.at(-1)} Mbit/s`;
      for (const mbps of STEPS_DOWN) {
        const s = await step(procs, sg, agent, echo.port, mbps);
        if (s.directOk) highestDirect ??= mbps;
        if (!s.ok) continue;
        highest = mbps;
        boundary = `the headline missed (${missText(HEADLINE_MBPS, first.run, first.direct, first.directOk)}); stepped down to the first pass`;
        break;
      }
    }

    const { sg: h, direct: d } = headline;
    const name = `SG UDP media ${HEADLINE_MBPS} Mbit/s each way, ${FLOWS} flows`;
    print(
      figureLine({
        name: `${name}, loss`,
        value: h.load.lossPct ?? 0,
        unit: "%",
        peer: "direct path",
        peerValue: d.lossPct ?? 0,
      }),
    );
    print(
      figureLine({
        name: `${name}, p99 round trip`,
        value: h.load.p99Us / 1000,
        unit: "ms",
        peer: "direct path",
        peerValue: d.p99Us / 1000,
      }),
    );
    const added = addedP99Ms(h.load, d);
    detail(`added p99 round trip through the SG: ${fmt(added)} ms`);
    // The same load through nginx stream udp (one worker, default: one session per client address).
    const nginx = await startNginxStream(procs, {
      name: "nginx-udp-headline",
      proto: "udp",
      upstreamPort: echo.port,
    });
    const n = await runUdpLoad(procs, {
      mode: "open",
      port: nginx.port,
      flows: FLOWS,
      mbps: HEADLINE_MBPS,
      seconds: SECONDS,
    });
    await nginx.child.stop();
    describe(`${HEADLINE_MBPS} Mbit/s via nginx stream udp`, n);
    print(
      figureLine({
        name: `${name}, added p99`,
        value: added,
        unit: "ms",
        peer: "nginx stream udp, same load",
        peerValue: addedP99Ms(n, d),
      }),
    );
    print(
      figureLine({
        name: `${name}, loss vs nginx`,
        value: h.load.lossPct ?? 0,
        unit: "%",
        peer: "nginx stream udp, same load",
        peerValue: n.lossPct ?? 0,
      }),
    );
    const why: string[] = [];
    if ((h.load.lossPct ?? 0) > MAX_LOSS_PCT)
      why.push(`loss ${fmt((h.load.lossPct ?? 0) - MAX_LOSS_PCT)} points`);
    if (added > MAX_ADDED_P99_MS) why.push(`added p99 ${fmt(added - MAX_ADDED_P99_MS)} ms`);
    print(
      verdictLine(
        `loss ≤${MAX_LOSS_PCT} % and added p99 ≤${MAX_ADDED_P99_MS} ms at ${HEADLINE_MBPS} Mbit/s`,
        first.ok,
        why.join(", "),
      ),
    );
    print(
      figureLine({
        name: "SG UDP media, highest offered load meeting both",
        value: highest ?? 0,
        unit: "Mbit/s",
        peer: "direct path (over the loads tried)",
        peerValue: highestDirect ?? 0,
      }),
    );
    detail(boundary);

    if (LOGINS > 0) await workerQuestion(procs, sg, agent, echo.port, HEADLINE_MBPS);
    await sg.stop();

    if (!buffers.skipped && process.env.BENCH_UDP_DEFAULT_BUFFERS !== "0") {
      // The same headline with the kernel's own defaults: what an SG not set up by `install` would see.
      buffers.restore();
      const bare = await startSgProcess(procs, "udp-default-buffers");
      const r = await runThroughSg(procs, bare, agent, echo.port, HEADLINE_MBPS);
      const k = readSocketBufferDefaults();
      describeSg(
        `${HEADLINE_MBPS} Mbit/s via SG with kernel default buffers (rmem_default ${k.rmem_default})`,
        r,
      );
      await bare.stop();
    }
  } finally {
    buffers.restore();
    agent.close();
    await procs.stopAll();
  }
}

/** Same headline load, CM-like logins in the SG's event loop vs in another process. */
async function workerQuestion(
  procs: ProcessSet,
  sg: SgProcess,
  agent: ControlAgent,
  echoPort: number,
  mbps: number,
): Promise<void> {
  const pki = testPki();
  const cert = pki.leaf(["cm.bench.test"], { bits: 3072 });
  const realCert = pki.leaf(["localhost", "127.0.0.1"], { bits: 3072 });
  const upstreams = REAL_CM ? await startUpstreams(procs) : undefined;
  const base = await runUdpLoad(procs, {
    mode: "open",
    port: echoPort,
    flows: FLOWS,
    mbps,
    seconds: SECONDS,
  });
  describe(`${mbps} Mbit/s direct`, base);

  const withLogins = async (port: number, pid: number, label: string) => {
    const c0 = cpu.seconds(pid);
    const t0 = performance.now();
    const logins = REAL_CM
      ? realLogins(port, pki.ca.cert)
      : startLoginLoad({ port, ca: pki.ca.cert, serverName: "cm.bench.test", perSecond: LOGINS });
    await Bun.sleep(300); // the login rate settles before the media starts
    const run = await runThroughSg(procs, sg, agent, echoPort, mbps);
    const l = await logins.stop();
    const cmCpu = (cpu.seconds(pid) - c0) / ((performance.now() - t0) / 1000);
    describeSg(`${mbps} Mbit/s via SG, ${label}`, run);
    detail(
      `  logins: ${fmt(l.perSecond)}/s achieved (${l.logins} done, ${l.failures} failed, ${REAL_CM ? "p50" : "mean"} ${fmt(l.meanMs)} ms); ` +
        `CPU of the process serving them ≈${fmt(cmCpu * 100)} % of a core`,
    );
    return { run, logins: l };
  };

  const startCm = (p: SgProcess) =>
    upstreams
      ? p.cmStart(realCert.certFile, realCert.keyFile, {
          brokerUrl: `https://127.0.0.1:${upstreams.brokerPort}`,
          caFile: pki.ca.certFile,
          agentPort: upstreams.agentPort,
        })
      : p.cmStart(cert.certFile, cert.keyFile);
  const cmPort = await startCm(sg);
  const inLoop = await withLogins(cmPort, sg.pid, `${LOGINS} logins/s in the SG's event loop`);
  const other = await startSgProcess(procs, "cm-elsewhere");
  const otherPort = await startCm(other);
  const apart = await withLogins(otherPort, other.pid, `${LOGINS} logins/s served by another process`);
  await other.stop();

  const what = REAL_CM ? "real CM logins/s (hello→bye, upstreams at 50 ms)" : "CM-like logins/s";
  const name = `SG UDP media ${mbps} Mbit/s during ${LOGINS} ${what} in its event loop`;
  const aIn = addedP99Ms(inLoop.run.load, base);
  const aApart = addedP99Ms(apart.run.load, base);
  print(
    figureLine({
      name: `${name}, added p99`,
      value: aIn,
      unit: "ms",
      peer: "same logins in another process",
      peerValue: aApart,
    }),
  );
  print(
    figureLine({
      name: `${name}, loss`,
      value: inLoop.run.load.lossPct ?? 0,
      unit: "%",
      peer: "same logins in another process",
      peerValue: apart.run.load.lossPct ?? 0,
    }),
  );
  const inOk = meets(inLoop.run.load, base);
  const why: string[] = [];
  const lossIn = inLoop.run.load.lossPct ?? 0;
  if (lossIn > MAX_LOSS_PCT) why.push(`loss ${fmt(lossIn - MAX_LOSS_PCT)} points`);
  if (aIn > MAX_ADDED_P99_MS) why.push(`added p99 ${fmt(aIn - MAX_ADDED_P99_MS)} ms`);
  print(
    verdictLine(
      `loss ≤${MAX_LOSS_PCT} % and added p99 ≤${MAX_ADDED_P99_MS} ms at ${mbps} Mbit/s during ${LOGINS} logins/s`,
      inOk,
      why.join(", "),
    ),
  );
  const hurt = !inOk && meets(apart.run.load, base);
  detail(
    `decision: ${
      hurt
        ? "CM work in the SG's event loop breaks the UDP target while the same work elsewhere does not — move the SG into a Worker"
        : inOk
          ? "UDP meets its target with CM-like logins in the same event loop — no Worker needed at this load"
          : "UDP misses its target even with the logins in another process — the machine, not the shared loop, is the limit"
    }${REAL_CM ? " (the real CM: src/cm/server.ts, upstream broker mode)" : " (synthetic CM front door, BENCH_CM_SYNTHETIC=1)"}`,
  );
}

/** The CM's upstreams for real logins: a fake agent and a broker answering after 50 ms (bench/lib/cm-upstreams.ts). */
async function startUpstreams(procs: ProcessSet): Promise<{ brokerPort: number; agentPort: number }> {
  const script = join(import.meta.dir, "lib/cm-upstreams.ts");
  const brokerCert = testPki().leaf(["localhost", "127.0.0.1"], { bits: 2048 });
  const agentProc = procs.spawn("cm-agent", [process.execPath, script, "--role", "agent"], { stdin: "pipe" });
  const a = JSON.parse(await agentProc.waitForLine((l) => l.includes('"event":"ready"'), 20_000)) as {
    agentPort: number;
  };
  const brokerProc = procs.spawn(
    "cm-broker",
    [
      process.execPath,
      script,
      "--role",
      "broker",
      "--cert",
      brokerCert.certFile,
      "--key",
      brokerCert.keyFile,
    ],
    { stdin: "pipe" },
  );
  const b = JSON.parse(await brokerProc.waitForLine((l) => l.includes('"event":"ready"'), 20_000)) as {
    cmBrokerPort: number;
  };
  return { brokerPort: b.cmBrokerPort, agentPort: a.agentPort };
}

/** Real logins at LOGINS/s for about one media run (warm-up, SECONDS, drain), in the shape of cm-load's result. */
function realLogins(port: number, ca: string) {
  const t0 = performance.now();
  const run = runLogins({ port, ca }, { rate: LOGINS, seconds: SECONDS + 2.5 });
  return {
    async stop() {
      const s = await run;
      const seconds = (performance.now() - t0) / 1000;
      return { logins: s.completed, failures: s.failed, perSecond: s.completed / seconds, meanMs: s.p50Ms };
    },
  };
}

await main();
