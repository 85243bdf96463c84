/**
 * TLS policy (SPEC §5): TLS 1.2 and 1.3 only, on 443 and on the CM's calls to brokers and agents; TLS 1.2 suites in
 * the vendor's order, narrowable in config. The TLS library is BoringSSL (built into Bun), which has fewer suites
 * than OpenSSL and silently drops names it does not know from a cipher string as long as one name is left; so each
 * configured name is checked here against the library's own list and an unknown one is refused at config check.
 *
 * Key types: the vendor's suites authenticate with RSA. When the served certificate is ECDSA, the ECDHE-RSA suites
 * are swapped for their ECDHE-ECDSA twins (same key exchange and cipher) and the static-RSA suites are dropped,
 * since no ECDSA certificate can serve them; otherwise TLS 1.2 clients could not connect at all. As a client the CM
 * offers both twins, because it cannot know a broker's key type before the handshake.
 */
import { getCiphers } from "node:tls";
import type { KeyType, TlsProblem } from "./certs.ts";

/** The vendor's TLS 1.2 suites, in its order of preference. */
export const VENDOR_TLS12_SUITES = [
  "ECDHE-RSA-AES256-GCM-SHA384",
  "ECDHE-RSA-AES128-GCM-SHA256",
  "AES256-GCM-SHA384",
  "AES128-GCM-SHA256",
] as const;

/** Protocol versions as the numbers Bun's `tls.minVersion` / `maxVersion` take (a string is refused). */
export const TLS1_2_VERSION = 0x0303;
export const TLS1_3_VERSION = 0x0304;
/** BoringSSL's SSL_OP_CIPHER_SERVER_PREFERENCE: the server's order wins, not the client's. */
const SERVER_PREFERENCE = 0x00400000;

const ECDSA_TWIN: Readonly<Record<string, string>> = {
  "ECDHE-RSA-AES256-GCM-SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
  "ECDHE-RSA-AES128-GCM-SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
  "ECDHE-RSA-CHACHA20-POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
  "ECDHE-RSA-AES128-SHA": "ECDHE-ECDSA-AES128-SHA",
  "ECDHE-RSA-AES256-SHA": "ECDHE-ECDSA-AES256-SHA",
  "ECDHE-RSA-AES128-SHA256": "ECDHE-ECDSA-AES128-SHA256",
};
const RSA_TWIN: Readonly<Record<string, string>> = Object.fromEntries(
  Object.entries(ECDSA_TWIN).map(([rsa, ec]) => [ec, rsa]),
);

/** TLS 1.2 suite names the TLS library of this build knows (upper-case), TLS 1.3 ones left out. */
export function librarySuites(): readonly string[] {
  return getCiphers()
    .map((c) => c.toUpperCase())
    .filter((c) => !c.startsWith("TLS_"));
}

/** TLS 1.3 suite names of this build (always all enabled). */
export function libraryTls13Suites(): readonly string[] {
  return getCiphers()
    .map((c) => c.toUpperCase())
    .filter((c) => c.startsWith("TLS_"));
}

/** The sentence `config check` and `diagnose` print about TLS 1.3. */
export function tls13Note(): string {
  return (
    `TLS 1.3 suites are the TLS library's own (${libraryTls13Suites().join(", ")}): BoringSSL, inside Bun, ` +
    "cannot narrow or reorder them, so the configured cipher list applies to TLS 1.2 only"
  );
}

/** The sentence `diagnose` prints about the vendor's Security Gateway cipher list. */
export const SG_SUITES_NOTE =
  "the vendor's Security Gateway cipher list has no effect here: port 4172 carries the agent's own TLS end to " +
  "end (the gateway relays it without terminating it), so the agent's settings decide those suites";

export type SuiteCheck =
  | { readonly ok: true; readonly suites: readonly string[]; readonly warnings: readonly string[] }
  | { readonly ok: false; readonly error: TlsProblem };

/**
 * Checks a configured TLS 1.2 suite list (OpenSSL names, one per entry, in preference order). Refused: an empty
 * list, cipher-string syntax (`HIGH`, `!aNULL`, `a:b`), TLS 1.3 names, a name the TLS library lacks, PSK and 3DES
 * suites, duplicates. Warned: CBC suites (the vendor's list has only AES-GCM).
 *
 * @example
 * const r = validateCipherList(config.tls.ciphers ?? VENDOR_TLS12_SUITES);
 * if (!r.ok) fail(r.error);
 */
export function validateCipherList(list: readonly string[]): SuiteCheck {
  const known = new Set(librarySuites());
  const what = "checking the TLS 1.2 cipher suites";
  if (list.length === 0) {
    return refuse(
      what,
      "the list is empty",
      `list at least one suite, e.g. ${VENDOR_TLS12_SUITES.join(", ")}`,
    );
  }
  const seen = new Set<string>();
  const warnings: string[] = [];
  for (const raw of list) {
    const name = raw.trim().toUpperCase();
    const suite = `suite ${JSON.stringify(raw)}`;
    if (!/^[A-Z0-9]+(-[A-Z0-9]+)+$|^TLS_[A-Z0-9_]+$/.test(name)) {
      return refuse(
        what,
        `${suite} is not a suite name: entries are single suite names, not an OpenSSL cipher string`,
        `write one name per entry, e.g. ${VENDOR_TLS12_SUITES[0]}`,
      );
    }
    if (name.startsWith("TLS_")) {
      return refuse(what, `${suite} is a TLS 1.3 suite: ${tls13Note()}`, "remove it from the list");
    }
    if (!known.has(name)) {
      return refuse(
        what,
        `${suite}: the TLS library (BoringSSL, inside Bun) lacks this suite, so it could never be negotiated`,
        `remove it; this build offers: ${[...known].join(", ")}`,
      );
    }
    if (name.includes("PSK")) {
      return refuse(
        what,
        `${suite} needs pre-shared keys, which PCoIP does not use`,
        "remove it from the list",
      );
    }
    if (name.includes("DES-CBC3") || name.includes("3DES")) {
      return refuse(what, `${suite} uses 3DES, which is broken (Sweet32)`, "remove it from the list");
    }
    if (seen.has(name)) return refuse(what, `${suite} is listed twice`, "list each suite once");
    seen.add(name);
    if (!name.includes("GCM") && !name.includes("CHACHA20")) {
      warnings.push(`TLS 1.2 ${suite} uses CBC mode; the vendor's list has only AES-GCM suites`);
    }
  }
  return { ok: true, suites: [...seen], warnings };
}

/**
 * The suites a server with this certificate key type can actually serve, in the configured order (see the
 * module comment for the ECDSA swap).
 *
 * @example
 * const s = suitesForKey(VENDOR_TLS12_SUITES, pair.keyType);
 * if (!s.ok) fail(s.error);
 */
export function suitesForKey(suites: readonly string[], keyType: KeyType): SuiteCheck {
  const out: string[] = [];
  const warnings: string[] = [];
  for (const s of suites) {
    const usable = servable(s, keyType);
    if (usable === undefined) {
      warnings.push(
        `TLS 1.2 suite ${s} cannot be served with an ${keyType.toUpperCase()} certificate: skipped`,
      );
    } else if (!out.includes(usable)) {
      if (usable !== s)
        warnings.push(`TLS 1.2 suite ${s} is served as ${usable} (the certificate key is ECDSA)`);
      out.push(usable);
    }
  }
  if (out.length === 0) {
    return refuse(
      "checking the TLS 1.2 cipher suites against the certificate",
      `none of ${suites.join(", ")} can be served with an ${keyType.toUpperCase()} certificate key`,
      keyType === "ec"
        ? "add an ECDHE suite (its ECDSA twin is used), or use an RSA certificate"
        : "add an ECDHE-RSA or AES-GCM suite, or use an ECDSA certificate",
    );
  }
  return { ok: true, suites: out, warnings };
}

/** The suite itself, its ECDSA twin for an EC key, or undefined when no certificate of that type can serve it. */
function servable(suite: string, keyType: KeyType): string | undefined {
  const ecdsa = suite.includes("-ECDSA-");
  if (keyType === "rsa") return ecdsa ? undefined : suite;
  return ecdsa ? suite : ECDSA_TWIN[suite];
}

/** What to pass as `tls` to `Bun.listen` / `Bun.serve` (Bun's types lack minVersion/maxVersion; Bun reads them). */
export interface ServerTlsOptions {
  readonly cert: string;
  readonly key: string;
  readonly ciphers: string;
  readonly minVersion: number;
  readonly maxVersion: number;
  readonly secureOptions: number;
}

/**
 * Server options: the chain (leaf first), the key, the TLS 1.2 suites in order with the server's preference
 * enforced, TLS 1.2–1.3 only.
 *
 * @example
 * const tls = serverTls({ chainPem: pair.chainPem, key: pair.key, suites: served.suites });
 * Bun.listen({ hostname: "0.0.0.0", port: 443, tls, socket });
 */
export function serverTls(o: { chainPem: string; key: string; suites: readonly string[] }): ServerTlsOptions {
  return {
    cert: o.chainPem,
    key: o.key,
    ciphers: o.suites.join(":"),
    minVersion: TLS1_2_VERSION,
    maxVersion: TLS1_3_VERSION,
    secureOptions: SERVER_PREFERENCE,
  };
}

/** What to pass as `tls` to `fetch` / `Bun.connect` for calls to brokers and agents. */
export interface ClientTlsOptions {
  readonly ca?: string;
  readonly rejectUnauthorized: boolean;
  readonly ciphers: string;
  readonly minVersion: number;
  readonly maxVersion: number;
  readonly serverName?: string;
}

/**
 * Client options: verification on or off (`brokerCertCheck` / `agentCertCheck`), `tls.trustedCa` as the trust anchor
 * when given (else the built-in roots), the configured suites plus their ECDSA/RSA twins, TLS 1.2–1.3 only.
 *
 * @example
 * await fetch(url, { tls: clientTls({ ca: pair.ca, verify: config.tls.brokerCertCheck }) });
 */
export function clientTls(o: {
  ca?: string | undefined;
  verify: boolean;
  suites?: readonly string[];
  serverName?: string;
}): ClientTlsOptions {
  const suites: string[] = [];
  for (const s of o.suites ?? VENDOR_TLS12_SUITES) {
    for (const v of [s, ECDSA_TWIN[s], RSA_TWIN[s]]) if (v && !suites.includes(v)) suites.push(v);
  }
  return {
    ...(o.ca ? { ca: o.ca } : {}),
    rejectUnauthorized: o.verify,
    ciphers: suites.join(":"),
    minVersion: TLS1_2_VERSION,
    maxVersion: TLS1_3_VERSION,
    ...(o.serverName ? { serverName: o.serverName } : {}),
  };
}

function refuse(what: string, cause: string, fix: string): { ok: false; error: TlsProblem } {
  return { ok: false, error: { what, cause, fix } };
}
