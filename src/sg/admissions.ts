/**
 * The admission table: the one object the CM and the SG share (DESIGN.md). The CM admits a session after a
 * successful allocation; the SG's relays let through only what matches an admission (SPEC §4). Records are plain
 * serialisable data (no sockets, no closures) so the SG can move into a Worker without reshaping them.
 *
 * Life of a record:
 * ```
 *  admit() ──► pending ──(control connection matched)──► active ──(last control connection closed)──► ended
 *                │  └─ expiresAt passed: removed ("expired")     ▲                                       │
 *                │                                             └──── reconnect within grace ◄──────────┤
 *                └─ end(): removed ("revoked")                               endedAt + grace passed: removed ("closed")
 * ```
 * An `ended` record still accepts control connections from its client IP for `reconnectGraceMs` (PCoIP clients
 * reconnect after a network blip), and its UDP flow keeps running until the record is removed.
 */
import { canonicalIp, ipFamily } from "../net/client-address.ts";

export type AdmissionState = "pending" | "active" | "ended";

/** What the CM knows after a successful allocation. */
export interface AdmitRequest {
  /** The 36-character session id every log line of the session carries. */
  readonly sessionLogId: string;
  /** The agent's `session-id` from `launch-session-resp` (for logs and the admin view; never matched on). */
  readonly agentSessionId: string;
  /** Canonical IP of the client that sent `allocate-resource` (net/client-address.ts). */
  readonly clientIp: string;
  /** The agent's address from `session-info/ip-address`. */
  readonly agentHost: string;
  /** Agent TCP port (PCoIP control), 4172 unless the agent said otherwise. */
  readonly agentTcpPort?: number;
  /** Agent UDP port from `session-info/port` (PROTOCOL.md §7 Q7), 4172 when absent. */
  readonly agentUdpPort?: number;
  /** The agent's `sni`; an IP literal means the client will send no SNI. */
  readonly sni: string;
}

/** One admission. Plain data: safe to JSON.stringify, structuredClone or post to a Worker. */
export interface Admission {
  readonly sessionLogId: string;
  readonly agentSessionId: string;
  readonly clientIp: string;
  readonly agentHost: string;
  readonly agentTcpPort: number;
  readonly agentUdpPort: number;
  /** Lower-cased; `null` when the agent's sni is an IP literal (no SNI will arrive). */
  readonly sni: string | null;
  readonly admittedAt: number;
  /** While pending: the time it is forgotten unless a control connection arrives. */
  readonly expiresAt: number;
  readonly state: AdmissionState;
  readonly activatedAt: number | null;
  /** When the last control connection closed (state `ended`). */
  readonly endedAt: number | null;
  /** Open control connections now. */
  readonly tcpConnections: number;
  /** Control connections matched over the record's life (reconnects included). */
  readonly tcpConnects: number;
}

export type AdmitRefusal = "max_sessions" | "per_ip_limit" | "draining" | "invalid";
export type AdmitResult =
  | { readonly ok: true; readonly admission: Admission }
  | { readonly ok: false; readonly reason: AdmitRefusal };

export type TcpMatchRefusal =
  /** nothing admitted for this client IP (or only expired admissions) */
  | "no_admission"
  /** admissions exist for this client IP, but none for the SNI it sent */
  | "wrong_sni"
  /** no SNI, and not exactly one pending admission for this client IP to fall back on */
  | "no_sni_ambiguous";
export type TcpMatch =
  | { readonly ok: true; readonly admission: Admission }
  | { readonly ok: false; readonly reason: TcpMatchRefusal };

export type RemovalReason = "expired" | "closed" | "revoked" | "replaced";
export interface AdmissionRemoved {
  readonly type: "removed";
  readonly admission: Admission;
  readonly reason: RemovalReason;
}
export type AdmissionEvent = AdmissionRemoved;

export interface AdmissionsOptions {
  now?: () => number;
  /** How long an admission waits for its first control connection (≥ the agent's 60 s connect-tag window). */
  pendingTtlMs?: number;
  /** How long an ended session still accepts a reconnecting control connection. */
  reconnectGraceMs?: number;
  /** Admissions alive at once (pending, active or within grace); the vendor's MaxConnections. */
  maxSessions?: number;
  /** Admissions per client IP; 0 = no cap (a corporate NAT is one IP). */
  maxPerClientIp?: number;
  /** How often expired records are swept; 0 = only when `sweep()` is called (tests with a fake clock). */
  sweepEveryMs?: number;
  /**
   * The node's one drain flag (platform/node-state.ts): while it is up, `admit()` refuses; live sessions and their
   * reconnects keep working. Absent = never draining.
   */
  drain?: { readonly draining: boolean };
}

export interface AdmissionCounters {
  admitted: number;
  refused: Record<AdmitRefusal, number>;
  removed: Record<RemovalReason, number>;
}

export interface Admissions {
  /** Admits a session; the CM calls it after a successful allocation, then rewrites `ip-address`. */
  admit(req: AdmitRequest): AdmitResult;
  /** Picks the admission for a new control connection (see the rules at the implementation). */
  matchTcp(clientIp: string, sni: string | undefined): TcpMatch;
  /**
   * The session a new UDP flow binds to: of the client IP's active sessions for which `usable(sessionLogId)`
   * is true, the most recently activated (the earlier admitted among equal activation times). `undefined`
   * when none is usable; `activeSeen` tells whether the IP had any active session at all.
   * One pass, no copies and no sort: the relay calls it for every datagram from an unknown port, and behind
   * one NAT an IP can hold thousands of sessions (bench/sg-sessions.ts, BENCH_SESSIONS_ONE_IP=1: copying and
   * sorting 6,500 records per new flow stalled the SG for seconds while the flows bound).
   */
  pickUdp(
    clientIp: string,
    usable: (sessionLogId: string) => boolean,
  ): { chosen: Admission | undefined; activeSeen: boolean };
  /** A control connection was bound to this session (pending/ended → active). */
  attachTcp(sessionLogId: string): void;
  /** A control connection of this session closed; the last one starts the reconnect grace. */
  detachTcp(sessionLogId: string): void;
  /** Ends a session now, without reconnect grace (admin kill, CM revocation). False when unknown. */
  end(sessionLogId: string): boolean;
  get(sessionLogId: string): Admission | undefined;
  /**
   * Copies of every live record, or only of those in `state`: a periodic sweep that wants the active few asks
   * for them, rather than copying every pending admission (500 logins/s leave ≈45,000 for their 90 s).
   */
  list(state?: AdmissionState): Admission[];
  readonly size: number;
  /** Removes expired pending records and ended records past their grace. */
  sweep(): void;
  /** Listens for removals (the relays close what belonged to the session). Returns the unsubscribe function. */
  subscribe(listener: (e: AdmissionEvent) => void): () => void;
  readonly counters: AdmissionCounters;
  /** Stops the sweep timer. */
  close(): void;
}

interface Rec {
  sessionLogId: string;
  agentSessionId: string;
  clientIp: string;
  agentHost: string;
  agentTcpPort: number;
  agentUdpPort: number;
  sni: string | null;
  admittedAt: number;
  expiresAt: number;
  state: AdmissionState;
  activatedAt: number | null;
  endedAt: number | null;
  tcpConnections: number;
  tcpConnects: number;
}

/**
 * The table: every record by session id and by client IP (the two indexes every method reads and writes), the
 * listeners told of removals, the counters and the sweep timer. `matchTcp`'s rules are best read beside `admit`'s
 * and `remove`'s, so they stay together here.
 */
class AdmissionTable implements Admissions {
  readonly counters: AdmissionCounters = {
    admitted: 0,
    refused: { max_sessions: 0, per_ip_limit: 0, draining: 0, invalid: 0 },
    removed: { expired: 0, closed: 0, revoked: 0, replaced: 0 },
  };
  private readonly byId = new Map<string, Rec>();
  private readonly byIp = new Map<string, Set<Rec>>();
  private readonly listeners = new Set<(e: AdmissionEvent) => void>();
  private readonly now: () => number;
  private readonly pendingTtlMs: number;
  private readonly reconnectGraceMs: number;
  private readonly maxSessions: number;
  private readonly maxPerClientIp: number;
  private readonly drain: { readonly draining: boolean } | undefined;
  private readonly timer: ReturnType<typeof setInterval> | undefined;

  constructor(options: AdmissionsOptions) {
    this.now = options.now ?? Date.now;
    this.pendingTtlMs = options.pendingTtlMs ?? 90_000;
    this.reconnectGraceMs = options.reconnectGraceMs ?? 30_000;
    this.maxSessions = options.maxSessions ?? 5000;
    this.maxPerClientIp = options.maxPerClientIp ?? 0;
    this.drain = options.drain;
    const sweepEveryMs = options.sweepEveryMs ?? 1000;
    this.timer = sweepEveryMs > 0 ? setInterval(this.sweep, sweepEveryMs) : undefined;
    this.timer?.unref();
  }

  get size(): number {
    return this.byId.size;
  }

  /**
   * Over-limit policy: refuse the new admission and count it; never evict a live one to make room. The CM turns
   * the refusal into a failed allocation the user can retry, which beats killing somebody's running desktop.
   * Records already dead (expired, grace over) do not count against the limits even before the sweep.
   */
  admit(req: AdmitRequest): AdmitResult {
    const clientIp = canonicalIp(req.clientIp);
    if (!req.sessionLogId || ipFamily(clientIp) === 0 || !req.agentHost) {
      this.counters.refused.invalid++;
      return { ok: false, reason: "invalid" };
    }
    if (this.drain?.draining) {
      this.counters.refused.draining++;
      return { ok: false, reason: "draining" };
    }
    const t = this.now();
    // A second allocation in the same CM session replaces the first admission (same id, newer agent answer).
    const previous = this.byId.get(req.sessionLogId);
    if (previous) this.remove(previous, "replaced");
    const full = this.limitReached(clientIp, t);
    if (full) {
      this.counters.refused[full]++;
      return { ok: false, reason: full };
    }
    const rec: Rec = {
      sessionLogId: req.sessionLogId,
      agentSessionId: req.agentSessionId,
      clientIp,
      agentHost: req.agentHost,
      agentTcpPort: req.agentTcpPort ?? 4172,
      agentUdpPort: req.agentUdpPort ?? 4172,
      sni: normaliseSni(req.sni),
      admittedAt: t,
      expiresAt: t + this.pendingTtlMs,
      state: "pending",
      activatedAt: null,
      endedAt: null,
      tcpConnections: 0,
      tcpConnects: 0,
    };
    this.byId.set(rec.sessionLogId, rec);
    const set = this.byIp.get(clientIp);
    if (set) set.add(rec);
    else this.byIp.set(clientIp, new Set([rec]));
    this.counters.admitted++;
    return { ok: true, admission: snapshot(rec) };
  }

  /** The limit a new admission for `clientIp` would break (maxSessions first), or undefined. */
  private limitReached(clientIp: string, t: number): "max_sessions" | "per_ip_limit" | undefined {
    // Counting the live records is O(sessions); it is needed only when the table is full (dead records may
    // still be in it before the sweep), so the common path costs nothing per allocation.
    let live = this.byId.size;
    if (live >= this.maxSessions) {
      live = 0;
      for (const r of this.byId.values()) if (!this.isDead(r, t)) live++;
    }
    if (live >= this.maxSessions) return "max_sessions";
    if (this.maxPerClientIp > 0) {
      const ofIpSet = this.byIp.get(clientIp);
      let ofIp = ofIpSet?.size ?? 0;
      if (ofIp >= this.maxPerClientIp) {
        ofIp = 0;
        for (const r of ofIpSet ?? []) if (!this.isDead(r, t)) ofIp++;
      }
      if (ofIp >= this.maxPerClientIp) return "per_ip_limit";
    }
    return undefined;
  }

  /**
   * Matching rules (SPEC §4), for one client IP only — never by SNI alone, since an agent's host name is
   * guessable from its certificate:
   * 1. With an SNI: the admissions of this IP whose sni equals it (case-insensitive). Preference: a pending one
   *    (oldest first: clients connect in the order they allocated), then one within its reconnect grace (most
   *    recently ended first), then an active one (a reconnect whose old connection the SG has not seen die).
   * 2. Without an SNI: the same, among admissions whose sni is an IP literal (no SNI will ever arrive); failing
   *    that, the IP's only pending admission when there is exactly one.
   * An SNI that matches nothing is refused even when the IP has a single pending admission: a wrong name is a
   * different destination, not a missing one.
   */
  matchTcp(rawIp: string, rawSni: string | undefined): TcpMatch {
    const t = this.now();
    const set = this.byIp.get(canonicalIp(rawIp));
    let any = false;
    let pending: Rec | undefined;
    let pendingCount = 0;
    let best: Rec | undefined;
    const sni = rawSni === undefined ? null : normaliseSni(rawSni);
    for (const r of set ?? []) {
      if (this.isDead(r, t)) continue;
      any = true;
      if (r.state === "pending") {
        pendingCount++;
        if (!pending || r.admittedAt < pending.admittedAt) pending = r;
      }
      if (r.sni === sni && better(r, best)) best = r;
    }
    if (best) return { ok: true, admission: snapshot(best) };
    if (!any) return { ok: false, reason: "no_admission" };
    if (sni !== null) return { ok: false, reason: "wrong_sni" };
    if (pendingCount === 1 && pending) return { ok: true, admission: snapshot(pending) };
    return { ok: false, reason: "no_sni_ambiguous" };
  }

  pickUdp(
    rawIp: string,
    usable: (sessionLogId: string) => boolean,
  ): { chosen: Admission | undefined; activeSeen: boolean } {
    const set = this.byIp.get(canonicalIp(rawIp));
    let best: Rec | undefined;
    let activeSeen = false;
    if (set) {
      for (const r of set) {
        if (r.state !== "active") continue;
        activeSeen = true;
        // Strictly greater: among equal activation times the earlier admitted record wins.
        if ((best === undefined || (r.activatedAt ?? 0) > (best.activatedAt ?? 0)) && usable(r.sessionLogId))
          best = r;
      }
    }
    return { chosen: best ? snapshot(best) : undefined, activeSeen };
  }

  attachTcp(id: string): void {
    const r = this.byId.get(id);
    if (!r) return;
    r.state = "active";
    r.activatedAt = this.now();
    r.endedAt = null;
    r.tcpConnections++;
    r.tcpConnects++;
  }

  detachTcp(id: string): void {
    const r = this.byId.get(id);
    if (!r || r.tcpConnections === 0) return;
    r.tcpConnections--;
    if (r.tcpConnections === 0) {
      r.state = "ended";
      r.endedAt = this.now();
    }
  }

  end(id: string): boolean {
    const r = this.byId.get(id);
    if (!r) return false;
    this.remove(r, "revoked");
    return true;
  }

  get(id: string): Admission | undefined {
    const r = this.byId.get(id);
    return r ? snapshot(r) : undefined;
  }

  list(state?: AdmissionState): Admission[] {
    const out: Admission[] = [];
    for (const r of this.byId.values()) if (state === undefined || r.state === state) out.push(snapshot(r));
    return out;
  }

  /** An arrow: the sweep timer calls it unbound. */
  readonly sweep = (): void => {
    const t = this.now();
    for (const r of this.byId.values()) {
      if (this.isDead(r, t)) this.remove(r, r.state === "pending" ? "expired" : "closed");
    }
  };

  subscribe(listener: (e: AdmissionEvent) => void): () => void {
    this.listeners.add(listener);
    return () => {
      this.listeners.delete(listener);
    };
  }

  close(): void {
    if (this.timer) clearInterval(this.timer);
    this.listeners.clear();
  }

  /** A record no longer usable, whether or not the sweep has run yet. */
  private isDead(r: Rec, t: number): boolean {
    return (
      (r.state === "pending" && t >= r.expiresAt) ||
      (r.state === "ended" && r.endedAt !== null && t >= r.endedAt + this.reconnectGraceMs)
    );
  }

  private remove(r: Rec, reason: RemovalReason): void {
    if (this.byId.get(r.sessionLogId) !== r) return;
    this.byId.delete(r.sessionLogId);
    const set = this.byIp.get(r.clientIp);
    set?.delete(r);
    if (set && set.size === 0) this.byIp.delete(r.clientIp);
    this.counters.removed[reason]++;
    const event: AdmissionRemoved = { type: "removed", admission: snapshot(r), reason };
    for (const l of this.listeners) l(event);
  }
}

/**
 * @example
 * const admissions = createAdmissions({ maxSessions: 5000 });
 * const r = admissions.admit({ sessionLogId, agentSessionId, clientIp, agentHost: "10.20.3.14", agentUdpPort: 4172, sni });
 * if (!r.ok) reply with "no resources" and log r.reason
 */
export function createAdmissions(options: AdmissionsOptions = {}): Admissions {
  return new AdmissionTable(options);
}

const RANK: Record<AdmissionState, number> = { pending: 0, ended: 1, active: 2 };

/** Rule 1's preference order: pending (oldest first) > ended (latest first) > active (latest first). */
function better(r: Rec, best: Rec | undefined): boolean {
  if (!best) return true;
  if (RANK[r.state] !== RANK[best.state]) return RANK[r.state] < RANK[best.state];
  if (r.state === "pending") return r.admittedAt < best.admittedAt;
  if (r.state === "ended") return (r.endedAt ?? 0) > (best.endedAt ?? 0);
  return (r.activatedAt ?? 0) > (best.activatedAt ?? 0);
}

/** IP-literal sni → null (no SNI will arrive: RFC 6066 forbids literals); names lower-cased, one trailing dot off. */
function normaliseSni(sni: string): string | null {
  const s = sni.trim().toLowerCase().replace(/\.$/, "");
  if (s === "" || ipFamily(s) !== 0) return null;
  return s;
}

function snapshot(r: Rec): Admission {
  return { ...r };
}
