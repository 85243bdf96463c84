// Claim: the SG relays a session only to the agent it was launched on (issue 16 #1, #9). An agent's
// launch-session answer (or an upstream broker's target) naming an unrelated service, another host, a network
// outside sg.agentNetworks or the appliance's own listener gets ALLOC_FAILED_TO_ALLOCATE_AGENT, one log line naming
// the target, the rule and the key to change, no admission, and nothing reaches the named address — while a target
// that keeps the rules is admitted as before.
import { afterEach, describe, expect, test } from "bun:test";
import { type AgentEndpoint, connectControl, startAgentEndpoint } from "../peers/agent-endpoint.ts";
import { type EvilAgent, startEvilAgent } from "../peers/evil-agent.ts";
import { type FakeBroker, startFakeBroker } from "../peers/fake-broker.ts";
import { type InProcessAppliance, startInProcessAppliance } from "../peers/in-process-appliance.ts";
import { testPki } from "../peers/test-certs.ts";

const pki = testPki();
const closers: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of closers.splice(0).reverse()) await c();
});

/** An unrelated TLS + UDP service (here: an echo) the attacker wants a logged-in user's traffic sent to. */
async function unrelatedService(hostname = "127.0.0.1"): Promise<AgentEndpoint> {
  const leaf = pki.leaf(["desktop-1.test", hostname]);
  const s = await startAgentEndpoint({ hostname, cert: leaf.cert, key: leaf.key });
  closers.push(() => s.close());
  return s;
}

async function evil(info: { ipAddress: string; port: number }): Promise<EvilAgent> {
  const e = await startEvilAgent(info);
  closers.push(() => e.close());
  return e;
}

async function appliance(o: Parameters<typeof startInProcessAppliance>[0]): Promise<InProcessAppliance> {
  const a = await startInProcessAppliance(o);
  closers.push(() => a.stop());
  return a;
}

/** The one refusal line of the allocation. */
function refusalLines(a: InProcessAppliance) {
  return a.logs
    .lines()
    .map((l) => JSON.parse(l) as Record<string, unknown>)
    .filter((l) => String(l.msg).startsWith("admitting the session at the SG: refused the agent's target"));
}

/** A control connection through the SG as the client would open it; resolves true when the SG relayed it. */
async function relayedThroughSg(a: InProcessAppliance): Promise<boolean> {
  const [host, port] = a.appliance.bound.sgTcp[0]!.split(":");
  const r = await connectControl({
    hostname: host!,
    port: Number(port),
    serverName: "desktop-1.test",
    ca: pki.ca.cert,
    timeoutMs: 3000,
  });
  if (r.ok) r.client.close();
  return r.ok;
}

/** A port outside the 55000–59999 the machine's other appliances use, free a moment ago. */
async function freePort(): Promise<number> {
  for (;;) {
    const l = Bun.listen({ hostname: "0.0.0.0", port: 0, socket: { data() {} } });
    const p = l.port;
    l.stop(true);
    if (p < 55000 || p > 59999) return p;
  }
}

describe("built-in broker: the target must be the agent the session was launched on", () => {
  test("session-info naming an unrelated service's port: refused by sg.agentPorts, nothing relayed", async () => {
    const service = await unrelatedService();
    const agent = await evil({ ipAddress: "127.0.0.1", port: service.port });
    const a = await appliance({ agent: `127.0.0.1:${agent.port}` }); // sg.agentPorts = [4172]
    const alloc = await a.allocate();
    expect(alloc.resultId).toBe("ALLOC_FAILED_TO_ALLOCATE_AGENT");
    expect(alloc.body).not.toContain("<connect-tag>");
    const [line, ...more] = refusalLines(a);
    expect(more).toEqual([]);
    expect(line).toMatchObject({
      target: `127.0.0.1:${service.port}`,
      rule: "agent_port",
      key: "sg.agentPorts",
    });
    expect(a.appliance.admissions!.size).toBe(0);
    expect(await relayedThroughSg(a)).toBe(false);
    expect(service.accepted).toEqual([]);
  });

  test("session-info naming another host (port allowed): refused, the agent may only name itself", async () => {
    const service = await unrelatedService("127.0.0.2");
    const agent = await evil({ ipAddress: "127.0.0.2", port: service.port });
    const a = await appliance({ agent: `127.0.0.1:${agent.port}`, agentPorts: [service.port] });
    const alloc = await a.allocate();
    expect(alloc.resultId).toBe("ALLOC_FAILED_TO_ALLOCATE_AGENT");
    expect(refusalLines(a)).toMatchObject([
      { target: `127.0.0.2:${service.port}`, rule: "launched_host", key: "desktops[].agent" },
    ]);
    expect(await relayedThroughSg(a)).toBe(false);
    expect(service.accepted).toEqual([]);
    // The same agent naming itself (its own host, an allowed port) is admitted: the rule is not a blanket no.
    const own = await unrelatedService("127.0.0.1");
    const b = await appliance({ agent: `127.0.0.1:${agent.port}`, agentPorts: [own.port] });
    agent.tell({ ipAddress: "127.0.0.1", port: own.port });
    expect((await b.allocate()).resultId).toBe("ALLOC_SUCCESSFUL");
    expect(await relayedThroughSg(b)).toBe(true);
  });
});

describe("upstream broker: the target must lie in sg.agentNetworks", () => {
  let broker: FakeBroker;
  const withBroker = async (agent: EvilAgent) => {
    broker = await startFakeBroker({
      launch: "broker",
      users: {
        alice: {
          password: "alice pw",
          desktops: [
            { name: "D", agentHost: "127.0.0.1", agentPort: agent.port, hostname: "desktop-1.test" },
          ],
        },
      },
    });
    closers.push(() => broker.close());
    return `brokerUrl = "https://127.0.0.1:${broker.port}"`;
  };

  test("a target outside sg.agentNetworks is refused; one inside is admitted", async () => {
    const outside = await unrelatedService("127.0.0.2");
    const agent = await evil({ ipAddress: "127.0.0.2", port: outside.port });
    const a = await appliance({
      topLevel: await withBroker(agent),
      agentPorts: [outside.port],
      agentNetworks: ["127.0.0.1/32"],
    });
    const login = { user: "alice", password: "alice pw", domain: "corp.example", resource: "0" };
    expect((await a.allocate(login)).resultId).toBe("ALLOC_FAILED_TO_ALLOCATE_AGENT");
    expect(refusalLines(a)).toMatchObject([
      { target: `127.0.0.2:${outside.port}`, rule: "agent_network", key: "sg.agentNetworks" },
    ]);
    expect(await relayedThroughSg(a)).toBe(false);
    expect(outside.accepted).toEqual([]);
    agent.tell({ ipAddress: "127.0.0.1", port: outside.port });
    expect((await a.allocate(login)).resultId).toBe("ALLOC_SUCCESSFUL");
  });
});

describe("the SG pointed at itself (the demo agent without --endpoint)", () => {
  test("an agent naming the SG's own listener: refused, no self-relay", async () => {
    // As the demo: the SG on every address at the port the agent answers (4172 there), which sg.agentPorts allows.
    const port = await freePort();
    const agent = await evil({ ipAddress: "127.0.0.1", port });
    const a = await appliance({
      agent: `127.0.0.1:${agent.port}`,
      agentPorts: [port],
      env: { PCOIP_CMSG_SG_TCPLISTEN: `0.0.0.0:${port}`, PCOIP_CMSG_SG_UDPLISTEN: `0.0.0.0:${port}` },
    });
    expect((await a.allocate()).resultId).toBe("ALLOC_FAILED_TO_ALLOCATE_AGENT");
    expect(refusalLines(a)).toMatchObject([{ target: `127.0.0.1:${port}`, rule: "own_listener" }]);
    expect(a.appliance.admissions!.size).toBe(0);
    expect(a.appliance.metrics.render()).toContain(
      'pcoip_cm_agent_targets_refused_total{rule="own_listener"} 1',
    );
  });
});
