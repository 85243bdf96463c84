/**
 * Who may hold the front door's connections (issue 16): at most `cm.maxConnectionsPerIp` open connections per
 * client IP across every CM and port-80 listener, so one host cannot take the whole of `cm.maxConnections` or of
 * the CM's descriptor budget. The default is high (256) because a corporate NAT is one IP. Load balancers
 * (trustedProxies, cm.proxyProtocolFrom) are exempt: every client behind them shares their address; behind a PROXY
 * balancer the front door counts the client its header names instead (http1.ts).
 *
 * Every refusal of a connection — per IP, over cm.maxConnections, over the descriptor budget — is counted by
 * reason (pcoip_cm_connection_refusals_total) and logged at most once per window per reason, with the number
 * refused since the last line: a flood must not become a log flood.
 *
 * @example
 * const guard = createConnectionGuard({ maxPerIp: () => 256, exempt: () => false, log });
 * if (guard.open("198.51.100.7") !== undefined) socket.terminate(); // … and guard.close(ip) when it ends
 */
import type { Logger } from "../observability/log.ts";

export type ConnectionRefusal = "per_ip" | "max_connections" | "descriptors";

export interface ConnectionGuardOptions {
  /** cm.maxConnectionsPerIp (read per connection, so a reload applies at once). */
  readonly maxPerIp: () => number;
  /** Peers whose connections carry many clients (load balancers): never capped per IP. */
  readonly exempt: (ip: string) => boolean;
  readonly log?: Logger;
  /** At most one log line per reason per window. Default 60 s. */
  readonly logWindowMs?: number;
  readonly now?: () => number;
}

export interface ConnectionGuard {
  /** Takes a slot for a connection from `ip` (canonical); the refusal (counted) when it may not stay open. */
  open(ip: string): ConnectionRefusal | undefined;
  /** Gives back the slot `open(ip)` took. */
  close(ip: string): void;
  /** Counts and logs a refusal decided by the listener (cm.maxConnections, the descriptor budget). */
  refuse(reason: ConnectionRefusal, ip: string): void;
  /** Open connections of `ip` now. */
  count(ip: string): number;
  readonly refusals: Readonly<Record<ConnectionRefusal, number>>;
}

const WHY: Record<ConnectionRefusal, string> = {
  per_ip:
    "one client IP holds cm.maxConnectionsPerIp connections; raise it if many users share that IP (NAT)",
  max_connections: "cm.maxConnections connections are open on the listener; raise it if the host has room",
  descriptors:
    "the CM's descriptor budget (from RLIMIT_NOFILE) is spent; raise LimitNOFILE in the unit for more",
};

export function createConnectionGuard(o: ConnectionGuardOptions): ConnectionGuard {
  const perIp = new Map<string, number>();
  const refusals: Record<ConnectionRefusal, number> = { per_ip: 0, max_connections: 0, descriptors: 0 };
  const windowMs = o.logWindowMs ?? 60_000;
  const now = o.now ?? Date.now;
  const lastLine = new Map<ConnectionRefusal, { at: number; count: number }>();

  const refuse = (reason: ConnectionRefusal, ip: string): void => {
    refusals[reason]++;
    const t = now();
    const last = lastLine.get(reason);
    if (last && t - last.at < windowMs) return;
    const since = refusals[reason] - (last?.count ?? 0);
    lastLine.set(reason, { at: t, count: refusals[reason] });
    o.log?.warn(
      { reason, clientIp: ip, refusedSinceLastLine: since, refusedTotal: refusals[reason] },
      `front door: connection refused (${reason}): ${WHY[reason]}`,
    );
  };

  return {
    refusals,
    refuse,
    count: (ip) => perIp.get(ip) ?? 0,
    open(ip) {
      if (o.exempt(ip)) return undefined;
      const n = perIp.get(ip) ?? 0;
      if (n >= o.maxPerIp()) {
        refuse("per_ip", ip);
        return "per_ip";
      }
      perIp.set(ip, n + 1);
      return undefined;
    },
    close(ip) {
      const n = perIp.get(ip);
      if (n === undefined) return;
      if (n <= 1) perIp.delete(ip);
      else perIp.set(ip, n - 1);
    },
  };
}
