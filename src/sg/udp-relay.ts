/**
 * UDP 4172, the media path (SPEC §4, PROTOCOL.md §6.3). Every admitted session owns one UDP socket toward its
 * agent, bound to a source port from `sg.udpSourcePorts` and connected to the agent (so the kernel drops
 * datagrams from anyone else). A client flow (IP, port) binds to the one active session of that IP that has no
 * live flow; the agent's replies come back on the session's socket and leave through the 4172 listener the
 * client wrote to, so the client sees answers from the address it targeted (NAT-friendly).
 *
 * Nothing is guessed from packet contents, and unknown sources are dropped and counted, never answered (an
 * answer to a spoofed source would make the SG an amplifier).
 *
 * Hot path (a flow already bound): two Map lookups, a few number increments, one send — no allocation beyond
 * the Buffer Bun hands us and no logging. Time on that path is a coarse clock advanced by the sweep timer.
 */
import type { udp } from "bun";
import { canonicalIp, ipFamily } from "../net/client-address.ts";
import { type Logger, sessionLogger } from "../observability/log.ts";
import type { SessionJournal } from "../observability/session-journal.ts";
import type { Admission, AdmissionEvent, Admissions } from "./admissions.ts";
import { createRelayLimits, type RelayLimits } from "./limits.ts";
import { createPortPool, DEFAULT_UDP_SOURCE_PORTS, type PortRange } from "./port-pool.ts";
import { errorText, type ListenAddress, listenFailure, type StartResult } from "./tcp-relay.ts";

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
  /** A flow silent from the client for this long may be replaced by a new client port (NAT rebinding). */
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
  /** Timer period for idle expiry and verdicts; derived from idleMs/rebindMs when omitted. */
  readonly sweepEveryMs?: number;
}

export type UdpDrop =
  /** the source IP has no active session */
  | "no_session"
  /** the source IP has no session while some active session still waits for its first datagram: the client's
   *  UDP probably leaves its NAT from another public IP than its TCP (see the verdict line) */
  | "client_ip_mismatch"
  /** every active session of the source IP already has a live flow */
  | "flow_limit"
  /** the descriptor budget is spent */
  | "relay_limit"
  /** every port of udpSourcePorts is in use */
  | "no_source_port"
  /** too many datagrams arrived while the session's socket was still opening */
  | "opening_queue_full"
  /** the kernel's socket buffer was full (send returned false) */
  | "send_blocked"
  /** send threw (socket closed, address unusable) */
  | "send_error"
  /** an agent datagram arrived for a session whose flow had just ended */
  | "no_flow";

export interface UdpRelayCounters {
  packetsUp: number;
  bytesUp: number;
  packetsDown: number;
  bytesDown: number;
  flowsBound: number;
  flowsRebound: number;
  flowsClosed: number;
  /** Session sockets open now. */
  sessionsOpen: number;
  /** `error` events on any socket (ICMP unreachable and the like). */
  socketErrors: number;
  drops: Record<UdpDrop, number>;
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
  /** The live flows (admin /sessions); allocates, never call per packet. */
  flows(): UdpFlowInfo[];
  stop(): Promise<void>;
}

type ListenerSocket = udp.Socket<"buffer">;
type SessionSocket = udp.ConnectedSocket<"buffer">;

interface Flow {
  readonly session: UdpSession;
  readonly listener: ListenerSocket;
  /** The address as the listener reported it (`::ffff:` form on a `[::]` listener): the key and reply target. */
  readonly addr: string;
  readonly port: number;
  readonly clientIp: string;
  readonly boundAt: number;
  lastUpAt: number;
  lastDownAt: number;
  packetsUp: number;
  bytesUp: number;
  packetsDown: number;
  bytesDown: number;
}

interface UdpSession {
  readonly id: string;
  readonly admission: Admission;
  readonly log: Logger;
  sourcePort: number;
  socket: SessionSocket | undefined;
  /** Datagrams that arrived before the socket was open (copies: Bun's buffers are ours, but keep it explicit). */
  queue: Uint8Array[];
  flow: Flow | undefined;
  closed: boolean;
}

/**
 * @example
 * const r = await startUdpRelay({ listen: [{ hostname: "0.0.0.0", port: 4172 }], admissions, log });
 */
export async function startUdpRelay(options: UdpRelayOptions): Promise<StartResult<UdpRelay>> {
  const { admissions, log, journal } = options;
  const now = options.now ?? Date.now;
  const idleMs = options.idleMs ?? 120_000;
  const rebindMs = options.rebindMs ?? 10_000;
  const verdictMs = options.verdictMs ?? 30_000;
  const openingQueue = options.openingQueue ?? 32;
  const sweepEveryMs = options.sweepEveryMs ?? Math.max(10, Math.min(1000, idleMs / 4, rebindMs / 4));
  const limits = options.limits ?? createRelayLimits({ log });
  const range = options.sourcePorts ?? DEFAULT_UDP_SOURCE_PORTS;
  const pool = createPortPool(range);
  const bindV4 = options.sourceHostname?.v4 ?? "0.0.0.0";
  const bindV6 = options.sourceHostname?.v6 ?? "::";

  const counters: UdpRelayCounters = {
    packetsUp: 0,
    bytesUp: 0,
    packetsDown: 0,
    bytesDown: 0,
    flowsBound: 0,
    flowsRebound: 0,
    flowsClosed: 0,
    sessionsOpen: 0,
    socketErrors: 0,
    drops: {
      no_session: 0,
      client_ip_mismatch: 0,
      flow_limit: 0,
      relay_limit: 0,
      no_source_port: 0,
      opening_queue_full: 0,
      send_blocked: 0,
      send_error: 0,
      no_flow: 0,
    },
  };

  /** raw client address → client port → flow. Two levels so the hot path builds no key string. */
  const flowsByAddr = new Map<string, Map<number, Flow>>();
  const sessions = new Map<string, UdpSession>();
  /** Sessions that got a verdict, or whose UDP arrived (no verdict needed). */
  const settled = new Set<string>();
  /** Active sessions still waiting for their first datagram, as of the last sweep (drop classification). */
  let awaitingUdp = 0;
  /** The last few unknown sources, for the verdict line (a ring written on the drop path without allocating). */
  const unknownAddr: string[] = ["", "", "", ""];
  const unknownAt: number[] = [0, 0, 0, 0];
  let unknownNext = 0;
  /** Coarse clock for the hot path; advanced by the sweep and by every slow path. */
  let clock = now();
  let warnWindow = 0;
  let warnsInWindow = 0;

  /** Warnings caused by traffic (not per packet, but possibly per new source) are limited to a few per second. */
  function warnLimited(obj: Record<string, unknown>, msg: string): void {
    if (clock - warnWindow >= 1000) {
      warnWindow = clock;
      warnsInWindow = 0;
    }
    if (++warnsInWindow <= 5) log.warn(obj, msg);
  }

  function onClientDatagram(listener: ListenerSocket, buf: Buffer, port: number, addr: string): void {
    const flow = flowsByAddr.get(addr)?.get(port);
    if (flow !== undefined) {
      const s = flow.session;
      flow.lastUpAt = clock;
      flow.packetsUp++;
      flow.bytesUp += buf.length;
      counters.packetsUp++;
      counters.bytesUp += buf.length;
      if (s.socket !== undefined) sendToAgent(s.socket, buf);
      else holdWhileOpening(s, buf);
      return;
    }
    newFlow(listener, buf, port, addr);
  }

  function sendToAgent(socket: SessionSocket, buf: Buffer): void {
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
    const f = s.flow;
    if (f === undefined) {
      counters.drops.no_flow++;
      return;
    }
    f.lastDownAt = clock;
    // The first datagram back is a session milestone (media flows both ways); later ones cost one compare.
    if (++f.packetsDown === 1) journal?.reached(s.id, "udp-from-agent");
    f.bytesDown += buf.length;
    counters.packetsDown++;
    counters.bytesDown += buf.length;
    try {
      if (!f.listener.send(buf, f.port, f.addr)) counters.drops.send_blocked++;
    } catch {
      counters.drops.send_error++;
    }
  }

  function noteUnknown(addr: string): void {
    const last = (unknownNext + 3) & 3;
    if (unknownAddr[last] === addr) {
      unknownAt[last] = clock;
      return;
    }
    unknownAddr[unknownNext] = addr;
    unknownAt[unknownNext] = clock;
    unknownNext = (unknownNext + 1) & 3;
  }

  /**
   * The slow path: a datagram from an endpoint with no flow. It binds to the most recently activated active
   * session of its IP that has no flow, or whose flow has been silent from the client for `rebindMs` (the
   * client's NAT moved it to another port). Anything else is dropped and counted.
   */
  function newFlow(listener: ListenerSocket, buf: Buffer, port: number, addr: string): void {
    clock = now();
    const clientIp = canonicalIp(addr);
    // One pass over the IP's sessions (admissions.pickUdp), not a sorted copy of them: this path runs for every
    // datagram from an unknown port, and one NAT can hold thousands of sessions.
    const { chosen, activeSeen } = admissions.pickUdp(clientIp, (id) => {
      const f = sessions.get(id)?.flow;
      return f === undefined || clock - f.lastUpAt >= rebindMs;
    });
    if (!activeSeen) {
      counters.drops[awaitingUdp > 0 ? "client_ip_mismatch" : "no_session"]++;
      noteUnknown(addr);
      return;
    }
    if (!chosen) {
      counters.drops.flow_limit++;
      return;
    }
    let s = sessions.get(chosen.sessionLogId);
    if (!s) {
      s = openSession(chosen);
      if (!s) return;
    }
    const old = s.flow;
    if (old) {
      endFlow(old, "rebound");
      counters.flowsRebound++;
    }
    const flow: Flow = {
      session: s,
      listener,
      addr,
      port,
      clientIp,
      boundAt: clock,
      lastUpAt: clock,
      lastDownAt: clock,
      packetsUp: 1,
      bytesUp: buf.length,
      packetsDown: 0,
      bytesDown: 0,
    };
    s.flow = flow;
    const byPort = flowsByAddr.get(addr);
    if (byPort) byPort.set(port, flow);
    else flowsByAddr.set(addr, new Map([[port, flow]]));
    settled.add(s.id);
    journal?.reached(s.id, "udp-from-client");
    counters.flowsBound++;
    counters.packetsUp++;
    counters.bytesUp += buf.length;
    s.log.info(
      {
        client: `${clientIp}:${port}`,
        sourcePort: s.sourcePort,
        agent: `${s.admission.agentHost}:${s.admission.agentUdpPort}`,
        rebound: old !== undefined,
      },
      "sg udp flow bound",
    );
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
    const s: UdpSession = {
      id: adm.sessionLogId,
      admission: adm,
      log: sessionLogger(log, adm.sessionLogId),
      sourcePort: port,
      socket: undefined,
      queue: [],
      flow: undefined,
      closed: false,
    };
    sessions.set(s.id, s);
    counters.sessionsOpen++;
    // Other software may hold runs of ports inside the range (another relay, a test); skipping costs one bind each.
    bindSessionSocket(s, 64);
    return s;
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
        s.socket = sock;
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

  function endFlow(f: Flow, reason: string): void {
    const byPort = flowsByAddr.get(f.addr);
    if (byPort?.get(f.port) === f) {
      byPort.delete(f.port);
      if (byPort.size === 0) flowsByAddr.delete(f.addr);
    }
    if (f.session.flow === f) f.session.flow = undefined;
    counters.flowsClosed++;
    journal?.traffic(f.session.id, {
      bytesFromClient: f.bytesUp,
      bytesToClient: f.bytesDown,
      packetsFromClient: f.packetsUp,
      packetsToClient: f.packetsDown,
    });
    f.session.log.info(
      {
        client: `${f.clientIp}:${f.port}`,
        sourcePort: f.session.sourcePort,
        reason,
        durationMs: clock - f.boundAt,
        packetsUp: f.packetsUp,
        bytesUp: f.bytesUp,
        packetsDown: f.packetsDown,
        bytesDown: f.bytesDown,
      },
      "sg udp flow closed",
    );
  }

  function closeSession(s: UdpSession, reason: string): void {
    if (s.closed) return;
    s.closed = true;
    if (s.flow) endFlow(s.flow, reason);
    sessions.delete(s.id);
    counters.sessionsOpen--;
    limits.give(1);
    if (s.socket) {
      s.socket.close();
      pool.release(s.sourcePort);
    }
    // A socket still opening is closed and its port released when the bind settles (see bindSessionSocket).
  }

  /** Idle expiry, the coarse clock, and verdicts for sessions whose client sends no UDP from its own IP. */
  function sweep(): void {
    clock = now();
    for (const s of sessions.values()) {
      const f = s.flow;
      if (f && clock - Math.max(f.lastUpAt, f.lastDownAt) >= idleMs) closeSession(s, "idle");
    }
    let awaiting = 0;
    for (const a of admissions.list()) {
      if (a.state !== "active" || settled.has(a.sessionLogId)) continue;
      awaiting++;
      if (a.activatedAt !== null && clock - a.activatedAt >= verdictMs) verdict(a);
    }
    awaitingUdp = awaiting;
  }

  function verdict(a: Admission): void {
    settled.add(a.sessionLogId);
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
          stage: "sg-tcp",
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
          stage: "sg-tcp",
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

  const unsubscribe = admissions.subscribe((e: AdmissionEvent) => {
    settled.delete(e.admission.sessionLogId);
    const s = sessions.get(e.admission.sessionLogId);
    if (s) closeSession(s, `session_${e.reason}`);
  });
  const timer = setInterval(sweep, sweepEveryMs);
  timer.unref();

  log.info(
    {
      listen: listeners.map((l) => `${l.hostname}:${l.port}`),
      sourcePorts: `${range.from}-${range.to}`,
      idleMs,
      rebindMs,
    },
    "sg udp relay listening",
  );

  return {
    ok: true,
    relay: {
      ports: listeners.map((l) => l.port),
      counters,
      flows() {
        const out: UdpFlowInfo[] = [];
        for (const s of sessions.values()) {
          const f = s.flow;
          if (!f) continue;
          out.push({
            sessionLogId: s.id,
            client: `${f.clientIp}:${f.port}`,
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
        clock = now();
        for (const s of [...sessions.values()]) closeSession(s, "stopped");
        for (const l of listeners) l.close();
      },
    },
  };
}
