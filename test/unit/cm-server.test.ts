// Claim: the CM's hono app, driven in-process with app.request (the wire is covered by test/e2e/cm-*): routes
// with and without the trailing slash, GET for load balancers (503 while draining or not ready), the 64 KiB
// body limit enforced in the app itself before the handler (also for chunked bodies), the cookie shape, the
// probe without a cookie, X-Forwarded-For believed only from trusted proxies, and never an HTTP 500.
import { afterAll, describe, expect, test } from "bun:test";
import { createAgentClient } from "../../src/cm/agent-client.ts";
import type { Authenticator } from "../../src/cm/auth/authenticator.ts";
import { createBuiltinBroker } from "../../src/cm/brokers/builtin.ts";
import { createCmApp, standaloneNodeState } from "../../src/cm/server.ts";
import { compileTrustedProxies } from "../../src/net/client-address.ts";
import type { ConnInfo } from "../../src/net/http1.ts";
import { createLogger, memoryDestination } from "../../src/observability/log.ts";

const PRODUCT = {
  productName: "p",
  productVersion: "1",
  platform: "linux",
  ipAddress: "127.0.0.1",
  hostname: "cm",
};
const sink = memoryDestination();
const log = createLogger({ level: "debug", destination: sink });
/** A directory stand-in: "alice"/"pw" only. */
const directory: Authenticator = {
  name: "ldap",
  async authenticate(c) {
    if (c.username === "alice" && c.password === "pw")
      return { ok: true, user: "alice", groups: [], domain: c.domain };
    return { ok: false, reason: "bad_credentials", detail: "wrong" };
  },
};
const broker = createBuiltinBroker({
  desktops: [{ id: "ws-1", name: "WS", agentHost: "127.0.0.1", agentPort: 1, users: ["alice"], groups: [] }],
  authenticators: [directory],
  domains: ["corp"],
  brokerInfo: PRODUCT,
  pcmInfo: PRODUCT,
});
const node = standaloneNodeState({});
const cm = createCmApp({
  node,
  log,
  broker,
  agentClient: createAgentClient({ timeoutMs: 500 }),
  trustedProxies: compileTrustedProxies(["10.0.0.2"]),
  sweepEveryMs: 0,
});
afterAll(() => cm.close());

const env = (remoteAddress = "127.0.0.1"): ConnInfo => ({
  remoteAddress,
  remotePort: 50000,
  localPort: 443,
  tls: true,
});
const doc = (inner: string) => `<?xml version='1.0'?><pcoip-client version='2.1'>${inner}</pcoip-client>`;
const HELLO = doc(
  "<hello><client-info><product-name>Teradici PCoIP Desktop Client</product-name><hostname>h</hostname></client-info></hello>",
);
const SIGN_IN = doc(
  "<authenticate method='password'><username>alice</username><password>pw</password><domain/></authenticate>",
);
const LIST = doc("<get-resource-list/>");
const PROBE = doc("<hello><client-info><product-name>QueryBrokerClient</product-name></client-info></hello>");
const post = (
  body: string,
  headers: Record<string, string> = {},
  path = "/pcoip-broker/xml",
  peer?: string,
) =>
  cm.app.request(
    path,
    { method: "POST", body, headers: { "Content-Type": "text/xml", ...headers } },
    env(peer),
  );

describe("routes", () => {
  test("POST with and without the trailing slash; XML with declaration; application/xml; charset=UTF-8", async () => {
    for (const path of ["/pcoip-broker/xml", "/pcoip-broker/xml/"]) {
      const r = await post(doc("<bye/>"), {}, path);
      expect(r.status).toBe(200);
      expect(r.headers.get("content-type")).toBe("application/xml; charset=UTF-8");
      expect(await r.text()).toStartWith('<?xml version="1.0" encoding="UTF-8"?>');
    }
  });

  test("GET: 200, 503 while draining or not ready", async () => {
    expect((await cm.app.request("/pcoip-broker/xml", {}, env())).status).toBe(200);
    expect((await cm.app.request("/pcoip-broker/xml/", {}, env())).status).toBe(200);
    node.setDraining(true);
    expect((await cm.app.request("/pcoip-broker/xml", {}, env())).status).toBe(503);
    node.setDraining(false);
    cm.setReady(false);
    expect((await cm.app.request("/pcoip-broker/xml", {}, env())).status).toBe(503);
    cm.setReady(true);
    expect((await cm.app.request("/pcoip-broker/xml", {}, env())).status).toBe(200);
  });

  test("other paths: 404", async () => {
    expect((await cm.app.request("/", {}, env())).status).toBe(404);
    expect((await post(doc("<bye/>"), {}, "/pcoip-broker/xmlx")).status).toBe(404);
  });
});

describe("body limit", () => {
  test("over 64 KiB by Content-Length: error-resp before the handler", async () => {
    const big = doc(`<hello><client-info><hostname>${"a".repeat(70_000)}</hostname></client-info></hello>`);
    const r = await post(big);
    expect(r.status).toBe(200);
    expect(await r.text()).toContain("<result-id>PROTOCOL_ERROR_REQUEST_TOO_LARGE</result-id>");
  });

  test("over 64 KiB as a stream without Content-Length: counted and refused", async () => {
    let sent = 0;
    const stream = new ReadableStream<Uint8Array>({
      pull(ctrl) {
        if (sent >= 200_000) return ctrl.close();
        sent += 16_384;
        ctrl.enqueue(new Uint8Array(16_384).fill(0x61));
      },
    });
    const r = await cm.app.request(
      "/pcoip-broker/xml",
      {
        method: "POST",
        body: stream,
        headers: { "Transfer-Encoding": "chunked" },
        duplex: "half",
      } as RequestInit,
      env(),
    );
    expect(await r.text()).toContain("PROTOCOL_ERROR_REQUEST_TOO_LARGE");
    expect(sent).toBeLessThan(200_000); // reading stopped at the limit
  });
});

describe("sessions and cookies", () => {
  test("the probe opens nothing; a real hello sets JSESSIONID (32 hex, Secure, HttpOnly, Path=/)", async () => {
    const before = cm.sessions.size;
    const probe = await post(PROBE);
    expect(probe.headers.get("set-cookie")).toBeNull();
    expect(cm.sessions.size).toBe(before);
    const hello = await post(HELLO);
    expect(hello.headers.get("set-cookie")).toMatch(/^JSESSIONID=[0-9a-f]{32}; Path=\/; Secure; HttpOnly$/);
    expect(cm.sessions.size).toBe(before + 1);
  });

  test("cookie → Client-Log-Id → new: a cookie wins over the header", async () => {
    const a = await post(HELLO, { "Client-Log-Id": "11111111-1111-4111-8111-111111111111" });
    const cookieA = /JSESSIONID=([0-9a-f]{32})/.exec(a.headers.get("set-cookie") ?? "")![1]!;
    const b = await post(HELLO, { "Client-Log-Id": "22222222-2222-4222-8222-222222222222" });
    expect(b.headers.get("set-cookie")).not.toContain(cookieA);
    // Sign in on A through its cookie while sending B's Client-Log-Id: A is the one signed in.
    const auth = await post(SIGN_IN, {
      Cookie: `other=1; JSESSIONID=${cookieA}`,
      "Client-Log-Id": "22222222-2222-4222-8222-222222222222",
    });
    expect(await auth.text()).toContain("AUTH_SUCCESSFUL_AND_COMPLETE");
    const signedIn = /JSESSIONID=([0-9a-f]{32})/.exec(auth.headers.get("set-cookie") ?? "")![1]!;
    expect(signedIn).not.toBe(cookieA); // a fresh cookie at sign-in
    expect(await (await post(LIST, { Cookie: `JSESSIONID=${signedIn}` })).text()).toContain(
      "LIST_SUCCESSFUL",
    );
    expect(await (await post(LIST, { Cookie: `JSESSIONID=${cookieA}` })).text()).toContain(
      "LIST_FAILED_NO_ENTITLEMENT",
    );
    // A was continued by its cookie: its Client-Log-Id no longer finds it.
    const listA = await post(LIST, { "Client-Log-Id": "11111111-1111-4111-8111-111111111111" });
    expect(await listA.text()).toContain("LIST_FAILED_NO_ENTITLEMENT");
    // B (never continued by a cookie) is found by its header, and is not signed in.
    const listB = await post(LIST, { "Client-Log-Id": "22222222-2222-4222-8222-222222222222" });
    expect(await listB.text()).toContain("LIST_FAILED_NO_ENTITLEMENT");
    expect(listB.headers.get("set-cookie")).toMatch(/^JSESSIONID=/); // found without its cookie: offered again
  });

  test("Client-Log-Id is followed only from the session's own client IP (it is not a secret)", async () => {
    const id = "33333333-3333-4333-8333-333333333333";
    await post(HELLO, { "Client-Log-Id": id }, undefined, "192.0.2.10");
    // A client that never sends its cookie signs in by the header.
    await post(SIGN_IN, { "Client-Log-Id": id }, undefined, "192.0.2.10");
    expect(await (await post(LIST, { "Client-Log-Id": id }, undefined, "192.0.2.99")).text()).toContain(
      "LIST_FAILED_NO_ENTITLEMENT",
    );
    expect(await (await post(LIST, { "Client-Log-Id": id }, undefined, "192.0.2.10")).text()).toContain(
      "LIST_SUCCESSFUL",
    );
  });
});

describe("client address", () => {
  const signIn = async (peer: string, xff: string) => {
    const hello = await post(HELLO, { "X-Forwarded-For": xff }, undefined, peer);
    const cookie = /JSESSIONID=([0-9a-f]{32})/.exec(hello.headers.get("set-cookie") ?? "")![1]!;
    const auth = await post(
      SIGN_IN,
      { Cookie: `JSESSIONID=${cookie}`, "X-Forwarded-For": xff },
      undefined,
      peer,
    );
    const signedIn = /JSESSIONID=([0-9a-f]{32})/.exec(auth.headers.get("set-cookie") ?? "")![1]!;
    return cm.sessions.get(signedIn, Date.now())!;
  };
  test("X-Forwarded-For from a trusted proxy is believed; from anyone else it is not", async () => {
    expect((await signIn("10.0.0.2", "198.51.100.7")).clientIp).toBe("198.51.100.7");
    expect((await signIn("10.0.0.3", "198.51.100.7")).clientIp).toBe("10.0.0.3");
    expect((await signIn("::ffff:10.0.0.2", "2001:db8::7")).clientIp).toBe("2001:db8::7");
  });
});

describe("never HTTP 500", () => {
  test("a broker that throws: the operation's failure answer, logged as a bug", async () => {
    const throwing = createCmApp({
      log,
      broker: {
        kind: "broken",
        description: "throws",
        probe: async () => {
          throw new Error("boom");
        },
        openConversation: () => ({
          hello: async () => {
            throw new Error("boom");
          },
          authenticate: async () => {
            throw new Error("boom");
          },
          getResourceList: async () => {
            throw new Error("boom");
          },
          allocateResource: async () => {
            throw new Error("boom");
          },
          bye: async () => {
            throw new Error("boom");
          },
          close: async () => {},
        }),
      },
      agentClient: createAgentClient(),
      trustedProxies: compileTrustedProxies([]),
      sweepEveryMs: 0,
    });
    try {
      const r = await throwing.app.request("/pcoip-broker/xml", { method: "POST", body: PROBE }, env());
      expect(r.status).toBe(200);
      expect(await r.text()).toContain("<hello-resp");
      const h = await throwing.app.request("/pcoip-broker/xml", { method: "POST", body: HELLO }, env());
      expect(h.status).toBe(200);
      expect(sink.text()).toContain("unexpected error");
    } finally {
      await throwing.close();
    }
  });
});
