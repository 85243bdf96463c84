// Claim: `tls.caCert` (the chain served with the CM's certificate) and `tls.trustedCa` (the CA bundle trusted for
// broker, agent and LDAP checks) are separate: the trusted bundle is loaded but never served; with trustedCa empty
// the old double use of caCert still supplies the trust, and `config check` explains both keys and warns about the
// deprecated double use only when something verifies with it; `diagnose` checks the broker with the trusted
// bundle, not with the served chain.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { runConfigCommand } from "../../src/cli/config.ts";
import { hostDiagnoseDeps, runChecks } from "../../src/cli/diagnose.ts";
import { installLayout } from "../../src/platform/paths.ts";
import { loadCertificatePair } from "../../src/tls/certs.ts";
import { explainTrust, outgoingChecks, trustedCaFile } from "../../src/tls/provision.ts";
import { startFalconBroker } from "../peers/falcon-broker.ts";
import { testPki } from "../peers/test-certs.ts";

let dir: string;
let privateCaFile: string;
beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "pcoip-cmsg-trust-"));
  // The falcon peer makes its private CA on first use; only the file is needed here.
  const b = await startFalconBroker({ certificate: "private-ca", users: {} });
  privateCaFile = b.caCertFile;
  await b.close();
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const pki = () => testPki();

describe("loading", () => {
  test("the trusted bundle is loaded for checks and never served; caCert is served", () => {
    const leaf = pki().leaf(["localhost"]);
    const r = loadCertificatePair({
      certFile: leaf.certFile,
      keyFile: leaf.keyFile,
      caFile: pki().ca.certFile,
      trustedCaFile: privateCaFile,
    });
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(r.pair.trustedCa).toContain("BEGIN CERTIFICATE");
    expect(r.pair.chainPem).toContain(pki().ca.cert.trim().split("\n")[1]!);
    expect(r.pair.chainPem).not.toContain(r.pair.trustedCa!.trim().split("\n")[1]!);
    expect(r.pair.warnings.join(" ")).not.toContain("out of order");
  });

  test("an unreadable trusted bundle is refused naming the key", () => {
    const leaf = pki().leaf(["localhost"]);
    const r = loadCertificatePair({
      certFile: leaf.certFile,
      keyFile: leaf.keyFile,
      trustedCaFile: join(dir, "nope.pem"),
    });
    expect(r.ok).toBe(false);
    if (!r.ok) expect(`${r.error.what} ${r.error.cause} ${r.error.fix}`).toContain("trustedCa");
  });

  test("which file is trusted: trustedCa, else the deprecated caCert double use", () => {
    expect(trustedCaFile({ caCert: "/c.pem", trustedCa: "/t.pem" })).toEqual({
      file: "/t.pem",
      legacy: false,
    });
    expect(trustedCaFile({ caCert: "/c.pem", trustedCa: "" })).toEqual({ file: "/c.pem", legacy: true });
    expect(trustedCaFile({ caCert: "", trustedCa: "" })).toEqual({ file: undefined, legacy: false });
  });

  test("the deprecation is said only when something verifies with caCert", () => {
    const quiet = {
      brokerUrl: "",
      tls: { brokerCertCheck: true, agentCertCheck: false },
      ldap: { url: "", startTls: true },
    };
    expect(outgoingChecks(quiet)).toEqual([]);
    expect(explainTrust({ caCert: "/c.pem", trustedCa: "" }, []).deprecation).toBeUndefined();
    const checks = outgoingChecks({ ...quiet, brokerUrl: "https://b.example" });
    expect(checks).toEqual(["the upstream broker (tls.brokerCertCheck)"]);
    expect(explainTrust({ caCert: "/c.pem", trustedCa: "" }, checks).deprecation).toContain(
      'tls.trustedCa = "/c.pem"',
    );
    expect(explainTrust({ caCert: "/c.pem", trustedCa: "/t.pem" }, checks).deprecation).toBeUndefined();
  });
});

describe("config check explains both keys", () => {
  const run = async (tls: string) => {
    const f = join(dir, `c${Math.random().toString(16).slice(2)}.toml`);
    writeFileSync(f, `brokerUrl = "https://broker.corp.example"\n\n[tls]\n${tls}\n`);
    const out: string[] = [];
    const err: string[] = [];
    const code = await runConfigCommand(["check", "--config", f], {
      stdout: (s: string) => void out.push(s),
      stderr: (s: string) => void err.push(s),
    });
    return { code, out: out.join(""), err: err.join("") };
  };

  test("trustedCa set: both notes, no warning", async () => {
    const r = await run(
      `caCert = "/etc/pcoip-cmsg/certs/chain.pem"\ntrustedCa = "/etc/pcoip-cmsg/certs/broker-ca.pem"`,
    );
    expect(r.code).toBe(0);
    expect(r.out).toContain(
      "note: tls.caCert = /etc/pcoip-cmsg/certs/chain.pem: served after this CM's certificate as its chain",
    );
    expect(r.out).toContain(
      "note: tls.trustedCa = /etc/pcoip-cmsg/certs/broker-ca.pem: trusted besides the system store to verify the upstream broker",
    );
    expect(r.err).not.toContain("deprecated");
  });

  test("only caCert, used to verify the broker: still valid, with the deprecation warning naming tls.trustedCa", async () => {
    const r = await run(`caCert = "/etc/pcoip-cmsg/certs/ca.pem"`);
    expect(r.code).toBe(0);
    expect(r.err).toContain("warning:");
    expect(r.err).toContain("deprecated");
    expect(r.err).toContain('set tls.trustedCa = "/etc/pcoip-cmsg/certs/ca.pem"');
  });
});

test("diagnose verifies a private-CA broker with tls.trustedCa, not with the chain in tls.caCert", async () => {
  const broker = await startFalconBroker({ certificate: "private-ca", users: {} });
  try {
    const leaf = pki().leaf(["localhost"]);
    const f = join(dir, "diagnose.toml");
    writeFileSync(
      f,
      `brokerUrl = "${broker.url}"\n\n[tls]\ncert = "${leaf.certFile}"\nkey = "${leaf.keyFile}"\ncaCert = "${pki().ca.certFile}"\ntrustedCa = "${broker.caCertFile}"\n`,
    );
    const checks = await runChecks(
      { layout: installLayout("/"), configFile: f, agents: [], timeoutMs: 3000 },
      hostDiagnoseDeps(),
    );
    const broker_ = checks.filter((c) => c.name.startsWith("broker"));
    expect(broker_.map((c) => `${c.verdict} ${c.name}`)).toEqual(["PASS broker"]);
    expect(checks.find((c) => c.name === "trusted CA")?.verdict).toBe("INFO");
  } finally {
    await broker.close();
  }
}, 30_000);
