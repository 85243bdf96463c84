// Claim: `diagnose` warns when a configured agent lies outside the SG's trust rules (sg.agentPorts without 4172,
// an address outside sg.agentNetworks, or this host at a port the SG listens on) and names the key to change;
// an agent within them passes.
import { expect, test } from "bun:test";
import { agentTrust } from "../../src/cli/diagnose.ts";
import { loadConfig } from "../../src/config/load.ts";

const config = (text: string) => {
  const r = loadConfig({ text, strict: true });
  if (!r.ok) throw new Error(r.errors.join("; "));
  return r.config;
};
const resolve = async (h: string) => (h === "ws-3.corp.example" ? ["10.20.3.14"] : [h]);

test("an agent within the rules passes", async () => {
  const [verdict, , detail] = await agentTrust("ws-3.corp.example", config(""), resolve);
  expect(verdict).toBe("PASS");
  expect(detail).toContain("sg.agentNetworks");
});

test("outside sg.agentNetworks: WARN naming the key and a network to add", async () => {
  const [verdict, name, detail, fix] = await agentTrust("198.51.100.7:60443", config(""), resolve);
  expect([verdict, name]).toEqual(["WARN", "agent 198.51.100.7 sg rules"]);
  expect(detail).toContain("outside sg.agentNetworks");
  expect(fix).toContain('"198.51.100.7/32"');
});

test("sg.agentPorts without 4172: WARN", async () => {
  const [verdict, , , fix] = await agentTrust("10.20.3.14", config("[sg]\nagentPorts = [4173]\n"), resolve);
  expect(verdict).toBe("WARN");
  expect(fix).toContain("sg.agentPorts");
});

test("this host at a port the SG listens on (the demo agent without --endpoint): WARN", async () => {
  const c = config('[sg]\ntcpListen = ["0.0.0.0:4172"]\nagentNetworks = ["127.0.0.0/8"]\n');
  const [verdict, , detail] = await agentTrust("127.0.0.1:60443", c, resolve);
  expect(verdict).toBe("WARN");
  expect(detail).toContain("point the SG at itself");
});
