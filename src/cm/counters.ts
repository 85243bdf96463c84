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
  };
}
