/**
 * `diagnose` against real loopback peers: a desktop whose agent is down is a FAIL with the fix, an agent with a
 * 1024-bit key is the vendor's "read ECONNRESET" FAIL, the CM's dummy POST passes when <error-resp> comes back;
 * and the support bundle holds no password, token, proxy credential or key material (secrets are planted and
 * every file of the tarball is scanned).
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { hostDiagnoseDeps, runDiagnose } from "../../src/cli/diagnose.ts";
import { hostInstallDeps, runInstall } from "../../src/cli/install.ts";
import { type AdminServer, startAdminServer } from "../../src/observability/health.ts";
import { createMetricsRegistry } from "../../src/observability/metrics.ts";
import { portFree } from "../../src/platform/host.ts";
import { installLayout } from "../../src/platform/paths.ts";
import { capturedIo } from "../peers/captured-io.ts";

const work = mkdtempSync(join(tmpdir(), "pcoip-cmsg-diagnose-"));
const root = join(work, "stage");
const layout = installLayout(root);
const SECRETS = {
  adminToken: "planted-admin-token-7f3a",
  proxyPassword: "planted-proxy-pass-91c2",
  proxyUrlPassword: "planted-url-pass-55d0",
  ldapPassword: "planted-ldap-pass-0b77",
};

async function freePort(): Promise<number> {
  for (let p = 20000 + Math.floor(Math.random() * 30000); ; p++)
    if ((await portFree("127.0.0.1", p, "tcp")).free && (await portFree("127.0.0.1", p, "udp")).free)
      return p;
}

function openssl(args: string[]) {
  const r = Bun.spawnSync(["openssl", ...args]);
  if (r.exitCode !== 0) throw new Error(`openssl ${args.join(" ")}: ${r.stderr.toString()}`);
}

const closers: (() => unknown)[] = [];
afterAll(async () => {
  for (const c of closers) await c();
  rmSync(work, { recursive: true, force: true });
});

let downAgent = 0;
let weakAgent = 0;
let cmPort = 0;
let sgPort = 0;

beforeAll(async () => {
  // A staged installation (config only), then the config pointed at loopback ports and planted secrets.
  writeFileSync(join(work, "pp"), `${SECRETS.proxyPassword}\n`);
  const again = capturedIo();
  expect(
    await runInstall(
      [
        "--root",
        root,
        "--accept-policies",
        "--external-pcoip-ip",
        "203.0.113.5",
        "--host-address",
        "127.0.0.1",
        "--self-signed",
        "--config-only",
        "--ignore-disk-req",
        "--https-proxy",
        `http://puser:${SECRETS.proxyUrlPassword}@127.0.0.1:3128`,
        "--https-proxy-username",
        "proxyuser",
        "--https-proxy-password-file",
        join(work, "pp"),
      ],
      again,
      { ...hostInstallDeps(), interactive: false },
    ),
  ).toBe(0);

  downAgent = await freePort();
  cmPort = await freePort();
  sgPort = await freePort();
  const adminPort = await freePort();
  const ldapPort = await freePort();
  writeFileSync(layout.onDisk("/etc/pcoip-cmsg/ldap.pass"), `${SECRETS.ldapPassword}\n`, { mode: 0o600 });

  // A PCoIP agent with a 1024-bit key (the vendor's "read ECONNRESET" case).
  const weakKey = join(work, "weak.key");
  const weakCert = join(work, "weak.pem");
  openssl([
    "req",
    "-x509",
    "-newkey",
    "rsa:1024",
    "-nodes",
    "-sha256",
    "-days",
    "5",
    "-subj",
    "/CN=weak-agent",
    "-keyout",
    weakKey,
    "-out",
    weakCert,
  ]);
  const weak = Bun.listen({
    hostname: "127.0.0.1",
    port: 0,
    tls: { cert: readFileSync(weakCert, "utf8"), key: readFileSync(weakKey, "utf8") },
    socket: { data() {} },
  });
  closers.push(() => weak.stop(true));
  weakAgent = weak.port;

  // Stand-ins for the running service: the admin listener (so the service counts as running) and a CM on
  // cm.listen answering the dummy POST with <error-resp>, as the real one does.
  const admin: AdminServer = startAdminServer({
    hostname: "127.0.0.1",
    port: adminPort,
    token: SECRETS.adminToken,
    metrics: createMetricsRegistry(),
    readiness: () => [{ name: "listeners", ok: true }],
    sessions: () => [],
    drain: () => ({ draining: true, liveSessions: 0 }),
  });
  closers.push(() => admin.stop());
  const cmCert = readFileSync(layout.disk.certFile, "utf8");
  const cmKey = readFileSync(layout.disk.keyFile, "utf8");
  const cm = Bun.listen({
    hostname: "127.0.0.1",
    port: cmPort,
    tls: { cert: cmCert, key: cmKey },
    socket: {
      data(s, d) {
        if (!d.toString().includes("<?xml")) return;
        const body =
          '<pcoip-client version="2.1"><error-resp><result><result-id>ERR</result-id></result></error-resp></pcoip-client>';
        s.end(
          `HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nTransfer-Encoding: chunked\r\n\r\n${body.length.toString(16)}\r\n${body}\r\n0\r\n\r\n`,
        );
      },
    },
  });
  closers.push(() => cm.stop(true));

  const cfg = readFileSync(layout.disk.configFile, "utf8");
  writeFileSync(
    layout.disk.configFile,
    `${cfg}
[cm]
listen = ["127.0.0.1:${cmPort}"]
redirectListen = []

[sg]
tcpListen = ["127.0.0.1:${sgPort}"]
udpListen = ["127.0.0.1:${sgPort}"]

[admin]
listen = "127.0.0.1:${adminPort}"
token = "${SECRETS.adminToken}"

[ldap]
url = "ldaps://127.0.0.1:${ldapPort}"
bindDn = "uid={user},ou=people,dc=corp,dc=example"
serviceBindDn = "cn=svc,dc=corp,dc=example"
serviceBindPasswordFile = "/etc/pcoip-cmsg/ldap.pass"
timeoutSeconds = 2

[[desktops]]
id = "ws-down"
agent = "127.0.0.1:${downAgent}"
users = ["alice"]
`,
  );
}, 60_000);

describe("diagnose", () => {
  let out = "";
  let code = -1;

  test("runs and exits non-zero because of FAILs", async () => {
    const io = capturedIo();
    code = await runDiagnose(
      ["--root", root, "--agent", `127.0.0.1:${weakAgent}`, "--timeout", "3"],
      io,
      hostDiagnoseDeps(),
    );
    out = io.out;
    expect(code).toBe(1);
  }, 60_000);

  test("a down agent is a FAIL with the fix", () => {
    expect(out).toMatch(
      new RegExp(
        `FAIL  agent 127\\.0\\.0\\.1:${downAgent} +127\\.0\\.0\\.1:${downAgent} refused the connection`,
      ),
    );
    expect(out).toContain(
      `fix: start the PCoIP agent on 127.0.0.1 and check that it listens on TCP ${downAgent}`,
    );
  });

  test('an agent key under 2048 bits is the "read ECONNRESET" FAIL', () => {
    expect(out).toMatch(
      new RegExp(
        `FAIL  agent 127\\.0\\.0\\.1:${weakAgent} +127\\.0\\.0\\.1 presents an RSA-1024 certificate`,
      ),
    );
    expect(out).toContain("read ECONNRESET");
  });

  test("the CM's dummy POST gets <error-resp>; the service's ports are checked", () => {
    expect(out).toContain("PASS  cm dummy post");
    expect(out).toContain(`PASS  port ${cmPort}/tcp`);
    // Nothing bound the SG's UDP port: with the service running that is a FAIL.
    expect(out).toMatch(new RegExp(`FAIL  port ${sgPort}/udp .*not bound`));
  });

  test("the certificate, the SG cipher note, the directory and the disk are reported", () => {
    expect(out).toMatch(/PASS {2}certificate +.*RSA-3072/);
    expect(out).toContain("Security Gateway cipher list has no effect here");
    expect(out).toMatch(/FAIL {2}ldap ldaps:\/\/127\.0\.0\.1:\d+ reachable/);
    expect(out).toMatch(/(PASS|WARN|FAIL) {2}disk/);
  });
});

describe("diagnose --support-bundle", () => {
  test("holds version, redacted config, certificate summaries and the diagnose output — and no secret", async () => {
    const archive = join(work, "support.tar.gz");
    const io = capturedIo();
    await runDiagnose(
      ["--root", root, "--support-bundle", "--output", archive, "--timeout", "2"],
      io,
      hostDiagnoseDeps(),
    );
    expect(io.err).not.toContain("writing the support bundle");
    const into = join(work, "support");
    mkdirSync(into);
    expect(Bun.spawnSync(["tar", "-xzf", archive, "-C", into]).exitCode).toBe(0);
    const [dir] = readdirSync(into);
    const files = readdirSync(join(into, dir!));
    expect(files).toEqual(
      expect.arrayContaining([
        "version.txt",
        "config.toml",
        "proxy.env",
        "certificates.json",
        "diagnose.txt",
      ]),
    );

    const keyBody = readFileSync(layout.disk.keyFile, "utf8").split("\n")[5]!;
    expect(keyBody.length).toBeGreaterThan(40);
    for (const f of files) {
      const text = readFileSync(join(into, dir!, f), "utf8");
      for (const secret of Object.values(SECRETS))
        expect({ file: f, leaked: text.includes(secret) }).toEqual({ file: f, leaked: false });
      expect(text).not.toContain("PRIVATE KEY");
      expect(text).not.toContain(keyBody);
      expect(text).not.toContain("proxyuser");
    }
    const config = readFileSync(join(into, dir!, "config.toml"), "utf8");
    expect(config).toContain('token = "<redacted>"');
    expect(config).toContain('serviceBindPasswordFile = "/etc/pcoip-cmsg/ldap.pass"');
    expect(readFileSync(join(into, dir!, "proxy.env"), "utf8")).toContain(
      'HTTPS_PROXY_PASSWORD="<redacted>"',
    );
    const certs = JSON.parse(readFileSync(join(into, dir!, "certificates.json"), "utf8"));
    expect(certs["tls.cert"].certificates[0].keyBits).toBe(3072);
    expect(readFileSync(join(into, dir!, "diagnose.txt"), "utf8")).toContain("agent 127.0.0.1:");
  }, 60_000);
});
