/**
 * Figure: SG concurrent sessions. As many admitted sessions as one process's descriptor limit allows (the SG
 * spends three descriptors per session: the client's TCP connection, its own to the agent, and the session's
 * UDP socket toward the agent), each ACTIVE with its TCP relay (a ClientHello with the session's SNI, then 64
 * bytes every second from the client) and one UDP flow (BENCH_SESSIONS_PPS (2) datagrams/s of 200 bytes,
 * echoed by the agent), held for BENCH_SESSIONS_HOLD_SECONDS (6). Measured: sessions relaying at the end, the SG process's RSS
 * growth per session, extrapolated to 20,000 sessions (which needs LimitNOFILE ≥ 3 × 20,000 + a few hundred).
 * Peer: nginx stream (default buffers, one worker) relaying the same number of TCP connections with the same
 * traffic: its memory per relayed connection. Target: ≤5 KB per relayed connection (a session relays two: its
 * TCP connection and its UDP flow). The clients come from 250 loopback addresses (127.1.0.x), as many clients
 * would; BENCH_SESSIONS_ONE_IP=1 puts them all behind one IP (a corporate NAT: every new flow then looks through
 * that IP's thousands of sessions, which is why admissions.pickUdp is a single pass).
 *
 * Env: BENCH_SESSIONS (limit-derived), BENCH_SESSIONS_HOLD_SECONDS (6), BENCH_SESSIONS_PPS (2),
 * BENCH_SESSIONS_ONE_IP=1 (all sessions from one client IP). Run: npx bun bench/sg-sessions.ts
 */
import { connect, type Socket } from "node:net";
import { RESERVED_FDS } from "../src/sg/limits.ts";
import { rssBytes } from "./lib/appliance.ts";
import { type ControlAgent, startControlAgent } from "./lib/control.ts";
import { runUdpLoad, startUdpEcho } from "./lib/load.ts";
import { machineNote } from "./lib/machine.ts";
import { clientHello, LOOPBACK, udpKernelCounters } from "./lib/net.ts";
import { startNginxStream } from "./lib/peers.ts";
import { createProcessSet } from "./lib/processes.ts";
import { detail, envNumber, figureLine, fmt, print, verdictLine } from "./lib/report.ts";
import { startSgProcess } from "./lib/sg-process.ts";
import { setSocketBufferDefaults } from "./lib/sysctl.ts";
import { ensurePeers } from "./lib/tools.ts";

const NOFILE = Number(Bun.spawnSync(["bash", "-c", "ulimit -Hn"]).stdout.toString().trim()) || 1024;
/** The SG keeps this many descriptors for the rest of the process and relays within the remainder. */
const RESERVE = RESERVED_FDS;
const SESSIONS = envNumber("BENCH_SESSIONS", Math.floor((NOFILE - RESERVE) / 3));
const HOLD_S = envNumber("BENCH_SESSIONS_HOLD_SECONDS", 6);
/** Datagrams per second per UDP flow ("periodic traffic": enough to keep every flow and its socket busy). */
const PPS = envNumber("BENCH_SESSIONS_PPS", 2);
const TARGET_KB = 5;
const KB = 1024;

/** Client IPs the sessions come from: 127.1.0.1..SRC_IPS (loopback), as many clients would, not one NAT. */
const SRC_IPS = process.env.BENCH_SESSIONS_ONE_IP === "1" ? 1 : 250;
/** BENCH_SESSIONS_ONE_IP=1: every session from 127.1.0.1 (one corporate NAT). */
const clientIp = (j: number) => `127.1.0.${1 + (j % SRC_IPS)}`;

interface Clients {
  readonly sockets: Set<Socket>;
  stop(): void;
}

/**
 * N TCP connections to `port`, connection j from clientIp(j) (node:net: Bun.connect cannot pick the source
 * address), each first sending hello(j), then 64 bytes every second.
 */
async function openClients(port: number, n: number, hello: (j: number) => Uint8Array): Promise<Clients> {
  const sockets = new Set<Socket>();
  const BATCH = 200;
  for (let i = 0; i < n; i += BATCH) {
    await Promise.all(
      Array.from(
        { length: Math.min(BATCH, n - i) },
        (_, k) =>
          new Promise<void>((resolve) => {
            const j = i + k;
            const s = connect({ host: LOOPBACK, port, localAddress: clientIp(j) });
            s.on("connect", () => {
              sockets.add(s);
              s.write(hello(j));
              resolve();
            });
            s.on("error", () => resolve());
            s.on("close", () => sockets.delete(s));
            s.on("data", () => {});
          }),
      ),
    );
  }
  const payload = new Uint8Array(64).fill(0x61);
  const timer = setInterval(() => {
    for (const s of sockets) s.write(payload);
  }, 1000);
  return {
    sockets,
    stop() {
      clearInterval(timer);
      for (const s of sockets) s.destroy();
    },
  };
}

async function waitAccepted(agent: ControlAgent, target: number, what: string): Promise<void> {
  const deadline = Date.now() + 60_000;
  while (agent.accepted < target) {
    if (Date.now() > deadline) throw new Error(`${what}: the agent accepted ${agent.accepted} of ${target}`);
    await Bun.sleep(20);
  }
}

async function main(): Promise<void> {
  ensurePeers();
  // This process holds the client and agent ends (2 per session): soft limit up to the hard one.
  Bun.spawnSync(["prlimit", `--pid=${process.pid}`, `--nofile=${NOFILE}:${NOFILE}`]);
  const procs = createProcessSet();
  const agent = startControlAgent();
  // Socket buffers as `pcoip-cmsg install` sets them: the warm-up opens every flow with a burst of datagrams.
  const buffers = setSocketBufferDefaults();
  try {
    detail(await machineNote());
    detail(
      `descriptor limit ${NOFILE} per process → ${SESSIONS} sessions (3 descriptors each in the SG); ` +
        `held ${HOLD_S} s with 64 B/s per TCP connection and ${PPS} datagrams/s of 200 B per UDP flow`,
    );
    const echo = await startUdpEcho(procs);
    const sg = await startSgProcess(procs, "sessions", {
      wrap: ["prlimit", `--nofile=${NOFILE}:${NOFILE}`, "--"],
      args: ["--max-sessions", String(SESSIONS + 10), "--udp-source-ports", "20000-29999"],
    });
    await Bun.sleep(500);
    const rss0 = rssBytes(sg.pid);
    // Session j belongs to clientIp(j): admitted per IP, so snis[j] is the SNI of an admission of that IP.
    const snis: string[] = new Array(SESSIONS);
    for (let ip = 0; ip < Math.min(SRC_IPS, SESSIONS); ip++) {
      const count = Math.floor((SESSIONS - 1 - ip) / SRC_IPS) + 1;
      const got = await sg.admit(count, agent.port, echo.port, clientIp(ip));
      got.forEach((sni, n) => {
        snis[ip + n * SRC_IPS] = sni;
      });
    }
    const t0 = performance.now();
    const accepted0 = agent.accepted;
    const clients = await openClients(sg.tcpPort, SESSIONS, (i) => clientHello(snis[i]!));
    await waitAccepted(agent, accepted0 + SESSIONS, "opening sessions through the SG");
    detail(`${SESSIONS} control connections through the SG in ${fmt((performance.now() - t0) / 1000)} s`);
    // One flow per session, all busy for the hold: PPS datagrams/s of 200 bytes each.
    const mbps = (SESSIONS * PPS * 200 * 8) / 1e6;
    const k0 = udpKernelCounters();
    const udp = await runUdpLoad(procs, {
      mode: "open",
      port: sg.udpPort,
      flows: SESSIONS,
      size: 200,
      mbps,
      seconds: HOLD_S,
      warmupMs: 3000,
      srcIps: SRC_IPS,
    });
    const rss1 = rssBytes(sg.pid);
    const k1 = udpKernelCounters();
    detail(
      `load generator: sent ${udp.sent}, received ${udp.received}, late ${udp.late}, send errors ${udp.sendErrors}, ` +
        `blocked ${udp.sendBlocked}, silent flows ${udp.flowsSilent}; kernel UDP receive-buffer overflows ` +
        `${k1.rcvbufErrors - k0.rcvbufErrors}`,
    );
    const c = await sg.counters();
    const tcpOpen = Math.min(clients.sockets.size, c.tcp.active);
    // A session counts when its TCP relay is open and its UDP flow is bound (the SG's own counters).
    const relaying = Math.min(tcpOpen, c.udp.flowsBound);
    const perSessionKb = (rss1 - rss0) / KB / Math.max(1, relaying);
    detail(
      `SG: ${c.tcp.active} TCP relays active, ${c.udp.flowsBound} UDP flows bound, packets up ${c.udp.packetsUp} / ` +
        `down ${c.udp.packetsDown}; load generator: ${udp.warmFlowsAnswered} flows answered in warm-up, UDP loss ${fmt(udp.lossPct ?? 0)} %, drops ${JSON.stringify(c.udp.drops)}, socket errors ${c.udp.socketErrors}, sessions with a UDP socket ${c.udp.sessionsOpen}; RSS ${fmt(rss0 / KB / KB)} → ${fmt(rss1 / KB / KB)} MB`,
    );
    clients.stop();
    await sg.endAll();
    await sg.stop();

    // Peer: nginx stream relaying the same TCP connections to the same agent.
    const nginx = await startNginxStream(procs, {
      name: "nginx-sessions",
      proto: "tcp",
      upstreamPort: agent.port,
      workerConnections: SESSIONS * 2 + 100,
    });
    await Bun.sleep(300);
    const worker = Number(
      Bun.spawnSync(["pgrep", "-P", String(nginx.pid)])
        .stdout.toString()
        .trim(),
    );
    const n0 = rssBytes(worker);
    const accepted1 = agent.accepted;
    const peerClients = await openClients(nginx.port, SESSIONS, (i) => clientHello(snis[i]!));
    await waitAccepted(agent, accepted1 + SESSIONS, "opening connections through nginx");
    await Bun.sleep(HOLD_S * 1000);
    const n1 = rssBytes(worker);
    const peerHeld = peerClients.sockets.size;
    const nginxKb = (n1 - n0) / KB / Math.max(1, peerHeld);
    detail(`nginx stream: ${peerHeld} TCP relays; worker RSS ${fmt(n0 / KB / KB)} → ${fmt(n1 / KB / KB)} MB`);
    peerClients.stop();
    await nginx.child.stop();

    print(
      figureLine({
        name: "SG concurrent sessions (TCP relay + UDP flow each), one process",
        value: relaying,
        unit: "sessions",
        peer: "nginx stream TCP relays at the same limit",
        peerValue: peerHeld,
      }),
    );
    print(
      figureLine({
        name: "SG memory per session (TCP relay + UDP flow)",
        value: perSessionKb,
        unit: "KB",
        peer: "nginx stream per TCP relay",
        peerValue: nginxKb,
      }),
    );
    const at20k = (rss0 + 20_000 * perSessionKb * KB) / KB / KB;
    detail(
      `extrapolated to 20,000 sessions: ≈${fmt(at20k)} MB RSS, ${3 * 20_000 + RESERVE} descriptors ` +
        "(LimitNOFILE=65536 covers it)",
    );
    // A session relays two connections, its TCP control connection and its UDP flow.
    const perRelayedKb = perSessionKb / 2;
    detail(`per relayed connection (a session = one TCP relay + one UDP flow): ${fmt(perRelayedKb)} KB`);
    print(
      verdictLine(
        `≤${TARGET_KB} KB per relayed connection`,
        perRelayedKb <= TARGET_KB,
        `${fmt(perRelayedKb - TARGET_KB)} KB (${fmt(perRelayedKb)} KB; ${fmt(perSessionKb)} KB per session)`,
      ),
    );
  } finally {
    buffers.restore();
    agent.close();
    await procs.stopAll();
  }
}

await main();
