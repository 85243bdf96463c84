/**
 * The CM's counters: plain numbers the request path adds to and /metrics reads. One object per process
 * (platform/node-state.ts), shared by every reload generation, so the `_total` series only ever grow: a retired
 * generation closing takes nothing away from them (Prometheus would read a drop as a counter reset).
 */
export interface CmCounters {
  requests: number;
  /** Bodies answered with error-resp (bad XML, wrong root, unknown operation, too large). */
  protocolErrors: number;
  probes: number;
  loginsOk: number;
  loginsFailed: number;
  /** Attempts answered at once by the throttle (also counted in loginsFailed). */
  loginsThrottled: number;
  /** Busy answers (maxConcurrentEstablishments reached, or the SG full). */
  busy: number;
  /** allocate-resource answers by result id. */
  allocations: Record<string, number>;
  /** Agent targets the SG would not relay to (sg.agentPorts, sg.agentNetworks, own listener…), by rule. */
  targetsRefused: Record<string, number>;
  /** Establishments in flight now (a gauge: up and down). */
  establishing: number;
  /** Pre-sessions evicted to make room (issue 16 #4), by cause: the store full, or the client IP's share. */
  preSessionsEvicted: { global: number; per_ip: number };
  /** New pre-sessions refused: nothing could be evicted (all signed in or mid-authentication). */
  preSessionsRefused: number;
}

export function newCmCounters(): CmCounters {
  return {
    requests: 0,
    protocolErrors: 0,
    probes: 0,
    loginsOk: 0,
    loginsFailed: 0,
    loginsThrottled: 0,
    busy: 0,
    allocations: {},
    targetsRefused: {},
    establishing: 0,
    preSessionsEvicted: { global: 0, per_ip: 0 },
    preSessionsRefused: 0,
  };
}
