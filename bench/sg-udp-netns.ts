/**
 * Figure: the kernel UDP path (sg.udpFastPath, src/sg/kernel/) in three network namespaces this bench creates —
 * client — SG (two veths) — agent, addresses from 198.18.0.0/15 — so media really crosses a router, as in
 * production. The agent is the C echo (bench/c/udp-echo.c) on 198.18.2.1:4172; the load is bench/c/udp-load.c in
 * the client namespace.
 *
 * 1. Closed loop, 1200-byte datagrams, 64 in flight on one flow: through the SG with the fast path, through the
 *    SG's userspace relay (udpFastPath = "off"), through nginx's `stream` udp proxy (one worker, the faster of
 *    proxy_responses 1 and its default) in the SG namespace, and by plain routing through the SG namespace
 *    (direct). Targets: fast path ≥ 4× nginx and ≥ 0.8× direct. These processes run SCHED_FIFO (chrt), all alike.
 * 2. Media headline: 500 sessions (500 client IPs, one flow each) offered 365 Mbit/s each way; loss, p99 added
 *    over direct, and the SG's CPU seconds per GB next to nginx's. Target: loss ≤ 0.1 %, added p99 ≤ 0.5 ms.
 * 3. The highest offered rate through the fast path meeting the same target (365 … 5000 Mbit/s, until the first
 *    miss; the generator, one process on a shared core, is usually the limit — said so when direct misses too).
 *
 * 4. The media headline during logins: the SG process also runs the real CM (upstream broker mode, admitting into
 *    the same SG, as in production: bench/lib/real-cm.ts), which serves BENCH_NETNS_LOGINS (200) full logins/s
 *    (hello → authenticate → get-resource-list → allocate-resource → bye over TLS, RSA-3072, bench/lib/logins.ts;
 *    broker and agent answer after 50 ms from their own processes, bench/lib/cm-upstreams.ts; all three and the
 *    login generator in the SG namespace, on its loopback) while the 500 flows run at 365 Mbit/s: loss and added
 *    p99 over direct routing (measured without logins in 2.), kernel path and udpFastPath = "off", the SG
 *    process's CPU per GB (CM included) beside nginx's; then the highest rate meeting the target during logins.
 *    With the fast path the SG's event loop carries no media after a flow's first datagram, so the CM's CPU
 *    competes with the kernel's softirq work only.
 *
 * The headline's 500 flows keep their source ports across runs (udp-load src-port=), and each SG is primed with
 * a light load until every flow is in the kernel before anything is measured: a real SG's sessions start one by
 * one and are bound long before their media peaks, while 500 bindings at once (one nft batch each) would otherwise
 * fall into the measured window. Added p99 is over direct routing measured without logins (the SG's table drops
 * other forwarded traffic while it runs, so direct routing cannot run beside it).
 *
 * Each figure line ends with the 1-minute load average at its run ([load N]): the box is shared.
 *
 * Env: BENCH_NETNS_SECONDS (5), BENCH_NETNS_FLOWS (500), BENCH_NETNS_MAX_MBPS (5000), BENCH_NETNS_LOGINS (200;
 * 0 skips 4.), BENCH_NETNS_PHASES (closed,headline,logins: which of 1., 2.–3. and 4. run). Needs root (namespaces, nftables). Run: npx bun bench/sg-udp-netns.ts
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { loadavg, tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { testPki } from "../test/peers/test-certs.ts";
import { createCpuMeter } from "./lib/cpu.ts";
import type { UdpLoadResult } from "./lib/load.ts";
import { machineNote } from "./lib/machine.ts";
import { type Child, createProcessSet, type ProcessSet } from "./lib/processes.ts";
import { detail, envNumber, figureLine, fmt, print, verdictLine } from "./lib/report.ts";
import { ensurePeers, tool } from "./lib/tools.ts";

const SECONDS = envNumber("BENCH_NETNS_SECONDS", 5);
const FLOWS = envNumber("BENCH_NETNS_FLOWS", 500);
const MAX_MBPS = envNumber("BENCH_NETNS_MAX_MBPS", 5000);
const STEPS = [365, 1000, 2000, 3000, 5000].filter((m) => m <= MAX_MBPS);
const LOGINS = envNumber("BENCH_NETNS_LOGINS", 200);
const PHASES = new Set((process.env.BENCH_NETNS_PHASES ?? "closed,headline,logins").split(","));
const ROOT = resolve(import.meta.dir, "..");
const suffix = Math.random().toString(36).slice(2, 7);
const NS = { client: `kfpbc${suffix}`, sg: `kfpbs${suffix}`, agent: `kfpba${suffix}` };
const IP = { client: "198.18.1.1", sgWan: "198.18.1.2", sgLan: "198.18.2.2", agent: "198.18.2.1" };
/** The SG's address in the headline clients' subnet: its replies leave from the address the clients target. */
const SG_WAN_MANY = "198.18.7.254";
/** The headline's client IPs: 198.18.4.1 … (one per session), on the client's veth, in 198.18.4.0/22. */
const MANY_BASE = "198.18.4.0";
/** Flow i of the headline sends from port MANY_SRC_PORT + i of its client IP. */
const MANY_SRC_PORT = 20000;
const manyIp = (i: number) => `198.18.${4 + Math.floor((i + 1) / 256)}.${(i + 1) % 256}`;
const cpu = createCpuMeter();

function sh(args: string[]): void {
  const r = Bun.spawnSync(args, { stdout: "pipe", stderr: "pipe" });
  if (r.exitCode !== 0) throw new Error(`${args.join(" ")}: ${r.stderr.toString().trim()}`);
}

function buildTopology(): void {
  const v = (n: string) => `${n}${suffix}`;
  sh(["ip", "netns", "add", NS.client]);
  sh(["ip", "netns", "add", NS.sg]);
  sh(["ip", "netns", "add", NS.agent]);
  sh([
    "ip",
    "link",
    "add",
    v("bc"),
    "netns",
    NS.client,
    "type",
    "veth",
    "peer",
    "name",
    v("bs"),
    "netns",
    NS.sg,
  ]);
  sh([
    "ip",
    "link",
    "add",
    v("ba"),
    "netns",
    NS.agent,
    "type",
    "veth",
    "peer",
    "name",
    v("bl"),
    "netns",
    NS.sg,
  ]);
  const perNs: Record<string, string[]> = {
    [NS.client]: [
      `addr add ${IP.client}/24 dev ${v("bc")}`,
      ...Array.from({ length: FLOWS }, (_, i) => `addr add ${manyIp(i)}/22 dev ${v("bc")}`),
      "link set lo up",
      `link set ${v("bc")} up`,
      // Direct routing goes through the SG namespace as a plain router.
      `route add 198.18.2.0/24 via ${IP.sgWan}`,
    ],
    [NS.sg]: [
      `addr add ${IP.sgWan}/24 dev ${v("bs")}`,
      `addr add 198.18.7.254/22 dev ${v("bs")}`,
      `addr add ${IP.sgLan}/24 dev ${v("bl")}`,
      "link set lo up",
      `link set ${v("bs")} up`,
      `link set ${v("bl")} up`,
    ],
    [NS.agent]: [
      `addr add ${IP.agent}/24 dev ${v("ba")}`,
      "link set lo up",
      `link set ${v("ba")} up`,
      `route add 198.18.1.0/24 via ${IP.sgLan}`,
      `route add 198.18.4.0/22 via ${IP.sgLan}`,
    ],
  };
  // What `pcoip-cmsg install` sets (90-pcoip-cmsg.conf): socket buffers that hold more than a few ms of media.
  sh([
    "ip",
    "netns",
    "exec",
    NS.sg,
    "sysctl",
    "-qw",
    "net.core.rmem_default=4194304",
    "net.core.wmem_default=4194304",
  ]);
  for (const [ns, lines] of Object.entries(perNs)) {
    const file = join(tmpdir(), `kfpb-${suffix}-${ns}.batch`);
    writeFileSync(file, `${lines.join("\n")}\n`);
    try {
      sh(["ip", "-n", ns, "-batch", file]);
    } finally {
      rmSync(file, { force: true });
    }
  }
}

function removeTopology(): void {
  for (const ns of Object.values(NS)) Bun.spawnSync(["ip", "netns", "del", ns]);
}

function forwarding(on: boolean): void {
  sh(["ip", "netns", "exec", NS.sg, "sysctl", "-qw", `net.ipv4.ip_forward=${on ? 1 : 0}`]);
}

const SG_SCRIPT = (dir: string) => {
  const src = (p: string) => JSON.stringify(join(ROOT, p));
  const file = join(dir, "sg.ts");
  writeFileSync(
    file,
    `
import pino from ${JSON.stringify(Bun.resolveSync("pino", ROOT))};
import { createLogger } from ${src("src/observability/log.ts")};
import { createAdmissions } from ${src("src/sg/admissions.ts")};
import { startUdpRelay } from ${src("src/sg/udp-relay.ts")};
import { startRealCm } from ${src("bench/lib/real-cm.ts")};
const [mode, agentHost, ...clients] = process.argv.slice(2);
// The CM phase logs as the appliance does (one JSON line per step, synchronously, to a file); the others do not.
const cmSettings = process.env.KF_CM ? JSON.parse(process.env.KF_CM) : undefined;
const log = cmSettings
  ? createLogger({ destination: pino.destination({ dest: cmSettings.log, sync: true }) })
  : createLogger({ destination: { write: () => {} } });
const admissions = createAdmissions({ maxSessions: 200000 });
let n = 0;
for (const clientIp of clients) {
  const id = "88888888-0000-4000-8000-" + String(++n).padStart(12, "0");
  const r = admissions.admit({ sessionLogId: id, agentSessionId: "b" + n, clientIp, agentHost, agentTcpPort: 4172,
    agentUdpPort: 4172, sni: agentHost });
  if (!r.ok) throw new Error("admit: " + r.reason);
  admissions.attachTcp(id);
}
const u = await startUdpRelay({ listen: [{ hostname: "0.0.0.0", port: 4172 }], admissions, log, fastPath: mode,
  sourcePorts: { from: 40000, to: 49999 } });
if (!u.ok) throw new Error("start: " + JSON.stringify(u.error));
let cmPort = 0;
if (cmSettings) {
  const { cert, key, ca, brokerUrl, agentPort, externalIp } = cmSettings;
  const cm = await startRealCm({ log, admissions, external: { ip: externalIp, port: 4172 }, cert, key, ca, brokerUrl, agentPort });
  if (!cm.ok) throw new Error("cm: " + cm.error);
  cmPort = cm.cm.port;
}
console.log(JSON.stringify({ event: "ready", path: u.relay.path, cmPort }));
process.on("SIGTERM", async () => { await u.relay.stop(); process.exit(0); });
setInterval(() => console.log(JSON.stringify({ event: "counters", flows: u.relay.fastPathFlows, c: u.relay.counters })), 1000);
`,
  );
  return file;
};

/**
 * The closed loop's processes (generator, echo, and the relay measured: nginx or the SG) run SCHED_FIFO: on a box
 * shared with other jobs, a time slice lost to them swings round trips/s by ±20 % from run to run. Every path gets
 * the same priority, and the kernel path's own work runs in the generator's and the echo's softirq context.
 */
const REALTIME = ["chrt", "-f", "20"];
const priority = (realtime: boolean) => (realtime ? REALTIME : []);

function inNs(procs: ProcessSet, ns: string, name: string, argv: string[], realtime = false): Child {
  return procs.spawn(name, ["ip", "netns", "exec", ns, ...priority(realtime), ...argv]);
}

async function load(
  procs: ProcessSet,
  o: {
    mode: "open" | "closed";
    target: string;
    flows: number;
    mbps?: number;
    manyIps?: boolean;
    warmupMs?: number;
  },
): Promise<UdpLoadResult> {
  const argv = [
    tool("udp-load"),
    `mode=${o.mode}`,
    `target=${o.target}`,
    `flows=${o.flows}`,
    `seconds=${SECONDS}`,
    "size=1200",
    ...(o.mode === "closed" ? ["window=64"] : [`mbps=${o.mbps}`]),
    // Fixed source ports: every run is the same 500 flows, so sessions bound by the SG stay bound across runs.
    ...(o.manyIps ? [`src-ips=${o.flows}`, `src-base=${MANY_BASE}`, `src-port=${MANY_SRC_PORT}`] : []),
    // Warm-up datagrams are not counted; binding the headline's 500 flows happens before, in primeSg.
    ...(o.mode === "open" ? [`warmup-ms=${o.warmupMs ?? 1000}`] : []),
  ];
  const child = inNs(procs, NS.client, "udp-load", argv, o.mode === "closed");
  const code = await child.exited;
  const line = child.lines().find((l) => l.startsWith('{"mode"'));
  if (code !== 0 || !line) throw new Error(`udp-load exited ${code}: ${child.stderr().slice(-800)}`);
  return JSON.parse(line) as UdpLoadResult;
}

interface Measured {
  readonly r: UdpLoadResult;
  /** CPU seconds of the relay process over the run (0 for the kernel's own routing). */
  readonly cpu: number;
  /** The box's 1-minute load average at the end of the run (it is shared with other work). */
  readonly load: number;
}

const loadTag = (...m: Measured[]) => ` [load ${m.map((x) => fmt(x.load)).join(" / ")}]`;

async function measure(
  procs: ProcessSet,
  label: string,
  pid: number | undefined,
  o: Parameters<typeof load>[1],
): Promise<Measured> {
  const c0 = pid === undefined ? 0 : cpu.seconds(pid);
  const r = await load(procs, o);
  const used = pid === undefined ? 0 : cpu.seconds(pid) - c0;
  const loadAvg = loadavg()[0] ?? 0;
  const gb = ((r.received + r.sent) * 1200) / 1e9;
  detail(
    `${label}: ${o.mode === "closed" ? `${fmt(r.roundTripsPerSec ?? 0)} round trips/s` : `${fmt(r.achievedMbps ?? 0)} of ${fmt(r.offeredMbps ?? 0)} Mbit/s, loss ${fmt(r.lossPct ?? 0)} %`}, p50 ${fmt(r.p50Us / 1000)} / p99 ${fmt(r.p99Us / 1000)} ms` +
      (pid === undefined ? "" : `, relay CPU ${fmt(used)} s (${fmt(used / Math.max(gb, 1e-9))} s/GB)`) +
      `, load ${fmt(loadAvg)}`,
  );
  return { r, cpu: used, load: loadAvg };
}

async function startSg(
  procs: ProcessSet,
  dir: string,
  mode: "on" | "off",
  clients: string[],
  cm?: CmSettings,
  realtime = false,
): Promise<Child> {
  const sg = procs.spawn(
    `sg-${mode}`,
    [
      "ip",
      "netns",
      "exec",
      NS.sg,
      ...priority(realtime),
      process.execPath,
      SG_SCRIPT(dir),
      mode,
      IP.agent,
      ...clients,
    ],
    cm ? { env: { ...process.env, KF_CM: JSON.stringify(cm) } } : {},
  );
  const ready = await sg.waitForLine((l) => l.includes('"ready"'), 20_000);
  const path = (JSON.parse(ready) as { path: string }).path;
  if (path !== (mode === "on" ? "kernel" : "userspace")) throw new Error(`SG came up on the ${path} path`);
  return sg;
}

async function startNginx(
  procs: ProcessSet,
  dir: string,
  directives: string[],
  listen = IP.sgWan,
  realtime = false,
): Promise<Child> {
  const conf = [
    "daemon off;",
    "master_process on;",
    "worker_processes 1;",
    "user nobody nogroup;",
    `pid ${join(dir, "nginx.pid")};`,
    "error_log stderr warn;",
    "load_module /usr/lib/nginx/modules/ngx_stream_module.so;",
    "events { worker_connections 8192; }",
    "stream {",
    "  server {",
    `    listen ${listen}:4173 udp;`,
    `    proxy_pass ${IP.agent}:4172;`,
    ...directives.map((d) => `    ${d}`),
    "  }",
    "}",
  ];
  const file = join(dir, "nginx.conf");
  writeFileSync(file, `${conf.join("\n")}\n`);
  const child = inNs(procs, NS.sg, "nginx-udp", ["nginx", "-e", "stderr", "-p", dir, "-c", file], realtime);
  await Bun.sleep(500);
  return child;
}

async function closedLoops(procs: ProcessSet, dir: string): Promise<void> {
  print("Closed loop, 1 flow, 64 × 1200 B in flight");
  forwarding(true);
  const direct = await measure(procs, "direct routing through the SG namespace", undefined, {
    mode: "closed",
    target: `${IP.agent}:4172`,
    flows: 1,
  });
  forwarding(false);
  let best: { label: string; m: Measured } | undefined;
  for (const [label, directives] of [
    ["nginx stream udp proxy_responses 1", ["proxy_responses 1;"]],
    ["nginx stream udp default", []],
  ] as const) {
    const nginx = await startNginx(procs, dir, [...directives], IP.sgWan, true);
    const m = await measure(procs, label, nginx.pid, {
      mode: "closed",
      target: `${IP.sgWan}:4173`,
      flows: 1,
    });
    await nginx.stop();
    if (!best || (m.r.roundTripsPerSec ?? 0) > (best.m.r.roundTripsPerSec ?? 0)) best = { label, m };
  }
  const results: Record<string, Measured> = {};
  for (const mode of ["on", "off"] as const) {
    const sg = await startSg(procs, dir, mode, [IP.client], undefined, true);
    results[mode] = await measure(procs, `SG, udpFastPath = ${mode}`, sg.pid, {
      mode: "closed",
      target: `${IP.sgWan}:4172`,
      flows: 1,
    });
    await sg.stop(15_000);
  }
  const fast = results.on!.r.roundTripsPerSec ?? 0;
  const nginxRate = best!.m.r.roundTripsPerSec ?? 0;
  const directRate = direct.r.roundTripsPerSec ?? 0;
  print(
    `${figureLine({
      name: "SG UDP closed loop, kernel path (3 namespaces)",
      value: fast,
      unit: "round trips/s",
      peer: best!.label,
      peerValue: nginxRate,
    })}${loadTag(results.on!, best!.m)}`,
  );
  print(
    `${figureLine({
      name: "SG UDP closed loop, kernel path vs direct routing",
      value: fast,
      unit: "round trips/s",
      peer: "direct routing",
      peerValue: directRate,
    })}${loadTag(results.on!, direct)}`,
  );
  detail(`userspace relay (udpFastPath = off): ${fmt(results.off!.r.roundTripsPerSec ?? 0)} round trips/s`);
  print(verdictLine("≥ 4× nginx", fast >= 4 * nginxRate, `${fmt(4 - fast / Math.max(1, nginxRate))}×`));
  print(
    verdictLine("≥ 0.8× direct", fast >= 0.8 * directRate, `${fmt(0.8 - fast / Math.max(1, directRate))}×`),
  );
}

const meets = (m: Measured, direct: Measured) =>
  (m.r.lossPct ?? 100) <= 0.1 && (m.r.p99Us - direct.r.p99Us) / 1000 <= 0.5;

/** 500 flows from 500 client IPs to the SG at `mbps`, after the warm-up that binds them. */
const headlineLoad = (mbps: number) => ({
  mode: "open" as const,
  target: `${SG_WAN_MANY}:4172`,
  flows: FLOWS,
  mbps,
  manyIps: true,
});

/**
 * Binds the 500 sessions before anything is measured, as a real SG's sessions are bound long before (they start one
 * by one; here 500 start at once, one nft batch each): a light load (20 Mbit/s) until the SG reports every flow in
 * the kernel (udpFastPath = on) or for a few seconds (off). The measured runs then reuse the same flows.
 */
async function primeSg(procs: ProcessSet, sg: Child, mode: "on" | "off"): Promise<void> {
  const t0 = performance.now();
  const bound = () => {
    const last = sg.lines().findLast((l) => l.includes('"event":"counters"'));
    return last ? (JSON.parse(last) as { flows: number }).flows : 0;
  };
  for (let round = 0; round < 20; round++) {
    await load(procs, {
      mode: "open",
      target: `${SG_WAN_MANY}:4172`,
      flows: FLOWS,
      mbps: 20,
      manyIps: true,
      warmupMs: 3000,
    });
    if (mode === "off" || bound() >= FLOWS) break;
  }
  detail(
    `  primed: ${mode === "on" ? `${bound()} of ${FLOWS} flows in the kernel` : `${FLOWS} flows bound in user space`} after ${fmt((performance.now() - t0) / 1000)} s`,
  );
}

/**
 * Up from 365 Mbit/s through the fast path (`at`) until the first miss: the highest offered rate meeting the
 * target, and — when direct routing misses at the next step too — that the generator or the box is the limit.
 */
async function highestRate(
  direct: ReadonlyMap<number, Measured>,
  at365: Measured,
  at: (mbps: number) => Promise<Measured>,
): Promise<{ highest: number; limit: string; last: Measured }> {
  let highest = meets(at365, direct.get(365)!) ? 365 : 0;
  let last = at365;
  if (highest === 0) return { highest, limit: "", last };
  for (const mbps of STEPS.filter((m) => m > 365)) {
    const d = direct.get(mbps)!;
    last = await at(mbps);
    if (!meets(last, d)) {
      const limit =
        (d.r.lossPct ?? 100) > 0.1
          ? ` (direct routing loses ${fmt(d.r.lossPct ?? 0)} % at ${mbps}: the generator's or the box's limit)`
          : ` (first miss at ${mbps}: loss ${fmt(last.r.lossPct ?? 0)} %, added p99 ${fmt((last.r.p99Us - d.r.p99Us) / 1000)} ms)`;
      return { highest, limit, last };
    }
    highest = mbps;
  }
  return { highest, limit: ` (no miss up to ${STEPS.at(-1)} Mbit/s, BENCH_NETNS_MAX_MBPS)`, last };
}

const perGb = (m: Measured) => m.cpu / Math.max(((m.r.received + m.r.sent) * 1200) / 1e9, 1e-9);

/** Direct routing through the SG namespace at every rate (first: the SG's table drops other forwarded traffic). */
async function directRates(procs: ProcessSet): Promise<Map<number, Measured>> {
  print(`Media: ${FLOWS} sessions (one client IP each), 1200 B datagrams, echoed; direct routing first`);
  const direct = new Map<number, Measured>();
  forwarding(true);
  for (const mbps of STEPS)
    direct.set(
      mbps,
      await measure(procs, `direct routing @ ${mbps} Mbit/s`, undefined, {
        mode: "open",
        target: `${IP.agent}:4172`,
        flows: FLOWS,
        mbps,
        manyIps: true,
      }),
    );
  forwarding(false);
  return direct;
}

async function nginxHeadline(procs: ProcessSet, dir: string): Promise<Measured> {
  const nginx = await startNginx(procs, dir, [], SG_WAN_MANY);
  const ng = await measure(procs, "nginx stream udp default @ 365 Mbit/s", nginx.pid, {
    mode: "open",
    target: `${SG_WAN_MANY}:4173`,
    flows: FLOWS,
    mbps: 365,
    manyIps: true,
  });
  await nginx.stop();
  return ng;
}

/** 2. and 3.: the headline through the SG (both paths) and nginx, then the highest rate; returns nginx's run. */
async function headline(
  procs: ProcessSet,
  dir: string,
  direct: ReadonlyMap<number, Measured>,
): Promise<Measured> {
  print("Media headline");
  const clients = Array.from({ length: FLOWS }, (_, i) => manyIp(i));
  const direct365 = direct.get(365)!;
  const runs: Record<string, Measured> = {};
  for (const mode of ["on", "off"] as const) {
    const sg = await startSg(procs, dir, mode, clients);
    await primeSg(procs, sg, mode);
    const at = (mbps: number) =>
      measure(procs, `SG udpFastPath = ${mode} @ ${mbps} Mbit/s`, sg.pid, headlineLoad(mbps));
    runs[mode] = await at(365);
    if (mode === "on") {
      const h = await highestRate(direct, runs.on!, at);
      print(
        `SG UDP media, kernel path, highest offered rate with loss ≤ 0.1 % and added p99 ≤ 0.5 ms: ${h.highest} Mbit/s${h.limit}${loadTag(h.last)}`,
      );
    }
    await sg.stop(15_000);
  }
  const ng = await nginxHeadline(procs, dir);
  const on = runs.on!;
  print(
    `${figureLine({
      name: "SG UDP headline 365 Mbit/s, kernel path, loss",
      value: on.r.lossPct ?? 0,
      unit: "%",
      peer: "nginx stream udp",
      peerValue: ng.r.lossPct ?? 0,
    })}${loadTag(on, ng)}`,
  );
  print(
    `${figureLine({
      name: "SG UDP headline 365 Mbit/s, kernel path, p99 added over direct",
      value: (on.r.p99Us - direct365.r.p99Us) / 1000,
      unit: "ms",
      peer: "nginx stream udp",
      peerValue: (ng.r.p99Us - direct365.r.p99Us) / 1000,
    })}${loadTag(on, ng)}`,
  );
  print(
    `${figureLine({
      name: "SG UDP headline 365 Mbit/s, kernel path, SG CPU per GB relayed",
      value: perGb(on),
      unit: "s/GB",
      peer: "nginx stream udp",
      peerValue: perGb(ng),
    })}${loadTag(on, ng)}`,
  );
  detail(
    `userspace relay at 365 Mbit/s: loss ${fmt(runs.off!.r.lossPct ?? 0)} %, p99 ${fmt(runs.off!.r.p99Us / 1000)} ms, ${fmt(perGb(runs.off!))} s/GB`,
  );
  print(
    verdictLine(
      "loss ≤ 0.1 % and added p99 ≤ 0.5 ms at 365 Mbit/s",
      meets(on, direct365),
      `loss ${fmt(on.r.lossPct ?? 0)} %, added p99 ${fmt((on.r.p99Us - direct365.r.p99Us) / 1000)} ms`,
    ),
  );
  return ng;
}

/** What the SG script needs to run the real CM beside the relay (bench/lib/real-cm.ts), as JSON in KF_CM. */
interface CmSettings {
  readonly cert: string;
  readonly key: string;
  readonly ca: string;
  readonly brokerUrl: string;
  readonly agentPort: number;
  readonly externalIp: string;
  readonly log: string;
}

const LOGIN_SCRIPT = (dir: string) => {
  const file = join(dir, "logins.ts");
  writeFileSync(
    file,
    `
import { runLogins } from ${JSON.stringify(join(ROOT, "bench/lib/logins.ts"))};
const [port, caFile, rate, seconds] = process.argv.slice(2);
const s = await runLogins({ port: Number(port), ca: await Bun.file(caFile).text() }, { rate: Number(rate), seconds: Number(seconds) });
console.log(JSON.stringify({ event: "logins", ...s }));
`,
  );
  return file;
};

/** The CM's broker and agent (bench/lib/cm-upstreams.ts, answering after 50 ms), in the SG namespace. */
async function startUpstreamsInSgNs(
  procs: ProcessSet,
  brokerCert: { certFile: string; keyFile: string },
): Promise<{ brokerPort: number; agentPort: number }> {
  const script = join(import.meta.dir, "lib/cm-upstreams.ts");
  const ready = (c: Child) => c.waitForLine((l) => l.includes('"event":"ready"'), 20_000);
  const agent = procs.spawn(
    "cm-agent",
    ["ip", "netns", "exec", NS.sg, process.execPath, script, "--role", "agent"],
    {
      stdin: "pipe",
    },
  );
  const a = JSON.parse(await ready(agent)) as { agentPort: number };
  const broker = procs.spawn(
    "cm-broker",
    [
      ...["ip", "netns", "exec", NS.sg, process.execPath, script, "--role", "broker"],
      ...["--cert", brokerCert.certFile, "--key", brokerCert.keyFile],
    ],
    { stdin: "pipe" },
  );
  const b = JSON.parse(await ready(broker)) as { cmBrokerPort: number };
  return { brokerPort: b.cmBrokerPort, agentPort: a.agentPort };
}

/** The first warnings and errors of the CM's log (warn and above), to say why logins failed. */
function cmProblems(file: string): string {
  const lines = readFileSync(file, "utf8")
    .split("\n")
    .filter((l) => /"level":"(warn|error|fatal)"/.test(l));
  return lines.length
    ? lines
        .slice(0, 2)
        .map((l) => l.slice(0, 400))
        .join(" | ")
    : "no warnings or errors";
}

interface LoginRun {
  readonly completed: number;
  readonly failed: number;
  readonly perSecond: number;
  readonly p50Ms: number;
  readonly errors: readonly string[];
}

/**
 * 4. The headline while the SG process's own CM serves LOGINS full logins/s: the logins run over the whole media
 * run (warm-up included), from a generator in the SG namespace against the CM on its loopback.
 */
async function duringLogins(
  procs: ProcessSet,
  dir: string,
  direct: ReadonlyMap<number, Measured>,
  nginx: Measured,
): Promise<void> {
  print(
    `Media headline during ${LOGINS} full logins/s on the SG process's own CM (hello→bye, upstreams at 50 ms)`,
  );
  const pki = testPki();
  const cmCert = pki.leaf(["localhost", "127.0.0.1"], { bits: 3072 });
  const up = await startUpstreamsInSgNs(procs, pki.leaf(["localhost", "127.0.0.1"], { bits: 2048 }));
  const clients = Array.from({ length: FLOWS }, (_, i) => manyIp(i));
  const loginSeconds = SECONDS + 2.5; // udp-load's 1 s warm-up, the run, its drain
  const direct365 = direct.get(365)!;
  const runs: Record<string, { m: Measured; logins: LoginRun }> = {};
  const cmFor = (run: string): CmSettings => ({
    cert: cmCert.certFile,
    key: cmCert.keyFile,
    ca: pki.ca.certFile,
    brokerUrl: `https://127.0.0.1:${up.brokerPort}`,
    agentPort: up.agentPort,
    externalIp: SG_WAN_MANY,
    log: join(dir, `cm-${run}.log`),
  });
  /** One media run while the SG process `sg` serves LOGINS logins/s; `run` names it (and the CM's log). */
  const withLogins = async (sg: Child, run: string, label: string, media: Parameters<typeof load>[1]) => {
    const cmPort = (JSON.parse(sg.lines().find((l) => l.includes('"ready"'))!) as { cmPort: number }).cmPort;
    const driver = inNs(procs, NS.sg, "logins", [
      process.execPath,
      LOGIN_SCRIPT(dir),
      String(cmPort),
      pki.ca.certFile,
      String(LOGINS),
      String(loginSeconds),
    ]);
    await Bun.sleep(300); // the login rate settles before the media starts
    const m = await measure(procs, `${label}, ${LOGINS} logins/s`, sg.pid, media);
    const logins = JSON.parse(
      await driver.waitForLine((l) => l.includes('"event":"logins"'), 60_000),
    ) as LoginRun;
    detail(
      `  logins: ${fmt(logins.perSecond)}/s completed (${logins.completed} done, ${logins.failed} failed, p50 ${fmt(logins.p50Ms)} ms)${logins.errors.length ? `, e.g. ${logins.errors.join("; ")}` : ""}; SG+CM process CPU ${fmt(m.cpu)} s`,
    );
    await driver.exited;
    if (logins.failed > 0) detail(`  CM log: ${cmProblems(join(dir, `cm-${run}.log`))}`);
    return { m, logins };
  };
  // The peer: direct routing through the SG namespace during the same logins (the process's relay idle, off).
  const idle = await startSg(procs, dir, "off", clients, cmFor("direct"));
  forwarding(true);
  const directDuring = await withLogins(idle, "direct", "direct routing @ 365 Mbit/s", {
    mode: "open",
    target: `${IP.agent}:4172`,
    flows: FLOWS,
    mbps: 365,
    manyIps: true,
  });
  forwarding(false);
  await idle.stop(15_000);
  for (const mode of ["on", "off"] as const) {
    const sg = await startSg(procs, dir, mode, clients, cmFor(mode));
    await primeSg(procs, sg, mode);
    const at = (mbps: number) =>
      withLogins(sg, mode, `SG udpFastPath = ${mode} @ ${mbps} Mbit/s`, headlineLoad(mbps));
    runs[mode] = await at(365);
    if (mode === "on") {
      const h = await highestRate(direct, runs.on!.m, async (mbps) => (await at(mbps)).m);
      print(
        `SG UDP media during ${LOGINS} logins/s, kernel path, highest offered rate with loss ≤ 0.1 % and added p99 ≤ 0.5 ms: ${h.highest} Mbit/s${h.limit}${loadTag(h.last)}`,
      );
    }
    await sg.stop(15_000);
  }
  const on = runs.on!.m;
  const off = runs.off!.m;
  const added = (m: Measured) => (m.r.p99Us - direct365.r.p99Us) / 1000;
  const name = `SG UDP headline 365 Mbit/s during ${LOGINS} logins/s`;
  print(
    `${figureLine({ name: `${name}, kernel path, loss`, value: on.r.lossPct ?? 0, unit: "%", peer: 'udpFastPath = "off", same logins', peerValue: off.r.lossPct ?? 0 })}${loadTag(on, off)}`,
  );
  print(
    `${figureLine({ name: `${name}, kernel path, p99 added over direct`, value: added(on), unit: "ms", peer: 'udpFastPath = "off", same logins', peerValue: added(off) })}${loadTag(on, off, direct365)}`,
  );
  print(
    `${figureLine({ name: `${name}, kernel path, p99 round trip`, value: on.r.p99Us / 1000, unit: "ms", peer: "direct routing, same logins", peerValue: directDuring.m.r.p99Us / 1000 })}${loadTag(on, directDuring.m)}`,
  );
  detail(
    `direct routing during the same logins: loss ${fmt(directDuring.m.r.lossPct ?? 0)} %, p99 ${fmt(directDuring.m.r.p99Us / 1000)} ms (the CPU the logins take from the echo and the generator, not the SG path); kernel path adds ${fmt((on.r.p99Us - directDuring.m.r.p99Us) / 1000)} ms over it`,
  );
  print(
    `${figureLine({ name: `${name}, kernel path, SG process CPU per GB relayed (its CM's logins included)`, value: perGb(on), unit: "s/GB", peer: "nginx stream udp, no logins", peerValue: perGb(nginx) })}${loadTag(on, nginx)}`,
  );
  detail(
    `udpFastPath = "off" during logins: ${fmt(perGb(off))} s/GB; logins completed ${fmt(runs.on!.logins.perSecond)}/s (kernel path) and ${fmt(runs.off!.logins.perSecond)}/s (off) of ${LOGINS} offered`,
  );
  print(
    verdictLine(
      `loss ≤ 0.1 % and added p99 ≤ 0.5 ms at 365 Mbit/s during ${LOGINS} logins/s`,
      meets(on, direct365),
      `loss ${fmt(on.r.lossPct ?? 0)} %, added p99 ${fmt(added(on))} ms`,
    ),
  );
}

async function main(): Promise<void> {
  ensurePeers();
  tool("udp-echo");
  tool("udp-load");
  const procs = createProcessSet();
  const dir = mkdtempSync(join(tmpdir(), "kfpb-"));
  try {
    detail(await machineNote());
    buildTopology();
    const echo = inNs(procs, NS.agent, "udp-echo", [tool("udp-echo"), IP.agent, "4172"], true);
    await echo.waitForLine((l) => l.startsWith('{"port"'));
    if (PHASES.has("closed")) await closedLoops(procs, dir);
    if (PHASES.has("headline") || PHASES.has("logins")) {
      const direct = await directRates(procs);
      const nginx = PHASES.has("headline")
        ? await headline(procs, dir, direct)
        : await nginxHeadline(procs, dir);
      if (PHASES.has("logins") && LOGINS > 0) await duringLogins(procs, dir, direct, nginx);
    }
  } finally {
    await procs.stopAll();
    removeTopology();
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
