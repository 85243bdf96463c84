/**
 * Throwaway certificates for tests, made with the openssl CLI (present on every machine here): a test CA and
 * leaf certificates it signs, for the CM (443), fake agents (60443 and 4172) and fake brokers. Created once per
 * test process under a temporary folder that is removed at exit.
 */
import { mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export interface TestCert {
  readonly cert: string;
  readonly key: string;
  readonly certFile: string;
  readonly keyFile: string;
}

export interface TestPki {
  readonly dir: string;
  readonly ca: TestCert;
  /** A leaf signed by the test CA for the given DNS names / IPs (cached by name list). */
  leaf(names: readonly string[], opts?: { bits?: number; days?: number }): TestCert;
}

let shared: TestPki | undefined;

/** The process-wide test PKI (CA RSA-2048 for speed; leaves RSA-2048 unless asked otherwise). */
export function testPki(): TestPki {
  if (shared) return shared;
  // bun test does not run process "exit" handlers reliably, so each process names its folder by pid and
  // removes the folders of processes that no longer exist.
  removeStaleFolders();
  const dir = join(tmpdir(), `pcoip-cmsg-pki-${process.pid}`);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  process.once("exit", () => rmSync(dir, { recursive: true, force: true }));
  makeCa(dir, "ca", "pcoip-cmsg test CA");
  const ca = read(dir, "ca");
  const cache = new Map<string, TestCert>();
  shared = {
    dir,
    ca,
    leaf(names, opts = {}) {
      const bits = opts.bits ?? 2048;
      const days = opts.days ?? 30;
      const id = `${names.join(",")}|${bits}|${days}`;
      const hit = cache.get(id);
      if (hit) return hit;
      const base = `leaf${cache.size}`;
      signLeaf(dir, base, "ca", names, { bits, days, extendedKeyUsage: "serverAuth,clientAuth" });
      const leaf = read(dir, base);
      cache.set(id, leaf);
      return leaf;
    },
  };
  return shared;
}

/** Makes `<base>.pem` and `<base>.key` in dir: a self-signed CA (RSA-2048, 30 days) with common name `cn`. */
export function makeCa(dir: string, base: string, cn: string): void {
  openssl([
    "req",
    "-x509",
    "-newkey",
    "rsa:2048",
    "-nodes",
    "-sha256",
    "-days",
    "30",
    "-subj",
    `/CN=${cn}`,
    "-keyout",
    join(dir, `${base}.key`),
    "-out",
    join(dir, `${base}.pem`),
    "-addext",
    "basicConstraints=critical,CA:TRUE",
    "-addext",
    "keyUsage=critical,keyCertSign,cRLSign",
  ]);
}

/**
 * Makes `<base>.pem` and `<base>.key` in dir: a leaf for `names` (DNS names and IPs, the first is its common name)
 * signed by the CA `<caBase>` in the same folder. The certificate is written under a temporary name and renamed, so
 * a caller that checks `<base>.pem` exists never sees half of one.
 */
export function signLeaf(
  dir: string,
  base: string,
  caBase: string,
  names: readonly string[],
  opts: { bits?: number; days?: number; extendedKeyUsage?: string } = {},
): void {
  const san = names.map((n) => (/^[\d.]+$|:/.test(n) ? `IP:${n}` : `DNS:${n}`)).join(",");
  writeFileSync(
    join(dir, `${base}.ext`),
    `subjectAltName=${san}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=${opts.extendedKeyUsage ?? "serverAuth"}\n`,
  );
  openssl([
    "req",
    "-newkey",
    `rsa:${opts.bits ?? 2048}`,
    "-nodes",
    "-sha256",
    "-subj",
    `/CN=${names[0] ?? "localhost"}`,
    "-keyout",
    join(dir, `${base}.key`),
    "-out",
    join(dir, `${base}.csr`),
  ]);
  openssl([
    "x509",
    "-req",
    "-in",
    join(dir, `${base}.csr`),
    "-CA",
    join(dir, `${caBase}.pem`),
    "-CAkey",
    join(dir, `${caBase}.key`),
    "-CAcreateserial",
    "-days",
    String(opts.days ?? 30),
    "-sha256",
    "-extfile",
    join(dir, `${base}.ext`),
    "-out",
    join(dir, `${base}.pem.tmp`),
  ]);
  renameSync(join(dir, `${base}.pem.tmp`), join(dir, `${base}.pem`));
}

function removeStaleFolders(): void {
  for (const name of readdirSync(tmpdir())) {
    const m = /^pcoip-cmsg-pki-(\d+)$/.exec(name);
    if (!m) {
      if (
        name.startsWith("pcoip-cmsg-pki-") &&
        Date.now() - statSync(join(tmpdir(), name)).mtimeMs > 3_600_000
      ) {
        rmSync(join(tmpdir(), name), { recursive: true, force: true });
      }
      continue;
    }
    const pid = Number(m[1]);
    if (pid === process.pid) continue;
    try {
      process.kill(pid, 0);
    } catch {
      rmSync(join(tmpdir(), name), { recursive: true, force: true });
    }
  }
}

function read(dir: string, base: string): TestCert {
  const certFile = join(dir, `${base}.pem`);
  const keyFile = join(dir, `${base}.key`);
  return { cert: readFileSync(certFile, "utf8"), key: readFileSync(keyFile, "utf8"), certFile, keyFile };
}

/** Runs openssl and throws with its stderr on failure (a broken test environment, not a test result). */
export function openssl(args: readonly string[]): string {
  const r = Bun.spawnSync(["openssl", ...args], { stdout: "pipe", stderr: "pipe" });
  if (r.exitCode !== 0) throw new Error(`openssl ${args[0]} failed: ${r.stderr.toString()}`);
  return r.stdout.toString();
}
