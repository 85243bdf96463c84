/**
 * Certificate rules of SPEC §5, on certificates made by openssl in this test: each refusal names the file and the
 * rule (1024-bit RSA, DSA, MD5, mismatched key, expired, not yet valid, encrypted key, unreadable or non-PEM
 * files); warnings for 2048 bits, SHA-1, expiry within 30 days; CRLF files, wildcards, EC keys and chains
 * accepted; `--self-signed` generates RSA-3072 with the host addresses as SANs.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { X509Certificate } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  certificateCovers,
  describeCertificate,
  describeCertificates,
  generateSelfSigned,
  type LoadResult,
  loadCaBundle,
  loadCertificatePair,
} from "../../src/tls/certs.ts";
import { openssl, testPki } from "../peers/test-certs.ts";

const dir = mkdtempSync(join(tmpdir(), "pcoip-cmsg-tls-certs-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

interface Made {
  readonly certFile: string;
  readonly keyFile: string;
}

/** A self-signed certificate: `key` is an openssl -newkey spec, `extra` more `req` arguments. */
function selfSigned(
  name: string,
  key: string,
  extra: readonly string[] = [],
  env?: Record<string, string>,
): Made {
  const certFile = join(dir, `${name}.pem`);
  const keyFile = join(dir, `${name}.key`);
  const args = ["req", "-x509", "-newkey", key, "-nodes", "-subj", `/CN=${name}.example.net`];
  const all = [...args, "-keyout", keyFile, "-out", certFile, ...extra];
  if (env) {
    const r = Bun.spawnSync(["openssl", ...all], { env: { ...process.env, ...env }, stderr: "pipe" });
    if (r.exitCode !== 0) throw new Error(`openssl req failed: ${r.stderr.toString()}`);
  } else {
    openssl(all);
  }
  return { certFile, keyFile };
}

const SAN = (names: string) => ["-addext", `subjectAltName=${names}`];
/** ECDSA P-256: a key with no size warning that openssl makes in milliseconds (RSA-3072 takes seconds). */
const P256 = "ec";
const P256_OPTS = ["-pkeyopt", "ec_paramgen_curve:P-256"];

/** The refusal names the file and matches the rule. */
function expectRefused(r: LoadResult, file: string, rule: RegExp): void {
  expect(r.ok).toBe(false);
  if (r.ok) return;
  const text = `${r.error.what}: ${r.error.cause}`;
  expect(text).toContain(file);
  expect(text).toMatch(rule);
  expect(r.error.fix.length).toBeGreaterThan(10);
}

function expectAccepted(r: LoadResult) {
  if (!r.ok) throw new Error(`refused: ${r.error.what}: ${r.error.cause}`);
  return r.pair;
}

describe("refused, naming the file and the rule", () => {
  test("RSA key under 2048 bits", () => {
    const c = selfSigned("rsa1024", "rsa:1024", ["-sha256", "-days", "90"]);
    expectRefused(loadCertificatePair(c), c.certFile, /RSA key of 1024 bits.*under 2048 bits are refused/);
  });

  test("DSA key", () => {
    const params = join(dir, "dsa-params.pem");
    openssl([
      "genpkey",
      "-genparam",
      "-algorithm",
      "DSA",
      "-pkeyopt",
      "dsa_paramgen_bits:2048",
      "-out",
      params,
    ]);
    const c = selfSigned("dsa", `dsa:${params}`, ["-sha256", "-days", "90"]);
    expectRefused(loadCertificatePair(c), c.certFile, /DSA keys are refused/);
  });

  test("MD5 signature", () => {
    // OpenSSL 3 still signs with MD5 on request; a system crypto policy (RHEL's) may forbid it, so the second
    // try runs without the system configuration.
    let c: Made;
    try {
      c = selfSigned("md5", "rsa:2048", ["-md5", "-days", "90"]);
    } catch {
      c = selfSigned("md5", "rsa:2048", ["-md5", "-days", "90"], { OPENSSL_CONF: "/dev/null" });
    }
    expect(openssl(["x509", "-in", c.certFile, "-noout", "-text"])).toContain("md5WithRSAEncryption");
    expectRefused(loadCertificatePair(c), c.certFile, /md5WithRSAEncryption: MD5 .*signatures are refused/);
  });

  test("a key that does not match its certificate", () => {
    const a = selfSigned("match-a", "rsa:2048", ["-sha256", "-days", "90"]);
    const b = selfSigned("match-b", "rsa:2048", ["-sha256", "-days", "90"]);
    const r = loadCertificatePair({ certFile: a.certFile, keyFile: b.keyFile });
    expectRefused(r, a.certFile, /does not match/);
    if (!r.ok) expect(r.error.cause).toContain(b.keyFile);
  });

  test("a key that matches the second certificate of the file: the leaf must come first", () => {
    const pki = testPki();
    const leaf = pki.leaf(["order.example.net"]);
    const certFile = join(dir, "ca-first.pem");
    writeFileSync(certFile, pki.ca.cert + leaf.cert);
    expectRefused(
      loadCertificatePair({ certFile, keyFile: leaf.keyFile }),
      certFile,
      /belongs to certificate 2 .*must come first/,
    );
  });

  test("expired, and not yet valid", () => {
    const c = selfSigned("expiry", "rsa:2048", ["-sha256", "-days", "30", ...SAN("DNS:expiry.example.net")]);
    const notAfter = new X509Certificate(readFileSync(c.certFile)).validToDate;
    expectRefused(
      loadCertificatePair(c, new Date(notAfter.getTime() + 1000)),
      c.certFile,
      /expired on .*refused/,
    );
    expectRefused(
      loadCertificatePair(c, new Date(Date.now() - 2 * 86_400_000)),
      c.certFile,
      /not valid until .*not-yet-valid certificates are refused/,
    );
  });

  test("an encrypted key: no passphrase support, said so", () => {
    const certFile = join(dir, "enc.pem");
    const keyFile = join(dir, "enc.key");
    openssl(
      ["req", "-x509", "-newkey", "rsa:2048", "-passout", "pass:secret", "-subj", "/CN=enc"].concat([
        "-sha256",
        "-days",
        "90",
        "-keyout",
        keyFile,
        "-out",
        certFile,
      ]),
    );
    expectRefused(
      loadCertificatePair({ certFile, keyFile }),
      keyFile,
      /encrypted.*passphrases are not supported/,
    );
    // The traditional (PEM-header) encryption is refused the same way.
    const legacy = join(dir, "enc-legacy.key");
    openssl(
      [
        "rsa",
        "-in",
        keyFile,
        "-passin",
        "pass:secret",
        "-aes256",
        "-traditional",
        "-passout",
        "pass:x",
      ].concat(["-out", legacy]),
    );
    expect(readFileSync(legacy, "utf8")).toContain("Proc-Type: 4,ENCRYPTED");
    expectRefused(
      loadCertificatePair({ certFile, keyFile: legacy }),
      legacy,
      /passphrases are not supported/,
    );
  });

  test("unreadable, non-PEM and swapped files", () => {
    const c = selfSigned("files", "rsa:2048", ["-sha256", "-days", "90"]);
    const missing = join(dir, "missing.pem");
    expectRefused(loadCertificatePair({ ...c, certFile: missing }), missing, /ENOENT/);
    const der = join(dir, "files.der");
    openssl(["x509", "-in", c.certFile, "-outform", "der", "-out", der]);
    expectRefused(loadCertificatePair({ ...c, certFile: der }), der, /binary \(DER or PKCS#12\), not PEM/);
    const text = join(dir, "notes.txt");
    writeFileSync(text, "this is not a certificate\n");
    expectRefused(
      loadCertificatePair({ ...c, keyFile: text }),
      text,
      /no PEM block.*only PEM files are accepted/,
    );
    expectRefused(
      loadCertificatePair({ ...c, keyFile: c.certFile }),
      c.certFile,
      /holds a certificate, not a private key/,
    );
    expectRefused(
      loadCertificatePair({ certFile: c.keyFile, keyFile: c.certFile }),
      c.keyFile,
      /holds a private key, not a certificate/,
    );
  });

  test("key types other than RSA and ECDSA P-256/P-384", () => {
    const ed = selfSigned("ed25519", "ed25519", ["-days", "90"]);
    expectRefused(loadCertificatePair(ed), ed.certFile, /ed25519 key: only RSA and ECDSA/);
    const p521 = selfSigned("p521", "ec", ["-pkeyopt", "ec_paramgen_curve:P-521", "-sha512", "-days", "90"]);
    expectRefused(loadCertificatePair(p521), p521.certFile, /curve secp521r1: only P-256/);
  });

  test("a CA under 2048 bits in the served chain", () => {
    const weakCa = selfSigned("weak-ca", "rsa:1024", ["-sha256", "-days", "90"]);
    const leaf = testPki().leaf(["chain.example.net"]);
    expectRefused(
      loadCertificatePair({ certFile: leaf.certFile, keyFile: leaf.keyFile, caFile: weakCa.certFile }),
      weakCa.certFile,
      /RSA key of 1024 bits/,
    );
  });
});

describe("warned, still accepted", () => {
  test("2048-bit RSA: under the recommended 3072", () => {
    const c = selfSigned("rsa2048", "rsa:2048", [
      "-sha256",
      "-days",
      "365",
      ...SAN("DNS:rsa2048.example.net"),
    ]);
    const pair = expectAccepted(loadCertificatePair(c));
    expect(pair.keyBits).toBe(2048);
    expect(pair.warnings).toHaveLength(1);
    expect(pair.warnings[0]).toContain(c.certFile);
    expect(pair.warnings[0]).toMatch(/2048 bits, under the recommended 3072/);
  });

  test("expiring in 10 days", () => {
    const c = selfSigned("soon", P256, [
      ...P256_OPTS,
      "-sha256",
      "-days",
      "10",
      ...SAN("DNS:soon.example.net"),
    ]);
    const pair = expectAccepted(loadCertificatePair(c));
    expect(pair.warnings).toHaveLength(1);
    expect(pair.warnings[0]).toContain(c.certFile);
    expect(pair.warnings[0]).toMatch(/expires on .*in (9|10) days; warned under 30/);
  });

  test("SHA-1 signature", () => {
    const c = selfSigned("sha1", "rsa:2048", ["-sha1", "-days", "365", ...SAN("DNS:sha1.example.net")]);
    const pair = expectAccepted(loadCertificatePair(c));
    const sha1 = pair.warnings.filter((w) => /SHA-1/.test(w));
    expect(sha1).toHaveLength(1);
    expect(sha1[0]).toContain(c.certFile);
    expect(sha1[0]).toMatch(/signed with sha1WithRSAEncryption.*refuse SHA-1/);
  });

  test("a host address the certificate does not cover", () => {
    const c = selfSigned("cover", P256, [
      ...P256_OPTS,
      "-sha256",
      "-days",
      "365",
      ...SAN("DNS:cover.example.net"),
    ]);
    const pair = expectAccepted(
      loadCertificatePair({ ...c, expectedNames: ["cover.example.net", "203.0.113.9"] }),
    );
    expect(pair.warnings).toHaveLength(1);
    expect(pair.warnings[0]).toMatch(/does not cover 203\.0\.113\.9/);
  });
});

describe("accepted", () => {
  test("Windows line endings (CRLF) and a byte-order mark", () => {
    const c = selfSigned("crlf", P256, [
      ...P256_OPTS,
      "-sha256",
      "-days",
      "365",
      ...SAN("DNS:crlf.example.net"),
    ]);
    for (const f of [c.certFile, c.keyFile]) {
      writeFileSync(f, `\uFEFF${readFileSync(f, "utf8").replace(/\n/g, "\r\n")}`);
    }
    expect(readFileSync(c.certFile, "utf8")).toContain("\r\n");
    const pair = expectAccepted(loadCertificatePair(c));
    expect(pair.warnings).toEqual([]);
    expect(pair.cert).not.toContain("\r");
    expect(pair.key).not.toContain("\r");
  });

  test("a wildcard certificate covers the names under it", () => {
    const c = selfSigned("wild", P256, [
      ...P256_OPTS,
      "-sha256",
      "-days",
      "365",
      ...SAN("DNS:*.wild.example.net"),
    ]);
    const pair = expectAccepted(loadCertificatePair({ ...c, expectedNames: ["cm1.wild.example.net"] }));
    expect(pair.sans).toEqual(["DNS:*.wild.example.net"]);
    expect(pair.warnings).toEqual([]);
    expect(certificateCovers(pair.cert, "cm2.wild.example.net")).toBe(true);
    expect(certificateCovers(pair.cert, "a.b.wild.example.net")).toBe(false);
  });

  test("EC keys, P-256 and P-384", () => {
    for (const [curve, bits] of [
      ["P-256", 256],
      ["P-384", 384],
    ] as const) {
      const name = `ec${bits}`;
      const c = selfSigned(
        name,
        "ec",
        ["-pkeyopt", `ec_paramgen_curve:${curve}`, "-sha256", "-days", "365"].concat(
          SAN(`DNS:${name}.example.net`),
        ),
      );
      const pair = expectAccepted(loadCertificatePair(c));
      expect({ type: pair.keyType, bits: pair.keyBits, warnings: pair.warnings }).toEqual({
        type: "ec",
        bits,
        warnings: [],
      });
    }
  });

  test("a chain in the certificate file, and --ca-cert served after the leaf", () => {
    const pki = testPki();
    const leaf = pki.leaf(["chain.example.net"]);
    const fromCaFile = expectAccepted(
      loadCertificatePair({ certFile: leaf.certFile, keyFile: leaf.keyFile, caFile: pki.ca.certFile }),
    );
    const chain = describeCertificates(fromCaFile.chainPem);
    if (!chain.ok) throw new Error(chain.error);
    expect(chain.certificates.map((c) => c.subject)).toEqual([
      "CN=chain.example.net",
      "CN=pcoip-cmsg test CA",
    ]);
    expect(fromCaFile.ca).toBe(pki.ca.cert);

    // The same chain written into the certificate file, plus the CA again as --ca-cert: served once.
    const bundled = join(dir, "bundled.pem");
    writeFileSync(bundled, leaf.cert + pki.ca.cert);
    const both = expectAccepted(
      loadCertificatePair({ certFile: bundled, keyFile: leaf.keyFile, caFile: pki.ca.certFile }),
    );
    expect(both.chainPem).toBe(fromCaFile.chainPem);
    expect(both.warnings.filter((w) => /out of order/.test(w))).toEqual([]);
  });

  test("an unrelated --ca-cert is served but warned about", () => {
    const pki = testPki();
    const other = selfSigned("other-ca", P256, [...P256_OPTS, "-sha256", "-days", "365"]);
    const leaf = pki.leaf(["chain.example.net"]);
    const pair = expectAccepted(
      loadCertificatePair({ certFile: leaf.certFile, keyFile: leaf.keyFile, caFile: other.certFile }),
    );
    expect(pair.warnings.some((w) => /out of order or incomplete/.test(w))).toBe(true);
  });
});

describe("loadCaBundle", () => {
  test("reads the trust anchors; refuses a file without a certificate", () => {
    const pki = testPki();
    const ok = loadCaBundle(pki.ca.certFile);
    expect(ok.ok && ok.pem).toBe(pki.ca.cert);
    const keyOnly = loadCaBundle(pki.ca.keyFile);
    expect(keyOnly.ok).toBe(false);
    if (!keyOnly.ok) expect(keyOnly.error.what).toContain(pki.ca.keyFile);
  });
});

describe("describeCertificate", () => {
  test("public facts only, never key material", () => {
    const leaf = testPki().leaf(["describe.example.net", "192.0.2.7", "2001:db8::7"]);
    const combined = leaf.cert + leaf.key;
    const d = describeCertificate(combined);
    if (!d.ok) throw new Error(d.error);
    expect(d.summary).toMatchObject({
      subject: "CN=describe.example.net",
      issuer: "CN=pcoip-cmsg test CA",
      sans: ["DNS:describe.example.net", "IP:192.0.2.7", "IP:2001:db8::7"],
      keyType: "rsa",
      keyBits: 2048,
      signatureAlgorithm: "sha256WithRSAEncryption",
      selfSigned: false,
      isCa: false,
    });
    expect(d.summary.sha256Fingerprint).toMatch(/^([0-9A-F]{2}:){31}[0-9A-F]{2}$/);
    const json = JSON.stringify(d.summary);
    expect(json).not.toContain("PRIVATE");
    const keyBody = leaf.key.split("\n").filter((l) => l && !l.startsWith("-----"));
    for (const line of keyBody) expect(json).not.toContain(line);
  });

  test("no certificate: an error value, not a throw", () => {
    expect(describeCertificate("hello").ok).toBe(false);
  });
});

describe("generateSelfSigned", () => {
  test("RSA-3072, SHA-256, the host addresses as SANs, and it passes the rules", async () => {
    const { cert, key } = await generateSelfSigned({
      hostAddresses: ["cm.example.net", "203.0.113.10", "[2001:db8::10]"],
    });
    const certFile = join(dir, "generated.pem");
    const keyFile = join(dir, "generated.key");
    writeFileSync(certFile, cert);
    writeFileSync(keyFile, key);
    const pair = expectAccepted(
      loadCertificatePair({
        certFile,
        keyFile,
        expectedNames: ["cm.example.net", "203.0.113.10", "2001:db8::10"],
      }),
    );
    expect(pair.keyType).toBe("rsa");
    expect(pair.keyBits).toBe(3072);
    expect(pair.sans).toEqual(["DNS:cm.example.net", "IP:203.0.113.10", "IP:2001:db8::10"]);
    expect(pair.warnings).toEqual([]);
    const d = describeCertificate(cert);
    expect(d.ok && d.summary.signatureAlgorithm).toBe("sha256WithRSAEncryption");
    // openssl agrees, and sees a server certificate (not a CA).
    const text = openssl(["x509", "-in", certFile, "-noout", "-text"]);
    expect(text).toContain("Public-Key: (3072 bit)");
    expect(text).toContain("CA:FALSE");
    expect(text).toContain("TLS Web Server Authentication");
  });

  test("no host given: localhost and the loopback addresses", async () => {
    const { cert } = await generateSelfSigned({ hostAddresses: [], bits: 2048, days: 1 });
    const d = describeCertificate(cert);
    expect(d.ok && d.summary.sans).toEqual(["DNS:localhost", "IP:127.0.0.1", "IP:::1"]);
  });

  test("the generator is imported lazily (it costs ~80 ms at start-up)", () => {
    const source = readFileSync(join(import.meta.dir, "..", "..", "src", "tls", "certs.ts"), "utf8");
    expect(source).not.toMatch(/^import .*from "selfsigned"/m);
    expect(source).toContain('await import("selfsigned")');
  });
});
