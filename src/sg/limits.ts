/**
 * The descriptor budget of the relays. A session's relay holds three descriptors (client TCP, agent TCP, the
 * session's UDP socket toward its agent); when Bun runs out of descriptors its accept loop spins at 100% CPU
 * instead of failing, so the SG must stop short of RLIMIT_NOFILE by itself. The cap is derived from the soft
 * limit at start, leaving a reserve for everything else the process opens (listeners, CM connections, logs,
 * LDAP, files), and logged so an operator can see why sessions are refused.
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

export interface RelayLimits {
  /** The soft descriptor limit the cap came from (`null` = unlimited or unreadable). */
  readonly nofile: number | null;
  /** Whole relays that fit: ⌊(nofile − reserve) / 3⌋. */
  readonly maxRelays: number;
  /** Descriptors the relays hold now. */
  readonly inUse: number;
  /** Times a relay was refused because the budget was spent. */
  readonly refused: number;
  /** Takes `fds` descriptors from the budget; false (and counted) when they do not fit. */
  tryTake(fds: number): boolean;
  give(fds: number): void;
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
  const budget = maxRelays * perRelay;
  let inUse = 0;
  let refused = 0;
  options.log?.info(
    { nofile: nofile ?? "unlimited", reservedFds: reserved, fdsPerRelay: perRelay, maxRelays },
    nofile === undefined
      ? "relay cap: RLIMIT_NOFILE unlimited, relays limited by maxSessions only"
      : "relay cap from RLIMIT_NOFILE: raise LimitNOFILE in the unit to allow more relays",
  );
  return {
    nofile: nofile ?? null,
    maxRelays,
    get inUse() {
      return inUse;
    },
    get refused() {
      return refused;
    },
    /**
     * Over-limit policy: refuse the newcomer and count it; never close a running relay to make room. A refused
     * control connection is closed at once (the client retries or reports a connect failure), a refused UDP
     * flow drops its datagrams; both show up in `refused` and in the relays' own counters.
     */
    tryTake(fds) {
      if (inUse + fds > budget) {
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
