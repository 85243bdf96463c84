/**
 * The nftables table of the kernel UDP path (docs/FASTPATH.md, SPEC §4 "UDP fast path"). One table of our own,
 * `inet pcoip_cmsg`; per session only map elements change (no rule is ever added after start).
 *
 * For an admitted client endpoint C:cp of a session with source port sp toward agent A:ap:
 * - raw prerouting dispatches on the destination port only (one compare each), so a packet that is not media pays
 *   for two compares and no lookup:
 *   - to our listener port (chain `listen`): an admitted endpoint gets its flow's conntrack zone (a fresh zone per
 *     binding, so a client port change never collides with the previous binding's entry) and is counted "up";
 *     anything else addressed to us is left untracked (it goes to the userspace relay and must not leave a
 *     conntrack entry that NAT would never revisit — the first-packet pitfall).
 *   - to a session source port (chain `reply`): untracked while sp is "warm" (the userspace relay forwarded the
 *     first datagrams and their answers must reach its socket without leaving an entry that would collide with
 *     the NAT binding), else the flow's zone.
 * - nat prerouting: DNAT C:cp → A:ap; nat postrouting: masquerade to source port sp (address of the route to A).
 *   conntrack reverses both for the agent's replies, which need no rule.
 * - forward: NATed media of ours is accepted and the agent's replies are counted "down" per session (after
 *   conntrack matched them to the binding, so datagrams spoofed toward sp never count); anything else NATed toward
 *   our listener is dropped. A session that ended stops at once, its conntrack entry notwithstanding: its client's
 *   datagrams are no longer zoned (untracked, to the userspace relay, which drops them) and neither are its agent's
 *   (looked up in zone 0, where no binding lives). When this process turned forwarding on, everything else
 *   forwarded is dropped: nothing but admitted flows is forwarded because of us.
 *
 * Per-packet cost is what the closed-loop bench measures (bench/sg-udp-netns.ts, docs/FASTPATH.md "Per-packet
 * cost"): every expression an admitted packet walks costs round trips, so each rule puts its cheapest, most
 * selective test first and the per-session lookups happen once per direction.
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
  const ports = [...new Set(o.listenPorts)];
  // One port is a compare; several are an anonymous set (a lookup).
  const listen = ports.length === 1 ? String(ports[0]) : `{ ${ports.join(", ")} }`;
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
  const both = (rule: (v: 4 | 6, ip: string, nfproto: string) => string) => [
    rule(4, "ip", "ipv4"),
    rule(6, "ip6", "ipv6"),
  ];
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
    `    udp dport ${listen} jump listen`,
    `    udp dport ${range} jump reply`,
    "  }",
    "  chain listen {",
    // The zone lookup is also the admission test: an endpoint not in the map fails it and falls through.
    ...both(
      (v, ip, nfproto) =>
        `    meta nfproto ${nfproto} ct zone set ${ip} saddr . udp sport map @zone${v} counter name ${ip} saddr . udp sport map @up${v} accept`,
    ),
    "    fib daddr type local notrack accept",
    "  }",
    "  chain reply {",
    "    udp dport @warm fib daddr type local notrack accept",
    // fib first: a datagram merely passing through toward some other host's port in our range is not ours.
    "    fib daddr type local ct zone set udp dport map @zone_port accept",
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
    // Counted "up" in raw prerouting already (the zone rule): the client's side needs no second lookup here.
    "    ct direction original accept",
    ...both((v, ip) => `    counter name ${ip} daddr . udp dport map @down${v} accept`),
    "    drop",
    "  }",
    "}",
  ]
    .filter((l) => l !== "")
    .join("\n");
}
