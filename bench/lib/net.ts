/**
 * Loopback plumbing for the benchmarks: free ports, waiting until a peer listens (read from /proc/net, so no
 * probe connection or datagram disturbs the peer), and the TLS ClientHello a PCoIP client sends first on TCP 4172.
 */
import { readFileSync } from "node:fs";

export const LOOPBACK = "127.0.0.1";

/** A port free right now on 127.0.0.1 for `proto` (the kernel picks it; a small race with other processes). */
export async function freePort(proto: "tcp" | "udp"): Promise<number> {
  if (proto === "tcp") {
    const l = Bun.listen({ hostname: LOOPBACK, port: 0, socket: { data() {} } });
    const port = l.port;
    l.stop(true);
    return port;
  }
  const s = await Bun.udpSocket({ hostname: LOOPBACK, socket: { data() {}, error() {} } });
  const port = s.port;
  s.close();
  return port;
}

/** True when something listens on TCP `port` (state LISTEN) or has UDP `port` bound, on any local address. */
export function isBound(proto: "tcp" | "udp", port: number): boolean {
  const hex = port.toString(16).toUpperCase().padStart(4, "0");
  for (const file of [`/proc/net/${proto}`, `/proc/net/${proto}6`]) {
    let text = "";
    try {
      text = readFileSync(file, "utf8");
    } catch {
      continue;
    }
    for (const line of text.split("\n").slice(1)) {
      const cols = line.trim().split(/\s+/);
      const local = cols[1];
      if (!local?.endsWith(`:${hex}`)) continue;
      if (proto === "udp" || cols[3] === "0A") return true;
    }
  }
  return false;
}

/** Waits until `port` is bound, failing early when the process exits first. */
export async function waitBound(
  proto: "tcp" | "udp",
  port: number,
  exited: Promise<number>,
  what: string,
  ms = 5000,
): Promise<void> {
  let code: number | undefined;
  void exited.then((c) => {
    code = c;
  });
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (code !== undefined) throw new Error(`${what} exited (${code}) before listening on ${proto} ${port}`);
    if (isBound(proto, port)) return;
    await Bun.sleep(20);
  }
  throw new Error(`${what} did not listen on ${proto} ${port} within ${ms} ms`);
}

const u16 = (n: number) => [(n >> 8) & 0xff, n & 0xff];
const u24 = (n: number) => [(n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff];

/**
 * A TLS 1.3-style ClientHello carrying `sni` in one record (RFC 8446 §4.1.2, RFC 6066 §3), ~200 bytes: what the
 * SG peeks to pick the admission. The bytes after it are never TLS in these benchmarks (the SG passes them on).
 * @example const hello = clientHello("agent-7.bench.test"); socket.write(hello);
 */
export function clientHello(sni: string): Uint8Array {
  const host = [...sni].map((c) => c.charCodeAt(0));
  const serverName = [
    0x00,
    0x00,
    ...u16(5 + host.length),
    ...u16(3 + host.length),
    0x00,
    ...u16(host.length),
    ...host,
  ];
  const supportedVersions = [0x00, 0x2b, ...u16(5), 0x04, 0x03, 0x04, 0x03, 0x03];
  const extensions = [...serverName, ...supportedVersions];
  const body = [
    0x03,
    0x03,
    ...new Array(32).fill(0x11),
    0x20,
    ...new Array(32).fill(0x22),
    ...u16(4),
    0x13,
    0x01,
    0xc0,
    0x2f,
    0x01,
    0x00,
    ...u16(extensions.length),
    ...extensions,
  ];
  const handshake = [0x01, ...u24(body.length), ...body];
  return new Uint8Array([0x16, 0x03, 0x01, ...u16(handshake.length), ...handshake]);
}

export function toHex(bytes: Uint8Array): string {
  return Buffer.from(bytes).toString("hex");
}

/** The kernel's UDP counters (/proc/net/snmp, IPv4 and IPv6 summed): receive-buffer overflows and friends. */
export function udpKernelCounters(): { rcvbufErrors: number; sndbufErrors: number; inErrors: number } {
  const out = { rcvbufErrors: 0, sndbufErrors: 0, inErrors: 0 };
  const take = (names: string[], values: string[], prefix: string) => {
    const at = (n: string) => Number(values[names.indexOf(`${prefix}${n}`)] ?? 0);
    out.rcvbufErrors += at("RcvbufErrors");
    out.sndbufErrors += at("SndbufErrors");
    out.inErrors += at("InErrors");
  };
  try {
    const lines = readFileSync("/proc/net/snmp", "utf8")
      .split("\n")
      .filter((l) => l.startsWith("Udp:"));
    if (lines.length >= 2) take(lines[0]!.split(/\s+/), lines[1]!.split(/\s+/), "");
  } catch {
    // not Linux: no counters
  }
  try {
    for (const line of readFileSync("/proc/net/snmp6", "utf8").split("\n")) {
      const [name, value] = line.trim().split(/\s+/);
      if (name === "Udp6RcvbufErrors") out.rcvbufErrors += Number(value);
      if (name === "Udp6SndbufErrors") out.sndbufErrors += Number(value);
      if (name === "Udp6InErrors") out.inErrors += Number(value);
    }
  } catch {
    // IPv6 disabled
  }
  return out;
}
