// Claim: the pre-session store finds sessions by cookie or Client-Log-Id, forgets idle ones after the idle time,
// never holds more than maxPreSessions nor more than maxPreSessionsPerIp from one client IP (evicting the least
// recently used session that only said hello — that IP's own for the per-IP bound — and never a signed-in one or
// one whose password check is under way; refusing the new one when nothing may go), and reports every removal with
// its reason.
import { expect, test } from "bun:test";
import type { BrokerConversation } from "../../src/cm/brokers/broker.ts";
import type { SessionState } from "../../src/cm/flow.ts";
import { createSessionStore, type RemovalReason, type Session } from "../../src/cm/sessions.ts";
import { createLogger, memoryDestination } from "../../src/observability/log.ts";

const log = createLogger({ destination: memoryDestination() });
const conversation = {} as BrokerConversation; // never called by the store

function session(id: string, state: SessionState, clientLogId = "", at = 0, clientIp = "127.0.0.1"): Session {
  return {
    cookie: id,
    continuedByCookie: false,
    logId: `log-${id}`,
    clientLogId,
    state,
    createdAt: at,
    lastSeen: at,
    clientIp,
    clientName: "",
    conversation,
    log,
    queue: Promise.resolve(),
  };
}

function store(max = 3, idleMs = 1000, maxPerIp?: number) {
  const removed: [string, RemovalReason][] = [];
  const s = createSessionStore({
    maxPreSessions: max,
    ...(maxPerIp !== undefined ? { maxPreSessionsPerIp: maxPerIp } : {}),
    idleMs,
    onRemove: (x, r) => removed.push([x.cookie, r]),
  });
  return { s, removed };
}

test("lookup by cookie and by Client-Log-Id", () => {
  const { s } = store();
  const a = session("a", "hello", "log-id-a");
  s.add(a, 0);
  expect(s.get("a", 0)).toBe(a);
  expect(s.byClientLogId("log-id-a", 0)).toBe(a);
  expect(s.get("b", 0)).toBeUndefined();
  s.setClientLogId(a, "other");
  expect(s.byClientLogId("log-id-a", 0)).toBeUndefined();
  expect(s.byClientLogId("other", 0)).toBe(a);
});

test("idle sessions expire (on lookup and on sweep); touched ones do not", () => {
  const { s, removed } = store(10, 1000);
  const a = session("a", "hello");
  const b = session("b", "authed");
  s.add(a, 0);
  s.add(b, 0);
  s.touch(b, 900);
  expect(s.get("a", 1001)).toBeUndefined();
  s.sweep(1500);
  expect(s.get("b", 1500)).toBe(b);
  s.sweep(1901);
  expect(s.size).toBe(0);
  expect(removed).toEqual([
    ["a", "expired"],
    ["b", "expired"],
  ]);
});

test("full: the least recently used session that only said hello is evicted", () => {
  const { s, removed } = store(3);
  s.add(session("signed-1", "authed"), 0);
  s.add(session("pre-1", "hello"), 1);
  s.add(session("pre-2", "hello"), 2);
  s.touch(s.get("pre-1", 3)!, 3); // pre-2 is now the least recently used one
  expect(s.add(session("new", "hello"), 4)).toBe(true);
  expect(removed).toEqual([["pre-2", "evicted"]]);
  s.add(session("new2", "hello"), 5);
  expect(removed.at(-1)).toEqual(["pre-1", "evicted"]);
  expect(s.size).toBe(3);
});

test("full of signed-in or mid-authentication sessions: nothing is evicted, the new one is refused", () => {
  const { s, removed } = store(3);
  s.add(session("x", "listed"), 0);
  s.add(session("y", "auth_partial"), 1); // a second factor pending
  const checking = session("z", "hello");
  checking.authenticating = true; // its password check is under way
  s.add(checking, 2);
  expect(s.add(session("new", "hello"), 3)).toBe(false);
  expect(removed).toEqual([]);
  expect(s.get("new", 3)).toBeUndefined();
  expect(s.counters.refused).toBe(1);
  checking.authenticating = false;
  expect(s.add(session("new", "hello"), 4)).toBe(true);
  expect(removed).toEqual([["z", "evicted"]]);
});

test("per IP: a full IP evicts its own least recently used hello, never another IP's", () => {
  const { s, removed } = store(100, 1000, 2);
  s.add(session("victim", "hello", "", 0, "10.0.0.9"), 0);
  s.add(session("f1", "hello", "", 1, "10.0.0.1"), 1);
  s.add(session("f2", "hello", "", 2, "10.0.0.1"), 2);
  for (let i = 3; i < 10; i++) expect(s.add(session(`f${i}`, "hello", "", i, "10.0.0.1"), i)).toBe(true);
  expect(removed.map(([id]) => id)).toEqual(["f1", "f2", "f3", "f4", "f5", "f6", "f7"]);
  expect(removed.every(([, r]) => r === "evicted_per_ip")).toBe(true);
  expect(s.get("victim", 10)).toBeDefined();
  expect(s.size).toBe(3);
});

test("per IP: signed-in and mid-authentication sessions of the IP stay; with nothing evictable the new one is refused", () => {
  const { s, removed } = store(100, 1000, 2);
  s.add(session("signed", "authed", "", 0, "10.0.0.1"), 0);
  const checking = session("checking", "hello", "", 1, "10.0.0.1");
  checking.authenticating = true;
  s.add(checking, 1);
  expect(s.add(session("flood", "hello", "", 2, "10.0.0.1"), 2)).toBe(false);
  expect(removed).toEqual([]);
  expect(s.add(session("other-ip", "hello", "", 2, "10.0.0.2"), 2)).toBe(true);
  // A removal gives the IP its slot back.
  s.remove(s.get("signed", 3)!, "bye");
  expect(s.add(session("flood", "hello", "", 3, "10.0.0.1"), 3)).toBe(true);
});

test("remove and clear report their reasons once", () => {
  const { s, removed } = store();
  const a = session("a", "hello");
  s.add(a, 0);
  s.add(session("b", "hello"), 0);
  s.remove(a, "bye");
  s.remove(a, "bye");
  s.clear();
  expect(removed).toEqual([
    ["a", "bye"],
    ["b", "shutdown"],
  ]);
  expect(s.counters.removed).toEqual({ bye: 1, expired: 0, evicted: 0, evicted_per_ip: 0, shutdown: 1 });
});
