// Claim: a session is keyed by what the server makes, never by what a client says (issue 16 #2, #10, #12). Two
// users sending the same Client-Log-Id get two sessions — two admissions, two session ids, neither replaced — and
// the log id is only a logged field. The JSESSIONID seen before sign-in names nothing after it. The Client-Log-Id
// fallback cannot resume a conversation that its cookie has continued (a second client behind the same NAT with the
// victim's log id gets nothing), while a cookie-less client still signs in by it, from its own IP only.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { type FakeAgent, startFakeAgent } from "../peers/fake-agent.ts";
import { type InProcessAppliance, startInProcessAppliance } from "../peers/in-process-appliance.ts";

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
let agent: FakeAgent;
let a: InProcessAppliance;

beforeAll(async () => {
  agent = await startFakeAgent({ endpoint: true });
  a = await startInProcessAppliance({
    agent,
    users: { alice: "correct horse", bob: "battery staple" },
  });
});
afterAll(async () => {
  await a?.stop();
  await agent?.close();
});

const lines = () => a.logs.lines().map((l) => JSON.parse(l) as Record<string, unknown>);

describe("#2 the session id is the server's", () => {
  test("two users with the same Client-Log-Id: two admissions, two session ids, nothing replaced", async () => {
    const shared = crypto.randomUUID();
    const before = a.appliance.admissions!.counters.removed.replaced;
    const alice = await a.allocate({ clientLogId: shared });
    const bob = await a.allocate({ user: "bob", password: "battery staple", clientLogId: shared });
    expect([alice.resultId, bob.resultId]).toEqual(["ALLOC_SUCCESSFUL", "ALLOC_SUCCESSFUL"]);
    expect(a.appliance.admissions!.counters.removed.replaced - before).toBe(0);
    const audits = lines().filter((l) => l.audit === true && l.event === "allocation");
    const ids = ["alice", "bob"].map((u) => audits.findLast((l) => l.user === u)?.sessionId);
    expect(ids[0]).toMatch(UUID);
    expect(ids[1]).toMatch(UUID);
    expect(ids[0]).not.toBe(ids[1]);
    expect(ids).not.toContain(shared);
    for (const id of ids) expect(a.appliance.admissions!.get(String(id))?.state).toBe("pending");
    // The client's id is kept for correlation, as a field.
    const opened = lines().filter((l) => l.msg === "pre-session opened" && l.clientLogId === shared);
    expect(opened.map((l) => l.sessionId).sort()).toEqual([...ids].sort());
  });
});

describe("#10 a fresh JSESSIONID at sign-in", () => {
  test("the pre-login cookie answers as an unknown session after authenticate", async () => {
    const c = a.client();
    try {
      await c.hello();
      const preLogin = c.cookie!;
      expect((await c.authenticate("alice", "correct horse")).resultId).toBe("AUTH_SUCCESSFUL_AND_COMPLETE");
      expect(c.cookie).toMatch(/^[0-9a-f]{32}$/);
      expect(c.cookie).not.toBe(preLogin);
      // Someone holding the old value (a shared machine, a proxy's log) gets no session.
      const thief = a.client({ dropCookies: true, headers: [["Cookie", `JSESSIONID=${preLogin}`]] });
      try {
        const stolen = await thief.getResourceList();
        expect(stolen.resultId).toBe("LIST_FAILED_NO_ENTITLEMENT");
        expect(stolen.headers.some(([k]) => k === "Set-Cookie")).toBe(false);
      } finally {
        thief.close();
      }
      expect((await c.getResourceList()).resultId).toBe("LIST_SUCCESSFUL");
    } finally {
      c.close();
    }
  });
});

describe("#12 the Client-Log-Id fallback", () => {
  test("cannot resume a conversation its cookie has continued, even from the same IP", async () => {
    const logId = crypto.randomUUID();
    const victim = a.client({ clientLogId: logId });
    const neighbour = a.client({ clientLogId: logId, dropCookies: true }); // same NAT address, no cookie
    try {
      await victim.hello();
      expect((await victim.authenticate("alice", "correct horse")).resultId).toBe(
        "AUTH_SUCCESSFUL_AND_COMPLETE",
      );
      expect((await victim.getResourceList()).resultId).toBe("LIST_SUCCESSFUL");
      const list = await neighbour.getResourceList();
      expect(list.resultId).toBe("LIST_FAILED_NO_ENTITLEMENT");
      expect(list.body).not.toContain("desktop-1");
      expect((await neighbour.allocate("desktop-1")).resultId).toBe("ALLOC_FAILED_RESOURCE_NOT_AVAILABLE");
      // The victim goes on undisturbed.
      expect((await victim.allocate("desktop-1")).resultId).toBe("ALLOC_SUCCESSFUL");
    } finally {
      victim.close();
      neighbour.close();
    }
  });

  test("a cookie-less client still signs in by it, from its own IP only", async () => {
    const logId = crypto.randomUUID();
    const c = a.client({ clientLogId: logId, dropCookies: true, keepAlive: false });
    const elsewhere = a.client({ clientLogId: logId, dropCookies: true, localAddress: "127.0.0.2" });
    try {
      await c.hello();
      expect((await c.authenticate("alice", "correct horse")).resultId).toBe("AUTH_SUCCESSFUL_AND_COMPLETE");
      expect((await elsewhere.getResourceList()).resultId).toBe("LIST_FAILED_NO_ENTITLEMENT");
      expect((await c.getResourceList()).resultId).toBe("LIST_SUCCESSFUL");
      expect((await c.allocate("desktop-1")).resultId).toBe("ALLOC_SUCCESSFUL");
    } finally {
      c.close();
      elsewhere.close();
    }
  });
});
