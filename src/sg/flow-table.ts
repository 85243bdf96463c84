/**
 * The UDP relay's state (SPEC §4, PROTOCOL.md §6.3): sessions (one per admission that sent media, each with its
 * own source port toward the agent), flows (the client endpoint(s) of a session) and the source-port pool. The
 * table decides; the data paths (udp-datapath.ts) move the datagrams. It owns no socket: the relay opens and
 * closes them and hands them to the table.
 *
 * Binding rules for a datagram from a client endpoint (IP, port) the table does not know yet:
 * 1. the most recently activated active session of that IP with no flow takes it (a new client);
 * 2. else, when the IP has exactly one active session, the port joins that session's flow (NAT rebinding, a
 *    restarted client socket — or a spoofer on the client's IP: see 3);
 * 3. else, the session of that IP whose client has been silent longest takes it, when silent for `rebindMs`
 *    (several clients behind one NAT: a port cannot be told apart from a neighbour's sooner);
 * 4. else the datagram is dropped (`flow_limit`).
 * A flow keeps up to {@link MAX_PORTS_PER_FLOW} client ports. Datagrams from any of them reach the agent; replies go
 * to the port the client sent from last. A spoofed datagram from the client's IP therefore diverts replies only
 * until the real client's next datagram (PCoIP clients send continuously), never locks it out (issue 16 #6).
 */
import { canonicalIp } from "../net/client-address.ts";
import { type Logger, sessionLogger } from "../observability/log.ts";
import type { SessionJournal } from "../observability/session-journal.ts";
import type { Admission, Admissions } from "./admissions.ts";

/** Client ports one flow remembers (the current one and a few before it). */
export const MAX_PORTS_PER_FLOW = 4;

export type UdpDrop =
  /** the source IP has no active session */
  | "no_session"
  /** the source IP has no session while some active session still waits for its first datagram: the client's
   *  UDP probably leaves its NAT from another public IP than its TCP (see the verdict line) */
  | "client_ip_mismatch"
  /** every active session of the source IP already has a live flow, and none has been silent for rebindMs */
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
  /** Of those, carried by the kernel path without the relay seeing them. */
  kernelPacketsUp: number;
  kernelPacketsDown: number;
  flowsBound: number;
  /** A client port joined a live flow (NAT rebinding, restarted socket, or a spoofer on the client's IP). */
  flowsRebound: number;
  /** Replies moved to another client port of the same flow. */
  replyPortMoves: number;
  flowsClosed: number;
  /** Session sockets open now. */
  sessionsOpen: number;
  /** `error` events on any socket (ICMP unreachable and the like). */
  socketErrors: number;
  drops: Record<UdpDrop, number>;
}

export function newUdpCounters(): UdpRelayCounters {
  return {
    packetsUp: 0,
    bytesUp: 0,
    packetsDown: 0,
    bytesDown: 0,
    kernelPacketsUp: 0,
    kernelPacketsDown: 0,
    flowsBound: 0,
    flowsRebound: 0,
    replyPortMoves: 0,
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
}

/** The socket a client wrote to (the reply leaves through it): structural, so the table needs no Bun types. */
export interface ReplySocket {
  send(data: Uint8Array, port: number, address: string): boolean;
}

/** One client port of a flow: the value of the (address, port) index, touched on every datagram. */
export interface FlowPort {
  readonly flow: Flow;
  readonly port: number;
  lastUpAt: number;
}

export interface Flow {
  readonly session: UdpSession;
  /** The address as the listener reported it (`::ffff:` form on a `[::]` listener): the key and reply target. */
  readonly addr: string;
  readonly clientIp: string;
  /** The listener the client wrote to last. */
  listener: ReplySocket;
  /** Where replies go: the port the client sent from last. */
  replyPort: number;
  readonly ports: FlowPort[];
  readonly boundAt: number;
  lastUpAt: number;
  lastDownAt: number;
  packetsUp: number;
  bytesUp: number;
  packetsDown: number;
  bytesDown: number;
}

export interface UdpSession {
  readonly id: string;
  readonly admission: Admission;
  readonly log: Logger;
  sourcePort: number;
  /** The session's socket toward the agent (opaque to the table), once open. */
  socket: { send(data: Uint8Array): boolean; close(): void } | undefined;
  /** Datagrams that arrived before the socket was open. */
  queue: Uint8Array[];
  flow: Flow | undefined;
  closed: boolean;
}

export type PickResult =
  | { readonly ok: true; readonly admission: Admission; readonly joins: Flow | undefined }
  | { readonly ok: false; readonly drop: "no_session" | "flow_limit" };

/** What the table tells the data path about (the kernel path programs, the userspace path ignores). */
export interface FlowEvents {
  /** A flow was bound or its reply port moved: traffic of (addr, replyPort) belongs to the session now. */
  carry(flow: Flow): void;
  /** The flow ended: stop carrying it. */
  release(flow: Flow, reason: string): void;
}

export interface FlowTableOptions {
  readonly admissions: Admissions;
  readonly log: Logger;
  readonly rebindMs: number;
  readonly journal?: SessionJournal | undefined;
  readonly events: FlowEvents;
}

/**
 * @example
 * const table = new FlowTable({ admissions, log, rebindMs: 1000, events: dataPath });
 * const p = table.lookup(addr, port) ?? table.pick(canonicalIp(addr), now)
 */
export class FlowTable {
  readonly counters = newUdpCounters();
  /** raw client address → client port → flow port. Two levels so the hot path builds no key string. */
  private readonly byAddr = new Map<string, Map<number, FlowPort>>();
  readonly sessions = new Map<string, UdpSession>();
  /** Coarse clock for the hot path; advanced by the sweep and by every slow path. */
  clock = 0;

  constructor(private readonly o: FlowTableOptions) {}

  /** Hot path: the flow port of a known client endpoint. */
  lookup(addr: string, port: number): FlowPort | undefined {
    return this.byAddr.get(addr)?.get(port);
  }

  /** A datagram from a known client port: counts it and makes that port the reply target if it was not. */
  noteUp(fp: FlowPort, listener: ReplySocket, bytes: number): Flow {
    const f = fp.flow;
    fp.lastUpAt = this.clock;
    f.lastUpAt = this.clock;
    f.packetsUp++;
    f.bytesUp += bytes;
    this.counters.packetsUp++;
    this.counters.bytesUp += bytes;
    if (f.replyPort !== fp.port || f.listener !== listener) this.moveReplies(f, fp.port, listener);
    return f;
  }

  /** The session a new client endpoint of `clientIp` belongs to (rules in the file comment). */
  pick(clientIp: string): PickResult {
    const admissions = this.o.admissions;
    const first = admissions.pickUdp(clientIp, (id) => this.sessions.get(id)?.flow === undefined);
    if (!first.activeSeen) return { ok: false, drop: "no_session" };
    if (first.chosen) return { ok: true, admission: first.chosen, joins: undefined };
    // Every active session of the IP has a flow (rules 2 and 3). A `usable` that never accepts is asked about
    // every active session of the IP: one pass, no copies.
    let active = 0;
    let silentest: UdpSession | undefined;
    admissions.pickUdp(clientIp, (id) => {
      active++;
      const s = this.sessions.get(id);
      if (s?.flow && (silentest?.flow === undefined || s.flow.lastUpAt < silentest.flow.lastUpAt))
        silentest = s;
      return false;
    });
    const f = silentest?.flow;
    if (silentest && f && (active === 1 || this.clock - f.lastUpAt >= this.o.rebindMs))
      return { ok: true, admission: silentest.admission, joins: f };
    return { ok: false, drop: "flow_limit" };
  }

  /** Registers a session (its socket is opened by the relay). */
  addSession(admission: Admission, sourcePort: number): UdpSession {
    const s: UdpSession = {
      id: admission.sessionLogId,
      admission,
      log: sessionLogger(this.o.log, admission.sessionLogId),
      sourcePort,
      socket: undefined,
      queue: [],
      flow: undefined,
      closed: false,
    };
    this.sessions.set(s.id, s);
    this.counters.sessionsOpen++;
    return s;
  }

  /** Binds a new client endpoint to `s`: a new flow, or one more port of its flow. */
  bind(s: UdpSession, listener: ReplySocket, addr: string, port: number, bytes: number): Flow {
    const clock = this.clock;
    const clientIp = canonicalIp(addr);
    const old = s.flow;
    if (old && old.addr === addr) {
      this.addPort(old, port, clock);
      this.counters.flowsRebound++;
      old.packetsUp++;
      old.bytesUp += bytes;
      this.counters.packetsUp++;
      this.counters.bytesUp += bytes;
      old.lastUpAt = clock;
      s.log.info(
        { client: `${clientIp}:${port}`, previousPort: old.replyPort, sourcePort: s.sourcePort },
        "sg udp flow: client port added (NAT rebinding or a restarted client socket); replies follow the port heard last",
      );
      this.moveReplies(old, port, listener);
      return old;
    }
    if (old) this.endFlow(old, "rebound");
    const flow: Flow = {
      session: s,
      addr,
      clientIp,
      listener,
      replyPort: port,
      ports: [],
      boundAt: clock,
      lastUpAt: clock,
      lastDownAt: clock,
      packetsUp: 1,
      bytesUp: bytes,
      packetsDown: 0,
      bytesDown: 0,
    };
    s.flow = flow;
    this.addPort(flow, port, clock);
    this.o.journal?.reached(s.id, "udp-from-client");
    this.counters.flowsBound++;
    if (old) this.counters.flowsRebound++;
    this.counters.packetsUp++;
    this.counters.bytesUp += bytes;
    s.log.info(
      {
        client: `${clientIp}:${port}`,
        sourcePort: s.sourcePort,
        agent: `${s.admission.agentHost}:${s.admission.agentUdpPort}`,
        rebound: old !== undefined,
      },
      "sg udp flow bound",
    );
    this.o.events.carry(flow);
    return flow;
  }

  private addPort(f: Flow, port: number, clock: number): void {
    if (f.ports.length >= MAX_PORTS_PER_FLOW) {
      // Forget the port heard from longest ago (never the reply port).
      let oldest = -1;
      for (let i = 0; i < f.ports.length; i++) {
        const p = f.ports[i]!;
        if (p.port === f.replyPort) continue;
        if (oldest < 0 || p.lastUpAt < f.ports[oldest]!.lastUpAt) oldest = i;
      }
      if (oldest >= 0) this.unindex(f, f.ports.splice(oldest, 1)[0]!);
    }
    const fp: FlowPort = { flow: f, port, lastUpAt: clock };
    f.ports.push(fp);
    const byPort = this.byAddr.get(f.addr);
    if (byPort) byPort.set(port, fp);
    else this.byAddr.set(f.addr, new Map([[port, fp]]));
  }

  private unindex(f: Flow, fp: FlowPort): void {
    const byPort = this.byAddr.get(f.addr);
    if (byPort?.get(fp.port) === fp) {
      byPort.delete(fp.port);
      if (byPort.size === 0) this.byAddr.delete(f.addr);
    }
  }

  private moveReplies(f: Flow, port: number, listener: ReplySocket): void {
    f.listener = listener;
    if (f.replyPort === port) return;
    f.replyPort = port;
    this.counters.replyPortMoves++;
    this.o.events.carry(f);
  }

  /** Counts a datagram from the agent for `s`; the flow to answer, or undefined (counted `no_flow`). */
  noteDown(s: UdpSession, bytes: number): Flow | undefined {
    const f = s.flow;
    if (f === undefined) {
      this.counters.drops.no_flow++;
      return undefined;
    }
    f.lastDownAt = this.clock;
    // The first datagram back is a session milestone (media flows both ways); later ones cost one compare.
    if (++f.packetsDown === 1) this.o.journal?.reached(s.id, "udp-from-agent");
    f.bytesDown += bytes;
    this.counters.packetsDown++;
    this.counters.bytesDown += bytes;
    return f;
  }

  /** Traffic a data path carried without the relay seeing it (the kernel path's counters). */
  addCarried(
    f: Flow,
    up: { packets: number; bytes: number },
    down: { packets: number; bytes: number },
  ): void {
    if (up.packets > 0) {
      f.packetsUp += up.packets;
      f.bytesUp += up.bytes;
      f.lastUpAt = this.clock;
      this.counters.packetsUp += up.packets;
      this.counters.bytesUp += up.bytes;
      this.counters.kernelPacketsUp += up.packets;
    }
    if (down.packets > 0) {
      const first = f.packetsDown === 0;
      f.packetsDown += down.packets;
      f.bytesDown += down.bytes;
      f.lastDownAt = this.clock;
      this.counters.packetsDown += down.packets;
      this.counters.bytesDown += down.bytes;
      this.counters.kernelPacketsDown += down.packets;
      if (first) this.o.journal?.reached(f.session.id, "udp-from-agent");
    }
  }

  endFlow(f: Flow, reason: string): void {
    for (const fp of f.ports) this.unindex(f, fp);
    if (f.session.flow === f) f.session.flow = undefined;
    this.o.events.release(f, reason);
    this.counters.flowsClosed++;
    this.o.journal?.traffic(f.session.id, {
      bytesFromClient: f.bytesUp,
      bytesToClient: f.bytesDown,
      packetsFromClient: f.packetsUp,
      packetsToClient: f.packetsDown,
    });
    f.session.log.info(
      {
        client: `${f.clientIp}:${f.replyPort}`,
        sourcePort: f.session.sourcePort,
        reason,
        durationMs: this.clock - f.boundAt,
        packetsUp: f.packetsUp,
        bytesUp: f.bytesUp,
        packetsDown: f.packetsDown,
        bytesDown: f.bytesDown,
      },
      "sg udp flow closed",
    );
  }

  /** Ends the session's flow and forgets it; false when it was already closed. The relay closes its socket. */
  removeSession(s: UdpSession, reason: string): boolean {
    if (s.closed) return false;
    s.closed = true;
    if (s.flow) this.endFlow(s.flow, reason);
    this.sessions.delete(s.id);
    this.counters.sessionsOpen--;
    return true;
  }
}
