/**
 * Concurrent password checks per client IP (issue 16 #5, `cm.maxPasswordChecksPerIp`, default 4). A password
 * check (LDAP bind, argon2 verify, the upstream broker's authenticate) is the CM's costliest step and holds one of
 * the node's `maxConcurrentEstablishments` slots; without a per-IP bound, one IP sending 25 logins at once took the
 * slots and CPU that users at other addresses needed, and they got "server busy".
 *
 * Checks beyond the IP's share wait in arrival order for one of its slots, up to `maxWaitMs` (10 s), then are
 * answered busy without checking. The wait is a queue, not a delay: an IP's own checks run back to back, so honest
 * users behind one NAT lose only the time the checks ahead of them take. At most `maxWaitingPerIp` checks of one
 * IP wait at once (more are busy at once), so a flood cannot pin memory in waiters.
 *
 * @example
 * const gate = createPasswordCheckGate({ maxPerIp: () => 4 });
 * const slot = await gate.acquire(clientIp);
 * if (slot.kind === "busy") return busyAnswer();
 * try { await conversation.authenticate(msg); } finally { slot.release(); }
 */

export interface PasswordCheckGateOptions {
  /** cm.maxPasswordChecksPerIp (read per check, so a reload applies at once). */
  readonly maxPerIp: () => number;
  /** Longest wait for a slot before the busy answer. Default 10 s. */
  readonly maxWaitMs?: number;
  /** Checks of one IP waiting at once; beyond, busy at once. Default 256. */
  readonly maxWaitingPerIp?: number;
}

export type CheckSlot =
  | { readonly kind: "go"; readonly waitedMs: number; release(): void }
  | { readonly kind: "busy"; readonly reason: "wait_timeout" | "too_many_waiting" };

export interface PasswordCheckCounters {
  /** Checks that had to wait for a slot of their IP. */
  queued: number;
  /** Checks answered busy, by reason. */
  busy: { wait_timeout: number; too_many_waiting: number };
}

export interface PasswordCheckGate {
  acquire(ip: string): Promise<CheckSlot>;
  /** Checks of `ip` running now, and waiting now. */
  load(ip: string): { running: number; waiting: number };
  readonly counters: PasswordCheckCounters;
}

interface Waiter {
  readonly since: number;
  readonly grant: (slot: CheckSlot) => void;
  readonly timer: ReturnType<typeof setTimeout>;
}

interface IpState {
  running: number;
  readonly waiting: Waiter[];
}

export function createPasswordCheckGate(o: PasswordCheckGateOptions): PasswordCheckGate {
  const maxWaitMs = o.maxWaitMs ?? 10_000;
  const maxWaiting = o.maxWaitingPerIp ?? 256;
  const ips = new Map<string, IpState>();
  const counters: PasswordCheckCounters = { queued: 0, busy: { wait_timeout: 0, too_many_waiting: 0 } };

  const slotFor = (ip: string, st: IpState, since: number): CheckSlot => {
    st.running++;
    let released = false;
    return {
      kind: "go",
      waitedMs: Date.now() - since,
      release() {
        if (released) return;
        released = true;
        st.running--;
        next(ip, st);
      },
    };
  };

  /** Hands freed slots to the oldest waiters; forgets the IP when nothing of it is left. */
  const next = (ip: string, st: IpState): void => {
    while (st.running < o.maxPerIp() && st.waiting.length > 0) {
      const w = st.waiting.shift()!;
      clearTimeout(w.timer);
      w.grant(slotFor(ip, st, w.since));
    }
    if (st.running === 0 && st.waiting.length === 0) ips.delete(ip);
  };

  return {
    counters,
    load(ip) {
      const st = ips.get(ip);
      return { running: st?.running ?? 0, waiting: st?.waiting.length ?? 0 };
    },
    acquire(ip) {
      let st = ips.get(ip);
      if (!st) {
        st = { running: 0, waiting: [] };
        ips.set(ip, st);
      }
      const state = st;
      if (state.running < o.maxPerIp() && state.waiting.length === 0)
        return Promise.resolve(slotFor(ip, state, Date.now()));
      if (state.waiting.length >= maxWaiting) {
        counters.busy.too_many_waiting++;
        return Promise.resolve({ kind: "busy", reason: "too_many_waiting" });
      }
      counters.queued++;
      return new Promise<CheckSlot>((resolve) => {
        const w: Waiter = {
          since: Date.now(),
          grant: resolve,
          timer: setTimeout(() => {
            const i = state.waiting.indexOf(w);
            if (i >= 0) state.waiting.splice(i, 1);
            counters.busy.wait_timeout++;
            resolve({ kind: "busy", reason: "wait_timeout" });
            next(ip, state);
          }, maxWaitMs),
        };
        state.waiting.push(w);
      });
    },
  };
}
