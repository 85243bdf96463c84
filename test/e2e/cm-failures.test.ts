// Claim: every way a conversation goes wrong reaches the client as HTTP 200 with the matching *-resp and a
// failure result (or <error-resp> for a body that is not a pcoip-client request, the vendor's bare-LF dummy POST
// included), never an HTTP error; a lost cookie is recovered by Client-Log-Id; bye works in any state; GET
// answers load balancers (503 while draining); a ::1 client works end to end; and the log holds no password,
// cookie or connect tag.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { rawConnect } from "../peers/raw-http.ts";
import { type Harness, startHarness } from "./cm-harness.ts";

let h: Harness;
const secrets: string[] = ["correct horse", "wrong-password-123"];
beforeAll(async () => {
  h = await startHarness({
    users: { alice: "correct horse", nodesk: "nodesk-pw" },
    agentTimeoutMs: 800,
    agent: { slowMs: 5000 },
  });
  secrets.push("nodesk-pw");
});
afterAll(async () => {
  await h?.close();
});

async function signedInListed(c: ReturnType<Harness["client"]>) {
  await c.hello();
  expect((await c.authenticate("alice", "correct horse")).resultId).toBe("AUTH_SUCCESSFUL_AND_COMPLETE");
  expect((await c.getResourceList()).resultId).toBe("LIST_SUCCESSFUL");
}

describe("sign-in failures", () => {
  test("wrong password, unknown user: AUTH_FAILED_UNKNOWN_USERNAME_OR_PASSWORD, retry allowed", async () => {
    const c = h.client();
    try {
      await c.hello();
      const wrong = await c.authenticate("alice", "wrong-password-123");
      expect(wrong.status).toBe(200);
      expect(wrong.resultId).toBe("AUTH_FAILED_UNKNOWN_USERNAME_OR_PASSWORD");
      expect(wrong.resultStr).toBe(
        "User authentication failed. Please re-enter username, password, and/or domain.",
      );
      const unknown = await c.authenticate("mallory", "wrong-password-123");
      expect(unknown.resultId).toBe("AUTH_FAILED_UNKNOWN_USERNAME_OR_PASSWORD");
      expect(unknown.body).toBe(wrong.body);
      expect((await c.getResourceList()).resultId).toBe("LIST_FAILED_NO_ENTITLEMENT");
      expect((await c.authenticate("alice", "correct horse")).resultId).toBe("AUTH_SUCCESSFUL_AND_COMPLETE");
    } finally {
      c.close();
    }
  });

  test("no entitlement: LIST_FAILED_NO_ENTITLEMENT, and allocation is refused", async () => {
    const c = h.client();
    try {
      await c.hello();
      expect((await c.authenticate("nodesk", "nodesk-pw")).resultId).toBe("AUTH_SUCCESSFUL_AND_COMPLETE");
      const list = await c.getResourceList();
      expect(list.resultId).toBe("LIST_FAILED_NO_ENTITLEMENT");
      expect(list.resultStr).toBe("User has not been assigned any remote workstations");
      const alloc = await c.allocate("ws-1");
      expect(alloc.resultId).toStartWith("ALLOC_FAILED_");
    } finally {
      c.close();
    }
  });
});

describe("agent failures reach the client as ALLOC_FAILED_*", () => {
  const rows: [Parameters<Harness["agent"]["setMode"]>[0], string, string][] = [
    [
      "user_auth",
      "ALLOC_FAILED_TO_ALLOCATE_AGENT",
      "The remote workstation did not accept the user name, password or domain",
    ],
    ["another_session", "ALLOC_FAILED_RESOURCE_IN_USE", "The remote workstation is in use by another user"],
    ["slow", "ALLOC_FAILED_TO_ALLOCATE_AGENT", "Timeout occurred while communicating with agent"],
    [
      "down",
      "ALLOC_FAILED_TO_ALLOCATE_BROKER_PORT_UNREACHABLE",
      "Error occurred while communicating with agent",
    ],
    ["bad_xml", "ALLOC_FAILED_TO_ALLOCATE_AGENT", "Error occurred while communicating with agent"],
    ["http_500", "ALLOC_FAILED_TO_ALLOCATE_AGENT", "Error occurred while communicating with agent"],
  ];
  for (const [mode, id, text] of rows) {
    test(`${mode}: ${id}, then a retry succeeds once the agent is back`, async () => {
      const c = h.client();
      try {
        await signedInListed(c);
        await h.agent.setMode(mode);
        const failed = await c.allocate("ws-1");
        expect(failed.status).toBe(200);
        expect(failed.resultId).toBe(id);
        expect(failed.resultStr).toBe(text);
        expect(failed.body).not.toContain("<target>");
        await h.agent.setMode("success");
        // The failed allocation kept the logon: the client may simply try again.
        expect((await c.allocate("ws-1")).resultId).toBe("ALLOC_SUCCESSFUL");
      } finally {
        await h.agent.setMode("success");
        c.close();
      }
    });
  }
});

describe("out of order", () => {
  test("each message before its time gets its own *-resp failure (HTTP 200)", async () => {
    const c = h.client();
    try {
      const auth = await c.authenticate("alice", "correct horse");
      expect([auth.status, auth.operation, auth.resultId]).toEqual([
        200,
        "authenticate-resp",
        "AUTH_FAILED_ACCESS_DENIED",
      ]);
      const list = await c.getResourceList();
      expect([list.status, list.operation, list.resultId]).toEqual([
        200,
        "get-resource-list-resp",
        "LIST_FAILED_NO_ENTITLEMENT",
      ]);
      const alloc = await c.allocate("ws-1");
      expect([alloc.status, alloc.operation, alloc.resultId]).toEqual([
        200,
        "allocate-resource-resp",
        "ALLOC_FAILED_RESOURCE_NOT_AVAILABLE",
      ]);
      expect(c.cookie).toBeUndefined();
      await c.hello();
      expect((await c.allocate("ws-1")).resultId).toBe("ALLOC_FAILED_RESOURCE_NOT_AVAILABLE");
      await c.authenticate("alice", "correct horse");
      expect((await c.allocate("ws-1")).resultId).toBe("ALLOC_FAILED_RESOURCE_NOT_AVAILABLE"); // list first
      expect((await c.authenticate("alice", "correct horse")).resultId).toBe("AUTH_FAILED_ACCESS_DENIED");
    } finally {
      c.close();
    }
  });

  test("a second allocation after a successful one needs a new sign-in (the password was dropped)", async () => {
    const c = h.client();
    try {
      await signedInListed(c);
      expect((await c.allocate("ws-1")).resultId).toBe("ALLOC_SUCCESSFUL");
      // Listing again is allowed after an allocation.
      expect((await c.getResourceList()).resultId).toBe("LIST_SUCCESSFUL");
      const again = await c.allocate("ws-1");
      expect(again.resultId).toBe("ALLOC_FAILED_RESOURCE_NOT_AVAILABLE");
      expect(again.resultStr).toContain("sign in again");
      // A new hello restarts the conversation on the same cookie; the sign-in then gives it a fresh one.
      const cookie = c.cookie;
      await c.hello();
      expect(c.cookie).toBe(cookie);
      await signedInListed(c);
      expect(c.cookie).not.toBe(cookie);
      expect((await c.allocate("ws-1")).resultId).toBe("ALLOC_SUCCESSFUL");
    } finally {
      c.close();
    }
  });

  test("bye in any state answers bye-resp and ends the session", async () => {
    const states: ((c: ReturnType<Harness["client"]>) => Promise<unknown>)[] = [
      async () => {},
      (c) => c.hello(),
      async (c) => {
        await c.hello();
        await c.authenticate("alice", "correct horse");
      },
      (c) => signedInListed(c),
      async (c) => {
        await signedInListed(c);
        await c.allocate("ws-1");
      },
    ];
    const before = h.cm.sessions.size;
    for (const reach of states) {
      const c = h.client();
      try {
        await reach(c);
        const bye = await c.bye();
        expect([bye.status, bye.operation]).toEqual([200, "bye-resp"]);
        expect((await c.getResourceList()).resultId).toBe("LIST_FAILED_NO_ENTITLEMENT");
      } finally {
        c.close();
      }
    }
    expect(h.cm.sessions.size).toBe(before);
  });
});

describe("cookies", () => {
  test("a client that never sends its cookie is followed by Client-Log-Id", async () => {
    const c = h.client({
      dropCookies: true,
      clientLogId: "7d3f1c2e-5a6b-4c7d-8e9f-0a1b2c3d4e5f",
      keepAlive: false,
    });
    try {
      const hello = await c.hello();
      expect(hello.headers.some(([k]) => k === "Set-Cookie")).toBe(true);
      expect((await c.authenticate("alice", "correct horse")).resultId).toBe("AUTH_SUCCESSFUL_AND_COMPLETE");
      // Found without the cookie: the cookie is offered again.
      const list = await c.getResourceList();
      expect(list.resultId).toBe("LIST_SUCCESSFUL");
      expect(list.headers.some(([k]) => k === "Set-Cookie")).toBe(true);
      expect((await c.allocate("ws-1")).resultId).toBe("ALLOC_SUCCESSFUL");
      expect(c.connections).toBe(4);
    } finally {
      c.close();
    }
  });

  test("an unknown or malformed cookie is no session", async () => {
    const c = h.client({ headers: [["Cookie", "JSESSIONID=00000000000000000000000000000000"]] });
    try {
      expect((await c.getResourceList()).resultId).toBe("LIST_FAILED_NO_ENTITLEMENT");
    } finally {
      c.close();
    }
  });
});

describe("bodies that are not pcoip-client requests", () => {
  test("the vendor's dummy POST over openssl s_client (bare LF, declaration only) gets <error-resp>", async () => {
    const raw = await rawConnect({ port: h.server.port, ca: h.ca });
    try {
      const body = '<?xml version="1.0" encoding="UTF-8"?>';
      raw.send(`POST /pcoip-broker/xml HTTP/1.1\nHost: cm\nContent-Length: ${body.length}\n\n${body}`);
      const text = await raw.waitFor((t) => t.includes("\r\n0\r\n\r\n"));
      expect(text).toStartWith("HTTP/1.1 200 ");
      expect(text).toContain("Transfer-Encoding: chunked");
      expect(text).toContain("<error-resp><result><result-id>PROTOCOL_ERROR_MALFORMED_REQUEST</result-id>");
    } finally {
      raw.end();
    }
  });

  const cases: [string, string, string][] = [
    ["not XML", "hello there", "PROTOCOL_ERROR_MALFORMED_REQUEST"],
    ["wrong root", "<pcoip-agent version='1.0'><bye/></pcoip-agent>", "PROTOCOL_ERROR_MALFORMED_REQUEST"],
    [
      "unknown operation",
      "<pcoip-client version='2.1'><reboot-everything/></pcoip-client>",
      "PROTOCOL_ERROR_UNKNOWN_OPERATION",
    ],
    [
      "XXE",
      `<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><pcoip-client version="2.1"><hello><client-info><hostname>&x;</hostname></client-info></hello></pcoip-client>`,
      "PROTOCOL_ERROR_MALFORMED_REQUEST",
    ],
    [
      "billion laughs",
      `<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">]><pcoip-client version="2.1"><bye>&d;&d;&d;&d;</bye></pcoip-client>`,
      "PROTOCOL_ERROR_MALFORMED_REQUEST",
    ],
  ];
  for (const [name, body, id] of cases) {
    test(`${name} → 200 <error-resp> ${id}, no session`, async () => {
      const c = h.client();
      try {
        const a = await c.post(body);
        expect(a.status).toBe(200);
        expect(a.operation).toBe("error-resp");
        expect(a.resultId).toBe(id);
        expect(a.body).not.toContain("root:");
        expect(c.cookie).toBeUndefined();
      } finally {
        c.close();
      }
    });
  }

  test("trailing slash is the same endpoint", async () => {
    const c = h.client();
    try {
      const a = await c.post("<pcoip-client version='2.1'><bye/></pcoip-client>", {
        path: "/pcoip-broker/xml/",
      });
      expect([a.status, a.operation]).toEqual([200, "bye-resp"]);
    } finally {
      c.close();
    }
  });
});

describe("load balancer health", () => {
  test("GET → 200; 503 while draining; 200 again", async () => {
    const get = async () => {
      const raw = await rawConnect({ port: h.server.port, ca: h.ca });
      try {
        raw.send("GET /pcoip-broker/xml HTTP/1.1\r\nHost: cm\r\n\r\n");
        return (await raw.waitFor((t) => t.includes("\r\n0\r\n\r\n"))).slice(0, 12);
      } finally {
        raw.end();
      }
    };
    expect(await get()).toBe("HTTP/1.1 200");
    h.node.setDraining(true);
    try {
      expect(await get()).toBe("HTTP/1.1 503");
    } finally {
      h.node.setDraining(false);
    }
    expect(await get()).toBe("HTTP/1.1 200");
  });
});

describe("IPv6", () => {
  test("a ::1 client, end to end, is ::1 everywhere", async () => {
    const v6 = await startHarness({ hostname: "::1", agent: { hostname: "::1" } });
    try {
      const c = v6.client();
      try {
        await signedInListed(c);
        const alloc = await c.allocate("ws-1");
        expect(alloc.resultId).toBe("ALLOC_SUCCESSFUL");
        expect(alloc.msg?.op === "allocate-resource-resp" && alloc.msg.target?.ipAddress).toBe("::1");
        expect(v6.agent.requests.at(-1)?.clientIp).toBe("::1");
        expect(v6.logs.text()).toContain('"clientIp":"::1"');
      } finally {
        c.close();
      }
    } finally {
      await v6.close();
    }
  });
});

describe("secrets", () => {
  test("no password, cookie value or connect tag in the log", async () => {
    const c = h.client();
    let tag = "";
    try {
      await signedInListed(c);
      const alloc = await c.allocate("ws-1");
      tag = alloc.msg?.op === "allocate-resource-resp" ? (alloc.msg.target?.connectTag ?? "") : "";
      await c.bye();
    } finally {
      c.close();
    }
    expect(tag).toStartWith("SCS1");
    expect(c.cookie).toMatch(/^[0-9a-f]{32}$/);
    const text = h.logs.text();
    expect(text.length).toBeGreaterThan(1000);
    for (const s of [...secrets, c.cookie!, tag]) expect(text).not.toContain(s);
    for (const s of h.agent.requests) expect(text).not.toContain(s.logon.password);
  });
});
