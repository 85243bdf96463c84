/**
 * The Security Gateway as the appliance runs it: the admission table (drained by the node's one flag), the TCP and
 * UDP relays over it, its metrics, and the journal's view of its ends. Started once; a reload never rebuilds it
 * (its listeners and table are what the kernel and live sessions hold: their keys need a restart).
 */
import type { Config } from "../config/schema.ts";
import { effectiveListeners, parseListen, parsePortRange } from "../config/schema.ts";
import type { Logger } from "../observability/log.ts";
import {
  counter,
  gauge,
  type MetricsRegistry,
  samplesByDirection,
  samplesByLabel,
} from "../observability/metrics.ts";
import type { SessionJournal } from "../observability/session-journal.ts";
import { type Admissions, createAdmissions } from "../sg/admissions.ts";
import type { RelayLimits } from "../sg/limits.ts";
import { startTcpRelay, type TcpRelay } from "../sg/tcp-relay.ts";
import { startUdpRelay, type UdpRelay } from "../sg/udp-relay.ts";
import type { NodeState } from "./node-state.ts";

export interface SgPlaneDeps {
  readonly log: Logger;
  readonly limits: RelayLimits;
  readonly journal: SessionJournal;
  readonly node: NodeState;
  readonly metrics: MetricsRegistry;
  readonly now?: () => number;
}

export interface SgPlane {
  readonly admissions: Admissions;
  readonly tcpRelay: TcpRelay;
  readonly udpRelay: UdpRelay;
  /** "host:port" of every listener (port 0 in config → the real port). */
  readonly bound: { readonly tcp: readonly string[]; readonly udp: readonly string[] };
  stop(): Promise<void>;
}

export interface SgProblem {
  readonly what: string;
  readonly cause: string;
  readonly fix: string;
}

export async function startSgPlane(
  config: Readonly<Config>,
  deps: SgPlaneDeps,
): Promise<{ ok: true; plane: SgPlane } | { ok: false; error: SgProblem }> {
  const { log, limits, journal } = deps;
  const stops: (() => Promise<void> | void)[] = [];
  const stopAll = async () => {
    for (const s of stops.reverse()) await s();
    stops.length = 0;
  };
  const fail = async (error: SgProblem) => {
    await stopAll();
    return { ok: false as const, error };
  };
  const tcp: string[] = [];
  const udp: string[] = [];
  const admissions = createAdmissions({
    pendingTtlMs: config.sg.pendingTtlSeconds * 1000,
    reconnectGraceMs: config.sg.reconnectGraceSeconds * 1000,
    maxSessions: config.sg.maxSessions,
    maxPerClientIp: config.sg.maxSessionsPerClientIp,
    drain: deps.node,
    ...(deps.now ? { now: deps.now } : {}),
  });
  stops.push(() => admissions.close());
  // A replaced admission is the same session allocating again (same id): it goes on, so no end line yet.
  const unsubscribeJournal = admissions.subscribe((e) => {
    if (e.reason !== "replaced") journal.sgEnded(e.admission.sessionLogId, e.reason);
  });
  stops.push(unsubscribeJournal);
  const tcpListen = listenAddresses(effectiveListeners(config.sg.tcpListen, config.enableIpv6));
  const t = await startTcpRelay({
    listen: tcpListen,
    admissions,
    log,
    handshakeTimeoutMs: config.sg.handshakeTimeoutSeconds * 1000,
    maxConnectionsPerSession: config.sg.maxConnectionsPerSession,
    limits,
    journal,
  });
  if (!t.ok) return fail(t.error);
  stops.push(() => t.relay.stop());
  tcp.push(...tcpListen.map((a, i) => hostPort(a.hostname, t.relay.ports[i] ?? a.port)));
  const udpListen = listenAddresses(effectiveListeners(config.sg.udpListen, config.enableIpv6));
  const u = await startUdpRelay({
    listen: udpListen,
    admissions,
    log,
    sourcePorts: parsePortRange(config.sg.udpSourcePorts),
    idleMs: config.sg.udpIdleSeconds * 1000,
    rebindMs: config.sg.udpRebindSeconds * 1000,
    fastPath: config.sg.udpFastPath,
    limits,
    journal,
    ...(deps.now ? { now: deps.now } : {}),
  });
  if (!u.ok) return fail(u.error);
  stops.push(() => u.relay.stop());
  udp.push(...udpListen.map((a, i) => hostPort(a.hostname, u.relay.ports[i] ?? a.port)));
  registerSgMetrics(deps.metrics, admissions, t.relay, u.relay);
  return {
    ok: true,
    plane: { admissions, tcpRelay: t.relay, udpRelay: u.relay, bound: { tcp, udp }, stop: stopAll },
  };
}

function listenAddresses(list: readonly string[]) {
  return list.map((e) => parseListen(e)!);
}

function hostPort(hostname: string, port: number): string {
  return hostname.includes(":") ? `[${hostname}]:${port}` : `${hostname}:${port}`;
}

function registerSgMetrics(
  metrics: MetricsRegistry,
  admissions: Admissions,
  tcp: TcpRelay,
  udp: UdpRelay,
): void {
  metrics.add(() => {
    const a = admissions.counters;
    const t = tcp.counters;
    const u = udp.counters;
    const byState = { pending: 0, active: 0, ended: 0 };
    for (const rec of admissions.list()) byState[rec.state]++;
    return [
      gauge("pcoip_sg_sessions", "SG sessions by state.", samplesByLabel("state", byState)),
      counter("pcoip_sg_admissions_total", "Sessions admitted by the CM.", [{ value: a.admitted }]),
      counter(
        "pcoip_sg_admission_refusals_total",
        "Admissions refused, by reason.",
        samplesByLabel("reason", a.refused),
      ),
      counter("pcoip_sg_tcp_accepted_total", "Control connections accepted on 4172.", [
        { value: t.accepted },
      ]),
      gauge("pcoip_sg_tcp_relays_open", "TCP relays open now.", [{ value: t.active }]),
      counter(
        "pcoip_sg_tcp_denials_total",
        "Control connections refused, by reason.",
        samplesByLabel("reason", t.refused),
      ),
      counter(
        "pcoip_sg_tcp_bytes_total",
        "Bytes relayed on TCP 4172.",
        samplesByDirection(t.bytesToAgent, t.bytesToClient),
      ),
      counter(
        "pcoip_sg_udp_packets_total",
        "UDP datagrams relayed.",
        samplesByDirection(u.packetsUp, u.packetsDown),
      ),
      counter("pcoip_sg_udp_bytes_total", "UDP bytes relayed.", samplesByDirection(u.bytesUp, u.bytesDown)),
      gauge("pcoip_sg_udp_flows_open", "UDP session sockets open now.", [{ value: u.sessionsOpen }]),
      gauge(
        "pcoip_sg_udp_path",
        "The UDP data path in use (1 for the active one): kernel (nftables) or userspace.",
        (["kernel", "userspace"] as const).map((path) => ({
          labels: { path },
          value: udp.path === path ? 1 : 0,
        })),
      ),
      gauge("pcoip_sg_udp_fastpath_flows", "UDP flows the kernel carries now.", [
        { value: udp.fastPathFlows },
      ]),
      counter(
        "pcoip_sg_udp_drops_total",
        "UDP datagrams dropped, by reason.",
        samplesByLabel("reason", u.drops),
      ),
    ];
  });
}
