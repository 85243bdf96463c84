// Claim: the pre-session store finds sessions by cookie or Client-Log-Id, forgets idle ones after the idle time,
// never holds more than maxPreSessions (evicting unauthenticated sessions first, least recently used first), and
// reports every removal with its reason.
import { expect, test } from "bun:test";
import type { BrokerConversation } from "../../src/cm/brokers/broker.ts";
import type { SessionState } from "../../src/cm/flow.ts";
import { createSessionStore, type RemovalReason, type Session } from "../../src/cm/sessions.ts";
import { createLogger, memoryDestination } from "../../src/observability/log.ts";

const log = createLogger({ destination: memoryDestination() });
const conversation = {} as BrokerConversation; // never called by the store

function session(id: string, state: SessionState, clientLogId = "", at = 0): Session {
  return {
    cookie: id,
    logId: `log-${id}`,
    clientLogId,
    state,
    createdAt: at,
    lastSeen: at,
    clientIp: "127.0.0.1",
    clientName: "",
    conversation,
    log,
    queue: Promise.resolve(),
  };
}

function store(max = 3, idleMs = 1000) {
  const removed: [string, RemovalReason][] = [];
  const s = createSessionStore({
    maxPreSessions: max,
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

test("full: the least recently used unauthenticated session is evicted first", () => {
  const { s, removed } = store(3);
  s.add(session("signed-1", "authed"), 0);
  s.add(session("pre-1", "hello"), 1);
  s.add(session("pre-2", "auth_partial"), 2);
  s.touch(s.get("pre-1", 3)!, 3); // pre-2 is now the least recently used unauthenticated one
  s.add(session("new", "hello"), 4);
  expect(removed).toEqual([["pre-2", "evicted"]]);
  s.add(session("new2", "hello"), 5);
  expect(removed.at(-1)).toEqual(["pre-1", "evicted"]);
  expect(s.size).toBe(3);
});

test("full of signed-in sessions: the least recently used one goes", () => {
  const { s, removed } = store(2);
  s.add(session("x", "listed"), 0);
  s.add(session("y", "allocated"), 1);
  s.add(session("z", "hello"), 2);
  expect(removed).toEqual([["x", "evicted"]]);
  expect(s.countsByState()).toEqual({ hello: 1, auth_partial: 0, authed: 0, listed: 0, allocated: 1 });
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
  expect(s.counters.removed).toEqual({ bye: 1, expired: 0, evicted: 0, shutdown: 1 });
});
