/**
 * The certificate pair the listeners serve, from the configured files — generated first when `tls.selfSigned`
 * is on and the files do not exist yet (demo and lab installs). Every other rule is certs.ts's.
 */
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import { generateSelfSigned, type LoadResult, loadCertificatePair } from "./certs.ts";

export interface ProvisionOptions {
  readonly certFile: string;
  readonly keyFile: string;
  readonly caFile?: string;
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
    expectedNames: o.hostAddresses,
  });
  return { ...r, generated };
}
