// Claim: the CM's limits hold on real sockets — failed logins are delayed once the free ones are used (the answer
// stays AUTH_FAILED_…), a sprayer behind a NAT costs honest users behind it at most 1 s, the pre-session store
// evicts unauthenticated sessions first, a full establishment pipeline gets a clear busy answer, collaboration
// off refuses a second user's allocation, and with the SG on only target/ip-address and port are rewritten.
import { afterEach, describe, expect, test } from "bun:test";
import type { GatewayAdmission, SessionGateway } from "../../src/cm/server.ts";
import { type Harness, startHarness } from "./cm-harness.ts";

let h: Harness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

/** A clock whose sleep records the delay and returns at once (the delay is what is asserted, not the time). */
/**
 * A clock that records the throttle's waits instead of sleeping. `frozen`: its time also stands still, so the
 * throttle's arithmetic does not depend on how long password checks take on a loaded machine (with the real time,
 * two argon2 checks slower than 1 s let a reserved slot pass and the "beyond the longest delay" case signed in).
 */
function recordingClock(frozen = false) {
  const slept: number[] = [];
  const t0 = Date.now();
  const now = frozen ? () => t0 : () => Date.now();
  return { slept, clock: { now, sleep: async (ms: number) => void slept.push(ms) } };
}

async function listed(c: ReturnType<Harness["client"]>, user = "alice", pw = "correct horse") {
  await c.hello();
  expect((await c.authenticate(user, pw)).resultId).toBe("AUTH_SUCCESSFUL_AND_COMPLETE");
  expect((await c.getResourceList()).resultId).toBe("LIST_SUCCESSFUL");
}

describe("failed-login throttling", () => {
  test("crossing the limit: the 4th attempt is delayed, the answer stays AUTH_FAILED_…", async () => {
    const { slept, clock } = recordingClock();
    h = await startHarness({
      cm: { clock, throttle: { failuresBeforeDelay: 3, baseDelayMs: 1000, maxDelayMs: 10_000 } },
    });
    const c = h.client();
    try {
      await c.hello();
      const ids: string[] = [];
      for (let i = 0; i < 5; i++) ids.push((await c.authenticate("alice", `guess-${i}`)).resultId);
      expect(ids).toEqual(Array(5).fill("AUTH_FAILED_UNKNOWN_USERNAME_OR_PASSWORD"));
      expect(slept).toEqual([1000, 2000]);
      // The right password still works (after its delay), and resets the count.
      expect((await c.authenticate("alice", "correct horse")).resultId).toBe("AUTH_SUCCESSFUL_AND_COMPLETE");
      expect(slept).toEqual([1000, 2000, 4000]);
      expect(h.cm.counters.loginsFailed).toBe(5);
      expect(h.cm.counters.loginsOk).toBe(1);
    } finally {
      c.close();
    }
  });

  test("beyond the longest delay: answered at once with the same failure, password not checked", async () => {
    const { slept, clock } = recordingClock(true);
    h = await startHarness({
      cm: { clock, throttle: { failuresBeforeDelay: 1, baseDelayMs: 1000, maxDelayMs: 1000 } },
    });
    const c = h.client();
    try {
      await c.hello();
      await c.authenticate("alice", "x"); // free
      // Delayed 1 s (the slot is reserved past now, so the next one would wait 2 s: beyond the cap).
      expect((await c.authenticate("alice", "y")).resultId).toBe("AUTH_FAILED_UNKNOWN_USERNAME_OR_PASSWORD");
      const locked = await c.authenticate("alice", "correct horse");
      expect(locked.resultId).toBe("AUTH_FAILED_UNKNOWN_USERNAME_OR_PASSWORD");
      expect(h.cm.counters.loginsThrottled).toBeGreaterThan(0);
      expect(slept).toEqual([1000]);
      expect(h.logs.text()).toContain('"throttled":"beyond_max_delay"');
    } finally {
      c.close();
    }
  });

  test("NAT: a sprayer behind 203.0.113.5 costs 20 honest users there at most 1 s each", async () => {
    const { slept, clock } = recordingClock();
    const users: Record<string, string> = { alice: "correct horse" };
    h = await startHarness({
      users,
      cm: { clock, trustedProxies: ["127.0.0.1"], throttle: { distinctUsersPerIp: 30 } },
    });
    const nat = [["X-Forwarded-For", "203.0.113.5"]] as const;
    const sprayer = h.client({ headers: nat });
    try {
      await sprayer.hello();
      for (let i = 0; i < 40; i++) await sprayer.authenticate(`victim${i}`, "Winter2026!");
    } finally {
      sprayer.close();
    }
    expect(slept).toEqual(Array(9).fill(1000)); // from the 32nd name on, each spray attempt waits 1 s
    slept.length = 0;
    for (let i = 0; i < 20; i++) {
      const c = h.client({ headers: nat });
      try {
        await c.hello();
        expect((await c.authenticate("alice", "correct horse")).resultId).toBe(
          "AUTH_SUCCESSFUL_AND_COMPLETE",
        );
      } finally {
        c.close();
      }
    }
    expect(slept.length).toBe(20);
    expect(Math.max(...slept)).toBeLessThanOrEqual(1000);
    // Another client IP is not slowed at all.
    slept.length = 0;
    const other = h.client({ headers: [["X-Forwarded-For", "198.51.100.9"]] });
    try {
      await other.hello();
      await other.authenticate("alice", "correct horse");
    } finally {
      other.close();
    }
    expect(slept).toEqual([]);
    // 60 argon2 checks one after another: generous for a loaded 2-core CI box; only a hang should hit it.
  }, 150_000);
});

describe("pre-session store", () => {
  test("max pre-sessions: the unauthenticated session is evicted, the signed-in one survives", async () => {
    h = await startHarness({ cm: { limits: { maxPreSessions: 2 } } });
    const signed = h.client();
    const idle = h.client();
    const late = h.client();
    try {
      await signed.hello();
      await signed.authenticate("alice", "correct horse");
      await idle.hello();
      await late.hello();
      expect(h.cm.sessions.size).toBe(2);
      expect((await idle.authenticate("alice", "correct horse")).resultId).toBe("AUTH_FAILED_ACCESS_DENIED");
      expect((await signed.getResourceList()).resultId).toBe("LIST_SUCCESSFUL");
      expect((await late.authenticate("alice", "correct horse")).resultId).toBe(
        "AUTH_SUCCESSFUL_AND_COMPLETE",
      );
      expect(h.cm.sessions.counters.removed.evicted).toBe(1);
    } finally {
      for (const c of [signed, idle, late]) c.close();
    }
  });

  test("an idle pre-session expires after the idle time", async () => {
    let now = 1_000_000;
    h = await startHarness({
      cm: { clock: { now: () => now, sleep: async () => {} }, limits: { preSessionIdleMs: 900_000 } },
    });
    const c = h.client();
    try {
      await c.hello();
      await c.authenticate("alice", "correct horse");
      now += 899_000;
      expect((await c.getResourceList()).resultId).toBe("LIST_SUCCESSFUL");
      now += 900_001;
      expect((await c.getResourceList()).resultId).toBe("LIST_FAILED_NO_ENTITLEMENT");
      expect(h.cm.sessions.counters.removed.expired).toBe(1);
    } finally {
      c.close();
    }
  });
});

describe("busy", () => {
  test("maxConcurrentEstablishments reached: a clear busy answer, not a pile-up", async () => {
    h = await startHarness({
      agent: { mode: "slow", slowMs: 1500 },
      agentTimeoutMs: 5000,
      cm: { limits: { maxConcurrentEstablishments: 1 } },
    });
    const a = h.client();
    const b = h.client();
    try {
      await listed(a);
      await listed(b);
      const first = a.allocate("ws-1");
      while (h.agent.requests.length === 0) await Bun.sleep(10);
      const second = await b.allocate("ws-1");
      expect(second.resultId).toBe("ALLOC_FAILED_SERVER_BUSY");
      expect(second.resultStr).toBe("The server is busy. Please try again shortly.");
      expect((await first).resultId).toBe("ALLOC_SUCCESSFUL");
      expect(h.cm.counters.busy).toBe(1);
      expect(h.cm.counters.allocations).toEqual({ ALLOC_FAILED_SERVER_BUSY: 1, ALLOC_SUCCESSFUL: 1 });
    } finally {
      a.close();
      b.close();
    }
  });
});

describe("collaboration", () => {
  test("off: a second user's concurrent allocation of the desktop is refused; the holder may allocate again", async () => {
    h = await startHarness({
      users: { alice: "correct horse", bob: "bob-pw" },
      desktops: (agent) => [
        {
          id: "ws-1",
          name: "WS",
          agentHost: agent.hostname,
          agentPort: agent.port,
          users: ["*"],
          groups: [],
        },
      ],
      cm: { enableCollaboration: false },
    });
    const alice = h.client();
    const bob = h.client();
    const alice2 = h.client();
    try {
      await listed(alice);
      expect((await alice.allocate("ws-1")).resultId).toBe("ALLOC_SUCCESSFUL");
      await listed(bob, "bob", "bob-pw");
      const refused = await bob.allocate("ws-1");
      expect(refused.resultId).toBe("ALLOC_FAILED_RESOURCE_IN_USE");
      expect(refused.resultStr).toBe("The remote workstation is in use by another user");
      expect(h.agent.requests.filter((r) => r.logon.username === "bob")).toEqual([]);
      await listed(alice2);
      expect((await alice2.allocate("ws-1")).resultId).toBe("ALLOC_SUCCESSFUL");
    } finally {
      for (const c of [alice, bob, alice2]) c.close();
    }
  });

  test("on (default): two users may allocate one desktop", async () => {
    h = await startHarness({
      users: { alice: "correct horse", bob: "bob-pw" },
      desktops: (agent) => [
        {
          id: "ws-1",
          name: "WS",
          agentHost: agent.hostname,
          agentPort: agent.port,
          users: ["*"],
          groups: [],
        },
      ],
    });
    const alice = h.client();
    const bob = h.client();
    try {
      await listed(alice);
      expect((await alice.allocate("ws-1")).resultId).toBe("ALLOC_SUCCESSFUL");
      await listed(bob, "bob", "bob-pw");
      expect((await bob.allocate("ws-1")).resultId).toBe("ALLOC_SUCCESSFUL");
    } finally {
      alice.close();
      bob.close();
    }
  });
});

describe("Security Gateway", () => {
  function stubGateway(refuse?: string) {
    const admitted: GatewayAdmission[] = [];
    const gateway: SessionGateway = {
      async admit(rec) {
        if (refuse) return { ok: false, reason: refuse };
        admitted.push(rec);
        return { ok: true };
      },
      externalAddressFor: async (ip) => (ip.includes(":") ? undefined : { ip: "203.0.113.10", port: 4172 }),
    };
    return { gateway, admitted };
  }

  test("on: admitted, then only ip-address and port rewritten; sni, session-id, connect-tag unchanged", async () => {
    const { gateway, admitted } = stubGateway();
    h = await startHarness({ agent: { endpoint: true }, cm: { gateway, licenseServerUrl: "27000@licsrv" } });
    const logId = "3e6b8a1c-2d4f-4a5b-9c6d-7e8f9a0b1c2d";
    const c = h.client({ clientLogId: logId });
    try {
      await listed(c);
      const alloc = await c.allocate("ws-1");
      expect(alloc.resultId).toBe("ALLOC_SUCCESSFUL");
      const si = h.agent.lastSessionInfo!;
      expect(si.port).not.toBe(4172); // the endpoint's ephemeral port, so the rewrite is visible
      const t = alloc.msg?.op === "allocate-resource-resp" ? alloc.msg.target : undefined;
      expect(t).toEqual({
        ipAddress: "203.0.113.10",
        hostname: "desktop-1.test",
        sni: "desktop-1.test",
        port: 4172,
        sessionId: si.sessionId,
        connectTag: si.sessionTag,
      });
      expect(admitted).toEqual([
        {
          sessionLogId: expect.stringMatching(
            /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/,
          ),
          agentSessionId: si.sessionId,
          clientIp: "127.0.0.1",
          agentHost: si.ipAddress,
          agentTcpPort: si.port,
          agentUdpPort: si.port,
          sni: "desktop-1.test",
        },
      ]);
      expect(h.agent.requests.at(-1)?.licensePath).toBe("27000@licsrv");
    } finally {
      c.close();
    }
  });

  test("SG refuses (full or draining): ALLOC_FAILED_SERVER_BUSY", async () => {
    const { gateway } = stubGateway("max_sessions");
    h = await startHarness({ cm: { gateway } });
    const c = h.client();
    try {
      await listed(c);
      expect((await c.allocate("ws-1")).resultId).toBe("ALLOC_FAILED_SERVER_BUSY");
      expect(h.logs.text()).toContain("refused (max_sessions)");
    } finally {
      c.close();
    }
  });

  test("off (LAN mode): the agent's own address goes to the client", async () => {
    h = await startHarness({ agent: { endpoint: true } });
    const c = h.client();
    try {
      await listed(c);
      const alloc = await c.allocate("ws-1");
      const si = h.agent.lastSessionInfo!;
      const t = alloc.msg?.op === "allocate-resource-resp" ? alloc.msg.target : undefined;
      expect([t?.ipAddress, t?.port]).toEqual([si.ipAddress, si.port]);
    } finally {
      c.close();
    }
  });
});
