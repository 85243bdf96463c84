/**
 * Starts the SG under test as its own process (bench/lib/sg-server.ts, or BENCH_SG_SERVER) and talks to it over
 * JSON lines. With BENCH_SG_PROFILE=1 the process runs under `bun --cpu-prof` and leaves its profile (and a
 * markdown summary) in bench/.work/prof when it stops.
 */
import { join } from "node:path";
import type { Child, ProcessSet } from "./processes.ts";
import { WORK_DIR, workDir } from "./tools.ts";

export interface SgCounters {
  readonly tcp: {
    accepted: number;
    relayed: number;
    active: number;
    refused: Record<string, number>;
    bytesToAgent: number;
    bytesToClient: number;
    pauses: number;
  };
  readonly udp: {
    packetsUp: number;
    bytesUp: number;
    packetsDown: number;
    bytesDown: number;
    flowsBound: number;
    flowsRebound: number;
    sessionsOpen: number;
    socketErrors: number;
    drops: Record<string, number>;
  };
  readonly admissions: { size: number; active: number };
}

export interface SgProcess {
  readonly pid: number;
  readonly tcpPort: number;
  readonly udpPort: number;
  readonly child: Child;
  /** Admits `count` sessions of `clientIp` (127.0.0.1) toward the given agent; returns each SNI, in order. */
  admit(count: number, agentTcpPort: number, agentUdpPort: number, clientIp?: string): Promise<string[]>;
  endAll(): Promise<number>;
  counters(): Promise<SgCounters>;
  /** Any other command of the server's protocol (a replacement server's own, e.g.); throws on `ok: false`. */
  request(cmd: Record<string, unknown>): Promise<Record<string, unknown>>;
  /**
   * Starts the CM-like HTTPS front door inside the SG process; returns its port. With `real`, the real CM
   * (upstream broker mode, admitting into this SG) instead.
   */
  cmStart(
    certFile: string,
    keyFile: string,
    real?: { brokerUrl: string; caFile: string; agentPort: number },
  ): Promise<number>;
  stop(): Promise<void>;
}

/** @example const sg = await startSgProcess(procs, "udp-headline"); await sg.admit(500, agentPort, echoPort); */
export async function startSgProcess(
  procs: ProcessSet,
  name: string,
  /** More sg-server.ts arguments (e.g. --max-sessions, --udp-source-ports) and an argv prefix (prlimit). */
  extra: { args?: readonly string[]; wrap?: readonly string[] } = {},
): Promise<SgProcess> {
  const script = process.env.BENCH_SG_SERVER || join(import.meta.dir, "sg-server.ts");
  const profile = process.env.BENCH_SG_PROFILE === "1";
  const profDir = join(WORK_DIR, "prof");
  const logFile = join(workDir("logs"), `${name}-sg.log`);
  const argv = [
    ...(extra.wrap ?? []),
    process.execPath,
    ...(profile
      ? ["--cpu-prof", "--cpu-prof-md", `--cpu-prof-dir=${profDir}`, `--cpu-prof-name=${name}.cpuprofile`]
      : []),
    script,
    "--log",
    logFile,
    ...(extra.args ?? []),
  ];
  const child = procs.spawn(`sg (${name})`, argv, { stdin: "pipe" });
  const ready = JSON.parse(await child.waitForLine((l) => l.includes('"event":"ready"'))) as {
    pid: number;
    tcpPort: number;
    udpPort: number;
  };
  let nextId = 0;
  async function request(cmd: Record<string, unknown>): Promise<Record<string, unknown>> {
    const id = ++nextId;
    child.write(`${JSON.stringify({ id, ...cmd })}\n`);
    const line = await child.waitForLine((l) => l.startsWith(`{"id":${id},`), 30_000);
    const r = JSON.parse(line) as Record<string, unknown>;
    if (r.ok !== true) throw new Error(`sg ${String(cmd.cmd)}: ${String(r.error)}`);
    return r;
  }
  return {
    pid: ready.pid,
    tcpPort: ready.tcpPort,
    udpPort: ready.udpPort,
    child,
    request,
    async admit(count, agentTcpPort, agentUdpPort, clientIp = "127.0.0.1") {
      const r = await request({
        cmd: "admit",
        count,
        clientIp,
        agentHost: "127.0.0.1",
        agentTcpPort,
        agentUdpPort,
      });
      return r.snis as string[];
    },
    async endAll() {
      return (await request({ cmd: "end-all" })).ended as number;
    },
    async counters() {
      return (await request({ cmd: "counters" })) as unknown as SgCounters;
    },
    async cmStart(cert, key, real) {
      const extra = real ? { brokerUrl: real.brokerUrl, ca: real.caFile, agentPort: real.agentPort } : {};
      return (await request({ cmd: "cm-start", cert, key, ...extra })).port as number;
    },
    async stop() {
      if (child.lines().length > 0) {
        try {
          child.write(`${JSON.stringify({ id: 0, cmd: "stop" })}\n`);
        } catch {
          // stdin already closed
        }
      }
      const gone = await Promise.race([child.exited.then(() => true), Bun.sleep(3000).then(() => false)]);
      if (!gone) await child.stop();
    },
  };
}
