/**
 * Typed wrappers around the C tools (bench/c): the UDP echo and TCP sink that play the agent, and one run of the
 * UDP or TCP load generator, each started through the bench's ProcessSet so nothing outlives a failure.
 */
import { LOOPBACK } from "./net.ts";
import type { Child, ProcessSet } from "./processes.ts";
import { tool } from "./tools.ts";

export interface Endpoint {
  readonly port: number;
  readonly child: Child;
}

async function startPortPrinter(procs: ProcessSet, name: "udp-echo" | "tcp-sink"): Promise<Endpoint> {
  const child = procs.spawn(name, [tool(name), LOOPBACK, "0"]);
  const line = await child.waitForLine((l) => l.startsWith('{"port"'));
  return { port: (JSON.parse(line) as { port: number }).port, child };
}

/** The agent's UDP side: echoes every datagram to its source (bench/c/udp-echo.c). */
export const startUdpEcho = (procs: ProcessSet) => startPortPrinter(procs, "udp-echo");
/** The agent's TCP side for throughput: reads to EOF, answers with the count (bench/c/tcp-sink.c). */
export const startTcpSink = (procs: ProcessSet) => startPortPrinter(procs, "tcp-sink");

/** What udp-load prints (bench/c/udp-load.c); latencies are round trips in µs, timed by the kernel. */
export interface UdpLoadResult {
  readonly mode: "open" | "closed";
  readonly flows: number;
  readonly warmFlowsAnswered: number;
  readonly flowsSilent: number;
  readonly seconds: number;
  readonly sent: number;
  readonly received: number;
  readonly late: number;
  readonly sendErrors: number;
  readonly sendBlocked: number;
  readonly p50Us: number;
  readonly p90Us: number;
  readonly p99Us: number;
  readonly p999Us: number;
  readonly maxUs: number;
  readonly meanUs: number;
  /** open loop */
  readonly offeredMbps?: number;
  readonly achievedMbps?: number;
  readonly lossPct?: number;
  /** closed loop */
  readonly roundTripsPerSec?: number;
  readonly lost?: number;
  readonly lostWindows?: number;
}

export interface UdpLoadOptions {
  readonly mode: "open" | "closed";
  readonly port: number;
  readonly flows: number;
  readonly seconds: number;
  readonly size?: number;
  readonly mbps?: number;
  readonly window?: number;
  readonly warmupMs?: number;
  /** Spread the flows over 127.1.0.1..N (many client IPs) instead of all from 127.0.0.1. */
  readonly srcIps?: number;
}

/** One run of the UDP load generator against 127.0.0.1:port; resolves with its result line. */
export async function runUdpLoad(procs: ProcessSet, o: UdpLoadOptions): Promise<UdpLoadResult> {
  const argv = [
    tool("udp-load"),
    `mode=${o.mode}`,
    `target=${LOOPBACK}:${o.port}`,
    `flows=${o.flows}`,
    `seconds=${o.seconds}`,
    `size=${o.size ?? 1200}`,
    ...(o.mbps !== undefined ? [`mbps=${o.mbps}`] : []),
    ...(o.window !== undefined ? [`window=${o.window}`] : []),
    ...(o.warmupMs !== undefined ? [`warmup-ms=${o.warmupMs}`] : []),
    ...(o.srcIps !== undefined ? [`src-ips=${o.srcIps}`] : []),
  ];
  const child = procs.spawn("udp-load", argv);
  const code = await child.exited;
  const line = child.lines().find((l) => l.startsWith('{"mode"'));
  if (code !== 0 || !line) throw new Error(`udp-load exited ${code}: ${child.stderr().slice(-800)}`);
  return JSON.parse(line) as UdpLoadResult;
}

export interface TcpSendResult {
  readonly bytes: number;
  readonly helloBytes: number;
  readonly seconds: number;
  readonly sinkCounted: number;
  readonly ok: boolean;
}

/** Sends `hello` then `bytes` through 127.0.0.1:port to the sink; resolves once the sink confirmed the count. */
export async function runTcpSend(
  procs: ProcessSet,
  port: number,
  bytes: number,
  helloHex: string,
): Promise<TcpSendResult> {
  const child = procs.spawn("tcp-send", [tool("tcp-send"), LOOPBACK, String(port), String(bytes), helloHex]);
  const code = await child.exited;
  const line = child.lines().find((l) => l.startsWith('{"bytes"'));
  if (!line) throw new Error(`tcp-send exited ${code}: ${child.stderr().slice(-800)}`);
  const r = JSON.parse(line) as TcpSendResult;
  if (!r.ok)
    throw new Error(
      `tcp-send: the sink counted ${r.sinkCounted} bytes, ${r.bytes + r.helloBytes + 8} were sent`,
    );
  return r;
}
