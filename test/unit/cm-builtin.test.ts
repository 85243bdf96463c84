// Claim: the built-in broker keeps the broker contract; offers `domains`; entitles by user name (any case), "*"
// and directory groups given as CN or DN (any case); asks authenticators in the configured order, the first
// that knows the user deciding; and local accounts are re-read from the users file at the next login.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Authenticator, AuthOutcome } from "../../src/cm/auth/authenticator.ts";
import {
  createLocalUsers,
  hashPassword,
  parseUsersFile,
  readUsersFile,
  writeUsersFile,
} from "../../src/cm/auth/local-users.ts";
import type { BrokerConversation } from "../../src/cm/brokers/broker.ts";
import { createBuiltinBroker, groupMatches } from "../../src/cm/brokers/builtin.ts";
import { createLogger, memoryDestination } from "../../src/observability/log.ts";
import { runBrokerContract } from "./cm-broker-contract.ts";

const PRODUCT = {
  productName: "pcoip-cmsg",
  productVersion: "0.1.0",
  platform: "linux",
  ipAddress: "127.0.0.1",
  hostname: "cm.test",
};
const dir = mkdtempSync(join(tmpdir(), "cm-builtin-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const sink = memoryDestination();
const log = createLogger({ level: "debug", destination: sink });

/** A directory stand-in: knows the users in `table`, answers like the Authenticator contract says. */
function directory(
  name: string,
  table: Record<string, { password: string; groups: string[] }>,
  down = false,
): Authenticator & { calls: number } {
  const a = {
    name,
    calls: 0,
    async authenticate(c: { username: string; password: string; domain: string }): Promise<AuthOutcome> {
      a.calls++;
      if (down) return { ok: false, reason: "unavailable", detail: `${name}: down` };
      const u = table[c.username];
      if (!u) return { ok: false, reason: "unknown_user", detail: `${name}: no such user` };
      if (u.password !== c.password)
        return { ok: false, reason: "bad_credentials", detail: `${name}: wrong` };
      return { ok: true, user: c.username, groups: u.groups, domain: c.domain || "corp.example" };
    },
  };
  return a;
}

runBrokerContract("builtin", async () => {
  const file = join(dir, "contract-users");
  await writeUsersFile(file, [{ name: "alice", hash: await hashPassword("pw") }]);
  return {
    broker: createBuiltinBroker({
      desktops: [{ id: "ws-1", name: "WS 1", agentHost: "127.0.0.1", users: ["alice"], groups: [] }],
      authenticators: [createLocalUsers({ file })],
      domains: [],
      brokerInfo: PRODUCT,
      pcmInfo: PRODUCT,
    }),
    good: { username: "alice", password: "pw", domain: "" },
    badPassword: "nope",
    entitledResourceId: "ws-1",
    unknownResourceId: "ws-404",
    close: async () => {},
  };
});

const ctx = () => ({ sessionLogId: crypto.randomUUID(), clientIp: "127.0.0.1", clientLogId: "", log });
const hello = {
  op: "hello",
  clientInfo: {
    productName: "c",
    productVersion: "1",
    platform: "p",
    locale: "en_US",
    hostname: "h",
    serialNumber: "",
    deviceName: "",
    pcoipUniqueId: "",
  },
  caps: [],
  serverAddress: { ipAddress: "", hostname: "" },
  isProbe: false,
  node: {},
} as const;
const list = { op: "get-resource-list", protocols: [], resourceTypes: [], node: {} } as const;
async function signIn(c: BrokerConversation, username: string, password: string) {
  await c.hello(hello);
  return c.authenticate({ op: "authenticate", method: "password", username, password, domain: "", node: {} });
}

describe("entitlements", () => {
  const dirAuth = directory("ldap", {
    carol: { password: "pw", groups: ["CN=CAD Users,OU=Groups,DC=corp,DC=example", "cn=other,dc=x"] },
    dave: { password: "pw", groups: [] },
    Erin: { password: "pw", groups: [] },
  });
  const broker = createBuiltinBroker({
    desktops: [
      { id: "cad-1", name: "CAD 1", agentHost: "10.0.0.1", users: [], groups: ["cad users"] },
      {
        id: "cad-2",
        name: "",
        agentHost: "10.0.0.2",
        users: [],
        groups: ["cn=cad users, ou=groups, dc=corp, dc=example"],
      },
      { id: "all", name: "Shared", agentHost: "10.0.0.3", agentPort: 60444, users: ["*"], groups: [] },
      { id: "erin-only", name: "E", agentHost: "10.0.0.4", hostname: "e.corp", users: ["erin"], groups: [] },
    ],
    authenticators: [dirAuth],
    domains: ["corp.example", "lab"],
    brokerInfo: PRODUCT,
    pcmInfo: PRODUCT,
  });

  test("hello offers the configured domains and password authentication", async () => {
    const r = await broker.openConversation(ctx()).hello(hello);
    expect(r.domains).toEqual(["corp.example", "lab"]);
    expect(r.authenticationMethods).toEqual(["AUTHENTICATE_VIA_PASSWORD"]);
    expect(r.pcm).toEqual(PRODUCT);
  });

  const rows: [string, string[]][] = [
    ["carol", ["cad-1", "cad-2", "all"]], // group by CN and by DN, case and blanks ignored
    ["dave", ["all"]],
    ["Erin", ["all", "erin-only"]], // user name without regard to case
  ];
  for (const [user, ids] of rows) {
    test(`${user} sees ${ids.join(", ")}`, async () => {
      const c = broker.openConversation(ctx());
      expect((await signIn(c, user, "pw")).resp.result.resultId).toBe("AUTH_SUCCESSFUL_AND_COMPLETE");
      const r = await c.getResourceList(list);
      expect(r.resources.map((x) => x.resourceId)).toEqual(ids);
      expect(r.resources[0]?.protocols).toEqual([{ name: "PCOIP", isDefault: true }]);
    });
  }

  test("allocation names the agent: port default 60443, hostname default the agent host", async () => {
    const c = broker.openConversation(ctx());
    await signIn(c, "Erin", "pw");
    const base = {
      op: "allocate-resource",
      protocol: "PCOIP",
      clientIpAddress: "",
      clientMacAddress: "",
      node: {},
    } as const;
    expect(await c.allocateResource({ ...base, resourceId: "erin-only" })).toEqual({
      kind: "launch",
      resourceId: "erin-only",
      agent: { host: "10.0.0.4", port: 60443, hostname: "e.corp" },
    });
    expect(await c.allocateResource({ ...base, resourceId: "all" })).toEqual({
      kind: "launch",
      resourceId: "all",
      agent: { host: "10.0.0.3", port: 60444, hostname: "10.0.0.3" },
    });
    // Not entitled and unknown look alike (no probing for desktop ids).
    const a = await c.allocateResource({ ...base, resourceId: "cad-1" });
    const b = await c.allocateResource({ ...base, resourceId: "nope" });
    expect(a).toEqual(b);
    expect(a.kind).toBe("refused");
  });

  test("no entitlement: LIST_FAILED_NO_ENTITLEMENT", async () => {
    const b2 = createBuiltinBroker({
      desktops: [{ id: "x", name: "X", agentHost: "h", users: ["someone"], groups: [] }],
      authenticators: [dirAuth],
      domains: [],
      brokerInfo: PRODUCT,
      pcmInfo: PRODUCT,
    });
    const c = b2.openConversation(ctx());
    await signIn(c, "dave", "pw");
    expect((await c.getResourceList(list)).result.resultId).toBe("LIST_FAILED_NO_ENTITLEMENT");
  });

  test("groupMatches: DN or CN, any case, escaped commas", () => {
    expect(groupMatches("cad users", "CN=CAD Users,OU=G,DC=x")).toBe(true);
    expect(groupMatches("cn=cad users,ou=g,dc=x", "CN=CAD Users, OU=G, DC=x")).toBe(true);
    expect(groupMatches("smith, john", "CN=Smith\\, John,OU=G")).toBe(true);
    expect(groupMatches("cad", "CN=CAD Users,OU=G")).toBe(false);
    expect(groupMatches("g", "OU=G,DC=x")).toBe(false);
  });
});

describe("authenticators in order", () => {
  const desktops = [{ id: "d", name: "D", agentHost: "h", users: ["*"], groups: [] }];
  const make = (auths: Authenticator[]) =>
    createBuiltinBroker({
      desktops,
      authenticators: auths,
      domains: [],
      brokerInfo: PRODUCT,
      pcmInfo: PRODUCT,
    });

  test("the first that knows the user decides; unknown passes on", async () => {
    const first = directory("ldap", { frank: { password: "ldap-pw", groups: [] } });
    const second = directory("local", {
      frank: { password: "local-pw", groups: [] },
      gina: { password: "g", groups: [] },
    });
    const b = make([first, second]);
    expect((await signIn(b.openConversation(ctx()), "frank", "local-pw")).resp.result.resultId).toBe(
      "AUTH_FAILED_UNKNOWN_USERNAME_OR_PASSWORD",
    );
    expect((await signIn(b.openConversation(ctx()), "frank", "ldap-pw")).resp.result.resultId).toBe(
      "AUTH_SUCCESSFUL_AND_COMPLETE",
    );
    expect((await signIn(b.openConversation(ctx()), "gina", "g")).resp.result.resultId).toBe(
      "AUTH_SUCCESSFUL_AND_COMPLETE",
    );
    expect((await signIn(b.openConversation(ctx()), "nobody", "x")).resp.result.resultId).toBe(
      "AUTH_FAILED_UNKNOWN_USERNAME_OR_PASSWORD",
    );
  });

  test("a directory that is down: local accounts still work; others get a broker failure", async () => {
    const b = make([directory("ldap", {}, true), directory("local", { hal: { password: "h", groups: [] } })]);
    expect((await signIn(b.openConversation(ctx()), "hal", "h")).resp.result.resultId).toBe(
      "AUTH_SUCCESSFUL_AND_COMPLETE",
    );
    const r = await signIn(b.openConversation(ctx()), "ivy", "x");
    expect(r.resp.result.resultId).toBe("AUTH_FAILED_BROKER_ERROR");
    expect(r.resp.result.resultStr).toBe("Error occurred while communicating with broker");
  });

  test("a non-password method is refused", async () => {
    const b = make([directory("local", {})]);
    const c = b.openConversation(ctx());
    await c.hello(hello);
    const r = await c.authenticate({
      op: "authenticate",
      method: "dialog",
      username: "",
      password: "",
      domain: "",
      node: {},
    });
    expect(r.resp.result.resultId).toBe("AUTH_FAILED_ACCESS_DENIED");
  });
});

describe("local users file", () => {
  let file: string;
  beforeAll(async () => {
    file = join(dir, "users");
    await writeUsersFile(file, [{ name: "Alice", hash: await hashPassword("one") }]);
  });

  test("argon2id hashes, names without regard to case, spelled as in the file", async () => {
    const users = createLocalUsers({ file });
    const ok = await users.authenticate({ username: "alice", password: "one", domain: "d" }, log);
    expect(ok).toEqual({ ok: true, user: "Alice", groups: [], domain: "d" });
    expect((await readUsersFile(file)).users[0]?.hash).toStartWith("$argon2id$");
    const bad = await users.authenticate({ username: "alice", password: "two", domain: "" }, log);
    expect(bad.ok === false && bad.reason).toBe("bad_credentials");
    const unknown = await users.authenticate({ username: "zed", password: "one", domain: "" }, log);
    expect(unknown.ok === false && unknown.reason).toBe("unknown_user");
  });

  test("a change to the file applies at the next login, without a restart", async () => {
    const users = createLocalUsers({ file });
    expect((await users.authenticate({ username: "bob", password: "b", domain: "" }, log)).ok).toBe(false);
    const current = (await readUsersFile(file)).users;
    await writeUsersFile(file, [...current, { name: "bob", hash: await hashPassword("b") }]);
    expect((await users.authenticate({ username: "bob", password: "b", domain: "" }, log)).ok).toBe(true);
    await writeUsersFile(file, current);
    expect((await users.authenticate({ username: "bob", password: "b", domain: "" }, log)).ok).toBe(false);
  });

  test("a missing file is no users; bad lines are reported and skipped", async () => {
    const users = createLocalUsers({ file: join(dir, "absent") });
    const r = await users.authenticate({ username: "a", password: "b", domain: "" }, log);
    expect(r.ok === false && r.reason).toBe("unknown_user");
    const parsed = parseUsersFile("# c\n\nok:$argon2id$x\nbroken line\nok:$argon2id$y\n:$argon2id$z\n");
    expect(parsed.users.map((u) => u.name)).toEqual(["ok"]);
    expect(parsed.problems.map((p) => p.line)).toEqual([4, 5, 6]);
  });

  test("the file is written with mode 0600", async () => {
    const f = join(dir, "mode");
    writeFileSync(f, "", { mode: 0o644 });
    await writeUsersFile(f, []);
    const { statSync } = await import("node:fs");
    expect(statSync(f).mode & 0o777).toBe(0o600);
  });
});

describe("authenticator refusals become client results", () => {
  const desktops = [{ id: "d", name: "D", agentHost: "h", users: ["*"], groups: [] }];
  /** An authenticator that refuses every login with `reason` (as a directory does for such an account). */
  const refusing = (reason: "expired_password" | "access_denied" | "bad_credentials"): Authenticator => ({
    name: "ldap",
    async authenticate() {
      return { ok: false, reason, detail: `ldap: ${reason}` };
    },
  });
  const make = (auths: Authenticator[]) =>
    createBuiltinBroker({
      desktops,
      authenticators: auths,
      domains: [],
      brokerInfo: PRODUCT,
      pcmInfo: PRODUCT,
    });

  const rows = [
    ["expired_password", "AUTH_FAILED_EXPIRED_PASSWORD"],
    ["access_denied", "AUTH_FAILED_ACCESS_DENIED"],
    ["bad_credentials", "AUTH_FAILED_UNKNOWN_USERNAME_OR_PASSWORD"],
  ] as const;
  for (const [reason, resultId] of rows) {
    test(`${reason} → ${resultId}, no identity, no desktops`, async () => {
      const c = make([refusing(reason)]).openConversation(ctx());
      const r = await signIn(c, "carol", "pw");
      expect(r.resp.result.resultId).toBe(resultId);
      expect(r.identity).toBeUndefined();
      expect((await c.getResourceList(list)).result.resultId).toBe("LIST_FAILED_NO_ENTITLEMENT");
    });
  }

  test("an expired or locked account decides: a later authenticator that knows the name is not asked", async () => {
    for (const reason of ["expired_password", "access_denied"] as const) {
      const local = directory("local", { carol: { password: "pw", groups: [] } });
      const r = await signIn(make([refusing(reason), local]).openConversation(ctx()), "carol", "pw");
      expect(r.resp.result.resultId).toBe(
        reason === "expired_password" ? "AUTH_FAILED_EXPIRED_PASSWORD" : "AUTH_FAILED_ACCESS_DENIED",
      );
      expect(local.calls).toBe(0);
    }
  });
});
