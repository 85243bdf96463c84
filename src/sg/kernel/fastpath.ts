/**
 * The kernel UDP data path: the userspace relay binds a flow (admission, first-datagram checks, caps), then this
 * path adds the flow's map elements to our nftables table (ruleset.ts) and the kernel carries every later
 * datagram both ways. Per-session bytes and packets come back from named nft counters, read on the relay's sweep.
 *
 * Life of a carried flow:
 * ```
 * carry(): elements + counters + sp "warm" for 250 ms ─► the kernel carries both ways ─► collect() (each sweep)
 * reply port moves: carry() again (old elements out, new ones in, a fresh zone, warm again)
 * release(): final counters read, elements and counters deleted (forwarding stops at once)
 * ```
 */
import { readFileSync, writeFileSync } from "node:fs";
import { ipFamily } from "../../net/client-address.ts";
import type { Logger } from "../../observability/log.ts";
import { installLayout } from "../../platform/paths.ts";
import type { Flow } from "../flow-table.ts";
import type { PortRange } from "../port-pool.ts";
import type { UdpDataPath } from "../udp-datapath.ts";
import { type Nft, openNft } from "./libnftables.ts";
import { FAMILY, FORWARDING_MARK_CHAIN, ruleset, TABLE } from "./ruleset.ts";

const IPV4_FORWARD = "/proc/sys/net/ipv4/ip_forward";
const IPV6_FORWARD = "/proc/sys/net/ipv6/conf/all/forwarding";

export interface KernelPathOptions {
  readonly listenPorts: readonly number[];
  readonly sourcePorts: PortRange;
  readonly log: Logger;
  /** Traffic the kernel carried for a flow since the last report. */
  readonly onCarried: (flow: Flow, up: Traffic, down: Traffic) => void;
}

export interface Traffic {
  packets: number;
  bytes: number;
}

interface Carried {
  readonly flow: Flow;
  readonly v: 4 | 6;
  readonly sourcePort: number;
  /** The client endpoint the elements are keyed by now (`addr . port` in nft syntax). */
  key: string;
  zone: number;
  seenUp: Traffic;
  seenDown: Traffic;
  /** Warm until the kernel counts a client datagram past `warmFrom` (the NAT binding exists) or WARM_MS pass. */
  warm: boolean;
  warmFrom: number;
  /** Last time the relay's own forwarding of an answer made us look, and how often it did since the binding. */
  checkedAt: number;
  checks: number;
  /** When the flow was last (re-)keyed, and a move waiting for its window (see carry). */
  movedAt: number;
  pendingMove: ReturnType<typeof setTimeout> | undefined;
}

/** A carried flow's client port is re-keyed in the kernel at most this often. */
const MOVE_EVERY_MS = 250;

/** A flow the relay still answers itself is checked on each of its first answers, then at most this often. */
const CHECK_EVERY_MS = 5;
const FIRST_CHECKS = 8;
/** Kernel counters are read at most this often on the relay's sweep. */
const COLLECT_EVERY_MS = 5000;

/**
 * How long after a binding the agent's datagrams to the session port stay untracked (they answer what the relay
 * forwarded itself, and must not leave an entry before the client's next datagram forms the NAT binding; an
 * answer arriving after the binding formed matches it anyway). The set element expires by itself: no polling.
 */
const WARM_MS = 250;

function readFlag(path: string): boolean | undefined {
  try {
    return readFileSync(path, "utf8").trim() === "1";
  } catch {
    return undefined;
  }
}

function nftKey(ip: string, port: number): string {
  return `${ip} . ${port}`;
}

/**
 * Forwarding switched on for this appliance by its own sysctl.d file (`net.ipv4.ip_forward = 1` in
 * 90-pcoip-cmsg.conf): the host did not forward before us, so nothing else may be forwarded now.
 */
function forwardingFromOurSysctlFile(): boolean {
  const l = installLayout("/");
  for (const file of [l.disk.sysctlFile, l.disk.packageSysctlFile]) {
    try {
      if (/^\s*net\.ipv4\.ip_forward\s*=\s*1\s*$/m.test(readFileSync(file, "utf8"))) return true;
    } catch {
      // no such file
    }
  }
  return false;
}

/** The previous instance of us switched forwarding on (its table carries the mark chain): a crash left it on. */
function previousTurnedForwardingOn(nft: Nft): boolean {
  return nft.run(`list chain ${FAMILY} ${TABLE} ${FORWARDING_MARK_CHAIN}`).ok;
}

/**
 * Opens libnftables, makes sure IPv4 forwarding is on (switching it on when it was off, and then dropping
 * everything else forwarded), and creates the table. The reason when it cannot, worded for the operator.
 */
export function openKernelPath(
  o: KernelPathOptions,
): { ok: true; path: UdpDataPath } | { ok: false; reason: string } {
  const opened = openNft();
  if (!opened.ok)
    return {
      ok: false,
      reason: `${opened.error}: install the nftables package (Debian: nftables, libnftables1)`,
    };
  const nft = opened.nft;
  const inherited = previousTurnedForwardingOn(nft);
  const wasOn = readFlag(IPV4_FORWARD);
  // Forwarding is on because of us — switched on now, by a crashed predecessor (its table says so), or by our own
  // sysctl.d file at boot: then everything else forwarded is dropped. Switched back off at stop when this process
  // or its predecessor switched it on (never when the sysctl.d file did).
  let switchBackOff = wasOn === true && inherited;
  if (wasOn === false) {
    try {
      writeFileSync(IPV4_FORWARD, "1");
      switchBackOff = true;
    } catch (e) {
      nft.close();
      return {
        ok: false,
        reason: `net.ipv4.ip_forward is 0 and this process cannot set it (${(e as Error).message}): run pcoip-cmsg install again (it adds net.ipv4.ip_forward = 1 to /etc/sysctl.d/90-pcoip-cmsg.conf and applies it), or set sg.udpFastPath = "off"`,
      };
    }
  }
  const weEnabled = switchBackOff || (wasOn === true && forwardingFromOurSysctlFile());
  // A leftover table (a crash) goes in its own transaction first: with its NAT hooks gone the kernel drops the
  // conntrack entries it had NATed, so no old binding collides with (or outlives) the new table.
  nft.run(`table ${FAMILY} ${TABLE}\ndelete table ${FAMILY} ${TABLE}`);
  const flushed = flushStaleBindings(o.listenPorts);
  const created = nft.run(
    ruleset({
      listenPorts: o.listenPorts,
      sourcePorts: o.sourcePorts,
      dropOtherForwarding: weEnabled,
      markSwitchedOn: switchBackOff,
    }),
  );
  if (!created.ok) {
    if (wasOn === false) writeFlag(IPV4_FORWARD, "0");
    nft.close();
    return {
      ok: false,
      reason: `creating nftables table ${FAMILY} ${TABLE} failed (${created.error.split("\n")[0]}): the process needs CAP_NET_ADMIN (the unit grants it)`,
    };
  }
  const v6Forwarding = readFlag(IPV6_FORWARD) === true;
  o.log.info(
    {
      table: `${FAMILY} ${TABLE}`,
      ipv4Forwarding: weEnabled
        ? "switched on by pcoip-cmsg; only admitted media is forwarded"
        : "on already",
      ipv6: v6Forwarding ? "kernel path" : "userspace (net.ipv6.conf.all.forwarding is 0)",
      staleBindings: flushed,
    },
    "sg udp fast path: the kernel carries admitted media (nftables)",
  );
  return { ok: true, path: kernelPath(nft, o, { switchBackOff, v6Forwarding }) };
}

/**
 * Deleting the table does not delete the conntrack entries it NATed: after a crash, a client still sending keeps
 * its old binding alive and a new session's binding on the same source port would collide with it. Every UDP
 * entry toward our listener ports is ours (the SG owns them on this host), so they go, once per start, through
 * the `conntrack` tool (Debian: conntrack). Without it, zones start at a random point, which makes a collision
 * unlikely, and the entries die within the UDP conntrack timeout (120 s of silence).
 */
export function flushStaleBindings(listenPorts: readonly number[]): string {
  const done: string[] = [];
  for (const port of new Set(listenPorts)) {
    try {
      const r = Bun.spawnSync(["conntrack", "-D", "-p", "udp", "--orig-port-dst", String(port)], {
        stdout: "ignore",
        stderr: "pipe",
      });
      // conntrack exits 1 when nothing matched; its summary line goes to stderr.
      done.push(r.stderr.toString().trim().split("\n").pop() ?? "");
    } catch {
      return "conntrack tool not installed: bindings left by a crash expire within 120 s of silence";
    }
  }
  return done.join("; ");
}

function writeFlag(path: string, value: "0" | "1"): void {
  try {
    writeFileSync(path, value);
  } catch {
    // best effort on the way out
  }
}

/** Conntrack zones for bindings (1…65535), round robin, none twice at once. */
class ZoneAllocator {
  private readonly inUse = new Set<number>();
  // A random start: bindings a crash left in conntrack (flushStaleBindings) are unlikely to share a zone.
  private next = 1 + Math.floor(Math.random() * 65534);

  /** A free zone, or 0 when all 65,535 are taken. */
  take(): number {
    for (let i = 0; i < 65535; i++) {
      const z = this.next;
      this.next = this.next >= 65535 ? 1 : this.next + 1;
      if (!this.inUse.has(z)) {
        this.inUse.add(z);
        return z;
      }
    }
    return 0;
  }

  release(zone: number): void {
    this.inUse.delete(zone);
  }
}

function elementDeletes(c: Carried): string[] {
  const t = `${FAMILY} ${TABLE}`;
  return [
    ...["dnat", "snat", "zone", "up", "down"].map((m) => `delete element ${t} ${m}${c.v} { ${c.key} }`),
    `delete element ${t} zone_port { ${c.sourcePort} }`,
  ];
}

function elementAdds(c: Carried, flow: Flow): string[] {
  const t = `${FAMILY} ${TABLE}`;
  const a = flow.session.admission;
  return [
    `add element ${t} dnat${c.v} { ${c.key} : ${a.agentHost} . ${a.agentUdpPort} }`,
    `add element ${t} snat${c.v} { ${c.key} : ${c.sourcePort} }`,
    `add element ${t} zone${c.v} { ${c.key} : ${c.zone} }`,
    `add element ${t} up${c.v} { ${c.key} : "u${c.sourcePort}" }`,
    `add element ${t} down${c.v} { ${c.key} : "d${c.sourcePort}" }`,
    `add element ${t} zone_port { ${c.sourcePort} : ${c.zone} }`,
    `add element ${t} warm { ${c.sourcePort} timeout ${WARM_MS}ms }`,
  ];
}

/** Counters by name (all of the table's when `names` is empty), from nft's JSON output. */
function readCounters(nft: Nft, names: string[]): Map<string, Traffic> {
  const out = new Map<string, Traffic>();
  const r = nft.run(
    names.length > 0
      ? names.map((n) => `list counter ${FAMILY} ${TABLE} ${n}`).join("\n")
      : `list counters table ${FAMILY} ${TABLE}`,
  );
  if (!r.ok) return out;
  // One JSON document per command, one per line.
  for (const line of r.output.split("\n")) {
    if (!line.trim()) continue;
    try {
      const doc = JSON.parse(line) as {
        nftables?: { counter?: { name: string; packets: number; bytes: number } }[];
      };
      for (const item of doc.nftables ?? [])
        if (item.counter)
          out.set(item.counter.name, { packets: item.counter.packets, bytes: item.counter.bytes });
    } catch {
      // a malformed document: those counters are read again on the next sweep
    }
  }
  return out;
}

/** The kernel data path over one nftables handle: the flows it carries, their zones and counters. */
function kernelPath(
  nft: Nft,
  o: KernelPathOptions,
  state: { switchBackOff: boolean; v6Forwarding: boolean },
): UdpDataPath {
  const bySourcePort = new Map<number, Carried>();
  const byFlow = new Map<Flow, Carried>();
  const zones = new ZoneAllocator();
  let lastCollect = 0;
  let stopped = false;
  let failuresLogged = 0;

  function runOrLog(commands: string[], what: string, flow: Flow): boolean {
    const r = nft.run(commands.join("\n"));
    if (r.ok) return true;
    if (failuresLogged++ < 5)
      flow.session.log.warn(
        { cause: r.error.split("\n")[0] },
        `sg udp fast path: ${what} failed; the userspace relay carries this flow`,
      );
    return false;
  }

  function report(c: Carried, counters: Map<string, Traffic>): void {
    const up = counters.get(`u${c.sourcePort}`);
    const down = counters.get(`d${c.sourcePort}`);
    if (!up || !down) return;
    const dUp = { packets: up.packets - c.seenUp.packets, bytes: up.bytes - c.seenUp.bytes };
    const dDown = { packets: down.packets - c.seenDown.packets, bytes: down.bytes - c.seenDown.bytes };
    c.seenUp = up;
    c.seenDown = down;
    if (dUp.packets > 0 || dDown.packets > 0) o.onCarried(c.flow, dUp, dDown);
  }

  /**
   * Programs (or re-keys) a flow. A flow's client port moves at most once per MOVE_EVERY_MS in the kernel: a
   * spoofer alternating with the real client would otherwise buy an nft batch per datagram; a move asked for
   * sooner is applied when the window ends, to the port heard last by then.
   */
  function carry(flow: Flow): void {
    const a = flow.session.admission;
    const v = ipFamily(flow.clientIp);
    if (v === 0 || v !== ipFamily(a.agentHost) || (v === 6 && !state.v6Forwarding)) return;
    const key = nftKey(flow.clientIp, flow.replyPort);
    const existing = byFlow.get(flow);
    if (existing && existing.key === key) return;
    const now = performance.now();
    if (existing && now - existing.movedAt < MOVE_EVERY_MS) {
      existing.pendingMove ??= setTimeout(
        () => {
          existing.pendingMove = undefined;
          if (byFlow.get(flow) === existing) carry(flow);
        },
        MOVE_EVERY_MS - (now - existing.movedAt),
      );
      return;
    }
    const t = `${FAMILY} ${TABLE}`;
    const zone = zones.take();
    if (zone === 0) return;
    const sp = flow.session.sourcePort;
    const c: Carried = existing
      ? { ...existing }
      : {
          flow,
          v,
          sourcePort: sp,
          key,
          zone,
          seenUp: { packets: 0, bytes: 0 },
          seenDown: { packets: 0, bytes: 0 },
          warm: true,
          warmFrom: 0,
          checkedAt: 0,
          checks: 0,
          movedAt: now,
          pendingMove: undefined,
        };
    const cmds = existing ? elementDeletes(existing) : [`add counter ${t} u${sp}`, `add counter ${t} d${sp}`];
    Object.assign(c, { key, zone, warm: true, warmFrom: c.seenUp.packets, checks: 0, movedAt: now });
    cmds.push(...elementAdds(c, flow));
    if (!runOrLog(cmds, "programming the flow", flow)) {
      zones.release(zone);
      if (existing) {
        // The batch is atomic: the old binding is still in the kernel. It goes, and the relay carries the flow.
        nft.run(
          [...elementDeletes(existing), `delete counter ${t} u${sp}`, `delete counter ${t} d${sp}`].join(
            "\n",
          ),
        );
        zones.release(existing.zone);
        byFlow.delete(flow);
        bySourcePort.delete(existing.sourcePort);
      }
      return;
    }
    if (existing) zones.release(existing.zone);
    byFlow.set(flow, c);
    bySourcePort.set(c.sourcePort, c);
  }

  return {
    kind: "kernel",
    get carriedFlows() {
      return byFlow.size;
    },
    carry,
    sawReply(flow) {
      // The relay forwarded an agent datagram itself: once the kernel has counted a client datagram through the
      // binding, the answers can match it, and the port need not stay untracked for the rest of WARM_MS.
      const c = byFlow.get(flow);
      if (!c?.warm) return;
      const t = performance.now();
      if (++c.checks > FIRST_CHECKS && t - c.checkedAt < CHECK_EVERY_MS) return;
      c.checkedAt = t;
      report(c, readCounters(nft, [`u${c.sourcePort}`, `d${c.sourcePort}`]));
      if (c.seenUp.packets > c.warmFrom) {
        c.warm = false;
        nft.run(`delete element ${FAMILY} ${TABLE} warm { ${c.sourcePort} }`);
      }
    },
    release(flow) {
      const c = byFlow.get(flow);
      if (!c) return;
      clearTimeout(c.pendingMove);
      if (stopped) {
        // The table is gone with everything in it; the last counts were read by stop().
        byFlow.delete(flow);
        return;
      }
      byFlow.delete(flow);
      bySourcePort.delete(c.sourcePort);
      zones.release(c.zone);
      // The last bytes first: the flow's teardown line and the journal carry them.
      report(c, readCounters(nft, [`u${c.sourcePort}`, `d${c.sourcePort}`]));
      const t = `${FAMILY} ${TABLE}`;
      runOrLog(
        [
          ...elementDeletes(c),
          `delete counter ${t} u${c.sourcePort}`,
          `delete counter ${t} d${c.sourcePort}`,
        ],
        "removing the flow",
        flow,
      );
    },
    collect(force = false) {
      if (byFlow.size === 0 || stopped) return;
      // Listing every counter costs ≈ 0.06 ms per flow (57 ms at 500 flows here): bytes for /metrics and idle
      // expiry (120 s) need no finer grain; a flow's last bytes are read when it ends.
      const t = performance.now();
      if (!force && t - lastCollect < COLLECT_EVERY_MS) return;
      lastCollect = t;
      const counters = readCounters(nft, []);
      for (const c of byFlow.values()) report(c, counters);
    },
    async stop() {
      if (stopped) return;
      for (const c of byFlow.values()) clearTimeout(c.pendingMove);
      // One reading of every counter, then the table goes in one command: at 500 flows, reading and deleting
      // each flow's elements at its own release took seconds (and a SIGKILL on the way out left bindings behind).
      if (byFlow.size > 0) {
        const all = readCounters(nft, []);
        for (const c of byFlow.values()) report(c, all);
      }
      stopped = true;
      nft.run(`delete table ${FAMILY} ${TABLE}`);
      // The bindings outlive the table: left alone they would keep reversing the agents' answers to old clients.
      flushStaleBindings(o.listenPorts);
      if (state.switchBackOff) writeFlag(IPV4_FORWARD, "0");
      nft.close();
    },
  };
}

/**
 * Removes our table (and switches forwarding off when the table says we switched it on): the unit's
 * ExecStopPost, so a crash leaves nothing behind. True when there was something to remove.
 */
export function cleanupKernelPath(listenPorts: readonly number[]): { removed: boolean; error?: string } {
  // Forwarding our sysctl.d file switched on (the unit's privileged ExecStartPre applies it) goes off with the
  // service, table or not (a clean stop already removed the table): a stopped appliance forwards nothing, and the
  // forward chain that dropped everything else is gone with it.
  const forwardingByOurFile = forwardingFromOurSysctlFile();
  const opened = openNft();
  if (!opened.ok) {
    if (forwardingByOurFile) writeFlag(IPV4_FORWARD, "0");
    return { removed: false, error: opened.error };
  }
  const nft = opened.nft;
  try {
    if (!nft.run(`list table ${FAMILY} ${TABLE}`).ok) {
      if (forwardingByOurFile) writeFlag(IPV4_FORWARD, "0");
      return { removed: false };
    }
    const forwardingWasOurs = previousTurnedForwardingOn(nft) || forwardingByOurFile;
    const r = nft.run(`delete table ${FAMILY} ${TABLE}`);
    if (!r.ok) return { removed: false, error: r.error };
    flushStaleBindings(listenPorts);
    if (forwardingWasOurs) writeFlag(IPV4_FORWARD, "0");
    return { removed: true };
  } finally {
    nft.close();
  }
}
