/**
 * Where the SG may relay a session (the admit step of cm/establish.ts). The target comes from the agent's
 * `launch-session-resp` (session-info ip-address and port) or from an upstream broker's `target`: neither is ours,
 * and without `agentCertCheck` a man in the middle on the LAN can write it. So with the SG on, a target is admitted
 * only when
 *
 * 1. its port is one of `sg.agentPorts` (default 4172: PCoIP's port);
 * 2. its address:port is none of the appliance's own listeners (an SG pointed at itself accepts its own
 *    connections until the descriptors run out);
 * 3. built-in broker: its address is the host the CM launched the session on (the desktop's configured agent,
 *    resolved) — the agent may only name itself; upstream broker: its address lies in `sg.agentNetworks` (default
 *    the private and ULA ranges, no loopback).
 *
 * A refusal names the rule and the key to change, for the one log line the pipeline writes.
 */
import { lookup } from "node:dns/promises";
import { isIP } from "node:net";
import { networkInterfaces } from "node:os";
import { DEFAULT_AGENT_NETWORKS, DEFAULT_AGENT_PORTS } from "../config/schema.ts";
import { canonicalIp, compileTrustedProxies, type TrustedProxies } from "../net/client-address.ts";

export interface AgentTargetRules {
  readonly ports: readonly number[];
  /** sg.agentNetworks as written (for the log line). */
  readonly networkList: readonly string[];
  readonly networks: TrustedProxies;
  /** The appliance's listeners as bound ("host:port"; port 0 in config → the real port). */
  readonly ownListeners: () => readonly string[];
  /** Host name → addresses (tests pass their own). Default: the system resolver. */
  readonly resolve: (host: string) => Promise<readonly string[]>;
}

export type TargetRule = "agent_port" | "own_listener" | "launched_host" | "agent_network" | "unresolved";

export type TargetVerdict =
  | { readonly ok: true }
  | { readonly ok: false; readonly rule: TargetRule; readonly key: string; readonly detail: string };

/** @example compileAgentTargets({ ports: [4172], networks: ["10.0.0.0/8"], ownListeners: () => bound }) */
export function compileAgentTargets(o: {
  ports?: readonly number[];
  networks?: readonly string[];
  ownListeners?: () => readonly string[];
  resolve?: (host: string) => Promise<readonly string[]>;
}): AgentTargetRules {
  const networkList = o.networks ?? DEFAULT_AGENT_NETWORKS;
  return {
    ports: o.ports ?? DEFAULT_AGENT_PORTS,
    networkList,
    // A set of CIDRs, the same matcher the trusted proxies use.
    networks: compileTrustedProxies(networkList),
    ownListeners: o.ownListeners ?? (() => []),
    resolve: o.resolve ?? resolveHost,
  };
}

async function resolveHost(host: string): Promise<readonly string[]> {
  if (isIP(host)) return [canonicalIp(host)];
  try {
    return (await lookup(host, { all: true })).map((a) => canonicalIp(a.address));
  } catch {
    return [];
  }
}

/**
 * Judges `target` (the address the SG would relay to). `launchedOn` is the agent host the CM launched the session
 * on when the built-in broker picked the desktop; undefined when an upstream broker named the agent or the target.
 */
export async function judgeAgentTarget(
  target: { readonly host: string; readonly port: number },
  launchedOn: string | undefined,
  rules: AgentTargetRules,
): Promise<TargetVerdict> {
  const where = hostPort(target.host, target.port);
  if (!rules.ports.includes(target.port)) {
    return {
      ok: false,
      rule: "agent_port",
      key: "sg.agentPorts",
      detail: `port ${target.port} is not in sg.agentPorts [${rules.ports.join(", ")}]`,
    };
  }
  const addresses = await rules.resolve(target.host);
  if (addresses.length === 0) {
    return {
      ok: false,
      rule: "unresolved",
      key: "the agent's address",
      detail: `${target.host} does not resolve`,
    };
  }
  const own = ownListenerHit(addresses, target.port, rules.ownListeners());
  if (own) {
    return {
      ok: false,
      rule: "own_listener",
      key: "the agent's session address (or sg.agentPorts)",
      detail: `${where} is this appliance's own listener ${own}: the SG would relay to itself`,
    };
  }
  if (launchedOn !== undefined) {
    const launched = new Set(await rules.resolve(launchedOn));
    if (!addresses.every((a) => launched.has(a))) {
      return {
        ok: false,
        rule: "launched_host",
        key: "desktops[].agent",
        detail: `${where} is not the agent the session was launched on (${launchedOn})`,
      };
    }
    return { ok: true };
  }
  const outside = addresses.find((a) => !rules.networks.has(a));
  if (outside !== undefined) {
    return {
      ok: false,
      rule: "agent_network",
      key: "sg.agentNetworks",
      detail: `${outside} is not in sg.agentNetworks [${rules.networkList.join(", ")}]`,
    };
  }
  return { ok: true };
}

/** The listener ("host:port") an address:port is, counting a wildcard listener as every local address. */
function ownListenerHit(
  addresses: readonly string[],
  port: number,
  listeners: readonly string[],
): string | undefined {
  let local: Set<string> | undefined;
  for (const l of listeners) {
    const i = l.lastIndexOf(":");
    if (Number(l.slice(i + 1)) !== port) continue;
    const host = canonicalIp(l.slice(0, i).replace(/^\[|\]$/g, ""));
    const wildcard = host === "0.0.0.0" || host === "::";
    if (wildcard) local ??= localAddresses();
    if (addresses.some((a) => (wildcard ? local!.has(a) || isLoopback(a) : a === host))) return l;
  }
  return undefined;
}

function localAddresses(): Set<string> {
  const out = new Set<string>(["::1"]);
  for (const list of Object.values(networkInterfaces()))
    for (const a of list ?? []) out.add(canonicalIp(a.address));
  return out;
}

/** Loopback is local whatever the interfaces say (all of 127/8 is ours). */
function isLoopback(ip: string): boolean {
  return ip.startsWith("127.") || ip === "::1";
}

function hostPort(host: string, port: number): string {
  return host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
}
