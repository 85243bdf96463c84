/**
 * The allocation pipeline, in the order it runs:
 *
 * ```
 *  broker ──► hold ──► launch ──► admit ──► rewrite
 *  (which     (the      (launch-   (the SG   (ip-address and port → the SG's address; audit line)
 *   desktop)   desktop,  session    lets the
 *              when      on the     client
 *              collab.   agent)     reach
 *              is off)              only it)
 * ```
 *
 * Every step either hands the next one what it needs or ends the allocation with the client's failure answer;
 * the desktop hold is ended once, in one `finally`, kept only when the whole pipeline succeeded. server.ts calls
 * `establish()` inside an establishment slot; nothing here knows about HTTP or cookies.
 */
import type { Logger } from "../observability/log.ts";
import type { SessionJournal } from "../observability/session-journal.ts";
import { result } from "../protocol/results.ts";
import type { AllocateResource, AllocateResourceResp, Target } from "../protocol/types.ts";
import type { AgentClient } from "./agent-client.ts";
import { type AgentTargetRules, judgeAgentTarget } from "./agent-targets.ts";
import type { Allocation } from "./brokers/broker.ts";
import type { CmCounters } from "./counters.ts";
import type { DesktopHolds, HoldClaim } from "./desktop-holds.ts";
import type { Session } from "./sessions.ts";

/** What the CM needs of the Security Gateway (platform/session-gateway.ts puts sg/admissions.ts behind it). */
export interface SessionGateway {
  /** Admits the session; the SG lets through only what matches (SPEC §4). */
  admit(rec: GatewayAdmission): Promise<{ ok: true } | { ok: false; reason: string }>;
  /** The SG address for this client: the externalPcoipIp of the client's family and the SG port. */
  externalAddressFor(clientIp: string): Promise<{ ip: string; port: number } | undefined>;
  /** Whether the SG still holds this session (pending or live); used to hold a desktop when collaboration is off. */
  isLive?(sessionId: string): Promise<boolean>;
}

export interface GatewayAdmission {
  /** The session id the server made (SPEC §2): keys the admission, its relays and its journal record. */
  readonly sessionLogId: string;
  readonly agentSessionId: string;
  readonly clientIp: string;
  readonly agentHost: string;
  readonly agentTcpPort: number;
  readonly agentUdpPort: number;
  readonly sni: string;
}

export interface CmClock {
  now(): number;
  sleep(ms: number): Promise<void>;
}

/** Everything the pipeline uses; one per CM generation (server.ts builds it). */
export interface EstablishDeps {
  readonly agentClient: AgentClient;
  /** undefined = SG disabled (LAN mode): the agent's own target goes to the client. */
  readonly gateway: SessionGateway | undefined;
  /** undefined = collaboration on (nobody holds a desktop). */
  readonly desktopHolds: DesktopHolds | undefined;
  /** How long a desktop counts as held after an allocation when the SG cannot tell (LAN mode). */
  readonly holdMs: number;
  readonly licensePath: string;
  readonly journal: SessionJournal | undefined;
  readonly counters: CmCounters;
  readonly drain: { readonly draining: boolean };
  readonly clock: CmClock;
  /** Where the SG may relay (sg.agentPorts, sg.agentNetworks, own listeners); used with the SG on. */
  readonly agentTargets: AgentTargetRules;
  /** "builtin": the target must be the agent the CM launched on; otherwise it must lie in sg.agentNetworks. */
  readonly brokerKind: string;
}

/** What a draining node tells a client it refuses (sign-in and allocation). */
export const SHUTTING_DOWN = "The server is shutting down; please connect again";

/** Bounds password checks and allocations in flight (cm.maxConcurrentEstablishments). */
export class EstablishmentSlots {
  readonly #limit: number;
  readonly #counters: CmCounters;
  readonly #log: Logger;

  constructor(limit: number, counters: CmCounters, log: Logger) {
    this.#limit = limit;
    this.#counters = counters;
    this.#log = log;
  }

  /** Runs `fn` in a slot, or answers `busy()` at once when every slot is taken. */
  async run<T>(busy: () => T, fn: () => Promise<T>): Promise<T> {
    const c = this.#counters;
    if (c.establishing >= this.#limit) {
      c.busy++;
      this.#log.warn(
        { establishing: c.establishing, limit: this.#limit },
        "busy: cm.maxConcurrentEstablishments reached; answered with a busy failure",
      );
      return busy();
    }
    c.establishing++;
    try {
      return await fn();
    } finally {
      c.establishing--;
    }
  }
}

type Fail = { readonly ok: false; readonly resp: AllocateResourceResp };
/** Where the session runs: the target for the client, the agent host the SG relays to, the broker's answer. */
interface Launched {
  readonly ok: true;
  readonly target: Target;
  readonly agentHost: string;
  readonly base: AllocateResourceResp | undefined;
  /** The agent the built-in broker picked and the CM launched on (the only host its target may name). */
  readonly launchedOn: string | undefined;
}

const fail = (id: Parameters<typeof result>[0], text?: string): Fail => ({
  ok: false,
  resp: { op: "allocate-resource-resp", result: result(id, text) },
});

/** broker → hold → launch → admit → rewrite, for one allocate-resource of a signed-in, listed session. */
export async function establish(
  d: EstablishDeps,
  s: Session,
  msg: AllocateResource,
): Promise<AllocateResourceResp> {
  // A draining node launches nothing: an agent would log the user on for a session the SG then refuses.
  if (d.drain.draining) {
    s.log.info(
      { reason: "draining" },
      "allocating: refused, this node is draining (shutting down or upgrading)",
    );
    d.journal?.failed(s.logId, "allocate", "the node is draining");
    return fail("ALLOC_FAILED_SERVER_BUSY", SHUTTING_DOWN).resp;
  }
  const a = await s.conversation.allocateResource(msg);
  if (a.kind === "refused") {
    d.journal?.failed(s.logId, "allocate", `the broker answered ${a.resp.result.resultId}`);
    return a.resp;
  }
  d.journal?.reached(s.logId, "allocate");

  const held = await hold(d, s, a.resourceId);
  if (!held.ok) return held.resp;
  let succeeded = false;
  try {
    const launched = await launch(d, s, msg, a);
    if (!launched.ok) return launched.resp;
    const admitted = await admit(d, s, launched);
    if (!admitted.ok) return admitted.resp;
    succeeded = true;
    return rewrite(d, s, msg, a.resourceId, launched, admitted.via);
  } finally {
    held.claim?.end(succeeded);
  }
}

/** Collaboration off: the desktop is taken for this user, or refused while another user's session holds it. */
async function hold(
  d: EstablishDeps,
  s: Session,
  resourceId: string,
): Promise<{ ok: true; claim: HoldClaim | undefined } | Fail> {
  if (!d.desktopHolds) return { ok: true, claim: undefined };
  const c = await d.desktopHolds.claim(resourceId, s.user ?? "", s.logId, d.clock.now(), d.holdMs);
  if (c.ok) return { ok: true, claim: c.claim };
  s.log.info(
    { resourceId, holder: c.holder },
    `allocating ${resourceId}: refused, held by another user and enableCollaboration is off`,
  );
  return fail("ALLOC_FAILED_RESOURCE_IN_USE");
}

/** The broker's own target, or launch-session on the agent the broker picked. */
async function launch(
  d: EstablishDeps,
  s: Session,
  msg: AllocateResource,
  a: Exclude<Allocation, { kind: "refused" }>,
): Promise<Launched | Fail> {
  if (a.kind === "target") {
    const t = a.resp.target;
    return { ok: true, target: t, agentHost: t.ipAddress, base: a.resp, launchedOn: undefined };
  }
  const logon = s.logon;
  if (!logon) {
    s.log.info(
      { resourceId: a.resourceId },
      "allocating: no logon kept (the session already launched one); sign-in needed",
    );
    return fail("ALLOC_FAILED_RESOURCE_NOT_AVAILABLE", "Please sign in again to start another session");
  }
  const launched = await d.agentClient.launch(
    {
      agent: a.agent,
      logon,
      clientIp: s.clientIp,
      clientName: s.clientName,
      clientMac: msg.clientMacAddress,
      licensePath: d.licensePath,
      sessionLogId: s.logId,
    },
    s.log,
  );
  if (!launched.ok) {
    d.journal?.failed(
      s.logId,
      "agent-launch",
      `${launched.failure.result.resultId} (see the agent line above)`,
    );
    return { ok: false, resp: { op: "allocate-resource-resp", result: launched.failure.result } };
  }
  const si = launched.sessionInfo;
  const agentHost = si.ipAddress || a.agent.host;
  return {
    ok: true,
    target: {
      ipAddress: agentHost,
      hostname: a.agent.hostname,
      sni: si.sni,
      port: si.port,
      sessionId: si.sessionId,
      connectTag: si.sessionTag,
    },
    agentHost,
    base: a.resp,
    launchedOn: d.brokerKind === "builtin" ? a.agent.host : undefined,
  };
}

/** With the SG on: the session is admitted and the client is sent to the SG's address instead of the agent's. */
async function admit(
  d: EstablishDeps,
  s: Session,
  l: Launched,
): Promise<{ ok: true; via: { ip: string; port: number } | undefined } | Fail> {
  const { gateway } = d;
  if (!gateway) return { ok: true, via: undefined };
  const judged = await judgeAgentTarget(
    { host: l.agentHost, port: l.target.port },
    l.launchedOn,
    d.agentTargets,
  );
  if (!judged.ok) {
    const where = l.agentHost.includes(":")
      ? `[${l.agentHost}]:${l.target.port}`
      : `${l.agentHost}:${l.target.port}`;
    d.counters.targetsRefused[judged.rule] = (d.counters.targetsRefused[judged.rule] ?? 0) + 1;
    s.log.warn(
      { target: where, rule: judged.rule, key: judged.key },
      `admitting the session at the SG: refused the agent's target ${where}: ${judged.detail}; fix: ${judged.key}`,
    );
    d.journal?.failed(s.logId, "agent-launch", `the agent's target ${where} broke the ${judged.rule} rule`);
    return fail("ALLOC_FAILED_TO_ALLOCATE_AGENT");
  }
  const ext = await gateway.externalAddressFor(s.clientIp);
  if (!ext) {
    s.log.error(
      { clientIp: s.clientIp },
      "admitting the session at the SG: no externalPcoipIp of the client's address family; fix: add one to externalPcoipIp (one IPv4 and/or one IPv6)",
    );
    return fail("ALLOC_FAILED_TO_ALLOCATE_BROKER");
  }
  const admitted = await gateway.admit({
    sessionLogId: s.logId,
    agentSessionId: l.target.sessionId,
    clientIp: s.clientIp,
    agentHost: l.agentHost,
    agentTcpPort: l.target.port,
    agentUdpPort: l.target.port,
    sni: l.target.sni,
  });
  if (!admitted.ok) {
    d.counters.busy++;
    s.log.warn(
      { reason: admitted.reason },
      `admitting the session at the SG: refused (${admitted.reason}); fix: see sg.maxSessions / sg.maxSessionsPerClientIp, or the node is draining`,
    );
    d.journal?.failed(s.logId, "sg-tcp", `the SG refused the admission (${admitted.reason})`);
    return fail("ALLOC_FAILED_SERVER_BUSY");
  }
  d.journal?.viaGateway(s.logId);
  return { ok: true, via: ext };
}

/** The client's answer: the broker's own answer (unknown elements kept) with the target laid over it. */
function rewrite(
  d: EstablishDeps,
  s: Session,
  msg: AllocateResource,
  resourceId: string,
  l: Launched,
  via: { ip: string; port: number } | undefined,
): AllocateResourceResp {
  const target = via ? { ...l.target, ipAddress: via.ip, port: via.port } : l.target;
  const base = l.base;
  const user = s.user ?? "";
  const resp: AllocateResourceResp = {
    ...(base ?? {}),
    op: "allocate-resource-resp",
    result: base && base.result.resultId === "ALLOC_SUCCESSFUL" ? base.result : result("ALLOC_SUCCESSFUL"),
    target,
    resourceId: base?.resourceId ?? msg.resourceId,
    protocol: base?.protocol ?? (msg.protocol || "PCOIP"),
  };
  d.journal?.reached(s.logId, "agent-launch");
  const how = via ? "sg" : "direct";
  s.log.info(
    {
      audit: true,
      event: "allocation",
      user,
      clientIp: s.clientIp,
      resourceId,
      agent: l.agentHost,
      via: how,
      agentSessionId: target.sessionId,
      resultId: "ALLOC_SUCCESSFUL",
    },
    `allocation: ${user} → ${resourceId} (${how})`,
  );
  return resp;
}
