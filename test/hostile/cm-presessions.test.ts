// Claim: a hello flood cannot evict users mid-login (issue 16 #4). With cm.maxPreSessions lowered to 300, 400
// cookie-less hellos from one address keep at most cm.maxPreSessionsPerIp (64) pre-sessions of that address (it
// evicts only its own), and a user at another address who said hello before the flood signs in after it. Behind
// the flood's own address (a NAT), eviction never takes an authenticated session or one whose password check is
// under way: both go on to list their desktops. Evictions are counted in /metrics and logged once per window.
import { afterAll, describe, expect, test } from "bun:test";
import { type ApplianceProcess, startApplianceProcess } from "../peers/appliance-process.ts";
import { hostPort, sample, scrape, sgEnv, until } from "../peers/appliance-session.ts";
import { type FakeAgent, startFakeAgent } from "../peers/fake-agent.ts";
import { type FakeBroker, startFakeBroker } from "../peers/fake-broker.ts";
import { type PcoipClient, pcoipClient } from "../peers/pcoip-client.ts";

const started: { app?: ApplianceProcess; agent?: FakeAgent; broker?: FakeBroker }[] = [];
afterAll(async () => {
  for (const s of started) {
    await s.app?.kill();
    s.app?.cleanup();
    await s.agent?.close();
    await s.broker?.close();
  }
});

const client = (app: ApplianceProcess, localAddress: string, dropCookies = false): PcoipClient => {
  const { host, port } = hostPort(app.cm);
  return pcoipClient({ host, port, ca: app.ca, servername: "localhost", localAddress, dropCookies });
};

/** `n` cookie-less hellos from `localAddress` over 4 keep-alive connections: each one opens a pre-session. */
async function helloFlood(app: ApplianceProcess, localAddress: string, n: number): Promise<void> {
  const conns = Array.from({ length: 4 }, () => client(app, localAddress, true));
  try {
    await Promise.all(
      conns.map(async (c, i) => {
        for (let k = i; k < n; k += conns.length) {
          const a = await c.hello();
          if (a.operation !== "hello-resp") throw new Error(`flood hello ${k}: ${a.operation}`);
        }
      }),
    );
  } finally {
    for (const c of conns) c.close();
  }
}

describe("cm.maxPreSessionsPerIp", () => {
  test("400 hellos from one IP: a user at another IP who said hello before signs in after", async () => {
    const agent = await startFakeAgent({});
    const app = await startApplianceProcess({
      agent: `127.0.0.1:${agent.port}`,
      env: { ...sgEnv(), PCOIP_CMSG_CM_MAXPRESESSIONS: "300" },
    });
    started.push({ app, agent });
    const victim = client(app, "127.0.0.3");
    try {
      expect((await victim.hello()).operation).toBe("hello-resp");
      const before = await scrape(app);
      await helloFlood(app, "127.0.0.2", 400);
      const auth = await victim.authenticate("alice", "correct horse");
      expect(`${auth.resultId} ${auth.resultStr}`).toBe(
        "AUTH_SUCCESSFUL_AND_COMPLETE User authentication successful",
      );
      expect((await victim.getResourceList()).resultId).toBe("LIST_SUCCESSFUL");
      const after = await scrape(app);
      const evicted =
        sample(after, "pcoip_cm_pre_session_evictions_total", { reason: "per_ip" }) -
        sample(before, "pcoip_cm_pre_session_evictions_total", { reason: "per_ip" });
      expect(evicted).toBe(400 - 64);
      expect(sample(after, "pcoip_cm_sessions", { state: "hello" })).toBe(64);
      expect(app.logs.filter((l) => l.limit === "cm.maxPreSessionsPerIp").length).toBe(1);
    } finally {
      victim.close();
    }
  }, 60_000);

  test("behind the flood's own IP, an authenticated session and one mid-password-check survive", async () => {
    const desktops = [{ name: "d1", agentHost: "127.0.0.1", agentPort: 9 }];
    const broker = await startFakeBroker({
      users: { alice: { password: "pw", desktops }, bob: { password: "pw", desktops } },
      delayMs: { authenticate: 1500 },
    });
    const app = await startApplianceProcess({
      topLevel: `brokerUrl = "${broker.url}"`,
      env: { ...sgEnv(), PCOIP_CMSG_CM_MAXPRESESSIONS: "100" },
    });
    started.push({ app, broker });
    const signedIn = client(app, "127.0.0.2");
    const checking = client(app, "127.0.0.2");
    try {
      await signedIn.hello();
      expect((await signedIn.authenticate("alice", "pw")).resultId).toBe("AUTH_SUCCESSFUL_AND_COMPLETE");
      await checking.hello();
      const pending = checking.authenticate("bob", "pw");
      await until(() => broker.inFlight("authenticate").now === 1, "bob's password check under way", 3000);
      await helloFlood(app, "127.0.0.2", 200);
      expect((await pending).resultId).toBe("AUTH_SUCCESSFUL_AND_COMPLETE");
      expect((await checking.getResourceList()).resultId).toBe("LIST_SUCCESSFUL");
      expect((await signedIn.getResourceList()).resultId).toBe("LIST_SUCCESSFUL");
    } finally {
      signedIn.close();
      checking.close();
    }
  }, 60_000);
});
