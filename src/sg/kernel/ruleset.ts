/**
 * The nftables table of the kernel UDP path (docs/FASTPATH.md, SPEC §4 "UDP fast path"). One table of our own,
 * `inet pcoip_cmsg`; per session only map elements change (no rule is ever added after start).
 *
 * For an admitted client endpoint C:cp of a session with source port sp toward agent A:ap:
 * - raw prerouting: a datagram to our listener port from an endpoint that is not in `dnat4` is left untracked
 *   (it goes to the userspace relay and must not leave a conntrack entry that NAT would never revisit — the
 *   first-packet pitfall); an admitted one gets the flow's conntrack zone (a fresh zone per binding, so a client
 *   port change never collides with the previous binding's entry).
 * - agent → sp: untracked while sp is "warm" (the userspace relay forwarded the first datagrams and their answers
 *   must reach its socket without leaving an entry that would collide with the NAT binding), else the flow's zone.
 * - nat prerouting: DNAT C:cp → A:ap; nat postrouting: masquerade to source port sp (address of the route to A).
 *   conntrack reverses both for the agent's replies, which need no rule.
 * - forward: NATed media of ours is accepted only while its endpoint is in the maps (counted per session,
 *   both ways) and dropped otherwise — a session that ended stops at once, its conntrack entry notwithstanding.
 *   When this process turned forwarding on, everything else forwarded is dropped: nothing but admitted flows
 *   is forwarded because of us.
 */
import type { PortRange } from "../port-pool.ts";

export const TABLE = "pcoip_cmsg";
export const FAMILY = "inet";
/** Present (empty) when this table's owner switched net.ipv4.ip_forward on: survives a kill -9 for cleanup. */
export const FORWARDING_MARK_CHAIN = "we_enabled_forwarding";

export interface RulesetOptions {
  readonly listenPorts: readonly number[];
  readonly sourcePorts: PortRange;
  /** Add the catch-all drop to forward (forwarding is on because of us). */
  readonly dropOtherForwarding: boolean;
  /** Leave the mark chain: this process switched forwarding on, and whoever removes the table switches it off. */
  readonly markSwitchedOn: boolean;
}

/** The whole table, created (after deleting any leftover) in one transaction. */
export function ruleset(o: RulesetOptions): string {
  const listen = `{ ${[...new Set(o.listenPorts)].join(", ")} }`;
  const range = `${o.sourcePorts.from}-${o.sourcePorts.to}`;
  const maps = (v: 4 | 6) => {
    const a = v === 4 ? "ipv4_addr" : "ipv6_addr";
    const saddr = v === 4 ? "ip saddr" : "ip6 saddr";
    return [
      `  map dnat${v} { type ${a} . inet_service : ${a} . inet_service; }`,
      `  map snat${v} { type ${a} . inet_service : inet_service; }`,
      `  map zone${v} { typeof ${saddr} . udp sport : ct zone; }`,
      `  map up${v} { type ${a} . inet_service : counter; }`,
      `  map down${v} { type ${a} . inet_service : counter; }`,
    ];
  };
  const perFamily = (v: 4 | 6, rule: (ip: string, nfproto: string) => string) =>
    rule(v === 4 ? "ip" : "ip6", v === 4 ? "ipv4" : "ipv6");
  const both = (rule: (v: 4 | 6, ip: string) => string) => [rule(4, "ip"), rule(6, "ip6")];
  return [
    `table ${FAMILY} ${TABLE}`,
    `delete table ${FAMILY} ${TABLE}`,
    `table ${FAMILY} ${TABLE} {`,
    ...maps(4),
    ...maps(6),
    "  map zone_port { typeof udp dport : ct zone; }",
    "  set warm { type inet_service; flags timeout; }",
    o.markSwitchedOn ? `  chain ${FORWARDING_MARK_CHAIN} { }` : "",
    "  chain raw_prerouting {",
    "    type filter hook prerouting priority raw; policy accept;",
    ...both(
      (v, ip) =>
        // The map lookup first: an admitted flow's datagram fails it and never pays for the route lookup (fib),
        // ≈ +8 % closed-loop round trips on an idle box (bench/sg-udp-netns.ts).
        `    udp dport ${listen} ${ip} saddr . udp sport != @dnat${v} fib daddr type local notrack accept`,
    ),
    ...both(
      (v, ip) =>
        `    udp dport ${listen} fib daddr type local ct zone set ${ip} saddr . udp sport map @zone${v}`,
    ),
    `    udp dport ${range} udp dport @warm fib daddr type local notrack accept`,
    `    udp dport ${range} fib daddr type local ct zone set udp dport map @zone_port`,
    "  }",
    "  chain raw_output {",
    "    type filter hook output priority raw; policy accept;",
    // What the userspace relay sends itself (replies from the listener, the first datagrams toward agents)
    // must not leave entries that would shadow a NAT binding made a moment later.
    `    udp sport ${listen} notrack`,
    `    udp sport ${range} notrack`,
    "  }",
    "  chain nat_prerouting {",
    "    type nat hook prerouting priority dstnat; policy accept;",
    ...both((v, ip) => `    udp dport ${listen} dnat ${ip} to ${ip} saddr . udp sport map @dnat${v}`),
    "  }",
    "  chain nat_postrouting {",
    "    type nat hook postrouting priority srcnat; policy accept;",
    ...[4, 6].map((v) =>
      perFamily(
        v as 4 | 6,
        (ip, nfproto) =>
          `    meta nfproto ${nfproto} meta l4proto udp ct status dnat ct original proto-dst ${listen} masquerade to : ${ip} saddr . udp sport map @snat${v}`,
      ),
    ),
    "  }",
    "  chain forward {",
    "    type filter hook forward priority filter; policy accept;",
    `    meta l4proto udp ct status dnat ct original proto-dst ${listen} jump media`,
    o.dropOtherForwarding ? "    drop" : "",
    "  }",
    "  chain media {",
    ...both((v, ip) => `    ct direction original counter name ${ip} saddr . udp sport map @up${v} accept`),
    ...both((v, ip) => `    ct direction reply counter name ${ip} daddr . udp dport map @down${v} accept`),
    "    drop",
    "  }",
    "}",
  ]
    .filter((l) => l !== "")
    .join("\n");
}
