/**
 * `pcoip-cmsg diagnose`: the checks of the vendor's troubleshooting guide, run by the appliance itself (SPEC §7):
 * configuration and certificate rules, the service and its listeners, the CM's own dummy POST answered with
 * `<error-resp>`, the upstream broker's TLS, each desktop's agent on 60443 and 4172 (including the vendor's
 * "read ECONNRESET" case: a peer key under 2048 bits), the directory, firewalld, SELinux, disk, memory, clock and
 * UDP buffers. One PASS/WARN/FAIL/INFO line each, with the fix under every WARN and FAIL; exit 1 when any FAIL.
 *
 * `--support-bundle` writes a tar.gz for support: version, the REDACTED config and proxy.env, certificate
 * summaries (never key material), this output, the unit and recent journal lines.
 *
 * Network probes use node:net / node:tls, never fetch: Bun's fetch sends every HTTPS request through
 * HTTPS_PROXY, and LAN targets (agents, the CM itself) must be reached directly.
 */

import { X509Certificate } from "node:crypto";
import { lookup as dnsLookup } from "node:dns/promises";
import {
  chmodSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  renameSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { isIP, type Socket, connect as tcpConnect } from "node:net";
import { networkInterfaces, tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { type TLSSocket, connect as tlsConnect } from "node:tls";
import { checkDirectory, type LdapOptions } from "../cm/auth/ldap.ts";
import { noDesktopsAdvice } from "../config/advice.ts";
import { loadConfig } from "../config/load.ts";
import { type Config, parseListen } from "../config/schema.ts";
import { compileTrustedProxies } from "../net/client-address.ts";
import { openTunnel } from "../net/https-proxy.ts";
import { describeProxy, proxyFor, proxyFromEnv } from "../net/proxy-env.ts";
import {
  type CommandRunner,
  commandProblem,
  type FirewalldState,
  firewalldState,
  formatProblem,
  freeDiskBytes,
  type MemoryInfo,
  memoryInfo,
  type PortProbe,
  portFree,
  readSysctl,
  runCommand,
  type SelinuxState,
  selinuxState,
  systemdRunning,
} from "../platform/host.ts";
import { type InstallLayout, installLayout, SERVICE_NAME } from "../platform/paths.ts";
import { fastPathChecks } from "../sg/kernel/diagnose.ts";
import { describeCertificates, loadCertificatePair, MIN_RSA_BITS } from "../tls/certs.ts";
import { SG_SUITES_NOTE, tls13Note } from "../tls/policy.ts";
import { explainTrust, outgoingChecks, trustedCaFile } from "../tls/provision.ts";
import { COMMIT, PRODUCT_NAME, VERSION } from "../version.ts";
import { type FlagSpec, flagBool, flagList, flagString, formatFlags, parseCommandArgs } from "./args.ts";
import { parseEnvFile } from "./configure.ts";
import { firewallPorts, listeners, SOCKET_BUFFER_BYTES } from "./install.ts";
import type { CliIo, CommandMain } from "./io.ts";
import { adminEndpointFor, adminRequest, parseHttpResponse } from "./status.ts";

export type Verdict = "PASS" | "WARN" | "FAIL" | "INFO";

export interface CheckResult {
  readonly verdict: Verdict;
  readonly name: string;
  readonly detail: string;
  /** What to do; present on WARN and FAIL. */
  readonly fix?: string;
}

export interface DiagnoseDeps {
  readonly run: CommandRunner;
  readonly systemdRunning: () => boolean;
  readonly firewalld: () => Promise<FirewalldState>;
  readonly selinux: () => SelinuxState;
  readonly freeDisk: (path: string) => number | undefined;
  readonly memory: () => MemoryInfo | undefined;
  readonly portFree: (host: string, port: number, protocol: "tcp" | "udp") => Promise<PortProbe>;
}

export function hostDiagnoseDeps(): DiagnoseDeps {
  return {
    run: runCommand,
    systemdRunning,
    firewalld: () => firewalldState(runCommand),
    selinux: () => selinuxState(),
    freeDisk: freeDiskBytes,
    memory: () => memoryInfo(),
    portFree,
  };
}

// ───────────────────────────── probes ─────────────────────────────

export type ProbeFailure = { readonly ok: false; readonly code: string; readonly cause: string };

/** Where a wildcard listener is reached from this host. */
function dialable(host: string): string {
  return host === "0.0.0.0" ? "127.0.0.1" : host === "::" ? "::1" : host;
}

function errorCode(e: unknown): string {
  return (e as NodeJS.ErrnoException).code ?? (e as Error).message;
}

/** A TCP connect, closed at once. */
export function tcpProbe(
  host: string,
  port: number,
  timeoutMs: number,
): Promise<{ ok: true } | ProbeFailure> {
  return new Promise((resolvePromise) => {
    const socket = tcpConnect({ host, port });
    const done = (r: { ok: true } | ProbeFailure) => {
      clearTimeout(timer);
      socket.destroy();
      resolvePromise(r);
    };
    const timer = setTimeout(
      () => done({ ok: false, code: "ETIMEDOUT", cause: `no answer within ${timeoutMs} ms` }),
      timeoutMs,
    );
    socket.once("connect", () => done({ ok: true }));
    socket.once("error", (e) => done({ ok: false, code: errorCode(e), cause: errorCode(e) }));
  });
}

export interface PeerTls {
  readonly ok: true;
  readonly protocol: string;
  readonly cipher: string;
  readonly keyType: string;
  readonly keyBits: number | undefined;
  readonly subject: string;
  readonly notAfter: Date;
  readonly authorized: boolean;
  readonly authorizationError: string | undefined;
}

/**
 * A TLS handshake that accepts any certificate, so the peer's certificate can be examined even when it would be
 * refused (key too small, untrusted); `authorized` says whether it verifies against `ca` (or the system store).
 */
export function tlsProbe(
  host: string,
  port: number,
  o: { timeoutMs: number; ca?: string; socket?: Socket },
): Promise<PeerTls | ProbeFailure> {
  return new Promise((resolvePromise) => {
    let settled = false;
    const servername = isIP(host) === 0 ? host : undefined;
    const socket: TLSSocket = tlsConnect({
      ...(o.socket ? { socket: o.socket } : { host, port }),
      ...(servername ? { servername } : {}),
      ...(o.ca ? { ca: o.ca } : {}),
      rejectUnauthorized: false,
      minVersion: "TLSv1.2",
    });
    const done = (r: PeerTls | ProbeFailure) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      o.socket?.destroy();
      resolvePromise(r);
    };
    const timer = setTimeout(
      () => done({ ok: false, code: "ETIMEDOUT", cause: `no answer within ${o.timeoutMs} ms` }),
      o.timeoutMs,
    );
    socket.once("secureConnect", () => {
      try {
        const der = socket.getPeerCertificate(false)?.raw;
        const x = der ? new X509Certificate(der) : undefined;
        const details = x?.publicKey.asymmetricKeyDetails;
        done({
          ok: true,
          protocol: socket.getProtocol() ?? "?",
          cipher: socket.getCipher()?.name ?? "?",
          keyType: x?.publicKey.asymmetricKeyType ?? "unknown",
          keyBits:
            details?.modulusLength ?? (details?.namedCurve ? curveBits(details.namedCurve) : undefined),
          subject: x?.subject.replace(/\n/g, ", ") ?? "(no certificate)",
          notAfter: x ? new Date(x.validTo) : new Date(0),
          authorized: socket.authorized,
          authorizationError: socket.authorizationError ? String(socket.authorizationError) : undefined,
        });
      } catch (e) {
        done({ ok: false, code: "EBADCERT", cause: `reading the peer certificate: ${(e as Error).message}` });
      }
    });
    socket.once("error", (e) =>
      done({ ok: false, code: errorCode(e), cause: (e as Error).message || errorCode(e) }),
    );
  });
}

function curveBits(curve: string): number | undefined {
  return ({ prime256v1: 256, secp384r1: 384, secp521r1: 521 } as Record<string, number>)[curve];
}

/** One request over TLS to the CM itself, certificate not checked (it may be self-signed). */
export function httpsPost(
  host: string,
  port: number,
  path: string,
  body: string,
  timeoutMs: number,
): Promise<{ ok: true; status: number; body: string } | ProbeFailure> {
  return new Promise((resolvePromise) => {
    let settled = false;
    const chunks: Buffer[] = [];
    const hostHeader = host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
    const socket = tlsConnect({
      host,
      port,
      rejectUnauthorized: false,
      ...(isIP(host) === 0 ? { servername: host } : {}),
    });
    const done = (r: { ok: true; status: number; body: string } | ProbeFailure) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      resolvePromise(r);
    };
    const timer = setTimeout(() => {
      const partial = parseHttpResponse(Buffer.concat(chunks));
      done(partial ?? { ok: false, code: "ETIMEDOUT", cause: `no complete answer within ${timeoutMs} ms` });
    }, timeoutMs);
    socket.once("secureConnect", () => {
      socket.write(
        `POST ${path} HTTP/1.1\r\nHost: ${hostHeader}\r\nContent-Type: text/xml; charset=UTF-8\r\n` +
          `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
      );
    });
    socket.on("data", (d: Buffer) => chunks.push(d));
    socket.once("error", (e) =>
      done({ ok: false, code: errorCode(e), cause: (e as Error).message || errorCode(e) }),
    );
    socket.once("close", () => {
      const r = parseHttpResponse(Buffer.concat(chunks));
      done(r ?? { ok: false, code: "EPROTO", cause: "the connection closed without an HTTP answer" });
    });
  });
}

/** The words and fix for a failed connection to a named peer. */
function connectFix(code: string, what: string, host: string, port: number): { cause: string; fix: string } {
  switch (code) {
    case "ECONNREFUSED":
      return {
        cause: `${host}:${port} refused the connection (nothing listens there)`,
        fix: `start the ${what} on ${host} and check that it listens on TCP ${port}`,
      };
    case "ETIMEDOUT":
      return {
        cause: `${host}:${port} did not answer (a firewall drops the traffic, or the host is down)`,
        fix: `allow TCP ${port} from this host to ${host} in every firewall between them, and check that ${host} is up`,
      };
    case "ENOTFOUND":
    case "EAI_AGAIN":
      return {
        cause: `${host} does not resolve (${code})`,
        fix: `fix DNS for ${host}, or configure its IP address instead`,
      };
    case "EHOSTUNREACH":
    case "ENETUNREACH":
      return { cause: `no route to ${host} (${code})`, fix: `check routing between this host and ${host}` };
    case "ECONNRESET":
      return {
        cause: `${host}:${port} reset the connection during the handshake`,
        fix: `check the ${what}'s certificate (RSA ≥ ${MIN_RSA_BITS} bits) and TLS settings (TLS 1.2 or 1.3)`,
      };
    default:
      return {
        cause: `${host}:${port}: ${code}`,
        fix: `check that the ${what} on ${host} is up and reachable on TCP ${port}`,
      };
  }
}

/** Certificate rules for a peer we call (broker, agent): the vendor's "read ECONNRESET" case first. */
function peerKeyResults(name: string, what: string, host: string, t: PeerTls): CheckResult[] {
  const out: CheckResult[] = [];
  if (t.keyType === "rsa" && t.keyBits !== undefined && t.keyBits < MIN_RSA_BITS)
    out.push({
      verdict: "FAIL",
      name,
      detail: `${host} presents an RSA-${t.keyBits} certificate (${t.subject}): clients and the CM refuse keys under ${MIN_RSA_BITS} bits — the vendor's "read ECONNRESET" case`,
      fix: `replace the ${what}'s certificate with RSA ${MIN_RSA_BITS}+ (3072 recommended) and restart the ${what}`,
    });
  else if (t.keyType === "dsa")
    out.push({
      verdict: "FAIL",
      name,
      detail: `${host} presents a DSA certificate`,
      fix: `give the ${what} an RSA or ECDSA certificate`,
    });
  if (t.notAfter.getTime() < Date.now())
    out.push({
      verdict: "FAIL",
      name,
      detail: `${host}'s certificate expired on ${t.notAfter.toISOString()}`,
      fix: `renew the ${what}'s certificate`,
    });
  return out;
}

// ───────────────────────────── checks ─────────────────────────────

export interface DiagnoseOptions {
  readonly layout: InstallLayout;
  /** Where the config is read (on disk). */
  readonly configFile: string;
  /** Extra agents to probe (`--agent HOST[:PORT]`), beside the configured desktops. */
  readonly agents: readonly string[];
  readonly timeoutMs: number;
}

/** "host", "host:port", "[v6]:port" → host and port (default 60443). */
export function parseAgent(s: string): { host: string; port: number } {
  const v6 = /^\[([^\]]+)\](?::(\d+))?$/.exec(s);
  if (v6) return { host: v6[1]!, port: v6[2] ? Number(v6[2]) : 60443 };
  if (isIP(s) === 6) return { host: s, port: 60443 };
  const [host, port] = s.split(":");
  return { host: host!, port: port ? Number(port) : 60443 };
}

function readText(file: string): string | undefined {
  try {
    return readFileSync(file, "utf8");
  } catch {
    return undefined;
  }
}

/** Adds one result line (the fix is kept only when given). */
type AddCheck = (verdict: Verdict, name: string, detail: string, fix?: string) => void;

/** What the checks share as they run in order: where results go, and what earlier checks found out. */
interface CheckRun {
  readonly o: DiagnoseOptions;
  readonly deps: DiagnoseDeps;
  readonly layout: InstallLayout;
  readonly add: AddCheck;
  /** The configuration, once `checkConfig` could load it; checks that need one are skipped without it. */
  config: Readonly<Config> | undefined;
  /** proxy.env's variables (empty without the file), for the broker check. */
  proxyEnv: Record<string, string>;
  /** The service runs: systemd says so, or its admin listener answered. */
  running: boolean;
  /** The CA bundle the outgoing checks trust (agents, directory), read once. */
  trustedCa: string | undefined;
}

/**
 * Runs every check, in the order an administrator would go through them. Never throws for what it finds. Each
 * section is a function below; later ones read what earlier ones found (the config, whether the service runs).
 */
export async function runChecks(o: DiagnoseOptions, deps: DiagnoseDeps): Promise<CheckResult[]> {
  const out: CheckResult[] = [];
  const run: CheckRun = {
    o,
    deps,
    layout: o.layout,
    add: (verdict, name, detail, fix) => {
      out.push({ verdict, name, detail, ...(fix ? { fix } : {}) });
    },
    config: undefined,
    proxyEnv: {},
    running: false,
    trustedCa: undefined,
  };
  run.add("INFO", "version", `${PRODUCT_NAME} ${VERSION} (${COMMIT}), bun ${Bun.version}`);
  checkConfig(run);
  checkServedCertificate(run);
  checkProxy(run);
  await checkService(run);
  await checkListeners(run);
  await checkCmDummyPost(run);
  checkTrustedCa(run);
  await checkBrokerAndDesktops(run);
  run.trustedCa = trustedCaText(run.config, run.layout);
  await checkAgents(run);
  await checkDirectoryServers(run);
  await checkHostState(run.config, run.layout, deps, run.add);
  await checkFastPath(run);
  return out;
}

/** The config file: there, valid, and without keys this version does not know. */
function checkConfig(run: CheckRun): void {
  const { o, add } = run;
  const loaded = loadConfig({ file: o.configFile, strict: false });
  if (!existsSync(o.configFile))
    add(
      "FAIL",
      "config",
      `${o.configFile} does not exist`,
      `install first (${PRODUCT_NAME} install …), or give --config FILE`,
    );
  else if (!loaded.ok)
    add(
      "FAIL",
      "config",
      loaded.errors.join("; "),
      `fix the file, then check it: ${PRODUCT_NAME} config check --config ${o.configFile}`,
    );
  else {
    run.config = loaded.config;
    const strict = loadConfig({ file: o.configFile, strict: true });
    if (loaded.warnings.length > 0 || !strict.ok)
      add(
        "WARN",
        "config",
        [...loaded.warnings, ...(strict.ok ? [] : strict.errors)].join("; "),
        "remove or correct the keys named (a newer version may know them)",
      );
    else add("PASS", "config", `${o.configFile} is valid`);
  }
}

/** The certificate served on 443, then the TLS notes. */
function checkServedCertificate(run: CheckRun): void {
  const { config, layout, add } = run;
  if (config) {
    const caFile = config.tls.caCert ? layout.onDisk(config.tls.caCert) : undefined;
    const pair = loadCertificatePair({
      certFile: layout.onDisk(config.tls.cert),
      keyFile: layout.onDisk(config.tls.key),
      ...(caFile ? { caFile } : {}),
      expectedNames: config.hostAddress,
    });
    if (!pair.ok) add("FAIL", "certificate", `${pair.error.what}: ${pair.error.cause}`, pair.error.fix);
    else {
      const p = pair.pair;
      add(
        "PASS",
        "certificate",
        `${p.subject}; ${p.keyType.toUpperCase()}-${p.keyBits}; SANs ${p.sans.join(", ") || "none"}; valid until ${p.notAfter.toISOString()}`,
      );
      for (const w of p.warnings)
        add(
          "WARN",
          "certificate",
          w,
          "see the warning; `pcoip-cmsg configure --ssl-cert/--ssl-key` installs a new pair",
        );
    }
  }
  add("INFO", "tls 1.3", tls13Note());
  add("INFO", "sg ciphers", SG_SUITES_NOTE);
}

/** The proxy for broker traffic (proxy.env), when there is one. */
function checkProxy(run: CheckRun): void {
  const { layout, add } = run;
  const proxyText = readText(layout.disk.proxyEnv);
  if (proxyText !== undefined) {
    run.proxyEnv = Object.fromEntries(parseEnvFile(proxyText));
    const p = proxyFromEnv(run.proxyEnv);
    if (!p.ok)
      add("FAIL", "proxy", `${layout.host.proxyEnv}: ${p.error.what}: ${p.error.cause}`, p.error.fix);
    else
      add(
        p.proxy ? "PASS" : "INFO",
        "proxy",
        p.proxy ? `broker traffic goes through ${describeProxy(p.proxy)}` : "no proxy configured",
      );
  }
}

/** The service (systemd) and its readiness on the admin listener; either one running sets `run.running`. */
async function checkService(run: CheckRun): Promise<void> {
  const { o, deps, layout, config, add } = run;
  if (!layout.staged && deps.systemdRunning()) {
    const active = (
      await deps.run("systemctl", ["is-active", SERVICE_NAME], { timeoutMs: 10_000 })
    ).stdout.trim();
    run.running = active === "active" || active === "reloading";
    if (run.running) add("PASS", "service", `${SERVICE_NAME} is ${active}`);
    else
      add(
        "FAIL",
        "service",
        `${SERVICE_NAME} is ${active || "unknown"}`,
        `start it (systemctl start ${SERVICE_NAME}); if it fails, see journalctl -u ${SERVICE_NAME} -n 50 --no-pager`,
      );
  }
  if (config?.admin.listen) {
    const health = await adminRequest(
      adminEndpointFor(config.admin, layout.onDisk),
      "GET",
      "/readyz",
      o.timeoutMs,
    );
    if (health.ok) {
      run.running = true;
      add(
        health.status === 200 ? "PASS" : "FAIL",
        "readiness",
        health.body
          .trim()
          .replace(/\s*\n\s*/g, "; ")
          .replace(/ {2,}/g, " "),
        health.status === 200 ? undefined : "fix the failing check named above",
      );
    } else
      add(
        run.running ? "FAIL" : "INFO",
        "readiness",
        `admin listener ${config.admin.listen}: ${health.cause}`,
        run.running ? "check admin.listen" : undefined,
      );
  }
}

/** Listeners: bound by the service when it runs, else free for it. */
async function checkListeners(run: CheckRun): Promise<void> {
  const { o, deps, config, running, add } = run;
  if (!config) return;
  for (const l of listeners(config)) {
    const name = `port ${l.port}/${l.protocol}`;
    const where = `${l.key} ${l.host}:${l.port}`;
    if (running) {
      if (l.protocol === "tcp") {
        const t = await tcpProbe(dialable(l.host), l.port, o.timeoutMs);
        if (t.ok) add("PASS", name, `${where} is listening`);
        else
          add(
            "FAIL",
            name,
            `${where} is not listening (${t.cause})`,
            `see journalctl -u ${SERVICE_NAME}: the service could not bind it`,
          );
      } else {
        const p = await deps.portFree(l.host, l.port, "udp");
        if (!p.free) add("PASS", name, `${where} is bound`);
        else
          add(
            "FAIL",
            name,
            `${where} is not bound`,
            `see journalctl -u ${SERVICE_NAME}: the service could not bind it`,
          );
      }
    } else {
      const p = await deps.portFree(l.host, l.port, l.protocol);
      if (p.free) add("PASS", name, `${where} is free for the service`);
      else
        add(
          "FAIL",
          name,
          `${where}: ${p.cause}`,
          `find the other process (ss -lntup | grep :${l.port}) and stop it, or change ${l.key}`,
        );
    }
  }
}

/** The CM's own dummy POST (vendor troubleshooting guide): the answer must hold <error-resp>. */
async function checkCmDummyPost(run: CheckRun): Promise<void> {
  const { o, config, running, add } = run;
  if (!config || config.cm.listen.length === 0) return;
  const a = parseListen(config.cm.listen[0]!);
  if (!running) add("INFO", "cm dummy post", "not tried: the service is not running");
  else if (a) {
    const host = dialable(a.hostname);
    const r = await httpsPost(
      host,
      a.port,
      "/pcoip-broker/xml",
      '<?xml version="1.0" encoding="UTF-8"?>',
      o.timeoutMs,
    );
    if (!r.ok) {
      const f = connectFix(r.code, "Connection Manager", host, a.port);
      add("FAIL", "cm dummy post", `POST https://${host}:${a.port}/pcoip-broker/xml: ${f.cause}`, f.fix);
    } else if (r.body.includes("<error-resp"))
      add("PASS", "cm dummy post", `HTTP ${r.status} with <error-resp>, as the vendor's guide expects`);
    else
      add(
        "FAIL",
        "cm dummy post",
        `HTTP ${r.status} without <error-resp>: ${r.body.slice(0, 120).replace(/\s+/g, " ")}`,
        "another server answers on this port, or a load balancer rewrites the answer: check cm.listen",
      );
  }
}

/** Which CA bundle the outgoing checks trust (tls.trustedCa, or the deprecated caCert double use). */
function checkTrustedCa(run: CheckRun): void {
  const { config, add } = run;
  if (!config) return;
  const trust = explainTrust(config.tls, outgoingChecks(config));
  if (trust.deprecation)
    add(
      "WARN",
      "trusted CA",
      trust.deprecation,
      "add tls.trustedCa to the config (`pcoip-cmsg config check` explains both keys)",
    );
  else add("INFO", "trusted CA", trust.notes.join("; "));
}

/** The upstream broker, or the built-in one's desktops. */
async function checkBrokerAndDesktops(run: CheckRun): Promise<void> {
  const { o, config, layout, add } = run;
  if (config?.brokerUrl) await checkBroker(config, layout, run.proxyEnv, o.timeoutMs, add);
  const noDesktops = config ? noDesktopsAdvice(config) : undefined;
  if (noDesktops) {
    const [what, fix] = noDesktops.split(". Add ");
    add("WARN", "desktops", what!, `add ${fix}`);
  }
}

/** Agents: the configured desktops' and --agent's. */
async function checkAgents(run: CheckRun): Promise<void> {
  const { o, config, add } = run;
  const agents = [...new Set([...(config?.desktops ?? []).map((d) => d.agent), ...o.agents])];
  const probed4172 = new Set<string>();
  for (const agent of agents) {
    await checkAgent(agent, config, run.trustedCa, o.timeoutMs, probed4172, add);
    if (config?.enableSecurityGateway) add(...(await agentTrust(agent, config)));
  }
  if (agents.length === 0 && config && !config.brokerUrl)
    add("INFO", "agents", "no [[desktops]] configured; give --agent HOST to check one");
}

/** The directory: each LDAP server reached, bound and searched as the CM would. */
async function checkDirectoryServers(run: CheckRun): Promise<void> {
  const { config, layout, add } = run;
  const ldapUrls = config
    ? (Array.isArray(config.ldap.url) ? config.ldap.url : [config.ldap.url]).filter((u) => u !== "")
    : [];
  if (!config || ldapUrls.length === 0) return;
  const l = config.ldap;
  const ca = run.trustedCa;
  const password = l.serviceBindPasswordFile
    ? readText(layout.onDisk(l.serviceBindPasswordFile))?.split(/\r?\n/)[0]
    : undefined;
  const options: LdapOptions = {
    urls: ldapUrls,
    ...(l.bindDn ? { bindDn: l.bindDn } : {}),
    ...(l.searchBase ? { searchBase: l.searchBase, searchFilter: l.searchFilter } : {}),
    ...(l.serviceBindDn ? { serviceBindDn: l.serviceBindDn, serviceBindPassword: password ?? "" } : {}),
    startTls: l.startTls,
    allowInsecure: l.allowInsecure,
    ...(ca ? { caCert: ca } : {}),
    groupAttribute: l.groupAttribute,
    ...(l.groupSearchBase
      ? { groupSearchBase: l.groupSearchBase, groupSearchFilter: l.groupSearchFilter }
      : {}),
    timeoutMs: l.timeoutSeconds * 1000,
    ...(l.defaultDomain ? { defaultDomain: l.defaultDomain } : {}),
  };
  for (const c of await checkDirectory(options))
    add(c.ok ? "PASS" : "FAIL", c.name, c.detail, c.ok ? undefined : c.fix);
}

/** The SG's kernel fast path (sg/kernel/diagnose.ts), on an installed host. */
async function checkFastPath(run: CheckRun): Promise<void> {
  const { config, layout, deps, add } = run;
  if (config && !layout.staged)
    for (const c of fastPathChecks(config, (await deps.firewalld()) === "running"))
      add(c.verdict, c.name, c.detail, c.fix);
}

/**
 * The CA bundle the CM trusts for broker, agent and LDAP checks, as the running service would (tls/provision.ts):
 * tls.trustedCa, or the deprecated caCert double use. Never tls.caCert when trustedCa is set: that is the chain
 * the CM serves.
 */
function trustedCaText(config: Readonly<Config> | undefined, layout: InstallLayout): string | undefined {
  const file = config ? trustedCaFile(config.tls).file : undefined;
  return file ? readText(layout.onDisk(file)) : undefined;
}

async function checkBroker(
  config: Readonly<Config>,
  layout: InstallLayout,
  proxyEnv: Record<string, string>,
  timeoutMs: number,
  add: AddCheck,
): Promise<void> {
  const url = new URL(config.brokerUrl);
  const host = url.hostname.replace(/^\[(.*)\]$/, "$1");
  const port = url.port ? Number(url.port) : 443;
  const parsed = proxyFromEnv(proxyEnv);
  const proxy = parsed.ok ? proxyFor(parsed.proxy, host, port) : undefined;
  let socket: Socket | undefined;
  if (proxy) {
    const t = await openTunnel({ proxy, host, port, timeoutMs });
    if (!t.ok) {
      add(
        "FAIL",
        "broker",
        `${config.brokerUrl} through ${describeProxy(proxy)}: ${t.failure.cause}`,
        t.failure.fix,
      );
      return;
    }
    socket = t.socket;
  }
  const ca = trustedCaText(config, layout);
  const r = await tlsProbe(host, port, { timeoutMs, ...(ca ? { ca } : {}), ...(socket ? { socket } : {}) });
  if (!r.ok) {
    const f = connectFix(r.code, "broker", host, port);
    add("FAIL", "broker", `${config.brokerUrl}: ${f.cause}`, f.fix);
    return;
  }
  const bad = peerKeyResults("broker certificate", "broker", host, r);
  for (const b of bad) add(b.verdict, b.name, b.detail, b.fix);
  if (config.tls.brokerCertCheck && !r.authorized)
    add(
      "FAIL",
      "broker certificate",
      `${config.brokerUrl}: the certificate (${r.subject}) does not verify: ${r.authorizationError}${proxy ? " (a proxy doing TLS inspection issues its own certificates)" : ""}`,
      "set tls.trustedCa to the CA bundle (PEM) that issued it, or set tls.brokerCertCheck = false",
    );
  if (bad.length === 0 && (r.authorized || !config.tls.brokerCertCheck))
    add(
      "PASS",
      "broker",
      `${config.brokerUrl}: ${r.protocol} ${r.cipher}, ${r.keyType.toUpperCase()}-${r.keyBits ?? "?"} (${r.subject})${proxy ? ` via ${describeProxy(proxy)}` : ""}`,
    );
}

/**
 * Whether the SG's trust rules would relay this agent's sessions (cm/agent-targets.ts): its PCoIP port (4172 unless
 * the agent says otherwise) in sg.agentPorts, its address in sg.agentNetworks (what an upstream broker's agents
 * must satisfy; a built-in desktop's own agent is allowed anyway), and not this host at a port the SG listens on.
 */
export async function agentTrust(
  agent: string,
  config: Readonly<Config>,
  resolve: (host: string) => Promise<readonly string[]> = lookupAll,
): Promise<[Verdict, string, string, string?]> {
  const { host } = parseAgent(agent);
  const name = `agent ${host} sg rules`;
  const sg = config.sg;
  if (!sg.agentPorts.includes(4172))
    return [
      "WARN",
      name,
      `sg.agentPorts = [${sg.agentPorts.join(", ")}] does not hold 4172, the port agents answer with: their sessions will be refused (ALLOC_FAILED_TO_ALLOCATE_AGENT)`,
      "add 4172 to sg.agentPorts (or the port this agent's session-info names)",
    ];
  const addresses = await resolve(host);
  const local = new Set([
    "::1",
    ...Object.values(networkInterfaces()).flatMap((l) => (l ?? []).map((a) => a.address)),
  ]);
  const sgPorts = sg.tcpListen.map((l) => parseListen(l)?.port);
  if (
    addresses.some((a) => a.startsWith("127.") || local.has(a)) &&
    sgPorts.some((p) => p !== undefined && sg.agentPorts.includes(p))
  )
    return [
      "WARN",
      name,
      `${host} is this host and the SG listens on a port in sg.agentPorts: the agent's sessions would point the SG at itself; they are refused`,
      "run the agent's session endpoint on another host or port (the demo agent: --endpoint), or move sg.tcpListen",
    ];
  const nets = compileTrustedProxies(sg.agentNetworks);
  const outside = addresses.filter((a) => !nets.has(a));
  if (addresses.length > 0 && outside.length > 0)
    return [
      "WARN",
      name,
      `${host} (${outside.join(", ")}) lies outside sg.agentNetworks [${sg.agentNetworks.join(", ")}]: ${config.brokerUrl ? "sessions the upstream broker puts there are refused" : "a built-in desktop's own agent is still allowed, but an upstream broker naming it would be refused"}`,
      `add its network to sg.agentNetworks (e.g. "${outside[0]!.includes(":") ? `${outside[0]}/128` : `${outside[0]}/32`}")`,
    ];
  return ["PASS", name, `port 4172 in sg.agentPorts, ${host} within sg.agentNetworks`];
}

async function lookupAll(host: string): Promise<readonly string[]> {
  if (isIP(host)) return [host];
  try {
    return (await dnsLookup(host, { all: true })).map((a) => a.address);
  } catch {
    return [];
  }
}

async function checkAgent(
  agent: string,
  config: Readonly<Config> | undefined,
  ca: string | undefined,
  timeoutMs: number,
  probed4172: Set<string>,
  add: AddCheck,
): Promise<void> {
  const { host, port } = parseAgent(agent);
  const r = await tlsProbe(host, port, { timeoutMs, ...(ca ? { ca } : {}) });
  const name = `agent ${host}:${port}`;
  if (!r.ok) {
    const f = connectFix(r.code, "PCoIP agent", host, port);
    add("FAIL", name, f.cause, f.fix);
  } else {
    const bad = peerKeyResults(name, "PCoIP agent", host, r);
    for (const b of bad) add(b.verdict, b.name, b.detail, b.fix);
    if (config?.tls.agentCertCheck && !r.authorized)
      add(
        "FAIL",
        name,
        `the agent certificate does not verify: ${r.authorizationError}`,
        "set tls.trustedCa to the CA bundle (PEM) that issued it, or set tls.agentCertCheck = false",
      );
    else if (bad.length === 0)
      add("PASS", name, `${r.protocol}, ${r.keyType.toUpperCase()}-${r.keyBits ?? "?"} (${r.subject})`);
  }
  // PCoIP itself: the SG dials TCP 4172 on the agent (and sends UDP 4172, which cannot be probed without a session).
  if (probed4172.has(host)) return;
  probed4172.add(host);
  const t = await tcpProbe(host, 4172, timeoutMs);
  const n4172 = `agent ${host}:4172`;
  if (t.ok)
    add(
      "PASS",
      n4172,
      "TCP 4172 reachable (UDP 4172 must be open too; it cannot be tested without a session)",
    );
  else {
    const f = connectFix(t.code, "PCoIP agent", host, 4172);
    add(
      config?.enableSecurityGateway === false ? "WARN" : "FAIL",
      n4172,
      f.cause,
      `${f.fix}; UDP 4172 as well`,
    );
  }
}

async function checkHostState(
  config: Readonly<Config> | undefined,
  layout: InstallLayout,
  deps: DiagnoseDeps,
  add: AddCheck,
): Promise<void> {
  if (layout.staged) {
    add(
      "INFO",
      "host",
      `staged installation under ${layout.root}: firewall, SELinux, clock and kernel settings are this host's and not checked`,
    );
  } else {
    const fw = await deps.firewalld();
    if (fw === "running" && config) {
      const r = await deps.run("firewall-cmd", ["--list-ports"], { timeoutMs: 15_000 });
      const s = await deps.run("firewall-cmd", ["--list-services"], { timeoutMs: 15_000 });
      const open = new Set(r.stdout.trim().split(/\s+/));
      const services = new Set(s.stdout.trim().split(/\s+/));
      const byService: Record<string, string> = { "443/tcp": "https", "80/tcp": "http" };
      const closed = firewallPorts(config).filter((p) => !open.has(p) && !services.has(byService[p] ?? ""));
      if (closed.length === 0) add("PASS", "firewalld", `running; ${firewallPorts(config).join(", ")} open`);
      else
        add(
          "FAIL",
          "firewalld",
          `running; closed in the default zone: ${closed.join(", ")}`,
          `${closed.map((p) => `firewall-cmd --permanent --add-port=${p}`).join(" && ")} && firewall-cmd --reload`,
        );
    } else
      add(
        "PASS",
        "firewalld",
        fw === "absent" ? "not installed (check any other firewall on the path)" : "not running",
      );

    const se = deps.selinux();
    if (se === "enforcing") {
      const r = await deps.run(
        "restorecon",
        ["-n", "-v", "-R", layout.host.binary, layout.host.configDir, layout.host.stateDir],
        { timeoutMs: 30_000 },
      );
      if (r.ok && r.stdout.trim() === "") add("PASS", "selinux", "enforcing; file contexts are right");
      else if (r.ok)
        add(
          "FAIL",
          "selinux",
          `enforcing; wrong file contexts: ${r.stdout.trim().split("\n").length} file(s)`,
          `restorecon -R ${layout.host.binary} ${layout.host.configDir} ${layout.host.stateDir}`,
        );
      else
        add(
          "WARN",
          "selinux",
          `enforcing; ${formatProblem(commandProblem("restorecon", ["-n"], r, "")).split("\n")[0]}`,
          "install policycoreutils and run restorecon -R on the installed files",
        );
    } else add("PASS", "selinux", se);

    const clock = await deps.run("timedatectl", ["show", "-p", "NTPSynchronized", "--value"], {
      timeoutMs: 10_000,
    });
    if (clock.ok && clock.stdout.trim() === "yes")
      add("PASS", "clock", `synchronised (NTP); ${new Date().toISOString()}`);
    else if (clock.ok)
      add(
        "WARN",
        "clock",
        `not synchronised; ${new Date().toISOString()}`,
        "enable time sync (systemctl enable --now chronyd): certificates and session expiry depend on the clock",
      );
    else
      add(
        "WARN",
        "clock",
        `cannot tell whether the clock is synchronised (timedatectl: ${clock.missing ? "not installed" : clock.stderr.trim().split("\n")[0] || `exit ${clock.code}`}); ${new Date().toISOString()}`,
        "check time sync by hand (chronyc tracking)",
      );

    const rmem = readSysctl("net.core.rmem_default");
    if (rmem !== undefined && rmem < SOCKET_BUFFER_BYTES)
      add(
        "WARN",
        "udp buffers",
        `net.core.rmem_default = ${rmem}: UDP media may be dropped under load`,
        `pcoip-cmsg install writes ${layout.host.sysctlFile}; apply it with sysctl --system`,
      );
    else if (rmem !== undefined) add("PASS", "udp buffers", `net.core.rmem_default = ${rmem}`);
  }
  const free = deps.freeDisk(layout.disk.stateDir);
  const gb = (n: number) => `${(n / 1024 ** 3).toFixed(1)} GB`;
  if (free === undefined) add("WARN", "disk", "free space unknown", `check df -h ${layout.host.stateDir}`);
  else if (free < 1024 ** 3)
    add("FAIL", "disk", `${gb(free)} free`, "free disk space (journal: journalctl --vacuum-size=500M)");
  else if (free < 10 * 1024 ** 3)
    add("WARN", "disk", `${gb(free)} free; 10 GB recommended`, "free disk space");
  else add("PASS", "disk", `${gb(free)} free`);
  const mem = deps.memory();
  if (mem && mem.availableBytes < 256 * 1024 ** 2)
    add(
      "WARN",
      "memory",
      `${gb(mem.availableBytes)} available of ${gb(mem.totalBytes)}`,
      "find what uses memory (top) or add memory",
    );
  else if (mem) add("PASS", "memory", `${gb(mem.availableBytes)} available of ${gb(mem.totalBytes)}`);
}

export function formatResults(results: readonly CheckResult[]): string {
  const width = Math.min(28, Math.max(...results.map((r) => r.name.length)));
  const lines = results.map(
    (r) =>
      `${r.verdict.padEnd(4)}  ${r.name.padEnd(width)}  ${r.detail}${r.fix ? `\n${" ".repeat(6 + width + 2)}fix: ${r.fix}` : ""}`,
  );
  const fails = results.filter((r) => r.verdict === "FAIL").length;
  const warns = results.filter((r) => r.verdict === "WARN").length;
  return `${lines.join("\n")}\n\n${fails} failed, ${warns} warning(s), ${results.filter((r) => r.verdict === "PASS").length} passed\n`;
}

// ───────────────────────────── support bundle ─────────────────────────────

const SECRET_KEY = /(password|passwd|secret|token|credential|bindpw|passphrase)/i;
const REDACTED = "<redacted>";

/** URL credentials (`scheme://user:pass@host`) → `scheme://<redacted>@host`. */
export function redactUrls(text: string): string {
  return text.replace(/\b([a-z][a-z0-9+.-]*:\/\/)[^/@\s"']+@/gi, `$1${REDACTED}@`);
}

/**
 * A TOML config with every secret value replaced, line by line so comments and line numbers survive (errors
 * quoted by support still point at the right line). Keys naming a file (`…File`) are paths, not secrets.
 */
export function redactToml(text: string): string {
  return text
    .split("\n")
    .map((line) => {
      const m = /^(\s*"?([A-Za-z0-9_.-]+)"?\s*=\s*)(.*)$/.exec(line);
      if (m && SECRET_KEY.test(m[2]!) && !/File$/.test(m[2]!)) return `${m[1]}"${REDACTED}"`;
      return redactUrls(line);
    })
    .join("\n");
}

/** proxy.env with the proxy credentials replaced. */
export function redactEnv(text: string): string {
  return text
    .split("\n")
    .map((line) => {
      const m = /^(\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=)(.*)$/.exec(line);
      if (m && (SECRET_KEY.test(m[2]!) || /USERNAME|_USER$/i.test(m[2]!))) return `${m[1]}"${REDACTED}"`;
      return redactUrls(line);
    })
    .join("\n");
}

/** Every secret value we know of, to scrub wherever it appears (journal lines, diagnose output). */
function knownSecrets(
  config: Readonly<Config> | undefined,
  layout: InstallLayout,
  proxyEnv: Record<string, string>,
): string[] {
  const out: string[] = [];
  if (config?.admin.token) out.push(config.admin.token);
  const fileToken = config ? adminEndpointFor(config.admin, layout.onDisk).token : "";
  if (fileToken) out.push(fileToken);
  for (const [k, v] of Object.entries(proxyEnv))
    if ((SECRET_KEY.test(k) || /USERNAME/i.test(k)) && v) out.push(v);
  const proxyUrl = proxyEnv.HTTPS_PROXY ?? proxyEnv.https_proxy;
  const userinfo = proxyUrl ? /:\/\/([^@/]+)@/.exec(proxyUrl)?.[1] : undefined;
  if (userinfo) out.push(userinfo, ...userinfo.split(":"));
  if (config?.ldap.serviceBindPasswordFile) {
    const p = readText(layout.onDisk(config.ldap.serviceBindPasswordFile))?.split(/\r?\n/)[0];
    if (p) out.push(p);
  }
  // Short values would scrub ordinary words; they are redacted by key above anyway.
  return out.filter((s) => s.length >= 4).sort((a, b) => b.length - a.length);
}

function scrub(text: string, secrets: readonly string[]): string {
  let t = text;
  for (const s of secrets) t = t.split(s).join(REDACTED);
  // Belt and braces: no key material leaves the host, whatever file it came from.
  return t.replace(
    /-----BEGIN ([A-Z ]*)PRIVATE KEY-----[\s\S]*?(-----END \1PRIVATE KEY-----|$)/g,
    `<private key removed>`,
  );
}

export async function writeSupportBundle(
  o: DiagnoseOptions,
  results: readonly CheckResult[],
  output: string,
  deps: DiagnoseDeps,
): Promise<{ ok: true; files: string[] } | { ok: false; error: string }> {
  const { layout } = o;
  const loaded = loadConfig({ file: o.configFile, strict: false });
  const config = loaded.ok ? loaded.config : undefined;
  const proxyText = readText(layout.disk.proxyEnv);
  const proxyEnv = proxyText ? Object.fromEntries(parseEnvFile(proxyText)) : {};
  const secrets = knownSecrets(config, layout, proxyEnv);
  const files: Record<string, string> = {};
  const osRelease = readText(join(layout.root, "etc/os-release")) ?? readText("/etc/os-release") ?? "";
  const uname = await deps.run("uname", ["-a"], { timeoutMs: 5000 });
  files["version.txt"] =
    `${PRODUCT_NAME} ${VERSION} (${COMMIT}) bun ${Bun.version}\ncollected ${new Date().toISOString()}\n` +
    `${uname.stdout.trim()}\n\n${osRelease}`;
  const installed = readText(layout.disk.installRecord);
  if (installed) files["installed.json"] = installed;
  const configText = readText(o.configFile);
  files["config.toml"] =
    configText === undefined ? `(${o.configFile} could not be read)\n` : redactToml(configText);
  if (proxyText !== undefined) files["proxy.env"] = redactEnv(proxyText);
  const unit = readText(layout.disk.unitFile);
  if (unit) files["pcoip-cmsg.service"] = unit;

  const certs: Record<string, unknown> = {};
  if (config)
    for (const [label, file] of [
      ["tls.cert", config.tls.cert],
      ["tls.caCert", config.tls.caCert],
      ["tls.trustedCa", config.tls.trustedCa],
      ["license.trustedCert", config.license.trustedCert],
    ] as const) {
      if (!file) continue;
      const text = readText(layout.onDisk(file));
      if (text === undefined) certs[label] = { file, error: "cannot be read" };
      else {
        const d = describeCertificates(text);
        certs[label] = d.ok ? { file, certificates: d.certificates } : { file, error: d.error };
      }
    }
  files["certificates.json"] = `${JSON.stringify(certs, null, 2)}\n`;
  files["diagnose.txt"] = formatResults(results);
  if (!layout.staged) {
    const j = await deps.run(
      "journalctl",
      ["-u", SERVICE_NAME, "-n", "2000", "--no-pager", "-o", "short-iso"],
      { timeoutMs: 30_000 },
    );
    files["journal.txt"] = j.ok
      ? redactUrls(j.stdout)
      : `(journalctl: ${j.missing ? "not installed" : j.stderr.trim() || `exit ${j.code}`})\n`;
  }

  const work = mkdtempSync(join(tmpdir(), "pcoip-cmsg-support-"));
  try {
    const stamp = new Date().toISOString().replace(/[-:]/g, "").replace(/\..*$/, "");
    const dirName = `pcoip-cmsg-support-${stamp}`;
    const dir = join(work, dirName);
    mkdirSync(dir);
    for (const [name, text] of Object.entries(files))
      writeFileSync(join(dir, name), scrub(text, secrets), { mode: 0o600 });
    const out = resolve(output);
    mkdirSync(dirname(out), { recursive: true });
    const tmpOut = `${out}.tmp-${process.pid}`;
    const args = ["-czf", tmpOut, "-C", work, dirName];
    const r = await deps.run("tar", args);
    if (!r.ok) {
      rmSync(tmpOut, { force: true });
      return {
        ok: false,
        error: formatProblem(
          commandProblem("tar", args, r, "install GNU tar; check free space where --output points"),
        ),
      };
    }
    chmodSync(tmpOut, 0o600);
    renameSync(tmpOut, out);
    return { ok: true, files: Object.keys(files) };
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

// ───────────────────────────── the command ─────────────────────────────

const FLAGS: FlagSpec[] = [
  {
    name: "config",
    kind: "string",
    value: "FILE",
    help: "configuration file (default /etc/pcoip-cmsg/pcoip-cmsg.toml, under --root)",
  },
  { name: "root", kind: "string", value: "DIR", help: "diagnose an installation staged under DIR" },
  { name: "agent", kind: "list", value: "HOST[:PORT]", help: "also check this agent (60443 and 4172)" },
  { name: "timeout", kind: "string", value: "SECONDS", help: "per network probe (default 5)" },
  {
    name: "support-bundle",
    kind: "boolean",
    help: "write a tar.gz for support (secrets redacted, no key material)",
  },
  {
    name: "output",
    kind: "string",
    value: "FILE",
    help: "where --support-bundle writes (default ./pcoip-cmsg-support-DATE.tar.gz)",
  },
  { name: "help", kind: "boolean", help: "this text" },
];

const HELP = `Usage: ${PRODUCT_NAME} diagnose [--agent HOST] [--support-bundle [--output FILE]]

Runs the checks of the vendor's troubleshooting guide: config and certificate rules, the service, its ports, the
CM's dummy POST (<error-resp> expected), the upstream broker's TLS, each desktop's agent on 60443 and 4172 (peer
keys under ${MIN_RSA_BITS} bits are the "read ECONNRESET" case), the directory, firewalld, SELinux, disk, memory,
clock and UDP buffers. Exit code 1 when any check FAILs.

Options:
${formatFlags(FLAGS)}
`;

export const diagnoseCommand: CommandMain = (argv, io) => runDiagnose(argv, io, hostDiagnoseDeps());

export async function runDiagnose(argv: string[], io: CliIo, deps: DiagnoseDeps): Promise<number> {
  const args = parseCommandArgs("diagnose", argv, FLAGS, HELP, io);
  if (typeof args === "number") return args;
  const timeoutText = flagString(args, "timeout");
  const timeout = timeoutText === undefined ? 5 : Number(timeoutText);
  if (!Number.isFinite(timeout) || timeout <= 0 || timeout > 120) {
    io.stderr(
      `${PRODUCT_NAME} diagnose: --timeout ${timeoutText}: must be a number of seconds from 0 to 120\n`,
    );
    return 2;
  }
  const layout = installLayout(flagString(args, "root") ?? "/");
  const configFile = flagString(args, "config") ?? layout.disk.configFile;
  const options: DiagnoseOptions = {
    layout,
    configFile,
    agents: flagList(args, "agent"),
    timeoutMs: timeout * 1000,
  };
  const results = await runChecks(options, deps);
  io.stdout(formatResults(results));
  if (flagBool(args, "support-bundle") === true) {
    const stamp = new Date().toISOString().replace(/[-:]/g, "").replace(/\..*$/, "");
    const output = flagString(args, "output") ?? `pcoip-cmsg-support-${stamp}.tar.gz`;
    const r = await writeSupportBundle(options, results, output, deps);
    if (!r.ok) {
      io.stderr(`${PRODUCT_NAME} diagnose: writing the support bundle: ${r.error}`);
      return 1;
    }
    io.stdout(
      `\nsupport bundle: ${resolve(output)} (0600; secrets redacted, no key material): ${r.files.join(", ")}\n`,
    );
  }
  return results.some((r) => r.verdict === "FAIL") ? 1 : 0;
}
