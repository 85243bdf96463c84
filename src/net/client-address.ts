/**
 * The one client-address model for every plane (SPEC §2): a socket peer becomes the canonical client IP
 * (`::ffff:a.b.c.d` → `a.b.c.d`, IPv6 lower-cased and compressed by the URL parser); when the peer is a trusted
 * proxy, the right-most untrusted `X-Forwarded-For` hop is used instead. That one value feeds throttling, audit,
 * the agent's `client-ip`, SG admission and the choice of `externalPcoipIp` family.
 */
import { isIP } from "node:net";

export type AddressFamily = 4 | 6;

/** A compiled list of trusted proxies (IPs and CIDRs). Built once at config time; a bad entry throws then. */
export interface TrustedProxies {
  has(ip: string): boolean;
  readonly size: number;
}

interface Cidr {
  family: AddressFamily;
  bits: bigint;
  mask: bigint;
}

/** `::ffff:10.0.0.1` → `10.0.0.1`; `[::1]` → `::1`; `FE80::1` → `fe80::1`; anything unparsable → itself. */
export function canonicalIp(raw: string): string {
  let ip = raw.trim();
  if (ip.startsWith("[") && ip.endsWith("]")) ip = ip.slice(1, -1);
  const zone = ip.indexOf("%");
  if (zone >= 0) ip = ip.slice(0, zone);
  if (isIP(ip) === 6) {
    const lower = ip.toLowerCase();
    const mapped = /^(?:0{0,4}:){0,4}:?(?:0{0,4}:)?ffff:(\d+\.\d+\.\d+\.\d+)$/.exec(lower);
    if (mapped && isIP(mapped[1]!) === 4) return mapped[1]!;
    const hexMapped = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/.exec(lower);
    if (hexMapped) {
      const hi = Number.parseInt(hexMapped[1]!, 16);
      const lo = Number.parseInt(hexMapped[2]!, 16);
      return `${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`;
    }
    return compressIpv6(lower);
  }
  return ip;
}

/** 4 or 6 for a literal address (after canonicalisation), 0 for anything else. */
export function ipFamily(ip: string): AddressFamily | 0 {
  const f = isIP(canonicalIp(ip));
  return f === 4 || f === 6 ? f : 0;
}

/**
 * Compiles trusted proxy entries ("10.0.0.5", "10.0.0.0/8", "fd00::/8").
 * @throws TypeError naming the entry when one is not an IP or CIDR (a config bug, caught by config check).
 */
export function compileTrustedProxies(entries: readonly string[]): TrustedProxies {
  const cidrs: Cidr[] = entries.map(parseCidr);
  return {
    size: cidrs.length,
    has(ip: string) {
      if (cidrs.length === 0) return false;
      const c = canonicalIp(ip);
      const fam = isIP(c);
      if (fam !== 4 && fam !== 6) return false;
      const value = ipToBigInt(c, fam);
      return cidrs.some((r) => r.family === fam && (value & r.mask) === r.bits);
    },
  };
}

/**
 * The canonical client IP of a request. `peer` is the socket's remote address; `forwardedFor` the raw
 * X-Forwarded-For header (possibly several, comma-joined). Only a trusted peer's header is believed, and then
 * the right-most hop that is not itself a trusted proxy (hops to its left could be forged by the client).
 */
export function clientAddress(
  peer: string,
  forwardedFor: string | null | undefined,
  trusted: TrustedProxies,
): string {
  const peerIp = canonicalIp(peer);
  if (!forwardedFor || trusted.size === 0 || !trusted.has(peerIp)) return peerIp;
  const hops = forwardedFor
    .split(",")
    .map((h) => canonicalIp(stripPort(h.trim())))
    .filter((h) => h.length > 0);
  for (let i = hops.length - 1; i >= 0; i--) {
    const hop = hops[i]!;
    if (isIP(hop) === 0) return peerIp; // a garbage hop: believe nothing further left than the proxy itself
    if (!trusted.has(hop)) return hop;
  }
  return hops[0] ?? peerIp;
}

function stripPort(hop: string): string {
  // "[2001:db8::1]:1234" and "192.0.2.1:1234" carry ports in some proxies' headers.
  const bracket = /^\[([^\]]+)\](?::\d+)?$/.exec(hop);
  if (bracket) return bracket[1]!;
  const v4port = /^(\d+\.\d+\.\d+\.\d+):\d+$/.exec(hop);
  return v4port ? v4port[1]! : hop;
}

function parseCidr(entry: string): Cidr {
  const [addrRaw, prefixRaw] = entry.trim().split("/");
  const addr = canonicalIp(addrRaw ?? "");
  const fam = isIP(addr);
  if (fam !== 4 && fam !== 6) {
    throw new TypeError(
      `trusted proxy "${entry}": not an IP address or CIDR (expected e.g. 10.0.0.5 or 10.0.0.0/8)`,
    );
  }
  const width = fam === 4 ? 32 : 128;
  const prefix = prefixRaw === undefined ? width : Number(prefixRaw);
  if (!Number.isInteger(prefix) || prefix < 0 || prefix > width) {
    throw new TypeError(`trusted proxy "${entry}": prefix must be 0..${width}`);
  }
  const all = (1n << BigInt(width)) - 1n;
  const mask = prefix === 0 ? 0n : (all << BigInt(width - prefix)) & all;
  return { family: fam, bits: ipToBigInt(addr, fam) & mask, mask };
}

function ipToBigInt(ip: string, fam: 4 | 6): bigint {
  if (fam === 4) {
    return ip.split(".").reduce((acc, o) => (acc << 8n) | BigInt(Number(o)), 0n);
  }
  const groups = expandIpv6(ip);
  return groups.reduce((acc, g) => (acc << 16n) | BigInt(g), 0n);
}

function expandIpv6(ip: string): number[] {
  let s = ip;
  let tail: number[] = [];
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(s);
  if (v4) {
    const o = v4[1]!.split(".").map(Number);
    tail = [(o[0]! << 8) | o[1]!, (o[2]! << 8) | o[3]!];
    s = s.slice(0, -v4[1]!.length);
    if (s.endsWith(":") && !s.endsWith("::")) s = s.slice(0, -1);
  }
  const [head, rest] = s.split("::");
  const h = head
    ? head
        .split(":")
        .filter(Boolean)
        .map((g) => Number.parseInt(g, 16))
    : [];
  const r =
    rest !== undefined
      ? rest
        ? rest
            .split(":")
            .filter(Boolean)
            .map((g) => Number.parseInt(g, 16))
        : []
      : [];
  const fill = 8 - h.length - r.length - tail.length;
  return [...h, ...(s.includes("::") ? new Array(Math.max(0, fill)).fill(0) : []), ...r, ...tail];
}

function compressIpv6(ip: string): string {
  if (ip.includes(".")) return ip; // embedded IPv4 forms other than ::ffff: are left as written
  const groups = expandIpv6(ip);
  if (groups.length !== 8) return ip;
  let bestStart = -1;
  let bestLen = 0;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen && j - i > 1) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (bestStart < 0) return hex.join(":");
  return `${hex.slice(0, bestStart).join(":")}::${hex.slice(bestStart + bestLen).join(":")}`;
}
