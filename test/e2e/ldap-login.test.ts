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
