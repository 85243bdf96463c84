/**
 * Throwaway certificates for tests, made with the openssl CLI (present on every machine here): a test CA and
 * leaf certificates it signs, for the CM (443), fake agents (60443 and 4172) and fake brokers. Created once per
 * test process under a temporary folder that is removed at exit.
 */
import { mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
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
    "/CN=pcoip-cmsg test CA",
    "-keyout",
    join(dir, "ca.key"),
    "-out",
    join(dir, "ca.pem"),
    "-addext",
    "basicConstraints=critical,CA:TRUE",
    "-addext",
    "keyUsage=critical,keyCertSign,cRLSign",
  ]);
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
      const san = names.map((n) => (/^[\d.]+$|:/.test(n) ? `IP:${n}` : `DNS:${n}`)).join(",");
      writeFileSync(
        join(dir, `${base}.ext`),
        `subjectAltName=${san}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth,clientAuth\n`,
      );
      openssl([
        "req",
        "-newkey",
        `rsa:${bits}`,
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
        join(dir, "ca.pem"),
        "-CAkey",
        join(dir, "ca.key"),
        "-CAcreateserial",
        "-days",
        String(days),
        "-sha256",
        "-extfile",
        join(dir, `${base}.ext`),
        "-out",
        join(dir, `${base}.pem`),
      ]);
      const leaf = read(dir, base);
      cache.set(id, leaf);
      return leaf;
    },
  };
  return shared;
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
