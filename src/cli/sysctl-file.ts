/**
 * The appliance's sysctl.d file (/etc/sysctl.d/90-pcoip-cmsg.conf): UDP socket buffers always, and
 * `net.ipv4.ip_forward = 1` while the SG may carry media in the kernel (sg.udpFastPath not "off"). The service
 * runs with ProtectKernelTunables and cannot switch forwarding on itself, so `install` writes it here, applies it
 * now through /proc/sys, and systemd-sysctl applies it at every boot. The SG recognises forwarding switched on by
 * this file (src/sg/kernel/fastpath.ts) and then drops everything forwarded that is not an admitted media flow.
 */
import { existsSync, readFileSync } from "node:fs";
import type { Config } from "../config/schema.ts";
import { readSysctl } from "../platform/host.ts";
import type { InstallLayout } from "../platform/paths.ts";
import { type Reporter, writeFileAtomic } from "./report.ts";

export const FORWARDING_LINE = "net.ipv4.ip_forward = 1";

const FORWARDING_COMMENT = [
  "# sg.udpFastPath: the kernel carries admitted PCoIP media (nftables DNAT), which needs IPv4 forwarding. While",
  "# pcoip-cmsg runs it drops every forwarded packet that is not an admitted session's media; pcoip-cmsg configure",
  '# removes this line when the Security Gateway or sg.udpFastPath is turned off ("off").',
];

const FORWARDING_LINE_RE = /^\s*net\.ipv4\.ip_forward\s*=.*$/;

/** Whether the configuration wants IPv4 forwarding for the kernel UDP path. */
export function kernelForwardingWanted(config: Readonly<Config>): boolean {
  return config.enableSecurityGateway && config.sg.udpFastPath !== "off";
}

/**
 * Whether install writes the forwarding line. Not when the host already forwards IPv4 and our file did not
 * switch it on (a router, containers): the SG treats forwarding switched on by our file as its own — it then
 * drops everything else forwarded while it runs, and the unit switches forwarding off at stop — which would cut
 * that host's other traffic. Without the line the kernel path still runs; it just leaves forwarding alone.
 * `hostForwarding`: /proc/sys/net/ipv4/ip_forward now (undefined when unknown, e.g. a staged install).
 */
export function forwardingLineWanted(
  config: Readonly<Config>,
  ourFile: string | undefined,
  hostForwarding: number | undefined,
): { write: boolean; note?: string } {
  if (!kernelForwardingWanted(config)) return { write: false };
  const ours = ourFile?.split("\n").some((l) => FORWARDING_LINE_RE.test(l)) ?? false;
  if (ours || hostForwarding !== 1) return { write: true };
  return {
    write: false,
    note: `IPv4 forwarding is already on on this host, not by pcoip-cmsg: ${FORWARDING_LINE} not written, so the Security Gateway carries media in the kernel without dropping this host's other forwarded traffic and never switches forwarding off`,
  };
}

/** The file install writes: buffers, plus the forwarding line (and why) when `forward`. */
export function sysctlText(rmem: number, wmem: number, forward: boolean): string {
  return withForwarding(
    `# Written by pcoip-cmsg install. Bun's UDP sockets cannot set SO_RCVBUF/SO_SNDBUF, so the Security Gateway's
# UDP 4172 socket gets the kernel default, which holds only milliseconds of PCoIP media for all sessions.
net.core.rmem_default = ${rmem}
net.core.wmem_default = ${wmem}
`,
    forward,
  );
}

/** `text` with our forwarding line (and its comment) present or absent; every other line kept as it was. */
export function withForwarding(text: string, forward: boolean): string {
  const kept = text
    .split("\n")
    .filter((l) => !FORWARDING_LINE_RE.test(l) && !FORWARDING_COMMENT.includes(l))
    .join("\n")
    .replace(/\n*$/, "\n");
  return forward ? `${kept}${FORWARDING_COMMENT.join("\n")}\n${FORWARDING_LINE}\n` : kept;
}

/**
 * Puts the forwarding line into /etc/sysctl.d/90-pcoip-cmsg.conf, or takes it out, to match the configuration.
 * Over a package (its file in /usr/lib/sysctl.d is masked by ours in /etc of the same name) the /etc file starts
 * as a copy of the package's. `removeOnly` (configure): never adds. Throws on a file system error.
 */
export function syncForwardingLine(
  layout: InstallLayout,
  config: Readonly<Config>,
  report: Reporter,
  removeOnly = false,
): void {
  const d = layout.disk;
  const file = layout.host.sysctlFile;
  const current = existsSync(d.sysctlFile) ? readFileSync(d.sysctlFile, "utf8") : undefined;
  const has = current?.split("\n").some((l) => FORWARDING_LINE_RE.test(l)) ?? false;
  const decided = forwardingLineWanted(
    config,
    current,
    layout.staged ? undefined : readSysctl("net.ipv4.ip_forward"),
  );
  const want = decided.write;
  if (decided.note && !removeOnly) report.note(decided.note);
  if (want === has || (want && removeOnly)) return;
  if (!want) {
    writeFileAtomic(d.sysctlFile, withForwarding(current ?? "", false), 0o644);
    report.done(
      `${file}: ${FORWARDING_LINE} removed (${config.enableSecurityGateway ? 'sg.udpFastPath = "off"' : "the Security Gateway is off"}); forwarding stays on until the next boot (sysctl -w net.ipv4.ip_forward=0 if this host forwarded nothing before)`,
    );
    return;
  }
  const fromPackage = existsSync(d.packageSysctlFile) ? readFileSync(d.packageSysctlFile, "utf8") : "";
  const base =
    current ??
    `# Written by pcoip-cmsg install: ${layout.host.packageSysctlFile} (the package's, which this file masks)\n# plus IPv4 forwarding.\n${fromPackage}`;
  writeFileAtomic(d.sysctlFile, withForwarding(base, true), 0o644);
  report.done(
    `${file}: ${FORWARDING_LINE} (sg.udpFastPath: the kernel carries admitted media; nothing else is forwarded while the service runs)`,
  );
}
