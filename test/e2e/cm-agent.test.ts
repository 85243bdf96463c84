// Claim: the CM's launch-session call reaches a (fake) agent over TLS on loopback and turns every way an agent
// fails — refusing the logon, another user's session, slow, down, garbage, HTTP 500, an untrusted or misnamed
// certificate with agentCertCheck on — into an ALLOC_FAILED_* result with the sentence admins know, plus a log
// line naming the cause and the fix; and it never goes through HTTPS_PROXY, which Bun's fetch would use.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { createServer, type Server, type Socket } from "node:net";
import { type AgentClient, createAgentClient, type LaunchRequest } from "../../src/cm/agent-client.ts";
import { createLogger, memoryDestination } from "../../src/observability/log.ts";
import { type FakeAgent, startFakeAgent } from "../peers/fake-agent.ts";

let agent: FakeAgent;
const sink = memoryDestination();
const log = createLogger({ level: "debug", destination: sink });
let client: AgentClient;

beforeAll(async () => {
  agent = await startFakeAgent({ slowMs: 5000 });
  client = createAgentClient({ timeoutMs: 600 });
});
afterAll(async () => {
  await agent?.close();
});

const request = (over: Partial<LaunchRequest> = {}): LaunchRequest => ({
  agent: { host: agent.hostname, port: agent.port, hostname: "desktop-1.test" },
  logon: { username: "alice", password: "s3cret-pw", domain: "corp.example" },
  clientIp: "198.51.100.77",
  clientName: "laptop-17",
  clientMac: "02:42:ac:11:00:02",
  licensePath: "http://licsrv:7070/request",
  sessionLogId: "5b1e0c40-1f2a-41ee-9c1d-000000000000",
  ...over,
});

describe("launch-session", () => {
  test("success: session-info, and the agent got every field", async () => {
    await agent.setMode("success");
    const r = await client.launch(request(), log);
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(r.sessionInfo.sni).toBe("desktop-1.test");
    expect(r.sessionInfo.port).toBe(4172);
    expect(r.sessionInfo.sessionTag).toMatch(/^SCS1[A-Za-z0-9+/=]{100}$/);
    expect(agent.requests.at(-1)).toEqual({
      sessionType: "UNSPECIFIED",
      ipAddress: "127.0.0.1",
      hostname: "desktop-1.test",
      logon: { method: "windows-password", username: "alice", password: "s3cret-pw", domain: "corp.example" },
      clientMac: "02:42:ac:11:00:02",
      clientIp: "198.51.100.77",
      clientName: "laptop-17",
      licensePath: "http://licsrv:7070/request",
      sessionLogId: "5b1e0c40-1f2a-41ee-9c1d-000000000000",
    });
    expect(client.counters.latencyCount).toBeGreaterThan(0);
  });

  const rows: [mode: Parameters<FakeAgent["setMode"]>[0], kind: string, resultId: string, text: RegExp][] = [
    ["user_auth", "user_auth", "ALLOC_FAILED_TO_ALLOCATE_AGENT", /did not accept/],
    ["another_session", "another_session", "ALLOC_FAILED_RESOURCE_IN_USE", /in use by another user/],
    [
      "slow",
      "timeout",
      "ALLOC_FAILED_TO_ALLOCATE_AGENT",
      /^Timeout occurred while communicating with agent$/,
    ],
    [
      "down",
      "refused",
      "ALLOC_FAILED_TO_ALLOCATE_BROKER_PORT_UNREACHABLE",
      /^Error occurred while communicating with agent$/,
    ],
    [
      "bad_xml",
      "bad_answer",
      "ALLOC_FAILED_TO_ALLOCATE_AGENT",
      /^Error occurred while communicating with agent$/,
    ],
    [
      "http_500",
      "http_status",
      "ALLOC_FAILED_TO_ALLOCATE_AGENT",
      /^Error occurred while communicating with agent$/,
    ],
  ];
  for (const [mode, kind, resultId, text] of rows) {
    test(`${mode} → ${resultId} (${kind})`, async () => {
      await agent.setMode(mode);
      try {
        const r = await client.launch(request(), log);
        expect(r.ok).toBe(false);
        if (r.ok) return;
        expect(r.failure.kind).toBe(kind as typeof r.failure.kind);
        expect(r.failure.result.resultId).toBe(resultId);
        expect(r.failure.result.resultStr).toMatch(text);
        const line = sink.lines().at(-1)!;
        expect(line).toContain(`"failure":"${kind}"`);
        expect(line).toContain("fix: ");
        expect(sink.text()).not.toContain("s3cret-pw");
      } finally {
        await agent.setMode("success");
      }
    });
  }
});

describe("agentCertCheck", () => {
  test("on, with the CA and a matching host name: accepted", async () => {
    const c = createAgentClient({ timeoutMs: 2000, verify: true, ca: agent.caCert });
    expect((await c.launch(request(), log)).ok).toBe(true);
  });
  test("on, without the agent's CA: refused as a certificate problem", async () => {
    const c = createAgentClient({ timeoutMs: 2000, verify: true });
    const r = await c.launch(request(), log);
    expect(!r.ok && r.failure.kind).toBe("certificate");
    expect(!r.ok && r.failure.result.resultStr).toBe("Error occurred while communicating with agent");
  });
  test("on, certificate not naming the desktop: refused", async () => {
    const c = createAgentClient({ timeoutMs: 2000, verify: true, ca: agent.caCert });
    const r = await c.launch(
      request({ agent: { host: agent.hostname, port: agent.port, hostname: "other.test" } }),
      log,
    );
    expect(!r.ok && r.failure.kind).toBe("certificate");
    expect(!r.ok && r.failure.cause).toContain("does not name other.test");
  });
  test("off (default): the self-signed-like test certificate is accepted", async () => {
    expect((await createAgentClient({ timeoutMs: 2000 }).launch(request(), log)).ok).toBe(true);
  });
});

describe("never through a proxy", () => {
  let proxy: Server;
  let proxyPort = 0;
  let proxyConnections = 0;
  const sockets = new Set<Socket>();
  const saved: Record<string, string | undefined> = {};
  const names = ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy"];

  beforeAll(async () => {
    proxy = createServer((s) => {
      proxyConnections++;
      sockets.add(s);
      s.on("close", () => sockets.delete(s));
      s.on("error", () => {});
      // A proxy that refuses every CONNECT: if a call goes through it, it fails.
      s.once("data", () => s.end("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n"));
    });
    await new Promise<void>((r) => proxy.listen(0, "127.0.0.1", r));
    proxyPort = (proxy.address() as { port: number }).port;
    for (const n of names) saved[n] = process.env[n];
    for (const n of names) delete process.env[n];
    process.env.HTTPS_PROXY = `http://127.0.0.1:${proxyPort}`;
    process.env.https_proxy = `http://127.0.0.1:${proxyPort}`;
  });
  afterAll(async () => {
    for (const n of names) {
      if (saved[n] === undefined) delete process.env[n];
      else process.env[n] = saved[n];
    }
    for (const s of sockets) s.destroy();
    await new Promise<void>((r) => proxy.close(() => r()));
  });

  test("control: Bun's fetch to the agent does go to the proxy", async () => {
    const before = proxyConnections;
    await fetch(`https://127.0.0.1:${agent.port}/pcoip-agent/xml`, {
      method: "POST",
      body: "<x/>",
      tls: { rejectUnauthorized: false },
    }).catch(() => undefined);
    expect(proxyConnections).toBeGreaterThan(before);
  });

  test("the agent call connects directly while HTTPS_PROXY is set", async () => {
    const before = proxyConnections;
    const r = await createAgentClient({ timeoutMs: 2000 }).launch(request(), log);
    expect(r.ok).toBe(true);
    expect(proxyConnections).toBe(before);
  });
});

describe("IPv6", () => {
  test("an agent on ::1", async () => {
    const v6 = await startFakeAgent({ hostname: "::1" });
    try {
      const r = await createAgentClient({ timeoutMs: 2000 }).launch(
        request({ agent: { host: "::1", port: v6.port, hostname: "desktop-1.test" } }),
        log,
      );
      expect(r.ok).toBe(true);
      expect(v6.requests.at(-1)?.ipAddress).toBe("::1");
    } finally {
      await v6.close();
    }
  });
});
