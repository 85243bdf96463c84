/**
 * The CM's listeners: the HTTPS front doors (cm.listen) and the port-80 redirect (cm.redirectListen), each an
 * http1.ts server. They are opened at start, re-keyed when the certificate is swapped and added or stopped when a
 * reload changes the lists (new ones first; a stopped listener's connections stay until they end).
 */

import { availableParallelism } from "node:os";
import { createRedirectApp } from "../cm/redirect.ts";
import type { Config } from "../config/schema.ts";
import { effectiveListeners, parseListen } from "../config/schema.ts";
import { compileTrustedProxies, type TrustedProxies } from "../net/client-address.ts";
import { type ConnectionGuard, createConnectionGuard } from "../net/connection-guard.ts";
import { type ConnInfo, type Http1Server, type Http1ServerOptions, startHttp1Server } from "../net/http1.ts";
import type { ReadinessCheck } from "../observability/health.ts";
import type { Logger } from "../observability/log.ts";
import { counter, type MetricsRegistry, samplesByLabel } from "../observability/metrics.ts";
import type { DescriptorBudget } from "../sg/limits.ts";
import type { CertificatePair } from "../tls/certs.ts";
import { serverTls } from "../tls/policy.ts";
import type { CmPlane } from "./cm-plane.ts";
import { FrontDoorWorkers, type WorkerListener } from "./front-door-workers.ts";
import type { NodeState } from "./node-state.ts";

export interface ListenProblem {
  readonly what: string;
  readonly cause: string;
  readonly fix: string;
}

export interface FrontDoorDeps {
  readonly log: Logger;
  readonly cm: CmPlane;
  readonly node: NodeState;
  /** The CM plane's descriptor budget (the SG's relays have their own). */
  readonly descriptors: DescriptorBudget;
  /** Where the per-IP cap's refusals are counted. */
  readonly metrics: MetricsRegistry;
  /** The configuration and certificate in force now (they change on reload). */
  readonly current: () => { config: Readonly<Config>; pair: CertificatePair };
}

/** cm.workers as a number of threads: "auto" is one per CPU, or none on a single CPU. */
export function frontDoorWorkerCount(config: Readonly<Config>): number {
  const w = config.cm.workers;
  if (w !== "auto") return w;
  const cpus = availableParallelism();
  return cpus >= 2 ? cpus : 0;
}

export class FrontDoors {
  /** The HTTPS listeners by cm.listen entry: in this thread, or served by the front-door workers. */
  readonly cm = new Map<string, Http1Server | WorkerListener>();
  readonly redirect = new Map<string, Http1Server>();
  /** Connections refused before HTTP (PROXY protocol), logged once per peer and reason a minute. */
  readonly proxyRefusals: ReturnType<typeof refusalLog>;
  readonly #d: FrontDoorDeps;
  // PROXY protocol peers (a restart key: it decides whether a listener runs native TLS or TLS after a header).
  readonly #proxyProtocolFrom: TrustedProxies;
  readonly #onProxyRefused: (reason: string, info: ConnInfo) => void;
  /** cm.maxConnectionsPerIp across the CM and port-80 listeners. */
  readonly #guard: ConnectionGuard;
  /** cm.workers > 0: the threads serving the HTTPS listeners (the CM handler stays in this thread). */
  readonly #workers: FrontDoorWorkers | undefined;

  constructor(deps: FrontDoorDeps) {
    this.#d = deps;
    this.#proxyProtocolFrom = compileTrustedProxies(deps.current().config.cm.proxyProtocolFrom);
    this.proxyRefusals = refusalLog(deps.log);
    this.#onProxyRefused = (reason, info) => this.proxyRefusals.log(info.remoteAddress, reason);
    this.#guard = startFrontDoorGuard(
      () => deps.current().config,
      this.#proxyProtocolFrom,
      deps.metrics,
      deps.log,
    );
    const count = frontDoorWorkerCount(deps.current().config);
    this.#workers =
      count > 0
        ? new FrontDoorWorkers({
            count,
            log: deps.log,
            fetch: (req, info) => deps.cm.fetch(req, info),
            guard: this.#guard,
            descriptors: deps.descriptors,
            maxConnections: () => deps.current().config.cm.maxConnections,
            onProxyRefused: this.#onProxyRefused,
          })
        : undefined;
    const workers = this.#workers;
    if (workers)
      deps.metrics.add(() => [
        counter(
          "pcoip_cm_worker_connections_total",
          "HTTPS connections each front-door worker thread accepted and kept (cm.workers; the kernel spreads them).",
          samplesByLabel("worker", workers.acceptedByWorker()),
        ),
      ]);
  }

  /** Opens every listener of `config`; the first that cannot listen is returned. */
  async openAll(config: Readonly<Config>): Promise<ListenProblem | undefined> {
    if (this.#workers) {
      try {
        await this.#workers.start();
      } catch (e) {
        return {
          what: `cm.workers: starting ${frontDoorWorkerCount(config)} front-door worker threads`,
          cause: e instanceof Error ? e.message : String(e),
          fix:
            "set cm.workers = 0 to listen in the main thread; an executable not made by scripts/build.ts may lack " +
            "the worker's module (net/front-door-worker.ts)",
        };
      }
      this.#d.log.info(
        { workers: frontDoorWorkerCount(config) },
        "CM front door: HTTPS listeners and TLS handshakes on worker threads; the CM runs in the main thread",
      );
    }
    for (const entry of effectiveListeners(config.cm.listen, config.enableIpv6)) {
      const p = await this.openCm(entry);
      if (p) return p;
    }
    for (const entry of effectiveListeners(config.cm.redirectListen, config.enableIpv6)) {
      const p = this.openRedirect(entry);
      if (p) return p;
    }
    return undefined;
  }

  /** The port the redirect sends clients to: the first HTTPS listener's. */
  get httpsPort(): number {
    return [...this.cm.values()][0]?.port ?? 443;
  }

  /** The listeners' readiness: at least one HTTPS listener, and every front-door worker up. */
  readiness(): ReadinessCheck[] {
    return [
      { name: "listeners", ok: this.cm.size > 0 },
      ...(this.#workers ? [this.#workers.readiness()] : []),
    ];
  }

  async openCm(entry: string): Promise<ListenProblem | undefined> {
    const { config, pair } = this.#d.current();
    const a = parseListen(entry)!;
    const tls = serverTls({ chainPem: pair.chainPem, key: pair.key, suites: config.tls.ciphers });
    if (this.#workers) {
      try {
        const l = await this.#workers.open({
          key: entry,
          hostname: a.hostname,
          port: a.port,
          tls,
          limits: frontDoorLimits(config),
          proxyProtocolFrom: config.cm.proxyProtocolFrom,
        });
        this.cm.set(entry, l);
        return undefined;
      } catch (e) {
        return listenProblem("cm.listen", entry, e);
      }
    }
    try {
      const s = startHttp1Server({
        hostname: a.hostname,
        port: a.port,
        tls,
        fetch: (req, info) => this.#d.cm.fetch(req, info),
        ...this.#policy(config),
        onError: (err) => this.#d.log.error({ err: String(err) }, "front door: request handler failed"),
      });
      this.cm.set(entry, s);
      return undefined;
    } catch (e) {
      return listenProblem("cm.listen", entry, e);
    }
  }

  /** What the CM's TLS listeners and its plain-HTTP redirect share: limits, caps, the guard and PROXY protocol. */
  #policy(config: Config) {
    return {
      limits: frontDoorLimits(config),
      maxConnections: config.cm.maxConnections,
      descriptors: this.#d.descriptors,
      guard: this.#guard,
      proxyProtocolFrom: this.#proxyProtocolFrom,
      onRefused: this.#onProxyRefused,
    } satisfies Partial<Http1ServerOptions>;
  }

  openRedirect(entry: string): ListenProblem | undefined {
    const { config } = this.#d.current();
    const { node, cm } = this.#d;
    const a = parseListen(entry)!;
    const current = this.#d.current;
    const app = createRedirectApp({
      httpsPort: this.httpsPort,
      ready: () => !node.draining && cm.brokerReachable(),
      get hostAddress() {
        return current().config.hostAddress; // a reload's hostAddress applies to the next redirect
      },
      httpsHost: parseListen(effectiveListeners(config.cm.listen, config.enableIpv6)[0] ?? "")?.hostname,
    });
    try {
      this.redirect.set(
        entry,
        startHttp1Server({
          hostname: a.hostname,
          port: a.port,
          fetch: (req, info) => app.fetch(req, info),
          ...this.#policy(config),
        }),
      );
      return undefined;
    } catch (e) {
      return listenProblem("cm.redirectListen", entry, e);
    }
  }

  /** New TLS connections get `pair` (on every worker before this resolves); open connections keep theirs. */
  async reloadTls(pair: CertificatePair, ciphers: readonly string[]): Promise<void> {
    const tls = serverTls({ chainPem: pair.chainPem, key: pair.key, suites: ciphers });
    for (const [entry, s] of this.cm) {
      if ("reloadTls" in s) s.reloadTls(tls);
      else await this.#workers?.reloadTls(entry, tls);
    }
  }

  /** After a reload: listeners `next` adds are opened first, then those it drops stop accepting. */
  async swap(prev: Readonly<Config>, next: Readonly<Config>): Promise<void> {
    const opened = (key: string, e: string, p: ListenProblem | undefined) => {
      if (p)
        this.#d.log.error(
          { what: p.what, cause: p.cause, fix: p.fix },
          `reload: ${key}: could not listen on ${e}`,
        );
    };
    await swapListeners(
      this.cm,
      prev.cm.listen,
      next.cm.listen,
      prev.enableIpv6,
      next.enableIpv6,
      async (e) => opened("cm.listen", e, await this.openCm(e)),
      (e) => this.#workers?.close(e),
    );
    await swapListeners(
      this.redirect,
      prev.cm.redirectListen,
      next.cm.redirectListen,
      prev.enableIpv6,
      next.enableIpv6,
      async (e) => opened("cm.redirectListen", e, this.openRedirect(e)),
    );
  }

  /** Closes every listener and connection (and ends the worker threads): nothing of the CM listens afterwards. */
  async stop(): Promise<void> {
    for (const s of this.cm.values()) if ("stop" in s) s.stop({ closeActive: true });
    for (const s of this.redirect.values()) s.stop({ closeActive: true });
    await this.#workers?.stop();
  }
}

function frontDoorLimits(c: Readonly<Config>) {
  return {
    maxBodyBytes: c.cm.bodyLimitBytes,
    headerTimeoutMs: c.cm.headerTimeoutSeconds * 1000,
    idleTimeoutMs: c.cm.idleTimeoutSeconds * 1000,
  };
}

/**
 * Opens the listeners `after` adds (first), then stops accepting on those it drops (their connections stay);
 * `closeElsewhere` stops an entry served by the front-door workers.
 */
async function swapListeners(
  servers: Map<string, Http1Server | WorkerListener>,
  before: readonly string[],
  after: readonly string[],
  ipv6Before: boolean,
  ipv6After: boolean,
  open: (entry: string) => Promise<void>,
  closeElsewhere?: (entry: string) => Promise<void> | undefined,
): Promise<void> {
  const want = effectiveListeners(after, ipv6After);
  const had = effectiveListeners(before, ipv6Before);
  for (const e of want.filter((x) => !had.includes(x))) await open(e);
  for (const e of had.filter((x) => !want.includes(x))) {
    const s = servers.get(e);
    if (s && "stop" in s) s.stop();
    else await closeElsewhere?.(e);
    servers.delete(e);
  }
}

export function listenProblem(key: string, entry: string, e: unknown): ListenProblem {
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
    counter(
      "pcoip_cm_connection_refusals_total",
      "CM/port-80 connections closed at accept, by reason (per_ip, max_connections, descriptors).",
      samplesByLabel("reason", guard.refusals),
    ),
  ]);
  return guard;
}
