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
import type { Socket, TCPSocketListener } from "bun";
import { canonicalIp } from "../net/client-address.ts";
import { type Logger, sessionLogger } from "../observability/log.ts";
import type { SessionJournal } from "../observability/session-journal.ts";
import type { Admission, AdmissionEvent, Admissions } from "./admissions.ts";
import { type HelloWalk, MAX_CLIENT_HELLO_BYTES, newHelloWalk, parseClientHello } from "./client-hello.ts";
import { createRelayLimits, type RelayLimits } from "./limits.ts";

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

type Phase = "hello" | "dialing" | "relaying" | "closed";

/** One accepted connection: both sockets carry this object as their `data`. */
interface Conn {
  readonly client: Socket<Conn>;
  readonly clientIp: string;
  readonly clientPort: number;
  readonly openedAt: number;
  agent: Socket<Conn> | undefined;
  phase: Phase;
  /** ClientHello bytes read so far (grown by doubling, capped near the peek limit). */
  hello: Uint8Array;
  helloLen: number;
  /** Parse again once helloLen reaches this. */
  helloWant: number;
  /** The ClientHello record walk so far (records already checked are not walked again). */
  helloWalk: HelloWalk;
  timer: ReturnType<typeof setTimeout> | undefined;
  /** The admission the connection was matched to (undefined until its ClientHello matched one). */
  admission: Admission | undefined;
  log: Logger | undefined;
  fds: number;
  /** Bytes accepted from one side that the other side's socket did not take yet (backpressure). */
  toAgent: Uint8Array | undefined;
  toClient: Uint8Array | undefined;
  /** FIN received from that side. */
  clientFin: boolean;
  agentFin: boolean;
  clientClosed: boolean;
  agentClosed: boolean;
  bytesUp: number;
  bytesDown: number;
  closedBy: string;
}

const NO_BYTES = new Uint8Array(0);

/**
 * Long on purpose (≈ 370 lines): the client and agent socket handlers Bun calls share one closure over the relay's
 * connections, counters and budget; the byte pump, the hello buffer and the per-session cap live outside it.
 * @example
 * const r = await startTcpRelay({ listen: [{ hostname: "0.0.0.0", port: 4172 }], admissions, log });
 * if (!r.ok) fail(`${r.error.what}: ${r.error.cause} (${r.error.fix})`);
 */
export async function startTcpRelay(options: TcpRelayOptions): Promise<StartResult<TcpRelay>> {
  const { admissions, log } = options;
  const handshakeTimeoutMs = options.handshakeTimeoutMs ?? 5000;
  const connectTimeoutMs = options.connectTimeoutMs ?? 10_000;
  const maxHelloBytes = options.maxHelloBytes ?? MAX_CLIENT_HELLO_BYTES;
  const keepAliveSeconds = options.keepAliveSeconds ?? 30;
  const limits = options.limits ?? createRelayLimits({ log });
  const sessionCap = new SessionConnectionCap(options.maxConnectionsPerSession ?? 4, log);

  const counters: TcpRelayCounters = {
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
  const conns = new Set<Conn>();
  const bySession = new Map<string, Set<Conn>>();

  // Refusals come from the internet (scanners, floods): log at most a few per second, count all of them.
  let refusalLogWindow = 0;
  let refusalLogsInWindow = 0;
  function logRefusal(conn: Conn, reason: TcpRefusal, extra?: Record<string, unknown>): void {
    const t = Date.now();
    if (t - refusalLogWindow >= 1000) {
      refusalLogWindow = t;
      refusalLogsInWindow = 0;
    }
    if (++refusalLogsInWindow > 5) return;
    (conn.log ?? log).info(
      { audit: true, event: "sg_deny", client: `${conn.clientIp}:${conn.clientPort}`, reason, ...extra },
      "sg tcp connection refused",
    );
  }

  function refuse(conn: Conn, reason: TcpRefusal, extra?: Record<string, unknown>): void {
    counters.refused[reason]++;
    logRefusal(conn, reason, extra);
    conn.closedBy = reason;
    conn.client.terminate();
  }

  function onHelloBytes(conn: Conn, chunk: Uint8Array): void {
    appendHello(conn, chunk, maxHelloBytes);
    if (conn.phase !== "hello" || conn.helloLen < conn.helloWant) return;
    const r = parseClientHello(conn.hello.subarray(0, conn.helloLen), maxHelloBytes, conn.helloWalk);
    if (r.kind === "need") {
      conn.helloWant = conn.helloLen + r.need;
      return;
    }
    clearTimeout(conn.timer);
    conn.timer = undefined;
    if (r.kind === "invalid") {
      const reason: TcpRefusal =
        r.invalid === "too_large" ? "hello_too_large" : r.invalid === "not_tls" ? "not_tls" : "bad_hello";
      refuse(conn, reason, { detail: r.invalid });
      return;
    }
    const m = admissions.matchTcp(conn.clientIp, r.sni);
    if (!m.ok) {
      refuse(conn, m.reason, { sni: r.sni ?? null });
      return;
    }
    dial(conn, m.admission, r.sni);
  }

  function dial(conn: Conn, session: Admission, sni: string | undefined): void {
    const held = bySession.get(session.sessionLogId)?.size ?? 0;
    if (!sessionCap.allows(held)) {
      counters.refused.session_connection_limit++;
      sessionCap.noteRefusal(session.sessionLogId, `${conn.clientIp}:${conn.clientPort}`, held);
      conn.closedBy = "session_connection_limit";
      conn.client.terminate();
      return;
    }
    if (!limits.tryTake(1)) {
      refuse(conn, "relay_limit");
      return;
    }
    conn.fds++;
    conn.phase = "dialing";
    conn.admission = session;
    conn.log = sessionLogger(log, session.sessionLogId);
    // Claimed now, not when the agent answers, so a second connection cannot take the same pending admission.
    admissions.attachTcp(session.sessionLogId);
    const set = bySession.get(session.sessionLogId);
    if (set) set.add(conn);
    else bySession.set(session.sessionLogId, new Set([conn]));
    conn.client.pause();
    conn.timer = setTimeout(() => {
      conn.timer = undefined;
      if (conn.phase === "dialing") agentFailed(conn, `no answer within ${connectTimeoutMs} ms`);
    }, connectTimeoutMs);
    conn.log.debug(
      { sni: sni ?? null, agent: `${session.agentHost}:${session.agentTcpPort}` },
      "sg dialling agent",
    );
    // The async wrapper turns a synchronous throw (a malformed host) into the same rejection as a refused dial.
    (async () =>
      Bun.connect<Conn>({
        hostname: session.agentHost,
        port: session.agentTcpPort,
        allowHalfOpen: true,
        data: conn,
        socket: agentHandlers,
      }))().catch((e: unknown) => {
      if (conn.phase === "dialing") agentFailed(conn, errorText(e));
    });
  }

  function agentFailed(conn: Conn, cause: string): void {
    counters.refused.agent_unreachable++;
    conn.log?.warn(
      {
        client: `${conn.clientIp}:${conn.clientPort}`,
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

  function agentOpened(conn: Conn, agent: Socket<Conn>): void {
    if (conn.phase !== "dialing") {
      agent.terminate(); // the client went away or the dial timed out while connecting
      return;
    }
    clearTimeout(conn.timer);
    conn.timer = undefined;
    conn.agent = agent;
    conn.phase = "relaying";
    agent.setNoDelay(true);
    agent.setKeepAlive(true, keepAliveSeconds * 1000);
    counters.relayed++;
    counters.active++;
    const s = conn.admission!;
    const current = admissions.get(s.sessionLogId);
    options.journal?.reached(s.sessionLogId, "sg-tcp");
    conn.log?.info(
      {
        audit: true,
        event: "sg_admit",
        client: `${conn.clientIp}:${conn.clientPort}`,
        agent: `${s.agentHost}:${s.agentTcpPort}`,
        agentSessionId: s.agentSessionId,
        reconnect: (current?.tcpConnects ?? 1) > 1,
      },
      "sg tcp relay open",
    );
    const hello = conn.hello.subarray(0, conn.helloLen);
    conn.hello = NO_BYTES;
    conn.helloLen = 0;
    forward(conn, "up", hello, counters);
    if (conn.toAgent === undefined) conn.client.resume();
  }

  function onFin(conn: Conn, side: "client" | "agent"): void {
    if (side === "client") conn.clientFin = true;
    else conn.agentFin = true;
    if (conn.phase !== "relaying") {
      conn.closedBy ||= `${side}_fin_before_relay`;
      conn.phase = "closed";
      conn.client.terminate();
      conn.agent?.terminate();
      return;
    }
    passFin(conn, side === "client" ? "up" : "down");
  }

  function onClose(conn: Conn, side: "client" | "agent", error: Error | undefined): void {
    if (side === "client") conn.clientClosed = true;
    else conn.agentClosed = true;
    conn.closedBy ||= error ? `${side}_error` : side;
    if (conn.phase === "relaying") {
      if (error) {
        // An abrupt end on one side is passed on abruptly: the peer must not mistake it for a clean close.
        (side === "client" ? conn.agent : conn.client)?.terminate();
      } else {
        passFin(conn, side === "client" ? "up" : "down");
      }
    } else {
      conn.phase = "closed";
      if (side === "client") conn.agent?.terminate();
      else conn.client.terminate();
    }
    if (conn.clientClosed && (conn.agentClosed || conn.agent === undefined)) finish(conn);
  }

  function finish(conn: Conn): void {
    if (!conns.delete(conn)) return;
    clearTimeout(conn.timer);
    limits.give(conn.fds);
    const wasRelaying = conn.agent !== undefined;
    conn.phase = "closed";
    if (conn.admission) {
      admissions.detachTcp(conn.admission.sessionLogId);
      const set = bySession.get(conn.admission.sessionLogId);
      set?.delete(conn);
      if (set && set.size === 0) bySession.delete(conn.admission.sessionLogId);
    }
    if (wasRelaying) {
      counters.active--;
      if (conn.admission)
        options.journal?.traffic(conn.admission.sessionLogId, {
          bytesFromClient: conn.bytesUp,
          bytesToClient: conn.bytesDown,
        });
      conn.log?.info(
        {
          client: `${conn.clientIp}:${conn.clientPort}`,
          bytesUp: conn.bytesUp,
          bytesDown: conn.bytesDown,
          durationMs: Date.now() - conn.openedAt,
          closedBy: conn.closedBy,
        },
        "sg tcp relay closed",
      );
    }
  }

  const clientHandlers = {
    open(client: Socket<Conn>) {
      counters.accepted++;
      const conn: Conn = {
        client,
        clientIp: canonicalIp(client.remoteAddress),
        clientPort: client.remotePort,
        openedAt: Date.now(),
        agent: undefined,
        phase: "hello",
        hello: NO_BYTES,
        helloLen: 0,
        helloWant: 1,
        helloWalk: newHelloWalk(),
        timer: undefined,
        admission: undefined,
        log: undefined,
        fds: 0,
        toAgent: undefined,
        toClient: undefined,
        clientFin: false,
        agentFin: false,
        clientClosed: false,
        agentClosed: false,
        bytesUp: 0,
        bytesDown: 0,
        closedBy: "",
      };
      client.data = conn;
      conns.add(conn);
      if (!limits.tryTake(1)) {
        refuse(conn, "relay_limit");
        return;
      }
      conn.fds = 1;
      client.setNoDelay(true);
      client.setKeepAlive(true, keepAliveSeconds * 1000);
      conn.timer = setTimeout(() => {
        conn.timer = undefined;
        if (conn.phase === "hello") refuse(conn, "hello_timeout", { bytes: conn.helloLen });
      }, handshakeTimeoutMs);
    },
    data(client: Socket<Conn>, chunk: Uint8Array) {
      const conn = client.data;
      if (conn.phase === "relaying") forward(conn, "up", chunk, counters);
      else if (conn.phase === "hello") onHelloBytes(conn, chunk);
      else if (conn.phase === "dialing") appendHello(conn, chunk, maxHelloBytes); // read before pause() took effect
    },
    drain(client: Socket<Conn>) {
      drained(client.data, "down");
    },
    end(client: Socket<Conn>) {
      onFin(client.data, "client");
    },
    close(client: Socket<Conn>, error?: Error) {
      if (client.data) onClose(client.data, "client", error);
    },
    error(client: Socket<Conn>, error: Error) {
      client.data?.log?.debug({ err: errorText(error) }, "sg client socket error");
    },
  };

  const agentHandlers = {
    open(agent: Socket<Conn>) {
      agentOpened(agent.data, agent);
    },
    data(agent: Socket<Conn>, chunk: Uint8Array) {
      const conn = agent.data;
      if (conn.agent === agent) forward(conn, "down", chunk, counters);
    },
    drain(agent: Socket<Conn>) {
      if (agent.data.agent === agent) drained(agent.data, "up");
    },
    end(agent: Socket<Conn>) {
      if (agent.data.agent === agent) onFin(agent.data, "agent");
    },
    close(agent: Socket<Conn>, error?: Error) {
      if (agent.data.agent === agent) onClose(agent.data, "agent", error);
    },
    error(agent: Socket<Conn>, error: Error) {
      agent.data.log?.debug({ err: errorText(error) }, "sg agent socket error");
    },
    connectError(agent: Socket<Conn>, error: Error) {
      if (agent.data.phase === "dialing") agentFailed(agent.data, errorText(error));
    },
  };

  const listeners: TCPSocketListener<Conn>[] = [];
  for (const addr of options.listen) {
    const hostname = addr.hostname.replace(/^\[(.*)\]$/, "$1");
    try {
      listeners.push(
        Bun.listen<Conn>({ hostname, port: addr.port, allowHalfOpen: true, socket: clientHandlers }),
      );
    } catch (e) {
      for (const l of listeners) l.stop(true);
      return { ok: false, error: listenFailure("tcp", addr, e) };
    }
  }

  const unsubscribe = admissions.subscribe((e: AdmissionEvent) => {
    // A revoked (or replaced) session loses its connections at once; an expired or closed one has none.
    const set = bySession.get(e.admission.sessionLogId);
    if (!set) return;
    for (const conn of set) {
      conn.closedBy = `session_${e.reason}`;
      conn.client.terminate();
      conn.agent?.terminate();
    }
  });

  log.info({ listen: listeners.map((l) => `${l.hostname}:${l.port}`) }, "sg tcp relay listening");

  return {
    ok: true,
    relay: {
      ports: listeners.map((l) => l.port),
      counters,
      connectionsOf: (id) => bySession.get(id)?.size ?? 0,
      async stop() {
        unsubscribe();
        for (const l of listeners) l.stop(true);
        for (const conn of [...conns]) {
          conn.closedBy ||= "stopped";
          conn.client.terminate();
          conn.agent?.terminate();
        }
        // Close handlers run on the next ticks; give them a moment so counters and logs settle.
        for (let i = 0; i < 20 && conns.size > 0; i++) await Bun.sleep(5);
      },
    },
  };
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

// The byte pump of a relaying connection (both directions, backpressure, half-close): state lives on Conn.

/** Writes a chunk toward one side; what the socket does not take waits, and the source pauses (backpressure). */
function forward(conn: Conn, dir: "up" | "down", chunk: Uint8Array, counters: TcpRelayCounters): void {
  if (chunk.length === 0) return;
  const to = dir === "up" ? conn.agent : conn.client;
  const from = dir === "up" ? conn.client : conn.agent;
  if (dir === "up") counters.bytesToAgent += chunk.length;
  else counters.bytesToClient += chunk.length;
  if (dir === "up") conn.bytesUp += chunk.length;
  else conn.bytesDown += chunk.length;
  const waiting = dir === "up" ? conn.toAgent : conn.toClient;
  if (!to) return;
  if (waiting !== undefined) {
    // Bun may deliver data already read after pause(); keep it behind what is waiting.
    setWaiting(conn, dir, concat(waiting, chunk));
    from?.pause();
    return;
  }
  const n = to.write(chunk);
  if (n === chunk.length) return;
  if (n < 0) {
    setWaiting(conn, dir, chunk); // the socket is closing; its close handler decides what happens
    return;
  }
  setWaiting(conn, dir, chunk.subarray(n));
  counters.pauses++;
  from?.pause();
}

function setWaiting(conn: Conn, dir: "up" | "down", bytes: Uint8Array | undefined): void {
  if (dir === "up") conn.toAgent = bytes;
  else conn.toClient = bytes;
}

/** The socket toward `dir` can take more: flush what waits, then resume the source or pass on a FIN. */
function drained(conn: Conn, dir: "up" | "down"): void {
  const to = dir === "up" ? conn.agent : conn.client;
  const from = dir === "up" ? conn.client : conn.agent;
  const waiting = dir === "up" ? conn.toAgent : conn.toClient;
  if (!to || waiting === undefined) return;
  const n = to.write(waiting);
  if (n >= 0 && n < waiting.length) {
    setWaiting(conn, dir, waiting.subarray(n));
    return;
  }
  setWaiting(conn, dir, undefined);
  const sourceFinished =
    dir === "up" ? conn.clientFin || conn.clientClosed : conn.agentFin || conn.agentClosed;
  if (sourceFinished) passFin(conn, dir);
  else if (conn.phase === "relaying") from?.resume();
}

/** The source of `dir` sent FIN (or closed): once nothing waits, shut down writing toward the other side. */
function passFin(conn: Conn, dir: "up" | "down"): void {
  if ((dir === "up" ? conn.toAgent : conn.toClient) !== undefined) return; // drained() calls again
  const to = dir === "up" ? conn.agent : conn.client;
  const toClosed = dir === "up" ? conn.agentClosed : conn.clientClosed;
  if (!to || toClosed) return;
  const sourceClosed = dir === "up" ? conn.clientClosed : conn.agentClosed;
  // A source that closed entirely cannot read our answer either: close the other side, not just half of it.
  if (sourceClosed) to.end();
  else to.shutdown();
}

/** Appends ClientHello bytes; growth stops one chunk past the peek limit. */
function appendHello(conn: Conn, chunk: Uint8Array, maxHelloBytes: number): void {
  const needed = conn.helloLen + chunk.length;
  if (needed > conn.hello.length) {
    // Growth stops one chunk past the peek limit: the parser refuses anything longer anyway.
    const grown = new Uint8Array(
      Math.max(needed, Math.min(maxHelloBytes, Math.max(1024, conn.hello.length * 2))),
    );
    grown.set(conn.hello.subarray(0, conn.helloLen));
    conn.hello = grown;
  }
  conn.hello.set(chunk, conn.helloLen);
  conn.helloLen = needed;
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
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
