// Claim: CM connections and SG relays draw on separate descriptor budgets (issue 16 #8). The appliance process at
// RLIMIT_NOFILE 1,024 logs both budgets at start; 1,000 idle CM connections from five addresses fill only the CM's
// budget (the rest closed at once and counted), and a user admitted before the flood still gets a TCP relay and UDP
// media through the SG meanwhile.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { connect, type Socket } from "node:net";
import { type ApplianceProcess, startApplianceProcess } from "../peers/appliance-process.ts";
import {
  hostPort,
  openControl,
  sample,
  scrape,
  sgEnv,
  signIn,
  tcpRoundTrip,
  udpPeer,
} from "../peers/appliance-session.ts";
import { type FakeAgent, startFakeAgent } from "../peers/fake-agent.ts";

let app: ApplianceProcess;
let agent: FakeAgent;
const sockets: Socket[] = [];

beforeAll(async () => {
  agent = await startFakeAgent({ endpoint: true });
  app = await startApplianceProcess({
    agent,
    env: sgEnv(),
    wrap: ["prlimit", "--nofile=1024:1024", "--"],
  });
});
afterAll(async () => {
  for (const s of sockets) s.destroy();
  await app?.kill();
  app?.cleanup();
  await agent?.close();
});

/** An idle plain TCP connection to `addr` from `localAddress` (the CM waits for a TLS handshake that never comes). */
function idle(addr: string, localAddress: string): Promise<Socket> {
  const { host, port } = hostPort(addr);
  return new Promise((resolve) => {
    const s = connect({ host, port, localAddress });
    sockets.push(s);
    s.on("error", () => {});
    s.once("connect", () => resolve(s));
    s.once("error", () => resolve(s));
  });
}

describe("descriptor budgets at RLIMIT_NOFILE 1,024", () => {
  test("1,000 idle CM connections cannot take the SG's share: an admitted user's relay and media work", async () => {
    expect(readFileSync(`/proc/${app.pid}/limits`, "utf8")).toMatch(/Max open files\s+1024\s+1024/);
    const budgets = await app.waitForLog((l) => String(l.msg).startsWith("descriptor budgets"), 5000);
    expect(budgets).toMatchObject({ nofile: 1024, sgMaxRelays: 109, cmMaxConnections: 441 });

    const user = await signIn(app); // admitted before the flood
    expect(user.sessionId).toHaveLength(36);
    const before = await scrape(app);
    const addresses = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6"];
    await Promise.all(addresses.flatMap((a) => Array.from({ length: 200 }, () => idle(app.cm, a))));
    await Bun.sleep(500);

    const control = await openControl(app);
    try {
      await tcpRoundTrip(control, "<relay-under-cm-flood>");
      const udp = await udpPeer(app);
      try {
        await udp.roundTrip("<udp-under-cm-flood>");
      } finally {
        udp.close();
      }
    } finally {
      control.close();
    }
    const after = await scrape(app);
    const refused =
      sample(after, "pcoip_cm_connection_refusals_total", { reason: "descriptors" }) -
      sample(before, "pcoip_cm_connection_refusals_total", { reason: "descriptors" });
    expect(refused).toBeGreaterThanOrEqual(1000 - 441);
    expect(sample(after, "pcoip_descriptors_budget", { plane: "sg" })).toBe(327);
    expect(sample(after, "pcoip_descriptors_budget", { plane: "cm" })).toBe(441);
    expect(sample(after, "pcoip_descriptor_refusals_total", { plane: "sg" })).toBe(0);
    expect(app.logs.filter((l) => l.reason === "descriptors").length).toBe(1);
  }, 30_000);
});
