/**
 * Figure: SG TCP relay throughput and CPU-s/GB. One admitted session: a ClientHello with the session's SNI, then
 * BENCH_TCP_GB (default 4) GB of payload through the relay to a sink that confirms the count. The same bytes go
 * through nginx stream (proxy_buffer_size 128k, and default), haproxy mode tcp (tune.bufsize 131072, and default)
 * and socat. Gbit/s is payload over the sender's wall time (first byte to the sink's confirmation); CPU-s/GB is
 * the relay process's CPU time (all threads and children, /proc/<pid>/stat) per 10^9 payload bytes.
 * Target: ≥1.0× tuned nginx Gbit/s and ≤1.0× its CPU-s/GB.
 *
 * Run: npx bun bench/sg-tcp-throughput.ts      (BENCH_TCP_GB=1 for a quick look)
 */
import { createCpuMeter } from "./lib/cpu.ts";
import { runTcpSend, startTcpSink } from "./lib/load.ts";
import { machineNote } from "./lib/machine.ts";
import { clientHello, toHex } from "./lib/net.ts";
import { type Peer, startHaproxyTcp, startNginxStream, startSocat } from "./lib/peers.ts";
import { createProcessSet, type ProcessSet } from "./lib/processes.ts";
import { detail, envNumber, figureLine, fmt, print, verdictLine } from "./lib/report.ts";
import { startSgProcess } from "./lib/sg-process.ts";
import { ensurePeers } from "./lib/tools.ts";

const gigabytes = envNumber("BENCH_TCP_GB", 4);
const bytes = Math.round(gigabytes * 1e9);
const WARMUP_BYTES = 256 * 1024 * 1024;

interface Measured {
  readonly name: string;
  readonly gbps: number;
  readonly cpuPerGB: number;
  readonly seconds: number;
}

const cpu = createCpuMeter();

async function measure(procs: ProcessSet, name: string, port: number, pid: number, hello: () => string) {
  await runTcpSend(procs, port, WARMUP_BYTES, hello()); // first connection, buffers and JIT warmed up
  const before = cpu.seconds(pid);
  const r = await runTcpSend(procs, port, bytes, hello());
  await Bun.sleep(200); // socat's per-connection child is reaped (its CPU moves to the parent's cutime)
  const used = cpu.seconds(pid) - before;
  const m: Measured = {
    name,
    gbps: (bytes * 8) / r.seconds / 1e9,
    cpuPerGB: used / (bytes / 1e9),
    seconds: r.seconds,
  };
  detail(
    `${name}: ${fmt(m.gbps)} Gbit/s, ${fmt(used)} CPU-s in ${fmt(r.seconds)} s → ${fmt(m.cpuPerGB)} CPU-s/GB`,
  );
  return m;
}

async function main(): Promise<void> {
  ensurePeers();
  const procs = createProcessSet();
  try {
    detail(await machineNote());
    const sink = await startTcpSink(procs);
    detail(
      `${fmt(gigabytes)} GB (10^9 bytes) per run, 1 connection, ClientHello first; sink on 127.0.0.1:${sink.port}`,
    );
    const direct = await runTcpSend(procs, sink.port, bytes, "");
    detail(
      `direct (no relay): ${fmt((bytes * 8) / direct.seconds / 1e9)} Gbit/s — the loopback ceiling here`,
    );

    const sg = await startSgProcess(procs, "tcp-throughput");
    const snis = await sg.admit(2, sink.port, sink.port);
    let next = 0;
    // Each connection takes the next admitted session: warm-up on the first, the measured run on the second.
    const sgHello = () => toHex(clientHello(snis[Math.min(next++, snis.length - 1)]!));
    const ours = await measure(procs, "SG (bun, src/sg/tcp-relay.ts)", sg.tcpPort, sg.pid, sgHello);
    const c = await sg.counters();
    detail(
      `SG counters: relayed ${c.tcp.relayed}, refused ${JSON.stringify(c.tcp.refused)}, pauses ${c.tcp.pauses}`,
    );
    await sg.stop();

    // The peers pass the ClientHello on as plain bytes, so they carry exactly what the SG carries.
    const hello = () => toHex(clientHello(snis[0]!));
    const peers: { label: string; start: () => Promise<Peer> }[] = [
      {
        label: "nginx stream proxy_buffer_size 128k",
        start: () =>
          startNginxStream(procs, {
            name: "nginx-tcp-128k",
            proto: "tcp",
            upstreamPort: sink.port,
            directives: ["proxy_buffer_size 128k;"],
          }),
      },
      {
        label: "nginx stream default",
        start: () =>
          startNginxStream(procs, { name: "nginx-tcp-default", proto: "tcp", upstreamPort: sink.port }),
      },
      {
        label: "haproxy mode tcp tune.bufsize 131072",
        start: () =>
          startHaproxyTcp(procs, { name: "haproxy-131072", upstreamPort: sink.port, bufsize: 131072 }),
      },
      {
        label: "haproxy mode tcp default",
        start: () => startHaproxyTcp(procs, { name: "haproxy-default", upstreamPort: sink.port }),
      },
      { label: "socat default", start: () => startSocat(procs, "socat", sink.port) },
    ];
    const results: Measured[] = [];
    for (const p of peers) {
      const peer = await p.start();
      results.push(await measure(procs, p.label, peer.port, peer.pid, hello));
      await peer.child.stop();
    }

    for (const r of results) {
      print(
        figureLine({
          name: "SG TCP relay throughput",
          value: ours.gbps,
          unit: "Gbit/s",
          peer: r.name,
          peerValue: r.gbps,
        }),
      );
    }
    for (const r of results) {
      print(
        figureLine({
          name: "SG TCP relay CPU",
          value: ours.cpuPerGB,
          unit: "CPU-s/GB",
          peer: r.name,
          peerValue: r.cpuPerGB,
        }),
      );
    }
    const tuned = results[0]!;
    const tRatio = ours.gbps / tuned.gbps;
    const cRatio = ours.cpuPerGB / tuned.cpuPerGB;
    print(
      verdictLine(
        "≥1.0× tuned nginx Gbit/s",
        tRatio >= 1,
        `${fmt((1 - tRatio) * 100)} % (${tRatio.toFixed(2)}×)`,
      ),
    );
    print(
      verdictLine(
        "≤1.0× tuned nginx CPU-s/GB",
        cRatio <= 1,
        `${fmt((cRatio - 1) * 100)} % (${cRatio.toFixed(2)}×)`,
      ),
    );
  } finally {
    await procs.stopAll();
  }
}

await main();
