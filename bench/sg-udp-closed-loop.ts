/**
 * Figure: SG UDP relay, closed loop. 1200-byte datagrams, 64 in flight on one admitted flow, each round trip
 * client → relay → UDP echo → relay → client; every reply sends the next datagram. The peer is nginx
 * `stream { server { listen udp; proxy_pass …; } }` (one worker) in front of the same echo, with
 * `proxy_responses 1` and with its default; the faster of the two is the ratio's peer.
 * The direct path (client ↔ echo, no relay) is printed as the ceiling of this machine. Target: ≥1.5× nginx.
 *
 * Env: BENCH_UDP_CL_SECONDS (5), BENCH_UDP_CL_WINDOW (64), BENCH_UDP_CL_FLOWS (1).
 * Run: npx bun bench/sg-udp-closed-loop.ts
 */
import { openControlConnections, startControlAgent } from "./lib/control.ts";
import { createCpuMeter } from "./lib/cpu.ts";
import { runUdpLoad, startUdpEcho, type UdpLoadResult } from "./lib/load.ts";
import { machineNote } from "./lib/machine.ts";
import { startNginxStream } from "./lib/peers.ts";
import { createProcessSet, type ProcessSet } from "./lib/processes.ts";
import { detail, envNumber, figureLine, fmt, print, verdictLine } from "./lib/report.ts";
import { startSgProcess } from "./lib/sg-process.ts";
import { ensurePeers } from "./lib/tools.ts";

const SECONDS = envNumber("BENCH_UDP_CL_SECONDS", 5);
const WINDOW = envNumber("BENCH_UDP_CL_WINDOW", 64);
const FLOWS = envNumber("BENCH_UDP_CL_FLOWS", 1);
const cpu = createCpuMeter();

async function closedLoop(
  procs: ProcessSet,
  label: string,
  port: number,
  pid?: number,
): Promise<UdpLoadResult> {
  const c0 = pid === undefined ? 0 : cpu.seconds(pid);
  const r = await runUdpLoad(procs, { mode: "closed", port, flows: FLOWS, window: WINDOW, seconds: SECONDS });
  const used = pid === undefined ? 0 : cpu.seconds(pid) - c0;
  const perRt =
    pid === undefined ? "" : `, relay CPU ${fmt((used * 1e6) / Math.max(1, r.received))} µs per round trip`;
  detail(
    `${label}: ${fmt(r.roundTripsPerSec ?? 0)} round trips/s, round trip p50 ${fmt(r.p50Us / 1000)} / p99 ` +
      `${fmt(r.p99Us / 1000)} ms, windows lost ${r.lostWindows ?? 0}${perRt}`,
  );
  return r;
}

async function main(): Promise<void> {
  ensurePeers();
  const procs = createProcessSet();
  const agent = startControlAgent();
  try {
    detail(await machineNote());
    const echo = await startUdpEcho(procs);
    detail(`${FLOWS} flow(s), ${WINDOW} datagrams of 1200 bytes in flight, ${SECONDS} s per run`);
    await closedLoop(procs, "direct (no relay)", echo.port);

    const sg = await startSgProcess(procs, "udp-closed-loop");
    const snis = await sg.admit(FLOWS, agent.port, echo.port);
    const control = await openControlConnections(sg.tcpPort, snis, agent);
    const ours = await closedLoop(procs, "SG (bun, src/sg/udp-relay.ts)", sg.udpPort, sg.pid);
    const c = await sg.counters();
    detail(`SG counters: flows bound ${c.udp.flowsBound}, drops ${JSON.stringify(c.udp.drops)}`);
    control.closeAll();
    await sg.stop();

    // Two nginx setups: proxy_responses 1 (a session per request datagram, the usual DNS-style config) and the
    // default (one session per client address for proxy_timeout, media-style). The faster one is the peer.
    const variants: { label: string; directives: string[] }[] = [
      { label: "nginx stream udp proxy_responses 1", directives: ["proxy_responses 1;"] },
      { label: "nginx stream udp default (session per client)", directives: [] },
    ];
    let peer: { label: string; r: UdpLoadResult } | undefined;
    for (const v of variants) {
      const nginx = await startNginxStream(procs, {
        name: "nginx-udp",
        proto: "udp",
        upstreamPort: echo.port,
        directives: v.directives,
      });
      const r = await closedLoop(procs, v.label, nginx.port, nginx.pid);
      await nginx.child.stop();
      if (!peer || (r.roundTripsPerSec ?? 0) > (peer.r.roundTripsPerSec ?? 0)) peer = { label: v.label, r };
    }
    if (!peer) throw new Error("no nginx run");

    const ratio = (ours.roundTripsPerSec ?? 0) / (peer.r.roundTripsPerSec ?? 1);
    print(
      figureLine({
        name: "SG UDP relay closed loop",
        value: ours.roundTripsPerSec ?? 0,
        unit: "round trips/s",
        peer: `${peer.label} (the faster nginx)`,
        peerValue: peer.r.roundTripsPerSec ?? 0,
      }),
    );
    print(
      verdictLine(
        "≥1.5× nginx round trips/s",
        ratio >= 1.5,
        `${fmt((1 - ratio / 1.5) * 100)} % (${ratio.toFixed(2)}×)`,
      ),
    );
  } finally {
    agent.close();
    await procs.stopAll();
  }
}

await main();
