// Claim: the SG's trust rules for agent targets (cm/agent-targets.ts) admit exactly what issue 16 allows: a port in
// sg.agentPorts; never one of the appliance's own listeners (a wildcard listener counts every local address, IPv4
// and IPv6); built-in broker: only the launched agent's own addresses (resolved); upstream: only sg.agentNetworks
// (the defaults hold no loopback); a name that does not resolve is refused. Each refusal names its rule and key.
import { describe, expect, test } from "bun:test";
import { compileAgentTargets, judgeAgentTarget } from "../../src/cm/agent-targets.ts";

const names: Record<string, string[]> = {
  "ws-3.corp.example": ["10.20.3.14"],
  "ws-3-alias.corp.example": ["10.20.3.14"],
  "dual.corp.example": ["10.20.3.14", "10.20.3.15"],
};
const resolve = async (h: string) => names[h] ?? (/^[\d.]+$|:/.test(h) ? [h] : []);
const rules = (o: Parameters<typeof compileAgentTargets>[0] = {}) => compileAgentTargets({ resolve, ...o });

describe("judgeAgentTarget", () => {
  test("sg.agentPorts: only the listed ports", async () => {
    expect(await judgeAgentTarget({ host: "10.20.3.14", port: 4172 }, undefined, rules())).toEqual({
      ok: true,
    });
    expect(await judgeAgentTarget({ host: "10.20.3.14", port: 9900 }, undefined, rules())).toMatchObject({
      ok: false,
      rule: "agent_port",
      key: "sg.agentPorts",
    });
  });

  test("built-in broker: the launched agent's own addresses only", async () => {
    const r = rules();
    expect(await judgeAgentTarget({ host: "10.20.3.14", port: 4172 }, "ws-3.corp.example", r)).toEqual({
      ok: true,
    });
    expect(await judgeAgentTarget({ host: "ws-3-alias.corp.example", port: 4172 }, "10.20.3.14", r)).toEqual({
      ok: true,
    });
    // Another private host is refused even though it lies in sg.agentNetworks.
    expect(await judgeAgentTarget({ host: "10.20.3.99", port: 4172 }, "ws-3.corp.example", r)).toMatchObject({
      ok: false,
      rule: "launched_host",
      key: "desktops[].agent",
    });
    // A name that resolves to the agent and to something else is refused.
    expect(await judgeAgentTarget({ host: "dual.corp.example", port: 4172 }, "10.20.3.14", r)).toMatchObject({
      rule: "launched_host",
    });
  });

  test("upstream broker: sg.agentNetworks (defaults: private ranges and ULA, no loopback)", async () => {
    const r = rules();
    for (const host of ["10.1.2.3", "172.16.0.1", "192.168.1.1", "100.64.0.1", "fd00::1", "::ffff:10.1.2.3"])
      expect(await judgeAgentTarget({ host, port: 4172 }, undefined, r)).toEqual({ ok: true });
    for (const host of ["127.0.0.1", "::1", "8.8.8.8", "198.51.100.9", "2001:db8::1", "172.32.0.1"])
      expect(await judgeAgentTarget({ host, port: 4172 }, undefined, r)).toMatchObject({
        ok: false,
        rule: "agent_network",
        key: "sg.agentNetworks",
      });
  });

  test("never one of the appliance's own listeners; a wildcard listener is every local address", async () => {
    const r = rules({
      networks: ["127.0.0.0/8", "::1/128"],
      ports: [4172, 8443],
      ownListeners: () => ["0.0.0.0:4172", "[::]:4172", "127.0.0.1:8443"],
    });
    for (const host of ["127.0.0.1", "127.0.0.2", "::1"])
      expect(await judgeAgentTarget({ host, port: 4172 }, undefined, r)).toMatchObject({
        rule: "own_listener",
      });
    expect(await judgeAgentTarget({ host: "127.0.0.1", port: 8443 }, undefined, r)).toMatchObject({
      rule: "own_listener",
    });
    // The same address at a port nothing of ours listens on is fine.
    const other = rules({ networks: ["127.0.0.0/8"], ports: [4173], ownListeners: () => ["0.0.0.0:4172"] });
    expect(await judgeAgentTarget({ host: "127.0.0.1", port: 4173 }, undefined, other)).toEqual({ ok: true });
  });

  test("a name that does not resolve is refused", async () => {
    expect(
      await judgeAgentTarget({ host: "gone.corp.example", port: 4172 }, undefined, rules()),
    ).toMatchObject({
      ok: false,
      rule: "unresolved",
    });
  });
});
