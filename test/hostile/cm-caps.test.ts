// Claim: one client IP cannot take what other clients of the CM need (issue 16). cm.maxConnectionsPerIp (default
// 256): 300 idle connections from one address leave 256 open and close the other 44 at once, counted in /metrics
// and logged once, while a client from another address signs in.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { connect, type Socket } from "node:net";
import { type ApplianceProcess, startApplianceProcess } from "../peers/appliance-process.ts";
import { hostPort, sample, scrape, sgEnv, signIn, until } from "../peers/appliance-session.ts";
import { type FakeAgent, startFakeAgent } from "../peers/fake-agent.ts";

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
