/**
 * The upstream broker's configuration turned, once, into what every conversation uses: the parsed broker URL,
 * the trust anchors for `brokerCertCheck` (the configured CA PEM plus the system store), the outbound proxy from
 * the environment, the timeouts. Every mistake is a value `{ what, cause, fix }` for `config check` and startup.
 */

import { X509Certificate } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { rootCertificates } from "node:tls";
import { type ProxySettings, proxyFromEnv } from "../../net/proxy-env.ts";
import type { BrokerRoot, ProductInfo } from "../../protocol/types.ts";
import { clientTls } from "../../tls/policy.ts";
import { createTlsSessionCache } from "../tls-sessions.ts";
import type { ConversationSettings } from "./upstream-conversation.ts";
import { type BrokerTrust, brokerTrust, parseBrokerUrl } from "./upstream-transport.ts";

/** ILS's agent timeout is 10 s; the vendor's scripts set 55–60 s for the whole broker call (PROTOCOL.md §3, §10). */
export const DEFAULT_TIMEOUT_MS = 10_000;
/** Longer than the broker's own agent timeout, so the broker's answer (even its failure) arrives first. */
export const DEFAULT_ALLOCATE_TIMEOUT_MS = 30_000;
/** Where distributions keep the system CA bundle (Debian/Ubuntu, RHEL/Rocky, SUSE, Alpine). */
export const SYSTEM_CA_FILES = [
  "/etc/ssl/certs/ca-certificates.crt",
  "/etc/pki/tls/certs/ca-bundle.crt",
  "/etc/ssl/ca-bundle.pem",
  "/etc/ssl/cert.pem",
] as const;

export interface UpstreamOptions {
  /** `brokerUrl`: https://host[:port] (path defaults to /pcoip-broker/xml). */
  readonly brokerUrl: string;
  /** `upstream.dialect`: the root of requests to the broker. Replies are accepted under either root. */
  readonly dialect?: BrokerRoot;
  /** Every message but allocate-resource (default 10 s). */
  readonly timeoutMs?: number;
  /** allocate-resource (default 30 s; must exceed the broker's own agent timeout). */
  readonly allocateTimeoutMs?: number;
  /** `tls.brokerCertCheck` (default true). */
  readonly brokerCertCheck?: boolean;
  /** `tls.trustedCa` as PEM text (one or more certificates), trusted besides the system store. */
  readonly caCertPem?: string;
  /**
   * System store: true (default) = the runtime's bundled roots plus the first SYSTEM_CA_FILES that exists; false =
   * none; a string = this PEM bundle instead (tests model a host that trusts a given CA).
   */
  readonly systemCa?: boolean | string;
  /** The environment the proxy variables are read from (the service's; tests pass their own). */
  readonly env?: Readonly<Record<string, string | undefined>>;
  /** This CM, as `pcm-info` in the hello sent upstream (and to the client). */
  readonly pcmInfo: ProductInfo;
  /** Where the CM launches a session itself when the broker names only the desktop host (default 60443). */
  readonly agentPort?: number;
  /** Name resolution for the broker's host (tests pass one that never leaves the machine). */
  readonly resolve?: (host: string) => Promise<string[]>;
  /** TLS 1.2 cipher list, OpenSSL syntax (default: tls/policy.ts's client list, the vendor's suites and twins). */
  readonly ciphers?: string;
  readonly userAgent?: string;
  /** A kept connection idle longer than this is not used for allocate-resource (default 1 s). */
  readonly freshConnectionMs?: number;
  /** The CM closes a kept broker connection idle this long (default 30 s). */
  readonly keepAliveMs?: number;
}

export interface SettingsError {
  readonly what: string;
  readonly cause: string;
  readonly fix: string;
}

export interface ResolvedUpstream {
  readonly conversation: Omit<ConversationSettings, "connect"> & {
    readonly connect: Omit<ConversationSettings["connect"], "onWarning">;
  };
  readonly proxy: ProxySettings | undefined;
  readonly agentPort: number;
}

/** Validates and resolves the options (reads the system CA file; nothing else touches the disk or network). */
export function resolveUpstreamOptions(
  o: UpstreamOptions,
): { ok: true; value: ResolvedUpstream } | { ok: false; error: SettingsError } {
  const endpoint = parseBrokerUrl(o.brokerUrl);
  if ("error" in endpoint) {
    return {
      ok: false,
      error: {
        what: "reading brokerUrl",
        cause: endpoint.error,
        fix: 'write brokerUrl = "https://broker.example:443"',
      },
    };
  }
  const timeoutMs = o.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const allocateTimeoutMs = o.allocateTimeoutMs ?? DEFAULT_ALLOCATE_TIMEOUT_MS;
  if (!(timeoutMs > 0) || !(allocateTimeoutMs > 0)) {
    return {
      ok: false,
      error: {
        what: "reading upstream timeouts",
        cause: "a timeout is not a positive number",
        fix: "use milliseconds, e.g. timeoutMs = 10000",
      },
    };
  }
  const proxy = proxyFromEnv(o.env ?? process.env);
  if (!proxy.ok) return { ok: false, error: proxy.error };
  const trust = buildTrust(o);
  if (!trust.ok) return trust;
  return {
    ok: true,
    value: {
      proxy: proxy.proxy,
      agentPort: o.agentPort ?? 60443,
      conversation: {
        connect: {
          endpoint,
          proxy: proxy.proxy,
          trust: trust.value,
          ...(o.resolve ? { resolve: o.resolve } : {}),
          // One broker endpoint (and proxy path): a few keys at most.
          sessions: createTlsSessionCache(16),
        },
        dialect: o.dialect ?? "pcoip-client",
        pcmInfo: o.pcmInfo,
        userAgent: o.userAgent ?? `pcoip-cmsg/${o.pcmInfo.productVersion}`,
        freshConnectionMs: o.freshConnectionMs ?? 1000,
        keepAliveMs: o.keepAliveMs ?? 30_000,
        timeoutMs,
        allocateTimeoutMs,
      },
    },
  };
}

function buildTrust(
  o: UpstreamOptions,
): { ok: true; value: BrokerTrust } | { ok: false; error: SettingsError } {
  const expected: X509Certificate[] = [];
  const pems = o.caCertPem ? splitPem(o.caCertPem) : [];
  for (const pem of pems) {
    try {
      expected.push(new X509Certificate(pem));
    } catch (e) {
      return {
        ok: false,
        error: {
          what: "reading the trusted CA bundle (tls.trustedCa)",
          cause: `not a PEM certificate (${(e as Error).message})`,
          fix: "give a PEM file with BEGIN CERTIFICATE blocks",
        },
      };
    }
  }
  const anchors = [...pems];
  if (typeof o.systemCa === "string") {
    anchors.push(...splitPem(o.systemCa));
  } else if (o.systemCa ?? true) {
    anchors.push(...rootCertificates);
    const file = SYSTEM_CA_FILES.find((f) => existsSync(f));
    if (file) anchors.push(...splitPem(readFileSync(file, "utf8")));
  }
  try {
    return {
      ok: true,
      value: brokerTrust(
        o.brokerCertCheck ?? true,
        anchors,
        expected,
        o.ciphers ?? clientTls({ verify: true }).ciphers,
      ),
    };
  } catch (e) {
    return {
      ok: false,
      error: {
        what: "preparing TLS for the broker",
        cause: (e as Error).message,
        fix: "check the cipher list and tls.trustedCa",
      },
    };
  }
}

function splitPem(text: string): string[] {
  return [
    ...text.replace(/\r\n/g, "\n").matchAll(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g),
  ].map((m) => `${m[0]}\n`);
}
