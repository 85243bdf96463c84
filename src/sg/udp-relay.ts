/**
 * UDP 4172, the media path (SPEC §4, PROTOCOL.md §6.3). Every admitted session owns one UDP socket toward its
 * agent, bound to a source port from `sg.udpSourcePorts` and connected to the agent (so the kernel drops
 * datagrams from anyone else). Which client endpoint belongs to which session is the flow table's decision
 * (flow-table.ts); the agent's replies leave through the listener the client wrote to, toward the client port
 * heard last, so the client sees answers from the address it targeted (NAT-friendly). With the kernel path
 * (`sg.udpFastPath`, kernel/fastpath.ts) nftables carries a flow after its first datagrams.
 *
 * Nothing is guessed from packet contents, and unknown sources are dropped and counted, never answered (an
 * answer to a spoofed source would make the SG an amplifier).
 *
 * Hot path (a flow already bound): two Map lookups, a few number increments, one send — no allocation beyond
 * the Buffer Bun hands us and no logging. Time on that path is a coarse clock advanced by the sweep timer.
 */
import type { udp } from "bun";
import { canonicalIp, ipFamily } from "../net/client-address.ts";
import type { Logger } from "../observability/log.ts";
import { sessionLogger } from "../observability/log.ts";
import type { SessionJournal } from "../observability/session-journal.ts";
import type { Admission, AdmissionEvent, Admissions } from "./admissions.ts";
import { type Flow, FlowTable, type UdpRelayCounters, type UdpSession } from "./flow-table.ts";
import { openKernelPath } from "./kernel/fastpath.ts";
import { createRelayLimits, type RelayLimits } from "./limits.ts";
import { createPortPool, DEFAULT_UDP_SOURCE_PORTS, type PortRange } from "./port-pool.ts";
import { errorText, type ListenAddress, listenFailure, type StartResult } from "./tcp-relay.ts";
import { type UdpDataPath, type UdpPathKind, userspacePath } from "./udp-datapath.ts";

export type { UdpDrop, UdpRelayCounters } from "./flow-table.ts";

/** `sg.udpFastPath`: the kernel path where it can run (auto), always (on, else refuse to start), never (off). */
export type UdpFastPathMode = "auto" | "on" | "off";

export interface UdpRelayOptions {
  readonly listen: readonly ListenAddress[];
  readonly admissions: Admissions;
  readonly log: Logger;
  /** Source ports toward agents, one per session (`sg.udpSourcePorts`). */
  readonly sourcePorts?: PortRange;
  /** Local address the per-session sockets bind to, by agent family (default 0.0.0.0 and ::). */
  readonly sourceHostname?: { readonly v4?: string; readonly v6?: string };
  /** A flow with no datagram either way for this long is torn down (PROTOCOL.md §6.3 `udpIdleSec` 120). */
  readonly idleMs?: number;
  /** With several sessions on one client IP, a new client port may take a flow silent this long (NAT rebinding). */
  readonly rebindMs?: number;
  /** An active session with no UDP from its client IP this long gets a verdict line saying why. */
  readonly verdictMs?: number;
  /** Datagrams held while a session's socket is being opened; more are dropped. */
  readonly openingQueue?: number;
  /** Shared descriptor budget (one per process); built from RLIMIT_NOFILE when omitted. */
  readonly limits?: RelayLimits;
  /** Session progress (first UDP each way) and bytes, for the session verdict and end lines. */
  readonly journal?: SessionJournal;
  readonly now?: () => number;
  /** Timer period for idle expiry, verdicts and kernel counters; derived from idleMs/rebindMs when omitted. */
  readonly sweepEveryMs?: number;
  /** `sg.udpFastPath` (default "off" here; the appliance passes the configured value, default "auto"). */
  readonly fastPath?: UdpFastPathMode;
}

export interface UdpFlowInfo {
  readonly sessionLogId: string;
  readonly client: string;
  readonly sourcePort: number;
  readonly packetsUp: number;
  readonly bytesUp: number;
  readonly packetsDown: number;
  readonly bytesDown: number;
}

export interface UdpRelay {
  readonly ports: readonly number[];
  readonly counters: UdpRelayCounters;
  /** The data path in use: "kernel" (nftables carries admitted media) or "userspace". */
  readonly path: UdpPathKind;
  /** Why this path (for status, /readyz and diagnose). */
  readonly pathReason: string;
  /** Flows the kernel carries now. */
  readonly fastPathFlows: number;
  /** The live flows (admin /sessions); allocates, never call per packet. */
  flows(): UdpFlowInfo[];
  stop(): Promise<void>;
}

type ListenerSocket = udp.Socket<"buffer">;
type SessionSocket = udp.ConnectedSocket<"buffer">;

function isLoopback(hostname: string): boolean {
  const h = hostname.replace(/^\[(.*)\]$/, "$1");
  return h === "::1" || h.startsWith("127.") || h === "localhost";
}

/** The data path for `mode`, or the failure when `on` cannot have the kernel path. */
function chooseDataPath(
  mode: UdpFastPathMode,
  listen: readonly ListenAddress[],
  ports: readonly number[],
  sourcePorts: PortRange,
  log: Logger,
  onCarried: Parameters<typeof openKernelPath>[0]["onCarried"],
): { ok: true; path: UdpDataPath; reason: string } | { ok: false; reason: string } {
  if (mode === "off") return { ok: true, path: userspacePath(), reason: "sg.udpFastPath = off" };
  if (mode === "auto" && listen.every((l) => isLoopback(l.hostname)))
    return {
      ok: true,
      path: userspacePath(),
      reason: "loopback listeners only: no routed media to carry in the kernel",
    };
  const k = openKernelPath({ listenPorts: ports, sourcePorts, log, onCarried });
  if (k.ok) return { ok: true, path: k.path, reason: "nftables table inet pcoip_cmsg" };
  if (mode === "on") return { ok: false, reason: k.reason };
  log.warn(
    { cause: k.reason },
    'sg udp fast path unavailable: the userspace relay carries media (set sg.udpFastPath = "off" to silence this)',
  );
  return { ok: true, path: userspacePath(), reason: k.reason };
}

/**
 * Long on purpose (≈ 390 lines): the listener and per-session socket handlers Bun calls share one closure over the
 * flow table and the data path; split, every piece would take that state as arguments.
 * @example
 * const r = await startUdpRelay({ listen: [{ hostname: "0.0.0.0", port: 4172 }], admissions, log });
 */
export async function startUdpRelay(options: UdpRelayOptions): Promise<StartResult<UdpRelay>> {
  const { admissions, log, journal } = options;
  const now = options.now ?? Date.now;
  const idleMs = options.idleMs ?? 120_000;
  const rebindMs = options.rebindMs ?? 1000;
  const verdictMs = options.verdictMs ?? 30_000;
  const openingQueue = options.openingQueue ?? 32;
  const sweepEveryMs = options.sweepEveryMs ?? Math.max(10, Math.min(1000, idleMs / 4, rebindMs / 4));
  const limits = options.limits ?? createRelayLimits({ log });
  const range = options.sourcePorts ?? DEFAULT_UDP_SOURCE_PORTS;
  const pool = createPortPool(range);
  const bindV4 = options.sourceHostname?.v4 ?? "0.0.0.0";
  const bindV6 = options.sourceHostname?.v6 ?? "::";

  let path: UdpDataPath = userspacePath();
  const table = new FlowTable({
    admissions,
    log,
    rebindMs,
    journal,
    events: {
      // The kernel takes a flow once its session socket holds the source port (the port is ours from then on).
      carry: (flow) => {
        if (flow.session.socket !== undefined) path.carry(flow);
      },
      release: (flow, reason) => path.release(flow, reason),
    },
  });
  const counters = table.counters;
  /** Sessions that got a verdict, or whose UDP arrived (no verdict needed). */
  const settled = new Set<string>();
  /** Active sessions still waiting for their first datagram, as of the last sweep (drop classification). */
  let awaitingUdp = 0;
  /** The last few unknown sources, for the verdict line (a ring written on the drop path without allocating). */
  const unknownAddr: string[] = ["", "", "", ""];
  const unknownAt: number[] = [0, 0, 0, 0];
  let unknownNext = 0;
  table.clock = now();
  let warnWindow = 0;
  let warnsInWindow = 0;

  /** Warnings caused by traffic (not per packet, but possibly per new source) are limited to a few per second. */
  function warnLimited(obj: Record<string, unknown>, msg: string): void {
    if (table.clock - warnWindow >= 1000) {
      warnWindow = table.clock;
      warnsInWindow = 0;
    }
    if (++warnsInWindow <= 5) log.warn(obj, msg);
  }

  function onClientDatagram(listener: ListenerSocket, buf: Buffer, port: number, addr: string): void {
    const fp = table.lookup(addr, port);
    if (fp !== undefined) {
      const s = table.noteUp(fp, listener, buf.length).session;
      if (s.socket !== undefined) sendToAgent(s.socket, buf);
      else holdWhileOpening(s, buf);
      return;
    }
    newEndpoint(listener, buf, port, addr);
  }

  function sendToAgent(socket: { send(b: Uint8Array): boolean }, buf: Uint8Array): void {
    try {
      if (!socket.send(buf)) counters.drops.send_blocked++;
    } catch {
      counters.drops.send_error++;
    }
  }

  function holdWhileOpening(s: UdpSession, buf: Uint8Array): void {
    if (s.queue.length >= openingQueue) counters.drops.opening_queue_full++;
    else s.queue.push(buf);
  }

  function onAgentDatagram(s: UdpSession, buf: Buffer): void {
    const f = table.noteDown(s, buf.length);
    if (f === undefined) return;
    path.sawReply(f);
    try {
      if (!f.listener.send(buf, f.replyPort, f.addr)) counters.drops.send_blocked++;
    } catch {
      counters.drops.send_error++;
    }
  }

  function noteUnknown(addr: string): void {
    const last = (unknownNext + 3) & 3;
    if (unknownAddr[last] === addr) {
      unknownAt[last] = table.clock;
      return;
    }
    unknownAddr[unknownNext] = addr;
    unknownAt[unknownNext] = table.clock;
    unknownNext = (unknownNext + 1) & 3;
  }

  /** The slow path: a datagram from a client endpoint the table does not know (binding rules: flow-table.ts). */
  function newEndpoint(listener: ListenerSocket, buf: Buffer, port: number, addr: string): void {
    table.clock = now();
    const picked = table.pick(canonicalIp(addr));
    if (!picked.ok) {
      if (picked.drop === "no_session") {
        counters.drops[awaitingUdp > 0 ? "client_ip_mismatch" : "no_session"]++;
        noteUnknown(addr);
      } else counters.drops.flow_limit++;
      return;
    }
    const s = table.sessions.get(picked.admission.sessionLogId) ?? openSession(picked.admission);
    if (!s) return;
    table.bind(s, listener, addr, port, buf.length);
    settled.add(s.id);
    if (s.socket !== undefined) sendToAgent(s.socket, buf);
    else holdWhileOpening(s, buf);
  }

  function openSession(adm: Admission): UdpSession | undefined {
    if (!limits.tryTake(1)) {
      counters.drops.relay_limit++;
      warnLimited(
        { sessionId: adm.sessionLogId, maxRelays: limits.maxRelays },
        "sg udp refused: relay cap reached",
      );
      return undefined;
    }
    const port = pool.take();
    if (port === undefined) {
      limits.give(1);
      counters.drops.no_source_port++;
      warnLimited(
        { sessionId: adm.sessionLogId, range: `${range.from}-${range.to}` },
        "sg udp refused: every udpSourcePorts port is in use; widen the range",
      );
      return undefined;
    }
    const s = table.addSession(adm, port);
    // Other software may hold runs of ports inside the range (another relay, a test); skipping costs one bind each.
    bindSessionSocket(s, 64);
    return s;
  }

  function socketOpened(s: UdpSession, sock: SessionSocket): void {
    s.socket = sock;
    // The kernel path first: the agent's answers to the held datagrams must find the flow's elements in place.
    if (s.flow) path.carry(s.flow);
    const q = s.queue;
    s.queue = [];
    // The datagrams held while opening leave in one batch (one syscall path instead of one per datagram).
    if (q.length > 0) {
      try {
        const sent = sock.sendMany(q);
        if (sent < q.length) counters.drops.send_blocked += q.length - sent;
      } catch {
        counters.drops.send_error += q.length;
      }
    }
  }

  /** Binds the session's socket; a port some other process holds is skipped (up to `tries` ports). */
  function bindSessionSocket(s: UdpSession, tries: number): void {
    const hostname = ipFamily(s.admission.agentHost) === 6 ? bindV6 : bindV4;
    // Bun throws some bind errors (EADDRINUSE) synchronously and rejects others: the async wrapper makes both
    // a rejection, handled in one place.
    (async () =>
      Bun.udpSocket({
        hostname,
        port: s.sourcePort,
        connect: { hostname: s.admission.agentHost, port: s.admission.agentUdpPort },
        socket: {
          data: (_sock, buf) => onAgentDatagram(s, buf),
          error: (_sock, err) => {
            // Bun may pass no error object here (ICMP port unreachable from a stopped agent).
            counters.socketErrors++;
            s.log.debug({ err: errorText(err) }, "sg udp agent socket error");
          },
        },
      }))().then(
      (sock) => {
        if (s.closed) {
          sock.close();
          pool.release(s.sourcePort);
          return;
        }
        socketOpened(s, sock);
      },
      (e: unknown) => {
        if (s.closed) {
          pool.release(s.sourcePort);
          return;
        }
        const code = (e as { code?: string } | undefined)?.code;
        const busy = s.sourcePort;
        if (code === "EADDRINUSE" && tries > 1) {
          const next = pool.take();
          pool.release(busy); // round-robin keeps it from coming straight back
          if (next !== undefined) {
            s.sourcePort = next;
            bindSessionSocket(s, tries - 1);
            return;
          }
        }
        s.log.warn(
          {
            sourcePort: busy,
            agent: `${s.admission.agentHost}:${s.admission.agentUdpPort}`,
            cause: errorText(e),
          },
          "sg udp: opening the session socket toward the agent failed",
        );
        counters.drops.send_error += s.queue.length;
        s.queue = [];
        pool.release(busy);
        closeSession(s, "socket_failed");
      },
    );
  }

  function closeSession(s: UdpSession, reason: string): void {
    if (!table.removeSession(s, reason)) return;
    limits.give(1);
    if (s.socket) {
      s.socket.close();
      pool.release(s.sourcePort);
    }
    // A socket still opening is closed and its port released when the bind settles (see bindSessionSocket).
  }

  /** Kernel counters, idle expiry, the coarse clock, and verdicts for sessions whose client sends no UDP. */
  function sweep(): void {
    table.clock = now();
    path.collect();
    for (const s of table.sessions.values()) {
      const f = s.flow;
      if (f && table.clock - Math.max(f.lastUpAt, f.lastDownAt) >= idleMs) closeSession(s, "idle");
    }
    let awaiting = 0;
    for (const a of admissions.list("active")) {
      if (settled.has(a.sessionLogId)) continue;
      awaiting++;
      if (a.activatedAt !== null && table.clock - a.activatedAt >= verdictMs) verdict(a);
    }
    awaitingUdp = awaiting;
  }

  /** The stall verdict of a session whose client sent no UDP: its stage is the one it is stuck at. */
  function verdict(a: Admission): void {
    settled.add(a.sessionLogId);
    const clock = table.clock;
    const others = new Set<string>();
    for (let i = 0; i < 4; i++) {
      if (unknownAddr[i] && unknownAt[i]! >= (a.activatedAt ?? 0)) others.add(canonicalIp(unknownAddr[i]!));
    }
    others.delete(a.clientIp);
    const l = sessionLogger(log, a.sessionLogId);
    if (others.size > 0) {
      l.warn(
        {
          verdict: true,
          stage: "udp-from-client",
          outcome: "stalled",
          clientIp: a.clientIp,
          udpFromOtherIps: [...others],
          waitedMs: clock - (a.activatedAt ?? clock),
        },
        "sg udp verdict: the client's TCP came from its admitted IP but UDP arrived only from other IPs " +
          "(its NAT uses another public address for UDP); the SG does not bind UDP across IPs — " +
          "ask for a NAT that keeps one public IP per client (address pooling 'paired')",
      );
    } else {
      l.warn(
        {
          verdict: true,
          stage: "udp-from-client",
          outcome: "stalled",
          clientIp: a.clientIp,
          waitedMs: clock - (a.activatedAt ?? clock),
        },
        "sg udp verdict: no UDP from the client since its control connection: check that UDP 4172 to the SG " +
          "is open on every firewall between client and SG",
      );
    }
  }

  const listeners: ListenerSocket[] = [];
  for (const addr of options.listen) {
    const hostname = addr.hostname.replace(/^\[(.*)\]$/, "$1");
    try {
      listeners.push(
        await Bun.udpSocket({
          hostname,
          port: addr.port,
          socket: {
            data: onClientDatagram,
            error: (_sock, err) => {
              counters.socketErrors++;
              log.debug({ err: errorText(err) }, "sg udp listener socket error");
            },
          },
        }),
      );
    } catch (e) {
      for (const l of listeners) l.close();
      return { ok: false, error: listenFailure("udp", addr, e) };
    }
  }

  const chosen = chooseDataPath(
    options.fastPath ?? "off",
    options.listen,
    listeners.map((l) => l.port),
    range,
    log,
    (flow: Flow, up, down) => table.addCarried(flow, up, down),
  );
  if (!chosen.ok) {
    for (const l of listeners) l.close();
    return {
      ok: false,
      error: {
        what: "the kernel UDP path (sg.udpFastPath = on)",
        cause: chosen.reason,
        fix: 'install nftables and grant CAP_NET_ADMIN (the unit does), or set sg.udpFastPath = "auto"',
      },
    };
  }
  path = chosen.path;

  const unsubscribe = admissions.subscribe((e: AdmissionEvent) => {
    settled.delete(e.admission.sessionLogId);
    const s = table.sessions.get(e.admission.sessionLogId);
    if (s) {
      table.clock = now();
      closeSession(s, `session_${e.reason}`);
    }
  });
  const timer = setInterval(sweep, sweepEveryMs);
  timer.unref();

  log.info(
    {
      listen: listeners.map((l) => `${l.hostname}:${l.port}`),
      sourcePorts: `${range.from}-${range.to}`,
      idleMs,
      rebindMs,
      path: path.kind,
      pathReason: chosen.reason,
    },
    "sg udp relay listening",
  );

  return {
    ok: true,
    relay: {
      ports: listeners.map((l) => l.port),
      counters,
      path: path.kind,
      pathReason: chosen.reason,
      get fastPathFlows() {
        return path.carriedFlows;
      },
      flows() {
        const out: UdpFlowInfo[] = [];
        for (const s of table.sessions.values()) {
          const f = s.flow;
          if (!f) continue;
          out.push({
            sessionLogId: s.id,
            client: `${f.clientIp}:${f.replyPort}`,
            sourcePort: s.sourcePort,
            packetsUp: f.packetsUp,
            bytesUp: f.bytesUp,
            packetsDown: f.packetsDown,
            bytesDown: f.bytesDown,
          });
        }
        return out;
      },
      async stop() {
        clearInterval(timer);
        unsubscribe();
        table.clock = now();
        path.collect();
        for (const s of [...table.sessions.values()]) closeSession(s, "stopped");
        for (const l of listeners) l.close();
        await path.stop();
      },
    },
  };
}
