/**
 * `pcoip-cmsg fastpath-cleanup [--config FILE]`: removes the kernel UDP path's nftables table (`inet pcoip_cmsg`)
 * and the conntrack bindings it made, and switches IPv4 forwarding back off when the table says this appliance
 * switched it on. The unit's ExecStopPost runs it, so a crash (kill -9, OOM) leaves no forwarding behind; the
 * appliance itself does the same at a clean stop and at start.
 */
import { loadConfig } from "../config/load.ts";
import { effectiveListeners, parseListen } from "../config/schema.ts";
import { cleanupKernelPath } from "../sg/kernel/fastpath.ts";
import { PRODUCT_NAME } from "../version.ts";
import { type FlagSpec, flagString, formatFlags, parseCommandArgs } from "./args.ts";
import type { CommandMain } from "./io.ts";

const FLAGS: FlagSpec[] = [
  {
    name: "config",
    kind: "string",
    value: "FILE",
    help: "configuration file (for sg.udpListen ports; default /etc/pcoip-cmsg/pcoip-cmsg.toml)",
  },
  { name: "help", kind: "boolean", help: "this text" },
];

const HELP = `Usage: ${PRODUCT_NAME} fastpath-cleanup [--config FILE]

Removes the nftables table of the kernel UDP path (inet pcoip_cmsg) and the conntrack bindings toward the
sg.udpListen ports, as the unit's ExecStopPost: nothing is forwarded for the appliance once it has stopped,
however it stopped. Nothing to remove is not an error.

Options:
${formatFlags(FLAGS)}
`;

export const fastpathCleanupCommand: CommandMain = async (argv, io) => {
  const args = parseCommandArgs("fastpath-cleanup", argv, FLAGS, HELP, io);
  if (typeof args === "number") return args;
  const file = flagString(args, "config") ?? "/etc/pcoip-cmsg/pcoip-cmsg.toml";
  const loaded = loadConfig({ file, strict: false });
  // An unreadable configuration still gets its table removed: the port only narrows the conntrack flush.
  const ports = loaded.ok
    ? effectiveListeners(loaded.config.sg.udpListen, loaded.config.enableIpv6)
        .map((l) => parseListen(l)?.port ?? 4172)
        .filter((p) => p > 0)
    : [4172];
  const r = cleanupKernelPath(ports.length > 0 ? ports : [4172]);
  if (r.error && !r.removed) {
    // No libnftables or no permission: there is nothing this process could have created either.
    io.stderr(`${PRODUCT_NAME} fastpath-cleanup: ${r.error}\n`);
    return 0;
  }
  io.stdout(r.removed ? "removed nftables table inet pcoip_cmsg\n" : "nothing to remove\n");
  return 0;
};
