/**
 * The certificate pair the listeners serve, from the configured files — generated first when `tls.selfSigned`
 * is on and the files do not exist yet (demo and lab installs). Every other rule is certs.ts's.
 *
 * Also which file is trusted for outgoing checks (issue 18): `tls.caCert` is the chain served with the CM's
 * certificate (the vendor's `--ca-cert`); `tls.trustedCa` is the CA bundle the CM trusts, besides the system
 * store, to verify the upstream broker, agents and the LDAP directory. The two used to be one key, which made a
 * site with a private broker CA serve that unrelated CA after its own certificate. A configuration that still
 * relies on caCert for trust keeps working — caCert is trusted while trustedCa is empty — with a deprecation note.
 */
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import type { Config } from "../config/schema.ts";
import { generateSelfSigned, type LoadResult, loadCertificatePair } from "./certs.ts";

export interface ProvisionOptions {
  readonly certFile: string;
  readonly keyFile: string;
  readonly caFile?: string;
  /** The file trusted for outgoing checks (see `trustedCaFile`). */
  readonly trustedCaFile?: string;
  readonly selfSigned: boolean;
  readonly hostAddresses: readonly string[];
}

export async function provisionServerCertificate(
  o: ProvisionOptions,
): Promise<LoadResult & { generated?: boolean }> {
  let generated = false;
  if (o.selfSigned && !existsSync(o.certFile) && !existsSync(o.keyFile)) {
    const pair = await generateSelfSigned({
      hostAddresses: o.hostAddresses.length ? [...o.hostAddresses] : ["localhost", "127.0.0.1"],
    });
    mkdirSync(dirname(o.certFile), { recursive: true });
    mkdirSync(dirname(o.keyFile), { recursive: true });
    writeFileSync(o.keyFile, pair.key, { mode: 0o600 });
    writeFileSync(o.certFile, pair.cert, { mode: 0o644 });
    generated = true;
  }
  const r = loadCertificatePair({
    certFile: o.certFile,
    keyFile: o.keyFile,
    ...(o.caFile ? { caFile: o.caFile } : {}),
    ...(o.trustedCaFile ? { trustedCaFile: o.trustedCaFile } : {}),
    expectedNames: o.hostAddresses,
  });
  return { ...r, generated };
}

type TlsKeys = Pick<Config["tls"], "caCert" | "trustedCa">;

/**
 * The file trusted for broker, agent and LDAP checks: `tls.trustedCa`; with it empty, `tls.caCert` (the
 * deprecated double use: `legacy`).
 */
export function trustedCaFile(tls: TlsKeys): { readonly file: string | undefined; readonly legacy: boolean } {
  if (tls.trustedCa) return { file: tls.trustedCa, legacy: false };
  if (tls.caCert) return { file: tls.caCert, legacy: true };
  return { file: undefined, legacy: false };
}

/** What verifies a peer's certificate with the trusted CA bundle in this configuration, in words. */
export function outgoingChecks(
  c: Pick<Config, "brokerUrl"> & { tls: Pick<Config["tls"], "brokerCertCheck" | "agentCertCheck"> } & {
    ldap: Pick<Config["ldap"], "url" | "startTls">;
  },
): string[] {
  const checks: string[] = [];
  if (c.brokerUrl && c.tls.brokerCertCheck) checks.push("the upstream broker (tls.brokerCertCheck)");
  if (c.tls.agentCertCheck) checks.push("agents (tls.agentCertCheck)");
  const urls = (Array.isArray(c.ldap.url) ? c.ldap.url : [c.ldap.url]).filter((u) => u !== "");
  if (urls.some((u) => /^ldaps:/i.test(u) || c.ldap.startTls)) checks.push("the LDAP directory");
  return checks;
}

/**
 * Sentences for `config check` and the start-up log: what each key does in this configuration, and the
 * deprecation note when caCert is what the CM trusts.
 */
export function explainTrust(
  tls: TlsKeys,
  checks: readonly string[],
): { readonly notes: string[]; readonly deprecation: string | undefined } {
  const notes: string[] = [];
  notes.push(
    tls.caCert
      ? `tls.caCert = ${tls.caCert}: served after this CM's certificate as its chain (the vendor's --ca-cert)`
      : "tls.caCert is empty: the CM serves tls.cert as it is (leaf and any intermediates in that file)",
  );
  const trust = trustedCaFile(tls);
  const what =
    checks.length > 0 ? checks.join(", ") : "nothing in this configuration (no certificate check is on)";
  notes.push(
    trust.file
      ? `${trust.legacy ? "tls.caCert" : "tls.trustedCa"} = ${trust.file}: trusted besides the system store to verify ${what}`
      : `tls.trustedCa is empty: only the system store is trusted to verify ${what}`,
  );
  const deprecation =
    trust.legacy && checks.length > 0
      ? `tls.caCert is also trusted to verify ${checks.join(", ")} because tls.trustedCa is empty; that double use is deprecated: set tls.trustedCa = "${tls.caCert}" (or the CA bundle that issued those certificates), and keep in tls.caCert only the chain of this CM's own certificate (empty it if tls.cert already holds the chain)`
      : undefined;
  return { notes, deprecation };
}
