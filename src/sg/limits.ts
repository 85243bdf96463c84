/**
 * Descriptor budgets. A session's relay holds three descriptors (client TCP, agent TCP, the session's UDP socket
 * toward its agent); a CM client connection holds one. When Bun runs out of descriptors its accept loop spins at
 * 100% CPU instead of failing, so the process must stop short of RLIMIT_NOFILE by itself: budgets are derived from
 * the soft limit at start, leaving a reserve for everything else the process opens (listeners, the CM's calls to
 * brokers, agents and LDAP, logs, files), and logged so an operator can see why connections are refused.
 *
 * The appliance gives the SG relays and the CM's front door separate budgets ({@link createDescriptorBudgets},
 * issue 16 #8): with one shared budget, idle or slow HTTPS connections — which anyone can open — took the
 * descriptors an admitted user's relay needed. The split follows the planes' own limits (sg.maxSessions,
 * cm.maxConnections), so a node configured for many sessions keeps the descriptors they need. A standalone SG (benches) uses {@link createRelayLimits} alone.
 */
import { readFileSync } from "node:fs";
import type { Logger } from "../observability/log.ts";

/** Descriptors kept for the rest of the process (CM connections to clients, brokers, agents; files; listeners). */
export const RESERVED_FDS = 512;
/** Client TCP + agent TCP + the session's UDP socket. */
export const FDS_PER_RELAY = 3;

export interface RelayLimitsOptions {
  /** The soft RLIMIT_NOFILE; read from /proc/self/limits when omitted; `undefined` there = unlimited. */
  nofile?: number | undefined;
  reservedFds?: number;
  fdsPerRelay?: number;
  /** When given, the derived cap is logged once. */
  log?: Logger;
}

/** A number of descriptors that one plane may hold at once. */
export interface DescriptorBudget {
  /** Descriptors in the budget (Infinity when RLIMIT_NOFILE is unlimited). */
  readonly capacity: number;
  /** Descriptors held now. */
  readonly inUse: number;
  /** Times a take was refused because the budget was spent. */
  readonly refused: number;
  /** Takes `fds` descriptors from the budget; false (and counted) when they do not fit. */
  tryTake(fds: number): boolean;
  give(fds: number): void;
}

export interface RelayLimits extends DescriptorBudget {
  /** The soft descriptor limit the cap came from (`null` = unlimited or unreadable). */
  readonly nofile: number | null;
  /** Whole relays that fit: ⌊(nofile − reserve) / 3⌋ alone, the SG's share in the appliance. */
  readonly maxRelays: number;
}

/** The soft "Max open files" of this process, or undefined when unlimited or unreadable. */
export function readNofileSoftLimit(procLimitsText?: string): number | undefined {
  let text = procLimitsText;
  if (text === undefined) {
    try {
      text = readFileSync("/proc/self/limits", "utf8");
    } catch {
      return undefined; // not Linux, or /proc not mounted: behave as unlimited
    }
  }
  const m = /^Max open files\s+(\S+)\s+(\S+)/m.exec(text);
  if (!m || m[1] === "unlimited") return undefined;
  const n = Number(m[1]);
  return Number.isFinite(n) && n > 0 ? n : undefined;
}

/** ⌊(nofile − reserve) / perRelay⌋, at least 0. */
export function relayCap(nofile: number, reservedFds = RESERVED_FDS, fdsPerRelay = FDS_PER_RELAY): number {
  return Math.max(0, Math.floor((nofile - reservedFds) / fdsPerRelay));
}

/**
 * @example const limits = createRelayLimits({ log }); // logs "relay cap from RLIMIT_NOFILE" once
 */
export function createRelayLimits(options: RelayLimitsOptions = {}): RelayLimits {
  const nofile = "nofile" in options ? options.nofile : readNofileSoftLimit();
  const reserved = options.reservedFds ?? RESERVED_FDS;
  const perRelay = options.fdsPerRelay ?? FDS_PER_RELAY;
  const maxRelays = nofile === undefined ? Number.POSITIVE_INFINITY : relayCap(nofile, reserved, perRelay);
  const budget = createBudget(maxRelays * perRelay);
  options.log?.info(
    { nofile: nofile ?? "unlimited", reservedFds: reserved, fdsPerRelay: perRelay, maxRelays },
    nofile === undefined
      ? "relay cap: RLIMIT_NOFILE unlimited, relays limited by maxSessions only"
      : "relay cap from RLIMIT_NOFILE: raise LimitNOFILE in the unit to allow more relays",
  );
  return Object.assign(budget, { nofile: nofile ?? null, maxRelays });
}

/**
 * A budget of `capacity` descriptors. Over-limit policy: refuse the newcomer and count it; never close a running
 * connection to make room. A refused connection is closed at once (the client retries or reports a connect
 * failure), a refused UDP flow drops its datagrams; both show up in `refused` and in the planes' own counters.
 */
export function createBudget(capacity: number): DescriptorBudget {
  let inUse = 0;
  let refused = 0;
  return {
    capacity,
    get inUse() {
      return inUse;
    },
    get refused() {
      return refused;
    },
    tryTake(fds) {
      if (inUse + fds > capacity) {
        refused++;
        return false;
      }
      inUse += fds;
      return true;
    },
    give(fds) {
      inUse = Math.max(0, inUse - fds);
    },
  };
}

/** The reserve: RESERVED_FDS, but at most a quarter of a small limit (1,024 would otherwise keep half). */
export function reserveFor(nofile: number): number {
  return Math.min(RESERVED_FDS, Math.floor(nofile / 4));
}

export interface DescriptorBudgets {
  readonly nofile: number | null;
  readonly reservedFds: number;
  /** The SG relays' budget (3 per relay). */
  readonly sg: RelayLimits;
  /** The CM front door's budget (1 per client connection, HTTPS and port 80 alike). */
  readonly cm: DescriptorBudget;
}

/** What each plane's configured limits can ask for: the split follows them. */
export interface PlaneDemand {
  /** sg.maxSessions (0 with the SG off): 3 descriptors each. */
  readonly sgMaxSessions: number;
  /** cm.maxConnections: 1 descriptor each. */
  readonly cmMaxConnections: number;
}

/**
 * The appliance's two budgets from the soft RLIMIT_NOFILE: the reserve first, then the rest split in proportion to
 * what the planes' limits can ask for — sg.maxSessions × 3 against cm.maxConnections (defaults 15,000 : 20,000) —
 * the SG's part in whole relays. Neither plane can take the other's part; an operator shifts it by lowering one
 * limit (or raises LimitNOFILE). Logged once, both figures and the fix.
 *
 * @example createDescriptorBudgets({ nofile: 1024, demand }) // reserve 256, SG 109 relays (327 fds), CM 441
 */
export function createDescriptorBudgets(
  options: { nofile?: number | undefined; demand?: PlaneDemand; log?: Logger } = {},
): DescriptorBudgets {
  const nofile = "nofile" in options ? options.nofile : readNofileSoftLimit();
  if (nofile === undefined) {
    const sg = createRelayLimits({ nofile: undefined });
    const cm = createBudget(Number.POSITIVE_INFINITY);
    options.log?.info(
      { nofile: "unlimited" },
      "descriptor budgets: RLIMIT_NOFILE unlimited; relays limited by sg.maxSessions, CM connections by cm.maxConnections",
    );
    return { nofile: null, reservedFds: 0, sg, cm };
  }
  const reservedFds = reserveFor(nofile);
  const rest = Math.max(0, nofile - reservedFds);
  const demand = options.demand ?? { sgMaxSessions: 5000, cmMaxConnections: 20000 };
  const sgWant = demand.sgMaxSessions * FDS_PER_RELAY;
  const share = sgWant + demand.cmMaxConnections > 0 ? sgWant / (sgWant + demand.cmMaxConnections) : 0;
  const maxRelays = Math.floor((rest * share) / FDS_PER_RELAY);
  const sg = createRelayLimits({ nofile, reservedFds: nofile - maxRelays * FDS_PER_RELAY });
  const cm = createBudget(rest - maxRelays * FDS_PER_RELAY);
  options.log?.info(
    {
      nofile,
      reservedFds,
      sgMaxRelays: maxRelays,
      sgFds: maxRelays * FDS_PER_RELAY,
      cmMaxConnections: cm.capacity,
    },
    `descriptor budgets from RLIMIT_NOFILE ${nofile}: SG ${maxRelays} relays (${maxRelays * FDS_PER_RELAY} fds), ` +
      `CM ${cm.capacity} connections, ${reservedFds} reserved (split as sg.maxSessions × 3 : cm.maxConnections); ` +
      "raise LimitNOFILE in the unit for more",
  );
  return { nofile, reservedFds, sg, cm };
}
