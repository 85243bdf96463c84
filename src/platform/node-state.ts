/**
 * What one appliance process keeps for its whole life, whatever `systemctl reload` does (DESIGN.md "State"): the
 * failed-login throttle, the desktop holds, the drain flag and the CM's counters. appliance.ts makes one at start
 * and hands it to every CM generation (cm-plane.ts), the SG's admission table and the health checks. A reload swaps
 * the configuration and the conversations that start after it; it never replaces this object, so failed logins
 * keep counting, a held desktop stays held, a draining node stays draining and the `_total` series never fall.
 */

import { type CmCounters, newCmCounters } from "../cm/counters.ts";
import { DesktopHolds } from "../cm/desktop-holds.ts";
import { createPasswordCheckGate } from "../cm/password-checks.ts";
import type { CmNodeState } from "../cm/server.ts";
import { createThrottle, type Throttle, type ThrottleOptions } from "../cm/throttle.ts";
import type { Config } from "../config/schema.ts";

export interface NodeState extends CmNodeState {
  readonly throttle: Throttle;
  readonly desktopHolds: DesktopHolds;
  readonly counters: CmCounters;
  /**
   * The one drain flag. Up: the CM refuses allocations and answers its load-balancer GET with 503, the SG admits
   * nothing new (live sessions and their reconnects go on), /readyz fails "draining".
   */
  readonly draining: boolean;
  /** Raises (drain) or lowers (resume) the flag; true when it changed. */
  setDraining(on: boolean): boolean;
  /** Applies a reloaded configuration's settings to what is kept (the throttle's delays and bounds). */
  reconfigure(config: Readonly<Config>): void;
}

export interface NodeStateDeps {
  /** Whether the SG still holds a session (desktop holds last as long as it does); absent without the SG. */
  readonly isLive?: (sessionId: string) => Promise<boolean>;
}

export function throttleOptions(config: Readonly<Config>): ThrottleOptions {
  const t = config.cm.throttle;
  return {
    failuresBeforeDelay: t.failuresBeforeDelay,
    maxDelayMs: t.maxDelaySeconds * 1000,
    distinctUsersPerIp: t.distinctUsersPerIpBeforeIpThrottle,
    maxDelayedAnswers: t.maxDelayedAnswers,
    windowMs: t.windowSeconds * 1000,
  };
}

/** @example const node = createNodeState(config, { isLive: (id) => gateway.isLive(id) }); node.setDraining(true); */
export function createNodeState(config: Readonly<Config>, deps: NodeStateDeps = {}): NodeState {
  const throttle = createThrottle(throttleOptions(config));
  const desktopHolds = new DesktopHolds(deps.isLive);
  const counters = newCmCounters();
  // Per-IP password checks: queued checks must survive a reload, and the limit follows the reloaded config.
  let checksPerIp = config.cm.maxPasswordChecksPerIp;
  const passwordChecks = createPasswordCheckGate({ maxPerIp: () => checksPerIp });
  let draining = false;
  return {
    throttle,
    passwordChecks,
    desktopHolds,
    counters,
    get draining() {
      return draining;
    },
    setDraining(on) {
      if (draining === on) return false;
      draining = on;
      return true;
    },
    reconfigure(next) {
      throttle.reconfigure(throttleOptions(next));
      checksPerIp = next.cm.maxPasswordChecksPerIp;
    },
  };
}
