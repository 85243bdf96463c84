// Claim: cm.maxPasswordChecksPerIp bounds the password checks one client IP runs at once; further checks of that IP
// wait in arrival order for a freed slot, up to the wait limit, then are answered busy; another IP is never held
// up; the waiting queue per IP is bounded; a release is counted once.
import { describe, expect, test } from "bun:test";
import { type CheckSlot, createPasswordCheckGate } from "../../src/cm/password-checks.ts";

const go = (s: CheckSlot) => {
  if (s.kind !== "go") throw new Error(`expected a slot, got busy (${s.reason})`);
  return s;
};

describe("password checks per IP", () => {
  test("four at once; the fifth waits for a release, in order; another IP goes at once", async () => {
    const gate = createPasswordCheckGate({ maxPerIp: () => 4 });
    const first = await Promise.all([1, 2, 3, 4].map(() => gate.acquire("198.51.100.1")));
    const order: number[] = [];
    const queued = (n: number) =>
      gate.acquire("198.51.100.1").then((s) => {
        order.push(n);
        return go(s);
      });
    const fifth = queued(5);
    const sixth = queued(6);
    expect(gate.load("198.51.100.1")).toEqual({ running: 4, waiting: 2 });
    go(await gate.acquire("203.0.113.9")).release();
    await Bun.sleep(5);
    expect(order).toEqual([]);
    go(first[0]!).release();
    go(first[0]!).release(); // counted once
    await Bun.sleep(5);
    expect(order).toEqual([5]);
    go(first[1]!).release();
    await sixth;
    expect(order).toEqual([5, 6]);
    expect(gate.counters.queued).toBe(2);
    for (const s of [first[2]!, first[3]!, await fifth, await sixth]) go(s).release();
    expect(gate.load("198.51.100.1")).toEqual({ running: 0, waiting: 0 });
  });

  test("a check that waits longer than the limit is answered busy, and leaves the queue", async () => {
    const gate = createPasswordCheckGate({ maxPerIp: () => 1, maxWaitMs: 50 });
    const held = go(await gate.acquire("198.51.100.2"));
    const t0 = Date.now();
    const late = await gate.acquire("198.51.100.2");
    expect(late).toEqual({ kind: "busy", reason: "wait_timeout" });
    expect(Date.now() - t0).toBeGreaterThanOrEqual(45);
    expect(gate.load("198.51.100.2")).toEqual({ running: 1, waiting: 0 });
    held.release();
    expect(gate.counters.busy.wait_timeout).toBe(1);
  });

  test("the waiting queue of one IP is bounded: beyond it, busy at once", async () => {
    const gate = createPasswordCheckGate({ maxPerIp: () => 1, maxWaitingPerIp: 2, maxWaitMs: 1000 });
    const held = go(await gate.acquire("198.51.100.3"));
    const waiting = [gate.acquire("198.51.100.3"), gate.acquire("198.51.100.3")];
    expect(await gate.acquire("198.51.100.3")).toEqual({ kind: "busy", reason: "too_many_waiting" });
    held.release();
    go(await waiting[0]!).release();
    go(await waiting[1]!).release();
  });

  test("a raised limit (reload) lets waiting checks in at the next release", async () => {
    let max = 1;
    const gate = createPasswordCheckGate({ maxPerIp: () => max });
    const a = go(await gate.acquire("198.51.100.4"));
    const b = gate.acquire("198.51.100.4");
    const c = gate.acquire("198.51.100.4");
    max = 3;
    a.release();
    go(await b).release();
    go(await c).release();
  });
});
