/**
 * The running appliance: every plane the configuration enables, wired together, plus live reload and drain.
 * `pcoip-cmsg run` starts one of these; tests start several in one process (no module state here).
 *
 * Reload (SIGHUP) follows build → validate → swap → retire: certificates and the CM's per-session settings change
 * for new sessions while live relays keep running; a change that cannot be applied live is refused whole
 * ("needs restart: KEY") and the previous configuration stays.
 */
import { isIP } from "node:net";
import { createRedirectApp } from "../cm/redirect.ts";
import type { GatewayAdmission } from "../cm/server.ts";
import type { Config } from "../config/schema.ts";
import { effectiveListeners, isLoopbackHost, parseListen, parsePortRange } from "../config/schema.ts";
import { compileTrustedProxies, ipFamily, type TrustedProxies } from "../net/client-address.ts";
import { type ConnectionGuard, createConnectionGuard } from "../net/connection-guard.ts";
import { type ConnInfo, type Http1Server, startHttp1Server } from "../net/http1.ts";
import { adminTokenOf } from "../observability/admin-token.ts";
import { type AdminServer, type ReadinessCheck, startAdminServer } from "../observability/health.ts";
import type { Logger } from "../observability/log.ts";
import { createMetricsRegistry, type MetricsRegistry } from "../observability/metrics.ts";
import { createSessionJournal, type SessionJournal } from "../observability/session-journal.ts";
import { type Admissions, createAdmissions } from "../sg/admissions.ts";
import { createDescriptorBudgets, type DescriptorBudgets } from "../sg/limits.ts";
import { startTcpRelay, type TcpRelay } from "../sg/tcp-relay.ts";
import { startUdpRelay, type UdpRelay } from "../sg/udp-relay.ts";
import type { CertificatePair } from "../tls/certs.ts";
import { serverTls, validateCipherList } from "../tls/policy.ts";
import { explainTrust, outgoingChecks, provisionServerCertificate, trustedCaFile } from "../tls/provision.ts";
import { VERSION } from "../version.ts";
import { type CmPlane, startCmPlane } from "./cm-plane.ts";

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
  reload(next: Readonly<Config>): Promise<ReloadOutcome>;
  /**
   * No new admissions or allocations; GET /pcoip-broker/xml answers 503; live relays go on. `shutdown` (SIGTERM)
   * cannot be undone; an operator's drain (`pcoip-cmsg drain`, POST /drain) can, by {@link resume}.
   */
  startDrain(why?: "operator" | "shutdown"): void;
  /** Undoes an operator's drain: the health check answers 200 again and new sessions are taken. */
  resume(): { ok: true } | { ok: false; error: string };
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
  // Two descriptor budgets under RLIMIT_NOFILE, so the process never meets EMFILE (sockets refused cleanly instead
  // of an accept loop spinning) and idle CM connections, which anyone can open, never take the relays' share.
  const budgets = createDescriptorBudgets({ log });
  const limits = budgets.sg;
  const journal = createSessionJournal({ log, pendingTtlSeconds: config.sg.pendingTtlSeconds });
  stops.push(() => journal.stop());
  let draining = false;
  let shuttingDown = false;
  let current = config;

  // Security Gateway.
  let admissions: Admissions | undefined;
  let tcpRelay: TcpRelay | undefined;
  let udpRelay: UdpRelay | undefined;
  const sgTcp: string[] = [];
  const sgUdp: string[] = [];
  if (config.enableSecurityGateway) {
    admissions = createAdmissions({
      pendingTtlMs: config.sg.pendingTtlSeconds * 1000,
      reconnectGraceMs: config.sg.reconnectGraceSeconds * 1000,
      maxSessions: config.sg.maxSessions,
      maxPerClientIp: config.sg.maxSessionsPerClientIp,
      ...(deps.now ? { now: deps.now } : {}),
    });
    stops.push(() => admissions?.close());
    // A replaced admission is the same session allocating again (same id): it goes on, so no end line yet.
    const unsubscribeJournal = admissions.subscribe((e) => {
      if (e.reason !== "replaced") journal.sgEnded(e.admission.sessionLogId, e.reason);
    });
    stops.push(unsubscribeJournal);
    const tcpListen = listenAddresses(effectiveListeners(config.sg.tcpListen, config.enableIpv6));
    const t = await startTcpRelay({
      listen: tcpListen,
      admissions,
      log,
      handshakeTimeoutMs: config.sg.handshakeTimeoutSeconds * 1000,
      maxConnectionsPerSession: config.sg.maxConnectionsPerSession,
      limits,
      journal,
    });
    if (!t.ok) return fail(t.error);
    tcpRelay = t.relay;
    stops.push(() => t.relay.stop());
    sgTcp.push(...tcpListen.map((a, i) => hostPort(a.hostname, t.relay.ports[i] ?? a.port)));
    const udpListen = listenAddresses(effectiveListeners(config.sg.udpListen, config.enableIpv6));
    const u = await startUdpRelay({
      listen: udpListen,
      admissions,
      log,
      sourcePorts: parsePortRange(config.sg.udpSourcePorts),
      idleMs: config.sg.udpIdleSeconds * 1000,
      rebindMs: config.sg.udpRebindSeconds * 1000,
      fastPath: config.sg.udpFastPath,
      limits,
      journal,
      ...(deps.now ? { now: deps.now } : {}),
    });
    if (!u.ok) return fail(u.error);
    udpRelay = u.relay;
    stops.push(() => u.relay.stop());
    sgUdp.push(...udpListen.map((a, i) => hostPort(a.hostname, u.relay.ports[i] ?? a.port)));
    registerSgMetrics(metrics, admissions, tcpRelay, udpRelay);
  }
  const sgPort = tcpRelay?.ports[0] ?? 4172;

  // Connection Manager.
  const cmStart = await startCmPlane(config, {
    log,
    pair,
    gateway: admissions
      ? {
          admit: (rec: GatewayAdmission) => {
            if (draining) return { ok: false, reason: "draining" };
            const r = admissions!.admit(rec);
            return r.ok ? { ok: true } : { ok: false, reason: r.reason };
          },
          externalAddressFor: (clientIp: string) =>
            externalAddressFor(current.externalPcoipIp, clientIp, sgPort),
          isLive: (sessionLogId: string) => admissions?.get(sessionLogId) !== undefined,
        }
      : undefined,
    metrics,
    journal,
  });
  if (!cmStart.ok) return fail(cmStart.error);
  const cm: CmPlane = cmStart.plane;
  stops.push(() => cm.close());

  const cmServers = new Map<string, Http1Server>();
  const redirectServers = new Map<string, Http1Server>();
  // PROXY protocol peers (a restart key: it decides whether a listener runs native TLS or TLS after a header).
  const proxyProtocolFrom = compileTrustedProxies(config.cm.proxyProtocolFrom);
  const proxyRefusals = refusalLog(log);
  const onProxyRefused = (reason: string, info: ConnInfo) => proxyRefusals.log(info.remoteAddress, reason);
  const frontDoorGuard = startFrontDoorGuard(() => current, proxyProtocolFrom, metrics, log);
  const frontDoorLimits = (c: Readonly<Config>) => ({
    maxBodyBytes: c.cm.bodyLimitBytes,
    headerTimeoutMs: c.cm.headerTimeoutSeconds * 1000,
    idleTimeoutMs: c.cm.idleTimeoutSeconds * 1000,
  });
  const openCm = (entry: string): Problem | undefined => {
    const a = parseListen(entry)!;
    try {
      const s = startHttp1Server({
        hostname: a.hostname,
        port: a.port,
        tls: serverTls({ chainPem: pair.chainPem, key: pair.key, suites: current.tls.ciphers }),
        fetch: (req, info) => cm.fetch(req, info),
        limits: frontDoorLimits(current),
        maxConnections: current.cm.maxConnections,
        descriptors: budgets.cm,
        guard: frontDoorGuard,
        proxyProtocolFrom,
        onRefused: onProxyRefused,
        onError: (err) => log.error({ err: String(err) }, "front door: request handler failed"),
      });
      cmServers.set(entry, s);
      return undefined;
    } catch (e) {
      return listenProblem("cm.listen", entry, e);
    }
  };
  const openRedirect = (entry: string, httpsPort: number): Problem | undefined => {
    const a = parseListen(entry)!;
    const app = createRedirectApp({
      httpsPort,
      ready: () => !draining && cm.brokerReachable(),
      get hostAddress() {
        return current.hostAddress; // a reload's hostAddress applies to the next redirect
      },
      httpsHost: parseListen(effectiveListeners(current.cm.listen, current.enableIpv6)[0] ?? "")?.hostname,
    });
    try {
      redirectServers.set(
        entry,
        startHttp1Server({
          hostname: a.hostname,
          port: a.port,
          fetch: (req, info) => app.fetch(req, info),
          limits: frontDoorLimits(current),
          maxConnections: current.cm.maxConnections,
          descriptors: budgets.cm,
          guard: frontDoorGuard,
          proxyProtocolFrom,
          onRefused: onProxyRefused,
        }),
      );
      return undefined;
    } catch (e) {
      return listenProblem("cm.redirectListen", entry, e);
    }
  };
  for (const entry of effectiveListeners(config.cm.listen, config.enableIpv6)) {
    const p = openCm(entry);
    if (p) return fail(p);
  }
  stops.push(() => {
    for (const s of cmServers.values()) s.stop({ closeActive: true });
  });
  const httpsPort = [...cmServers.values()][0]?.port ?? 443;
  for (const entry of effectiveListeners(config.cm.redirectListen, config.enableIpv6)) {
    const p = openRedirect(entry, httpsPort);
    if (p) return fail(p);
  }
  stops.push(() => {
    for (const s of redirectServers.values()) s.stop({ closeActive: true });
  });

  // Admin listener.
  let admin: AdminServer | undefined;
  if (config.admin.listen !== "") {
    const a = parseListen(config.admin.listen)!;
    const t = adminTokenOf(config.admin);
    if (!t.ok && !isLoopbackHost(a.hostname))
      return fail({
        what: `admin.listen ${config.admin.listen}`,
        cause: `off loopback the admin listener needs its bearer token, and there is none (${t.cause})`,
        fix: "create admin.tokenFile (pcoip-cmsg install does: 64 random hex digits, mode 0600, owned by the service account)",
        config: true,
      });
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
      samples: () => [{ value: Math.round((pair.notAfter.getTime() - Date.now()) / 1000) }],
    });
    try {
      admin = startAdminServer({
        hostname: a.hostname,
        port: a.port,
        token: () => adminTokenOf(config.admin),
        log,
        metrics,
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
        drainState: () => ({ draining, shuttingDown, liveSessions: appliance.liveSessions() }),
      });
      stops.push(() => admin?.stop());
      if (!t.ok)
        log.warn(
          { cause: t.cause },
          `admin: no bearer token (${t.cause}): /sessions and POST /drain answer 503 until admin.tokenFile exists; fix: pcoip-cmsg install creates it (0600), or write 64 random hex digits into it`,
        );
    } catch (e) {
      return fail(listenProblem("admin.listen", config.admin.listen, e));
    }
  }

  registerNodeMetrics(metrics, {
    draining: () => draining,
    ready: () =>
      cmServers.size > 0 && !draining && pair.notAfter.getTime() > Date.now() && cm.brokerReachable(),
    budgets,
    journal,
    proxyRefusals: () => proxyRefusals.total,
  });

  const readiness = async (): Promise<ReadinessCheck[]> => {
    const checks: ReadinessCheck[] = [
      { name: "listeners", ok: cmServers.size > 0 },
      { name: "draining", ok: !draining, ...(draining ? { detail: "the node is draining" } : {}) },
      {
        name: "certificate",
        ok: pair.notAfter.getTime() > Date.now(),
        ...(pair.notAfter.getTime() > Date.now()
          ? {}
          : { detail: `${pair.certFile} expired ${pair.notAfter.toISOString()}` }),
      },
    ];
    checks.push(...(await cm.readiness()));
    // Which UDP data path carries media (issue 17): informational, never a reason to be unready.
    if (udpRelay)
      checks.push({ name: "sg-udp-path", ok: true, detail: `${udpRelay.path} (${udpRelay.pathReason})` });
    return checks;
  };

  const sessionsView = () => {
    const cmSessions = cm.sessions();
    const sg = admissions?.list() ?? [];
    const flows = udpRelay?.flows() ?? [];
    return sg.map((a) => ({
      sessionId: a.sessionLogId,
      clientIp: a.clientIp,
      agent: `${a.agentHost}:${a.agentTcpPort}`,
      state: a.state,
      admittedAt: new Date(a.admittedAt).toISOString(),
      tcpConnections: a.tcpConnections,
      udp: flows.filter((f) => f.sessionLogId === a.sessionLogId).map(({ sessionLogId: _, ...f }) => f),
      user: cmSessions.get(a.sessionLogId)?.user,
    }));
  };

  const appliance: Appliance = {
    bound: {
      cm: [...cmServers.entries()].map(([e, s]) => hostPort(parseListen(e)!.hostname, s.port)),
      redirect: [...redirectServers.entries()].map(([e, s]) => hostPort(parseListen(e)!.hostname, s.port)),
      sgTcp,
      sgUdp,
      ...(admin ? { admin: hostPort(parseListen(config.admin.listen)!.hostname, admin.port) } : {}),
    },
    get config() {
      return current;
    },
    admissions,
    metrics,
    get draining() {
      return draining;
    },
    startDrain(why = "shutdown") {
      if (why === "shutdown") shuttingDown = true;
      if (draining) return;
      draining = true;
      admissions?.setDraining(true);
      cm.setDraining(true);
      log.info(
        { liveSessions: appliance.liveSessions(), by: why },
        "draining: no new sessions; live relays continue",
      );
    },
    resume() {
      if (shuttingDown)
        return { ok: false, error: "the node is shutting down (SIGTERM): it cannot resume; start it again" };
      if (!draining) return { ok: true };
      draining = false;
      admissions?.setDraining(false);
      cm.setDraining(false);
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
        for (const s of cmServers.values())
          s.reloadTls(serverTls({ chainPem: pair.chainPem, key: pair.key, suites: next.tls.ciphers }));
      }
      if (next.logLevel !== current.logLevel && !process.env.LOG_LEVEL) log.level = next.logLevel;
      const prev = current;
      current = next;
      // Listeners that changed: open the new ones first, then stop accepting on the old (connections stay).
      for (const [key, servers, open] of [
        ["cm.listen", cmServers, (e: string) => openCm(e)],
        ["cm.redirectListen", redirectServers, (e: string) => openRedirect(e, httpsPort)],
      ] as const) {
        const [before, after] =
          key === "cm.listen"
            ? [prev.cm.listen, next.cm.listen]
            : [prev.cm.redirectListen, next.cm.redirectListen];
        const want = effectiveListeners(after, next.enableIpv6);
        const had = effectiveListeners(before, prev.enableIpv6);
        for (const e of want.filter((x) => !had.includes(x))) {
          const p = open(e);
          if (p)
            log.error(
              { what: p.what, cause: p.cause, fix: p.fix },
              `reload: ${key}: could not listen on ${e}`,
            );
        }
        for (const e of had.filter((x) => !want.includes(x))) {
          servers.get(e)?.stop();
          servers.delete(e);
        }
      }
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

/**
 * Front-door connections refused before any HTTP byte (PROXY header missing, malformed or from a peer not in
 * cm.proxyProtocolFrom): one warning per peer and reason per minute, so a misconfigured balancer is named in the
 * log without a line per health check.
 */
function refusalLog(log: Logger) {
  const last = new Map<string, number>();
  let total = 0;
  return {
    get total() {
      return total;
    },
    log(peer: string, reason: string) {
      total++;
      const key = `${peer} ${reason}`;
      const now = Date.now();
      if ((last.get(key) ?? 0) > now - 60_000) return;
      if (last.size > 1000) last.clear();
      last.set(key, now);
      log.warn(
        { peer, reason },
        `front door: connection from ${peer} refused: ${reason}; fix: list the balancer's address in ` +
          "cm.proxyProtocolFrom and send the header from it (HAProxy: send-proxy-v2), or from nowhere else",
      );
    },
  };
}

function listenAddresses(list: readonly string[]) {
  return list.map((e) => parseListen(e)!);
}

function hostPort(hostname: string, port: number): string {
  return hostname.includes(":") ? `[${hostname}]:${port}` : `${hostname}:${port}`;
}

function listenProblem(key: string, entry: string, e: unknown): Problem {
  const msg = e instanceof Error ? e.message : String(e);
  const inUse = /in use|EADDRINUSE/i.test(msg);
  const denied = /EACCES|permission/i.test(msg);
  return {
    what: `${key}: listening on ${entry}`,
    cause: inUse ? "the address is already in use" : denied ? "permission denied" : msg,
    fix: inUse
      ? `stop what holds the port (ss -ltnp | grep ${entry.split(":").pop()}) or change ${key}`
      : denied
        ? "ports below 1024 need CAP_NET_BIND_SERVICE (the systemd unit grants it) or root"
        : `check that the address exists on this host, or change ${key}`,
  };
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
    {
      name: "pcoip_node_ready",
      help: "1 when the node takes new sessions (what GET /pcoip-broker/xml answers 200 for), else 0.",
      type: "gauge",
      samples: [{ value: node.ready() ? 1 : 0 }],
    },
    {
      name: "pcoip_node_draining",
      help: "1 while the node drains (pcoip-cmsg drain, or stopping), else 0.",
      type: "gauge",
      samples: [{ value: node.draining() ? 1 : 0 }],
    },
    {
      name: "pcoip_descriptors_in_use",
      help: "Descriptors held, by plane: the CM's client connections, the SG's relays (separate budgets).",
      type: "gauge",
      samples: PLANES.map((plane) => ({ labels: { plane }, value: node.budgets[plane].inUse })),
    },
    {
      name: "pcoip_descriptors_budget",
      help: "Descriptors each plane's budget allows (from RLIMIT_NOFILE at start; -1 when unlimited).",
      type: "gauge",
      samples: PLANES.map((plane) => {
        const c = node.budgets[plane].capacity;
        return { labels: { plane }, value: Number.isFinite(c) ? c : -1 };
      }),
    },
    {
      name: "pcoip_descriptor_refusals_total",
      help: "Connections or flows refused because their plane's descriptor budget was spent.",
      type: "counter",
      samples: PLANES.map((plane) => ({ labels: { plane }, value: node.budgets[plane].refused })),
    },
    {
      name: "pcoip_session_verdicts_total",
      help: "Session verdict lines by the stage they name (done, or the last stage a failed session reached).",
      type: "counter",
      samples: Object.entries(node.journal.verdicts).map(([stage, value]) => ({ labels: { stage }, value })),
    },
    {
      name: "pcoip_cm_proxy_refusals_total",
      help: "Front-door connections refused before HTTP: PROXY header missing, malformed, or from an unlisted peer.",
      type: "counter",
      samples: [{ value: node.proxyRefusals() }],
    },
  ]);
}

/**
 * The front door's per-IP connection cap (cm.maxConnectionsPerIp, live on reload; balancers exempt) and the
 * metric of its refusals.
 */
function startFrontDoorGuard(
  config: () => Readonly<Config>,
  proxyProtocolFrom: TrustedProxies,
  metrics: MetricsRegistry,
  log: Logger,
): ConnectionGuard {
  let compiled: { from: readonly string[]; set: TrustedProxies } | undefined;
  const trusted = (): TrustedProxies => {
    const list = config().trustedProxies;
    if (compiled?.from !== list) compiled = { from: list, set: compileTrustedProxies(list) };
    return compiled.set;
  };
  const guard = createConnectionGuard({
    maxPerIp: () => config().cm.maxConnectionsPerIp,
    exempt: (ip) => proxyProtocolFrom.has(ip) || trusted().has(ip),
    log,
  });
  metrics.add(() => [
    {
      name: "pcoip_cm_connection_refusals_total",
      help: "CM/port-80 connections closed at accept, by reason (per_ip, max_connections, descriptors).",
      type: "counter",
      samples: Object.entries(guard.refusals).map(([reason, value]) => ({ labels: { reason }, value })),
    },
  ]);
  return guard;
}

function registerSgMetrics(
  metrics: MetricsRegistry,
  admissions: Admissions,
  tcp: TcpRelay,
  udp: UdpRelay,
): void {
  metrics.add(() => {
    const a = admissions.counters;
    const t = tcp.counters;
    const u = udp.counters;
    const byState = { pending: 0, active: 0, ended: 0 };
    for (const rec of admissions.list()) byState[rec.state]++;
    return [
      {
        name: "pcoip_sg_sessions",
        help: "SG sessions by state.",
        type: "gauge",
        samples: Object.entries(byState).map(([state, value]) => ({ labels: { state }, value })),
      },
      {
        name: "pcoip_sg_admissions_total",
        help: "Sessions admitted by the CM.",
        type: "counter",
        samples: [{ value: a.admitted }],
      },
      {
        name: "pcoip_sg_admission_refusals_total",
        help: "Admissions refused, by reason.",
        type: "counter",
        samples: Object.entries(a.refused).map(([reason, value]) => ({ labels: { reason }, value })),
      },
      {
        name: "pcoip_sg_tcp_accepted_total",
        help: "Control connections accepted on 4172.",
        type: "counter",
        samples: [{ value: t.accepted }],
      },
      {
        name: "pcoip_sg_tcp_relays_open",
        help: "TCP relays open now.",
        type: "gauge",
        samples: [{ value: t.active }],
      },
      {
        name: "pcoip_sg_tcp_denials_total",
        help: "Control connections refused, by reason.",
        type: "counter",
        samples: Object.entries(t.refused).map(([reason, value]) => ({ labels: { reason }, value })),
      },
      {
        name: "pcoip_sg_tcp_bytes_total",
        help: "Bytes relayed on TCP 4172.",
        type: "counter",
        samples: [
          { labels: { direction: "to_agent" }, value: t.bytesToAgent },
          { labels: { direction: "to_client" }, value: t.bytesToClient },
        ],
      },
      {
        name: "pcoip_sg_udp_packets_total",
        help: "UDP datagrams relayed.",
        type: "counter",
        samples: [
          { labels: { direction: "to_agent" }, value: u.packetsUp },
          { labels: { direction: "to_client" }, value: u.packetsDown },
        ],
      },
      {
        name: "pcoip_sg_udp_bytes_total",
        help: "UDP bytes relayed.",
        type: "counter",
        samples: [
          { labels: { direction: "to_agent" }, value: u.bytesUp },
          { labels: { direction: "to_client" }, value: u.bytesDown },
        ],
      },
      {
        name: "pcoip_sg_udp_flows_open",
        help: "UDP session sockets open now.",
        type: "gauge",
        samples: [{ value: u.sessionsOpen }],
      },
      {
        name: "pcoip_sg_udp_path",
        help: "The UDP data path in use (1 for the active one): kernel (nftables) or userspace.",
        type: "gauge",
        samples: (["kernel", "userspace"] as const).map((path) => ({
          labels: { path },
          value: udp.path === path ? 1 : 0,
        })),
      },
      {
        name: "pcoip_sg_udp_fastpath_flows",
        help: "UDP flows the kernel carries now.",
        type: "gauge",
        samples: [{ value: udp.fastPathFlows }],
      },
      {
        name: "pcoip_sg_udp_drops_total",
        help: "UDP datagrams dropped, by reason.",
        type: "counter",
        samples: Object.entries(u.drops).map(([reason, value]) => ({ labels: { reason }, value })),
      },
    ] as const;
  });
}
