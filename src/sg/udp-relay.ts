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

/** The last few sources dropped as unknown, for the verdict line (a ring written on the drop path, no allocation). */
class RecentUnknownSources {
  private readonly addr = ["", "", "", ""];
  private readonly at = [0, 0, 0, 0];
  private next = 0;

  note(addr: string, clock: number): void {
    const last = (this.next + 3) & 3;
    if (this.addr[last] === addr) {
      this.at[last] = clock;
      return;
    }
    this.addr[this.next] = addr;
    this.at[this.next] = clock;
    this.next = (this.next + 1) & 3;
  }

  /** Canonical IPs seen since `since`. */
  since(since: number): Set<string> {
    const out = new Set<string>();
    for (let i = 0; i < 4; i++) if (this.addr[i] && this.at[i]! >= since) out.add(canonicalIp(this.addr[i]!));
    return out;
  }
}

/** The stall verdict (its stage is the one it is stuck at) for an active session whose client sent no UDP from its admitted IP within verdictMs. */
function logVerdict(log: Logger, a: Admission, otherIps: Set<string>, clock: number): void {
  otherIps.delete(a.clientIp);
  const l = sessionLogger(log, a.sessionLogId);
  const base = {
    verdict: true,
    stage: "udp-from-client",
    outcome: "stalled",
    clientIp: a.clientIp,
    waitedMs: clock - (a.activatedAt ?? clock),
  };
  if (otherIps.size > 0)
    l.warn(
      { ...base, udpFromOtherIps: [...otherIps] },
      "sg udp verdict: the client's TCP came from its admitted IP but UDP arrived only from other IPs " +
        "(its NAT uses another public address for UDP); the SG does not bind UDP across IPs — " +
        "ask for a NAT that keeps one public IP per client (address pooling 'paired')",
    );
  else
    l.warn(
      base,
      "sg udp verdict: no UDP from the client since its control connection: check that UDP 4172 to the SG " +
        "is open on every firewall between client and SG",
    );
}

interface RelaySettings {
  readonly idleMs: number;
  readonly rebindMs: number;
  readonly verdictMs: number;
  readonly openingQueue: number;
  readonly sweepEveryMs: number;
  readonly range: PortRange;
  readonly bindV4: string;
  readonly bindV6: string;
  readonly now: () => number;
}

function settingsOf(o: UdpRelayOptions): RelaySettings {
  const idleMs = o.idleMs ?? 120_000;
  const rebindMs = o.rebindMs ?? 1000;
  return {
    idleMs,
    rebindMs,
    verdictMs: o.verdictMs ?? 30_000,
    openingQueue: o.openingQueue ?? 32,
    sweepEveryMs: o.sweepEveryMs ?? Math.max(10, Math.min(1000, idleMs / 4, rebindMs / 4)),
    range: o.sourcePorts ?? DEFAULT_UDP_SOURCE_PORTS,
    bindV4: o.sourceHostname?.v4 ?? "0.0.0.0",
    bindV6: o.sourceHostname?.v6 ?? "::",
    now: o.now ?? Date.now,
  };
}

/**
 * The relay: the listeners, one socket per session toward its agent, and the sweep. The flow table decides which
 * session a datagram belongs to; the data path (userspace or kernel) carries what the table bound.
 */
class UdpRelayImpl implements UdpRelay {
  readonly table: FlowTable;
  readonly counters: UdpRelayCounters;
  dataPath: UdpDataPath = userspacePath();
  pathReason = "";
  readonly listeners: ListenerSocket[] = [];
  private readonly pool: ReturnType<typeof createPortPool>;
  /** Sessions that got a verdict, or whose UDP arrived (no verdict needed). */
  private readonly settled = new Set<string>();
  /** Active sessions still waiting for their first datagram, as of the last sweep (drop classification). */
  private awaitingUdp = 0;
  private readonly unknown = new RecentUnknownSources();
  private warnWindow = 0;
  private warnsInWindow = 0;
  private timer: ReturnType<typeof setInterval> | undefined;
  private unsubscribe: (() => void) | undefined;

  constructor(
    private readonly o: UdpRelayOptions,
    private readonly s: RelaySettings,
    private readonly limits: RelayLimits,
  ) {
    this.pool = createPortPool(s.range);
    this.table = new FlowTable({
      admissions: o.admissions,
      log: o.log,
      rebindMs: s.rebindMs,
      journal: o.journal,
      events: {
        // The kernel takes a flow once its session socket holds the source port (the port is ours from then on).
        carry: (flow) => {
          if (flow.session.socket !== undefined) this.dataPath.carry(flow);
        },
        release: (flow, reason) => this.dataPath.release(flow, reason),
      },
    });
    this.counters = this.table.counters;
    this.table.clock = s.now();
  }

  get ports(): readonly number[] {
    return this.listeners.map((l) => l.port);
  }
  get path(): UdpPathKind {
    return this.dataPath.kind;
  }
  get fastPathFlows(): number {
    return this.dataPath.carriedFlows;
  }

  /** Hot path: a known client endpoint costs two Map lookups, a few increments and one send. */
  readonly onClientDatagram = (listener: ListenerSocket, buf: Buffer, port: number, addr: string): void => {
    const fp = this.table.lookup(addr, port);
    if (fp === undefined) {
      this.newEndpoint(listener, buf, port, addr);
      return;
    }
    const session = this.table.noteUp(fp, listener, buf.length).session;
    if (session.socket !== undefined) this.sendToAgent(session.socket, buf);
    else this.holdWhileOpening(session, buf);
  };

  private sendToAgent(socket: { send(b: Uint8Array): boolean }, buf: Uint8Array): void {
    try {
      if (!socket.send(buf)) this.counters.drops.send_blocked++;
    } catch {
      this.counters.drops.send_error++;
    }
  }

  private holdWhileOpening(session: UdpSession, buf: Uint8Array): void {
    if (session.queue.length >= this.s.openingQueue) this.counters.drops.opening_queue_full++;
    else session.queue.push(buf);
  }

  private onAgentDatagram(session: UdpSession, buf: Buffer): void {
    const f = this.table.noteDown(session, buf.length);
    if (f === undefined) return;
    this.dataPath.sawReply(f);
    try {
      if (!f.listener.send(buf, f.replyPort, f.addr)) this.counters.drops.send_blocked++;
    } catch {
      this.counters.drops.send_error++;
    }
  }

  /** Warnings caused by traffic (not per packet, but possibly per new source) are limited to a few per second. */
  private warnLimited(obj: Record<string, unknown>, msg: string): void {
    const clock = this.table.clock;
    if (clock - this.warnWindow >= 1000) {
      this.warnWindow = clock;
      this.warnsInWindow = 0;
    }
    if (++this.warnsInWindow <= 5) this.o.log.warn(obj, msg);
  }

  /** The slow path: a datagram from a client endpoint the table does not know (binding rules: flow-table.ts). */
  private newEndpoint(listener: ListenerSocket, buf: Buffer, port: number, addr: string): void {
    const table = this.table;
    table.clock = this.s.now();
    const picked = table.pick(canonicalIp(addr));
    if (!picked.ok) {
      if (picked.drop === "no_session") {
        this.counters.drops[this.awaitingUdp > 0 ? "client_ip_mismatch" : "no_session"]++;
        this.unknown.note(addr, table.clock);
      } else this.counters.drops.flow_limit++;
      return;
    }
    const session = table.sessions.get(picked.admission.sessionLogId) ?? this.openSession(picked.admission);
    if (!session) return;
    table.bind(session, listener, addr, port, buf.length);
    this.settled.add(session.id);
    if (session.socket !== undefined) this.sendToAgent(session.socket, buf);
    else this.holdWhileOpening(session, buf);
  }

  private openSession(adm: Admission): UdpSession | undefined {
    if (!this.limits.tryTake(1)) {
      this.counters.drops.relay_limit++;
      this.warnLimited(
        { sessionId: adm.sessionLogId, maxRelays: this.limits.maxRelays },
        "sg udp refused: relay cap reached",
      );
      return undefined;
    }
    const port = this.pool.take();
    if (port === undefined) {
      this.limits.give(1);
      this.counters.drops.no_source_port++;
      this.warnLimited(
        { sessionId: adm.sessionLogId, range: `${this.s.range.from}-${this.s.range.to}` },
        "sg udp refused: every udpSourcePorts port is in use; widen the range",
      );
      return undefined;
    }
    const session = this.table.addSession(adm, port);
    // Other software may hold runs of ports inside the range (another relay, a test); skipping costs one bind each.
    this.bindSessionSocket(session, 64);
    return session;
  }

  private socketOpened(session: UdpSession, sock: SessionSocket): void {
    session.socket = sock;
    // The kernel path first: the agent's answers to the held datagrams must find the flow's elements in place.
    if (session.flow) this.dataPath.carry(session.flow);
    const q = session.queue;
    session.queue = [];
    // The datagrams held while opening leave in one batch (one syscall path instead of one per datagram).
    if (q.length === 0) return;
    try {
      const sent = sock.sendMany(q);
      if (sent < q.length) this.counters.drops.send_blocked += q.length - sent;
    } catch {
      this.counters.drops.send_error += q.length;
    }
  }

  /** Binds the session's socket; a port some other process holds is skipped (up to `tries` ports). */
  private bindSessionSocket(session: UdpSession, tries: number): void {
    const a = session.admission;
    const hostname = ipFamily(a.agentHost) === 6 ? this.s.bindV6 : this.s.bindV4;
    // Bun throws some bind errors (EADDRINUSE) synchronously and rejects others: the async wrapper makes both
    // a rejection, handled in one place.
    (async () =>
      Bun.udpSocket({
        hostname,
        port: session.sourcePort,
        connect: { hostname: a.agentHost, port: a.agentUdpPort },
        socket: {
          data: (_sock, buf) => this.onAgentDatagram(session, buf),
          error: (_sock, err) => {
            // Bun may pass no error object here (ICMP port unreachable from a stopped agent).
            this.counters.socketErrors++;
            session.log.debug({ err: errorText(err) }, "sg udp agent socket error");
          },
        },
      }))().then(
      (sock) => {
        if (session.closed) {
          sock.close();
          this.pool.release(session.sourcePort);
          return;
        }
        this.socketOpened(session, sock);
      },
      (e: unknown) => this.bindFailed(session, tries, e),
    );
  }

  private bindFailed(session: UdpSession, tries: number, e: unknown): void {
    if (session.closed) {
      this.pool.release(session.sourcePort);
      return;
    }
    const code = (e as { code?: string } | undefined)?.code;
    const busy = session.sourcePort;
    if (code === "EADDRINUSE" && tries > 1) {
      const next = this.pool.take();
      this.pool.release(busy); // round-robin keeps it from coming straight back
      if (next !== undefined) {
        session.sourcePort = next;
        this.bindSessionSocket(session, tries - 1);
        return;
      }
    }
    session.log.warn(
      {
        sourcePort: busy,
        agent: `${session.admission.agentHost}:${session.admission.agentUdpPort}`,
        cause: errorText(e),
      },
      "sg udp: opening the session socket toward the agent failed",
    );
    this.counters.drops.send_error += session.queue.length;
    session.queue = [];
    this.pool.release(busy);
    this.closeSession(session, "socket_failed");
  }

  private closeSession(session: UdpSession, reason: string): void {
    if (!this.table.removeSession(session, reason)) return;
    this.limits.give(1);
    if (session.socket) {
      session.socket.close();
      this.pool.release(session.sourcePort);
    }
    // A socket still opening is closed and its port released when the bind settles (see bindSessionSocket).
  }

  /** Kernel counters, idle expiry, the coarse clock, and verdicts for sessions whose client sends no UDP. */
  private readonly sweep = (): void => {
    const table = this.table;
    table.clock = this.s.now();
    this.dataPath.collect();
    for (const session of table.sessions.values()) {
      const f = session.flow;
      if (f && table.clock - Math.max(f.lastUpAt, f.lastDownAt) >= this.s.idleMs)
        this.closeSession(session, "idle");
    }
    let awaiting = 0;
    // Only the active records are copied (issue 21: the pending ones of 500 logins/s made this 4.2 ms a sweep).
    for (const a of this.o.admissions.list("active")) {
      if (this.settled.has(a.sessionLogId)) continue;
      awaiting++;
      if (a.activatedAt !== null && table.clock - a.activatedAt >= this.s.verdictMs) {
        this.settled.add(a.sessionLogId);
        logVerdict(this.o.log, a, this.unknown.since(a.activatedAt), table.clock);
      }
    }
    this.awaitingUdp = awaiting;
  };

  /** Subscribes to admission removals and starts the sweep. */
  start(): void {
    this.unsubscribe = this.o.admissions.subscribe((e: AdmissionEvent) => {
      this.settled.delete(e.admission.sessionLogId);
      const session = this.table.sessions.get(e.admission.sessionLogId);
      if (session) {
        this.table.clock = this.s.now();
        this.closeSession(session, `session_${e.reason}`);
      }
    });
    this.timer = setInterval(this.sweep, this.s.sweepEveryMs);
    this.timer.unref();
  }

  flows(): UdpFlowInfo[] {
    const out: UdpFlowInfo[] = [];
    for (const session of this.table.sessions.values()) {
      const f = session.flow;
      if (!f) continue;
      out.push({
        sessionLogId: session.id,
        client: `${f.clientIp}:${f.replyPort}`,
        sourcePort: session.sourcePort,
        packetsUp: f.packetsUp,
        bytesUp: f.bytesUp,
        packetsDown: f.packetsDown,
        bytesDown: f.bytesDown,
      });
    }
    return out;
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    this.unsubscribe?.();
    this.table.clock = this.s.now();
    // The data path stops first (its last counts reach the flows), so closing each session costs no kernel call.
    await this.dataPath.stop();
    for (const session of [...this.table.sessions.values()]) this.closeSession(session, "stopped");
    for (const l of this.listeners) l.close();
  }
}

/**
 * @example
 * const r = await startUdpRelay({ listen: [{ hostname: "0.0.0.0", port: 4172 }], admissions, log });
 */
export async function startUdpRelay(options: UdpRelayOptions): Promise<StartResult<UdpRelay>> {
  const { log } = options;
  const s = settingsOf(options);
  const relay = new UdpRelayImpl(options, s, options.limits ?? createRelayLimits({ log }));
  for (const addr of options.listen) {
    const hostname = addr.hostname.replace(/^\[(.*)\]$/, "$1");
    try {
      relay.listeners.push(
        await Bun.udpSocket({
          hostname,
          port: addr.port,
          socket: {
            data: relay.onClientDatagram,
            error: (_sock, err) => {
              relay.counters.socketErrors++;
              log.debug({ err: errorText(err) }, "sg udp listener socket error");
            },
          },
        }),
      );
    } catch (e) {
      for (const l of relay.listeners) l.close();
      return { ok: false, error: listenFailure("udp", addr, e) };
    }
  }
  const chosen = chooseDataPath(
    options.fastPath ?? "off",
    options.listen,
    relay.ports,
    s.range,
    log,
    (flow: Flow, up, down) => relay.table.addCarried(flow, up, down),
  );
  if (!chosen.ok) {
    for (const l of relay.listeners) l.close();
    return {
      ok: false,
      error: {
        what: "the kernel UDP path (sg.udpFastPath = on)",
        cause: chosen.reason,
        fix: 'install nftables and grant CAP_NET_ADMIN (the unit does), or set sg.udpFastPath = "auto"',
      },
    };
  }
  relay.dataPath = chosen.path;
  relay.pathReason = chosen.reason;
  relay.start();
  log.info(
    {
      listen: relay.listeners.map((l) => `${l.hostname}:${l.port}`),
      sourcePorts: `${s.range.from}-${s.range.to}`,
      idleMs: s.idleMs,
      rebindMs: s.rebindMs,
      path: chosen.path.kind,
      pathReason: chosen.reason,
    },
    "sg udp relay listening",
  );
  return { ok: true, relay };
}
