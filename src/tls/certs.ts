/**
 * The certificate pair the CM (443) and SG serve: loaded from PEM files and checked against SPEC §5 before any
 * listener uses it, described for `diagnose` and support bundles, or generated (`--self-signed`).
 *
 * Every refusal names the file and the rule it broke, because the person reading it is an administrator at a
 * console who has to fix that one file. Warnings are sentences of the same shape; the pair is still usable.
 */
import { createPrivateKey, type KeyObject, X509Certificate } from "node:crypto";
import { readFileSync } from "node:fs";
import { isIP } from "node:net";

/** An expected failure, worded for the operator: what was being done, why it failed, what to do. */
export interface TlsProblem {
  readonly what: string;
  readonly cause: string;
  readonly fix: string;
}

export type KeyType = "rsa" | "ec";

export interface CertificateFiles {
  /** PEM: the server certificate first, then any intermediates (a private key in the same file is ignored). */
  readonly certFile: string;
  /** PEM private key, unencrypted (may be the same file as certFile). */
  readonly keyFile: string;
  /** `--ca-cert` / `tls.caCert`: served after the leaf as the chain. */
  readonly caFile?: string;
  /**
   * `tls.trustedCa` (or, in the deprecated double use, the caCert file): the trust anchors for broker, agent and
   * LDAP checks. Never served.
   */
  readonly trustedCaFile?: string;
  /** Names clients use (`hostAddress`): a warning names each one the certificate does not cover. */
  readonly expectedNames?: readonly string[];
}

export interface CertificatePair {
  readonly certFile: string;
  readonly keyFile: string;
  readonly caFile: string | undefined;
  /** The server (leaf) certificate, PEM with LF line endings. */
  readonly cert: string;
  /** The private key, PEM with LF line endings. */
  readonly key: string;
  /** The CA file's certificates (PEM), served in the chain. */
  readonly ca: string | undefined;
  /** The trusted CA file's certificates (PEM): trust anchors for broker, agent and LDAP checks. */
  readonly trustedCa: string | undefined;
  /** What the listeners serve: the leaf, the cert file's intermediates, then the CA file's certificates. */
  readonly chainPem: string;
  readonly subject: string;
  /** `DNS:name` / `IP:address` entries of the leaf's subjectAltName. */
  readonly sans: readonly string[];
  readonly notBefore: Date;
  readonly notAfter: Date;
  readonly keyType: KeyType;
  /** RSA modulus bits, or the EC curve size (256, 384). */
  readonly keyBits: number;
  readonly warnings: readonly string[];
}

export type LoadResult =
  | { readonly ok: true; readonly pair: CertificatePair }
  | { readonly ok: false; readonly error: TlsProblem };

/** Keys under this size are refused: clients reset the connection (the vendor's "read ECONNRESET" case). */
export const MIN_RSA_BITS = 2048;
/** Keys under this size get a warning (NIST SP 800-57: 2048-bit RSA is not enough after 2030). */
export const RECOMMENDED_RSA_BITS = 3072;
/** A certificate expiring within this many days gets a warning. */
export const EXPIRY_WARNING_DAYS = 30;

const DAY_MS = 86_400_000;
const EC_CURVES: Readonly<Record<string, number>> = { prime256v1: 256, secp384r1: 384 };
/** Signature algorithms by OID: MD2/MD4/MD5 are refused, SHA-1 warned about. */
const MD_OIDS = new Set(["1.2.840.113549.1.1.2", "1.2.840.113549.1.1.3", "1.2.840.113549.1.1.4"]);
const SHA1_OIDS = new Set([
  "1.2.840.113549.1.1.5",
  "1.3.14.3.2.29",
  "1.2.840.10045.4.1",
  "1.2.840.10040.4.3",
  "2.16.840.1.101.3.4.3.1",
]);

type Role = "certificate" | "private key" | "CA certificate" | "trusted CA bundle";
const FLAG: Readonly<Record<Role, string>> = {
  certificate: "--ssl-cert / [tls] cert",
  "private key": "--ssl-key / [tls] key",
  "CA certificate": "--ca-cert / [tls] caCert",
  "trusted CA bundle": "[tls] trustedCa",
};
const PROPER_PAIR_FIX =
  "issue an RSA certificate of 3072 bits or more (or ECDSA P-256/P-384) signed with SHA-256, or run " +
  "`pcoip-cmsg configure --self-signed`";

/**
 * Reads and checks the pair (SPEC §5). Refused: unreadable or non-PEM files, encrypted keys, DSA and other key
 * types than RSA/ECDSA P-256/P-384, RSA under 2048 bits anywhere in the served chain, MD5 signatures, a key that
 * does not match the certificate, an expired or not-yet-valid certificate. Warned: RSA under 3072 bits, SHA-1
 * signatures, expiry within 30 days, a chain out of order, names in `expectedNames` the certificate does not cover.
 *
 * @example
 * const r = loadCertificatePair({ certFile: "/etc/pcoip-cmsg/certs/cm.pem", keyFile: "/etc/pcoip-cmsg/certs/cm.key" });
 * if (!r.ok) fail(r.error); else for (const w of r.pair.warnings) log.warn(w);
 */
export function loadCertificatePair(files: CertificateFiles, now: Date = new Date()): LoadResult {
  const { certFile, keyFile, caFile } = files;
  const warnings: string[] = [];

  const certText = readPem(certFile, "certificate");
  if (!certText.ok) return certText;
  const certBlocks = blocksOf(certText.text, certFile, "certificate");
  if (!certBlocks.ok) return certBlocks;
  const served = parseCertificates(certBlocks.blocks, certFile, "certificate");
  if (!served.ok) return served;

  let caPem: string | undefined;
  if (caFile) {
    const ca = loadCaBundle(caFile, now);
    if (!ca.ok) return ca;
    caPem = ca.pem;
    warnings.push(...ca.warnings);
    // A CA already present in the cert file is not served twice.
    const have = new Set(served.certs.map((c) => c.x509.fingerprint256));
    for (const c of ca.certs) if (!have.has(c.x509.fingerprint256)) served.certs.push(c);
  }

  let trustedCa: string | undefined;
  if (files.trustedCaFile && files.trustedCaFile === caFile) trustedCa = caPem;
  else if (files.trustedCaFile) {
    const trust = loadCaBundle(files.trustedCaFile, now, "trusted CA bundle");
    if (!trust.ok) return trust;
    trustedCa = trust.pem;
    warnings.push(...trust.warnings);
  }

  const leaf = served.certs[0]!;
  const key = loadPrivateKey(keyFile);
  if (!key.ok) return key;
  const kind = keyKind(leaf.x509.publicKey, certFile, 1);
  if (!kind.ok) return kind;

  if (!matches(leaf.x509, key.key)) {
    const other = served.certs.findIndex((c, i) => i > 0 && matches(c.x509, key.key));
    if (other > 0) {
      return refuse(
        `checking ${certFile}`,
        `the private key in ${keyFile} belongs to certificate ${other + 1} (${dn(served.certs[other]!.x509.subject)}), ` +
          "not to the first one: the server certificate must come first",
        `reorder ${certFile}: server certificate first, then intermediates, then the CA`,
      );
    }
    return refuse(
      `checking ${certFile} against ${keyFile}`,
      `the private key in ${keyFile} does not match the certificate in ${certFile} (${dn(leaf.x509.subject)})`,
      `point ${FLAG["private key"]} at the key the certificate was issued for (compare \`openssl x509 -noout ` +
        `-pubkey -in ${certFile}\` with \`openssl pkey -pubout -in ${keyFile}\`)`,
    );
  }

  // Every certificate a client receives is checked: clients verify key sizes and signatures of the whole chain.
  for (const [i, c] of served.certs.entries()) {
    const bad = chainRules(c, i, warnings);
    if (bad) return { ok: false, error: bad };
  }
  const gap = served.certs.findIndex((c, i) => i > 0 && !issued(c.x509, served.certs[i - 1]!.x509));
  if (gap > 0) {
    const child = served.certs[gap - 1]!;
    const next = served.certs[gap]!;
    warnings.push(
      `${certFile}: the served chain is out of order or incomplete: ${dn(next.x509.subject)} (from ${next.file}) did ` +
        `not issue ${dn(child.x509.subject)}; clients without the missing certificate cannot verify the server: ` +
        "list the server certificate, then each issuer in turn",
    );
  }

  const notBefore = leaf.x509.validFromDate;
  const notAfter = leaf.x509.validToDate;
  if (notAfter.getTime() <= now.getTime()) {
    return refuse(
      `checking ${certFile}`,
      `the certificate expired on ${notAfter.toISOString()}: expired certificates are refused`,
      `renew it (${PROPER_PAIR_FIX})`,
    );
  }
  if (notBefore.getTime() > now.getTime()) {
    return refuse(
      `checking ${certFile}`,
      `the certificate is not valid until ${notBefore.toISOString()}: not-yet-valid certificates are refused`,
      "check this machine's clock (`timedatectl`) and the issuer's; or wait until that time",
    );
  }
  const daysLeft = Math.floor((notAfter.getTime() - now.getTime()) / DAY_MS);
  if (daysLeft < EXPIRY_WARNING_DAYS) {
    warnings.push(
      `${certFile}: the certificate expires on ${notAfter.toISOString()} (in ${daysLeft} days; ` +
        `warned under ${EXPIRY_WARNING_DAYS}): renew it`,
    );
  }
  if (kind.type === "rsa" && kind.bits < RECOMMENDED_RSA_BITS) {
    warnings.push(
      `${certFile}: RSA key of ${kind.bits} bits, under the recommended ${RECOMMENDED_RSA_BITS}: ` +
        `use ${RECOMMENDED_RSA_BITS} bits when it is next renewed`,
    );
  }
  const sans = sansOf(leaf.x509);
  if (sans.length === 0) {
    warnings.push(
      `${certFile}: the certificate has no subjectAltName; clients ignore the subject CN and will report a ` +
        "name mismatch: reissue it with the host names and addresses as SANs",
    );
  }
  for (const name of files.expectedNames ?? []) {
    if (!covers(leaf.x509, name)) {
      warnings.push(
        `${certFile}: the certificate does not cover ${name} (SANs: ${sans.join(", ") || "none"}); clients ` +
          "connecting by that name see a name mismatch: reissue it with that name",
      );
    }
  }

  return {
    ok: true,
    pair: {
      certFile,
      keyFile,
      caFile: caFile || undefined,
      cert: leaf.pem,
      key: key.pem,
      ca: caPem,
      trustedCa,
      chainPem: served.certs.map((c) => c.pem).join(""),
      subject: dn(leaf.x509.subject),
      sans,
      notBefore,
      notAfter,
      keyType: kind.type,
      keyBits: kind.bits,
      warnings,
    },
  };
}

export type CaBundleResult =
  | {
      readonly ok: true;
      readonly pem: string;
      readonly certs: LoadedCertificate[];
      readonly warnings: readonly string[];
    }
  | { readonly ok: false; readonly error: TlsProblem };

/** One certificate of a PEM file, parsed. */
export interface LoadedCertificate {
  readonly pem: string;
  readonly x509: X509Certificate;
  readonly file: string;
  /** 1-based position in its file, for messages. */
  readonly index: number;
}

/**
 * Reads a CA bundle alone: `--ca-cert` (the served chain's CA) or `tls.trustedCa` (the trust anchors for broker,
 * agent and LDAP checks; `role` names it in messages). Refused: unreadable, no certificate. Warned: a CA that has
 * expired or expires within 30 days.
 *
 * @example
 * const ca = loadCaBundle("/etc/pcoip-cmsg/certs/ca.pem");
 * if (ca.ok) fetch(url, { tls: clientTls({ ca: ca.pem, verify: true }) });
 */
export function loadCaBundle(
  caFile: string,
  now: Date = new Date(),
  role: "CA certificate" | "trusted CA bundle" = "CA certificate",
): CaBundleResult {
  const text = readPem(caFile, role);
  if (!text.ok) return text;
  const blocks = blocksOf(text.text, caFile, role);
  if (!blocks.ok) return blocks;
  const parsed = parseCertificates(blocks.blocks, caFile, role);
  if (!parsed.ok) return parsed;
  const warnings: string[] = [];
  for (const c of parsed.certs) {
    const to = c.x509.validToDate;
    if (to.getTime() <= now.getTime()) {
      warnings.push(
        `${caFile}: CA certificate ${c.index} (${dn(c.x509.subject)}) expired on ${to.toISOString()}: ` +
          "chains through it no longer verify; replace it",
      );
    } else if (to.getTime() - now.getTime() < EXPIRY_WARNING_DAYS * DAY_MS) {
      warnings.push(
        `${caFile}: CA certificate ${c.index} (${dn(c.x509.subject)}) expires on ${to.toISOString()}: replace it`,
      );
    }
  }
  return { ok: true, pem: parsed.certs.map((c) => c.pem).join(""), certs: parsed.certs, warnings };
}

/** What `diagnose` and support bundles show of a certificate: public facts only, never key material. */
export interface CertificateSummary {
  readonly subject: string;
  readonly issuer: string;
  readonly sans: readonly string[];
  readonly serialNumber: string;
  readonly notBefore: string;
  readonly notAfter: string;
  /** "rsa", "ec", "dsa", "ed25519", … */
  readonly keyType: string;
  readonly keyBits: number | undefined;
  readonly curve: string | undefined;
  readonly signatureAlgorithm: string;
  readonly sha256Fingerprint: string;
  readonly selfSigned: boolean;
  readonly isCa: boolean;
}

export type DescribeResult =
  | { readonly ok: true; readonly certificates: readonly CertificateSummary[] }
  | { readonly ok: false; readonly error: string };

/**
 * Summaries of every certificate in a PEM text (private key blocks in it are skipped, never echoed).
 *
 * @example
 * const d = describeCertificates(readFileSync(certFile, "utf8"));
 * if (d.ok) bundle.add("certificates.json", JSON.stringify(d.certificates, null, 2));
 */
export function describeCertificates(pem: string): DescribeResult {
  const blocks = pemBlocks(normalise(pem)).filter((b) => b.label === "CERTIFICATE");
  if (blocks.length === 0) return { ok: false, error: "no -----BEGIN CERTIFICATE----- block" };
  const out: CertificateSummary[] = [];
  for (const [i, b] of blocks.entries()) {
    try {
      out.push(summarise(new X509Certificate(b.text)));
    } catch (e) {
      return { ok: false, error: `certificate ${i + 1} is not valid X.509: ${errorText(e)}` };
    }
  }
  return { ok: true, certificates: out };
}

/** The summary of the first certificate in a PEM text. */
export function describeCertificate(
  pem: string,
):
  | { readonly ok: true; readonly summary: CertificateSummary }
  | { readonly ok: false; readonly error: string } {
  const d = describeCertificates(pem);
  return d.ok ? { ok: true, summary: d.certificates[0]! } : d;
}

/** Whether a certificate's SANs cover a host name (wildcards included) or an IP address. */
export function certificateCovers(certPem: string, name: string): boolean {
  try {
    return covers(new X509Certificate(certPem), name);
  } catch {
    return false;
  }
}

export interface SelfSignedOptions {
  /** IPs and/or FQDNs (`hostAddress`), each becoming a SAN; localhost, 127.0.0.1 and ::1 when empty. */
  readonly hostAddresses: readonly string[];
  /** Validity; 825 days is the longest that Apple platforms accept for a TLS server certificate. */
  readonly days?: number;
  readonly bits?: number;
  readonly now?: Date;
}

/**
 * `--self-signed`: an RSA-3072, SHA-256 certificate whose SANs are the host addresses (DNS for names, IP for
 * literals). The generator library is loaded only here: importing it costs ~80 ms at every start-up otherwise.
 * A host address that is neither an IP nor a DNS name is a bug of the caller (config validates them): thrown.
 *
 * @example
 * const { cert, key } = await generateSelfSigned({ hostAddresses: ["cm.example.net", "203.0.113.10"] });
 */
export async function generateSelfSigned(options: SelfSignedOptions): Promise<{ cert: string; key: string }> {
  const { days = 825, bits = RECOMMENDED_RSA_BITS, now = new Date() } = options;
  const hosts = options.hostAddresses
    .map((h) => h.trim().replace(/^\[(.*)\]$/, "$1"))
    .filter((h) => h !== "");
  const names = hosts.length > 0 ? hosts : ["localhost", "127.0.0.1", "::1"];
  const altNames = names.map((h) => {
    if (isIP(h)) return { type: 7 as const, ip: h };
    if (
      !/^(\*\.)?[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?)*\.?$/.test(
        h,
      )
    ) {
      throw new RangeError(
        `generateSelfSigned: host address ${JSON.stringify(h)} is neither an IP nor a DNS name`,
      );
    }
    return { type: 2 as const, value: h };
  });
  const { generate } = await import("selfsigned");
  // An hour of slack before "now": a client whose clock is a little behind must not see a future certificate.
  const notBeforeDate = new Date(now.getTime() - 3_600_000);
  const pems = await generate(
    [
      // CN is limited to 64 characters; the SANs carry the names that matter.
      { name: "commonName", value: names[0]!.slice(0, 64) },
      { name: "organizationName", value: "pcoip-cmsg self-signed" },
    ],
    {
      keyType: "rsa",
      keySize: bits,
      algorithm: "sha256",
      notBeforeDate,
      notAfterDate: new Date(now.getTime() + days * DAY_MS),
      extensions: [
        { name: "basicConstraints", cA: false, critical: true },
        // keyEncipherment: the vendor's AES*-GCM suites without ECDHE use RSA key exchange.
        { name: "keyUsage", digitalSignature: true, keyEncipherment: true, critical: true },
        { name: "extKeyUsage", serverAuth: true },
        { name: "subjectAltName", altNames },
      ],
    },
  );
  return { cert: normalise(pems.cert), key: normalise(pems.private) };
}

// ---------------------------------------------------------------------------------------------------------------

type Failed = { readonly ok: false; readonly error: TlsProblem };

function refuse(what: string, cause: string, fix: string): Failed {
  return { ok: false, error: { what, cause, fix } };
}

function readPem(file: string, role: Role): { ok: true; text: string } | Failed {
  let raw: Buffer;
  try {
    raw = readFileSync(file);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const fix =
      code === "ENOENT"
        ? `check the path given as ${FLAG[role]}`
        : code === "EACCES"
          ? `make it readable by the service account: chown root:pcoip-cmsg ${file} && chmod 0640 ${file}`
          : `check the path given as ${FLAG[role]}`;
    return refuse(`reading ${role} file ${file}`, errorText(e), fix);
  }
  const text = raw.toString("utf8");
  if (!text.includes("-----BEGIN ")) {
    // DER and PKCS#12 both start with an ASN.1 SEQUENCE byte.
    const binary = raw.length > 0 && raw[0] === 0x30;
    const convert =
      role === "private key"
        ? `openssl pkey -inform der -in ${file} -out ${file}.pem`
        : `openssl x509 -inform der -in ${file} -out ${file}.pem`;
    return refuse(
      `reading ${role} file ${file}`,
      binary
        ? "the file is binary (DER or PKCS#12), not PEM: only PEM files are accepted"
        : "the file has no PEM block (-----BEGIN …-----): only PEM files are accepted",
      binary
        ? `convert it: ${convert} (for a .pfx/.p12: openssl pkcs12 -in ${file} -nodes)`
        : `point ${FLAG[role]} at a PEM file`,
    );
  }
  return { ok: true, text: normalise(text) };
}

interface PemBlock {
  readonly label: string;
  /** The whole block, BEGIN to END, LF line endings, trailing newline. */
  readonly text: string;
}

/** Windows line endings and a UTF-8 byte-order mark (Notepad) are accepted: both are normalised away. */
function normalise(text: string): string {
  return text.replace(/^\uFEFF/, "").replace(/\r\n?/g, "\n");
}

function pemBlocks(text: string): PemBlock[] {
  const out: PemBlock[] = [];
  for (const m of text.matchAll(/-----BEGIN ([A-Z0-9 ]+)-----\n[\s\S]*?\n-----END \1-----/g)) {
    out.push({ label: m[1]!, text: `${m[0].trim()}\n` });
  }
  return out;
}

function blocksOf(text: string, file: string, role: Role): { ok: true; blocks: PemBlock[] } | Failed {
  const all = pemBlocks(text);
  const blocks = all.filter((b) => b.label === "CERTIFICATE");
  if (blocks.length > 0) return { ok: true, blocks };
  const hasKey = all.some((b) => b.label.endsWith("PRIVATE KEY"));
  return refuse(
    `reading ${role} file ${file}`,
    hasKey
      ? "the file holds a private key, not a certificate"
      : `the file has no -----BEGIN CERTIFICATE----- block (found: ${all.map((b) => b.label).join(", ") || "no complete PEM block"})`,
    hasKey
      ? `were ${FLAG.certificate} and ${FLAG["private key"]} swapped? Point ${FLAG[role]} at the certificate`
      : `point ${FLAG[role]} at a PEM certificate file`,
  );
}

function parseCertificates(
  blocks: readonly PemBlock[],
  file: string,
  role: Role,
): { ok: true; certs: LoadedCertificate[] } | Failed {
  const certs: LoadedCertificate[] = [];
  for (const [i, b] of blocks.entries()) {
    try {
      certs.push({ pem: b.text, x509: new X509Certificate(b.text), file, index: i + 1 });
    } catch (e) {
      return refuse(
        `reading ${role} file ${file}`,
        `certificate ${i + 1} in the file is not valid X.509: ${errorText(e)}`,
        "re-export the certificate from its issuer; the PEM text may have been truncated or edited",
      );
    }
  }
  return { ok: true, certs };
}

function loadPrivateKey(file: string): { ok: true; key: KeyObject; pem: string } | Failed {
  const text = readPem(file, "private key");
  if (!text.ok) return text;
  const all = pemBlocks(text.text);
  const block = all.find((b) => b.label.endsWith("PRIVATE KEY"));
  const encryptedFix =
    `the service cannot ask for a passphrase; write an unencrypted copy readable only by root and the ` +
    `service (openssl pkey -in ${file} -out ${file}.plain && chown root:pcoip-cmsg ${file}.plain && ` +
    `chmod 0640 ${file}.plain) and point ${FLAG["private key"]} at it`;
  if (!block) {
    const hasCert = all.some((b) => b.label === "CERTIFICATE");
    return refuse(
      `reading private key file ${file}`,
      hasCert
        ? "the file holds a certificate, not a private key"
        : "the file has no -----BEGIN PRIVATE KEY----- block",
      hasCert
        ? `were ${FLAG.certificate} and ${FLAG["private key"]} swapped? Point ${FLAG["private key"]} at the key`
        : `point ${FLAG["private key"]} at a PEM private key`,
    );
  }
  if (block.label === "ENCRYPTED PRIVATE KEY" || /^Proc-Type: 4,ENCRYPTED$/m.test(block.text)) {
    return refuse(
      `reading private key file ${file}`,
      "the key is encrypted with a passphrase: passphrases are not supported",
      encryptedFix,
    );
  }
  try {
    return { ok: true, key: createPrivateKey(block.text), pem: block.text };
  } catch (e) {
    if ((e as { code?: string }).code === "ERR_MISSING_PASSPHRASE") {
      return refuse(
        `reading private key file ${file}`,
        "the key is encrypted with a passphrase: passphrases are not supported",
        encryptedFix,
      );
    }
    return refuse(
      `reading private key file ${file}`,
      `the private key cannot be parsed: ${errorText(e)}`,
      "re-export the key from where it was generated (PEM, unencrypted)",
    );
  }
}

function keyKind(
  key: KeyObject,
  file: string,
  index: number,
): { ok: true; type: KeyType; bits: number } | Failed {
  const where = index === 1 ? file : `${file} (certificate ${index})`;
  const type = key.asymmetricKeyType;
  if (type === "rsa") {
    const bits = key.asymmetricKeyDetails?.modulusLength ?? 0;
    if (bits < MIN_RSA_BITS) {
      return refuse(
        `checking ${where}`,
        `RSA key of ${bits} bits: keys under ${MIN_RSA_BITS} bits are refused (clients reset the connection)`,
        PROPER_PAIR_FIX,
      );
    }
    return { ok: true, type: "rsa", bits };
  }
  if (type === "ec") {
    const curve = key.asymmetricKeyDetails?.namedCurve ?? "unknown";
    const bits = EC_CURVES[curve];
    if (bits === undefined) {
      return refuse(
        `checking ${where}`,
        `ECDSA key on curve ${curve}: only P-256 (prime256v1) and P-384 (secp384r1) are accepted`,
        PROPER_PAIR_FIX,
      );
    }
    return { ok: true, type: "ec", bits };
  }
  if (type === "dsa") {
    return refuse(
      `checking ${where}`,
      "DSA key: DSA keys are refused (TLS clients dropped DSA; TLS 1.3 has none)",
      PROPER_PAIR_FIX,
    );
  }
  return refuse(
    `checking ${where}`,
    `${type ?? "unknown"} key: only RSA and ECDSA (P-256/P-384) keys are accepted (PCoIP clients do not ` +
      "accept other server key types)",
    PROPER_PAIR_FIX,
  );
}

/** Rules for every certificate served: key type and size, signature algorithm, and the chain's order. */
function chainRules(c: LoadedCertificate, i: number, warnings: string[]): TlsProblem | undefined {
  const where = c.index === 1 ? c.file : `${c.file} (certificate ${c.index}, ${dn(c.x509.subject)})`;
  if (i > 0) {
    const kind = keyKind(c.x509.publicKey, c.file, c.index);
    if (!kind.ok) return kind.error;
  }
  const selfSigned = isSelfSigned(c.x509);
  const oid = c.x509.signatureAlgorithmOid ?? "";
  const alg = c.x509.signatureAlgorithm ?? oid;
  if (MD_OIDS.has(oid) || /md[245]/i.test(alg)) {
    // A root's own signature is never checked by clients (they trust its key), so only a warning there.
    if (!(selfSigned && i > 0)) {
      return {
        what: `checking ${where}`,
        cause: `signed with ${alg}: MD5 (and MD2/MD4) signatures are refused (they can be forged)`,
        fix: PROPER_PAIR_FIX,
      };
    }
    warnings.push(
      `${where}: the root certificate's self-signature uses ${alg}; replace the root when possible`,
    );
  } else if ((SHA1_OIDS.has(oid) || /sha1/i.test(alg)) && !(selfSigned && i > 0)) {
    warnings.push(
      `${where}: signed with ${alg}; clients built on OpenSSL 3 and current browsers refuse SHA-1 ` +
        "signatures: have it reissued with SHA-256",
    );
  }
  return undefined;
}

function isSelfSigned(x: X509Certificate): boolean {
  try {
    return x.subject === x.issuer && x.verify(x.publicKey);
  } catch {
    return false;
  }
}

function issued(issuer: X509Certificate, child: X509Certificate): boolean {
  try {
    return child.checkIssued(issuer) && child.verify(issuer.publicKey);
  } catch {
    return false;
  }
}

function matches(x: X509Certificate, key: KeyObject): boolean {
  try {
    return x.checkPrivateKey(key);
  } catch {
    return false;
  }
}

function covers(x: X509Certificate, name: string): boolean {
  const bare = name.trim().replace(/^\[(.*)\]$/, "$1");
  return isIP(bare) ? x.checkIP(bare) !== undefined : x.checkHost(bare) !== undefined;
}

/** `DNS:name` and `IP:address` (IPv6 compressed); other SAN kinds (email, URI) are left out. */
function sansOf(x: X509Certificate): string[] {
  const out: string[] = [];
  for (const part of (x.subjectAltName ?? "").split(/,\s*/)) {
    if (part.startsWith("DNS:")) out.push(part);
    else if (part.startsWith("IP Address:")) out.push(`IP:${compressIp(part.slice("IP Address:".length))}`);
  }
  return out;
}

function compressIp(ip: string): string {
  if (isIP(ip) !== 6) return ip;
  try {
    return new URL(`http://[${ip}]/`).hostname.slice(1, -1);
  } catch {
    return ip;
  }
}

function summarise(x: X509Certificate): CertificateSummary {
  const pk = x.publicKey;
  const d = pk.asymmetricKeyDetails;
  const curve = d?.namedCurve;
  return {
    subject: dn(x.subject),
    issuer: dn(x.issuer),
    sans: sansOf(x),
    serialNumber: x.serialNumber,
    notBefore: x.validFromDate.toISOString(),
    notAfter: x.validToDate.toISOString(),
    keyType: pk.asymmetricKeyType ?? "unknown",
    keyBits: d?.modulusLength ?? (curve ? EC_CURVES[curve] : undefined),
    curve,
    signatureAlgorithm: x.signatureAlgorithm ?? x.signatureAlgorithmOid ?? "unknown",
    sha256Fingerprint: x.fingerprint256,
    selfSigned: isSelfSigned(x),
    isCa: x.ca,
  };
}

/** Node writes a distinguished name one attribute per line; messages want one line. */
function dn(name: string): string {
  return name.replace(/\n/g, ", ");
}

function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
