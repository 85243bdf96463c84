/**
 * Kept-alive directory connections (issue 21): after a login, its connection goes back to a small idle list per
 * server instead of being unbound and closed, and the next login takes it — one TCP (and TLS) setup and teardown
 * less per login for the CM and for the directory server.
 *
 * Identity: a simple bind changes who the connection is (RFC 4511 §4.2), and a failed one leaves it anonymous. A
 * connection is therefore only kept when every login starts with a bind of its own (`everyUseBinds`: template
 * mode binds as the user first, search-then-bind with a service account binds as the service first), so no login
 * ever runs an operation under the identity the previous one left behind. Search-then-bind with anonymous
 * search is never pooled.
 *
 * Bounds: at most MAX_IDLE_PER_SERVER idle connections per server; one idle longer than IDLE_MS, or that the
 * server closed, is closed instead of used. A kept connection the server closed meanwhile may still fail on
 * first use; the caller (ldap.ts) then tries once more on a new connection.
 */
import type { LdapConnection, ServerFailure } from "./ldap-connection.ts";
import type { LdapServer } from "./ldap-options.ts";

/** Idle connections kept per directory server. */
export const MAX_IDLE_PER_SERVER = 8;
/** An idle connection older than this is closed rather than used (servers close idle ones: AD after 900 s). */
export const IDLE_MS = 60_000;

export type Acquired =
  | { readonly ok: true; readonly conn: LdapConnection; readonly reused: boolean }
  | { readonly ok: false; readonly failure: ServerFailure };

export interface LdapPool {
  /** An idle connection to `server` when one is usable, else a new one. */
  acquire(server: LdapServer): Promise<Acquired>;
  /** The login is done with `conn` and left it healthy: keep it idle (or close it when the list is full). */
  release(conn: LdapConnection): void;
  /** Idle connections now, over all servers (tests, metrics). */
  readonly idle: number;
  /** Closes every idle connection; later releases close at once. */
  close(): Promise<void>;
}

export function createLdapPool(opts: {
  open(
    server: LdapServer,
  ): Promise<{ ok: true; conn: LdapConnection } | { ok: false; failure: ServerFailure }>;
  /** Whether every login begins with a bind of its own (see the module comment); false disables keeping. */
  everyUseBinds: boolean;
  now?: () => number;
}): LdapPool {
  const now = opts.now ?? Date.now;
  const idle = new Map<string, { conn: LdapConnection; since: number }[]>();
  let closed = false;
  let count = 0;

  return {
    async acquire(server) {
      const list = idle.get(server.url);
      while (list && list.length > 0) {
        const kept = list.pop()!;
        count--;
        if (now() - kept.since <= IDLE_MS && kept.conn.client.isConnected) {
          return { ok: true, conn: kept.conn, reused: true };
        }
        void kept.conn.close();
      }
      const opened = await opts.open(server);
      return opened.ok ? { ok: true, conn: opened.conn, reused: false } : opened;
    },
    release(conn) {
      const list = idle.get(conn.server.url) ?? [];
      if (closed || !opts.everyUseBinds || list.length >= MAX_IDLE_PER_SERVER || !conn.client.isConnected) {
        void conn.close();
        return;
      }
      list.push({ conn, since: now() });
      idle.set(conn.server.url, list);
      count++;
    },
    get idle() {
      return count;
    },
    async close() {
      closed = true;
      const all = [...idle.values()].flat();
      idle.clear();
      count = 0;
      await Promise.all(all.map((k) => k.conn.close()));
    },
  };
}
