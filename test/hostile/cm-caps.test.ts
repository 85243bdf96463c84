// Claim: one client IP cannot take what other clients of the CM need (issue 16). cm.maxConnectionsPerIp (default
// 256): 300 idle connections from one address leave 256 open and close the other 44 at once, counted in /metrics
// and logged once, while a client from another address signs in. cm.maxPasswordChecksPerIp (default 4, #5): 25
// concurrent logins from one address against a slow password check run at most 4 at a time (the rest queue, or
// get the busy answer after 10 s), and 5 logins from another address all succeed meanwhile.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { connect, type Socket } from "node:net";
import { type ApplianceProcess, startApplianceProcess } from "../peers/appliance-process.ts";
import { hostPort, sample, scrape, sgEnv, signIn, until } from "../peers/appliance-session.ts";
import { type FakeAgent, startFakeAgent } from "../peers/fake-agent.ts";
import { type FakeBroker, startFakeBroker } from "../peers/fake-broker.ts";
import { pcoipClient } from "../peers/pcoip-client.ts";

let app: ApplianceProcess;
let agent: FakeAgent;

beforeAll(async () => {
  agent = await startFakeAgent({});
  app = await startApplianceProcess({ agent, env: sgEnv() });
});
afterAll(async () => {
  await app?.kill();
  app?.cleanup();
  await agent?.close();
});

/** `n` plain TCP connections to `addr` from `localAddress`, each recording whether the server closed it. */
async function idleConnections(
  addr: string,
  localAddress: string,
  n: number,
): Promise<{ sockets: Socket[]; closed: () => number; end(): void }> {
  const { host, port } = hostPort(addr);
  let closed = 0;
  const sockets = await Promise.all(
    Array.from(
      { length: n },
      () =>
        new Promise<Socket>((resolve) => {
          const s = connect({ host, port, localAddress });
          s.on("close", () => closed++);
          s.on("error", () => {});
          s.once("connect", () => resolve(s));
          s.once("error", () => resolve(s));
        }),
    ),
  );
  return {
    sockets,
    closed: () => closed,
    end: () => {
      for (const s of sockets) s.destroy();
    },
  };
}

describe("cm.maxConnectionsPerIp", () => {
  test("300 idle connections from one IP: 256 stay, 44 closed at once and counted; another IP signs in", async () => {
    const before = await scrape(app);
    const flood = await idleConnections(app.cm, "127.0.0.2", 300);
    try {
      await until(() => flood.closed() >= 44, "44 connections closed by the CM", 3000).catch(() => {});
      await Bun.sleep(300); // no more than the excess may go
      expect(flood.closed()).toBe(44);
      const after = await scrape(app);
      expect(
        sample(after, "pcoip_cm_connection_refusals_total", { reason: "per_ip" }) -
          sample(before, "pcoip_cm_connection_refusals_total", { reason: "per_ip" }),
      ).toBe(44);
      const lines = app.logs.filter((l) => l.reason === "per_ip");
      expect(lines.length).toBe(1);
      expect(lines[0]?.clientIp).toBe("127.0.0.2");
      expect(String(lines[0]?.msg)).toContain("cm.maxConnectionsPerIp");
      // Another address signs in meanwhile.
      await signIn(app);
    } finally {
      flood.end();
    }
  }, 20_000);
});

describe("cm.maxPasswordChecksPerIp", () => {
  let upstream: ApplianceProcess | undefined;
  let broker: FakeBroker | undefined;
  afterAll(async () => {
    await upstream?.kill();
    upstream?.cleanup();
    await broker?.close();
  });

  test("25 concurrent logins from one IP run 4 at a time; 5 logins from another IP all succeed", async () => {
    const desktops = [{ name: "d1", agentHost: "127.0.0.1", agentPort: 9 }];
    broker = await startFakeBroker({
      users: { alice: { password: "pw", desktops }, bob: { password: "pw", desktops } },
      delayMs: { authenticate: 1000 }, // a slow password check (a loaded directory)
    });
    upstream = await startApplianceProcess({
      topLevel: `brokerUrl = "${broker.url}"`,
      env: { ...sgEnv(), PCOIP_CMSG_CM_MAXCONCURRENTESTABLISHMENTS: "10" },
    });
    const { host, port } = hostPort(upstream.cm);
    const client = (localAddress: string) =>
      pcoipClient({ host, port, ca: upstream!.ca, servername: "localhost", localAddress });
    const flood = Array.from({ length: 25 }, () => client("127.0.0.2"));
    const victims = Array.from({ length: 5 }, () => client("127.0.0.3"));
    try {
      await Promise.all([...flood, ...victims].map((c) => c.hello()));
      // Caught here: a failing assertion below closes the clients under these requests.
      const floodLogins = flood.map((c) =>
        c.authenticate("alice", "pw").catch((e: Error) => ({ resultId: e.message })),
      );
      // 4 checks run; a moment more lets the rest of the flood arrive (without the cap they would run too).
      await until(() => broker!.inFlight("authenticate").now >= 4, "the flood's first checks", 5000);
      await Bun.sleep(300);
      const floodAtOnce = broker.inFlight("authenticate").peak;
      const victimLogins = await Promise.all(victims.map((c) => c.authenticate("bob", "pw")));
      expect(victimLogins.map((a) => a.resultId)).toEqual(Array(5).fill("AUTH_SUCCESSFUL_AND_COMPLETE"));
      expect(floodAtOnce).toBe(4);
      const floodResults = await Promise.all(floodLogins);
      for (const a of floodResults)
        expect(["AUTH_SUCCESSFUL_AND_COMPLETE", "AUTH_FAILED_BROKER_ERROR"]).toContain(a.resultId);
      const m = await scrape(upstream);
      expect(sample(m, "pcoip_cm_password_checks_queued_total")).toBeGreaterThanOrEqual(21);
    } finally {
      for (const c of [...flood, ...victims]) c.close();
    }
  }, 40_000);
});
