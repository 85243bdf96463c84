/**
 * The Connection Manager as the appliance runs it: the configuration mapped onto the CM's modules (broker,
 * authenticators, agent client, limits) and rebuilt on reload, so new sessions get new settings while
 * conversations already under way finish on the objects they started with. What must outlive a reload (throttle,
 * desktop holds, drain flag, counters) is the node state (node-state.ts), handed to every generation.
 */

import { readFileSync } from "node:fs";
import { hostname } from "node:os";
import { createAgentClient } from "../cm/agent-client.ts";
import { compileAgentTargets } from "../cm/agent-targets.ts";
import type { Authenticator } from "../cm/auth/authenticator.ts";
import { createLdapAuthenticator } from "../cm/auth/ldap.ts";
import { createLocalUsers } from "../cm/auth/local-users.ts";
import type { Broker } from "../cm/brokers/broker.ts";
import { createBuiltinBroker } from "../cm/brokers/builtin.ts";
import { type BrokerReachability, watchBroker } from "../cm/brokers/reachability.ts";
import { createUpstreamBroker } from "../cm/brokers/upstream.ts";
import type { CmCounters } from "../cm/counters.ts";
import type { PasswordCheckCounters } from "../cm/password-checks.ts";
import { type CmApp, createCmApp, type SessionGateway } from "../cm/server.ts";
import type { Config } from "../config/schema.ts";
import { parseAgentAddress } from "../config/schema.ts";
import { compileTrustedProxies } from "../net/client-address.ts";
import type { ConnInfo } from "../net/http1.ts";
import type { ReadinessCheck } from "../observability/health.ts";
import type { Logger } from "../observability/log.ts";
import {
  counter,
  gauge,
  type MetricFamily,
  type MetricsRegistry,
  samplesByLabel,
} from "../observability/metrics.ts";
import type { SessionJournal } from "../observability/session-journal.ts";
import type { ProductInfo } from "../protocol/types.ts";
import type { CertificatePair } from "../tls/certs.ts";
import { PRODUCT_NAME, VERSION } from "../version.ts";
import type { NodeState } from "./node-state.ts";

export interface CmPlaneDeps {
  readonly log: Logger;
  readonly pair: CertificatePair;
  readonly gateway: SessionGateway | undefined;
  readonly metrics: MetricsRegistry;
  /** Session progress for the verdict lines, shared with the SG. */
  readonly journal?: SessionJournal;
  /** What outlives reloads: every generation gets this one. */
  readonly node: NodeState;
  /** The appliance's bound listeners ("host:port"): the SG never relays to them. */
  readonly ownListeners?: () => readonly string[];
}

export interface CmPlane {
  fetch(req: Request, info: ConnInfo): Response | Promise<Response>;
  readiness(): Promise<ReadinessCheck[]>;
  /** False while the upstream broker does not answer (the redirect listener's GET health answer follows it). */
  brokerReachable(): boolean;
  /** Live CM sessions by session id (the admin view joins them with the SG's). */
  sessions(): Map<string, { user?: string }>;
  /** Builds the CM for `next`; on success new requests use it and the previous one is retired. */
  reload(next: Readonly<Config>, pair: CertificatePair): Promise<{ ok: true } | { ok: false; error: string }>;
  close(): Promise<void>;
}

interface Built {
  app: CmApp;
  broker: Broker;
  /** Upstream brokers are probed in the background; the CM's GET health answer follows the result. */
  reach: BrokerReachability;
}

export async function startCmPlane(
  config: Readonly<Config>,
  deps: CmPlaneDeps,
): Promise<
  { ok: true; plane: CmPlane } | { ok: false; error: { what: string; cause: string; fix: string } }
> {
  const { log } = deps;
  const first = build(config, deps.pair, deps);
  if (!first.ok) return first;
  let current: Built = first.built;
  const retired: Built[] = [];
  log.info({ broker: current.broker.kind }, current.broker.description);

  const counters = deps.node.counters;
  deps.metrics.add(() => {
    const byState: Record<string, number> = {};
    for (const b of [current, ...retired])
      for (const [k, v] of Object.entries(b.app.sessionsByState())) byState[k] = (byState[k] ?? 0) + v;
    return [...cmFamilies(counters, byState), ...perIpFamilies(counters, deps.node.passwordChecks.counters)];
  });

  // A reload builds a new CM app; the previous one keeps answering the conversations it holds (by cookie) until
  // they end or expire, so a client mid-login when `systemctl reload` lands finishes on the settings it started
  // with instead of being thrown back to hello. Retired apps with no session left are closed.
  const retireTimer = setInterval(() => {
    for (const old of [...retired]) {
      if (old.app.sessions.size > 0) continue;
      retired.splice(retired.indexOf(old), 1);
      old.reach.stop();
      void old.app.close();
      void old.broker.close?.();
    }
  }, 5_000);
  retireTimer.unref?.();

  const plane: CmPlane = {
    fetch(req, info) {
      if (retired.length > 0 && req.method === "POST") {
        for (let i = retired.length - 1; i >= 0; i--) {
          const old = retired[i]!;
          if (old.app.ownsConversation(req)) return old.app.fetch(req, info);
        }
      }
      return current.app.fetch(req, info);
    },
    async readiness() {
      const r = await current.reach.check();
      return [{ name: "broker", ok: r.ok, detail: r.detail }];
    },
    brokerReachable: () => current.reach.reachable,
    sessions() {
      const out = new Map<string, { user?: string }>();
      for (const b of [current, ...retired]) {
        for (const s of b.app.sessions.list()) out.set(s.logId, { ...(s.user ? { user: s.user } : {}) });
      }
      return out;
    },
    async reload(next, pair) {
      const r = build(next, pair, deps);
      if (!r.ok) return { ok: false, error: `${r.error.what}: ${r.error.cause}; ${r.error.fix}` };
      const old = current;
      deps.node.reconfigure(next);
      current = r.built;
      retired.push(old);
      log.info({ broker: current.broker.kind }, current.broker.description);
      // The old app's broker probe stops now (readiness follows the new broker); its sessions finish on it.
      old.reach.stop();
      return { ok: true };
    },
    async close() {
      clearInterval(retireTimer);
      for (const b of [current, ...retired]) {
        b.reach.stop();
        await b.app.close();
        await b.broker.close?.();
      }
    },
  };
  return { ok: true, plane };
}

function build(
  config: Readonly<Config>,
  pair: CertificatePair,
  deps: CmPlaneDeps,
): { ok: true; built: Built } | { ok: false; error: { what: string; cause: string; fix: string } } {
  const { log } = deps;
  // tls.trustedCa (or the deprecated caCert double use, tls/provision.ts): broker, agent and LDAP checks.
  const ca = pair.trustedCa;
  const self: ProductInfo = {
    productName: "pcoip-cmsg Connection Manager",
    productVersion: VERSION,
    platform: `${process.platform} ${process.arch}`,
    locale: "en_US",
    ipAddress: config.hostAddress.find((h) => /^[\d.]+$|:/.test(h)) ?? config.externalPcoipIp[0] ?? "N/A",
    hostname: config.hostAddress.find((h) => !/^[\d.]+$|:/.test(h)) ?? hostname(),
  };
  let broker: Broker;
  if (config.brokerUrl) {
    const up = createUpstreamBroker({
      brokerUrl: config.brokerUrl,
      dialect: config.upstream.dialect,
      timeoutMs: config.upstream.timeoutSeconds * 1000,
      allocateTimeoutMs: config.upstream.allocateTimeoutSeconds * 1000,
      agentPort: config.upstream.agentPort,
      brokerCertCheck: config.tls.brokerCertCheck,
      ...(ca ? { caCertPem: ca } : {}),
      env: process.env,
      pcmInfo: self,
    });
    if (!up.ok) return { ok: false, error: up.error };
    broker = up.broker;
  } else {
    const authenticators: Authenticator[] = [];
    const ldapUrls = (Array.isArray(config.ldap.url) ? config.ldap.url : [config.ldap.url]).filter(Boolean);
    const byName = new Map<string, Authenticator>();
    if (ldapUrls.length > 0) {
      let servicePassword: string | undefined;
      if (config.ldap.serviceBindPasswordFile) {
        try {
          servicePassword = readFileSync(config.ldap.serviceBindPasswordFile, "utf8").replace(/\r?\n$/, "");
        } catch (e) {
          return {
            ok: false,
            error: {
              what: `ldap.serviceBindPasswordFile ${config.ldap.serviceBindPasswordFile}`,
              cause: (e as NodeJS.ErrnoException).code ?? String(e),
              fix: "create the file with the service account's password (mode 0600, readable by the service user)",
            },
          };
        }
      }
      try {
        byName.set(
          "ldap",
          createLdapAuthenticator(
            {
              urls: ldapUrls,
              bindDn: config.ldap.bindDn,
              ...(config.ldap.searchBase
                ? { searchBase: config.ldap.searchBase, searchFilter: config.ldap.searchFilter }
                : {}),
              ...(config.ldap.serviceBindDn ? { serviceBindDn: config.ldap.serviceBindDn } : {}),
              ...(servicePassword !== undefined ? { serviceBindPassword: servicePassword } : {}),
              startTls: config.ldap.startTls,
              allowInsecure: config.ldap.allowInsecure,
              ...(ca ? { caCert: ca } : {}),
              ...(config.ldap.groupAttribute ? { groupAttribute: config.ldap.groupAttribute } : {}),
              ...(config.ldap.groupSearchBase
                ? {
                    groupSearchBase: config.ldap.groupSearchBase,
                    groupSearchFilter: config.ldap.groupSearchFilter,
                  }
                : {}),
              timeoutMs: config.ldap.timeoutSeconds * 1000,
              defaultDomain: config.ldap.defaultDomain || config.domains[0] || "",
            },
            { log },
          ),
        );
      } catch (e) {
        return {
          ok: false,
          error: {
            what: "[ldap] settings",
            cause: (e as Error).message,
            fix: "correct the [ldap] section (pcoip-cmsg config check)",
          },
        };
      }
    }
    if (config.usersFile) byName.set("local", createLocalUsers({ file: config.usersFile, log }));
    for (const name of config.auth.order) {
      const a = byName.get(name);
      if (a) authenticators.push(a);
    }
    for (const [name, a] of byName)
      if (!config.auth.order.includes(name as "ldap" | "local")) authenticators.push(a);
    broker = createBuiltinBroker({
      desktops: config.desktops.map((d) => {
        const addr = parseAgentAddress(d.agent)!;
        return {
          id: d.id,
          name: d.name || d.id,
          agentHost: addr.host,
          agentPort: addr.port,
          ...(d.hostname ? { hostname: d.hostname } : {}),
          users: d.users,
          groups: d.groups,
        };
      }),
      authenticators,
      domains: config.domains,
      brokerInfo: { ...self, productName: `${PRODUCT_NAME} built-in broker` },
      pcmInfo: self,
    });
  }
  const app = createCmApp({
    log,
    broker,
    agentClient: createAgentClient({
      timeoutMs: config.cm.agentTimeoutSeconds * 1000,
      verify: config.tls.agentCertCheck,
      ...(ca ? { ca } : {}),
      suites: config.tls.ciphers,
    }),
    ...(deps.gateway ? { gateway: deps.gateway } : {}),
    ...(deps.journal ? { journal: deps.journal } : {}),
    trustedProxies: compileTrustedProxies(config.trustedProxies),
    limits: {
      maxPreSessions: config.cm.maxPreSessions,
      preSessionIdleMs: config.cm.preSessionIdleSeconds * 1000,
      maxConcurrentEstablishments: config.cm.maxConcurrentEstablishments,
      bodyLimitBytes: config.cm.bodyLimitBytes,
      maxPreSessionsPerIp: config.cm.maxPreSessionsPerIp,
      maxPasswordChecksPerIp: config.cm.maxPasswordChecksPerIp,
    },
    node: deps.node,
    agentTargets: compileAgentTargets({
      ports: config.sg.agentPorts,
      networks: config.sg.agentNetworks,
      ...(deps.ownListeners ? { ownListeners: deps.ownListeners } : {}),
    }),
    enableCollaboration: config.enableCollaboration,
    licenseServerUrl: config.licenseServerUrl,
  });
  const reach = watchBroker(broker, log, { onChange: (up) => app.setReady(up) });
  return { ok: true, built: { app, broker, reach } };
}

/** The per-client-IP caps of issue 16 (#4 pre-sessions, #5 password checks): what they evicted, queued, refused. */
function perIpFamilies(c: CmCounters, checks: PasswordCheckCounters): MetricFamily[] {
  return [
    counter(
      "pcoip_cm_pre_session_evictions_total",
      "Pre-sessions that had only said hello, evicted for a new one (global: cm.maxPreSessions, per_ip: cm.maxPreSessionsPerIp).",
      samplesByLabel("reason", c.preSessionsEvicted),
    ),
    counter(
      "pcoip_cm_pre_session_refusals_total",
      "Hellos refused a pre-session: every one of the IP (or the node) was signed in or signing in.",
      [{ value: c.preSessionsRefused }],
    ),
    counter(
      "pcoip_cm_password_checks_queued_total",
      "Password checks that waited for one of their client IP's cm.maxPasswordChecksPerIp slots.",
      [{ value: checks.queued }],
    ),
    counter(
      "pcoip_cm_password_check_busy_total",
      "Password checks answered busy without checking, by reason (wait_timeout: 10 s in the IP's queue).",
      samplesByLabel("reason", checks.busy),
    ),
  ];
}

/** The CM's metric families: counters from the node state (monotonic across reloads), gauges from the generations. */
function cmFamilies(c: CmCounters, sessionsByState: Record<string, number>): MetricFamily[] {
  return [
    counter("pcoip_cm_requests_total", "Broker-protocol requests.", [{ value: c.requests }]),
    counter("pcoip_cm_protocol_errors_total", "Requests answered with error-resp.", [
      { value: c.protocolErrors },
    ]),
    counter("pcoip_cm_logins_total", "Logins by outcome.", [
      { labels: { outcome: "ok" }, value: c.loginsOk },
      { labels: { outcome: "failed" }, value: c.loginsFailed },
      { labels: { outcome: "throttled" }, value: c.loginsThrottled },
    ]),
    counter("pcoip_cm_busy_total", "Busy answers (establishment limit or SG full).", [{ value: c.busy }]),
    gauge("pcoip_cm_establishing", "Broker/agent calls in flight.", [{ value: c.establishing }]),
    gauge("pcoip_cm_sessions", "Pre-sessions by state.", samplesByLabel("state", sessionsByState)),
    counter(
      "pcoip_cm_allocations_total",
      "allocate-resource answers by result id.",
      samplesByLabel("result", c.allocations),
    ),
    counter(
      "pcoip_cm_agent_targets_refused_total",
      "Agent targets the SG would not relay to, by rule (sg.agentPorts, sg.agentNetworks, own listener…).",
      samplesByLabel("rule", c.targetsRefused),
    ),
  ];
}
