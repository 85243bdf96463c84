// Claim: failed-login throttling delays by (client IP, user) once the free failures are used, queues parallel
// attempts on one key, answers beyond the longest delay at once, slows a whole IP only after many distinct user
// names failed from it — and then by at most 1 s, so 50 honest users behind one NAT lose at most a second to a
// sprayer — and caps the number of delayed answers in flight. The clock is a number passed in.
import { describe, expect, test } from "bun:test";
import { createThrottle } from "../../src/cm/throttle.ts";

const opts = {
  failuresBeforeDelay: 3,
  baseDelayMs: 1000,
  maxDelayMs: 10_000,
  distinctUsersPerIp: 30,
  maxDelayedAnswers: 1000,
  windowMs: 900_000,
};

describe("(client IP, user)", () => {
  test("3 failures free, the 4th attempt waits 1 s, then 2, 4, 8, 10 (cap)", () => {
    const t = createThrottle(opts);
    let now = 0;
    const waits: number[] = [];
    for (let i = 0; i < 8; i++) {
      const v = t.admit("10.0.0.1", "alice", now);
      expect(v.kind).toBe("go");
      if (v.kind !== "go") return;
      waits.push(v.waitMs);
      now += v.waitMs;
      v.release();
      t.recordFailure("10.0.0.1", "alice", now);
    }
    expect(waits).toEqual([0, 0, 0, 1000, 2000, 4000, 8000, 10_000]);
  });

  test("the delay does not touch another user or another IP; success resets", () => {
    const t = createThrottle(opts);
    for (let i = 0; i < 5; i++) t.recordFailure("10.0.0.1", "alice", 0);
    expect(t.admit("10.0.0.1", "bob", 0)).toMatchObject({ kind: "go", waitMs: 0 });
    expect(t.admit("10.0.0.2", "alice", 0)).toMatchObject({ kind: "go", waitMs: 0 });
    expect(t.admit("10.0.0.1", "ALICE", 0)).toMatchObject({ kind: "go", waitMs: 4000 });
    t.recordSuccess("10.0.0.1", "alice", 5000);
    expect(t.admit("10.0.0.1", "alice", 5000)).toMatchObject({ kind: "go", waitMs: 0 });
  });

  test("failures are forgotten after the window", () => {
    const t = createThrottle(opts);
    for (let i = 0; i < 6; i++) t.recordFailure("10.0.0.1", "alice", 0);
    expect(t.admit("10.0.0.1", "alice", 899_000)).toMatchObject({ kind: "go" });
    expect(t.admit("10.0.0.1", "alice", 2_000_000)).toMatchObject({ kind: "go", waitMs: 0 });
  });

  test("parallel attempts on one key queue; a slot beyond the longest delay is answered at once", () => {
    const t = createThrottle(opts);
    for (let i = 0; i < 4; i++) t.recordFailure("10.0.0.1", "alice", 0); // delay now 2 s
    const waits: (number | string)[] = [];
    for (let i = 0; i < 7; i++) {
      const v = t.admit("10.0.0.1", "alice", 0);
      waits.push(v.kind === "go" ? v.waitMs : v.reason);
    }
    expect(waits).toEqual([2000, 4000, 6000, 8000, 10_000, "beyond_max_delay", "beyond_max_delay"]);
    expect(t.counters.refused.beyond_max_delay).toBe(2);
  });
});

describe("client IP alone (password spraying behind a NAT)", () => {
  test("slowed only above the distinct-user threshold, and by at most 1 s", () => {
    const t = createThrottle({ ...opts, ipDelayMs: 5000 }); // clamped to 1000
    for (let i = 0; i < 30; i++) t.recordFailure("198.51.100.7", `user${i}`, 0);
    expect(t.ipSlowed("198.51.100.7", 0)).toBe(false);
    expect(t.admit("198.51.100.7", "honest", 0)).toMatchObject({ kind: "go", waitMs: 0 });
    t.recordFailure("198.51.100.7", "user30", 0);
    expect(t.ipSlowed("198.51.100.7", 0)).toBe(true);
    expect(t.admit("198.51.100.7", "honest", 0)).toMatchObject({ kind: "go", waitMs: 1000 });
    expect(t.admit("198.51.100.8", "honest", 0)).toMatchObject({ kind: "go", waitMs: 0 });
  });

  test("50 honest users behind the sprayer's NAT each wait at most 1 s, even while it sprays on", () => {
    const t = createThrottle(opts);
    const nat = "203.0.113.5";
    let now = 0;
    for (let i = 0; i < 1000; i++) {
      const v = t.admit(nat, `spray${i}`, now);
      if (v.kind === "go") v.release();
      t.recordFailure(nat, `spray${i}`, now);
      now += 10;
    }
    const honest: number[] = [];
    for (let i = 0; i < 50; i++) {
      const v = t.admit(nat, `employee${i}`, now);
      expect(v.kind).toBe("go");
      if (v.kind === "go") honest.push(v.waitMs);
      // The sprayer keeps going between them.
      t.recordFailure(nat, `spray-more${i}`, now);
    }
    expect(Math.max(...honest)).toBeLessThanOrEqual(1000);
  });

  test("memory stays bounded: beyond maxKeys the least recently failing key is forgotten", () => {
    const t = createThrottle({ ...opts, maxKeys: 100 });
    for (let i = 0; i < 5; i++) t.recordFailure("10.9.9.9", "victim", 0);
    expect(t.admit("10.9.9.9", "victim", 0)).toMatchObject({ kind: "go", waitMs: 4000 });
    for (let i = 0; i < 10_000; i++) t.recordFailure(`10.1.${i >> 8}.${i & 255}`, `u${i}`, 0);
    expect(t.admit("10.9.9.9", "victim", 0)).toMatchObject({ kind: "go", waitMs: 0 });
  });
});

describe("delayed answers in flight", () => {
  test("beyond maxDelayedAnswers, a delayed attempt is answered at once; release frees a place", () => {
    const t = createThrottle({ ...opts, maxDelayedAnswers: 2 });
    for (let u = 0; u < 3; u++) for (let i = 0; i < 3; i++) t.recordFailure("10.0.0.1", `u${u}`, 0);
    const a = t.admit("10.0.0.1", "u0", 0);
    const b = t.admit("10.0.0.1", "u1", 0);
    expect(a.kind === "go" && a.waitMs).toBe(1000);
    expect(b.kind === "go" && b.waitMs).toBe(1000);
    expect(t.admit("10.0.0.1", "u2", 0)).toEqual({ kind: "refuse", reason: "too_many_delayed" });
    expect(t.counters.inFlight).toBe(2);
    if (a.kind === "go") a.release();
    if (a.kind === "go") a.release(); // twice is harmless
    expect(t.counters.inFlight).toBe(1);
    expect(t.admit("10.0.0.1", "u2", 0).kind).toBe("go");
    // Undelayed attempts never count against the cap.
    expect(t.admit("10.0.0.1", "fresh", 0)).toMatchObject({ kind: "go", waitMs: 0 });
  });
});
