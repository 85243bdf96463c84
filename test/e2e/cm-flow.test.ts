// Claim: a client that speaks like the real PCoIP client completes probe → hello → authenticate → list →
// allocate → bye against the CM over real TLS (net/http1.ts), with the built-in broker, a local account and a
// fake agent; the answers have the wire shape real clients need; failures reach the client as the matching
// *-resp with a failure result, never as HTTP errors.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { type Harness, startHarness } from "./cm-harness.ts";

let h: Harness;
beforeAll(async () => {
  h = await startHarness({ users: { alice: "correct horse", bob: 'b0b\'s <pw> & "x"' } });
});
afterAll(async () => {
  await h?.close();
});

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

describe("happy path", () => {
  test("probe, hello, authenticate, list, allocate, bye", async () => {
    const logId = "a1ff3a80-8801-1038-a9bd-00505680aded";
    const c = h.client({ clientLogId: logId });
    try {
      const probe = await c.probe();
      expect(probe.status).toBe(200);
      expect(probe.operation).toBe("hello-resp");
      expect(probe.headers.some(([k]) => k.toLowerCase() === "set-cookie")).toBe(false);
      expect(c.cookie).toBeUndefined();
      expect(h.cm.sessions.size).toBe(0);

      const hello = await c.hello();
      expect(hello.chunked).toBe(true);
      expect(hello.head).toContain("\r\nContent-Type: application/xml; charset=UTF-8");
      expect(hello.body.startsWith('<?xml version="1.0" encoding="UTF-8"?>')).toBe(true);
      const setCookie = hello.headers.find(([k]) => k === "Set-Cookie");
      expect(setCookie?.[1]).toMatch(/^JSESSIONID=[0-9a-f]{32}; Path=\/; Secure; HttpOnly$/);
      expect(c.cookie).toMatch(/^[0-9a-f]{32}$/);
      expect(hello.msg?.op === "hello-resp" && hello.msg.domains).toEqual(["corp.example"]);
      expect(hello.body).toContain("<method>AUTHENTICATE_VIA_PASSWORD</method>");
      expect(hello.body).toContain("<pcm-info>");

      const preLogin = c.cookie;
      const auth = await c.authenticate("alice", "correct horse", "corp.example");
      expect(auth.resultId).toBe("AUTH_SUCCESSFUL_AND_COMPLETE");
      // A fresh cookie at sign-in (the pre-login value names nothing now); otherwise it is not sent again.
      expect(auth.headers.find(([k]) => k === "Set-Cookie")?.[1]).toMatch(/^JSESSIONID=[0-9a-f]{32}; /);
      expect(c.cookie).not.toBe(preLogin);

      const list = await c.getResourceList();
      expect(list.resultId).toBe("LIST_SUCCESSFUL");
      expect(list.headers.some(([k]) => k === "Set-Cookie")).toBe(false);
      expect(
        list.msg?.op === "get-resource-list-resp" && list.msg.resources.map((r) => r.resourceId),
      ).toEqual(["ws-1"]);

      const alloc = await c.allocate("ws-1");
      expect(alloc.resultId).toBe("ALLOC_SUCCESSFUL");
      const t = alloc.msg?.op === "allocate-resource-resp" ? alloc.msg.target : undefined;
      const si = h.agent.lastSessionInfo!;
      expect(t).toEqual({
        ipAddress: "127.0.0.1",
        hostname: "desktop-1.test",
        sni: "desktop-1.test",
        port: 4172,
        sessionId: si.sessionId,
        connectTag: si.sessionTag,
      });
      expect(t?.connectTag).toMatch(/^SCS1[A-Za-z0-9+/=]{100}$/);
      expect(BigInt(si.sessionId) >= 2305843009213693957n).toBe(true);

      const launched = h.agent.requests.at(-1)!;
      expect(launched.logon).toEqual({
        method: "windows-password",
        username: "alice",
        password: "correct horse",
        domain: "corp.example",
      });
      // The session id is the server's own UUID, not the client's Client-Log-Id (logged beside it).
      expect(launched.sessionLogId).toMatch(UUID);
      expect(launched.sessionLogId).not.toBe(logId);
      expect(launched.clientIp).toBe("127.0.0.1");
      expect(launched.clientName).toBe("laptop-17");
      expect(launched.clientMac).toBe("02:42:ac:11:00:02");
      expect(launched.hostname).toBe("desktop-1.test");

      const bye = await c.bye();
      expect(bye.operation).toBe("bye-resp");
      expect(h.cm.sessions.size).toBe(0);
      expect(c.connections).toBe(1); // one kept-alive connection carried the whole conversation
    } finally {
      c.close();
    }
  });

  test("every log line of the session carries the session id; audit lines for login and allocation", async () => {
    const logId = "0b7e4c1a-1111-4222-8333-444455556666";
    const c = h.client({ clientLogId: logId });
    try {
      await c.hello();
      await c.authenticate("alice", "correct horse");
      await c.getResourceList();
      await c.allocate("ws-1");
      await c.bye();
    } finally {
      c.close();
    }
    const all = h.logs.lines().map((l) => JSON.parse(l) as Record<string, unknown>);
    const opened = all.find((l) => l.msg === "pre-session opened" && l.clientLogId === logId);
    expect(opened?.sessionId).toMatch(UUID);
    const mine = all.filter((l) => l.sessionId === opened?.sessionId);
    expect(mine.some((l) => l.audit === true && l.event === "login_ok" && l.user === "alice")).toBe(true);
    expect(
      mine.some(
        (l) =>
          l.audit === true && l.event === "allocation" && l.clientIp === "127.0.0.1" && l.user === "alice",
      ),
    ).toBe(true);
  });

  test("a password full of XML specials reaches the agent intact", async () => {
    const c = h.client();
    try {
      await c.hello();
      await c.authenticate("bob", 'b0b\'s <pw> & "x"');
      await c.getResourceList();
      const alloc = await c.allocate("ws-1");
      // bob is not entitled to ws-1.
      expect(alloc.resultId).toBe("ALLOC_FAILED_RESOURCE_NOT_AVAILABLE");
    } finally {
      c.close();
    }
  });

  test("a new UUIDv4 session id when Client-Log-Id is not UUID-shaped", async () => {
    const c = h.client({ clientLogId: "not-a-uuid" });
    try {
      await c.hello();
      await c.authenticate("alice", "correct horse");
      await c.getResourceList();
      await c.allocate("ws-1");
      expect(h.agent.requests.at(-1)!.sessionLogId).toMatch(UUID);
    } finally {
      c.close();
    }
  });
});
