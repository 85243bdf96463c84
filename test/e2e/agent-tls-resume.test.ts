// Claim: the CM's second launch-session to the same agent resumes the TLS session of the first (no full
// handshake), with agentCertCheck on as well as off; a resumed connection is judged like a full one (a host name
// the certificate lacks is still refused); no session of one agent is offered to another; and with the check off
// a self-signed certificate naming another host is accepted, as agents ship them.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type AgentClient, createAgentClient, type LaunchRequest } from "../../src/cm/agent-client.ts";
import { createLogger, memoryDestination } from "../../src/observability/log.ts";
import { type FakeAgent, startFakeAgent } from "../peers/fake-agent.ts";
import { openssl } from "../peers/test-certs.ts";

const log = createLogger({ level: "debug", destination: memoryDestination() });
let agentA: FakeAgent;
let agentB: FakeAgent;

beforeAll(async () => {
  agentA = await startFakeAgent({ mode: "success" });
  agentB = await startFakeAgent({ mode: "success" });
});
afterAll(async () => {
  await agentA?.close();
  await agentB?.close();
});

const request = (agent: FakeAgent, hostname = "localhost"): LaunchRequest => ({
  agent: { host: agent.hostname, port: agent.port, hostname },
  logon: { username: "alice", password: "s3cret-pw", domain: "corp.example" },
  clientIp: "198.51.100.77",
  clientName: "laptop-17",
  clientMac: "02:42:ac:11:00:02",
  licensePath: "",
  sessionLogId: "5b1e0c40-1f2a-41ee-9c1d-000000000001",
});

async function launches(client: AgentClient, agent: FakeAgent, n: number, hostname?: string) {
  const results = [];
  for (let i = 0; i < n; i++) results.push(await client.launch(request(agent, hostname), log));
  return results;
}

describe("TLS session resumption to agents", () => {
  test("agentCertCheck off: the second and later launches resume", async () => {
    const client = createAgentClient({ timeoutMs: 3000 });
    const r = await launches(client, agentA, 3);
    expect(r.every((x) => x.ok)).toBe(true);
    expect(client.counters.tlsResumed).toBe(2);
  });

  test("agentCertCheck on: resumed connections are judged and accepted like full ones", async () => {
    const client = createAgentClient({ timeoutMs: 3000, verify: true, ca: agentA.caCert });
    const r = await launches(client, agentA, 3, "127.0.0.1");
    expect(r.map((x) => x.ok)).toEqual([true, true, true]);
    expect(client.counters.tlsResumed).toBe(2);
  });

  test("a resumed connection is judged again: a name the certificate lacks is refused", async () => {
    const client = createAgentClient({ timeoutMs: 3000, verify: true, ca: agentA.caCert });
    const first = await launches(client, agentA, 1, "127.0.0.1");
    expect(first[0]!.ok).toBe(true);
    // Same agent address (same session), but a desktop host name the certificate does not name.
    // (A refused connection drops its session: only the first of these two offers it.)
    const r = await launches(client, agentA, 2, "not-in-the-certificate.test");
    expect(r.map((x) => !x.ok && x.failure.kind)).toEqual(["certificate", "certificate"]);
  });

  test("each agent resumes its own session only", async () => {
    const client = createAgentClient({ timeoutMs: 3000 });
    await launches(client, agentA, 1);
    await launches(client, agentB, 1);
    expect(client.counters.tlsResumed).toBe(0);
    await launches(client, agentA, 1);
    await launches(client, agentB, 1);
    expect(client.counters.tlsResumed).toBe(2);
  });

  test("maxTlsSessions 0: always a full handshake", async () => {
    const client = createAgentClient({ timeoutMs: 3000, maxTlsSessions: 0 });
    const r = await launches(client, agentA, 3);
    expect(r.every((x) => x.ok)).toBe(true);
    expect(client.counters.tlsResumed).toBe(0);
  });
});

describe("agentCertCheck off accepts what agents ship (Bun.connect reports these as failed checks)", () => {
  test("a self-signed certificate naming another host, reached by a name it lacks", async () => {
    const dir = mkdtempSync(join(tmpdir(), "perf-agent-selfsigned-"));
    try {
      openssl([
        ...["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "2"],
        ...["-subj", "/CN=desktop-99.example", "-keyout", join(dir, "k.pem"), "-out", join(dir, "c.pem")],
      ]);
      const agent = await startFakeAgent({
        mode: "success",
        cert: readFileSync(join(dir, "c.pem"), "utf8"),
        key: readFileSync(join(dir, "k.pem"), "utf8"),
      });
      try {
        const client = createAgentClient({ timeoutMs: 3000 });
        // "localhost" is sent in SNI and is not in the certificate: a second failed check, still accepted.
        const r = await client.launch(
          { ...request(agent), agent: { host: "localhost", port: agent.port, hostname: "localhost" } },
          log,
        );
        expect(r.ok).toBe(true);
        const again = await client.launch(
          { ...request(agent), agent: { host: "localhost", port: agent.port, hostname: "localhost" } },
          log,
        );
        expect(again.ok).toBe(true);
        const strict = createAgentClient({ timeoutMs: 3000, verify: true });
        const refused = await strict.launch(request(agent), log);
        expect(!refused.ok && refused.failure.kind).toBe("certificate");
      } finally {
        await agent.close();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
