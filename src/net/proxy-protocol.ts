/**
 * The PROXY protocol (HAProxy, versions 1 and 2: https://www.haproxy.org/download/2.6/doc/proxy-protocol.txt),
 * as a receiver. An L4 load balancer that passes TLS through puts one header in front of the client's bytes; it
 * names the client's address, which the socket peer (the balancer) no longer is. Pure: bytes in, a verdict out.
 *
 * Only peers listed in `proxyProtocolFrom` may send a header, and they must (the http1 front door enforces
 * both); this module only reads one. Version 2 TLVs are skipped; a `LOCAL` command (v2, e.g. the balancer's own
 * health checks) or `UNKNOWN` (v1) means "use the real connection's address".
 *
 * @example
 * const r = parseProxyHeader(Buffer.from("PROXY TCP4 198.51.100.7 203.0.113.1 51000 443\r\n"));
 * // { kind: "header", consumed: 46, source: { address: "198.51.100.7", port: 51000 } }
 */
import { isIP } from "node:net";
import { canonicalIp } from "./client-address.ts";

export interface ProxiedAddress {
  readonly address: string;
  readonly port: number;
}

export type ProxyHeaderResult =
  /** More bytes are needed to decide (the buffer is a valid prefix of a header). */
  | { readonly kind: "need" }
  /**
   * A whole header of `consumed` bytes. `source` is the client's address; absent for v2 LOCAL, v2 UNSPEC and
   * v1 UNKNOWN (the connection is the balancer's own, e.g. a health check).
   */
  | { readonly kind: "header"; readonly consumed: number; readonly source?: ProxiedAddress }
  | { readonly kind: "refused"; readonly reason: string };

/** v1 headers are at most 107 bytes, CRLF included (the spec's bound). */
export const MAX_V1_BYTES = 107;
/**
 * v2 headers above this are refused. The spec allows 16 + 65,535; what balancers send (addresses plus a few TLVs
 * such as the authority or a unique id) is far smaller, and a bound keeps a buggy peer from holding memory.
 */
export const MAX_V2_BYTES = 16 + 2048;

const V1_PREFIX = Buffer.from("PROXY ", "latin1");
const V2_SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);

const NEED: ProxyHeaderResult = { kind: "need" };

/** Reads the PROXY header at the start of `buf` (v1 or v2, told apart by the first byte). */
export function parseProxyHeader(buf: Uint8Array): ProxyHeaderResult {
  if (buf.length === 0) return NEED;
  if (buf[0] === V1_PREFIX[0]) return parseV1(buf);
  if (buf[0] === V2_SIGNATURE[0]) return parseV2(buf);
  return refused("the connection did not start with a PROXY protocol header");
}

/**
 * Whether `buf` starts like a PROXY header (true), certainly does not (false), or is too short to tell ("need").
 * Used on connections from peers that may not send one: their header is refused, never believed.
 */
export function looksLikeProxyHeader(buf: Uint8Array): boolean | "need" {
  if (buf.length === 0) return "need";
  const sig = buf[0] === V1_PREFIX[0] ? V1_PREFIX : buf[0] === V2_SIGNATURE[0] ? V2_SIGNATURE : undefined;
  if (!sig) return false;
  const n = Math.min(buf.length, sig.length);
  for (let i = 0; i < n; i++) if (buf[i] !== sig[i]) return false;
  return n === sig.length ? true : "need";
}

function refused(reason: string): ProxyHeaderResult {
  return { kind: "refused", reason };
}

function parseV1(buf: Uint8Array): ProxyHeaderResult {
  const n = Math.min(buf.length, MAX_V1_BYTES);
  // Every byte before CRLF must be printable ASCII; find the CR that ends the line.
  let cr = -1;
  for (let i = 0; i < n; i++) {
    const b = buf[i]!;
    if (i < V1_PREFIX.length) {
      if (b !== V1_PREFIX[i]) return refused("a PROXY v1 header must start with 'PROXY '");
      continue;
    }
    if (b === 0x0d) {
      cr = i;
      break;
    }
    if (b < 0x20 || b > 0x7e) return refused("a PROXY v1 header holds a byte that is not printable ASCII");
  }
  if (cr < 0) return buf.length >= MAX_V1_BYTES ? refused("a PROXY v1 header longer than 107 bytes") : NEED;
  if (cr + 1 >= buf.length) return NEED;
  if (buf[cr + 1] !== 0x0a) return refused("a PROXY v1 header must end with CRLF");
  const consumed = cr + 2;
  const line = Buffer.from(buf.buffer, buf.byteOffset + V1_PREFIX.length, cr - V1_PREFIX.length).toString(
    "latin1",
  );
  const fields = line.split(" ");
  const proto = fields[0];
  if (proto === "UNKNOWN") return { kind: "header", consumed };
  if (proto !== "TCP4" && proto !== "TCP6")
    return refused(`a PROXY v1 header names protocol "${proto}" (TCP4, TCP6 or UNKNOWN)`);
  if (fields.length !== 5) return refused("a PROXY v1 header needs source, destination and both ports");
  const family = proto === "TCP4" ? 4 : 6;
  const [, src, dst, sport, dport] = fields as [string, string, string, string, string];
  if (!isV1Address(src, family) || !isV1Address(dst, family))
    return refused(`a PROXY v1 ${proto} header holds an address that is not IPv${family}`);
  const sp = v1Port(sport);
  if (sp === undefined || v1Port(dport) === undefined)
    return refused("a PROXY v1 header holds a port that is not 0..65535 (no leading zeros)");
  return { kind: "header", consumed, source: { address: canonicalIp(src), port: sp } };
}

function isV1Address(s: string, family: 4 | 6): boolean {
  // isIP accepts zone ids ("fe80::1%eth0") that no balancer sends; a header is no place for them.
  return s.length > 0 && !s.includes("%") && isIP(s) === family;
}

function v1Port(s: string): number | undefined {
  if (!/^(?:0|[1-9]\d{0,4})$/.test(s)) return undefined;
  const p = Number(s);
  return p <= 65535 ? p : undefined;
}

function parseV2(buf: Uint8Array): ProxyHeaderResult {
  const sig = Math.min(buf.length, V2_SIGNATURE.length);
  for (let i = 0; i < sig; i++)
    if (buf[i] !== V2_SIGNATURE[i]) return refused("a PROXY v2 header with a wrong signature");
  if (buf.length < 16) return NEED;
  const verCmd = buf[12]!;
  if (verCmd >> 4 !== 2) return refused(`a PROXY v2 header with version ${verCmd >> 4} (2 expected)`);
  const command = verCmd & 0x0f;
  if (command > 1) return refused(`a PROXY v2 header with command ${command} (LOCAL or PROXY expected)`);
  const famProto = buf[13]!;
  const length = (buf[14]! << 8) | buf[15]!;
  const consumed = 16 + length;
  if (consumed > MAX_V2_BYTES)
    return refused(`a PROXY v2 header of ${consumed} bytes (at most ${MAX_V2_BYTES} accepted)`);
  if (buf.length < consumed) return NEED;
  // LOCAL: the balancer's own connection (health checks); the addresses, if any, are to be ignored.
  if (command === 0) return { kind: "header", consumed };
  const family = famProto >> 4;
  const transport = famProto & 0x0f;
  if (family === 0) return { kind: "header", consumed }; // UNSPEC: use the real connection's address
  if (transport !== 1)
    return refused("a PROXY v2 header for a datagram or unknown transport (STREAM expected)");
  if (family === 1) {
    if (length < 12) return refused("a PROXY v2 TCP4 header too short for its addresses");
    const a = buf.subarray(16, 20);
    const address = `${a[0]}.${a[1]}.${a[2]}.${a[3]}`;
    return { kind: "header", consumed, source: { address, port: (buf[24]! << 8) | buf[25]! } };
  }
  if (family === 2) {
    if (length < 36) return refused("a PROXY v2 TCP6 header too short for its addresses");
    return {
      kind: "header",
      consumed,
      source: { address: canonicalIp(ipv6Text(buf, 16)), port: (buf[48]! << 8) | buf[49]! },
    };
  }
  return refused(`a PROXY v2 header for address family ${family} (TCP over IPv4 or IPv6 expected)`);
}

/** 16 bytes at `at` as an IPv6 literal (uncompressed; canonicalIp compresses it and unmaps ::ffff:). */
function ipv6Text(buf: Uint8Array, at: number): string {
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(((buf[at + i]! << 8) | buf[at + i + 1]!).toString(16));
  return groups.join(":");
}

/** A v1 header for `source` → `destination` (tests, the bench and the fake balancer build them). */
export function buildProxyV1(source: ProxiedAddress, destination: ProxiedAddress): Buffer {
  const fam = isIP(source.address) === 6 ? "TCP6" : "TCP4";
  return Buffer.from(
    `PROXY ${fam} ${source.address} ${destination.address} ${source.port} ${destination.port}\r\n`,
    "latin1",
  );
}

/** A v2 header: PROXY over TCP for `source` → `destination`, or LOCAL when both are absent; `tlvs` appended. */
export function buildProxyV2(
  source?: ProxiedAddress,
  destination?: ProxiedAddress,
  tlvs: Uint8Array = new Uint8Array(0),
): Buffer {
  if (!source || !destination) {
    const head = Buffer.alloc(16 + tlvs.length);
    V2_SIGNATURE.copy(head, 0);
    head[12] = 0x20;
    head[13] = 0x00;
    head.writeUInt16BE(tlvs.length, 14);
    head.set(tlvs, 16);
    return head;
  }
  const v6 = isIP(source.address) === 6;
  const addrLen = v6 ? 36 : 12;
  const out = Buffer.alloc(16 + addrLen + tlvs.length);
  V2_SIGNATURE.copy(out, 0);
  out[12] = 0x21;
  out[13] = v6 ? 0x21 : 0x11;
  out.writeUInt16BE(addrLen + tlvs.length, 14);
  const ipBytes = (ip: string): number[] => (v6 ? ipv6Bytes(ip) : ip.split(".").map(Number));
  out.set(ipBytes(source.address), 16);
  out.set(ipBytes(destination.address), v6 ? 32 : 20);
  out.writeUInt16BE(source.port, v6 ? 48 : 24);
  out.writeUInt16BE(destination.port, v6 ? 50 : 26);
  out.set(tlvs, 16 + addrLen);
  return out;
}

function ipv6Bytes(ip: string): number[] {
  const [head, tail] = ip.split("::") as [string, string | undefined];
  const h = head ? head.split(":") : [];
  const t = tail ? tail.split(":") : [];
  const groups = [...h, ...new Array(8 - h.length - t.length).fill("0"), ...t].map((g) =>
    Number.parseInt(g, 16),
  );
  return groups.flatMap((g) => [g >> 8, g & 255]);
}
