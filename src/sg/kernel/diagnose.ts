/**
 * What `pcoip-cmsg diagnose` says about the kernel UDP path (sg.udpFastPath): whether it can run on this host
 * (libnftables, IPv4 forwarding) and, with firewalld, the lines that let its forward filtering pass our media.
 * Which path the running process uses is in /readyz ("sg-udp-path") and `pcoip-cmsg status`.
 */
import { readFileSync } from "node:fs";
import type { Config } from "../../config/schema.ts";
import { openNft } from "./libnftables.ts";

export interface FastPathCheck {
  readonly verdict: "PASS" | "WARN" | "INFO";
  readonly name: string;
  readonly detail: string;
  readonly fix?: string;
}

/**
 * The firewalld commands that let forwarded media through: a policy from any zone to any zone (forwarded traffic
 * only; HOST is not ANY) accepting UDP to the agents' port, IPv4 and IPv6. Replies pass as established. Safe to
 * run again: the policy is created only when missing.
 */
export function firewalldLines(agentUdpPort = 4172): string[] {
  return [
    "{ firewall-cmd --permanent --info-policy pcoip-media >/dev/null 2>&1 || firewall-cmd --permanent --new-policy pcoip-media; }",
    "firewall-cmd --permanent --policy pcoip-media --add-ingress-zone ANY",
    "firewall-cmd --permanent --policy pcoip-media --add-egress-zone ANY",
    `firewall-cmd --permanent --policy pcoip-media --add-port ${agentUdpPort}/udp`,
    "firewall-cmd --reload",
  ];
}

export function fastPathChecks(config: Readonly<Config>, firewalldRunning: boolean): FastPathCheck[] {
  const mode = config.sg.udpFastPath;
  if (!config.enableSecurityGateway) return [];
  if (mode === "off")
    return [
      {
        verdict: "INFO",
        name: "udp fast path",
        detail: "sg.udpFastPath = off: the userspace relay carries media",
      },
    ];
  const out: FastPathCheck[] = [];
  const verdict = mode === "on" ? "WARN" : "INFO";
  const nft = openNft();
  if (nft.ok) nft.nft.close();
  let forwarding = "unknown";
  try {
    forwarding = readFileSync("/proc/sys/net/ipv4/ip_forward", "utf8").trim();
  } catch {
    // not Linux: reported as unknown
  }
  if (!nft.ok)
    out.push({
      verdict,
      name: "udp fast path",
      detail: `${nft.error}; the userspace relay carries media`,
      fix: 'install nftables (Debian: apt-get install nftables; RHEL: dnf install nftables), or set sg.udpFastPath = "off"',
    });
  else if (forwarding !== "1")
    out.push({
      verdict,
      name: "udp fast path",
      detail: `net.ipv4.ip_forward = ${forwarding}: the service cannot switch it on (ProtectKernelTunables), so media stays in user space`,
      fix: 'run pcoip-cmsg install again (it adds net.ipv4.ip_forward = 1 to /etc/sysctl.d/90-pcoip-cmsg.conf and applies it), or add that line by hand and run pcoip-cmsg sysctl (the SG then forwards nothing but admitted media), or set sg.udpFastPath = "off"',
    });
  else
    out.push({
      verdict: "PASS",
      name: "udp fast path",
      detail: `libnftables present, IPv4 forwarding on: admitted media goes through the kernel (sg.udpFastPath = ${mode})`,
    });
  if (firewalldRunning)
    out.push({
      verdict: "INFO",
      name: "udp fast path firewalld",
      detail:
        "firewalld filters forwarded packets too: media the kernel carries must pass its forward policy",
      fix: firewalldLines().join(" && "),
    });
  return out;
}
