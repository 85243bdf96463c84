/**
 * Before an upgrade restarts the service, install counts live sessions on the real admin listener, puts the node
 * in drain and waits until they end or --drain-timeout passes; --force does not wait; an unreachable admin
 * listener counts as no sessions.
 */
import { afterAll, expect, test } from "bun:test";
import type { Reporter } from "../../src/cli/configure.ts";
import { drainForUpgrade } from "../../src/cli/install.ts";
import { liveSessions } from "../../src/cli/status.ts";
import { type AdminServer, startAdminServer } from "../../src/observability/health.ts";
import { createMetricsRegistry } from "../../src/observability/metrics.ts";
import { portFree } from "../../src/platform/host.ts";

/** An admin listener whose sessions end one per poll once drain was requested. */
function admin(sessions: number, token = "") {
  const state = { live: sessions, drained: false, drainCalls: 0 };
  const server: AdminServer = startAdminServer({
    hostname: "127.0.0.1",
    port: 0,
    token,
    metrics: createMetricsRegistry(),
    readiness: () => [],
    sessions: () => {
      const list = Array.from({ length: state.live }, (_, i) => ({ id: `s${i}`, user: "alice" }));
      if (state.drained && state.live > 0) state.live--;
      return list;
    },
    drain: () => {
      state.drained = true;
      state.drainCalls++;
      return { draining: true, liveSessions: state.live };
    },
  });
  return { state, server, listen: `127.0.0.1:${server.port}` };
}

const servers: AdminServer[] = [];
afterAll(async () => {
  for (const s of servers) await s.stop();
});

function reporter(): Reporter & { lines: string[] } {
  const lines: string[] = [];
  return {
    lines,
    done: (t) => lines.push(`done ${t}`),
    would: (t) => lines.push(`would ${t}`),
    note: (t) => lines.push(`note ${t}`),
    warn: (t) => lines.push(`warn ${t}`),
  };
}

const instant = async () => {};

test("live sessions: says how many, drains, waits until they end", async () => {
  const a = admin(3, "s3cret-token");
  servers.push(a.server);
  const r = reporter();
  const left = await drainForUpgrade(
    { listen: a.listen, token: "s3cret-token" },
    { timeoutSeconds: 600, force: false, sleep: instant },
    r,
  );
  expect(left).toBe(0);
  expect(a.state.drainCalls).toBe(1);
  expect(r.lines.join("\n")).toContain("3 live session(s): node put in drain");
  expect(r.lines.join("\n")).toContain("every session ended");
});

test("the wait stops at the drain timeout and says how many are left", async () => {
  const a = admin(50, "s3cret-token");
  servers.push(a.server);
  const r = reporter();
  let slept = 0;
  const left = await drainForUpgrade(
    { listen: a.listen, token: "s3cret-token" },
    {
      timeoutSeconds: 10,
      force: false,
      pollSeconds: 5,
      sleep: async (ms) => {
        slept += ms;
      },
    },
    r,
  );
  expect(slept).toBe(10_000);
  expect(left).toBeGreaterThan(0);
  expect(r.lines.join("\n")).toContain(`${left} session(s) still live after 10 s`);
});

test("--force neither drains nor waits", async () => {
  const a = admin(2, "s3cret-token");
  servers.push(a.server);
  const r = reporter();
  expect(
    await drainForUpgrade(
      { listen: a.listen, token: "s3cret-token" },
      { timeoutSeconds: 600, force: true, sleep: instant },
      r,
    ),
  ).toBe(2);
  expect(a.state.drainCalls).toBe(0);
  expect(r.lines.join("\n")).toContain("2 live session(s) will end with the restart");
});

test("a wrong token is not a session count; an unreachable listener counts as zero", async () => {
  const a = admin(4, "right");
  servers.push(a.server);
  const wrong = await liveSessions({ listen: a.listen, token: "wrong" });
  expect(wrong.reachable).toBe(false);
  expect(wrong.cause).toContain("401");
  // A port nothing listens on.
  let port = 0;
  for (let p = 40000 + Math.floor(Math.random() * 20000); ; p++)
    if ((await portFree("127.0.0.1", p, "tcp")).free) {
      port = p;
      break;
    }
  const r = reporter();
  expect(
    await drainForUpgrade(
      { listen: `127.0.0.1:${port}`, token: "" },
      { timeoutSeconds: 5, force: false, sleep: instant },
      r,
    ),
  ).toBe(0);
  expect(r.lines.join("\n")).toContain("no live sessions to drain");
});
