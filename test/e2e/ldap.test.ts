// Claim: the directory authenticator, talking to a real OpenLDAP slapd over loopback (StartTLS and ldaps with the
// test CA), tells right from wrong passwords, reports expired / must-change / locked / AD-style accounts as such,
// returns group entitlements, cannot be steered by LDAP injection, never binds an empty password, fails over to
// the next server, and names the server, cause and fix when no directory can be used.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { AuthOutcome, Credentials } from "../../src/cm/auth/authenticator.ts";
import {
  checkDirectory,
  createLdapAuthenticator,
  LdapConfigError,
  type LdapOptions,
} from "../../src/cm/auth/ldap.ts";
import { createLogger } from "../../src/observability/log.ts";
import {
  CAD_USERS_DN,
  FIXTURE,
  GROUPS_DN,
  PEOPLE_DN,
  RETCODE_DN,
  type SlapdPeer,
  slapdMissing,
  startSlapd,
} from "../peers/slapd.ts";
import { openssl } from "../peers/test-certs.ts";

const missing = slapdMissing();
if (missing) console.warn(`test/e2e/ldap.test.ts: skipping the slapd tests: ${missing}`);

/** Every log line any authenticator writes in this file; checked at the end for passwords. */
const logLines: string[] = [];
const log = createLogger({ level: "debug", destination: { write: (s: string) => void logLines.push(s) } });

const TEMPLATE = `uid={user},${PEOPLE_DN}`;
const TIMEOUT = 2000;

let slapd: SlapdPeer;
const cleanups: (() => Promise<void> | void)[] = [];

beforeAll(async () => {
  if (!missing) slapd = await startSlapd();
});
afterAll(async () => {
  try {
    for (const c of cleanups.reverse()) await c();
  } finally {
    await slapd?.stop();
  }
});

function creds(username: string, password: string, domain = ""): Credentials {
  return { username, password, domain };
}

function template(extra: Partial<LdapOptions> = {}): LdapOptions {
  return { urls: [slapd.url], bindDn: TEMPLATE, caCert: slapd.caCert, timeoutMs: TIMEOUT, ...extra };
}

function searchMode(extra: Partial<LdapOptions> = {}): LdapOptions {
  return {
    urls: [slapd.url],
    searchBase: PEOPLE_DN,
    searchFilter: "(uid={user})",
    serviceBindDn: FIXTURE.service.dn,
    serviceBindPassword: FIXTURE.service.password,
    caCert: slapd.caCert,
    timeoutMs: TIMEOUT,
    ...extra,
  };
}

async function login(
  options: LdapOptions,
  username: string,
  password: string,
  domain = "",
): Promise<AuthOutcome> {
  // Closed after each login: it keeps its connection for the next login otherwise (ldap-pool.ts).
  const auth = createLdapAuthenticator(options);
  try {
    return await auth.authenticate(creds(username, password, domain), log);
  } finally {
    await auth.close?.();
  }
}

function failure(o: AuthOutcome): { reason: string; detail: string } {
  if (o.ok) throw new Error(`expected a failure, got success as ${o.user}`);
  return { reason: o.reason, detail: o.detail };
}

/** A loopback TCP port that accepts connections and counts them, answering nothing. */
async function silentListener(): Promise<{ url: string; connections: () => number; open: () => number }> {
  let count = 0;
  const open = new Set<Socket>();
  const server: Server = createServer((s) => {
    count++;
    open.add(s);
    s.on("close", () => open.delete(s));
    s.on("error", () => {});
    s.resume(); // read and drop, so the peer's FIN is seen
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  cleanups.push(() => {
    for (const s of open) s.destroy();
    return new Promise<void>((r) => server.close(() => r()));
  });
  const addr = server.address();
  if (addr === null || typeof addr === "string") throw new Error("no port");
  return { url: `ldap://127.0.0.1:${addr.port}`, connections: () => count, open: () => open.size };
}

/** Polls until `probe` returns 0 (sockets close asynchronously); returns the last value seen. */
async function settlesToZero(probe: () => number): Promise<number> {
  for (let i = 0; i < 40 && probe() !== 0; i++) await Bun.sleep(50);
  return probe();
}

/** ESTABLISHED IPv4 TCP connections on this host whose remote end is 127.0.0.1:port (from /proc/net/tcp). */
function establishedTo(port: number): number {
  const want = `0100007F:${port.toString(16).toUpperCase().padStart(4, "0")}`;
  return readFileSync("/proc/net/tcp", "utf8")
    .split("\n")
    .slice(1)
    .filter((line) => {
      const f = line.trim().split(/\s+/);
      return f[2] === want && f[3] === "01";
    }).length;
}

/** A loopback port with nothing listening (bound, read, released). */
async function closedPortUrl(): Promise<string> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
  const addr = s.address();
  await new Promise((r) => s.close(r));
  if (addr === null || typeof addr === "string") throw new Error("no port");
  return `ldap://127.0.0.1:${addr.port}`;
}

/** A CA that did not sign slapd's certificate. */
function otherCa(): string {
  const dir = mkdtempSync(join(tmpdir(), "pcoip-cmsg-otherca-"));
  try {
    openssl(
      ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=unrelated CA", "-days", "2"].concat([
        "-keyout",
        join(dir, "ca.key"),
        "-out",
        join(dir, "ca.pem"),
      ]),
    );
    return readFileSync(join(dir, "ca.pem"), "utf8");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

describe.skipIf(Boolean(missing))("ldap authenticator against slapd", () => {
  describe("template bind (uid={user},ou=people,…) over StartTLS", () => {
    test("alice: success with her group as CN and DN", async () => {
      const r = await login(template({ defaultDomain: "corp.example" }), "alice", FIXTURE.alice.password);
      expect(r).toEqual({
        ok: true,
        user: "alice",
        groups: ["cad-users", CAD_USERS_DN],
        domain: "corp.example",
      });
    });

    test("the user name comes back as the directory spells it; the client's domain wins over the default", async () => {
      const r = await login(
        template({ defaultDomain: "corp.example" }),
        "ALICE",
        FIXTURE.alice.password,
        "CORP",
      );
      expect(r).toMatchObject({ ok: true, user: "alice", domain: "CORP" });
    });

    test("bob: success, in no group", async () => {
      expect(await login(template(), "bob", FIXTURE.bob.password)).toEqual({
        ok: true,
        user: "bob",
        groups: [],
        domain: "",
      });
    });

    test("wrong password → bad_credentials; the password is not in the detail", async () => {
      const f = failure(await login(template(), "alice", "not-alices-password"));
      expect(f.reason).toBe("bad_credentials");
      expect(f.detail).toContain("invalid credentials");
      expect(f.detail).not.toContain("not-alices-password");
    });

    test("unknown user → bad_credentials (indistinguishable from a wrong password)", async () => {
      expect(failure(await login(template(), "mallory", "whatever")).reason).toBe("bad_credentials");
    });

    test("empty password → bad_credentials against a live directory (no unauthenticated-bind success)", async () => {
      const f = failure(await login(template(), "alice", ""));
      expect(f.reason).toBe("bad_credentials");
      expect(f.detail).toContain("empty password");
    });

    test("expired password (ppolicy pwdMaxAge) → expired_password", async () => {
      const f = failure(await login(template(), "carol", FIXTURE.carol.password));
      expect(f).toMatchObject({ reason: "expired_password" });
      expect(f.detail).toContain("password expired");
    });

    test("expired account with a wrong password says nothing about expiry", async () => {
      expect(failure(await login(template(), "carol", "guess")).reason).toBe("bad_credentials");
    });

    test("must change password (ppolicy pwdReset) → expired_password although the bind succeeded", async () => {
      const f = failure(await login(template(), "erin", FIXTURE.erin.password));
      expect(f.reason).toBe("expired_password");
      expect(f.detail).toContain("must be changed");
    });

    test("locked account (ppolicy pwdAccountLockedTime) → access_denied", async () => {
      const f = failure(await login(template(), "dave", FIXTURE.dave.password));
      expect(f.reason).toBe("access_denied");
      expect(f.detail).toContain("locked");
    });

    test.each([
      ["*"],
      [")("],
      ["\\"],
      ["alice)(uid=*"],
      ["alice,ou=people,dc=corp,dc=example"],
      ["alice+cn=Alice"],
      ["#alice"],
    ])("injection in the user name %p → refused, even with alice's password", async (name) => {
      const r = await login(template(), name, FIXTURE.alice.password);
      expect(failure(r).reason).toBe("bad_credentials");
    });
  });

  describe("search-then-bind with a service account and a group search", () => {
    const groupSearch = {
      groupAttribute: "",
      groupSearchBase: GROUPS_DN,
      groupSearchFilter: "(member={dn})",
    };

    test("alice: success; groups from the group search", async () => {
      expect(await login(searchMode(groupSearch), "alice", FIXTURE.alice.password)).toEqual({
        ok: true,
        user: "alice",
        groups: ["cad-users", CAD_USERS_DN],
        domain: "",
      });
    });

    test("bob: success, no group", async () => {
      expect(await login(searchMode(groupSearch), "bob", FIXTURE.bob.password)).toMatchObject({
        ok: true,
        user: "bob",
        groups: [],
      });
    });

    test("memberOf instead of a group search gives the same groups", async () => {
      expect(await login(searchMode(), "alice", FIXTURE.alice.password)).toMatchObject({
        ok: true,
        groups: ["cad-users", CAD_USERS_DN],
      });
    });

    test("wrong password → bad_credentials; nobody found → unknown_user", async () => {
      expect(failure(await login(searchMode(), "alice", "wrong")).reason).toBe("bad_credentials");
      const f = failure(await login(searchMode(), "mallory", "whatever"));
      expect(f.reason).toBe("unknown_user");
      expect(f.detail).toContain("(uid=mallory)");
    });

    test.each([
      ["al*"],
      ["*"],
      ["*)(uid=*"],
      ["alice)(uid=*"],
      ["alice)(|(uid=*"],
      ["\\2a"],
      [")("],
      ["\\"],
      ["alice\u0000"],
    ])("injection %p with alice's password finds nobody", async (name) => {
      const f = failure(await login(searchMode(), name, FIXTURE.alice.password));
      expect(f.reason).toBe("unknown_user");
    });

    test("a filter that matches several entries is refused, not resolved to the first", async () => {
      const f = failure(
        await login(searchMode({ searchFilter: "(|(uid={user})(objectClass=inetOrgPerson))" }), "alice", "x"),
      );
      expect(f.reason).toBe("bad_credentials");
      expect(f.detail).toContain("more than one entry");
    });

    test("expired, must-change and locked accounts are reported in this mode too", async () => {
      expect(failure(await login(searchMode(), "carol", FIXTURE.carol.password)).reason).toBe(
        "expired_password",
      );
      expect(failure(await login(searchMode(), "erin", FIXTURE.erin.password)).reason).toBe(
        "expired_password",
      );
      expect(failure(await login(searchMode(), "dave", FIXTURE.dave.password)).reason).toBe("access_denied");
    });

    test("a wrong service-account password → unavailable naming the account and the fix", async () => {
      const f = failure(
        await login(searchMode({ serviceBindPassword: "stale" }), "alice", FIXTURE.alice.password),
      );
      expect(f.reason).toBe("unavailable");
      expect(f.detail).toContain(FIXTURE.service.dn);
      expect(f.detail).toContain("serviceBindDn");
      expect(f.detail).not.toContain("stale");
    });

    test("template bind can use the same group search (run with the service account)", async () => {
      const r = await login(
        template({
          ...groupSearch,
          serviceBindDn: FIXTURE.service.dn,
          serviceBindPassword: FIXTURE.service.password,
        }),
        "alice",
        FIXTURE.alice.password,
      );
      expect(r).toMatchObject({ ok: true, groups: ["cad-users", CAD_USERS_DN] });
    });
  });

  describe("Active Directory answers (slapd retcode overlay sends AD's diagnostic text)", () => {
    const ad = () => template({ bindDn: `cn={user},${RETCODE_DN}`, groupAttribute: "" });
    test.each([
      ["ad-wrong-password", "bad_credentials"],
      ["ad-expired", "expired_password"],
      ["ad-must-change", "expired_password"],
      ["ad-disabled", "access_denied"],
      ["ad-locked", "access_denied"],
    ])("%p → %p", async (name, reason) => {
      const f = failure(await login(ad(), name, "any-password"));
      expect(f.reason).toBe(reason);
      expect(f.detail).toContain("data ");
    });

    test("busy on every server → unavailable listing each", async () => {
      const f = failure(await login({ ...ad(), urls: [slapd.url, slapd.ldapsUrl] }, "busy", "x"));
      expect(f.reason).toBe("unavailable");
      expect(f.detail).toContain(slapd.url);
      expect(f.detail).toContain(slapd.ldapsUrl);
      expect(f.detail).toContain("result 51");
    });
  });

  describe("transport: TLS, failover, outages", () => {
    test("ldaps:// with the test CA", async () => {
      expect(
        await login(template({ urls: [slapd.ldapsUrl] }), "alice", FIXTURE.alice.password),
      ).toMatchObject({
        ok: true,
      });
    });

    test("StartTLS with a CA that did not sign the server's certificate → unavailable, certificate, fix", async () => {
      const f = failure(await login(template({ caCert: otherCa() }), "alice", FIXTURE.alice.password));
      expect(f.reason).toBe("unavailable");
      expect(f.detail).toContain(slapd.url);
      expect(f.detail).toContain("certificate");
      expect(f.detail).toContain("tls.trustedCa");
    });

    test("ldaps:// with the wrong CA is refused the same way", async () => {
      const f = failure(
        await login(template({ urls: [slapd.ldapsUrl], caCert: otherCa() }), "alice", FIXTURE.alice.password),
      );
      expect(f.reason).toBe("unavailable");
      expect(f.detail).toContain("certificate");
    });

    test("plain ldap:// is refused at construction unless allowInsecure", async () => {
      expect(() => createLdapAuthenticator(template({ startTls: false }))).toThrow(LdapConfigError);
      expect(() => createLdapAuthenticator(template({ startTls: false }))).toThrow(/allowInsecure/);
      const r = await login(
        template({ startTls: false, allowInsecure: true }),
        "alice",
        FIXTURE.alice.password,
      );
      expect(r).toMatchObject({ ok: true, user: "alice" });
    });

    test("directory down (nothing listening) → unavailable with server, cause and fix", async () => {
      const down = await closedPortUrl();
      const f = failure(await login(template({ urls: [down] }), "alice", FIXTURE.alice.password));
      expect(f.reason).toBe("unavailable");
      expect(f.detail).toContain(down);
      expect(f.detail).toContain("refused");
      expect(f.detail).toContain("fix:");
    });

    test("first server down, second up → success, and the dead one is logged", async () => {
      const down = await closedPortUrl();
      const before = logLines.length;
      const r = await login(template({ urls: [down, slapd.url] }), "alice", FIXTURE.alice.password);
      expect(r).toMatchObject({ ok: true, user: "alice" });
      expect(logLines.slice(before).join("\n")).toContain(down);
    });

    test("a wrong password is not retried on the next server", async () => {
      const silent = await silentListener();
      const f = failure(await login(template({ urls: [slapd.url, silent.url] }), "alice", "wrong"));
      expect(f.reason).toBe("bad_credentials");
      expect(silent.connections()).toBe(0);
    });

    test("a server that accepts but never answers → unavailable after the timeout", async () => {
      const silent = await silentListener();
      const f = failure(await login(template({ urls: [silent.url], timeoutMs: 300 }), "alice", "pw"));
      expect(f.reason).toBe("unavailable");
      expect(f.detail).toContain("no answer");
      expect(silent.connections()).toBe(1);
      expect(await settlesToZero(silent.open)).toBe(0);
    });

    test("an empty password never opens a connection", async () => {
      const silent = await silentListener();
      const opts = template({ urls: [silent.url], timeoutMs: 300 });
      expect(failure(await login(opts, "alice", "")).reason).toBe("bad_credentials");
      expect(silent.connections()).toBe(0);
      // The same setup does connect for a non-empty password, so the zero above is meaningful.
      await login(opts, "alice", "x");
      expect(silent.connections()).toBe(1);
      expect(await settlesToZero(silent.open)).toBe(0);
    });
  });

  describe("checkDirectory (diagnose)", () => {
    test("healthy: reachable, TLS trusted, service bind and bases ok", async () => {
      const checks = await checkDirectory(
        searchMode({
          urls: [slapd.url, slapd.ldapsUrl],
          groupSearchBase: GROUPS_DN,
          groupSearchFilter: "(member={dn})",
        }),
      );
      expect(checks.filter((c) => !c.ok)).toEqual([]);
      const names = checks.map((c) => c.name);
      expect(names).toContain(`ldap ${slapd.url} reachable`);
      expect(names).toContain(`ldap ${slapd.ldapsUrl} tls`);
      expect(names).toContain(`ldap ${slapd.url} service bind`);
      expect(names).toContain(`ldap ${slapd.url} searchBase`);
      expect(names).toContain(`ldap ${slapd.url} groupSearchBase`);
    });

    test("wrong CA: reachable but TLS not trusted; down: not reachable; bad password and base named", async () => {
      const down = await closedPortUrl();
      const checks = await checkDirectory(
        searchMode({ urls: [down, slapd.url], caCert: otherCa(), serviceBindPassword: "stale" }),
      );
      const byName = new Map(checks.map((c) => [c.name, c]));
      expect(byName.get(`ldap ${down} reachable`)).toMatchObject({ ok: false });
      expect(byName.get(`ldap ${down} reachable`)?.fix).not.toBe("");
      expect(byName.get(`ldap ${slapd.url} reachable`)).toMatchObject({ ok: true });
      expect(byName.get(`ldap ${slapd.url} tls`)).toMatchObject({ ok: false });
      expect(byName.get(`ldap ${slapd.url} tls`)?.fix).toContain("tls.trustedCa");

      const bad = await checkDirectory(
        searchMode({ serviceBindPassword: "stale", searchBase: "ou=nowhere,dc=x" }),
      );
      expect(bad.find((c) => c.name.endsWith("service bind"))).toMatchObject({ ok: false });
      const noBase = await checkDirectory(searchMode({ searchBase: "ou=nowhere,dc=corp,dc=example" }));
      expect(noBase.find((c) => c.name.endsWith("searchBase"))).toMatchObject({ ok: false });
    });

    test("a configuration mistake is one failed check, not a throw", async () => {
      const checks = await checkDirectory({ urls: ["http://dc1"], bindDn: TEMPLATE });
      expect(checks).toHaveLength(1);
      expect(checks[0]).toMatchObject({ name: "ldap configuration", ok: false });
    });
  });

  test("every connection to slapd was closed (none left ESTABLISHED)", async () => {
    const ports = [slapd.url, slapd.ldapsUrl].map((u) => Number(new URL(u).port));
    // Not vacuous: a connection this test leaves open is counted.
    const { Client } = await import("ldapts");
    const held = new Client({ url: slapd.url });
    await held.bind(FIXTURE.bob.dn, FIXTURE.bob.password).catch(() => {});
    expect(establishedTo(ports[0]!)).toBeGreaterThan(0);
    await held.unbind();
    expect(await settlesToZero(() => ports.reduce((n, p) => n + establishedTo(p), 0))).toBe(0);
  });

  test("no password ever reached a log line", () => {
    expect(logLines.length).toBeGreaterThan(0);
    const all = logLines.join("\n");
    for (const secret of [...Object.values(FIXTURE).map((u) => u.password), "not-alices-password", "stale"]) {
      expect(all).not.toContain(secret);
    }
  });
});

describe("construction refuses bad settings with the key and the fix", () => {
  test.each<[Partial<LdapOptions>, RegExp]>([
    [{ urls: [] }, /ldap\.urls/],
    [{ urls: ["http://dc1"] }, /ldap\.urls.*ldaps:\/\//],
    [{ bindDn: "uid=fixed,dc=x" }, /must contain \{user\}/],
    [{ bindDn: "uid={usr},dc=x" }, /unknown placeholder \{usr\}/],
    [{ bindDn: "", searchBase: "dc=x" }, /neither a bind DN template nor a search/],
    [{ bindDn: "", searchBase: "dc=x", searchFilter: "uid={user}" }, /not an LDAP filter/],
    [
      { bindDn: "", searchBase: "dc=x", searchFilter: "(&(uid={user})(oops))" },
      /ldap\.searchFilter.*not an LDAP filter/,
    ],
    [{ groupSearchBase: "ou=g,dc=x", groupSearchFilter: "(member={dn}" }, /ldap\.groupSearchFilter/],
    [{ serviceBindDn: "cn=svc", serviceBindPassword: "" }, /unauthenticated bind/],
    [{ caCert: "not a pem" }, /tls\.trustedCa/],
    [{ groupSearchBase: "ou=groups,dc=x" }, /groupSearchFilter/],
    [{ timeoutMs: 5 }, /ldap\.timeoutMs/],
    [{ urls: ["ldap://dc1"], startTls: false }, /ldap\.allowInsecure/],
  ])("%p", (bad, message) => {
    const base: LdapOptions = { urls: ["ldaps://dc1.corp.example"], bindDn: "{user}@{domain}" };
    expect(() => createLdapAuthenticator({ ...base, ...bad })).toThrow(message);
  });

  test("logon-name templates refuse names that would change the UPN, without a server", async () => {
    const auth = createLdapAuthenticator({ urls: ["ldaps://127.0.0.1:1"], bindDn: "{user}@{domain}" });
    for (const name of ["alice@evil.example", "a,b", "*", "CORP\\alice"]) {
      const r = await auth.authenticate(creds(name, "pw", "corp.example"), log);
      expect(r).toMatchObject({ ok: false, reason: "bad_credentials" });
      expect(failure(r).detail).toContain("cannot contain");
    }
    const r = await auth.authenticate(creds("alice", "pw", ""), log);
    expect(failure(r).detail).toContain("defaultDomain");
  });
});
