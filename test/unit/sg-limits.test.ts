// Claim: the SG's capacity limits are crossed cleanly — the UDP source-port pool hands out each port once and
// says "none" when exhausted, and the descriptor budget derived from RLIMIT_NOFILE refuses (and counts) the relay
// that would not fit.
import { describe, expect, test } from "bun:test";
import {
  createDescriptorBudgets,
  createRelayLimits,
  readNofileSoftLimit,
  relayCap,
} from "../../src/sg/limits.ts";
import { createPortPool } from "../../src/sg/port-pool.ts";

describe("udp source port pool", () => {
  test("three ports: three sessions get distinct ports, the fourth gets none, a release makes room", () => {
    const pool = createPortPool({ from: 55000, to: 55002 });
    const taken = [pool.take(), pool.take(), pool.take()];
    expect(new Set(taken)).toEqual(new Set([55000, 55001, 55002]));
    expect(pool.take()).toBeUndefined();
    expect(pool.free).toBe(0);
    pool.release(55001);
    expect(pool.take()).toBe(55001);
  });

  test("round-robin: a port just released is the last to come back", () => {
    const pool = createPortPool({ from: 100, to: 104 });
    const a = pool.take();
    pool.release(a!);
    expect([pool.take(), pool.take(), pool.take(), pool.take(), pool.take()]).toEqual([
      101, 102, 103, 104, 100,
    ]);
  });

  test("releasing a foreign or free port changes nothing", () => {
    const pool = createPortPool({ from: 100, to: 101 });
    pool.release(99);
    pool.release(100);
    expect(pool.free).toBe(2);
  });

  test("a bad range is a config bug, thrown at construction", () => {
    expect(() => createPortPool({ from: 60000, to: 55000 })).toThrow(TypeError);
    expect(() => createPortPool({ from: 0, to: 10 })).toThrow(TypeError);
    expect(() => createPortPool({ from: 65000, to: 70000 })).toThrow(TypeError);
  });
});

describe("descriptor budget", () => {
  test("reads the soft limit from /proc/self/limits text", () => {
    const text = [
      "Limit                     Soft Limit           Hard Limit           Units     ",
      "Max open files            1024                 524288               files     ",
    ].join("\n");
    expect(readNofileSoftLimit(text)).toBe(1024);
    expect(
      readNofileSoftLimit("Max open files            unlimited            unlimited            files"),
    ).toBe(undefined);
    expect(readNofileSoftLimit("garbage")).toBeUndefined();
    expect(readNofileSoftLimit()).toBeGreaterThan(0); // this process's own limit
  });

  test("(nofile − 512) / 3 relays", () => {
    expect(relayCap(1024)).toBe(170);
    expect(relayCap(65536)).toBe(21_674);
    expect(relayCap(100)).toBe(0);
  });

  test("two relays fit, the third is refused and counted, a finished relay makes room", () => {
    const limits = createRelayLimits({ nofile: 512 + 6 });
    expect(limits.maxRelays).toBe(2);
    for (let i = 0; i < 6; i++) expect(limits.tryTake(1)).toBe(true);
    expect(limits.tryTake(1)).toBe(false);
    expect(limits.refused).toBe(1);
    limits.give(3);
    expect(limits.tryTake(3)).toBe(true);
    expect(limits.inUse).toBe(6);
  });

  test("an unlimited soft limit leaves only maxSessions as the cap", () => {
    const limits = createRelayLimits({ nofile: undefined });
    expect(limits.nofile).toBeNull();
    expect(limits.tryTake(1_000_000)).toBe(true);
  });

  test("the appliance's two budgets: reserve, then the rest split as sg.maxSessions × 3 : cm.maxConnections", () => {
    const small = createDescriptorBudgets({ nofile: 1024 }); // defaults 5,000 sessions : 20,000 connections
    expect([small.reservedFds, small.sg.maxRelays, small.sg.capacity, small.cm.capacity]).toEqual([
      256, 109, 327, 441,
    ]);
    const unit = createDescriptorBudgets({ nofile: 65536 });
    expect([unit.reservedFds, unit.sg.maxRelays, unit.cm.capacity]).toEqual([512, 9289, 37157]);
    // A node for many sessions and few connections: the split follows its limits.
    const sgHeavy = createDescriptorBudgets({
      nofile: 20000,
      demand: { sgMaxSessions: 50000, cmMaxConnections: 1000 },
    });
    expect([sgHeavy.sg.maxRelays, sgHeavy.cm.capacity]).toEqual([6452, 132]);
    // LAN mode (no SG): the CM gets everything after the reserve.
    const lan = createDescriptorBudgets({
      nofile: 1024,
      demand: { sgMaxSessions: 0, cmMaxConnections: 20000 },
    });
    expect([lan.sg.capacity, lan.cm.capacity]).toEqual([0, 768]);
    // Spending one budget leaves the other whole.
    while (small.cm.tryTake(1));
    expect(small.cm.refused).toBe(1);
    expect(small.sg.tryTake(3)).toBe(true);
    const unlimited = createDescriptorBudgets({ nofile: undefined });
    expect(unlimited.cm.tryTake(1_000_000) && unlimited.sg.tryTake(1_000_000)).toBe(true);
  });
});
