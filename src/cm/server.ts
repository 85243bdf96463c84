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
 * IP only), else none. The cookie (128 random bits, `Secure; HttpOnly; Path=/`) is set on the answer that opened the session and again whenever a
 * request found its session without it. The probe hello (QueryBrokerClient) never opens one.
 *
 * This module is the HTTP side only: routes, the body limit, cookies, the load balancer's GET, counting requests.
 * flow.ts decides what a message does; conversations.ts performs it (sessions, broker calls, throttle, audit);
 * establish.ts is the allocation pipeline (broker → hold → launch → admit → rewrite). Passwords, cookies and
 * connect tags are never logged.
 */
import { Hono } from "hono";
import { bodyLimit } from "hono/body-limit";
import { clientAddress, type TrustedProxies } from "../net/client-address.ts";
import type { ConnInfo } from "../net/http1.ts";
import type { Logger } from "../observability/log.ts";
import type { SessionJournal } from "../observability/session-journal.ts";
import { windowedWarn } from "../observability/windowed-log.ts";
import {
  buildAllocateResourceResp,
  buildAuthenticateResp,
  buildByeResp,
  buildErrorResp,
  buildGetResourceListResp,
  buildHelloResp,
  parseClientRequest,
} from "../protocol/broker.ts";
import { result, resultForProtocolError } from "../protocol/results.ts";
import type { BrokerResponse } from "../protocol/types.ts";
import type { AgentClient } from "./agent-client.ts";
import { type AgentTargetRules, compileAgentTargets } from "./agent-targets.ts";
import type { Broker } from "./brokers/broker.ts";
import { type CmRandom, type CmRequest, Conversations } from "./conversations.ts";
import { type CmCounters, newCmCounters } from "./counters.ts";
import { DesktopHolds } from "./desktop-holds.ts";
import { type CmClock, EstablishmentSlots, type SessionGateway } from "./establish.ts";
import type { SessionState } from "./flow.ts";
import { createPasswordCheckGate, type PasswordCheckGate } from "./password-checks.ts";
import { createSessionStore, type SessionStore } from "./sessions.ts";
import { createThrottle, type Throttle, type ThrottleOptions } from "./throttle.ts";

export type { CmRandom } from "./conversations.ts";
export type { CmCounters } from "./counters.ts";
export type { CmClock, GatewayAdmission, SessionGateway } from "./establish.ts";

export interface CmLimits {
  /** Pre-session records kept at once (unauthenticated ones evicted first). Default 10 000. */
  readonly maxPreSessions: number;
  /** Idle pre-sessions are forgotten after this. Default 15 min. */
  readonly preSessionIdleMs: number;
  /** Password checks and allocations in flight at once; beyond, a clear busy answer. Default 200. */
  readonly maxConcurrentEstablishments: number;
  /** Largest request body (also enforced by http1). Default 64 KiB. */
  readonly bodyLimitBytes: number;
  /** Pre-session records opened from one client IP (its own oldest hello is evicted beyond). Default 64. */
  readonly maxPreSessionsPerIp: number;
  /** Password checks of one client IP at once, for a CM without a node state (tests). Default 4. */
  readonly maxPasswordChecksPerIp: number;
}

export const DEFAULT_CM_LIMITS: CmLimits = {
  maxPreSessions: 10_000,
  preSessionIdleMs: 900_000,
  maxConcurrentEstablishments: 200,
  bodyLimitBytes: 65_536,
  maxPreSessionsPerIp: 64,
  maxPasswordChecksPerIp: 4,
};

/**
 * What outlives a reload (platform/node-state.ts makes one per process and hands it to every CM generation): the
 * failed-login throttle, the desktop holds, the counters and the drain flag. A CM built without one (tests) makes
 * its own.
 */
export interface CmNodeState {
  readonly throttle: Throttle;
  /** cm.maxPasswordChecksPerIp: the password checks one client IP runs at once (the rest queue). */
  readonly passwordChecks: PasswordCheckGate;
  readonly desktopHolds: DesktopHolds;
  readonly counters: CmCounters;
  /** While draining, allocations are refused and GET answers 503. */
  readonly draining: boolean;
}

export interface CmAppOptions {
  readonly log: Logger;
  readonly broker: Broker;
  readonly agentClient: AgentClient;
  /** undefined = SG disabled (LAN mode): the agent's own target goes to the client. */
  readonly gateway?: SessionGateway;
  readonly trustedProxies: TrustedProxies;
  readonly limits?: Partial<CmLimits>;
  /** The process's state shared across reloads; without it the app makes its own from `throttle`. */
  readonly node?: CmNodeState;
  /** Options for the app's own throttle when no `node` is given. */
  readonly throttle?: ThrottleOptions;
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
  /** Where the SG may relay (with a gateway); default: port 4172 and the private ranges, no own listeners. */
  readonly agentTargets?: AgentTargetRules;
}

export interface CmApp {
  readonly app: Hono<{ Bindings: ConnInfo }>;
  /** For net/http1.ts: `startHttp1Server({ fetch: cm.fetch, … })`. */
  fetch(req: Request, info: ConnInfo): Response | Promise<Response>;
  /** While not ready (the upstream broker does not answer) GET answers 503 so load balancers look elsewhere. */
  setReady(on: boolean): void;
  /** Whether the request's cookie names a live conversation of this app (a reload routes it back here). */
  ownsConversation(req: Request): boolean;
  readonly counters: CmCounters;
  readonly throttle: Throttle;
  readonly sessions: SessionStore;
  /** Sessions by state now (metrics). */
  sessionsByState(): Record<SessionState, number>;
  /** Stops the sweep timer and ends every session (closing broker conversations). */
  close(): Promise<void>;
}

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

/** A node state of the app's own (tests and tools that run one CM without the appliance). */
export function standaloneNodeState(
  options: Pick<CmAppOptions, "throttle" | "gateway" | "limits">,
): CmNodeState & { setDraining(on: boolean): void } {
  let draining = false;
  const isLive = options.gateway?.isLive?.bind(options.gateway);
  const checksPerIp = options.limits?.maxPasswordChecksPerIp ?? DEFAULT_CM_LIMITS.maxPasswordChecksPerIp;
  return {
    throttle: createThrottle(options.throttle ?? {}),
    passwordChecks: createPasswordCheckGate({ maxPerIp: () => checksPerIp }),
    desktopHolds: new DesktopHolds(isLive),
    counters: newCmCounters(),
    get draining() {
      return draining;
    },
    setDraining(on) {
      draining = on;
    },
  };
}

/**
 * Builds the CM app: the HTTP side (routes, body limit, cookies, the load balancer's GET) around the
 * conversations (conversations.ts) and the allocation pipeline (establish.ts).
 * @example
 * const cm = createCmApp({ log, broker, agentClient: createAgentClient(), trustedProxies: compileTrustedProxies([]) });
 * const server = startHttp1Server({ hostname: "0.0.0.0", port: 443, tls, fetch: cm.fetch });
 */
export function createCmApp(options: CmAppOptions): CmApp {
  const limits: CmLimits = { ...DEFAULT_CM_LIMITS, ...options.limits };
  const clock = options.clock ?? defaultClock;
  const { log, trustedProxies } = options;
  const journal = options.journal;
  const node = options.node ?? standaloneNodeState(options);
  const { counters, throttle } = node;
  let ready = true;

  const warnOnce = windowedWarn(log);
  const store = createSessionStore({
    maxPreSessions: limits.maxPreSessions,
    maxPreSessionsPerIp: limits.maxPreSessionsPerIp,
    idleMs: limits.preSessionIdleMs,
    onRemove(s, reason) {
      s.logon = undefined;
      if (reason === "evicted" || reason === "evicted_per_ip") {
        counters.preSessionsEvicted[reason === "evicted" ? "global" : "per_ip"]++;
        const limit = reason === "evicted" ? "cm.maxPreSessions" : "cm.maxPreSessionsPerIp";
        warnOnce(
          reason,
          { limit, clientIp: s.clientIp },
          `pre-sessions: ${limit} reached; the oldest that had only said hello was evicted (never a signed-in one or one signing in); raise ${limit} if that many users really start at once from there`,
        );
      } else if (reason !== "bye") s.log.info({ reason }, `pre-session ended (${reason})`);
      journal?.cmEnded(s.logId, reason);
      void s.conversation.close().catch(() => undefined);
    },
  });
  const desktopHolds = options.enableCollaboration === false ? node.desktopHolds : undefined;
  const conversations = new Conversations({
    log,
    broker: options.broker,
    store,
    throttle,
    passwordChecks: node.passwordChecks,
    warnOnce,
    slots: new EstablishmentSlots(limits.maxConcurrentEstablishments, counters, log),
    establish: {
      agentClient: options.agentClient,
      gateway: options.gateway,
      desktopHolds,
      holdMs: options.collaborationHoldMs ?? 90_000,
      licensePath: options.licenseServerUrl ?? "",
      journal,
      counters,
      drain: node,
      clock,
      agentTargets: options.agentTargets ?? compileAgentTargets({}),
      brokerKind: options.broker.kind,
    },
    counters,
    journal,
    random: options.random ?? defaultRandom,
  });

  const sweepEveryMs = options.sweepEveryMs ?? 60_000;
  const sweepTimer =
    sweepEveryMs > 0
      ? setInterval(() => {
          const now = clock.now();
          store.sweep(now);
          void desktopHolds?.sweep(now);
        }, sweepEveryMs)
      : undefined;
  sweepTimer?.unref?.();

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

  const healthAnswer = () =>
    node.draining || !ready
      ? new Response(node.draining ? "draining\n" : "not ready\n", {
          status: 503,
          headers: { "Content-Type": "text/plain; charset=UTF-8", "Retry-After": "10" },
        })
      : new Response("ok\n", { status: 200, headers: { "Content-Type": "text/plain; charset=UTF-8" } });
  app.get("/pcoip-broker/xml", () => healthAnswer());
  app.get("/pcoip-broker/xml/", () => healthAnswer());

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
    const req: CmRequest = {
      clientIp,
      clientLogId: logIdHeader.length <= MAX_CLIENT_LOG_ID ? logIdHeader : "",
      cookie: cookieValue(raw.headers.get("cookie")),
    };
    const { reply, session } = await conversations.handle(req, parsed.msg);
    const setCookie = session && req.cookie !== session.cookie ? session.cookie : undefined;
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
    setReady(on) {
      ready = on;
    },
    ownsConversation(req) {
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
