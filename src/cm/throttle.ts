/**
 * Failed-login throttling (SPEC §3 limits). Two keys, because a corporate NAT is one IP:
 *
 * - (client IP, user name): after `failuresBeforeDelay` failures, every further attempt on that key waits
 *   before its password is checked: base, 2×base, 4×base… up to `maxDelayMs`. Concurrent attempts on one key
 *   queue one behind the other (each reserves the next slot), so parallel connections gain nothing; an attempt
 *   whose slot lies beyond `maxDelayMs` is answered at once with the same failure, without checking.
 * - client IP alone: only when more than `distinctUsersPerIp` different user names failed from it within the
 *   window (password spraying). Then every attempt from that IP waits `ipDelayMs` (at most 1 s), without queueing:
 *   the honest users behind the NAT lose at most that second, the sprayer's rate is bounded by it.
 *
 * The answer never changes with the delay: it stays AUTH_FAILED_… (a locked-looking answer would tell an
 * attacker which names exist). At most `maxDelayedAnswers` answers wait at once; beyond that a delayed attempt
 * is answered at once with failure, so a flood cannot pin memory and sockets in timers.
 *
 * Memory is bounded: at most `maxKeys` (IP, user) records and as many IP records, oldest forgotten first; a
 * record not touched for `windowMs` is forgotten. The clock is passed in (`now` arguments).
 */

export interface ThrottleOptions {
  /** Failures per (IP, user) answered without delay. Default 3. */
  readonly failuresBeforeDelay?: number;
  /** First delay once the free failures are used up; doubles per failure. Default 1000 ms. */
  readonly baseDelayMs?: number;
  /** Longest wait before a password check; a later slot is answered at once with failure. Default 10 s. */
  readonly maxDelayMs?: number;
  /** Distinct failing user names from one IP before the IP as a whole is slowed. Default 30. */
  readonly distinctUsersPerIp?: number;
  /** Wait per attempt from a spraying IP; clamped to 1000 ms (the NAT promise). Default 1000 ms. */
  readonly ipDelayMs?: number;
  /** Delayed answers in flight at once. Default 1000. */
  readonly maxDelayedAnswers?: number;
  /** How long failures are remembered. Default 15 min. */
  readonly windowMs?: number;
  /** Bound on remembered keys of each kind. Default 100 000. */
  readonly maxKeys?: number;
}

export type ThrottleVerdict =
  /** Check the password after `waitMs`; call `release()` once answered. */
  | { readonly kind: "go"; readonly waitMs: number; release(): void }
  /** Answer AUTH_FAILED at once without checking. */
  | { readonly kind: "refuse"; readonly reason: "beyond_max_delay" | "too_many_delayed" };

export interface ThrottleCounters {
  /** Attempts that waited before their check. */
  delayed: number;
  /** Attempts answered at once with failure, by reason. */
  refused: { beyond_max_delay: number; too_many_delayed: number };
  /** Answers waiting now. */
  inFlight: number;
}

export interface Throttle {
  admit(ip: string, user: string, now: number): ThrottleVerdict;
  recordFailure(ip: string, user: string, now: number): void;
  recordSuccess(ip: string, user: string, now: number): void;
  /** Whether `ip` is currently slowed as a whole (for logs and tests). */
  ipSlowed(ip: string, now: number): boolean;
  readonly counters: ThrottleCounters;
  /** New settings (a reload); the failures counted so far stay. */
  reconfigure(options: ThrottleOptions): void;
}

interface UserKey {
  failures: number;
  lastFailure: number;
  /** Earliest start of the next check (reservations of queued attempts). */
  nextSlot: number;
}

interface IpKey {
  /** user name → time of its last failure from this IP. */
  users: Map<string, number>;
  lastFailure: number;
}

export function createThrottle(options: ThrottleOptions = {}): Throttle {
  // Settings can change on reload (reconfigure); what was counted stays.
  let free = 0;
  let base = 0;
  let maxDelay = 0;
  let distinct = 0;
  let ipDelay = 0;
  let maxDelayed = 0;
  let windowMs = 0;
  let maxKeys = 0;
  const configure = (o: ThrottleOptions) => {
    free = o.failuresBeforeDelay ?? 3;
    base = o.baseDelayMs ?? 1000;
    maxDelay = o.maxDelayMs ?? 10_000;
    distinct = o.distinctUsersPerIp ?? 30;
    ipDelay = Math.min(1000, o.ipDelayMs ?? 1000);
    maxDelayed = o.maxDelayedAnswers ?? 1000;
    windowMs = o.windowMs ?? 900_000;
    maxKeys = o.maxKeys ?? 100_000;
  };
  configure(options);
  const users = new Map<string, UserKey>();
  const ips = new Map<string, IpKey>();
  const counters: ThrottleCounters = {
    delayed: 0,
    refused: { beyond_max_delay: 0, too_many_delayed: 0 },
    inFlight: 0,
  };

  const userKey = (ip: string, user: string) => `${ip}|${user.toLowerCase()}`;

  const liveUser = (k: string, now: number): UserKey | undefined => {
    const u = users.get(k);
    if (u && now - u.lastFailure > windowMs && u.nextSlot <= now) {
      users.delete(k);
      return undefined;
    }
    return u;
  };

  const distinctCount = (ip: string, now: number): number => {
    const r = ips.get(ip);
    if (!r) return 0;
    for (const [name, at] of r.users) if (now - at > windowMs) r.users.delete(name);
    if (r.users.size === 0) ips.delete(ip);
    return r.users.size;
  };

  /** Re-inserts so that Map order is least-recently-touched first, then trims to maxKeys. */
  const touch = <V>(m: Map<string, V>, k: string, v: V) => {
    m.delete(k);
    m.set(k, v);
    while (m.size > maxKeys) {
      const oldest = m.keys().next().value;
      if (oldest === undefined) break;
      m.delete(oldest);
    }
  };

  const delayFor = (failures: number) =>
    failures < free ? 0 : Math.min(maxDelay, base * 2 ** Math.min(30, failures - free));

  const ipSlowed = (ip: string, now: number) => distinctCount(ip, now) > distinct;

  return {
    counters,
    ipSlowed,
    reconfigure: configure,
    admit(ip, user, now) {
      const k = userKey(ip, user);
      const u = liveUser(k, now);
      const d = u ? delayFor(u.failures) : 0;
      let start = now;
      if (u && d > 0) start = Math.max(now + d, u.nextSlot);
      if (ipSlowed(ip, now)) start = Math.max(start, now + ipDelay);
      const waitMs = start - now;
      if (waitMs > maxDelay) {
        counters.refused.beyond_max_delay++;
        return { kind: "refuse", reason: "beyond_max_delay" };
      }
      if (waitMs === 0) return { kind: "go", waitMs: 0, release: () => {} };
      if (counters.inFlight >= maxDelayed) {
        counters.refused.too_many_delayed++;
        return { kind: "refuse", reason: "too_many_delayed" };
      }
      if (u && d > 0) u.nextSlot = start + d;
      counters.delayed++;
      counters.inFlight++;
      let released = false;
      return {
        kind: "go",
        waitMs,
        release() {
          if (released) return;
          released = true;
          counters.inFlight--;
        },
      };
    },
    recordFailure(ip, user, now) {
      const k = userKey(ip, user);
      const u = liveUser(k, now) ?? { failures: 0, lastFailure: now, nextSlot: 0 };
      u.failures++;
      u.lastFailure = now;
      touch(users, k, u);
      const r = ips.get(ip) ?? { users: new Map<string, number>(), lastFailure: now };
      r.lastFailure = now;
      r.users.delete(user.toLowerCase());
      r.users.set(user.toLowerCase(), now);
      // Only "more than `distinct`" matters: keep a few beyond it, not every name a sprayer tries.
      while (r.users.size > distinct + 16) {
        const oldest = r.users.keys().next().value;
        if (oldest === undefined) break;
        r.users.delete(oldest);
      }
      touch(ips, ip, r);
    },
    recordSuccess(ip, user) {
      users.delete(userKey(ip, user));
      ips.get(ip)?.users.delete(user.toLowerCase());
    },
  };
}
