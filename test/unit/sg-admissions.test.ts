// Claim: the admission table lets a control connection through only for an admitted client IP — by (IP, SNI),
// or by IP alone when exactly one admission of that IP is pending, never by SNI alone — and enforces the pending
// TTL, the reconnect grace, the session and per-IP caps and draining, with plain serialisable records.
import { describe, expect, test } from "bun:test";
import { type AdmitRequest, createAdmissions } from "../../src/sg/admissions.ts";

function setup(over: Parameters<typeof createAdmissions>[0] = {}) {
  const clock = { t: 1_700_000_000_000 };
  const admissions = createAdmissions({ now: () => clock.t, sweepEveryMs: 0, ...over });
  const events: string[] = [];
  admissions.subscribe((e) => events.push(`${e.admission.sessionLogId}:${e.reason}`));
  return { clock, admissions, events };
}

let n = 0;
function req(over: Partial<AdmitRequest> = {}): AdmitRequest {
  n++;
  return {
    sessionLogId: `33333333-0000-4000-8000-${String(n).padStart(12, "0")}`,
    agentSessionId: `agent-${n}`,
    clientIp: "198.51.100.7",
    agentHost: "10.20.3.14",
    agentUdpPort: 4172,
    sni: "WS-0003.corp.example",
    ...over,
  };
}

function must(r: ReturnType<ReturnType<typeof createAdmissions>["admit"]>) {
  if (!r.ok) throw new Error(`refused: ${r.reason}`);
  return r.admission;
}

describe("matching a control connection", () => {
  test("by (client IP, SNI), SNI compared case-insensitively", () => {
    const { admissions } = setup();
    const a = must(admissions.admit(req()));
    expect(admissions.matchTcp("198.51.100.7", "ws-0003.CORP.example")).toEqual({ ok: true, admission: a });
  });

  test("never by SNI alone: the right SNI from another IP is refused", () => {
    const { admissions } = setup();
    admissions.admit(req());
    expect(admissions.matchTcp("203.0.113.9", "ws-0003.corp.example")).toEqual({
      ok: false,
      reason: "no_admission",
    });
  });

  test("a wrong SNI is refused even when the IP has exactly one pending admission", () => {
    const { admissions } = setup();
    admissions.admit(req());
    expect(admissions.matchTcp("198.51.100.7", "ws-0004.corp.example")).toEqual({
      ok: false,
      reason: "wrong_sni",
    });
  });

  test("no SNI: the IP's only pending admission; two pending is ambiguous", () => {
    const { admissions } = setup();
    const a = must(admissions.admit(req()));
    expect(admissions.matchTcp("198.51.100.7", undefined)).toEqual({ ok: true, admission: a });
    admissions.admit(req({ sni: "ws-0009.corp.example" }));
    expect(admissions.matchTcp("198.51.100.7", undefined)).toEqual({ ok: false, reason: "no_sni_ambiguous" });
  });

  test("an IP-literal sni means no SNI will arrive: matched without one, also on reconnect", () => {
    const { admissions } = setup();
    const a = must(admissions.admit(req({ sni: "10.20.3.14" })));
    expect(a.sni).toBeNull();
    must(admissions.admit(req())); // a second pending admission of the same IP does not make it ambiguous
    expect(admissions.matchTcp("198.51.100.7", undefined)).toMatchObject({
      ok: true,
      admission: { sessionLogId: a.sessionLogId },
    });
    admissions.attachTcp(a.sessionLogId);
    expect(admissions.matchTcp("198.51.100.7", undefined)).toMatchObject({
      admission: { sessionLogId: a.sessionLogId, state: "active" },
    });
    // A client that does send the literal is treated the same way.
    expect(admissions.matchTcp("198.51.100.7", "10.20.3.14")).toMatchObject({
      admission: { sessionLogId: a.sessionLogId },
    });
  });

  test("two pending sessions to one agent from one IP are taken oldest first, one connection each", () => {
    const { admissions, clock } = setup();
    const first = must(admissions.admit(req()));
    clock.t += 10;
    const second = must(admissions.admit(req()));
    const m1 = admissions.matchTcp("198.51.100.7", "ws-0003.corp.example");
    expect(m1).toMatchObject({ admission: { sessionLogId: first.sessionLogId } });
    admissions.attachTcp(first.sessionLogId);
    const m2 = admissions.matchTcp("198.51.100.7", "ws-0003.corp.example");
    expect(m2).toMatchObject({ admission: { sessionLogId: second.sessionLogId } });
  });

  test("::ffff: peers and admissions are one canonical IPv4", () => {
    const { admissions } = setup();
    const a = must(admissions.admit(req({ clientIp: "::ffff:198.51.100.8" })));
    expect(a.clientIp).toBe("198.51.100.8");
    expect(admissions.matchTcp("::ffff:198.51.100.8", "ws-0003.corp.example")).toMatchObject({ ok: true });
    expect(admissions.matchTcp("198.51.100.8", "ws-0003.corp.example")).toMatchObject({ ok: true });
  });
});

describe("time", () => {
  test("a pending admission expires after 90 s (injected clock), and the sweep reports it", () => {
    const { admissions, clock, events } = setup();
    const a = must(admissions.admit(req()));
    expect(a.expiresAt - a.admittedAt).toBe(90_000);
    clock.t += 89_999;
    expect(admissions.matchTcp("198.51.100.7", "ws-0003.corp.example").ok).toBe(true);
    clock.t += 1;
    expect(admissions.matchTcp("198.51.100.7", "ws-0003.corp.example")).toEqual({
      ok: false,
      reason: "no_admission",
    });
    admissions.sweep();
    expect(events).toEqual([`${a.sessionLogId}:expired`]);
    expect(admissions.size).toBe(0);
  });

  test("an active session never expires; after its control connection closes it accepts reconnects for 30 s", () => {
    const { admissions, clock, events } = setup();
    const a = must(admissions.admit(req()));
    admissions.attachTcp(a.sessionLogId);
    clock.t += 3_600_000; // an hour of desktop
    admissions.sweep();
    expect(admissions.get(a.sessionLogId)?.state).toBe("active");
    admissions.detachTcp(a.sessionLogId);
    expect(admissions.get(a.sessionLogId)).toMatchObject({ state: "ended", endedAt: clock.t });
    clock.t += 29_999;
    expect(admissions.matchTcp("198.51.100.7", "ws-0003.corp.example")).toMatchObject({
      ok: true,
      admission: { state: "ended" },
    });
    admissions.attachTcp(a.sessionLogId); // the client reconnected in time
    expect(admissions.get(a.sessionLogId)).toMatchObject({ state: "active", tcpConnects: 2, endedAt: null });
    admissions.detachTcp(a.sessionLogId);
    clock.t += 30_000;
    expect(admissions.matchTcp("198.51.100.7", "ws-0003.corp.example").ok).toBe(false);
    admissions.sweep();
    expect(events).toEqual([`${a.sessionLogId}:closed`]);
  });

  test("a session with two control connections ends only when both have closed", () => {
    const { admissions } = setup();
    const a = must(admissions.admit(req()));
    admissions.attachTcp(a.sessionLogId);
    admissions.attachTcp(a.sessionLogId);
    admissions.detachTcp(a.sessionLogId);
    expect(admissions.get(a.sessionLogId)?.state).toBe("active");
    admissions.detachTcp(a.sessionLogId);
    expect(admissions.get(a.sessionLogId)?.state).toBe("ended");
  });
});

describe("limits", () => {
  test("maxSessions: 3 admitted, the 4th refused and counted; room again once one expires", () => {
    const { admissions, clock } = setup({ maxSessions: 3 });
    for (let i = 0; i < 3; i++) must(admissions.admit(req({ clientIp: `192.0.2.${i + 1}` })));
    expect(admissions.admit(req({ clientIp: "192.0.2.99" }))).toEqual({ ok: false, reason: "max_sessions" });
    expect(admissions.counters.refused.max_sessions).toBe(1);
    clock.t += 90_000; // all three expire; no sweep needed for the count to drop
    expect(admissions.admit(req({ clientIp: "192.0.2.99" })).ok).toBe(true);
  });

  test("the per-client-IP cap is off by default (a corporate NAT is one IP)", () => {
    const { admissions } = setup();
    for (let i = 0; i < 50; i++) must(admissions.admit(req()));
    expect(admissions.size).toBe(50);
  });

  test("maxPerClientIp: 2 from one IP, the 3rd refused; other IPs unaffected", () => {
    const { admissions } = setup({ maxPerClientIp: 2 });
    must(admissions.admit(req()));
    must(admissions.admit(req()));
    expect(admissions.admit(req())).toEqual({ ok: false, reason: "per_ip_limit" });
    expect(admissions.counters.refused.per_ip_limit).toBe(1);
    expect(admissions.admit(req({ clientIp: "198.51.100.99" })).ok).toBe(true);
  });

  test("draining refuses new admissions; live sessions keep matching", () => {
    const drain = { draining: false };
    const { admissions } = setup({ drain });
    const a = must(admissions.admit(req()));
    drain.draining = true;
    expect(admissions.admit(req())).toEqual({ ok: false, reason: "draining" });
    expect(admissions.matchTcp("198.51.100.7", "ws-0003.corp.example").ok).toBe(true);
    drain.draining = false;
    expect(admissions.admit(req()).ok).toBe(true);
    expect(a.state).toBe("pending");
  });

  test("a client IP that is not an IP is refused as invalid", () => {
    const { admissions } = setup();
    expect(admissions.admit(req({ clientIp: "not-an-ip" }))).toEqual({ ok: false, reason: "invalid" });
  });
});

describe("records and events", () => {
  test("records are plain data: JSON and structuredClone round-trip them unchanged", () => {
    const { admissions } = setup();
    const a = must(admissions.admit(req()));
    admissions.attachTcp(a.sessionLogId);
    const live = admissions.list();
    expect(JSON.parse(JSON.stringify(live))).toEqual(live);
    expect(structuredClone(live)).toEqual(live);
    // Snapshots: changing what the caller holds does not change the table.
    (live[0] as { state: string }).state = "pending";
    expect(admissions.get(a.sessionLogId)?.state).toBe("active");
  });

  test("list(state) copies only the records in that state (the UDP sweep asks for the active ones)", () => {
    const { admissions } = setup();
    const a = must(admissions.admit(req({ sessionLogId: "00000000-0000-4000-8000-00000000000a" })));
    must(admissions.admit(req({ sessionLogId: "00000000-0000-4000-8000-00000000000b" })));
    admissions.attachTcp(a.sessionLogId);
    expect(admissions.list().length).toBe(2);
    expect(admissions.list("active").map((x) => x.sessionLogId)).toEqual([a.sessionLogId]);
    expect(admissions.list("pending").length).toBe(1);
  });

  test("end() revokes at once (no grace); a second allocation of the same session replaces the first", () => {
    const { admissions, events } = setup();
    const a = must(admissions.admit(req()));
    admissions.attachTcp(a.sessionLogId);
    expect(admissions.end(a.sessionLogId)).toBe(true);
    expect(admissions.matchTcp("198.51.100.7", "ws-0003.corp.example").ok).toBe(false);
    expect(admissions.end(a.sessionLogId)).toBe(false);
    const b = must(admissions.admit(req()));
    const b2 = must(admissions.admit(req({ sessionLogId: b.sessionLogId, agentHost: "10.20.3.15" })));
    expect(admissions.size).toBe(1);
    expect(admissions.get(b.sessionLogId)?.agentHost).toBe("10.20.3.15");
    expect(b2.agentHost).toBe("10.20.3.15");
    expect(events).toEqual([`${a.sessionLogId}:revoked`, `${b.sessionLogId}:replaced`]);
  });

  test("pickUdp: of the IP's active sessions, the most recently activated usable one; pending never", () => {
    const { admissions, clock } = setup();
    const a = must(admissions.admit(req()));
    const b = must(admissions.admit(req()));
    must(admissions.admit(req())); // pending: never picked
    admissions.attachTcp(a.sessionLogId);
    clock.t += 5;
    admissions.attachTcp(b.sessionLogId);
    const all = () => true;
    expect(admissions.pickUdp("198.51.100.7", all).chosen?.sessionLogId).toBe(b.sessionLogId);
    const notB = (id: string) => id !== b.sessionLogId;
    expect(admissions.pickUdp("::ffff:198.51.100.7", notB).chosen?.sessionLogId).toBe(a.sessionLogId);
    const none = admissions.pickUdp("198.51.100.7", () => false);
    expect(none).toEqual({ chosen: undefined, activeSeen: true });
    expect(admissions.pickUdp("198.51.100.8", all)).toEqual({ chosen: undefined, activeSeen: false });
    // Equal activation times: the earlier admitted session wins.
    const c = must(admissions.admit(req({ clientIp: "198.51.100.9" })));
    const d = must(admissions.admit(req({ clientIp: "198.51.100.9" })));
    admissions.attachTcp(c.sessionLogId);
    admissions.attachTcp(d.sessionLogId);
    expect(admissions.pickUdp("198.51.100.9", all).chosen?.sessionLogId).toBe(c.sessionLogId);
    // Only the IP's own sessions: one from another IP is never a candidate.
    expect(admissions.pickUdp("198.51.100.9", (id) => id === a.sessionLogId).chosen).toBeUndefined();
  });
});
