/**
 * The CM's pre-session store: one record per client conversation, found by the `JSESSIONID` cookie or, when a
 * client lost its cookie, by its `Client-Log-Id` header (PROTOCOL.md §1.2). Bounded (SPEC §3 limits):
 *
 * - a record idle for `idleMs` (15 min) is forgotten;
 * - at most `maxPreSessions` records: a new one evicts the least recently used unauthenticated record, or,
 *   when every record is signed in, the least recently used one.
 *
 * Every removal goes through `onRemove` (the server closes the broker conversation and drops the password).
 * Records are touched on every request, so Map order is least-recently-used first.
 */
import type { Logger } from "../observability/log.ts";
import type { BrokerConversation } from "./brokers/broker.ts";
import type { SessionState } from "./flow.ts";

export interface Logon {
  readonly username: string;
  readonly password: string;
  readonly domain: string;
}

export interface Session {
  /** The JSESSIONID value: 128 random bits as 32 lower-case hex digits. */
  readonly cookie: string;
  /** The session id of SPEC §2 (36 characters), on every log line and sent to the agent. */
  logId: string;
  /** The client's raw Client-Log-Id ("" when absent): the fallback key. */
  clientLogId: string;
  state: SessionState;
  readonly createdAt: number;
  lastSeen: number;
  clientIp: string;
  /** client-info/hostname of the hello (launch-session client-name). */
  clientName: string;
  /** Signed-in user (after AUTH_SUCCESSFUL_AND_COMPLETE). */
  user?: string;
  /** The logon for the agent: in memory only until the launch. Never logged. */
  logon?: Logon;
  conversation: BrokerConversation;
  log: Logger;
  /** Requests of one session run one at a time (a client sending two at once must not interleave them). */
  queue: Promise<unknown>;
}

export type RemovalReason = "bye" | "expired" | "evicted" | "shutdown";

export interface SessionStoreOptions {
  readonly maxPreSessions: number;
  readonly idleMs: number;
  onRemove?(session: Session, reason: RemovalReason): void;
}

export interface SessionStore {
  /** The session of this cookie value, unless expired. */
  get(cookie: string, now: number): Session | undefined;
  /** The session last opened with this Client-Log-Id, unless expired. */
  byClientLogId(clientLogId: string, now: number): Session | undefined;
  /** Stores a new session, evicting one first when full. */
  add(session: Session, now: number): void;
  /** Marks a request: moves the session to the most recently used end. */
  touch(session: Session, now: number): void;
  /** Re-indexes the Client-Log-Id of a restarted session. */
  setClientLogId(session: Session, clientLogId: string): void;
  remove(session: Session, reason: RemovalReason): void;
  /** Forgets idle sessions. */
  sweep(now: number): void;
  /** Removes everything (shutdown). */
  clear(): void;
  readonly size: number;
  countsByState(): Record<SessionState, number>;
  list(): readonly Session[];
  readonly counters: { created: number; removed: Record<RemovalReason, number> };
}

export function createSessionStore(options: SessionStoreOptions): SessionStore {
  const byId = new Map<string, Session>();
  const byLogId = new Map<string, string>();
  const counters = { created: 0, removed: { bye: 0, expired: 0, evicted: 0, shutdown: 0 } };

  const remove = (s: Session, reason: RemovalReason) => {
    if (byId.get(s.cookie) !== s) return;
    byId.delete(s.cookie);
    if (s.clientLogId !== "" && byLogId.get(s.clientLogId) === s.cookie) byLogId.delete(s.clientLogId);
    counters.removed[reason]++;
    options.onRemove?.(s, reason);
  };

  const live = (s: Session | undefined, now: number): Session | undefined => {
    if (s && now - s.lastSeen > options.idleMs) {
      remove(s, "expired");
      return undefined;
    }
    return s;
  };

  const evictOne = () => {
    let victim: Session | undefined;
    for (const s of byId.values()) {
      if (s.state === "hello" || s.state === "auth_partial") {
        victim = s;
        break;
      }
    }
    victim ??= byId.values().next().value;
    if (victim) remove(victim, "evicted");
  };

  const sweep = (now: number) => {
    // LRU order: stop at the first session that is still fresh.
    for (const s of byId.values()) {
      if (now - s.lastSeen <= options.idleMs) break;
      remove(s, "expired");
    }
  };

  return {
    counters,
    get size() {
      return byId.size;
    },
    get: (cookie, now) => live(byId.get(cookie), now),
    byClientLogId(clientLogId, now) {
      const cookie = byLogId.get(clientLogId);
      return cookie === undefined ? undefined : live(byId.get(cookie), now);
    },
    add(session, now) {
      sweep(now);
      while (byId.size >= options.maxPreSessions) evictOne();
      byId.set(session.cookie, session);
      if (session.clientLogId !== "") byLogId.set(session.clientLogId, session.cookie);
      counters.created++;
    },
    touch(session, now) {
      session.lastSeen = now;
      if (byId.get(session.cookie) !== session) return;
      byId.delete(session.cookie);
      byId.set(session.cookie, session);
    },
    setClientLogId(session, clientLogId) {
      if (session.clientLogId !== "" && byLogId.get(session.clientLogId) === session.cookie) {
        byLogId.delete(session.clientLogId);
      }
      session.clientLogId = clientLogId;
      if (clientLogId !== "") byLogId.set(clientLogId, session.cookie);
    },
    remove,
    sweep,
    clear() {
      for (const s of [...byId.values()]) remove(s, "shutdown");
    },
    countsByState() {
      const out: Record<SessionState, number> = {
        hello: 0,
        auth_partial: 0,
        authed: 0,
        listed: 0,
        allocated: 0,
      };
      for (const s of byId.values()) out[s.state]++;
      return out;
    },
    list: () => [...byId.values()],
  };
}
