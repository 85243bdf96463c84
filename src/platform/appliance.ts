/**
 * The running appliance: every plane the configuration enables, wired together, plus live reload and drain.
 * `pcoip-cmsg run` starts one of these; tests start several in one process (no module state here).
 *
 * Reload (SIGHUP) follows build → validate → swap → retire: certificates and the CM's per-session settings change
 * for new sessions while live relays keep running; a change that cannot be applied live is refused whole
 * ("needs restart: KEY") and the previous configuration stays.
 */

import { isIP } from "node:net";
import { noDesktopsAdvice } from "../config/advice.ts";
import type { Config } from "../config/schema.ts";
import { isLoopbackHost, parseListen } from "../config/schema.ts";
import { ipFamily } from "../net/client-address.ts";
import { adminTokenOf } from "../observability/admin-token.ts";
import {
  type AdminOptions,
  type AdminServer,
  type ReadinessCheck,
  startAdminServer,
} from "../observability/health.ts";
import type { Logger } from "../observability/log.ts";
import {
  counter,
  createMetricsRegistry,
  gauge,
  type MetricsRegistry,
  samplesByLabel,
} from "../observability/metrics.ts";
import { createSessionJournal, type SessionJournal } from "../observability/session-journal.ts";
import type { Admissions } from "../sg/admissions.ts";
import { createDescriptorBudgets, type DescriptorBudgets } from "../sg/limits.ts";
import type { CertificatePair } from "../tls/certs.ts";
import { validateCipherList } from "../tls/policy.ts";
import { explainTrust, outgoingChecks, provisionServerCertificate, trustedCaFile } from "../tls/provision.ts";
import { VERSION } from "../version.ts";
import { type CmPlane, startCmPlane } from "./cm-plane.ts";
import { FrontDoors, listenProblem } from "./front-doors.ts";
import { createNodeState, type NodeState } from "./node-state.ts";
import { createSessionGateway } from "./session-gateway.ts";
import { type SgPlane, startSgPlane } from "./sg-plane.ts";

export interface ApplianceDeps {
  readonly log: Logger;
  readonly now?: () => number;
}

export interface Problem {
  readonly what: string;
  readonly cause: string;
  readonly fix: string;
  /** The configuration cannot work as written (`run` exits 78, EX_CONFIG). */
  readonly config?: boolean;
}

export type ReloadOutcome =
  | { readonly ok: true; readonly changed: readonly string[] }
  | { readonly ok: false; readonly error: string };

export interface Appliance {
  /** Bound addresses, "host:port", for the start-up log and tests (port 0 in config → the real port). */
  readonly bound: {
    readonly cm: readonly string[];
    readonly redirect: readonly string[];
    readonly sgTcp: readonly string[];
    readonly sgUdp: readonly string[];
    readonly admin?: string;
  };
  readonly config: Readonly<Config>;
  readonly admissions: Admissions | undefined;
  readonly metrics: MetricsRegistry;
  /** What outlives reloads: throttle, desktop holds, the one drain flag, the CM's counters. */
  readonly node: NodeState;
  reload(next: Readonly<Config>): Promise<ReloadOutcome>;
  /**
   * No new admissions or allocations; GET /pcoip-broker/xml answers 503; live relays go on (node.setDraining).
   * `shutdown` (SIGTERM) cannot be undone; an operator's drain (`pcoip-cmsg drain`, POST /drain) can, by
   * {@link resume}.
   */
  startDrain(why?: "operator" | "shutdown"): void;
  /** Undoes an operator's drain: the health check answers 200 again and new sessions are taken. */
  resume(): { ok: true } | { ok: false; error: string };
  /** The node state's drain flag. */
  readonly draining: boolean;
  /** Sessions a drain waits for: active, within reconnect grace, or admitted in the last few seconds. */
  liveSessions(): number;
  stop(): Promise<void>;
}

/** An admission younger than this still holds a drain although its client has not connected yet. */
const FRESH_ADMISSION_MS = 10_000;

/** Keys whose change needs a restart (sockets the kernel holds, the SG's shape). */
const RESTART_KEYS = [
  "enableSecurityGateway",
  "enableIpv6",
  "sg.tcpListen",
  "sg.udpListen",
  "sg.udpSourcePorts",
  "sg.maxSessions",
  "sg.maxSessionsPerClientIp",
  "sg.pendingTtlSeconds",
  "sg.reconnectGraceSeconds",
  "sg.udpIdleSeconds",
  "sg.udpRebindSeconds",
  "sg.udpFastPath",
  "sg.maxConnectionsPerSession",
  "sg.handshakeTimeoutSeconds",
  "cm.proxyProtocolFrom",
  "cm.workers",
  "admin.listen",
  "admin.token",
  "admin.tokenFile",
  "dataDir",
] as const;

export async function startAppliance(
  config: Readonly<Config>,
  deps: ApplianceDeps,
): Promise<{ ok: true; appliance: Appliance } | { ok: false; error: Problem }> {
  const { log } = deps;
  const stops: (() => Promise<void> | void)[] = [];
  const fail = async (error: Problem) => {
    for (const s of stops.reverse()) await s();
    return { ok: false as const, error };
  };

  // TLS first: nothing listens with a certificate that breaks a rule.
  const tls = await loadTls(config, log);
  if (!tls.ok) return fail(tls.error);
  let pair = tls.pair;

  const metrics = createMetricsRegistry();
  const budgets = descriptorBudgets(config, log);
  const limits = budgets.sg;
  const journal = createSessionJournal({ log, pendingTtlSeconds: config.sg.pendingTtlSeconds });
  stops.push(() => journal.stop());
  let shuttingDown = false;
  let current = config;
  // Desktop holds ask the SG whether a session still lives; the SG comes later, so the question waits for it.
  let admissions: Admissions | undefined;
  const node = createNodeState(config, {
    ...(config.enableSecurityGateway
      ? { isLive: async (id: string) => admissions?.get(id) !== undefined }
      : {}),
  });

  // Security Gateway.
  let sg: SgPlane | undefined;
  if (config.enableSecurityGateway) {
    const started = await startSgPlane(config, {
      log,
      limits,
      journal,
      node,
      metrics,
      ...(deps.now ? { now: deps.now } : {}),
    });
    if (!started.ok) return fail(started.error);
    sg = started.plane;
    stops.push(() => sg?.stop());
    admissions = sg.admissions;
  }
  const sgPort = sg?.tcpRelay.ports[0] ?? 4172;

  // Connection Manager.
  const cmStart = await startCmPlane(config, {
    log,
    pair,
    gateway: admissions
      ? createSessionGateway({
          admissions,
          externalAddressFor: (clientIp) => externalAddressFor(current.externalPcoipIp, clientIp, sgPort),
        })
      : undefined,
    metrics,
    journal,
    node,
    ownListeners: () => allListeners(appliance.bound),
  });
  if (!cmStart.ok) return fail(cmStart.error);
  const cm: CmPlane = cmStart.plane;
  stops.push(() => cm.close());

  const doors = new FrontDoors({
    log,
    cm,
    node,
    descriptors: budgets.cm,
    metrics,
    current: () => ({ config: current, pair }),
  });
  stops.push(() => doors.stop());
  const doorProblem = await doors.openAll(config);
  if (doorProblem) return fail(doorProblem);

  // Admin listener.
  let admin: AdminServer | undefined;
  if (config.admin.listen !== "") {
    const started = startAdminListener(config, log, metrics, () => pair, {
      readiness: async () => readiness(),
      sessions: () => sessionsView(),
      drain: () => {
        appliance.startDrain("operator");
        return { draining: true, liveSessions: appliance.liveSessions() };
      },
      resume: () => {
        const r = appliance.resume();
        return r.ok ? { draining: false, liveSessions: appliance.liveSessions() } : r;
      },
      drainState: () => ({ draining: node.draining, shuttingDown, liveSessions: appliance.liveSessions() }),
    });
    if (!started.ok) return fail(started.error);
    admin = started.admin;
    stops.push(() => admin?.stop());
  }

  registerNodeMetrics(metrics, {
    draining: () => node.draining,
    ready: () =>
      doors.readiness().every((c) => c.ok) &&
      !node.draining &&
      pair.notAfter.getTime() > Date.now() &&
      cm.brokerReachable(),
    budgets,
    journal,
    proxyRefusals: () => doors.proxyRefusals.total,
  });

  const readiness = () => readinessChecks(doors.readiness(), node, pair, cm, sg, current);
  const sessionsView = () => sessionsOf(cm, sg);

  const appliance: Appliance = {
    bound: {
      cm: [...doors.cm.entries()].map(([e, s]) => hostPort(parseListen(e)!.hostname, s.port)),
      redirect: [...doors.redirect.entries()].map(([e, s]) => hostPort(parseListen(e)!.hostname, s.port)),
      sgTcp: sg?.bound.tcp ?? [],
      sgUdp: sg?.bound.udp ?? [],
      ...(admin ? { admin: hostPort(parseListen(config.admin.listen)!.hostname, admin.port) } : {}),
    },
    get config() {
      return current;
    },
    admissions,
    metrics,
    node,
    get draining() {
      return node.draining;
    },
    startDrain(why = "shutdown") {
      if (why === "shutdown") shuttingDown = true;
      if (!node.setDraining(true)) return;
      log.info(
        { liveSessions: appliance.liveSessions(), by: why },
        "draining: no new sessions; live relays continue",
      );
    },
    resume() {
      if (shuttingDown)
        return { ok: false, error: "the node is shutting down (SIGTERM): it cannot resume; start it again" };
      if (!node.setDraining(false)) return { ok: true };
      log.info({}, "resumed: taking new sessions again (the health check answers 200)");
      return { ok: true };
    },
    liveSessions: () => {
      if (!admissions) return 0;
      // A drain waits for sessions with a control connection or in their reconnect grace, and for admissions
      // made moments ago (their client connects within seconds of its allocation); an admission nobody used for
      // longer will most likely never be, and must not hold `systemctl stop` for the whole drainSeconds.
      const t = (deps.now ?? Date.now)();
      let n = 0;
      for (const a of admissions.list())
        if (a.state !== "pending" || t - a.admittedAt < FRESH_ADMISSION_MS) n++;
      return n;
    },
    async reload(next) {
      const changed = changedKeys(current, next);
      const blocked = changed.filter((k) => RESTART_KEYS.some((r) => k === r || k.startsWith(`${r}.`)));
      if (blocked.length > 0) return { ok: false, error: `needs restart: ${blocked.join(", ")}` };
      // Build everything new before touching anything live. The certificate files are read again even when
      // their paths did not change: renewing a certificate in place and reloading is the usual way to swap it.
      let nextPair = pair;
      const t = await loadTls(next, log);
      if (!t.ok) return { ok: false, error: `${t.error.what}: ${t.error.cause}; ${t.error.fix}` };
      if (t.pair.chainPem !== pair.chainPem || t.pair.key !== pair.key) {
        nextPair = t.pair;
        changed.push("tls (certificate files)");
      } else if (t.pair.trustedCa !== pair.trustedCa) {
        // A renewed trust bundle (same path, new content) reaches the broker, agent and LDAP clients.
        nextPair = t.pair;
        changed.push("tls (trusted CA bundle)");
      }
      if (changed.length === 0) return { ok: true, changed };
      const cmResult = await cm.reload(next, nextPair);
      if (!cmResult.ok) return { ok: false, error: cmResult.error };
      // Swap.
      if (nextPair !== pair) {
        pair = nextPair;
        await doors.reloadTls(pair, next.tls.ciphers);
      }
      if (next.logLevel !== current.logLevel && !process.env.LOG_LEVEL) log.level = next.logLevel;
      const prev = current;
      current = next;
      await doors.swap(prev, next);
      return { ok: true, changed };
    },
    async stop() {
      for (const s of stops.reverse()) await s();
      stops.length = 0;
    },
  };
  return { ok: true, appliance };
}

async function loadTls(
  config: Readonly<Config>,
  log: Logger,
): Promise<{ ok: true; pair: CertificatePair } | { ok: false; error: Problem }> {
  const suites = validateCipherList(config.tls.ciphers);
  if (!suites.ok) return { ok: false, error: suites.error };
  const trust = trustedCaFile(config.tls);
  const r = await provisionServerCertificate({
    certFile: config.tls.cert,
    keyFile: config.tls.key,
    ...(config.tls.caCert ? { caFile: config.tls.caCert } : {}),
    ...(trust.file ? { trustedCaFile: trust.file } : {}),
    selfSigned: config.tls.selfSigned,
    hostAddresses: config.hostAddress,
  });
  if (!r.ok) return { ok: false, error: r.error };
  const { deprecation } = explainTrust(config.tls, outgoingChecks(config));
  if (deprecation) log.warn({ key: "tls.caCert" }, `configuration: ${deprecation}`);
  if (r.generated)
    log.info({ cert: config.tls.cert }, "generated a self-signed RSA-3072 certificate (tls.selfSigned)");
  for (const w of r.pair.warnings) log.warn({ cert: config.tls.cert }, `certificate: ${w}`);
  return { ok: true, pair: r.pair };
}

/** The external SG address matching the client's family, else the other one (dual-stack clients). */
export function externalAddressFor(
  external: readonly string[],
  clientIp: string,
  port: number,
): { ip: string; port: number } | undefined {
  const fam = ipFamily(clientIp) || 4;
  const same = external.find((ip) => isIP(ip) === fam);
  const any = same ?? external[0];
  return any ? { ip: any, port } : undefined;
}

function hostPort(hostname: string, port: number): string {
  return hostname.includes(":") ? `[${hostname}]:${port}` : `${hostname}:${port}`;
}

/** Dotted paths whose values differ (arrays compared whole). */
export function changedKeys(a: unknown, b: unknown, prefix = ""): string[] {
  if (a && b && typeof a === "object" && typeof b === "object" && !Array.isArray(a) && !Array.isArray(b)) {
    const keys = new Set([...Object.keys(a), ...Object.keys(b)]);
    return [...keys].flatMap((k) =>
      changedKeys(
        (a as Record<string, unknown>)[k],
        (b as Record<string, unknown>)[k],
        prefix ? `${prefix}.${k}` : k,
      ),
    );
  }
  return JSON.stringify(a) === JSON.stringify(b) ? [] : [prefix];
}

/** /readyz: listeners bound, not draining, certificate valid, and the CM's own checks (the broker). */
async function readinessChecks(
  listeners: readonly ReadinessCheck[],
  node: NodeState,
  pair: CertificatePair,
  cm: CmPlane,
  sg: SgPlane | undefined,
  config: Readonly<Config>,
): Promise<ReadinessCheck[]> {
  const valid = pair.notAfter.getTime() > Date.now();
  const checks: ReadinessCheck[] = [
    ...listeners,
    { name: "draining", ok: !node.draining, ...(node.draining ? { detail: "the node is draining" } : {}) },
    {
      name: "certificate",
      ok: valid,
      ...(valid ? {} : { detail: `${pair.certFile} expired ${pair.notAfter.toISOString()}` }),
    },
  ];
  checks.push(...(await cm.readiness()));
  // Which UDP data path carries media (issue 17): informational, never a reason to be unready.
  if (sg)
    checks.push({
      name: "sg-udp-path",
      ok: true,
      detail: `${sg.udpRelay.path} (${sg.udpRelay.pathReason})`,
    });
  // Ready (a balancer taking the node out fixes nothing), but the detail says what is missing.
  const advice = noDesktopsAdvice(config);
  if (advice) checks.push({ name: "desktops", ok: true, detail: `warning: ${advice}` });
  return checks;
}

/** /sessions: the SG's admissions joined with their UDP flows and the CM's signed-in user. No secrets. */
function sessionsOf(cm: CmPlane, sg: SgPlane | undefined) {
  const cmSessions = cm.sessions();
  const flows = sg?.udpRelay.flows() ?? [];
  return (sg?.admissions.list() ?? []).map((a) => ({
    sessionId: a.sessionLogId,
    clientIp: a.clientIp,
    agent: `${a.agentHost}:${a.agentTcpPort}`,
    state: a.state,
    admittedAt: new Date(a.admittedAt).toISOString(),
    tcpConnections: a.tcpConnections,
    udp: flows.filter((f) => f.sessionLogId === a.sessionLogId).map(({ sessionLogId: _, ...f }) => f),
    user: cmSessions.get(a.sessionLogId)?.user,
  }));
}

/** The admin listener (health, readiness, metrics, sessions, drain/resume) and the gauges only it shows. */
function startAdminListener(
  config: Readonly<Config>,
  log: Logger,
  metrics: MetricsRegistry,
  pair: () => CertificatePair,
  handlers: Pick<AdminOptions, "readiness" | "sessions" | "drain" | "resume" | "drainState">,
): { ok: true; admin: AdminServer } | { ok: false; error: Problem } {
  const a = parseListen(config.admin.listen)!;
  const t = adminTokenOf(config.admin);
  if (!t.ok && !isLoopbackHost(a.hostname))
    return {
      ok: false,
      error: {
        what: `admin.listen ${config.admin.listen}`,
        cause: `off loopback the admin listener needs its bearer token, and there is none (${t.cause})`,
        fix: "create admin.tokenFile (pcoip-cmsg install does: 64 random hex digits, mode 0600, owned by the service account)",
        config: true,
      },
    };
  metrics.add({
    name: "pcoip_build_info",
    help: "Build information.",
    type: "gauge",
    samples: [{ labels: { version: VERSION, bun: Bun.version }, value: 1 }],
  });
  metrics.add({
    name: "pcoip_certificate_expiry_seconds",
    help: "Seconds until the served certificate expires.",
    type: "gauge",
    samples: () => [{ value: Math.round((pair().notAfter.getTime() - Date.now()) / 1000) }],
  });
  try {
    const admin = startAdminServer({
      hostname: a.hostname,
      port: a.port,
      token: () => adminTokenOf(config.admin),
      log,
      metrics,
      ...handlers,
    });
    if (!t.ok)
      log.warn(
        { cause: t.cause },
        `admin: no bearer token (${t.cause}): /sessions and POST /drain answer 503 until admin.tokenFile exists; fix: pcoip-cmsg install creates it (0600), or write 64 random hex digits into it`,
      );
    return { ok: true, admin };
  } catch (e) {
    return { ok: false, error: listenProblem("admin.listen", config.admin.listen, e) };
  }
}

/** The planes with a descriptor budget of their own (sg/limits.ts createDescriptorBudgets). */
const PLANES = ["cm", "sg"] as const;

/**
 * What a fleet dashboard needs of every node (contrib/grafana, contrib/prometheus): ready and draining as 0/1
 * (a balancer's view of the node), each plane's descriptor budget and its use (headroom), verdicts by stage (where
 * sessions fail), front-door connections refused before HTTP (a balancer without its PROXY header).
 */

function registerNodeMetrics(
  metrics: MetricsRegistry,
  node: {
    draining: () => boolean;
    ready: () => boolean;
    budgets: DescriptorBudgets;
    journal: SessionJournal;
    proxyRefusals: () => number;
  },
): void {
  metrics.add(() => [
    gauge(
      "pcoip_node_ready",
      "1 when the node takes new sessions (what GET /pcoip-broker/xml answers 200 for), else 0.",
      [{ value: node.ready() ? 1 : 0 }],
    ),
    gauge("pcoip_node_draining", "1 while the node drains (pcoip-cmsg drain, or stopping), else 0.", [
      { value: node.draining() ? 1 : 0 },
    ]),
    gauge(
      "pcoip_descriptors_in_use",
      "Descriptors held, by plane: the CM's client connections, the SG's relays (separate budgets).",
      PLANES.map((plane) => ({ labels: { plane }, value: node.budgets[plane].inUse })),
    ),
    gauge(
      "pcoip_descriptors_budget",
      "Descriptors each plane's budget allows (from RLIMIT_NOFILE at start; -1 when unlimited).",
      PLANES.map((plane) => {
        const c = node.budgets[plane].capacity;
        return { labels: { plane }, value: Number.isFinite(c) ? c : -1 };
      }),
    ),
    counter(
      "pcoip_descriptor_refusals_total",
      "Connections or flows refused because their plane's descriptor budget was spent.",
      PLANES.map((plane) => ({ labels: { plane }, value: node.budgets[plane].refused })),
    ),
    counter(
      "pcoip_session_verdicts_total",
      "Session verdict lines by the stage they name (done, or the last stage a failed session reached).",
      samplesByLabel("stage", node.journal.verdicts),
    ),
    counter(
      "pcoip_cm_proxy_refusals_total",
      "Front-door connections refused before HTTP: PROXY header missing, malformed, or from an unlisted peer.",
      [{ value: node.proxyRefusals() }],
    ),
  ]);
}

/**
 * Two descriptor budgets under RLIMIT_NOFILE, so the process never meets EMFILE (sockets refused cleanly instead of
 * an accept loop spinning) and idle CM connections, which anyone can open, never take the relays' share.
 */
function descriptorBudgets(config: Readonly<Config>, log: Logger): DescriptorBudgets {
  return createDescriptorBudgets({
    log,
    demand: {
      sgMaxSessions: config.enableSecurityGateway ? config.sg.maxSessions : 0,
      cmMaxConnections: config.cm.maxConnections,
    },
  });
}

/** Every listener the appliance holds ("host:port"): the SG never relays to one of them. */
function allListeners(b: Appliance["bound"]): string[] {
  return [...b.cm, ...b.redirect, ...b.sgTcp, ...b.sgUdp, ...(b.admin ? [b.admin] : [])];
}
