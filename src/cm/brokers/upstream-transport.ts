/**
 * Opens one TLS connection to the upstream broker, directly or through the outbound proxy's CONNECT tunnel,
 * and judges the broker's certificate itself so that a refusal can say which rule was broken and by which
 * certificate (SPEC §5: `brokerCertCheck` against `tls.trustedCa` and the system store, RSA under 2048 bits and DSA
 * refused). Through a proxy, a certificate that does not come from a trusted CA is reported as TLS inspection
 * (the proxy re-signs the broker's certificate with its own CA), and one whose issuer names a proxy product is
 * reported so even when the host trusts that CA.
 *
 * DNS is resolved here (through `resolve`, which tests replace so that no query leaves the machine); through a
 * proxy the proxy resolves the broker's name.
 */

import { X509Certificate } from "node:crypto";
import { lookup } from "node:dns/promises";
import { isIP } from "node:net";
import {
  checkServerIdentity,
  createSecureContext,
  type PeerCertificate,
  type SecureContext,
  type TLSSocket,
  connect as tlsConnect,
} from "node:tls";
import { openTunnel } from "../../net/https-proxy.ts";
import { describeProxy, type ProxySettings, proxyFor } from "../../net/proxy-env.ts";
import type { TlsSessionCache } from "../tls-sessions.ts";
import type { BrokerFailure, BrokerFailureKind } from "./upstream-failures.ts";

/** The smallest RSA key a broker may use (SPEC §5; the vendor's CM resets such connections). */
export const MIN_RSA_BITS = 2048;

/** Issuer names of products that inspect TLS (and generic words they use), for the inspection diagnosis. */
const INSPECTION_ISSUER =
  /proxy|inspect|intercept|mitm|decrypt|zscaler|netskope|fortigate|fortinet|palo ?alto|blue ?coat|forcepoint|websense|sophos|squid|umbrella|check ?point|barracuda|mcafee web|cisco web|untangle|smoothwall|kerio/i;

export interface BrokerEndpoint {
  readonly host: string;
  readonly port: number;
  /** Always /pcoip-broker/xml unless the URL names another path. */
  readonly path: string;
  /** The URL as configured, for messages. */
  readonly url: string;
}

export interface BrokerTrust {
  /** `brokerCertCheck`: verify the chain, the name and the key. */
  readonly check: boolean;
  /** PEM trust anchors: the configured CA(s) and the system store. */
  readonly anchors: readonly string[];
  /** The configured CA(s) alone (what the administrator expects the broker's certificate to chain to). */
  readonly expected: readonly X509Certificate[];
  /** Built once from `anchors` (TLS 1.2+, the configured suites): parsing hundreds of anchors per connection costs. */
  readonly secureContext: SecureContext;
}

/** The trust for `brokerCertCheck`: anchors (PEM), the expected CA(s) among them, TLS 1.2+ and `ciphers`. */
export function brokerTrust(
  check: boolean,
  anchors: readonly string[],
  expected: readonly X509Certificate[],
  ciphers?: string,
): BrokerTrust {
  const secureContext = createSecureContext({
    ca: [...anchors],
    minVersion: "TLSv1.2",
    ...(ciphers ? { ciphers } : {}),
  });
  return { check, anchors, expected, secureContext };
}

export interface ConnectBrokerOptions {
  readonly endpoint: BrokerEndpoint;
  readonly proxy: ProxySettings | undefined;
  readonly trust: BrokerTrust;
  readonly timeoutMs: number;
  /** Resolves the broker's host name to addresses (default: the system resolver). */
  readonly resolve?: (host: string) => Promise<string[]>;
  /** A worry that does not stop the connection (e.g. an inspecting proxy whose CA the host trusts). */
  readonly onWarning?: (message: string, fix: string) => void;
  /**
   * TLS sessions to resume (issue 21): every client conversation opens its own broker connection, and a resumed
   * one skips the broker's signature and the certificate. Only sessions of connections whose certificate passed
   * the judgement below are kept (cm/tls-sessions.ts).
   */
  readonly sessions?: TlsSessionCache;
}

export type ConnectBrokerResult =
  | { readonly ok: true; readonly socket: TLSSocket; readonly via: string | undefined }
  | { readonly ok: false; readonly failure: Omit<BrokerFailure, "what"> };

/**
 * Parses the broker URL (`https://host[:port][/path]`; the path defaults to /pcoip-broker/xml).
 * @example parseBrokerUrl("https://broker.corp.example") // → { host: "broker.corp.example", port: 443, … }
 */
export function parseBrokerUrl(raw: string): BrokerEndpoint | { error: string } {
  let url: URL;
  try {
    url = new URL(raw.includes("://") ? raw : `https://${raw}`);
  } catch {
    return { error: `"${raw}" is not a URL; write https://host[:port]` };
  }
  if (url.protocol !== "https:") return { error: `the broker URL must use https:// (got ${url.protocol}//)` };
  if (url.username || url.password) return { error: "the broker URL must not carry credentials" };
  const host = url.hostname.startsWith("[") ? url.hostname.slice(1, -1) : url.hostname;
  const path = url.pathname === "/" || url.pathname === "" ? "/pcoip-broker/xml" : url.pathname;
  return { host, port: url.port === "" ? 443 : Number(url.port), path, url: `https://${url.host}${path}` };
}

/** The Host header / CONNECT authority for the endpoint. */
export function authority(e: BrokerEndpoint): string {
  const h = isIP(e.host) === 6 ? `[${e.host}]` : e.host;
  return e.port === 443 ? h : `${h}:${e.port}`;
}

/** Opens and checks one TLS connection to the broker; failures are values naming cause and fix. */
export async function connectBroker(opts: ConnectBrokerOptions): Promise<ConnectBrokerResult> {
  const { endpoint, trust } = opts;
  const deadline = Date.now() + opts.timeoutMs;
  const proxy = proxyFor(opts.proxy, endpoint.host, endpoint.port);
  const via = proxy ? describeProxy(proxy) : undefined;

  let raw: import("node:net").Socket | undefined;
  let address = endpoint.host;
  if (proxy) {
    const t = await openTunnel({
      proxy,
      host: endpoint.host,
      port: endpoint.port,
      timeoutMs: opts.timeoutMs,
    });
    if (!t.ok) return { ok: false, failure: t.failure };
    raw = t.socket;
  } else if (isIP(endpoint.host) === 0) {
    const resolved = await resolveHost(opts.resolve, endpoint.host, opts.timeoutMs);
    if (!resolved.ok) return { ok: false, failure: resolved.failure };
    address = resolved.address;
  }

  const remaining = Math.max(1, deadline - Date.now());
  const sessionKey = `${endpoint.url}|${via ?? ""}`;
  const session = opts.sessions?.get(sessionKey);
  return new Promise<ConnectBrokerResult>((resolve) => {
    let settled = false;
    const socket = tlsConnect({
      ...(raw ? { socket: raw } : { host: address, port: endpoint.port }),
      ...(isIP(endpoint.host) === 0 ? { servername: endpoint.host } : {}),
      secureContext: trust.secureContext,
      ...(session ? { session } : {}),
      // The chain, name and key are judged below, so that a refusal can name the rule and the certificate.
      rejectUnauthorized: false,
    });
    // TLS 1.3 sends the session after the handshake: kept only once the certificate has been accepted.
    let accepted = false;
    let early: Buffer | undefined;
    if (opts.sessions) {
      socket.on("session", (s: Buffer) => {
        if (accepted) opts.sessions?.keep(sessionKey, s);
        else early = s;
      });
    }
    const finish = (r: ConnectBrokerResult) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.off("error", onError);
      if (!r.ok) {
        opts.sessions?.drop(sessionKey);
        socket.destroy();
        raw?.destroy();
      } else {
        accepted = true;
        if (early) opts.sessions?.keep(sessionKey, early);
      }
      resolve(r);
    };
    const timer = setTimeout(
      () =>
        finish(
          fail(
            "timeout",
            true,
            `no TLS connection to ${endpoint.url} within ${opts.timeoutMs} ms${viaText(via)}`,
            {
              fix: "check that the broker is up and that this host (or the proxy) may reach its port",
            },
          ),
        ),
      remaining,
    );
    const onError = (e: Error & { code?: string }) => finish(socketError(e, endpoint, via));
    socket.on("error", onError);
    socket.once("secureConnect", () => {
      const judged = judgeCertificateOnce(socket, endpoint, trust, via, opts.onWarning);
      if (judged) finish({ ok: false, failure: judged });
      else {
        // Errors after this point belong to the HTTP exchange; keep one listener so none goes unhandled.
        socket.on("error", () => {});
        finish({ ok: true, socket, via });
      }
    });
  });
}

async function resolveHost(
  resolver: ((host: string) => Promise<string[]>) | undefined,
  host: string,
  timeoutMs: number,
): Promise<{ ok: true; address: string } | { ok: false; failure: Omit<BrokerFailure, "what"> }> {
  const r = resolver ?? (async (h: string) => (await lookup(h, { all: true })).map((a) => a.address));
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    const addresses = await Promise.race([
      r(host),
      new Promise<"timeout">((res) => {
        timer = setTimeout(() => res("timeout"), timeoutMs);
      }),
    ]);
    if (addresses === "timeout") {
      return fail("timeout", true, `resolving the broker's name ${host} took over ${timeoutMs} ms`, {
        fix: "check this host's DNS servers (/etc/resolv.conf)",
      });
    }
    const first = addresses[0];
    if (!first) throw Object.assign(new Error("no addresses"), { code: "ENOTFOUND" });
    return { ok: true, address: first };
  } catch (e) {
    const code = (e as { code?: string }).code ?? (e as Error).message;
    return fail("dns", false, `the broker's name ${host} does not resolve (${code})`, {
      fix: "check the host name in brokerUrl and this host's DNS (or use the broker's IP address)",
    });
  } finally {
    clearTimeout(timer);
  }
}

function socketError(
  e: Error & { code?: string },
  endpoint: BrokerEndpoint,
  via: string | undefined,
): ConnectBrokerResult {
  const at = `${endpoint.url}${viaText(via)}`;
  switch (e.code) {
    case "ECONNREFUSED":
      return fail("refused", false, `the broker ${at} refused the connection (ECONNREFUSED)`, {
        fix: "check the port in brokerUrl and that the broker service is running",
      });
    case "EHOSTUNREACH":
    case "ENETUNREACH":
      return fail("refused", false, `the broker ${at} is unreachable (${e.code})`, {
        fix: "check routing and firewalls between this host and the broker",
      });
    case "ETIMEDOUT":
      return fail("timeout", true, `connecting to the broker ${at} timed out`, {
        fix: "check that a firewall does not drop traffic to the broker's port",
      });
    case "ECONNRESET":
    case "EPIPE":
      return fail(
        "tls",
        false,
        `the broker ${at} closed the connection during the TLS handshake (${e.code})`,
        {
          fix: "check that the broker accepts TLS 1.2 or 1.3 and that its certificate key is at least 2048 bits",
        },
      );
    default: {
      const code = e.code ?? "";
      if (/SSL|TLS|WRONG_VERSION|HANDSHAKE|PROTOCOL|ALERT/i.test(`${code} ${e.message}`)) {
        return fail("tls", false, `TLS with the broker ${at} failed: ${e.message}`, {
          fix: "check that brokerUrl points at the broker's HTTPS port and that it offers TLS 1.2 or 1.3",
        });
      }
      return fail("closed", false, `connecting to the broker ${at}: ${code || e.message}`, {
        fix: "check the broker address in brokerUrl and that the broker is running",
      });
    }
  }
}

/**
 * Certificates already judged acceptable, by host, trust setting, path and leaf fingerprint. Every client
 * conversation opens its own broker connection, and the full judgement (detailed chain, X.509 parse, a signature
 * check) was an eighth of the CM's CPU per login; the same leaf on a verified connection needs it once. The
 * handshake's own verification still runs on every connection: only our extra rules are remembered.
 */
const acceptedCertificates = new Set<string>();
const MAX_ACCEPTED_CERTIFICATES = 64;

function judgeCertificateOnce(
  socket: TLSSocket,
  endpoint: BrokerEndpoint,
  trust: BrokerTrust,
  via: string | undefined,
  onWarning: ConnectBrokerOptions["onWarning"],
): Omit<BrokerFailure, "what"> | undefined {
  const fingerprint = socket.getPeerCertificate(false)?.fingerprint256;
  const key =
    fingerprint && (socket.authorized || !trust.check)
      ? `${endpoint.host}|${trust.check}|${via ?? ""}|${fingerprint}`
      : undefined;
  if (key && acceptedCertificates.has(key)) return undefined;
  const judged = judgeCertificate(socket, endpoint, trust, via, onWarning);
  if (!judged && key) {
    if (acceptedCertificates.size >= MAX_ACCEPTED_CERTIFICATES) acceptedCertificates.clear();
    acceptedCertificates.add(key);
  }
  return judged;
}

/** A reason to refuse the broker's certificate, or undefined when it is acceptable. */
function judgeCertificate(
  socket: TLSSocket,
  endpoint: BrokerEndpoint,
  trust: BrokerTrust,
  via: string | undefined,
  onWarning: ConnectBrokerOptions["onWarning"],
): Omit<BrokerFailure, "what"> | undefined {
  const peer = socket.getPeerCertificate(true) as PeerCertificate | undefined;
  if (!peer?.raw) {
    return trust.check
      ? fail("certificate", false, `the broker ${endpoint.url} presented no certificate`, {
          fix: "configure a certificate on the broker",
        }).failure
      : undefined;
  }
  const leaf = new X509Certificate(peer.raw);
  const subject = oneLine(leaf.subject);
  const issuer = oneLine(leaf.issuer);
  const selfSigned = leaf.subject === leaf.issuer && safeVerify(leaf, leaf);
  const fromExpected = trust.expected.some((ca) => issuedBy(peer, ca));
  const looksInspected = INSPECTION_ISSUER.test(leaf.issuer);
  const inspectionFix =
    "exempt the broker's address from TLS inspection on the proxy (recommended), or add the proxy's CA to tls.trustedCa if inspecting this traffic is intended";

  if (!trust.check) {
    if (via && looksInspected) {
      onWarning?.(
        `the broker certificate (subject "${subject}") was issued by "${issuer}", which looks like a TLS-inspecting proxy; brokerCertCheck is off, so it is accepted`,
        inspectionFix,
      );
    }
    return undefined;
  }

  const nameFailure = () =>
    fail(
      "certificate",
      false,
      `the broker certificate (subject "${subject}", names ${peer.subjectaltname || "none"}) is not valid for ${endpoint.host}: rule "the certificate must name the host in brokerUrl" broken`,
      { fix: "use the host name the certificate names in brokerUrl, or reissue the broker's certificate" },
    ).failure;

  if (!socket.authorized) {
    const code = String(socket.authorizationError ?? "unknown");
    // Bun reports a name mismatch as the authorization error once the chain itself verified.
    if (code === "ERR_TLS_CERT_ALTNAME_INVALID" && (!via || fromExpected || !looksInspected))
      return nameFailure();
    if (via && !selfSigned && !fromExpected) {
      return fail(
        "tls_inspection",
        false,
        `the broker certificate (subject "${subject}") reached through ${via} was issued by "${issuer}", which is not a trusted CA (${code})${looksInspected ? " and whose name is a proxy's" : ""}: the proxy is most likely inspecting TLS and re-signing the broker's certificate`,
        { fix: inspectionFix },
      ).failure;
    }
    return fail("certificate", false, certificateRule(code, subject, issuer, selfSigned, leaf, endpoint), {
      fix: selfSigned
        ? "give the broker a certificate from your CA, or put this self-signed certificate in tls.trustedCa, or set brokerCertCheck = false"
        : "put the CA that issued the broker's certificate in tls.trustedCa (PEM), or fix the broker's chain",
    }).failure;
  }

  if (checkServerIdentity(endpoint.host, peer)) return nameFailure();

  const keyType = leaf.publicKey.asymmetricKeyType;
  const bits = leaf.publicKey.asymmetricKeyDetails?.modulusLength ?? peer.bits;
  if (keyType === "dsa") {
    return fail(
      "certificate",
      false,
      `the broker certificate (subject "${subject}") has a DSA key: rule "no DSA keys" broken`,
      {
        fix: "reissue the broker's certificate with an RSA (at least 2048 bits) or EC key",
      },
    ).failure;
  }
  if (keyType === "rsa" && bits !== undefined && bits < MIN_RSA_BITS) {
    return fail(
      "certificate",
      false,
      `the broker certificate (subject "${subject}") has a ${bits}-bit RSA key: rule "RSA keys of at least ${MIN_RSA_BITS} bits" broken`,
      { fix: "reissue the broker's certificate with an RSA key of at least 2048 bits (3072 recommended)" },
    ).failure;
  }

  if (via && looksInspected && !fromExpected) {
    onWarning?.(
      `the broker certificate (subject "${subject}") reached through ${via} was issued by "${issuer}", a TLS-inspecting proxy's CA that this host trusts; the broker's own certificate is not what the CM sees`,
      inspectionFix,
    );
  }
  return undefined;
}

function certificateRule(
  code: string,
  subject: string,
  issuer: string,
  selfSigned: boolean,
  leaf: X509Certificate,
  endpoint: BrokerEndpoint,
): string {
  const cert = `the broker certificate of ${endpoint.url} (subject "${subject}", issuer "${issuer}")`;
  if (selfSigned || code === "DEPTH_ZERO_SELF_SIGNED_CERT" || code === "SELF_SIGNED_CERT_IN_CHAIN") {
    return `${cert} is self-signed and not trusted: rule "the certificate must chain to tls.trustedCa or the system store" broken (${code})`;
  }
  if (code === "CERT_HAS_EXPIRED")
    return `${cert} expired on ${leaf.validTo}: rule "the certificate must be within its validity" broken`;
  if (code === "CERT_NOT_YET_VALID") {
    return `${cert} is not valid before ${leaf.validFrom}: rule "the certificate must be within its validity" broken (check this host's clock)`;
  }
  return `${cert} does not chain to a trusted CA: rule "the certificate must chain to tls.trustedCa or the system store" broken (${code})`;
}

/** Whether `ca` issued the leaf or any certificate of the chain the broker sent. */
function issuedBy(peer: PeerCertificate, ca: X509Certificate): boolean {
  let cur: (PeerCertificate & { issuerCertificate?: PeerCertificate }) | undefined = peer;
  for (let i = 0; cur?.raw && i < 8; i++) {
    const x = new X509Certificate(cur.raw);
    if (x.fingerprint256 === ca.fingerprint256) return true;
    if (x.checkIssued(ca) && safeVerify(x, ca)) return true;
    const next: PeerCertificate | undefined = cur.issuerCertificate;
    if (!next || next === cur) break;
    cur = next;
  }
  return false;
}

function safeVerify(cert: X509Certificate, issuer: X509Certificate): boolean {
  try {
    return cert.verify(issuer.publicKey);
  } catch {
    return false;
  }
}

function oneLine(dn: string): string {
  return dn.split("\n").filter(Boolean).join(", ");
}

function viaText(via: string | undefined): string {
  return via ? ` through ${via}` : "";
}

function fail(
  kind: BrokerFailureKind,
  timeout: boolean,
  cause: string,
  rest: { fix: string },
): { ok: false; failure: Omit<BrokerFailure, "what"> } {
  return { ok: false, failure: { kind, timeout, cause, fix: rest.fix } };
}
