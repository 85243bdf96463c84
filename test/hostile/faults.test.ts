// Claim: faults around the appliance end cleanly. An agent that closes mid-response, speaks no TLS or shows an
// expired certificate gives a typed ALLOC_FAILED_* (broker faults: test/e2e/upstream-flow.test.ts and
// test/unit/upstream-failures.test.ts; agent refusing / timing out: test/e2e/cm-agent.test.ts). An agent that
// vanishes mid-session ends the relay with a log line saying who closed, and the session ends. In the real
// process, SIGHUP during traffic reloads without failing a login or cutting a relay, and after kill -9 the
// appliance restarts on the same ports, clean, with nothing left behind in its folder.
import { afterEach, describe, expect, test } from "bun:test";
import { readdirSync } from "node:fs";
import { createAgentClient, type LaunchRequest } from "../../src/cm/agent-client.ts";
import { createLogger, memoryDestination } from "../../src/observability/log.ts";
import { createAdmissions } from "../../src/sg/admissions.ts";
import { startTcpRelay } from "../../src/sg/tcp-relay.ts";
import { connectControl, startAgentEndpoint } from "../peers/agent-endpoint.ts";
import { type ApplianceProcess, startApplianceProcess } from "../peers/appliance-process.ts";
import { sgEnv } from "../peers/appliance-session.ts";
import { type FakeAgent, startFakeAgent } from "../peers/fake-agent.ts";
import { pcoipClient } from "../peers/pcoip-client.ts";
import { until } from "../peers/sg-fixture.ts";
import { testPki } from "../peers/test-certs.ts";

const pki = testPki();

describe("agent faults reach the client as typed failures", () => {
  const request = (port: number): LaunchRequest => ({
    agent: { host: "127.0.0.1", port, hostname: "desktop-1.test" },
    logon: { username: "alice", password: "fault-s3cret", domain: "corp" },
    clientIp: "198.51.100.7",
    clientName: "laptop",
    clientMac: "",
    licensePath: "",
    sessionLogId: "5b1e0c40-1f2a-41ee-9c1d-0000000fa017",
  });
  const leaf = pki.leaf(["desktop-1.test", "127.0.0.1"]);
  const expired = pki.leaf(["desktop-1.test", "127.0.0.1"], { days: -1 });

  /** A TLS (or plain) server that reads the request and answers `bytes`, then closes. */
  function server(bytes: string, tls: { cert: string; key: string } | undefined = leaf) {
    return Bun.listen<{ text: string }>({
      hostname: "127.0.0.1",
      port: 0,
      ...(tls ? { tls } : {}),
      socket: {
        open(s) {
          s.data = { text: "" };
        },
        data(s, d) {
          s.data.text += Buffer.from(d).toString("latin1");
          if (!s.data.text.includes("</pcoip-agent>")) return;
          s.write(bytes);
          s.end();
        },
      },
    });
  }

  const cases: [string, () => ReturnType<typeof server>, string, boolean][] = [
    [
      "closes in the middle of its answer",
      () => server("HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n<?xml version='1.0'?><pcoip-agent ver"),
      "bad_answer",
      false,
    ],
    [
      "closes in the middle of a chunk",
      () => server("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n200\r\n<pcoip-agent"),
      "bad_answer",
      false,
    ],
    ["closes right after the TLS handshake", () => server(""), "bad_answer", false],
    ["speaks plain TCP, not TLS", () => server("HTTP/1.1 200 OK\r\n\r\n", undefined), "tls", false],
    ["shows an expired certificate (agentCertCheck on)", () => server("", expired), "certificate", true],
  ];
  for (const [what, start, kind, verify] of cases) {
    test(`an agent that ${what} → ${kind}, ALLOC_FAILED_*`, async () => {
      const s = start();
      const sink = memoryDestination();
      try {
        const client = createAgentClient({ timeoutMs: 2000, verify, ca: pki.ca.cert });
        const t0 = Date.now();
        const r = await client.launch(request(s.port), createLogger({ destination: sink }));
        expect(Date.now() - t0).toBeLessThan(2500);
        expect(r.ok).toBe(false);
        if (r.ok) return;
        if (kind === "tls") expect(["tls", "bad_answer"]).toContain(r.failure.kind);
        else expect(r.failure.kind).toBe(kind as typeof r.failure.kind);
        expect(r.failure.result.resultId).toStartWith("ALLOC_FAILED_");
        expect(r.failure.result.resultStr).toBe("Error occurred while communicating with agent");
        expect(sink.text()).not.toContain("fault-s3cret");
      } finally {
        s.stop(true);
      }
    });
  }
});

describe("an agent vanishing mid-session", () => {
  test("the relay ends at once, the log names the agent as the closer, the session ends", async () => {
    const sni = "agent-gone.corp.test";
    const cert = pki.leaf([sni]);
    const agent = await startAgentEndpoint({ hostname: "127.0.0.1", cert: cert.cert, key: cert.key });
    const sink = memoryDestination();
    const log = createLogger({ destination: sink, level: "info" });
    const admissions = createAdmissions({ sweepEveryMs: 0, reconnectGraceMs: 0 });
    const t = await startTcpRelay({ listen: [{ hostname: "127.0.0.1", port: 0 }], admissions, log });
    if (!t.ok) throw new Error(t.error.cause);
    try {
      const a = admissions.admit({
        sessionLogId: "33333333-0000-4000-8000-000000000001",
        agentSessionId: "s-1",
        clientIp: "127.0.0.1",
        agentHost: "127.0.0.1",
        agentTcpPort: agent.port,
        agentUdpPort: agent.port,
        sni,
      });
      if (!a.ok) throw new Error(a.reason);
      const c = await connectControl({
        hostname: "127.0.0.1",
        port: t.relay.ports[0]!,
        serverName: sni,
        ca: pki.ca.cert,
      });
      if (!c.ok) throw new Error(c.error);
      c.client.write("ping");
      await c.client.waitFor("ping");
      expect(t.relay.counters.active).toBe(1);
      const t0 = Date.now();
      await agent.close(); // the agent host goes away: its sockets end abruptly
      await c.client.closed;
      expect(Date.now() - t0).toBeLessThan(2000);
      await until(() => sink.text().includes("sg tcp relay closed"), 5000);
      const line = JSON.parse(sink.lines().find((l) => l.includes("sg tcp relay closed"))!);
      expect(line.sessionId).toBe("33333333-0000-4000-8000-000000000001");
      expect(String(line.closedBy)).toMatch(/^agent/);
      expect(line.bytesUp).toBeGreaterThan(0);
      expect(t.relay.counters.active).toBe(0);
      expect(t.relay.connectionsOf("33333333-0000-4000-8000-000000000001")).toBe(0);
      expect(admissions.get("33333333-0000-4000-8000-000000000001")?.state ?? "removed").not.toBe("active");
    } finally {
      await t.relay.stop();
      admissions.close();
      await agent.close();
    }
  });
});

// ---- the real process ---------------------------------------------------------------------------------------

let app: ApplianceProcess | undefined;
let agent: FakeAgent | undefined;
afterEach(async () => {
  await app?.kill();
  app?.cleanup();
  app = undefined;
  await agent?.close();
  agent = undefined;
});

const hostPort = (hp: string): [string, number] => {
  const i = hp.lastIndexOf(":");
  return [hp.slice(0, i), Number(hp.slice(i + 1))];
};

/** A full login against the process; returns the allocation's target. */
async function login(a: ApplianceProcess) {
  const [host, port] = hostPort(a.cm);
  const c = pcoipClient({ host, port, ca: a.ca });
  try {
    await c.hello();
    const auth = await c.authenticate("alice", "correct horse");
    if (auth.resultId !== "AUTH_SUCCESSFUL_AND_COMPLETE") throw new Error(`auth ${auth.resultId}`);
    await c.getResourceList();
    const alloc = await c.allocate("desktop-1");
    const target = alloc.msg?.op === "allocate-resource-resp" ? alloc.msg.target : undefined;
    if (!target) throw new Error(`allocate ${alloc.resultId} ${alloc.resultStr}`);
    await c.bye();
    return target;
  } finally {
    c.close();
  }
}

describe("the appliance process", () => {
  test("SIGHUP during logins and a live relay: logins go on, the relay is not cut, each reload is logged", async () => {
    agent = await startFakeAgent({ endpoint: true });
    app = await startApplianceProcess({ agent });
    const a = app;
    const target = await login(a);
    const ctl = await connectControl({
      hostname: target.ipAddress,
      port: target.port,
      serverName: target.sni,
      ca: pki.ca.cert,
    });
    if (!ctl.ok) throw new Error(ctl.error);
    let stop = false;
    let logins = 0;
    const failures: string[] = [];
    const loop = async () => {
      while (!stop) {
        try {
          await login(a);
          logins++;
        } catch (e) {
          failures.push(String(e));
        }
      }
    };
    const loops = [loop(), loop(), loop()];
    try {
      for (let i = 0; i < 3; i++) {
        await Bun.sleep(400);
        // A real change each time (the throttle window), so each SIGHUP rebuilds the CM plane.
        a.rewriteConfig({ tables: `[cm.throttle]\nwindowSeconds = ${600 + i}\n` });
        a.signal("SIGHUP");
        await a.waitForLog(
          (l) => l.msg === "configuration reloaded" && JSON.stringify(l.changed).includes(`throttle`),
          10_000,
        );
        ctl.client.write(`relay-${i}`);
        await ctl.client.waitFor(`relay-${i}`, 3000);
      }
      await Bun.sleep(400);
    } finally {
      stop = true;
      await Promise.all(loops);
      ctl.client.close();
    }
    // Any failure must at least be a clear *-resp, never a hang or a dropped connection (the next test asks for none).
    expect(failures.length).toBeLessThanOrEqual(3 * 3);
    for (const f of failures)
      expect(f).toMatch(/ALLOC_FAILED_RESOURCE_NOT_AVAILABLE|AUTH_FAILED|LIST_FAILED/);
    expect(logins).toBeGreaterThan(3);
    expect(a.logs.filter((l) => l.msg === "configuration reloaded").length).toBe(3);
    expect(a.proc.exitCode).toBeNull();
  }, 30_000);

  // A reload builds a new CM app; conversations the previous one holds are routed back to it by cookie until
  // they end (src/platform/cm-plane.ts), so a SIGHUP is invisible to clients mid-login.
  test("no login in flight is lost across a SIGHUP reload", async () => {
    agent = await startFakeAgent({ endpoint: true });
    app = await startApplianceProcess({ agent });
    const [host, port] = hostPort(app.cm);
    const c = pcoipClient({ host, port, ca: app.ca });
    try {
      await c.hello();
      expect((await c.authenticate("alice", "correct horse")).resultId).toBe("AUTH_SUCCESSFUL_AND_COMPLETE");
      app.rewriteConfig({ tables: "[cm.throttle]\nwindowSeconds = 601\n" });
      app.signal("SIGHUP");
      await app.waitForLog((l) => l.msg === "configuration reloaded");
      expect((await c.getResourceList()).resultId).toBe("LIST_SUCCESSFUL");
      expect((await c.allocate("desktop-1")).resultId).toBe("ALLOC_SUCCESSFUL");
    } finally {
      c.close();
    }
  });

  test("kill -9, then a restart on the same ports and folder: comes back clean, nothing stale left behind", async () => {
    agent = await startFakeAgent({ endpoint: true });
    // UDP source ports below the kernel's ephemeral range: the restart names the first run's (ephemeral) UDP
    // listener port, which must not fall inside the source-port range (config check refuses that).
    const sourcePorts = sgEnv();
    const first = await startApplianceProcess({ agent, env: sourcePorts });
    app = first;
    const before = new Set(readdirSync(first.dir, { recursive: true }).map(String));
    const target = await login(first);
    const ctl = await connectControl({
      hostname: target.ipAddress,
      port: target.port,
      serverName: target.sni,
      ca: pki.ca.cert,
    });
    if (!ctl.ok) throw new Error(ctl.error);
    ctl.client.write("before-kill");
    await ctl.client.waitFor("before-kill");
    // Mid-traffic, with a login in flight.
    const inFlight = login(first).catch(() => "cut");
    first.signal("SIGKILL");
    expect(await first.exited).not.toBe(0);
    await ctl.client.closed; // the relay died with the process
    await inFlight;
    // Restart on the very same ports (SO_REUSEADDR: no TIME_WAIT refusal) and the same folder.
    const env = {
      ...sourcePorts,
      PCOIP_CMSG_CM_LISTEN: first.cm,
      PCOIP_CMSG_CM_REDIRECTLISTEN: first.redirect,
      PCOIP_CMSG_SG_TCPLISTEN: first.sgTcp,
      PCOIP_CMSG_SG_UDPLISTEN: first.sgUdp,
      PCOIP_CMSG_ADMIN_LISTEN: first.admin,
    };
    const second = await startApplianceProcess({ agent, dir: first.dir, env });
    app = second;
    expect([second.cm, second.sgTcp, second.sgUdp, second.admin]).toEqual([
      first.cm,
      first.sgTcp,
      first.sgUdp,
      first.admin,
    ]);
    expect(second.stderr()).toBe("");
    expect(second.logs.filter((l) => typeof l.level === "number" && l.level >= 50)).toEqual([]);
    // Clean: no session of the killed process survives, and the SG admits nothing from before.
    const sessions = (await (await second.adminGet("/sessions")).json()) as unknown[];
    expect(sessions).toEqual([]);
    const stale = await connectControl({
      hostname: target.ipAddress,
      port: target.port,
      serverName: target.sni,
      ca: pki.ca.cert,
      timeoutMs: 2000,
    });
    expect(stale.ok).toBe(false);
    // And it works: a new login, a new relay.
    const t2 = await login(second);
    const c2 = await connectControl({
      hostname: t2.ipAddress,
      port: t2.port,
      serverName: t2.sni,
      ca: pki.ca.cert,
    });
    if (!c2.ok) throw new Error(c2.error);
    c2.client.write("after-restart");
    await c2.client.waitFor("after-restart");
    c2.client.close();
    // No state files, locks or sockets appeared in the folder: only what the test itself wrote.
    const after = readdirSync(second.dir, { recursive: true }).map(String);
    expect(after.filter((f) => !before.has(f))).toEqual([]);
  }, 30_000);
});
