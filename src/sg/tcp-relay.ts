/**
 * TCP 4172, pass-through (SPEC §4, PROTOCOL.md §6.3): read the client's ClientHello without terminating TLS,
 * pick the admission by (client IP, SNI), dial the agent, replay the bytes read, then splice both ways with
 * backpressure and half-close. The agent's own TLS reaches the client end to end, so its certificate, `sni`,
 * `session-id` and connect tag keep working. Anything that does not match an admission is closed and counted.
 *
 * Per connection:
 * ```
 * accept ─► hello (≤ 16 KiB, ≤ 5 s) ─► match admission ─► dial agent ─► replay hello ─► relay ─► close
 *              └─ not TLS / too big / timeout / no match ──────────────► close + count
 * ```
 */
import type { Socket, SocketHandler, TCPSocketListener } from "bun";
import { canonicalIp } from "../net/client-address.ts";
import { type Logger, sessionLogger } from "../observability/log.ts";
import type { SessionJournal } from "../observability/session-journal.ts";
import type { Admission, AdmissionEvent, Admissions } from "./admissions.ts";
import { MAX_CLIENT_HELLO_BYTES, parseClientHello } from "./client-hello.ts";
import { createRelayLimits, type RelayLimits } from "./limits.ts";
import { TcpConnection } from "./tcp-connection.ts";

export interface ListenAddress {
  /** "0.0.0.0", "::" (or "[::]"), or one address. */
  readonly hostname: string;
  /** 0 picks a free port (tests). */
  readonly port: number;
}

/** An expected start-up failure, worded for the operator. */
export interface StartFailure {
  readonly what: string;
  readonly cause: string;
  readonly fix: string;
}
export type StartResult<T> =
  | { readonly ok: true; readonly relay: T }
  | { readonly ok: false; readonly error: StartFailure };

export interface TcpRelayOptions {
  readonly listen: readonly ListenAddress[];
  readonly admissions: Admissions;
  readonly log: Logger;
  /** The ClientHello must be complete within this time (PROTOCOL.md §6.3 `tcpHandshakeSec` 5). */
  readonly handshakeTimeoutMs?: number;
  /** Dialling the agent gives up after this. */
  readonly connectTimeoutMs?: number;
  /** The peek limit for the ClientHello. */
  readonly maxHelloBytes?: number;
  /** Shared descriptor budget (one per process); built from RLIMIT_NOFILE when omitted. */
  readonly limits?: RelayLimits;
  /** Session progress (the control connection) and bytes, for the session verdict and end lines. */
  readonly journal?: SessionJournal;
  /** TCP keepalive on both legs, so a client that vanished is noticed. */
  readonly keepAliveSeconds?: number;
  /** TCP relays one admission may hold at once (`sg.maxConnectionsPerSession`, default 4). */
  readonly maxConnectionsPerSession?: number;
}

export type TcpRefusal =
  /** the descriptor budget is spent (limits.ts) */
  | "relay_limit"
  /** no complete ClientHello within handshakeTimeoutMs */
  | "hello_timeout"
  /** ClientHello over the peek limit */
  | "hello_too_large"
  /** the first bytes are not TLS (HTTP, SSH, scanners) */
  | "not_tls"
  /** TLS, but not a well-formed ClientHello */
  | "bad_hello"
  | "no_admission"
  | "wrong_sni"
  | "no_sni_ambiguous"
  /** the agent refused, timed out or was unreachable */
  | "agent_unreachable"
  /** the admission already holds maxConnectionsPerSession relays */
  | "session_connection_limit";

export interface TcpRelayCounters {
  /** Connections accepted on the listeners. */
  accepted: number;
  /** Connections matched to an admission and relayed to an agent. */
  relayed: number;
  /** Relays open now. */
  active: number;
  refused: Record<TcpRefusal, number>;
  bytesToAgent: number;
  bytesToClient: number;
  /** Times a side was paused because the other did not take its bytes (backpressure at work). */
  pauses: number;
}

export interface TcpRelay {
  /** The bound ports, in the order of `listen`. */
  readonly ports: readonly number[];
  readonly counters: TcpRelayCounters;
  /** Open relays per session id (admin /sessions). */
  connectionsOf(sessionLogId: string): number;
  /** Closes the listeners and every connection. */
  stop(): Promise<void>;
}

/** How the relay behaves, resolved once from TcpRelayOptions (defaults filled in). */
interface TcpRelaySettings {
  readonly handshakeTimeoutMs: number;
  readonly connectTimeoutMs: number;
  readonly maxHelloBytes: number;
  readonly keepAliveSeconds: number;
}

function settingsOf(o: TcpRelayOptions): TcpRelaySettings {
  return {
    handshakeTimeoutMs: o.handshakeTimeoutMs ?? 5000,
    connectTimeoutMs: o.connectTimeoutMs ?? 10_000,
    maxHelloBytes: o.maxHelloBytes ?? MAX_CLIENT_HELLO_BYTES,
    keepAliveSeconds: o.keepAliveSeconds ?? 30,
  };
}

function newCounters(): TcpRelayCounters {
  return {
    accepted: 0,
    relayed: 0,
    active: 0,
    refused: {
      relay_limit: 0,
      hello_timeout: 0,
      hello_too_large: 0,
      not_tls: 0,
      bad_hello: 0,
      no_admission: 0,
      wrong_sni: 0,
      no_sni_ambiguous: 0,
      agent_unreachable: 0,
      session_connection_limit: 0,
    },
    bytesToAgent: 0,
    bytesToClient: 0,
    pauses: 0,
  };
}

/**
 * The relay: its listeners, its connections (all of them, and those of each admission), its counters and its share
 * of the descriptor budget. Each method is one step of a connection's life; Bun's socket handlers (`clientHandlers`,
 * `agentHandlers`) only pass their events on to these steps. Per-connection state and the byte pump live on
 * {@link TcpConnection}.
 */
class TcpRelayImpl implements TcpRelay {
  readonly counters: TcpRelayCounters = newCounters();
  readonly listeners: TCPSocketListener<TcpConnection>[] = [];
  private readonly conns = new Set<TcpConnection>();
  private readonly bySession = new Map<string, Set<TcpConnection>>();
  private readonly sessionCap: SessionConnectionCap;
  private readonly admissions: Admissions;
  private readonly log: Logger;
  private refusalLogWindow = 0;
  private refusalLogsInWindow = 0;
  private unsubscribe: (() => void) | undefined;

  constructor(
    private readonly o: TcpRelayOptions,
    private readonly s: TcpRelaySettings,
    private readonly limits: RelayLimits,
  ) {
    this.admissions = o.admissions;
    this.log = o.log;
    this.sessionCap = new SessionConnectionCap(o.maxConnectionsPerSession ?? 4, o.log);
  }

  /** The bound ports, in the order of `listen` (fixed once `listen()` succeeded). */
  ports: readonly number[] = [];

  connectionsOf(sessionLogId: string): number {
    return this.bySession.get(sessionLogId)?.size ?? 0;
  }

  /** Bun's handlers for accepted (client) sockets: thin adapters onto the relay's steps. */
  readonly clientHandlers: SocketHandler<TcpConnection> = {
    open: (client) => this.accept(client),
    data: (client, chunk) => this.clientData(client.data, chunk),
    drain: (client) => client.data.drained("down"),
    end: (client) => this.onFin(client.data, "client"),
    close: (client, error) => {
      if (client.data) this.onClose(client.data, "client", error);
    },
    error: (client, error) => {
      client.data?.log?.debug({ err: errorText(error) }, "sg client socket error");
    },
  };

  /** Bun's handlers for sockets toward agents; events of a socket that is not (or no longer) the connection's agent are ignored. */
  readonly agentHandlers: SocketHandler<TcpConnection> = {
    open: (agent) => {
      this.dialSettled(agent.data);
      this.agentOpened(agent.data, agent);
    },
    data: (agent, chunk) => {
      const conn = agent.data;
      if (conn.agent === agent) conn.forward("down", chunk, this.counters);
    },
    drain: (agent) => {
      if (agent.data.agent === agent) agent.data.drained("up");
    },
    end: (agent) => {
      if (agent.data.agent === agent) this.onFin(agent.data, "agent");
    },
    close: (agent, error) => {
      if (agent.data.agent === agent) this.onClose(agent.data, "agent", error);
    },
    error: (agent, error) => {
      agent.data.log?.debug({ err: errorText(error) }, "sg agent socket error");
    },
    connectError: (agent, error) => {
      this.dialSettled(agent.data);
      if (agent.data.phase === "dialing") this.agentFailed(agent.data, errorText(error));
    },
  };

  /** Binds every listen address; on the first failure the ones already bound are closed. */
  listen(): StartFailure | undefined {
    for (const addr of this.o.listen) {
      const hostname = addr.hostname.replace(/^\[(.*)\]$/, "$1");
      try {
        this.listeners.push(
          Bun.listen<TcpConnection>({
            hostname,
            port: addr.port,
            allowHalfOpen: true,
            socket: this.clientHandlers,
          }),
        );
      } catch (e) {
        for (const l of this.listeners) l.stop(true);
        return listenFailure("tcp", addr, e);
      }
    }
    this.ports = this.listeners.map((l) => l.port);
    return undefined;
  }

  /** A revoked (or replaced) session loses its connections at once; an expired or closed one has none. */
  subscribe(): void {
    this.unsubscribe = this.admissions.subscribe((e: AdmissionEvent) => {
      const set = this.bySession.get(e.admission.sessionLogId);
      if (!set) return;
      for (const conn of set) {
        conn.closedBy = `session_${e.reason}`;
        conn.terminateBoth();
      }
    });
  }

  /** Step 1, accept: take a descriptor and start the ClientHello deadline. */
  private accept(client: Socket<TcpConnection>): void {
    this.counters.accepted++;
    const conn = new TcpConnection(client, canonicalIp(client.remoteAddress));
    client.data = conn;
    this.conns.add(conn);
    if (!this.limits.tryTake(1)) {
      this.refuse(conn, "relay_limit");
      return;
    }
    conn.fds = 1;
    client.setNoDelay(true);
    client.setKeepAlive(true, this.s.keepAliveSeconds * 1000);
    conn.timer = setTimeout(() => {
      conn.timer = undefined;
      if (conn.phase === "hello") this.refuse(conn, "hello_timeout", { bytes: conn.helloLen });
    }, this.s.handshakeTimeoutMs);
  }

  private clientData(conn: TcpConnection, chunk: Uint8Array): void {
    if (conn.phase === "relaying") conn.forward("up", chunk, this.counters);
    else if (conn.phase === "hello") this.helloBytes(conn, chunk);
    else if (conn.phase === "dialing") conn.appendHello(chunk, this.s.maxHelloBytes); // read before pause() took effect
  }

  /** Step 2, hello peek: parse once enough bytes are in (client-hello.ts resumes its walk), then match. */
  private helloBytes(conn: TcpConnection, chunk: Uint8Array): void {
    conn.appendHello(chunk, this.s.maxHelloBytes);
    if (conn.phase !== "hello" || conn.helloLen < conn.helloWant) return;
    const r = parseClientHello(conn.hello.subarray(0, conn.helloLen), this.s.maxHelloBytes, conn.helloWalk);
    if (r.kind === "need") {
      conn.helloWant = conn.helloLen + r.need;
      return;
    }
    conn.clearTimer();
    if (r.kind === "invalid") {
      const reason: TcpRefusal =
        r.invalid === "too_large" ? "hello_too_large" : r.invalid === "not_tls" ? "not_tls" : "bad_hello";
      this.refuse(conn, reason, { detail: r.invalid });
      return;
    }
    this.match(conn, r.sni);
  }

  /** Step 3, admission match: by (client IP, SNI) only (admissions.ts matchTcp). */
  private match(conn: TcpConnection, sni: string | undefined): void {
    const m = this.admissions.matchTcp(conn.clientIp, sni);
    if (!m.ok) {
      this.refuse(conn, m.reason, { sni: sni ?? null });
      return;
    }
    if (!this.withinSessionCap(conn, m.admission)) return;
    this.dial(conn, m.admission, sni);
  }

  /** Step 4, per-session cap (`sg.maxConnectionsPerSession`): refused connections are counted, logged by the cap. */
  private withinSessionCap(conn: TcpConnection, session: Admission): boolean {
    const held = this.connectionsOf(session.sessionLogId);
    if (this.sessionCap.allows(held)) return true;
    this.counters.refused.session_connection_limit++;
    this.sessionCap.noteRefusal(session.sessionLogId, conn.clientText, held);
    conn.closedBy = "session_connection_limit";
    conn.client.terminate();
    return false;
  }

  /** Step 5, dial the agent: claim the admission, pause the client, connect within connectTimeoutMs. */
  private dial(conn: TcpConnection, session: Admission, sni: string | undefined): void {
    if (!this.limits.tryTake(1)) {
      this.refuse(conn, "relay_limit");
      return;
    }
    conn.fds++;
    conn.phase = "dialing";
    conn.admission = session;
    conn.log = sessionLogger(this.log, session.sessionLogId);
    // Claimed now, not when the agent answers, so a second connection cannot take the same pending admission.
    this.admissions.attachTcp(session.sessionLogId);
    const set = this.bySession.get(session.sessionLogId);
    if (set) set.add(conn);
    else this.bySession.set(session.sessionLogId, new Set([conn]));
    conn.client.pause();
    conn.dial = "pending";
    const connectTimeoutMs = this.s.connectTimeoutMs;
    conn.timer = setTimeout(() => {
      conn.timer = undefined;
      if (conn.phase === "dialing") this.agentFailed(conn, `no answer within ${connectTimeoutMs} ms`);
    }, connectTimeoutMs);
    conn.log.debug(
      { sni: sni ?? null, agent: `${session.agentHost}:${session.agentTcpPort}` },
      "sg dialling agent",
    );
    // The async wrapper turns a synchronous throw (a malformed host) into the same rejection as a refused dial.
    (async () =>
      Bun.connect<TcpConnection>({
        hostname: session.agentHost,
        port: session.agentTcpPort,
        allowHalfOpen: true,
        data: conn,
        socket: this.agentHandlers,
      }))().catch((e: unknown) => {
      this.dialSettled(conn);
      if (conn.phase === "dialing") this.agentFailed(conn, errorText(e));
    });
  }

  /** The dial's socket opened or failed: a finished connection's owed descriptor comes back now. */
  private dialSettled(conn: TcpConnection): void {
    if (conn.dial !== "pending") return;
    conn.dial = "settled";
    if (!conn.agentFdOwed) return;
    conn.agentFdOwed = false;
    this.limits.give(1);
  }

  private agentFailed(conn: TcpConnection, cause: string): void {
    this.counters.refused.agent_unreachable++;
    conn.log?.warn(
      {
        client: conn.clientText,
        agent: `${conn.admission?.agentHost}:${conn.admission?.agentTcpPort}`,
        cause,
      },
      "sg connecting to agent failed: check that the agent listens on TCP 4172 and the SG host can route to it",
    );
    conn.closedBy = "agent_unreachable";
    conn.phase = "closed";
    conn.agent?.terminate();
    conn.client.terminate();
  }

  /** Step 6, relay: the agent answered; replay the hello and let the pump (TcpConnection) run. */
  private agentOpened(conn: TcpConnection, agent: Socket<TcpConnection>): void {
    if (conn.phase !== "dialing") {
      agent.terminate(); // the client went away or the dial timed out while connecting
      return;
    }
    conn.clearTimer();
    conn.agent = agent;
    conn.phase = "relaying";
    agent.setNoDelay(true);
    agent.setKeepAlive(true, this.s.keepAliveSeconds * 1000);
    this.counters.relayed++;
    this.counters.active++;
    const s = conn.admission!;
    const current = this.admissions.get(s.sessionLogId);
    this.o.journal?.reached(s.sessionLogId, "sg-tcp");
    conn.log?.info(
      {
        audit: true,
        event: "sg_admit",
        client: conn.clientText,
        agent: `${s.agentHost}:${s.agentTcpPort}`,
        agentSessionId: s.agentSessionId,
        reconnect: (current?.tcpConnects ?? 1) > 1,
      },
      "sg tcp relay open",
    );
    conn.forward("up", conn.takeHello(), this.counters);
    if (conn.toAgent === undefined) conn.client.resume();
  }

  /** Step 7, half-close: a FIN while relaying is passed on; before that it ends the connection. */
  private onFin(conn: TcpConnection, side: "client" | "agent"): void {
    if (side === "client") conn.clientFin = true;
    else conn.agentFin = true;
    if (conn.phase !== "relaying") {
      conn.closedBy ||= `${side}_fin_before_relay`;
      conn.phase = "closed";
      conn.terminateBoth();
      return;
    }
    conn.passFin(side === "client" ? "up" : "down");
  }

  private onClose(conn: TcpConnection, side: "client" | "agent", error: Error | undefined): void {
    if (side === "client") conn.clientClosed = true;
    else conn.agentClosed = true;
    conn.closedBy ||= error ? `${side}_error` : side;
    if (conn.phase === "relaying") {
      if (error) {
        // An abrupt end on one side is passed on abruptly: the peer must not mistake it for a clean close.
        (side === "client" ? conn.agent : conn.client)?.terminate();
      } else {
        conn.passFin(side === "client" ? "up" : "down");
      }
    } else {
      conn.phase = "closed";
      if (side === "client") conn.agent?.terminate();
      else conn.client.terminate();
    }
    if (conn.clientClosed && (conn.agentClosed || conn.agent === undefined)) this.finish(conn);
  }

  /** Step 8, close: both sockets are gone; give back descriptors and the admission, account for the bytes. */
  private finish(conn: TcpConnection): void {
    if (!this.conns.delete(conn)) return;
    clearTimeout(conn.timer);
    // A dial still in flight (client gone or timed out toward a silent agent) holds its socket until the kernel
    // gives up on it: its descriptor stays counted until dialSettled().
    conn.agentFdOwed = conn.dial === "pending";
    this.limits.give(conn.agentFdOwed ? conn.fds - 1 : conn.fds);
    const wasRelaying = conn.agent !== undefined;
    conn.phase = "closed";
    if (conn.admission) {
      this.admissions.detachTcp(conn.admission.sessionLogId);
      const set = this.bySession.get(conn.admission.sessionLogId);
      set?.delete(conn);
      if (set && set.size === 0) this.bySession.delete(conn.admission.sessionLogId);
    }
    if (!wasRelaying) return;
    this.counters.active--;
    if (conn.admission)
      this.o.journal?.traffic(conn.admission.sessionLogId, {
        bytesFromClient: conn.bytesUp,
        bytesToClient: conn.bytesDown,
      });
    conn.log?.info(
      {
        client: conn.clientText,
        bytesUp: conn.bytesUp,
        bytesDown: conn.bytesDown,
        durationMs: Date.now() - conn.openedAt,
        closedBy: conn.closedBy,
      },
      "sg tcp relay closed",
    );
  }

  private refuse(conn: TcpConnection, reason: TcpRefusal, extra?: Record<string, unknown>): void {
    this.counters.refused[reason]++;
    this.logRefusal(conn, reason, extra);
    conn.closedBy = reason;
    conn.client.terminate();
  }

  /** Refusals come from the internet (scanners, floods): log at most a few per second, count all of them. */
  private logRefusal(conn: TcpConnection, reason: TcpRefusal, extra?: Record<string, unknown>): void {
    const t = Date.now();
    if (t - this.refusalLogWindow >= 1000) {
      this.refusalLogWindow = t;
      this.refusalLogsInWindow = 0;
    }
    if (++this.refusalLogsInWindow > 5) return;
    (conn.log ?? this.log).info(
      { audit: true, event: "sg_deny", client: conn.clientText, reason, ...extra },
      "sg tcp connection refused",
    );
  }

  async stop(): Promise<void> {
    this.unsubscribe?.();
    for (const l of this.listeners) l.stop(true);
    for (const conn of [...this.conns]) {
      conn.closedBy ||= "stopped";
      conn.terminateBoth();
    }
    // Close handlers run on the next ticks; give them a moment so counters and logs settle.
    for (let i = 0; i < 20 && this.conns.size > 0; i++) await Bun.sleep(5);
  }
}

/**
 * @example
 * const r = await startTcpRelay({ listen: [{ hostname: "0.0.0.0", port: 4172 }], admissions, log });
 * if (!r.ok) fail(`${r.error.what}: ${r.error.cause} (${r.error.fix})`);
 */
export async function startTcpRelay(options: TcpRelayOptions): Promise<StartResult<TcpRelay>> {
  const { log } = options;
  const relay = new TcpRelayImpl(options, settingsOf(options), options.limits ?? createRelayLimits({ log }));
  const failure = relay.listen();
  if (failure) return { ok: false, error: failure };
  relay.subscribe();
  log.info({ listen: relay.listeners.map((l) => `${l.hostname}:${l.port}`) }, "sg tcp relay listening");
  return { ok: true, relay };
}

/**
 * `sg.maxConnectionsPerSession` (issue 16 #3): one admission cannot take the relays (and descriptors) every other
 * session needs. Refusals are logged once per window, with how many the window swallowed.
 */
export class SessionConnectionCap {
  private windowStart = 0;
  private suppressed = 0;

  constructor(
    readonly max: number,
    private readonly log: Logger,
    private readonly windowMs = 10_000,
  ) {}

  /** A session holding `held` relays may open one more. */
  allows(held: number): boolean {
    return held < this.max;
  }

  noteRefusal(sessionLogId: string, client: string, held: number): void {
    const t = Date.now();
    if (t - this.windowStart < this.windowMs) {
      this.suppressed++;
      return;
    }
    sessionLogger(this.log, sessionLogId).warn(
      {
        audit: true,
        event: "sg_deny",
        reason: "session_connection_limit",
        client,
        held,
        maxConnectionsPerSession: this.max,
        refusedSinceLastLine: this.suppressed,
      },
      "sg tcp connection refused: the session already holds sg.maxConnectionsPerSession relays " +
        "(a PCoIP client needs one; raise the key only for clients known to open more)",
    );
    this.windowStart = t;
    this.suppressed = 0;
  }
}

export function errorText(e: unknown): string {
  if (e instanceof Error)
    return (e as { code?: string }).code ? `${(e as { code?: string }).code}: ${e.message}` : e.message;
  return String(e ?? "unknown error");
}

/** Words a bind failure for the operator: what, the OS cause, and the usual fix. */
export function listenFailure(proto: "tcp" | "udp", addr: ListenAddress, e: unknown): StartFailure {
  const code = (e as { code?: string } | undefined)?.code ?? "";
  const where = `${addr.hostname.includes(":") && !addr.hostname.startsWith("[") ? `[${addr.hostname}]` : addr.hostname}:${addr.port}`;
  const fix =
    code === "EADDRINUSE"
      ? `another process holds ${proto} ${where}: stop it or change sg.${proto}Listen`
      : code === "EACCES"
        ? "ports below 1024 need CAP_NET_BIND_SERVICE (the systemd unit grants it) or root"
        : code === "EADDRNOTAVAIL" || code === "EAFNOSUPPORT"
          ? "the address is not on this host (or IPv6 is disabled): fix sg listen addresses or set enableIpv6 = false"
          : `check sg.${proto}Listen`;
  return { what: `listening on ${proto} ${where}`, cause: errorText(e), fix };
}
