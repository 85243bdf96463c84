/**
 * The CM's `launch-session` call to an agent (PROTOCOL.md §5): `POST https://<agent>:60443/pcoip-agent/xml`
 * with the user's logon, the client's identity, the license path and the session id, one connection per call.
 *
 * Never through a proxy. Bun's fetch sends every HTTPS request through HTTPS_PROXY when that is set, and agents
 * sit on the LAN behind it; so this client opens its own socket with Bun.connect (agent-socket.ts, which knows
 * nothing of proxy variables and costs less CPU than node:tls) and speaks HTTP/1.1 with the broker leg's
 * hand-written client (brokers/upstream-http.ts). The agent's TLS session is kept for the next call to it.
 *
 * Certificates: agents ship self-signed ones, so checking is off unless `verify` (config `agentCertCheck`);
 * then the chain must lead to `ca` and the certificate must name the desktop's host name.
 *
 * Every failure is a value: the client's result (an ALLOC_FAILED_* id with one of the sentences admins know)
 * and, for the log, what failed, the cause (DNS, refused, TLS/certificate, timeout, HTTP status, bad XML, the
 * agent's own refusal) and the fix. The password is in the request body only; nothing here logs.
 */
import { isIP } from "node:net";
import type { Duplex } from "node:stream";
import { checkServerIdentity } from "node:tls";
import type { Logger } from "../observability/log.ts";
import { buildLaunchSession, parseLaunchSessionResp, WINDOWS_PASSWORD_LOGON } from "../protocol/agent.ts";
import { result, VENDOR_TEXT } from "../protocol/results.ts";
import type { Result, SessionInfo } from "../protocol/types.ts";
import { clientTls } from "../tls/policy.ts";
import { type AgentSocket, connectAgent } from "./agent-socket.ts";
import type { AgentAddress } from "./brokers/broker.ts";
import { createHttpConnection } from "./brokers/upstream-http.ts";
import { createTlsSessionCache, type TlsSessionCache } from "./tls-sessions.ts";

export const AGENT_PATH = "/pcoip-agent/xml";
/** What the client reads when the desktop's logon refused the user (FAILED_USER_AUTH), from the CM's launch or a broker's. */
export const AGENT_REFUSED_LOGON_TEXT =
  "The remote workstation did not accept the user name, password or domain";
export const DEFAULT_AGENT_TIMEOUT_MS = 20_000;

export interface AgentClientOptions {
  /** Whole call: connect, TLS, request and answer. Default 20 s. */
  readonly timeoutMs?: number;
  /** `agentCertCheck`: verify the agent's certificate against `ca`. Default false. */
  readonly verify?: boolean;
  /** PEM trust anchor(s) for `verify` (`tls.trustedCa`). */
  readonly ca?: string;
  /** TLS 1.2 suites (default the vendor's list). */
  readonly suites?: readonly string[];
  /** Agents whose last TLS session is kept for resumption. Default 4096; 0 = always a full handshake. */
  readonly maxTlsSessions?: number;
}

export interface LaunchRequest {
  readonly agent: AgentAddress;
  readonly logon: { readonly username: string; readonly password: string; readonly domain: string };
  readonly clientIp: string;
  readonly clientName: string;
  readonly clientMac: string;
  readonly licensePath: string;
  readonly sessionLogId: string;
}

export type AgentFailureKind =
  | "dns"
  | "refused"
  | "unreachable"
  | "tls"
  | "certificate"
  | "timeout"
  | "http_status"
  | "bad_answer"
  | "user_auth"
  | "another_session"
  | "no_license"
  | "agent_refused";

export interface AgentFailure {
  readonly kind: AgentFailureKind;
  /** What the client gets. */
  readonly result: Result;
  /** "launching a session on agent host:port: cause" (no secrets). */
  readonly cause: string;
  readonly fix: string;
}

export type LaunchResult =
  | { readonly ok: true; readonly sessionInfo: SessionInfo; readonly latencyMs: number }
  | { readonly ok: false; readonly failure: AgentFailure; readonly latencyMs: number };

export interface AgentClientCounters {
  launches: number;
  failures: Record<AgentFailureKind, number>;
  /** Sum and count of call durations (ms), for an average or a Prometheus summary. */
  latencyMsSum: number;
  latencyCount: number;
  /** Connections that resumed a kept TLS session instead of a full handshake. */
  tlsResumed: number;
}

export interface AgentClient {
  launch(req: LaunchRequest, log: Logger): Promise<LaunchResult>;
  readonly counters: AgentClientCounters;
}

export function createAgentClient(options: AgentClientOptions = {}): AgentClient {
  const timeoutMs = options.timeoutMs ?? DEFAULT_AGENT_TIMEOUT_MS;
  const verify = options.verify ?? false;
  const tls = clientTls({ ca: options.ca, verify, ...(options.suites ? { suites: options.suites } : {}) });
  const sessions =
    (options.maxTlsSessions ?? 4096) > 0 ? createTlsSessionCache(options.maxTlsSessions ?? 4096) : undefined;
  const counters: AgentClientCounters = {
    launches: 0,
    failures: {
      dns: 0,
      refused: 0,
      unreachable: 0,
      tls: 0,
      certificate: 0,
      timeout: 0,
      http_status: 0,
      bad_answer: 0,
      user_auth: 0,
      another_session: 0,
      no_license: 0,
      agent_refused: 0,
    },
    latencyMsSum: 0,
    latencyCount: 0,
    tlsResumed: 0,
  };

  const call = async (req: LaunchRequest): Promise<{ ok: true; sessionInfo: SessionInfo } | AgentFailure> => {
    const { agent } = req;
    const where = `${isIP(agent.host) === 6 ? `[${agent.host}]` : agent.host}:${agent.port}`;
    const deadline = Date.now() + timeoutMs;
    const connected = await open(agent, where, tls, verify, timeoutMs, sessions);
    if ("kind" in connected) return connected;
    if (connected.socket.isSessionReused()) counters.tlsResumed++;
    // The HTTP client reads a stream's on/write/destroy only, which AgentSocket provides (agent-socket.ts).
    const conn = createHttpConnection(connected.socket as unknown as Duplex);
    try {
      const body = buildLaunchSession({
        sessionType: "UNSPECIFIED",
        ipAddress: isIP(agent.host) !== 0 ? agent.host : "",
        hostname: agent.hostname,
        logon: { method: WINDOWS_PASSWORD_LOGON, ...req.logon },
        clientMac: req.clientMac,
        clientIp: req.clientIp,
        clientName: req.clientName,
        licensePath: req.licensePath,
        sessionLogId: req.sessionLogId,
      });
      const r = await conn.exchange(
        {
          method: "POST",
          host: where,
          path: AGENT_PATH,
          headers: [
            ["Content-Type", "application/xml; charset=UTF-8"],
            ["Connection", "close"],
          ],
          body,
        },
        Math.max(1, deadline - Date.now()),
      );
      if (!r.ok) {
        if (r.kind === "timeout") return timeoutFailure(where, timeoutMs, "waiting for its answer");
        return failure(
          "bad_answer",
          "ALLOC_FAILED_TO_ALLOCATE_AGENT",
          VENDOR_TEXT.agentError,
          `agent ${where} did not answer launch-session properly: ${r.detail}`,
          "check the PCoIP agent's log on that desktop (its service may be restarting)",
        );
      }
      if (r.response.status !== 200) {
        return failure(
          "http_status",
          "ALLOC_FAILED_TO_ALLOCATE_AGENT",
          VENDOR_TEXT.agentError,
          `agent ${where} answered launch-session with HTTP ${r.response.status} ${r.response.reason}`,
          "check that the address is a PCoIP agent (port 60443, path /pcoip-agent/xml) and see its log",
        );
      }
      const session = connected.socket.getSession();
      if (session) sessions?.keep(connected.sessionKey, session);
      return interpret(where, r.response.body);
    } finally {
      conn.close();
    }
  };

  return {
    counters,
    async launch(req, log) {
      const started = Date.now();
      counters.launches++;
      const r = await call(req);
      const latencyMs = Date.now() - started;
      counters.latencyMsSum += latencyMs;
      counters.latencyCount++;
      if ("ok" in r) {
        log.debug({ agent: req.agent.host, latencyMs }, "agent launched the session");
        return { ok: true, sessionInfo: r.sessionInfo, latencyMs };
      }
      counters.failures[r.kind]++;
      log.warn(
        {
          agent: req.agent.host,
          agentPort: req.agent.port,
          failure: r.kind,
          resultId: r.result.resultId,
          latencyMs,
          fix: r.fix,
        },
        `launching a session on the agent: ${r.cause}; fix: ${r.fix}`,
      );
      return { ok: false, failure: r, latencyMs };
    },
  };
}

/**
 * Opens the TLS connection, or says why not. With `sessions`, the agent's last session is offered (resumption);
 * the caller keeps the new one once the exchange is done (TLS 1.3 sends it after the handshake).
 */
async function open(
  agent: AgentAddress,
  where: string,
  tls: ReturnType<typeof clientTls>,
  verify: boolean,
  timeoutMs: number,
  sessions: TlsSessionCache | undefined,
): Promise<{ socket: AgentSocket; sessionKey: string } | AgentFailure> {
  const serverName = isIP(agent.host) === 0 ? agent.host : undefined;
  const sessionKey = `${agent.host}|${agent.port}|${serverName ?? ""}`;
  const { result, socket } = connectAgent({
    host: agent.host,
    port: agent.port,
    serverName,
    tls,
    session: sessions?.get(sessionKey),
  });
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timedOut = new Promise<"timeout">((r) => {
    timer = setTimeout(() => r("timeout"), timeoutMs);
  });
  const r = await Promise.race([result, timedOut]);
  clearTimeout(timer);
  const failed = (f: AgentFailure): AgentFailure => {
    sessions?.drop(sessionKey);
    socket.destroy();
    return f;
  };
  if (r === "timeout") return failed(timeoutFailure(where, timeoutMs, "connecting"));
  if (!r.ok) return failed(socketFailure(r.error, where));
  if (verify) {
    const bad = judge(socket, agent, where);
    if (bad) return failed(bad);
  }
  return { socket, sessionKey };
}

function judge(socket: AgentSocket, agent: AgentAddress, where: string): AgentFailure | undefined {
  const fix =
    "put the CA that issued the agents' certificates in tls.trustedCa, or install a certificate from that CA on the agent, or set agentCertCheck = false";
  if (!socket.authorized) {
    const code = socket.authorizationError || "unknown";
    if (code !== "ERR_TLS_CERT_ALTNAME_INVALID") {
      return failure(
        "certificate",
        "ALLOC_FAILED_TO_ALLOCATE_AGENT",
        VENDOR_TEXT.agentError,
        `the certificate of agent ${where} is not trusted (${code}); agentCertCheck is on`,
        fix,
      );
    }
  }
  const peer = socket.getPeerCertificate();
  const name = agent.hostname || agent.host;
  if (checkServerIdentity(name, peer)) {
    return failure(
      "certificate",
      "ALLOC_FAILED_TO_ALLOCATE_AGENT",
      VENDOR_TEXT.agentError,
      `the certificate of agent ${where} does not name ${name} (it names ${peer.subjectaltname || "nothing"}); agentCertCheck is on`,
      "set the desktop's hostname to a name in the agent's certificate, or reissue the agent's certificate",
    );
  }
  return undefined;
}

function socketFailure(e: Error & { code?: string }, where: string): AgentFailure {
  const code = e.code ?? "";
  if (code === "ENOTFOUND" || code === "EAI_AGAIN" || code === "EAI_FAIL" || code === "EAI_NONAME") {
    return failure(
      "dns",
      "ALLOC_FAILED_TO_ALLOCATE_BROKER_PORT_UNREACHABLE",
      VENDOR_TEXT.agentError,
      `the agent's name in ${where} does not resolve (${code})`,
      "check the desktop's agent address in the config and this host's DNS (/etc/resolv.conf)",
    );
  }
  if (code === "ECONNREFUSED") {
    return failure(
      "refused",
      "ALLOC_FAILED_TO_ALLOCATE_BROKER_PORT_UNREACHABLE",
      VENDOR_TEXT.agentError,
      `agent ${where} refused the connection`,
      "check that the PCoIP agent runs on that desktop and that its firewall allows TCP 60443 from this host",
    );
  }
  if (code === "EHOSTUNREACH" || code === "ENETUNREACH" || code === "EADDRNOTAVAIL") {
    return failure(
      "unreachable",
      "ALLOC_FAILED_TO_ALLOCATE_BROKER_PORT_UNREACHABLE",
      VENDOR_TEXT.agentError,
      `agent ${where} is unreachable (${code})`,
      "check routing and firewalls between this host and the desktop (TCP 60443)",
    );
  }
  const tlsish = /ssl|tls|handshake|cert|ECONNRESET|EPROTO/i.test(`${code} ${e.message}`);
  return failure(
    tlsish ? "tls" : "refused",
    "ALLOC_FAILED_TO_ALLOCATE_AGENT",
    VENDOR_TEXT.agentError,
    `TLS with agent ${where} failed (${code || e.message})`,
    code === "ECONNRESET"
      ? "the agent reset the TLS handshake: a certificate key under 2048 bits does this (reissue it), or the agent is restarting"
      : "check the agent's certificate and TLS settings (TLS 1.2 or 1.3 with an AES-GCM suite)",
  );
}

function timeoutFailure(where: string, timeoutMs: number, doing: string): AgentFailure {
  return failure(
    "timeout",
    "ALLOC_FAILED_TO_ALLOCATE_AGENT",
    VENDOR_TEXT.agentTimeout,
    `agent ${where} did not finish ${doing} within ${timeoutMs} ms`,
    "check that the desktop is up and not overloaded, and that TCP 60443 is open from this host (a firewall that drops, rather than refuses, looks like this)",
  );
}

/** The agent's answer → session-info, or what its refusal means for the client. */
function interpret(where: string, body: string): { ok: true; sessionInfo: SessionInfo } | AgentFailure {
  const parsed = parseLaunchSessionResp(body);
  if (!parsed.ok) {
    return failure(
      "bad_answer",
      "ALLOC_FAILED_TO_ALLOCATE_AGENT",
      VENDOR_TEXT.agentError,
      `agent ${where} answered launch-session with something that is not a launch-session-resp (${parsed.error.detail})`,
      "check that the address is a PCoIP agent (port 60443) and see its log",
    );
  }
  const r = parsed.msg;
  const reason = r.failReason ? ` ("${r.failReason.slice(0, 200)}")` : "";
  if (r.resultId === "SUCCESSFUL") {
    const si = r.sessionInfo;
    if (!si || si.port <= 0 || si.sessionId === "" || si.sessionTag === "") {
      return failure(
        "bad_answer",
        "ALLOC_FAILED_TO_ALLOCATE_AGENT",
        VENDOR_TEXT.agentError,
        `agent ${where} answered SUCCESSFUL without a complete session-info (port, session-id, session-tag)`,
        "update the PCoIP agent; see its log",
      );
    }
    return { ok: true, sessionInfo: si };
  }
  if (r.resultId === "FAILED_USER_AUTH") {
    return failure(
      "user_auth",
      "ALLOC_FAILED_TO_ALLOCATE_AGENT",
      AGENT_REFUSED_LOGON_TEXT,
      `agent ${where} refused the user's logon (FAILED_USER_AUTH)${reason}`,
      "the password checked by this CM is not what the desktop's Windows/AD logon accepts: check the domain sent (domains, ldap.defaultDomain) and that the desktop is joined to the directory",
    );
  }
  if (r.resultId === "FAILED_ANOTHER_SESSION_STARTED" || r.resultId === "FAILED_ANOTHER_SESION_STARTED") {
    return failure(
      "another_session",
      "ALLOC_FAILED_RESOURCE_IN_USE",
      undefined,
      `agent ${where} has a session of another user (${r.resultId})${reason}`,
      "the desktop is in use; the other user must disconnect first",
    );
  }
  if (r.resultId.includes("LICENSE")) {
    return failure(
      "no_license",
      "ALLOC_FAILED_NO_LICENSE",
      undefined,
      `agent ${where} has no PCoIP session license (${r.resultId})${reason}`,
      "check licenseServerUrl and the license server, or the agent's own licensing",
    );
  }
  return failure(
    "agent_refused",
    "ALLOC_FAILED_TO_ALLOCATE_AGENT",
    VENDOR_TEXT.agentError,
    `agent ${where} refused launch-session (${r.resultId.slice(0, 64)})${reason}`,
    "see the PCoIP agent's log on that desktop",
  );
}

function failure(
  kind: AgentFailureKind,
  id: Parameters<typeof result>[0],
  text: string | undefined,
  cause: string,
  fix: string,
): AgentFailure {
  return { kind, result: result(id, text), cause, fix };
}
