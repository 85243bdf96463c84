/**
 * The Connection Manager's HTTP face (SPEC §3): a hono app that net/http1.ts serves on 443 (`app.fetch(req,
 * info)`, so `c.env` is the connection's ConnInfo).
 *
 * - `POST /pcoip-broker/xml` (and with a trailing slash): the broker protocol. Always HTTP 200 with an XML body
 *   (`Content-Type: application/xml; charset=UTF-8`, XML declaration first). A body that is not a parsable
 *   `pcoip-client` request gets `<error-resp>`; a message out of order gets its `*-resp` with a failure result.
 * - `GET /pcoip-broker/xml`: 200 for load balancers, 503 while draining or not ready.
 *
 * Sessions: found by the `JSESSIONID` cookie, else by the `Client-Log-Id` header (from the session's own client
 * IP only), else none. The cookie (128
 * random bits, `Secure; HttpOnly; Path=/`) is set on the answer that opened the session and again whenever a
 * request found its session without it. The probe hello (QueryBrokerClient) never opens one.
 *
 * flow.ts decides; this module performs: it opens and ends sessions, calls the broker, throttles failed logins,
 * bounds concurrent establishments, launches sessions on agents, admits them at the SG and rewrites the target,
 * writes audit lines, and counts. Passwords, cookies and connect tags are never logged.
 */
import { Hono } from "hono";
import { bodyLimit } from "hono/body-limit";
import { clientAddress, type TrustedProxies } from "../net/client-address.ts";
import type { ConnInfo } from "../net/http1.ts";
import { type Logger, sessionLogger } from "../observability/log.ts";
import type { SessionJournal } from "../observability/session-journal.ts";
import {
  buildAllocateResourceResp,
  buildAuthenticateResp,
  buildByeResp,
  buildErrorResp,
  buildGetResourceListResp,
  buildHelloResp,
  parseClientRequest,
} from "../protocol/broker.ts";
import { RESULTS, result, resultForProtocolError, VENDOR_TEXT } from "../protocol/results.ts";
import type {
  AllocateResource,
  AllocateResourceResp,
  Authenticate,
  BrokerResponse,
  ClientRequest,
  Target,
} from "../protocol/types.ts";
import type { AgentClient } from "./agent-client.ts";
import type { AuthenticateOutcome, Broker, ConversationContext } from "./brokers/broker.ts";
import {
  type Effect,
  plan,
  type SessionState,
  type Settled,
  settleAllocate,
  settleAuthenticate,
  settleBye,
  settleHello,
  settleList,
} from "./flow.ts";
import { createSessionStore, type Session, type SessionStore } from "./sessions.ts";
import { createThrottle, type Throttle, type ThrottleOptions } from "./throttle.ts";

/** What the CM needs of the Security Gateway (the lead wires sg/admissions.ts behind it). */
export interface SessionGateway {
  /** Admits the session; the SG lets through only what matches (SPEC §4). */
  admit(rec: GatewayAdmission): { ok: true } | { ok: false; reason: string };
  /** The SG address for this client: the externalPcoipIp of the client's family and the SG port. */
  externalAddressFor(clientIp: string): { ip: string; port: number } | undefined;
  /** Whether the SG still holds this session (pending or live); used to hold a desktop when collaboration is off. */
  isLive?(sessionLogId: string): boolean;
}

export interface GatewayAdmission {
  readonly sessionLogId: string;
  readonly agentSessionId: string;
  readonly clientIp: string;
  readonly agentHost: string;
  readonly agentTcpPort: number;
  readonly agentUdpPort: number;
  readonly sni: string;
}

export interface CmLimits {
  /** Pre-session records kept at once (unauthenticated ones evicted first). Default 10 000. */
  readonly maxPreSessions: number;
  /** Idle pre-sessions are forgotten after this. Default 15 min. */
  readonly preSessionIdleMs: number;
  /** Password checks and allocations in flight at once; beyond, a clear busy answer. Default 200. */
  readonly maxConcurrentEstablishments: number;
  /** Largest request body (also enforced by http1). Default 64 KiB. */
  readonly bodyLimitBytes: number;
}

export const DEFAULT_CM_LIMITS: CmLimits = {
  maxPreSessions: 10_000,
  preSessionIdleMs: 900_000,
  maxConcurrentEstablishments: 200,
  bodyLimitBytes: 65_536,
};

export interface CmClock {
  now(): number;
  sleep(ms: number): Promise<void>;
}

export interface CmRandom {
  /** `n` random bytes (the cookie value). */
  bytes(n: number): Uint8Array;
  /** A UUIDv4 (the session id when the client sent no UUID-shaped Client-Log-Id). */
  uuid(): string;
}

export interface CmAppOptions {
  readonly log: Logger;
  readonly broker: Broker;
  readonly agentClient: AgentClient;
  /** undefined = SG disabled (LAN mode): the agent's own target goes to the client. */
  readonly gateway?: SessionGateway;
  readonly trustedProxies: TrustedProxies;
  readonly limits?: Partial<CmLimits>;
  /** Options for the failed-login throttle, or a throttle to share. */
  readonly throttle?: ThrottleOptions | Throttle;
  /** Default true. When false, a desktop held by one user is refused to another. */
  readonly enableCollaboration?: boolean;
  /** How long a desktop counts as held after an allocation when the SG cannot tell (LAN mode). Default 90 s. */
  readonly collaborationHoldMs?: number;
  /** Fills launch-session/license-path. */
  readonly licenseServerUrl?: string;
  readonly clock?: CmClock;
  readonly random?: CmRandom;
  /** Idle-session sweep period; 0 = only on new sessions. Default 60 s. */
  readonly sweepEveryMs?: number;
  /** Where each session's progress goes for its verdict line (the appliance shares one with the SG). */
  readonly journal?: SessionJournal;
}

export interface CmCounters {
  requests: number;
  /** Bodies answered with error-resp (bad XML, wrong root, unknown operation, too large). */
  protocolErrors: number;
  probes: number;
  loginsOk: number;
  loginsFailed: number;
  /** Attempts answered at once by the throttle (also counted in loginsFailed). */
  loginsThrottled: number;
  /** Busy answers (maxConcurrentEstablishments reached, or the SG full). */
  busy: number;
  /** allocate-resource answers by result id. */
  allocations: Record<string, number>;
  /** Establishments in flight now. */
  establishing: number;
}

export interface CmApp {
  readonly app: Hono<{ Bindings: ConnInfo }>;
  /** For net/http1.ts: `startHttp1Server({ fetch: cm.fetch, … })`. */
  fetch(req: Request, info: ConnInfo): Response | Promise<Response>;
  /** While draining (or not ready) GET answers 503 so load balancers move new clients elsewhere. */
  setDraining(on: boolean): void;
  setReady(on: boolean): void;
  readonly draining: boolean;
  /** Whether the request's cookie names a live session of this app (a reload routes it back here). */
  holds(req: Request): boolean;
  readonly counters: CmCounters;
  readonly throttle: Throttle;
  readonly sessions: SessionStore;
  /** Sessions by state now (metrics). */
  sessionsByState(): Record<SessionState, number>;
  /** Stops the sweep timer and ends every session (closing broker conversations). */
  close(): Promise<void>;
}

const UUID_SHAPE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const COOKIE_VALUE = /^[0-9a-f]{32}$/;
const COOKIE_NAME = "JSESSIONID";
/** Longer Client-Log-Id values are ignored: the header is a lookup key, not a store. */
const MAX_CLIENT_LOG_ID = 128;
const XML_TYPE = "application/xml; charset=UTF-8";

const defaultClock: CmClock = {
  now: () => Date.now(),
  sleep: (ms) => new Promise((r) => setTimeout(r, ms)),
};
const defaultRandom: CmRandom = {
  bytes: (n) => crypto.getRandomValues(new Uint8Array(n)),
  uuid: () => crypto.randomUUID(),
};

/**
 * Builds the CM app.
 * @example
 * const cm = createCmApp({ log, broker, agentClient: createAgentClient(), trustedProxies: compileTrustedProxies([]) });
 * const server = startHttp1Server({ hostname: "0.0.0.0", port: 443, tls, fetch: cm.fetch });
 */
export function createCmApp(options: CmAppOptions): CmApp {
  const limits: CmLimits = { ...DEFAULT_CM_LIMITS, ...options.limits };
  const clock = options.clock ?? defaultClock;
  const random = options.random ?? defaultRandom;
  const { log, broker, agentClient, gateway, trustedProxies } = options;
  const journal = options.journal;
  const collaboration = options.enableCollaboration ?? true;
  const holdMs = options.collaborationHoldMs ?? 90_000;
  const licensePath = options.licenseServerUrl ?? "";
  const throttle: Throttle =
    options.throttle && "admit" in options.throttle
      ? options.throttle
      : createThrottle(options.throttle ?? {});
  let draining = false;
  let ready = true;

  const counters: CmCounters = {
    requests: 0,
    protocolErrors: 0,
    probes: 0,
    loginsOk: 0,
    loginsFailed: 0,
    loginsThrottled: 0,
    busy: 0,
    allocations: {},
    establishing: 0,
  };

  const store = createSessionStore({
    maxPreSessions: limits.maxPreSessions,
    idleMs: limits.preSessionIdleMs,
    onRemove(s, reason) {
      s.logon = undefined;
      if (reason !== "bye") s.log.info({ reason }, `pre-session ended (${reason})`);
      journal?.cmEnded(s.logId, reason);
      void s.conversation.close().catch(() => undefined);
    },
  });

  /** desktop (resource id) → who holds it, when collaboration is off. */
  const holds = new Map<string, { user: string; logId: string; until: number; pending: boolean }>();
  const holdLive = (h: { logId: string; until: number; pending: boolean }, now: number) =>
    h.pending || (gateway?.isLive ? gateway.isLive(h.logId) : now < h.until);

  const sweepTimer =
    (options.sweepEveryMs ?? 60_000) > 0
      ? setInterval(() => {
          const now = clock.now();
          store.sweep(now);
          for (const [k, h] of holds) if (!holdLive(h, now)) holds.delete(k);
        }, options.sweepEveryMs ?? 60_000)
      : undefined;
  sweepTimer?.unref?.();

  const newCookie = () => Buffer.from(random.bytes(16)).toString("hex");
  const sessionIdFor = (clientLogId: string) =>
    UUID_SHAPE.test(clientLogId) ? clientLogId.toLowerCase() : random.uuid();

  // ---- one request ---------------------------------------------------------------------------------------

  interface Req {
    readonly clientIp: string;
    readonly clientLogId: string;
    readonly cookie: string | undefined;
  }

  const handle = async (
    req: Req,
    msg: ClientRequest,
  ): Promise<{ reply: BrokerResponse; session?: Session }> => {
    const now = clock.now();
    // The Client-Log-Id fallback only counts from the session's own client IP: the header is not a secret
    // (clients write it into their logs), the cookie is.
    const byLogId = req.clientLogId !== "" ? store.byClientLogId(req.clientLogId, now) : undefined;
    const s =
      (req.cookie ? store.get(req.cookie, now) : undefined) ??
      (byLogId && byLogId.clientIp === req.clientIp ? byLogId : undefined);
    if (!s) return run(req, msg, undefined);
    store.touch(s, now);
    s.clientIp = req.clientIp;
    // One request of a session at a time, in arrival order.
    const done = s.queue.then(() => run(req, msg, s));
    s.queue = done.catch(() => undefined);
    return done;
  };

  const run = async (
    req: Req,
    msg: ClientRequest,
    found: Session | undefined,
  ): Promise<{ reply: BrokerResponse; session?: Session }> => {
    let session = found && store.get(found.id, clock.now()) === found ? found : undefined;
    const p = plan(msg, session?.state, clock.now());
    if (p.kind === "reply") {
      session?.log.info(
        { op: msg.op, state: session.state },
        `${msg.op} out of order: answered with a failure`,
      );
      return { reply: p.reply, ...(session ? { session } : {}) };
    }
    for (const e of p.effects) if (e.kind === "open-session") session = openSession(req, session);
    try {
      switch (p.call) {
        case "probe": {
          counters.probes++;
          const logId = sessionIdFor(req.clientLogId);
          const ctx = context(req, logId, sessionLogger(log, logId));
          return { reply: await broker.probe(msg as Extract<ClientRequest, { op: "hello" }>, ctx) };
        }
        case "hello": {
          const s = session!;
          if (msg.op === "hello") s.clientName = msg.clientInfo.hostname;
          const resp = await s.conversation.hello(msg as Extract<ClientRequest, { op: "hello" }>);
          return finish(s, settleHello(resp));
        }
        case "authenticate":
          return finish(session!, await authenticate(session!, msg as Authenticate));
        case "list": {
          const s = session!;
          const resp = await s.conversation.getResourceList(
            msg as Extract<ClientRequest, { op: "get-resource-list" }>,
          );
          if (resp.result.resultId === "LIST_SUCCESSFUL") journal?.reached(s.logId, "list");
          else journal?.failed(s.logId, "list", resp.result.resultId);
          return finish(s, settleList(s.state, resp));
        }
        case "allocate": {
          const s = session!;
          const resp = await allocate(s, msg as AllocateResource);
          counters.allocations[resp.result.resultId] = (counters.allocations[resp.result.resultId] ?? 0) + 1;
          return finish(s, settleAllocate(s.state, resp));
        }
        case "bye": {
          const s = session!;
          const resp = await s.conversation.bye(msg as Extract<ClientRequest, { op: "bye" }>);
          return finish(s, settleBye(resp));
        }
      }
    } catch (e) {
      // A broker or agent module threw: a bug. The client still gets its operation's failure, never a 500.
      (session?.log ?? log).error({ err: e, op: msg.op }, `handling ${msg.op}: unexpected error`);
      if (session && msg.op === "bye") {
        store.remove(session, "bye");
        return { reply: failureFor(msg) };
      }
      return { reply: failureFor(msg), ...(session ? { session } : {}) };
    }
  };

  const context = (req: Req, logId: string, slog: Logger): ConversationContext => ({
    sessionLogId: logId,
    clientIp: req.clientIp,
    clientLogId: req.clientLogId,
    log: slog,
  });

  /** Creates a session, or restarts `existing` in place (same cookie, fresh conversation, sign-in forgotten). */
  const openSession = (req: Req, existing: Session | undefined): Session => {
    const now = clock.now();
    if (existing) {
      existing.logon = undefined;
      existing.user = undefined;
      existing.state = "hello";
      void existing.conversation.close().catch(() => undefined);
      if (UUID_SHAPE.test(req.clientLogId) && req.clientLogId.toLowerCase() !== existing.logId) {
        existing.logId = req.clientLogId.toLowerCase();
        existing.log = sessionLogger(log, existing.logId);
      }
      if (req.clientLogId !== existing.clientLogId) store.setClientLogId(existing, req.clientLogId);
      existing.conversation = broker.openConversation(context(req, existing.logId, existing.log));
      existing.log.info({ clientIp: req.clientIp }, "pre-session restarted by a new hello");
      return existing;
    }
    const logId = sessionIdFor(req.clientLogId);
    const slog = sessionLogger(log, logId);
    const s: Session = {
      id: newCookie(),
      logId,
      clientLogId: req.clientLogId,
      state: "hello",
      createdAt: now,
      lastSeen: now,
      clientIp: req.clientIp,
      clientName: "",
      conversation: broker.openConversation(context(req, logId, slog)),
      log: slog,
      queue: Promise.resolve(),
    };
    store.add(s, now);
    slog.info({ clientIp: req.clientIp }, "pre-session opened");
    journal?.reached(s.logId, "hello");
    return s;
  };

  const finish = (s: Session, settled: Settled): { reply: BrokerResponse; session?: Session } => {
    apply(s, settled.effects);
    return store.get(s.id, clock.now()) === s
      ? { reply: settled.reply, session: s }
      : { reply: settled.reply };
  };

  const apply = (s: Session, effects: readonly Effect[]) => {
    const now = clock.now();
    for (const e of effects) {
      switch (e.kind) {
        case "set-state":
          s.state = e.state;
          break;
        case "signed-in":
          s.user = e.user;
          break;
        case "remember-logon":
          s.logon = e.logon;
          break;
        case "forget-logon":
          s.logon = undefined;
          break;
        case "throttle":
          if (e.outcome === "failure") throttle.recordFailure(s.clientIp, e.user, now);
          else throttle.recordSuccess(s.clientIp, e.user, now);
          break;
        case "audit":
          if (e.event === "login_ok") counters.loginsOk++;
          else counters.loginsFailed++;
          if (e.event === "login_ok") journal?.reached(s.logId, "auth");
          else journal?.failed(s.logId, "auth", e.resultId);
          s.log.info(
            { audit: true, event: e.event, user: e.user, clientIp: s.clientIp, resultId: e.resultId },
            e.event === "login_ok" ? `login ok: ${e.user}` : `login failed: ${e.user} (${e.resultId})`,
          );
          break;
        case "end-session":
          store.remove(s, "bye");
          s.log.info({ state: s.state }, "pre-session ended by bye");
          break;
        case "open-session":
          break;
      }
    }
  };

  // ---- establishment steps -------------------------------------------------------------------------------

  const withSlot = async <T>(busy: () => T, fn: () => Promise<T>): Promise<T> => {
    if (counters.establishing >= limits.maxConcurrentEstablishments) {
      counters.busy++;
      log.warn(
        { establishing: counters.establishing, limit: limits.maxConcurrentEstablishments },
        "busy: cm.maxConcurrentEstablishments reached; answered with a busy failure",
      );
      return busy();
    }
    counters.establishing++;
    try {
      return await fn();
    } finally {
      counters.establishing--;
    }
  };

  const authenticate = async (s: Session, msg: Authenticate): Promise<Settled> => {
    const now = clock.now();
    const method = msg.method || "password";
    const verdict = throttle.admit(s.clientIp, msg.username, now);
    if (verdict.kind === "refuse") {
      counters.loginsThrottled++;
      counters.loginsFailed++;
      s.log.info(
        {
          audit: true,
          event: "login_failed",
          user: msg.username,
          clientIp: s.clientIp,
          throttled: verdict.reason,
        },
        `login failed: ${msg.username} (throttled: ${verdict.reason})`,
      );
      return {
        reply: {
          op: "authenticate-resp",
          method,
          result: result("AUTH_FAILED_UNKNOWN_USERNAME_OR_PASSWORD"),
        },
        effects: [],
      };
    }
    try {
      if (verdict.waitMs > 0) {
        s.log.info(
          { waitMs: verdict.waitMs, user: msg.username },
          "failed logins: delaying the password check",
        );
        await clock.sleep(verdict.waitMs);
      }
      const outcome = await withSlot<AuthenticateOutcome>(
        () => ({
          resp: {
            op: "authenticate-resp" as const,
            method,
            result: result("AUTH_FAILED_BROKER_ERROR", RESULTS.ALLOC_FAILED_SERVER_BUSY),
          },
        }),
        () => s.conversation.authenticate(msg),
      );
      return settleAuthenticate(s.state, msg, outcome);
    } finally {
      verdict.release();
    }
  };

  const allocate = (s: Session, msg: AllocateResource): Promise<AllocateResourceResp> =>
    withSlot(
      () => ({ op: "allocate-resource-resp", result: result("ALLOC_FAILED_SERVER_BUSY") }),
      () => allocateNow(s, msg),
    );

  const allocateNow = async (s: Session, msg: AllocateResource): Promise<AllocateResourceResp> => {
    const fail = (id: Parameters<typeof result>[0], text?: string): AllocateResourceResp => ({
      op: "allocate-resource-resp",
      result: result(id, text),
    });
    // A draining node launches nothing: an agent would log the user on for a session the SG then refuses.
    if (draining) {
      s.log.info(
        { reason: "draining" },
        "allocating: refused, this node is draining (shutting down or upgrading)",
      );
      journal?.failed(s.logId, "allocate", "the node is draining");
      return fail("ALLOC_FAILED_SERVER_BUSY", "The server is shutting down; please connect again");
    }
    const a = await s.conversation.allocateResource(msg);
    if (a.kind === "refused") {
      journal?.failed(s.logId, "allocate", `the broker answered ${a.resp.result.resultId}`);
      return a.resp;
    }
    journal?.reached(s.logId, "allocate");
    const user = s.user ?? "";
    const resourceId = a.resourceId;

    let held = false;
    if (!collaboration) {
      const now = clock.now();
      const h = holds.get(resourceId);
      if (h && holdLive(h, now) && h.user.toLowerCase() !== user.toLowerCase() && h.logId !== s.logId) {
        s.log.info(
          { resourceId, holder: h.user },
          `allocating ${resourceId}: refused, held by another user and enableCollaboration is off`,
        );
        return fail("ALLOC_FAILED_RESOURCE_IN_USE");
      }
      holds.set(resourceId, { user, logId: s.logId, until: now + holdMs, pending: true });
      held = true;
    }
    const release = () => {
      if (held && holds.get(resourceId)?.logId === s.logId) holds.delete(resourceId);
    };

    let target: Target;
    let base: AllocateResourceResp | undefined;
    let agentHost: string;
    if (a.kind === "target") {
      target = a.resp.target;
      base = a.resp;
      agentHost = target.ipAddress;
    } else {
      const logon = s.logon;
      if (!logon) {
        release();
        s.log.info(
          { resourceId },
          "allocating: no logon kept (the session already launched one); sign-in needed",
        );
        return fail("ALLOC_FAILED_RESOURCE_NOT_AVAILABLE", "Please sign in again to start another session");
      }
      const launched = await agentClient.launch(
        {
          agent: a.agent,
          logon,
          clientIp: s.clientIp,
          clientName: s.clientName,
          clientMac: msg.clientMacAddress,
          licensePath,
          sessionLogId: s.logId,
        },
        s.log,
      );
      if (!launched.ok) {
        release();
        journal?.failed(
          s.logId,
          "agent-launch",
          `${launched.failure.result.resultId} (see the agent line above)`,
        );
        return { op: "allocate-resource-resp", result: launched.failure.result };
      }
      const si = launched.sessionInfo;
      agentHost = si.ipAddress || a.agent.host;
      target = {
        ipAddress: agentHost,
        hostname: a.agent.hostname,
        sni: si.sni,
        port: si.port,
        sessionId: si.sessionId,
        connectTag: si.sessionTag,
      };
      base = a.resp;
    }

    let via = "direct";
    if (gateway) {
      const ext = gateway.externalAddressFor(s.clientIp);
      if (!ext) {
        release();
        s.log.error(
          { clientIp: s.clientIp },
          "admitting the session at the SG: no externalPcoipIp of the client's address family; fix: add one to externalPcoipIp (one IPv4 and/or one IPv6)",
        );
        return fail("ALLOC_FAILED_TO_ALLOCATE_BROKER");
      }
      const admitted = gateway.admit({
        sessionLogId: s.logId,
        agentSessionId: target.sessionId,
        clientIp: s.clientIp,
        agentHost,
        agentTcpPort: target.port,
        agentUdpPort: target.port,
        sni: target.sni,
      });
      if (!admitted.ok) {
        release();
        counters.busy++;
        s.log.warn(
          { reason: admitted.reason },
          `admitting the session at the SG: refused (${admitted.reason}); fix: see sg.maxSessions / sg.maxSessionsPerClientIp, or the node is draining`,
        );
        journal?.failed(s.logId, "sg-tcp", `the SG refused the admission (${admitted.reason})`);
        return fail("ALLOC_FAILED_SERVER_BUSY");
      }
      target = { ...target, ipAddress: ext.ip, port: ext.port };
      via = "sg";
      journal?.viaGateway(s.logId);
    }
    if (held) {
      const h = holds.get(resourceId);
      if (h && h.logId === s.logId) h.pending = false;
    }
    const resp: AllocateResourceResp = {
      ...(base ?? {}),
      op: "allocate-resource-resp",
      result: base && base.result.resultId === "ALLOC_SUCCESSFUL" ? base.result : result("ALLOC_SUCCESSFUL"),
      target,
      resourceId: base?.resourceId ?? msg.resourceId,
      protocol: base?.protocol ?? (msg.protocol || "PCOIP"),
    };
    journal?.reached(s.logId, "agent-launch");
    s.log.info(
      {
        audit: true,
        event: "allocation",
        user,
        clientIp: s.clientIp,
        resourceId,
        agent: agentHost,
        via,
        agentSessionId: target.sessionId,
        resultId: "ALLOC_SUCCESSFUL",
      },
      `allocation: ${user} → ${resourceId} (${via})`,
    );
    return resp;
  };

  // ---- HTTP ----------------------------------------------------------------------------------------------

  const xml = (body: string, cookie?: string): Response => {
    const headers = new Headers({ "Content-Type": XML_TYPE, "Cache-Control": "no-store" });
    if (cookie) headers.append("Set-Cookie", `${COOKIE_NAME}=${cookie}; Path=/; Secure; HttpOnly`);
    return new Response(body, { status: 200, headers });
  };

  const errorResp = (r: ReturnType<typeof resultForProtocolError>): Response => {
    counters.protocolErrors++;
    return xml(buildErrorResp(r));
  };

  const app = new Hono<{ Bindings: ConnInfo }>();

  app.get("/pcoip-broker/xml", (c) => healthAnswer(c.req.raw));
  app.get("/pcoip-broker/xml/", (c) => healthAnswer(c.req.raw));
  const healthAnswer = (_req: Request) =>
    draining || !ready
      ? new Response(draining ? "draining\n" : "not ready\n", {
          status: 503,
          headers: { "Content-Type": "text/plain; charset=UTF-8", "Retry-After": "10" },
        })
      : new Response("ok\n", { status: 200, headers: { "Content-Type": "text/plain; charset=UTF-8" } });

  const limit = bodyLimit({
    maxSize: limits.bodyLimitBytes,
    onError: () => errorResp(result("PROTOCOL_ERROR_REQUEST_TOO_LARGE")),
  });

  const post = async (c: { req: { raw: Request; text(): Promise<string> }; env: ConnInfo }) => {
    counters.requests++;
    const raw = c.req.raw;
    const info = c.env;
    const clientIp = clientAddress(
      info?.remoteAddress ?? "",
      raw.headers.get("x-forwarded-for"),
      trustedProxies,
    );
    const body = await c.req.text();
    const parsed = parseClientRequest(body);
    if (!parsed.ok) {
      log.info(
        { clientIp, problem: parsed.error.kind, detail: parsed.error.detail },
        `broker request refused: ${parsed.error.detail}`,
      );
      return errorResp(resultForProtocolError(parsed.error));
    }
    const logIdHeader = (raw.headers.get("client-log-id") ?? "").trim();
    const req: Req = {
      clientIp,
      clientLogId: logIdHeader.length <= MAX_CLIENT_LOG_ID ? logIdHeader : "",
      cookie: cookieValue(raw.headers.get("cookie")),
    };
    const { reply, session } = await handle(req, parsed.msg);
    const setCookie = session && req.cookie !== session.id ? session.id : undefined;
    return xml(buildResponse(reply), setCookie);
  };

  for (const path of ["/pcoip-broker/xml", "/pcoip-broker/xml/"]) app.post(path, limit, (c) => post(c));

  app.notFound((c) => c.text("not found\n", 404));
  app.onError((err) => {
    log.error({ err }, "broker request: unexpected error");
    return errorResp(result("PROTOCOL_ERROR_MALFORMED_REQUEST"));
  });

  return {
    app,
    fetch: (req, info) => app.fetch(req, info),
    setDraining(on) {
      draining = on;
    },
    setReady(on) {
      ready = on;
    },
    get draining() {
      return draining;
    },
    holds(req) {
      const c = cookieValue(req.headers.get("cookie"));
      return c !== undefined && store.get(c, clock.now()) !== undefined;
    },
    counters,
    throttle,
    sessions: store,
    sessionsByState: () => store.countsByState(),
    async close() {
      if (sweepTimer) clearInterval(sweepTimer);
      store.clear();
      holds.clear();
    },
  };
}

/** The JSESSIONID value of a Cookie header when it has our shape (anything else is no cookie). */
function cookieValue(header: string | null): string | undefined {
  if (!header) return undefined;
  for (const part of header.split(";")) {
    const eq = part.indexOf("=");
    if (eq < 0) continue;
    if (part.slice(0, eq).trim() !== COOKIE_NAME) continue;
    const v = part
      .slice(eq + 1)
      .trim()
      .replace(/^"|"$/g, "");
    if (COOKIE_VALUE.test(v)) return v;
  }
  return undefined;
}

function buildResponse(r: BrokerResponse): string {
  switch (r.op) {
    case "hello-resp":
      return buildHelloResp(r);
    case "authenticate-resp":
      return buildAuthenticateResp(r);
    case "get-resource-list-resp":
      return buildGetResourceListResp(r);
    case "allocate-resource-resp":
      return buildAllocateResourceResp(r);
    case "bye-resp":
      return buildByeResp(r);
  }
}

/** The operation's failure answer for an unexpected error (VENDOR_TEXT: the broker side failed). */
function failureFor(msg: ClientRequest): BrokerResponse {
  switch (msg.op) {
    case "hello":
      return { op: "hello-resp", brokers: [], authenticationMethods: [], domains: [] };
    case "authenticate":
      return {
        op: "authenticate-resp",
        method: msg.method || "password",
        result: result("AUTH_FAILED_BROKER_ERROR", VENDOR_TEXT.brokerError),
      };
    case "get-resource-list":
      return { op: "get-resource-list-resp", result: result("LIST_FAILED_BROKER_ERROR"), resources: [] };
    case "allocate-resource":
      return { op: "allocate-resource-resp", result: result("ALLOC_FAILED_TO_ALLOCATE_BROKER") };
    case "bye":
      return { op: "bye-resp" };
  }
}
