/**
 * The whole sign-in path with a directory (issue 8's end-to-end case): a PCoIP client signs in to the
 * appliance process, the CM checks the password against a real slapd over StartTLS (test CA), the user's
 * group (memberOf) entitles a desktop, and the fake agent's launch-session carries the same user, password and
 * domain. A user outside the group sees only the desktop open to everyone; a wrong password is refused.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { type ApplianceProcess, startApplianceProcess } from "../peers/appliance-process.ts";
import { type FakeAgent, startFakeAgent } from "../peers/fake-agent.ts";
import { pcoipClient } from "../peers/pcoip-client.ts";
import { FIXTURE, PEOPLE_DN, type SlapdPeer, slapdMissing, startSlapd } from "../peers/slapd.ts";

const missing = slapdMissing();

describe.skipIf(Boolean(missing))("client → CM → LDAP → agent", () => {
  let slapd: SlapdPeer;
  let agent: FakeAgent;
  let app: ApplianceProcess;

  beforeAll(async () => {
    slapd = await startSlapd();
    agent = await startFakeAgent();
    const agentAddr = `127.0.0.1:${agent.port}`;
    app = await startApplianceProcess({
      users: {},
      tables: `
[ldap]
url = "${slapd.url}"
bindDn = "uid={user},${PEOPLE_DN}"
startTls = true
groupAttribute = "memberOf"
defaultDomain = "corp.example"

[[desktops]]
id = "cad-ws"
name = "CAD workstation"
agent = "${agentAddr}"
hostname = "desktop-1.test"
groups = ["cad-users"]

[[desktops]]
id = "office"
name = "Office desktop"
agent = "${agentAddr}"
hostname = "desktop-1.test"
users = ["*"]
`,
    });
  });

  afterAll(async () => {
    await app?.kill();
    app?.cleanup();
    await agent?.close();
    await slapd?.stop();
  });

  const client = () => {
    const [host, port] = app.cm.split(":");
    return pcoipClient({ host: host!, port: Number(port), ca: app.ca, servername: "localhost" });
  };

  test("alice (in cad-users) gets both desktops and launches one with her directory password and domain", async () => {
    const c = client();
    try {
      expect((await c.hello()).operation).toBe("hello-resp");
      const auth = await c.authenticate("alice", FIXTURE.alice.password, "corp.example");
      expect(auth.resultId).toBe("AUTH_SUCCESSFUL_AND_COMPLETE");
      const list = await c.getResourceList();
      expect(list.body).toContain("<resource-id>cad-ws</resource-id>");
      expect(list.body).toContain("<resource-id>office</resource-id>");
      const before = agent.requests.length;
      const alloc = await c.allocate("cad-ws");
      expect(alloc.resultId).toBe("ALLOC_SUCCESSFUL");
      expect(agent.requests.length).toBe(before + 1);
      const launch = agent.requests.at(-1)!;
      expect(launch.logon).toMatchObject({
        username: "alice",
        password: FIXTURE.alice.password,
        domain: "corp.example",
      });
      // The audit line names the user; no line anywhere holds the password.
      const audit = app.logs.find((l) => l.event === "login_ok" && l.user === "alice");
      expect(audit).toBeDefined();
      expect(JSON.stringify(app.logs)).not.toContain(FIXTURE.alice.password);
    } finally {
      c.close();
    }
  });

  test("bob (in no group) sees only the desktop open to everyone and cannot allocate the group's", async () => {
    const c = client();
    try {
      await c.hello();
      expect((await c.authenticate("bob", FIXTURE.bob.password)).resultId).toBe(
        "AUTH_SUCCESSFUL_AND_COMPLETE",
      );
      const list = await c.getResourceList();
      expect(list.body).not.toContain("<resource-id>cad-ws</resource-id>");
      expect(list.body).toContain("<resource-id>office</resource-id>");
      const alloc = await c.allocate("cad-ws");
      expect(alloc.resultId).not.toBe("ALLOC_SUCCESSFUL");
    } finally {
      c.close();
    }
  });

  test("a wrong directory password is refused and never reaches the agent or the log", async () => {
    const c = client();
    try {
      await c.hello();
      const before = agent.requests.length;
      const auth = await c.authenticate("alice", "definitely-wrong-pw");
      expect(auth.resultId).toBe("AUTH_FAILED_UNKNOWN_USERNAME_OR_PASSWORD");
      expect(agent.requests.length).toBe(before);
      expect(JSON.stringify(app.logs)).not.toContain("definitely-wrong-pw");
    } finally {
      c.close();
    }
  });
});

/**
 * `[auth] order` with both a users file and a directory: bob has a local account whose password differs from
 * his directory one. Local first: the first authenticator that knows the name decides, so only the local
 * password signs in; directory first: only the directory one does. A directory account that is expired (carol)
 * or locked (dave) gets the matching result through the whole appliance, not a generic wrong-password answer.
 */
describe.skipIf(Boolean(missing))("auth order: local accounts and the directory", () => {
  const BOB_LOCAL = "bob-local-only-pw";
  let slapd: SlapdPeer;
  let localFirst: ApplianceProcess;
  let ldapFirst: ApplianceProcess;

  const tables = (order: string) => `
[ldap]
url = "${slapd.url}"
bindDn = "uid={user},${PEOPLE_DN}"
startTls = true
defaultDomain = "corp.example"

[auth]
order = ${order}
`;

  beforeAll(async () => {
    expect(BOB_LOCAL).not.toBe(FIXTURE.bob.password);
    slapd = await startSlapd();
    localFirst = await startApplianceProcess({
      users: { bob: BOB_LOCAL },
      tables: tables('["local", "ldap"]'),
    });
    ldapFirst = await startApplianceProcess({
      users: { bob: BOB_LOCAL },
      tables: tables('["ldap", "local"]'),
    });
  }, 60_000);

  afterAll(async () => {
    await localFirst?.kill();
    localFirst?.cleanup();
    await ldapFirst?.kill();
    ldapFirst?.cleanup();
    await slapd?.stop();
  });

  /** hello + authenticate on a fresh connection; the answer's result id. */
  const signIn = async (app: ApplianceProcess, user: string, password: string): Promise<string> => {
    const [host, port] = app.cm.split(":");
    const c = pcoipClient({ host: host!, port: Number(port), ca: app.ca, servername: "localhost" });
    try {
      expect((await c.hello()).operation).toBe("hello-resp");
      return (await c.authenticate(user, password, "corp.example")).resultId;
    } finally {
      c.close();
    }
  };

  test('order ["local","ldap"]: bob\'s local password signs in, his directory one does not', async () => {
    expect(await signIn(localFirst, "bob", BOB_LOCAL)).toBe("AUTH_SUCCESSFUL_AND_COMPLETE");
    expect(await signIn(localFirst, "bob", FIXTURE.bob.password)).toBe(
      "AUTH_FAILED_UNKNOWN_USERNAME_OR_PASSWORD",
    );
    // A directory user without a local account still gets through to the directory.
    expect(await signIn(localFirst, "alice", FIXTURE.alice.password)).toBe("AUTH_SUCCESSFUL_AND_COMPLETE");
    const logs = JSON.stringify(localFirst.logs);
    expect(logs).not.toContain(BOB_LOCAL);
    expect(logs).not.toContain(FIXTURE.bob.password);
  }, 30_000);

  test('order ["ldap","local"]: bob\'s directory password signs in, his local one does not', async () => {
    expect(await signIn(ldapFirst, "bob", FIXTURE.bob.password)).toBe("AUTH_SUCCESSFUL_AND_COMPLETE");
    expect(await signIn(ldapFirst, "bob", BOB_LOCAL)).toBe("AUTH_FAILED_UNKNOWN_USERNAME_OR_PASSWORD");
  }, 30_000);

  test("carol's expired directory password → AUTH_FAILED_EXPIRED_PASSWORD (either order)", async () => {
    expect(await signIn(ldapFirst, "carol", FIXTURE.carol.password)).toBe("AUTH_FAILED_EXPIRED_PASSWORD");
    expect(await signIn(localFirst, "carol", FIXTURE.carol.password)).toBe("AUTH_FAILED_EXPIRED_PASSWORD");
  }, 30_000);

  test("dave's locked directory account → AUTH_FAILED_ACCESS_DENIED (either order)", async () => {
    expect(await signIn(ldapFirst, "dave", FIXTURE.dave.password)).toBe("AUTH_FAILED_ACCESS_DENIED");
    expect(await signIn(localFirst, "dave", FIXTURE.dave.password)).toBe("AUTH_FAILED_ACCESS_DENIED");
  }, 30_000);
});
