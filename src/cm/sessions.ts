/**
 * The CM's pre-session store: one record per client conversation, found by the `JSESSIONID` cookie or, when a
 * client lost its cookie, by its `Client-Log-Id` header (PROTOCOL.md §1.2). Bounded (SPEC §3 limits):
 *
 * - a record idle for `idleMs` (15 min) is forgotten;
 * - at most `maxPreSessionsPerIp` records opened from one client IP: a new one evicts that IP's least recently
 *   used evictable record (issue 16 #4: one host's hello flood evicted other users mid-login);
 * - at most `maxPreSessions` records: a new one evicts the least recently used evictable record.
 *
 * Evictable means only said hello: eviction never takes a signed-in record or one mid-authentication (a password
 * check under way, or a second factor pending). When nothing can be evicted, the new record is refused (`add`
 * answers false) and the client gets a failure, not someone else's conversation.
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
  /** The JSESSIONID value: 128 random bits as 32 lower-case hex digits; a fresh one at sign-in (`rekey`). */
  cookie: string;
  /** A request came back with the cookie: from then on the Client-Log-Id fallback no longer finds the session. */
  continuedByCookie: boolean;
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
  /** A password check of this session is under way (its throttle wait, queue or the check): never evicted. */
  authenticating?: boolean;
}

/** `evicted`: the store was full; `evicted_per_ip`: the client IP held `maxPreSessionsPerIp` records. */
export type RemovalReason = "bye" | "expired" | "evicted" | "evicted_per_ip" | "shutdown";

export interface SessionStoreOptions {
  readonly maxPreSessions: number;
  /** Records opened from one client IP (counted by the IP that opened them). Default: no per-IP bound. */
  readonly maxPreSessionsPerIp?: number;
  readonly idleMs: number;
  onRemove?(session: Session, reason: RemovalReason): void;
}

export interface SessionStore {
  /** The session of this cookie value, unless expired. */
  get(cookie: string, now: number): Session | undefined;
  /** The session last opened with this Client-Log-Id, unless expired. */
  byClientLogId(clientLogId: string, now: number): Session | undefined;
  /**
   * Stores a new session, evicting an evictable one first when its IP's share or the store is full; false (the
   * session not stored) when nothing may be evicted.
   */
  add(session: Session, now: number): boolean;
  /** Marks a request: moves the session to the most recently used end. */
  touch(session: Session, now: number): void;
  /** Re-indexes the Client-Log-Id of a restarted session. */
  setClientLogId(session: Session, clientLogId: string): void;
  /** Gives the session a new cookie; the old one names nothing from now on. */
  rekey(session: Session, cookie: string): void;
  remove(session: Session, reason: RemovalReason): void;
  /** Forgets idle sessions. */
  sweep(now: number): void;
  /** Removes everything (shutdown). */
  clear(): void;
  readonly size: number;
  countsByState(): Record<SessionState, number>;
  list(): readonly Session[];
  /** `refused`: new records not stored because nothing could be evicted. */
  readonly counters: { created: number; refused: number; removed: Record<RemovalReason, number> };
}

export function createSessionStore(options: SessionStoreOptions): SessionStore {
  const byId = new Map<string, Session>();
  const byLogId = new Map<string, string>();
  /** Records by the client IP that opened them (a session's clientIp may change later; its slot stays here). */
  const byIp = new Map<string, Set<Session>>();
  const openedFrom = new WeakMap<Session, string>();
  const maxPerIp = options.maxPreSessionsPerIp ?? Number.POSITIVE_INFINITY;
  const counters = {
    created: 0,
    refused: 0,
    removed: { bye: 0, expired: 0, evicted: 0, evicted_per_ip: 0, shutdown: 0 },
  };

  const remove = (s: Session, reason: RemovalReason) => {
    if (byId.get(s.cookie) !== s) return;
    byId.delete(s.cookie);
    const ip = openedFrom.get(s);
    const mine = ip === undefined ? undefined : byIp.get(ip);
    mine?.delete(s);
    if (ip !== undefined && mine?.size === 0) byIp.delete(ip);
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

  const evictable = (s: Session) => s.state === "hello" && s.authenticating !== true;

  /** The least recently used evictable record of the store (Map order is LRU). */
  const evictOne = (): boolean => {
    for (const s of byId.values()) {
      if (!evictable(s)) continue;
      remove(s, "evicted");
      return true;
    }
    return false;
  };

  /** The least recently used evictable record opened from `ip` (at most maxPreSessionsPerIp to look at). */
  const evictOneOf = (mine: Set<Session>): boolean => {
    let victim: Session | undefined;
    for (const s of mine) if (evictable(s) && (!victim || s.lastSeen < victim.lastSeen)) victim = s;
    if (victim) remove(victim, "evicted_per_ip");
    return victim !== undefined;
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
      const ip = session.clientIp;
      const mine = byIp.get(ip) ?? new Set<Session>();
      while (mine.size >= maxPerIp) {
        if (evictOneOf(mine)) continue;
        counters.refused++;
        return false;
      }
      while (byId.size >= options.maxPreSessions) {
        if (evictOne()) continue;
        counters.refused++;
        return false;
      }
      byId.set(session.cookie, session);
      if (session.clientLogId !== "") byLogId.set(session.clientLogId, session.cookie);
      mine.add(session);
      byIp.set(ip, mine);
      openedFrom.set(session, ip);
      counters.created++;
      return true;
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
    rekey(session, cookie) {
      if (byId.get(session.cookie) !== session) return;
      byId.delete(session.cookie);
      if (session.clientLogId !== "" && byLogId.get(session.clientLogId) === session.cookie)
        byLogId.set(session.clientLogId, cookie);
      session.cookie = cookie;
      byId.set(cookie, session);
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
