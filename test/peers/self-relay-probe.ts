/**
 * The demo's setup inside a network namespace of its own (run by test/hostile/sg-self-relay.test.ts through
 * `ip netns exec`): the appliance as `npm start` runs it — SG on 127.0.0.1:4172, sg.agentPorts at its default
 * [4172] — and the demo agent without --endpoint, which answers session-info 127.0.0.1:4172, the SG's own listener.
 * A client signs in, allocates, and opens the TLS control connection the allocation sent it to. Prints one JSON
 * line: the allocation's result, the refusal lines, and how many connections the SG accepted within 2 s (before
 * the fix the SG relayed to itself: thousands of self-accepts from one connection).
 */
import { connectControl } from "./agent-endpoint.ts";
import { startFakeAgent } from "./fake-agent.ts";
import { startInProcessAppliance } from "./in-process-appliance.ts";
import { testPki } from "./test-certs.ts";

const agent = await startFakeAgent({}); // the demo agent: no --endpoint
const a = await startInProcessAppliance({
  agent: `127.0.0.1:${agent.port}`,
  agentPorts: [4172],
  env: { PCOIP_CMSG_SG_TCPLISTEN: "127.0.0.1:4172", PCOIP_CMSG_SG_UDPLISTEN: "127.0.0.1:4172" },
});
const accepted = () =>
  Number(/^pcoip_sg_tcp_accepted_total (\d+)$/m.exec(a.appliance.metrics.render())?.[1] ?? Number.NaN);
const alloc = await a.allocate();
const t0 = Date.now();
const c = await connectControl({
  hostname: "127.0.0.1",
  port: 4172,
  serverName: "desktop-1.test",
  ca: testPki().ca.cert,
  timeoutMs: 2000,
});
if (c.ok) c.client.close();
await Bun.sleep(Math.max(0, 2000 - (Date.now() - t0)));
const lines = a.logs
  .lines()
  .map((l) => JSON.parse(l) as Record<string, unknown>)
  .filter((l) => String(l.msg).startsWith("admitting the session at the SG: refused the agent's target"));
process.stdout.write(
  `${JSON.stringify({ alloc: alloc.resultId, refusals: lines, sgAccepted: accepted(), relayed: c.ok })}\n`,
);
await a.stop();
await agent.close();
process.exit(0);
