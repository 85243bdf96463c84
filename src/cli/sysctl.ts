/**
 * `pcoip-cmsg sysctl`: raises the kernel settings of the appliance's sysctl.d file (UDP socket buffers) now,
 * through /proc/sys, without the `sysctl` tool (procps), which a minimal host lacks. The package scripts and
 * `install` call it; systemd-sysctl applies the same file at every boot.
 */
import { existsSync, readFileSync } from "node:fs";
import { installLayout } from "../platform/paths.ts";
import { applySysctl, describeOutcome, parseSysctlConf, type SysctlOutcome } from "../platform/sysctl.ts";
import { PRODUCT_NAME } from "../version.ts";
import { type FlagSpec, flagString, formatFlags, parseCommandArgs } from "./args.ts";
import type { CliIo, CommandMain } from "./io.ts";

const FLAGS: FlagSpec[] = [
  {
    name: "file",
    kind: "string",
    value: "FILE",
    help: "sysctl.d file to apply (default: /etc/sysctl.d/90-pcoip-cmsg.conf, else the package's in /usr/lib/sysctl.d)",
  },
  { name: "help", kind: "boolean", help: "this text" },
];

const HELP = `Usage: ${PRODUCT_NAME} sysctl [--file FILE]

Raises the kernel settings the appliance needs (net.core.rmem_default / wmem_default: the UDP 4172 socket's
buffers) to the values of its sysctl.d file, now, without the sysctl tool. A value already higher is kept.
A key this kernel or network namespace does not have is skipped and named.

Options:
${formatFlags(FLAGS)}
`;

/** The file systemd-sysctl would use for our name: /etc/sysctl.d overrides /usr/lib/sysctl.d. */
export function defaultSysctlFile(root = "/"): string | undefined {
  const l = installLayout(root);
  if (existsSync(l.disk.sysctlFile)) return l.disk.sysctlFile;
  if (existsSync(l.disk.packageSysctlFile)) return l.disk.packageSysctlFile;
  return undefined;
}

/** Applies a sysctl.d file; the outcomes, or an error text when it cannot be read. */
export function applySysctlFile(file: string, procSys?: string): SysctlOutcome[] | string {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (e) {
    return `${file}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`;
  }
  return applySysctl(parseSysctlConf(text), procSys);
}

export const sysctlCommand: CommandMain = async (argv: string[], io: CliIo) => {
  const args = parseCommandArgs("sysctl", argv, FLAGS, HELP, io);
  if (typeof args === "number") return args;
  const file = flagString(args, "file") ?? defaultSysctlFile();
  if (file === undefined) {
    io.stderr(
      `${PRODUCT_NAME} sysctl: no 90-pcoip-cmsg.conf in /etc/sysctl.d or /usr/lib/sysctl.d: nothing to apply (install writes it)\n`,
    );
    return 1;
  }
  const r = applySysctlFile(file);
  if (typeof r === "string") {
    io.stderr(`${PRODUCT_NAME} sysctl: cannot read ${r}\n`);
    return 1;
  }
  for (const o of r)
    (o.outcome === "failed" ? io.stderr : io.stdout)(
      `  ${o.outcome === "failed" ? "!" : "✓"} ${describeOutcome(o)}\n`,
    );
  return r.some((o) => o.outcome === "failed") ? 1 : 0;
};
