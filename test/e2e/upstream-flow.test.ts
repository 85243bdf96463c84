// Claim: a PCoIP client reaches its desktop through the whole CM in upstream broker mode — the broker launching
// the session (complete target) or naming only the host (the CM launches), in LAN mode and through the SG — every
// broker failure reaches the client as the matching failure result with a log line naming the cause, two clients
// interleave without mixing broker cookies, and the same works through a real tinyproxy with basic auth (wrong
// password reported) while the CM's own agent call never uses HTTPS_PROXY.
/*
 * The rig: a whole CM (hono app behind the strict HTTP/1.1 front door on real TLS)
 * whose broker is the upstream broker pointed at a fake broker, with the real agent client and, optionally, a
 * real SG (admissions + TCP relay) behind the CM's SessionGateway; and the shared PCoIP client peer
 * (test/peers/pcoip-client.ts) talking to it.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { connectControl } from "../peers/agent-endpoint.ts";
import { type FakeAgent, loopbackAgentTargets, startFakeAgent } from "../peers/fake-agent.ts";
import { type FakeBroker, startFakeBroker } from "../peers/fake-broker.ts";
import { type PcoipClient, pcoipClient } from "../peers/pcoip-client.ts";
import { testPki } from "../peers/test-certs.ts";
import { startTinyproxy, type TinyproxyPeer, tinyproxyMissing } from "../peers/tinyproxy.ts";
import { startUpstreamCm, type UpstreamCm } from "../peers/upstream-cm.ts";

type CmRig = UpstreamCm;

/** The whole CM in front of `upstream`; the fake agent is on loopback: its network and session port, explicitly. */
function startCm(
  upstream: Parameters<typeof startUpstreamCm>[0],
  opts: { sg?: boolean; agentTimeoutMs?: number } = {},
): Promise<CmRig> {
  return startUpstreamCm(upstream, {
    ...opts,
    agentTargets: loopbackAgentTargets([agent.endpoint?.port ?? 4172]),
  });
}

/** The shared PCoIP client peer, verifying the CM with the test CA and sending `clientLogId`. */
function client(port: number, clientLogId: string): PcoipClient {
  return pcoipClient({
    host: "127.0.0.1",
    port,
    ca: testPki().ca.cert,
    servername: "localhost",
    clientLogId,
  });
}

// ---- the cases ------------------------------------------------------------------------------------------------

// Each case starts real servers (and the first run makes test certificates): on a busy 2-core machine that takes
// seconds, not milliseconds.
setDefaultTimeout(30_000);

const ALICE_LOG_ID = "a1ff3a80-8801-1038-a9bd-00505680aded";
/** Fresh ids where a test counts broker requests: a previous test's CM may still be saying bye with the others. */
const freshLogId = () => crypto.randomUUID();

let agent: FakeAgent;
let launching: FakeBroker;
let hostOnly: FakeBroker;

beforeAll(async () => {
  agent = await startFakeAgent({ endpoint: true, sni: "desktop-1.test" });
  const desktops = (n: string) => [
    { name: `${n} desktop`, agentHost: agent.hostname, agentPort: agent.port, hostname: "desktop-1.test" },
  ];
  const users = {
    alice: { password: "alice pw", desktops: desktops("Alice's") },
    bob: { password: "bob-pw", desktops: [...desktops("Bob's"), ...desktops("Bob's second")] },
  };
  launching = await startFakeBroker({ launch: "broker", users });
  hostOnly = await startFakeBroker({ launch: "host-only", users });
});
afterAll(async () => {
  await launching?.close();
  await hostOnly?.close();
  await agent?.close();
});

/** probe, hello, authenticate, list, allocate "0": the answers by step. */
async function signInAndAllocate(port: number, logId = ALICE_LOG_ID, user = "alice", password = "alice pw") {
  const c = client(port, logId);
  const probe = await c.probe();
  const hello = await c.hello();
  const auth = await c.authenticate(user, password, "corp.example");
  const list = await c.getResourceList();
  const alloc = await c.allocate("0");
  return { c, probe, hello, auth, list, alloc };
}

describe("client → CM → broker → agent", () => {
  test("the broker launches the session (complete target): the client gets the agent's target (LAN mode)", async () => {
    const aliceId = freshLogId();
    const cm = await startCm({ brokerUrl: launching.url, caCertPem: launching.caCert });
    try {
      const launches = agent.requests.length;
      const start = launching.requests.length;
      const { c, probe, hello, auth, list, alloc } = await signInAndAllocate(cm.port, aliceId);
      expect(probe.msg?.op === "hello-resp" && probe.msg.pcm?.productName).toBe("pcoip-cmsg");
      expect(probe.body).toContain("<ip-address>N/A</ip-address>");
      expect(hello.head).toMatch(/\r\nSet-Cookie: JSESSIONID=[0-9a-f]{32}/);
      expect(hello.body).toContain("<motd>Welcome to the fake broker</motd>");
      expect(auth.msg?.op === "authenticate-resp" && auth.msg.result.resultId).toBe(
        "AUTH_SUCCESSFUL_AND_COMPLETE",
      );
      expect(
        list.msg?.op === "get-resource-list-resp" && list.msg.resources.map((r) => r.resourceId),
      ).toEqual(["0"]);
      expect(alloc.msg?.op).toBe("allocate-resource-resp");
      if (alloc.msg?.op !== "allocate-resource-resp") return;
      const si = agent.lastSessionInfo!;
      expect(alloc.msg.result.resultId).toBe("ALLOC_SUCCESSFUL");
      expect(alloc.msg.target).toEqual({
        ipAddress: si.ipAddress,
        hostname: "desktop-1.test",
        sni: "desktop-1.test",
        port: si.port,
        sessionId: si.sessionId,
        connectTag: si.sessionTag,
      });
      // One launch-session, sent by the broker (not by the CM), naming the client's session id.
      expect(agent.requests.length).toBe(launches + 1);
      expect(agent.requests.at(-1)!.sessionLogId).toBe(aliceId);
      const bye = await c.bye();
      expect(bye.msg?.op).toBe("bye-resp");
      c.close();
      const sent = launching.requests.slice(start);
      expect(sent.map((r) => r.op)).toEqual([
        "hello",
        "hello",
        "authenticate",
        "get-resource-list",
        "allocate-resource",
        "bye",
      ]);
      expect(sent.every((r) => r.header("x-forwarded-for") === "127.0.0.1")).toBe(true);
      expect(sent.every((r) => r.header("client-log-id") === aliceId)).toBe(true);
      expect(sent[0]!.cookie).toBeUndefined(); // the probe: stateless
      expect(sent[1]!.body).toContain("<pcm-info><product-name>pcoip-cmsg</product-name>");
      // Neither the user's password nor the broker's cookie is in the CM's log.
      expect(cm.sink.text()).not.toContain("alice pw");
      expect(cm.sink.text()).not.toContain(sent[1]!.sessionId);
    } finally {
      await cm.stop();
    }
  });

  test("the broker names only the desktop host: the CM launches the session itself (LAN mode)", async () => {
    const aliceId = freshLogId();
    const cm = await startCm({ brokerUrl: hostOnly.url, caCertPem: hostOnly.caCert, agentPort: agent.port });
    try {
      const launches = agent.requests.length;
      const { c, alloc } = await signInAndAllocate(cm.port, aliceId);
      expect(alloc.msg?.op === "allocate-resource-resp" && alloc.msg.result.resultId).toBe(
        "ALLOC_SUCCESSFUL",
      );
      if (alloc.msg?.op !== "allocate-resource-resp") return;
      const si = agent.lastSessionInfo!;
      expect(alloc.msg.target?.sessionId).toBe(si.sessionId);
      expect(alloc.msg.target?.connectTag).toBe(si.sessionTag);
      expect(alloc.msg.target?.ipAddress).toBe(si.ipAddress);
      expect(alloc.msg.resourceId).toBe("0");
      expect(agent.requests.length).toBe(launches + 1);
      const ls = agent.requests.at(-1)!;
      expect(ls.logon).toEqual({
        method: "windows-password",
        username: "alice",
        password: "alice pw",
        domain: "corp.example",
      });
      expect(ls.clientIp).toBe("127.0.0.1");
      // The server's own session id, not the client's Client-Log-Id (which the broker still gets).
      expect(ls.sessionLogId).toMatch(
        /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/,
      );
      expect(ls.sessionLogId).not.toBe(aliceId);
      expect(hostOnly.launches).toEqual([]);
      c.close();
    } finally {
      await cm.stop();
    }
  });

  test.each([
    ["the broker launches", "launching"],
    ["the CM launches", "host-only"],
  ] as const)(
    "with the SG (%s): address and port rewritten to the SG, the rest unchanged, the session reachable through it",
    async (_name, which) => {
      const broker = which === "launching" ? launching : hostOnly;
      const cm = await startCm(
        { brokerUrl: broker.url, caCertPem: broker.caCert, agentPort: agent.port },
        { sg: true },
      );
      try {
        const { c, alloc } = await signInAndAllocate(cm.port);
        expect(alloc.msg?.op).toBe("allocate-resource-resp");
        if (alloc.msg?.op !== "allocate-resource-resp") return;
        const si = agent.lastSessionInfo!;
        expect(alloc.msg.target).toEqual({
          ipAddress: "127.0.0.1",
          hostname: "desktop-1.test",
          sni: "desktop-1.test",
          port: cm.sgPort!,
          sessionId: si.sessionId,
          connectTag: si.sessionTag,
        });
        expect(cm.admissions!.size).toBe(1);
        // The client opens its PCoIP control connection to the SG and reaches the agent's own TLS end to end.
        const control = await connectControl({
          hostname: "127.0.0.1",
          port: cm.sgPort!,
          serverName: "desktop-1.test",
          ca: agent.caCert,
        });
        expect(control.ok).toBe(true);
        if (!control.ok) return;
        control.client.write("ping through the SG");
        expect(await control.client.waitFor("ping through the SG")).toContain("ping through the SG");
        control.client.close();
        c.close();
      } finally {
        await cm.stop();
      }
    },
  );

  test("two clients interleaved: separate CM sessions, separate broker sessions, each its own desktops", async () => {
    const aliceId = freshLogId();
    const bobId = freshLogId();
    const cm = await startCm({ brokerUrl: hostOnly.url, caCertPem: hostOnly.caCert, agentPort: agent.port });
    try {
      const start = hostOnly.requests.length;
      const a = client(cm.port, aliceId);
      const b = client(cm.port, bobId);
      await a.hello();
      await b.hello();
      const ab = await b.authenticate("bob", "bob-pw", "corp.example");
      const aa = await a.authenticate("alice", "alice pw", "corp.example");
      const [la, lb] = await Promise.all([a.getResourceList(), b.getResourceList()]);
      const [xa, xb] = await Promise.all([a.allocate("0"), b.allocate("1")]);
      expect(a.cookie).not.toBe(b.cookie);
      expect(aa.msg?.op === "authenticate-resp" && aa.msg.result.resultId).toBe(
        "AUTH_SUCCESSFUL_AND_COMPLETE",
      );
      expect(ab.msg?.op === "authenticate-resp" && ab.msg.result.resultId).toBe(
        "AUTH_SUCCESSFUL_AND_COMPLETE",
      );
      expect(la.msg?.op === "get-resource-list-resp" && la.msg.resources.map((r) => r.resourceName)).toEqual([
        "Alice's desktop",
      ]);
      expect(lb.msg?.op === "get-resource-list-resp" && lb.msg.resources.map((r) => r.resourceName)).toEqual([
        "Bob's desktop",
        "Bob's second desktop",
      ]);
      expect(xa.msg?.op === "allocate-resource-resp" && xa.msg.result.resultId).toBe("ALLOC_SUCCESSFUL");
      expect(xb.msg?.op === "allocate-resource-resp" && xb.msg.result.resultId).toBe("ALLOC_SUCCESSFUL");
      const launched = agent.requests.slice(-2);
      expect(launched.map((r) => r.logon.username).sort()).toEqual(["alice", "bob"]);
      // Two server-made session ids, neither the client's.
      const ids = new Set(launched.map((r) => r.sessionLogId));
      expect(ids.size).toBe(2);
      expect(ids.has(aliceId) || ids.has(bobId)).toBe(false);
      const sent = hostOnly.requests.slice(start);
      const sessionsOf = (id: string) =>
        new Set(sent.filter((r) => r.header("client-log-id") === id).map((r) => r.sessionId));
      expect(sessionsOf(aliceId).size).toBe(1);
      expect(sessionsOf(bobId).size).toBe(1);
      expect([...sessionsOf(aliceId)][0]).not.toBe([...sessionsOf(bobId)][0]);
      a.close();
      b.close();
    } finally {
      await cm.stop();
    }
  });
});

describe("broker failures reach the client as the matching failure, with a log line naming the cause", () => {
  let cm: CmRig;
  beforeAll(async () => {
    cm = await startCm({
      brokerUrl: hostOnly.url,
      caCertPem: hostOnly.caCert,
      agentPort: agent.port,
      timeoutMs: 500,
    });
  });
  afterAll(async () => {
    await cm?.stop();
  });

  test.each([
    ["http-500", "http_status", "Error occurred while communicating with broker", "HTTP 500"],
    ["garbage", "bad_xml", "Error occurred while communicating with broker", "not valid XML"],
    [
      "wrong-root",
      "wrong_root",
      "Error occurred while communicating with broker",
      "not a pcoip-client document",
    ],
    [
      "close-mid-response",
      "closed",
      "Error occurred while communicating with broker",
      "in the middle of its answer",
    ],
    [
      "timeout",
      "timeout",
      "Timeout occurred while communicating with broker",
      "did not answer within 500 ms",
    ],
  ] as const)(
    "authenticate, broker fault %s → AUTH_FAILED_BROKER_ERROR",
    async (fault, kind, text, cause) => {
      const c = client(cm.port, ALICE_LOG_ID);
      await c.hello();
      hostOnly.fail(fault, { op: "authenticate", times: 1 });
      const auth = await c.authenticate("alice", "alice pw", "corp.example");
      expect(auth.status).toBe(200);
      expect(auth.msg?.op === "authenticate-resp" && auth.msg.result).toEqual({
        resultId: "AUTH_FAILED_BROKER_ERROR",
        resultStr: text,
      });
      const line = cm.lines().findLast((l) => l.failure === kind)!;
      expect(String(line.msg)).toContain(cause);
      // The session id is the server's own; the client's Client-Log-Id is logged beside it when it opened.
      const opened = cm
        .lines()
        .findLast((l) => l.msg === "pre-session opened" && l.clientLogId === ALICE_LOG_ID)!;
      expect(line.sessionId).toBe(opened.sessionId);
      expect(line.sessionId).not.toBe(ALICE_LOG_ID);
      expect(String(line.fix).length).toBeGreaterThan(10);
      // The user can go on once the broker is back: the CM rebuilds the broker's side as needed.
      const retry = await c.authenticate("alice", "alice pw", "corp.example");
      expect(retry.msg?.op === "authenticate-resp" && retry.msg.result.resultId).toBe(
        "AUTH_SUCCESSFUL_AND_COMPLETE",
      );
      c.close();
    },
  );

  test("allocate-resource failing at the broker → ALLOC_FAILED_TO_ALLOCATE_BROKER", async () => {
    const c = client(cm.port, ALICE_LOG_ID);
    await c.hello();
    await c.authenticate("alice", "alice pw", "corp.example");
    await c.getResourceList();
    hostOnly.fail("http-500", { op: "allocate-resource", times: 1 });
    const alloc = await c.allocate("0");
    expect(alloc.msg?.op === "allocate-resource-resp" && alloc.msg.result).toEqual({
      resultId: "ALLOC_FAILED_TO_ALLOCATE_BROKER",
      resultStr: "Error occurred while communicating with broker",
    });
    expect(alloc.msg?.op === "allocate-resource-resp" && alloc.msg.target).toBeUndefined();
    c.close();
  });

  test("a slow agent: the broker's own agent timeout answers first, because allocate waits longer than the rest", async () => {
    const slowAgent = await startFakeAgent({ mode: "slow", slowMs: 5000 });
    const broker = await startFakeBroker({
      launch: "broker",
      agentTimeoutMs: 800,
      users: {
        alice: {
          password: "alice pw",
          desktops: [{ name: "Slow", agentHost: slowAgent.hostname, agentPort: slowAgent.port }],
        },
      },
    });
    const slowCm = await startCm({
      brokerUrl: broker.url,
      caCertPem: broker.caCert,
      timeoutMs: 400,
      allocateTimeoutMs: 3000,
    });
    try {
      const { c, alloc } = await signInAndAllocate(slowCm.port);
      expect(alloc.msg?.op === "allocate-resource-resp" && alloc.msg.result).toEqual({
        resultId: "ALLOC_FAILED_TO_ALLOCATE_BROKER",
        resultStr: "Error occurred while communicating with broker",
      });
      const line = slowCm.lines().findLast((l) => l.failure === "http_status")!;
      // The log states the time the broker's 500 really took (its agent timeout here is 0.8 s).
      expect(String(line.cause)).toMatch(/HTTP 500 .* after (\d+ ms|\d\.\d s)/);
      c.close();
    } finally {
      await slowCm.stop();
      await broker.close();
      await slowAgent.close();
    }
  });

  test("the agent's refusal the broker passes through reaches the client as the ALLOC_FAILED_* id for it", async () => {
    const refusing = await startFakeAgent({ mode: "another_session" });
    const broker = await startFakeBroker({
      launch: "broker",
      users: {
        alice: {
          password: "alice pw",
          desktops: [{ name: "Busy", agentHost: refusing.hostname, agentPort: refusing.port }],
        },
      },
    });
    const rig = await startCm({ brokerUrl: broker.url, caCertPem: broker.caCert });
    try {
      const { c, alloc } = await signInAndAllocate(rig.port);
      expect(alloc.msg?.op === "allocate-resource-resp" && alloc.msg.result).toEqual({
        resultId: "ALLOC_FAILED_RESOURCE_IN_USE",
        resultStr: "The remote workstation is in use by another user",
      });
      expect(rig.lines().findLast((l) => l.upstreamResultId)?.upstreamResultId).toBe(
        "FAILED_ANOTHER_SESION_STARTED",
      );
      c.close();
    } finally {
      await rig.stop();
      await broker.close();
      await refusing.close();
    }
  });

  test.each([
    ["refused", "refused", "refused the connection"],
    ["self-signed", "certificate", "is self-signed"],
    ["weak-key", "certificate", "1024-bit RSA key"],
    ["wrong-ca", "certificate", 'issuer "CN=Some Other CA"'],
    ["dns", "dns", "does not resolve"],
  ] as const)(
    "broker unusable (%s): hello keeps its documented shape, the sign-in answers the broker error, the log says why",
    async (how, kind, cause) => {
      const broker = await startFakeBroker({
        ...(how === "self-signed" || how === "weak-key" || how === "wrong-ca" ? { certificate: how } : {}),
        users: {},
      });
      if (how === "refused") broker.stopListening();
      const rig = await startCm({
        brokerUrl: how === "dns" ? `https://broker.corp.example:${broker.port}` : broker.url,
        caCertPem: broker.caCert,
        resolve: async () => {
          throw Object.assign(new Error("getaddrinfo ENOTFOUND broker.corp.example"), { code: "ENOTFOUND" });
        },
      });
      try {
        const c = client(rig.port, ALICE_LOG_ID);
        const hello = await c.hello();
        expect(hello.status).toBe(200);
        expect(hello.body).not.toContain("<result>");
        expect(hello.msg?.op === "hello-resp" && hello.msg.authenticationMethods).toEqual([
          "AUTHENTICATE_VIA_PASSWORD",
        ]);
        const auth = await c.authenticate("alice", "alice pw", "corp.example");
        expect(auth.msg?.op === "authenticate-resp" && auth.msg.result).toEqual({
          resultId: "AUTH_FAILED_BROKER_ERROR",
          resultStr: "Error occurred while communicating with broker",
        });
        const line = rig.lines().find((l) => l.failure === kind)!;
        expect(String(line.msg)).toContain(cause);
        if (kind === "certificate") expect(String(line.msg)).toContain('subject "CN=localhost"');
        c.close();
      } finally {
        await rig.stop();
        await broker.close();
      }
    },
  );
});

describe.skipIf(tinyproxyMissing() !== undefined)("through a real tinyproxy with basic auth", () => {
  let proxy: TinyproxyPeer;
  const PROXY_PW = "pr0xy-pw_1.x";
  beforeAll(async () => {
    // CONNECT is allowed to the brokers' ports only: an agent call through the proxy would be refused.
    proxy = await startTinyproxy({
      connectPorts: [launching.port, hostOnly.port],
      username: "cm",
      password: PROXY_PW,
    });
  });
  afterAll(async () => {
    await proxy?.stop();
  });
  const proxyEnv = () => ({
    HTTPS_PROXY: `127.0.0.1:${proxy.port}`,
    HTTPS_PROXY_USERNAME: "cm",
    HTTPS_PROXY_PASSWORD: PROXY_PW,
  });

  test("the whole flow works through the proxy, and only broker traffic uses it", async () => {
    const cm = await startCm(
      { brokerUrl: launching.url, caCertPem: launching.caCert, env: proxyEnv() },
      { sg: true },
    );
    try {
      const before = proxy.connects().length;
      const { c, alloc } = await signInAndAllocate(cm.port);
      expect(alloc.msg?.op === "allocate-resource-resp" && alloc.msg.result.resultId).toBe(
        "ALLOC_SUCCESSFUL",
      );
      await Bun.sleep(100);
      const connects = proxy.connects().slice(before);
      expect(connects.length).toBeGreaterThan(0);
      expect(new Set(connects)).toEqual(new Set([`127.0.0.1:${launching.port}`]));
      expect(cm.sink.text()).not.toContain(PROXY_PW);
      c.close();
    } finally {
      await cm.stop();
    }
  });

  test("a wrong proxy password: the client reads the broker error, the log names the proxy's refusal", async () => {
    const cm = await startCm({
      brokerUrl: launching.url,
      caCertPem: launching.caCert,
      env: { ...proxyEnv(), HTTPS_PROXY_PASSWORD: "wrong pw!" },
    });
    try {
      const c = client(cm.port, ALICE_LOG_ID);
      await c.probe();
      await c.hello();
      const auth = await c.authenticate("alice", "alice pw", "corp.example");
      expect(auth.body).toContain("<result-str>Error occurred while communicating with broker</result-str>");
      const line = cm.lines().find((l) => l.failure === "proxy_auth")!;
      expect(String(line.msg)).toContain("refused the credentials");
      expect(String(line.fix)).toContain("HTTPS_PROXY_PASSWORD");
      expect(cm.sink.text()).not.toContain("wrong pw!");
      c.close();
    } finally {
      await cm.stop();
    }
  });

  test("the CM's own launch-session to the agent bypasses HTTPS_PROXY even when the process environment has it", async () => {
    const saved = { HTTPS_PROXY: process.env.HTTPS_PROXY, https_proxy: process.env.https_proxy };
    process.env.HTTPS_PROXY = `http://cm:${encodeURIComponent(PROXY_PW)}@127.0.0.1:${proxy.port}`;
    const cm = await startCm({
      brokerUrl: hostOnly.url,
      caCertPem: hostOnly.caCert,
      agentPort: agent.port,
      env: process.env,
    });
    try {
      const before = proxy.connects().length;
      const launches = agent.requests.length;
      const { c, alloc } = await signInAndAllocate(cm.port);
      expect(alloc.msg?.op === "allocate-resource-resp" && alloc.msg.result.resultId).toBe(
        "ALLOC_SUCCESSFUL",
      );
      expect(agent.requests.length).toBe(launches + 1);
      await Bun.sleep(100);
      const connects = proxy.connects().slice(before);
      expect(connects).toContain(`127.0.0.1:${hostOnly.port}`);
      expect(connects).not.toContain(`127.0.0.1:${agent.port}`);
      c.close();
    } finally {
      await cm.stop();
      for (const [k, v] of Object.entries(saved)) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    }
  });
});
