/**
 * A real OpenLDAP slapd for directory-authentication tests: a throwaway mdb database in a temporary folder,
 * listening on loopback only (ldap:// with StartTLS and ldaps://, certificate from the test PKI), loaded with
 * fixture users before it starts (slapadd), so operational attributes that a client cannot write — memberOf,
 * pwdChangedTime, pwdAccountLockedTime, pwdReset — can model groups, an expired, a locked and a must-change
 * password with the ppolicy overlay exactly as a live directory reports them. The retcode overlay adds bind
 * names that answer like Active Directory does (result 49 with "data 532" and friends in the diagnostic).
 *
 * Needs the Debian packages in scripts/ci-apt-ldap.txt (`slapd`; `ldap-utils` only for poking by hand).
 */
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { tcpAccepts } from "./raw-http.ts";
import { testPki } from "./test-certs.ts";

export const SLAPD_BIN = "/usr/sbin/slapd";
const SLAPADD_BIN = "/usr/sbin/slapadd";
const SCHEMA_DIR = "/etc/ldap/schema";
const MODULE_DIR = "/usr/lib/ldap";

export const BASE_DN = "dc=corp,dc=example";
export const PEOPLE_DN = `ou=people,${BASE_DN}`;
export const GROUPS_DN = `ou=groups,${BASE_DN}`;
export const CAD_USERS_DN = `cn=cad-users,${GROUPS_DN}`;
/**
 * Parent of virtual entries (retcode overlay) whose bind answers what Active Directory says, sub-code in the
 * diagnostic text included: bind as `cn=<name>,ou=retcode,dc=corp,dc=example` with any password.
 */
export const RETCODE_DN = `ou=retcode,${BASE_DN}`;
const AD_DIAGNOSTIC = (sub: string) =>
  `80090308: LdapErr: DSID-0C09044E, comment: AcceptSecurityContext error, data ${sub}, v4563`;
/** Name under RETCODE_DN → [result code, diagnostic message]. */
export const RETCODE_ITEMS = {
  "ad-wrong-password": [49, AD_DIAGNOSTIC("52e")],
  "ad-expired": [49, AD_DIAGNOSTIC("532")],
  "ad-must-change": [49, AD_DIAGNOSTIC("773")],
  "ad-disabled": [49, AD_DIAGNOSTIC("533")],
  "ad-locked": [49, AD_DIAGNOSTIC("775")],
  busy: [51, "server busy"],
} as const;

/** Fixture accounts: name → password and what the directory says about them. */
export const FIXTURE = {
  alice: { password: "alice-pw", dn: `uid=alice,${PEOPLE_DN}` }, // member of cad-users
  bob: { password: "bob-pw", dn: `uid=bob,${PEOPLE_DN}` }, // in no group
  carol: { password: "carol-pw", dn: `uid=carol,${PEOPLE_DN}` }, // password expired (ppolicy pwdMaxAge)
  dave: { password: "dave-pw", dn: `uid=dave,${PEOPLE_DN}` }, // account locked (pwdAccountLockedTime)
  erin: { password: "erin-pw", dn: `uid=erin,${PEOPLE_DN}` }, // must change password (pwdReset)
  service: { password: "svc-pw", dn: `cn=pcoip-cmsg,ou=services,${BASE_DN}` }, // search account
} as const;

export interface SlapdPeer {
  /** ldap://127.0.0.1:PORT (StartTLS offered with the test PKI certificate). */
  readonly url: string;
  /** ldaps://127.0.0.1:PORT. */
  readonly ldapsUrl: string;
  /** PEM of the CA that signed the server certificate (localhost, 127.0.0.1). */
  readonly caCert: string;
  readonly baseDn: string;
  readonly pid: number;
  stop(): Promise<void>;
}

/** Why slapd cannot run here, or undefined when it can (tests skip with this message). */
export function slapdMissing(): string | undefined {
  for (const f of [SLAPD_BIN, SLAPADD_BIN]) {
    if (!existsSync(f)) return `${f} not found: install the packages in scripts/ci-apt-ldap.txt`;
  }
  for (const mod of ["back_mdb", "memberof", "ppolicy", "retcode"]) {
    const f = join(MODULE_DIR, `${mod}.so`);
    if (!existsSync(f)) return `${f} not found: install the packages in scripts/ci-apt-ldap.txt`;
  }
  return undefined;
}

/** Starts a fresh slapd with the fixture data; retries when the chosen free ports were taken meanwhile. */
export async function startSlapd(): Promise<SlapdPeer> {
  const missing = slapdMissing();
  if (missing) throw new Error(`starting slapd: ${missing}`);
  let last: unknown;
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      return await startOnce();
    } catch (e) {
      last = e;
    }
  }
  throw last;
}

async function startOnce(): Promise<SlapdPeer> {
  const dir = mkdtempSync(join(tmpdir(), "pcoip-cmsg-slapd-"));
  try {
    const pki = testPki();
    const leaf = pki.leaf(["localhost", "127.0.0.1"]);
    mkdirSync(join(dir, "db"));
    const conf = join(dir, "slapd.conf");
    writeFileSync(conf, slapdConf(dir, leaf.certFile, leaf.keyFile, pki.ca.certFile));
    writeFileSync(join(dir, "data.ldif"), fixtureLdif());
    const load = Bun.spawnSync([SLAPADD_BIN, "-f", conf, "-l", join(dir, "data.ldif")], {
      stdout: "pipe",
      stderr: "pipe",
    });
    if (load.exitCode !== 0) throw new Error(`loading slapd fixture (slapadd): ${load.stderr.toString()}`);

    const [port = 0, ldapsPort = 0] = await freePorts(2);
    const url = `ldap://127.0.0.1:${port}`;
    const ldapsUrl = `ldaps://127.0.0.1:${ldapsPort}`;
    // -d 0 keeps slapd in the foreground (our child, killed by pid) without debug output.
    const proc = Bun.spawn([SLAPD_BIN, "-f", conf, "-h", `${url}/ ${ldapsUrl}/`, "-d", "0"], {
      stdout: "ignore",
      stderr: "pipe",
    });
    const stderr = new Response(proc.stderr).text();
    let stopped = false;
    const stop = async (): Promise<void> => {
      if (stopped) return;
      stopped = true;
      proc.kill("SIGTERM");
      const timer = setTimeout(() => proc.kill("SIGKILL"), 5000);
      await proc.exited;
      clearTimeout(timer);
      rmSync(dir, { recursive: true, force: true });
    };
    try {
      await waitListening(port, proc.exited, stderr);
      await waitListening(ldapsPort, proc.exited, stderr);
    } catch (e) {
      await stop();
      throw e;
    }
    return { url, ldapsUrl, caCert: pki.ca.cert, baseDn: BASE_DN, pid: proc.pid, stop };
  } catch (e) {
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
}

function slapdConf(dir: string, certFile: string, keyFile: string, caFile: string): string {
  return `
include ${SCHEMA_DIR}/core.schema
include ${SCHEMA_DIR}/cosine.schema
include ${SCHEMA_DIR}/inetorgperson.schema
include ${SCHEMA_DIR}/nis.schema
modulepath ${MODULE_DIR}
moduleload back_mdb
moduleload memberof
moduleload ppolicy
moduleload retcode
pidfile ${join(dir, "slapd.pid")}
argsfile ${join(dir, "slapd.args")}
TLSCACertificateFile ${caFile}
TLSCertificateFile ${certFile}
TLSCertificateKeyFile ${keyFile}

database mdb
suffix "${BASE_DN}"
rootdn "cn=admin,${BASE_DN}"
rootpw admin-pw
directory ${join(dir, "db")}
maxsize 16777216
overlay memberof
overlay ppolicy
ppolicy_default "cn=default,ou=policies,${BASE_DN}"
# Without this a locked account answers like a wrong password; with it the ppolicy control says accountLocked.
ppolicy_use_lockout
overlay retcode
retcode-parent "${RETCODE_DN}"
${Object.entries(RETCODE_ITEMS)
  .map(([cn, [code, text]]) => `retcode-item "cn=${cn}" ${code} op=bind text="${text}"`)
  .join("\n")}
access to attrs=userPassword by anonymous auth by self write by * none
access to * by users read by anonymous auth
`;
}

function fixtureLdif(): string {
  const person = (uid: string, extra: string[] = []) => {
    const u = FIXTURE[uid as keyof typeof FIXTURE];
    return [
      `dn: ${u.dn}`,
      "objectClass: inetOrgPerson",
      `uid: ${uid}`,
      `cn: ${uid[0]!.toUpperCase()}${uid.slice(1)}`,
      `sn: ${uid}`,
      `userPassword: ${u.password}`,
      ...extra,
    ].join("\n");
  };
  const entries = [
    `dn: ${BASE_DN}\nobjectClass: dcObject\nobjectClass: organization\ndc: corp\no: corp`,
    `dn: ${PEOPLE_DN}\nobjectClass: organizationalUnit\nou: people`,
    `dn: ${GROUPS_DN}\nobjectClass: organizationalUnit\nou: groups`,
    `dn: ou=services,${BASE_DN}\nobjectClass: organizationalUnit\nou: services`,
    `dn: ou=policies,${BASE_DN}\nobjectClass: organizationalUnit\nou: policies`,
    // Default policy: no expiry, no lockout by failure count (tests type wrong passwords on purpose), but
    // pwdLockout so an administrator's pwdAccountLockedTime is honoured, and pwdReset forces a change.
    [
      `dn: cn=default,ou=policies,${BASE_DN}`,
      "objectClass: organizationalRole",
      "objectClass: pwdPolicy",
      "cn: default",
      "pwdAttribute: userPassword",
      "pwdMaxAge: 0",
      "pwdLockout: TRUE",
      "pwdMaxFailure: 0",
      "pwdMustChange: TRUE",
    ].join("\n"),
    [
      `dn: cn=expiring,ou=policies,${BASE_DN}`,
      "objectClass: organizationalRole",
      "objectClass: pwdPolicy",
      "cn: expiring",
      "pwdAttribute: userPassword",
      "pwdMaxAge: 86400",
      "pwdGraceAuthNLimit: 0",
    ].join("\n"),
    `dn: ${FIXTURE.service.dn}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\ncn: pcoip-cmsg\nuserPassword: ${FIXTURE.service.password}`,
    // memberOf is written here because slapadd bypasses the memberof overlay; on a live server it maintains it.
    person("alice", [`memberOf: ${CAD_USERS_DN}`]),
    person("bob"),
    person("carol", [
      `pwdPolicySubentry: cn=expiring,ou=policies,${BASE_DN}`,
      "pwdChangedTime: 20000101000000Z",
    ]),
    person("dave", ["pwdAccountLockedTime: 000001010000Z"]),
    person("erin", ["pwdReset: TRUE"]),
    `dn: ${CAD_USERS_DN}\nobjectClass: groupOfNames\ncn: cad-users\nmember: ${FIXTURE.alice.dn}`,
  ];
  return `${entries.join("\n\n")}\n`;
}

/** Ports that were free a moment ago (slapd needs a number, not port 0; startSlapd retries on a clash). */
async function freePorts(n: number): Promise<number[]> {
  const servers = await Promise.all(
    Array.from(
      { length: n },
      () =>
        new Promise<ReturnType<typeof createServer>>((resolve, reject) => {
          const s = createServer();
          s.once("error", reject);
          s.listen(0, "127.0.0.1", () => resolve(s));
        }),
    ),
  );
  const ports = servers.map((s) => {
    const a = s.address();
    if (a === null || typeof a === "string") throw new Error("listening on 127.0.0.1:0: no port");
    return a.port;
  });
  await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
  return ports;
}

async function waitListening(port: number, exited: Promise<number>, stderr: Promise<string>): Promise<void> {
  let gone = false;
  exited.then(() => {
    gone = true;
  });
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    if (gone) throw new Error(`starting slapd: it exited: ${(await stderr).trim().slice(-2000)}`);
    const ok = await tcpAccepts("127.0.0.1", port);
    if (ok) return;
    await Bun.sleep(50);
  }
  throw new Error(`starting slapd: port ${port} not listening after 10 s`);
}
