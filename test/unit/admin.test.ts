// Claim: the admin listener answers health, readiness (naming the failing check) and metrics to anyone, sessions
// and drain only with the bearer token (503 naming the cause when the service has none), and off loopback
// refuses to start without a token. (Foreign Host headers, token files: test/hostile/admin-api.test.ts.)
import { afterAll, describe, expect, test } from "bun:test";
import { isLoopback, startAdminServer } from "../../src/observability/health.ts";
import { createMetricsRegistry } from "../../src/observability/metrics.ts";

const servers: { stop(): Promise<void> }[] = [];
afterAll(async () => {
  for (const s of servers) await s.stop();
});

function start(token?: string, brokerUp = true) {
  const metrics = createMetricsRegistry();
  metrics.add({ name: "pcoip_test_total", help: "t", type: "counter", samples: [{ value: 7 }] });
  let draining = false;
  const s = startAdminServer({
    hostname: "127.0.0.1",
    port: 0,
    token,
    metrics,
    readiness: () => [
      { name: "listeners", ok: true },
      { name: "broker", ok: brokerUp, detail: brokerUp ? undefined : "connect ECONNREFUSED 127.0.0.1:9" },
    ],
    sessions: () => [{ sessionId: "x", user: "alice" }],
    drain: () => {
      draining = true;
      return { draining, liveSessions: 1 };
    },
  });
  servers.push(s);
  return `http://127.0.0.1:${s.port}`;
}

describe("admin listener", () => {
  test("healthz, readyz, metrics, sessions, drain", async () => {
    const base = start("t0ken-t0ken-t0ken-t0ken");
    const auth = { Authorization: "Bearer t0ken-t0ken-t0ken-t0ken" };
    expect((await fetch(`${base}/healthz`)).status).toBe(200);
    expect((await fetch(`${base}/readyz`)).status).toBe(200);
    const m = await (await fetch(`${base}/metrics`)).text();
    expect(m).toContain("pcoip_test_total 7");
    expect(await (await fetch(`${base}/sessions`, { headers: auth })).json()).toEqual([
      { sessionId: "x", user: "alice" },
    ]);
    expect(await (await fetch(`${base}/drain`, { method: "POST", headers: auth })).json()).toEqual({
      draining: true,
      liveSessions: 1,
    });
  });

  test("without a token configured, sessions and drain answer 503 naming the cause", async () => {
    const base = start();
    expect((await fetch(`${base}/healthz`)).status).toBe(200);
    const r = await fetch(`${base}/sessions`);
    expect(r.status).toBe(503);
    expect(await r.text()).toContain("admin.tokenFile");
    expect((await fetch(`${base}/drain`, { method: "POST" })).status).toBe(503);
  });

  test("readyz fails with the reason when the broker is down", async () => {
    const base = start(undefined, false);
    const r = await fetch(`${base}/readyz`);
    expect(r.status).toBe(503);
    expect(await r.text()).toContain("FAIL broker: connect ECONNREFUSED");
  });

  test("with a token, requests without it are refused", async () => {
    const base = start("s3cret-token");
    expect((await fetch(`${base}/sessions`)).status).toBe(401);
    expect((await fetch(`${base}/sessions`, { headers: { Authorization: "Bearer wrong" } })).status).toBe(
      401,
    );
    expect(
      (await fetch(`${base}/sessions`, { headers: { Authorization: "Bearer s3cret-token" } })).status,
    ).toBe(200);
  });

  test("off loopback without a token is refused at start", () => {
    expect(isLoopback("::ffff:127.0.0.1")).toBe(true);
    expect(isLoopback("0.0.0.0")).toBe(false);
    expect(() =>
      startAdminServer({
        hostname: "0.0.0.0",
        port: 0,
        metrics: createMetricsRegistry(),
        readiness: () => [],
        sessions: () => [],
        drain: () => ({ draining: false, liveSessions: 0 }),
      }),
    ).toThrow(/needs a token \(admin.tokenFile/);
  });
});
