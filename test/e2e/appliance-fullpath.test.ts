// Claim: one scripted PCoIP session through the running appliance process — client → CM (login, list, allocate)
// → SG (TLS control connection to the agent, bytes both ways; UDP to the agent's echo) — moves every /metrics
// counter by exactly what the script did, and the log tells the session's story under one session id across CM and
// SG lines: login and allocation audit lines, sg_admit when the SG binds the control connection, session_end with
// duration and bytes, and one verdict line. A refused control connection gives sg_deny with its reason; a failed
// launch gives a verdict naming the stage.
import { describe, expect, test } from "bun:test";
import { X509Certificate } from "node:crypto";
import { STAGES as JOURNAL_STAGES } from "../../src/observability/session-journal.ts";
import { connectControl } from "../peers/agent-endpoint.ts";
import type { ApplianceProcess, LogLine } from "../peers/appliance-process.ts";
import {
  cmClient,
  hostPort,
  linesOf,
  moved,
  openControl,
  sample,
  scrape,
  signIn,
  udpPeer,
  until,
} from "../peers/appliance-session.ts";
import { applianceTest } from "../peers/appliance-test.ts";
import type { FakeAgent } from "../peers/fake-agent.ts";
import { pcoipClient } from "../peers/pcoip-client.ts";
import { testPki } from "../peers/test-certs.ts";

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
/** What a verdict line may name: the journal's stages, or "done" once media flowed both ways. */
const STAGES: readonly string[] = [...JOURNAL_STAGES, "done"];

const t = applianceTest();

function start(env: Record<string, string> = {}): Promise<{ app: ApplianceProcess; agent: FakeAgent }> {
  // No reconnect grace: the session ends (and its end is logged) as soon as its control connection closes.
  return t.start({ env: { PCOIP_CMSG_SG_RECONNECTGRACESECONDS: "0", ...env } });
}

describe("a scripted session through the appliance process", () => {
  test("metrics move by exactly what the session did; CM and SG lines share one session id", async () => {
    // The default udpSourcePorts (55000–59999): the agent must see the session's UDP from that range.
    const { app, agent } = await start({ PCOIP_CMSG_SG_UDPSOURCEPORTS: "55000-59999" });
    const before = await scrape(app);

    // A failed login on its own pre-session (one failure: no throttle delay).
    const wrong = cmClient(app);
    t.closers.push(() => wrong.close());
    expect((await wrong.hello()).operation).toBe("hello-resp");
    const failed = await wrong.authenticate("alice", "not the password");
    expect(failed.resultId).toMatch(/^AUTH_FAILED/);

    // The real session: one allocation of a desktop that does not exist, then the real one. Its journal record
    // (and so session_end's durationMs) starts at its hello, so the wall clock starts here too.
    const startedAt = Date.now();
    const c = cmClient(app);
    t.closers.push(() => c.close());
    expect((await c.hello()).operation).toBe("hello-resp");
    expect((await c.authenticate("alice", "correct horse")).resultId).toBe("AUTH_SUCCESSFUL_AND_COMPLETE");
    expect((await c.getResourceList()).resultId).toBe("LIST_SUCCESSFUL");
    const nope = await c.allocate("no-such-desktop");
    expect(nope.resultId).toBe("ALLOC_FAILED_RESOURCE_NOT_AVAILABLE");
    const alloc = await c.allocate("desktop-1");
    expect(alloc.resultId).toBe("ALLOC_SUCCESSFUL");
    // The client is sent to the SG, not to the agent.
    expect(alloc.body).toContain(`<port>${hostPort(app.sgTcp).port}</port>`);
    expect(alloc.body).toContain("<sni>desktop-1.test</sni>");
    const agentSessionId = /<session-id>([^<]*)<\/session-id>/.exec(alloc.body)?.[1];
    const allocLine = await app.waitForLog(
      (l) => l.event === "allocation" && l.agentSessionId === agentSessionId,
    );
    const sessionId = String(allocLine.sessionId);
    expect(sessionId).toMatch(UUID);

    const admitted = await scrape(app);
    expect(sample(admitted, "pcoip_sg_sessions", { state: "pending" })).toBe(1);

    // Control connection: TLS end to end with the agent (its certificate, not the SG's), 64 KiB each way.
    const control = await openControl(app);
    t.closers.push(() => control.close());
    expect(control.peerCert.fingerprint256).toBe(
      new X509Certificate(testPki().leaf(["localhost", "127.0.0.1", "::1", "desktop-1.test"]).cert)
        .fingerprint256,
    );
    const payload = "0123456789abcdef".repeat(4096); // 65536 bytes
    for (let at = 0; at < payload.length; at += 8192) control.write(payload.slice(at, at + 8192));
    await control.waitFor(payload, 10_000);
    expect(agent.endpoint?.accepted.at(-1)?.sni).toBe("desktop-1.test");

    // UDP: 10 datagrams of 100 bytes, each echoed by the agent back through the SG's 4172 listener.
    const udp = await udpPeer(app);
    t.closers.push(() => udp.close());
    await udp.roundTrip(`${"u".repeat(92)}-first-0`); // binds the flow (resent until echoed)
    const sentFirst = udp.replies.length; // echoes of the binding datagram (1 unless it was resent)
    for (let i = 1; i < 10; i++) udp.send(`${"u".repeat(92)}-dgram-${i}`);
    await until(() => udp.replies.length >= sentFirst + 9, "9 more UDP echoes");
    expect(new Set(udp.replies.map((r) => r.from))).toEqual(new Set([app.sgUdp]));
    const agentSources = [...(agent.endpoint?.udpBySource.keys() ?? [])].map((k) => Number(k.split("|")[1]));
    expect(agentSources.length).toBe(1);
    expect(agentSources[0]).toBeGreaterThanOrEqual(55000);
    expect(agentSources[0]).toBeLessThanOrEqual(59999);
    const udpCount = sentFirst + 9;

    const during = await scrape(app);
    expect(sample(during, "pcoip_sg_sessions", { state: "active" })).toBe(1);
    expect(sample(during, "pcoip_sg_tcp_relays_open")).toBe(1);
    expect(moved(before, during, "pcoip_sg_udp_flows_open")).toBe(1);

    const admitLine = await app.waitForLog(
      (l) => l.audit === true && l.event === "sg_admit" && l.sessionId === sessionId,
      5000,
    );
    expect(admitLine.sessionId).toBe(sessionId);

    // End: the client half-closes, the agent answers and closes; with no grace the session ends.
    control.halfClose();
    await control.waitFor(`END ${payload.length}\n`, 10_000);
    await control.closed;
    const relayClosed = await app.waitForLog(
      (l) => l.msg === "sg tcp relay closed" && l.sessionId === sessionId,
    );
    const endLine = await app.waitForLog(
      (l) => l.audit === true && l.event === "session_end" && l.sessionId === sessionId,
      10_000,
    );
    const wall = Date.now() - startedAt;
    await until(
      async () => sample(await scrape(app), "pcoip_sg_udp_flows_open") === 0,
      "the UDP flow closed",
    );
    const after = await scrape(app);

    // CM counters.
    expect(moved(before, after, "pcoip_cm_logins_total", { outcome: "ok" })).toBe(1);
    expect(moved(before, after, "pcoip_cm_logins_total", { outcome: "failed" })).toBe(1);
    expect(moved(before, after, "pcoip_cm_logins_total", { outcome: "throttled" })).toBe(0);
    expect(moved(before, after, "pcoip_cm_allocations_total", { result: "ALLOC_SUCCESSFUL" })).toBe(1);
    expect(
      moved(before, after, "pcoip_cm_allocations_total", { result: "ALLOC_FAILED_RESOURCE_NOT_AVAILABLE" }),
    ).toBe(1);
    expect(moved(before, after, "pcoip_cm_requests_total")).toBe(2 + 5); // hello+auth, hello+auth+list+2×alloc
    expect(moved(before, after, "pcoip_cm_protocol_errors_total")).toBe(0);

    // SG counters.
    expect(moved(before, after, "pcoip_sg_admissions_total")).toBe(1);
    expect(moved(before, after, "pcoip_sg_tcp_accepted_total")).toBe(1);
    expect(sample(after, "pcoip_sg_tcp_relays_open")).toBe(0);
    expect(sample(after, "pcoip_sg_sessions", { state: "active" })).toBe(0);
    const tcpUp = moved(before, after, "pcoip_sg_tcp_bytes_total", { direction: "to_agent" });
    const tcpDown = moved(before, after, "pcoip_sg_tcp_bytes_total", { direction: "to_client" });
    // The counters and the relay's own closing line agree to the byte …
    expect(tcpUp).toBe(Number(relayClosed.bytesUp));
    expect(tcpDown).toBe(Number(relayClosed.bytesDown));
    // … and they are the payload plus TLS framing (handshake and records), not more.
    expect(tcpUp).toBeGreaterThanOrEqual(payload.length);
    expect(tcpUp).toBeLessThan(payload.length + 16_384);
    expect(tcpDown).toBeGreaterThanOrEqual(payload.length + `END ${payload.length}\n`.length);
    expect(tcpDown).toBeLessThan(payload.length + 16_384);
    expect(moved(before, after, "pcoip_sg_udp_packets_total", { direction: "to_agent" })).toBe(udpCount);
    expect(moved(before, after, "pcoip_sg_udp_packets_total", { direction: "to_client" })).toBe(udpCount);
    expect(moved(before, after, "pcoip_sg_udp_bytes_total", { direction: "to_agent" })).toBe(udpCount * 100);
    expect(moved(before, after, "pcoip_sg_udp_bytes_total", { direction: "to_client" })).toBe(udpCount * 100);
    expect(moved(before, after, "pcoip_sg_udp_drops_total", { reason: "no_session" })).toBe(0);

    // session_end: duration within the wall time, bytes those of the session (TCP, and maybe UDP too).
    const udpBytes = udpCount * 100;
    expect(Number(endLine.durationMs)).toBeGreaterThan(0);
    expect(Number(endLine.durationMs)).toBeLessThanOrEqual(wall + 1000);
    expect(Number(endLine.bytesFromClient)).toBeGreaterThanOrEqual(tcpUp);
    expect(Number(endLine.bytesFromClient)).toBeLessThanOrEqual(tcpUp + udpBytes);
    expect(Number(endLine.bytesToClient)).toBeGreaterThanOrEqual(tcpDown);
    expect(Number(endLine.bytesToClient)).toBeLessThanOrEqual(tcpDown + udpBytes);

    // One session id from the CM's login to the SG's end.
    const mine = linesOf(app, sessionId);
    const has = (pred: (l: LogLine) => boolean, what: string) =>
      expect({ what, found: mine.some(pred) }).toEqual({ what, found: true });
    has((l) => l.audit === true && l.event === "login_ok" && l.user === "alice", "CM login_ok audit");
    has((l) => l.audit === true && l.event === "allocation" && l.via === "sg", "CM allocation audit");
    has((l) => l.audit === true && l.event === "sg_admit", "SG sg_admit audit");
    has((l) => l.msg === "sg tcp relay open", "SG tcp relay open");
    has((l) => l.msg === "sg udp flow bound", "SG udp flow bound");
    has((l) => l.audit === true && l.event === "session_end", "SG session_end audit");
    // The failed login belongs to the other pre-session, not to this one.
    expect(mine.some((l) => l.event === "login_failed")).toBe(false);

    // Exactly one verdict for the session, and it says it got all the way.
    await app.waitForLog((l) => l.verdict === true && l.sessionId === sessionId, 5000);
    const verdicts = linesOf(app, sessionId).filter((l) => l.verdict === true);
    expect(verdicts).toHaveLength(1);
    const verdict = verdicts[0]!;
    expect(verdict.stage).toBe("done");
    expect(typeof verdict.cause).toBe("string");
  });

  test("a control connection for another desktop is refused: sg_deny with the reason, denial counter +1", async () => {
    const { app, agent } = await start();
    const s = await signIn(app);
    t.closers.push(() => s.client.close());
    const before = await scrape(app);
    const acceptedBefore = agent.endpoint?.accepted.length ?? 0;

    const { host, port } = hostPort(app.sgTcp);
    const refused = await connectControl({
      hostname: host,
      port,
      serverName: "someone-elses-desktop.test",
      ca: testPki().ca.cert,
      timeoutMs: 8000,
    });
    expect(refused.ok).toBe(false);
    const deny = await app.waitForLog((l) => l.audit === true && l.event === "sg_deny", 5000);
    expect(deny.reason).toBe("wrong_sni");
    const after = await scrape(app);
    expect(moved(before, after, "pcoip_sg_tcp_denials_total", { reason: "wrong_sni" })).toBe(1);
    expect(moved(before, after, "pcoip_sg_tcp_accepted_total")).toBe(1);
    expect(agent.endpoint?.accepted.length).toBe(acceptedBefore); // nothing reached the agent
    // The admission is untouched: the right connection still gets through.
    expect(sample(after, "pcoip_sg_sessions", { state: "pending" })).toBe(1);
    const control = await openControl(app);
    t.closers.push(() => control.close());
    control.write("after-deny");
    await control.waitFor("after-deny");
    await app.waitForLog((l) => l.event === "sg_admit" && l.sessionId === s.sessionId, 5000);
  });

  test("a launch the agent refuses ends with one verdict naming agent-launch and the result", async () => {
    const { app, agent } = await start();
    await agent.setMode("user_auth");
    const mark = app.logs.length;
    const c = cmClient(app);
    t.closers.push(() => c.close());
    expect((await c.hello()).operation).toBe("hello-resp");
    expect((await c.authenticate("alice", "correct horse")).resultId).toBe("AUTH_SUCCESSFUL_AND_COMPLETE");
    expect((await c.getResourceList()).resultId).toBe("LIST_SUCCESSFUL");
    const alloc = await c.allocate("desktop-1");
    expect(alloc.resultId).toMatch(/^ALLOC_FAILED/);
    await c.bye();
    const sessionId = String(app.logs.slice(mark).find((l) => typeof l.sessionId === "string")?.sessionId);
    expect(sessionId).toMatch(UUID);
    const verdict = await app.waitForLog((l) => l.verdict === true && l.sessionId === sessionId, 10_000);
    // `stage` is the last stage reached; the stage that failed is named too (failedAt), with the result.
    expect(STAGES).toContain(String(verdict.stage));
    expect(verdict.failedAt ?? verdict.stage).toBe("agent-launch");
    expect(String(verdict.cause)).toContain(alloc.resultId);
    expect(app.logs.filter((l) => l.verdict === true && l.sessionId === sessionId)).toHaveLength(1);
  });
});

describe("a session that allocates twice", () => {
  test("the second allocation replaces the first admission; the session still ends with one session_end line", async () => {
    const { app } = await start();
    const c = cmClient(app);
    t.closers.push(() => c.close());
    await c.hello();
    expect((await c.authenticate("alice", "correct horse")).resultId).toBe("AUTH_SUCCESSFUL_AND_COMPLETE");
    await c.getResourceList();
    expect((await c.allocate("desktop-1")).resultId).toBe("ALLOC_SUCCESSFUL");
    // The CM keeps no password after a launch: the second allocation needs a fresh sign-in; a new hello on the
    // same cookie restarts the conversation in place, under the same session id.
    await c.hello();
    expect((await c.authenticate("alice", "correct horse")).resultId).toBe("AUTH_SUCCESSFUL_AND_COMPLETE");
    await c.getResourceList();
    const second = await c.allocate("desktop-1");
    expect(second.resultId).toBe("ALLOC_SUCCESSFUL");
    const agentSessionId = /<session-id>([^<]*)<\/session-id>/.exec(second.body)?.[1];
    const alloc = await app.waitForLog(
      (l) => l.event === "allocation" && l.agentSessionId === agentSessionId,
    );
    const sessionId = String(alloc.sessionId);
    const control = await openControl(app);
    control.write("ping");
    await control.waitFor("ping");
    control.close();
    await app.waitForLog((l) => l.event === "session_end" && l.sessionId === sessionId, 10_000);
    await Bun.sleep(300);
    const ends = app.logs.filter((l) => l.event === "session_end" && l.sessionId === sessionId);
    expect(ends).toHaveLength(1);
    // The end is the session's real one (its control connection closed), with its bytes — not the replacement.
    expect(ends[0]).toMatchObject({ reason: "sg: closed" });
    expect(Number(ends[0]!.bytesFromClient)).toBeGreaterThan(0);
    expect(app.logs.filter((l) => l.verdict === true && l.sessionId === sessionId)).toHaveLength(1);
  });
});

describe("client address families (enableIpv6)", () => {
  test("a ::1 client is sent to the IPv6 externalPcoipIp and a 127.0.0.1 client to the IPv4 one", async () => {
    const { app } = await t.start({
      env: {
        PCOIP_CMSG_ENABLEIPV6: "true",
        PCOIP_CMSG_EXTERNALPCOIPIP: "203.0.113.10,2001:db8::10",
        PCOIP_CMSG_CM_LISTEN: "127.0.0.1:0,[::1]:0",
      },
    });
    const cmV6 = await app.waitForLog((l) => l.listener === "cm" && String(l.address).startsWith("["));
    const v6 = /^\[(.*)\]:(\d+)$/.exec(String(cmV6.address))!;
    const targets: string[] = [];
    for (const [host, port, localAddress] of [
      [v6[1]!, Number(v6[2]), "::1"],
      [hostPort(app.cm).host, hostPort(app.cm).port, "127.0.0.1"],
    ] as const) {
      const c = pcoipClient({ host, port, ca: app.ca, servername: "localhost", localAddress });
      t.closers.push(() => c.close());
      await c.hello();
      expect((await c.authenticate("alice", "correct horse")).resultId).toBe("AUTH_SUCCESSFUL_AND_COMPLETE");
      await c.getResourceList();
      const alloc = await c.allocate("desktop-1");
      expect(alloc.resultId).toBe("ALLOC_SUCCESSFUL");
      targets.push(/<ip-address>([^<]*)<\/ip-address>/.exec(alloc.body)?.[1] ?? "");
    }
    expect(targets).toEqual(["2001:db8::10", "203.0.113.10"]);
    // The admissions hold canonical client IPs (no ::ffff: form).
    const sessions = (await (await app.adminGet("/sessions")).json()) as { clientIp: string }[];
    expect(sessions.map((s) => s.clientIp).sort()).toEqual(["127.0.0.1", "::1"]);
  });
});
