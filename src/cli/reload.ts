/**
 * `pcoip-cmsg reload [--pid PID]`: sends the running appliance SIGHUP (re-read the configuration). The unit's
 * ExecReload calls it with systemd's $MAINPID, so reloading needs no `kill` binary (a minimal host has none:
 * ExecReload=/bin/kill failed there with 203/EXEC). Without --pid it asks systemd for the service's main PID.
 * The target must be a `pcoip-cmsg run` process: a stale or wrong PID is refused, never signalled.
 */
import { readFileSync } from "node:fs";
import { type CommandRunner, runCommand } from "../platform/host.ts";
import { SERVICE_NAME } from "../platform/paths.ts";
import { PRODUCT_NAME } from "../version.ts";
import { type FlagSpec, flagString, formatFlags, parseArgs } from "./args.ts";
import type { CliIo, CommandMain } from "./io.ts";

const FLAGS: FlagSpec[] = [
  { name: "pid", kind: "string", value: "PID", help: "the process to reload (the unit passes $MAINPID)" },
  { name: "help", kind: "boolean", help: "this text" },
];

const HELP = `Usage: ${PRODUCT_NAME} reload [--pid PID]

Sends SIGHUP to the running appliance: it re-reads its configuration; new sessions get the new settings, live
ones keep theirs, and an invalid file is refused (the old configuration stays; the journal says why). This is
what \`systemctl reload ${SERVICE_NAME}\` runs. Without --pid the service's main PID comes from systemd.

Options:
${formatFlags(FLAGS)}
`;

export interface ReloadDeps {
  readonly run: CommandRunner;
  readonly signal: (pid: number) => void;
  readonly cmdline: (pid: number) => string | undefined;
}

export const reloadCommand: CommandMain = (argv, io) =>
  runReload(argv, io, {
    run: runCommand,
    signal: (pid) => process.kill(pid, "SIGHUP"),
    cmdline: (pid) => {
      try {
        return readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").join(" ").trim();
      } catch {
        return undefined;
      }
    },
  });

export async function runReload(argv: string[], io: CliIo, deps: ReloadDeps): Promise<number> {
  const fail = (text: string, code = 1) => {
    io.stderr(`${PRODUCT_NAME} reload: ${text}\n`);
    return code;
  };
  const parsed = parseArgs(argv, FLAGS);
  if (!parsed.ok) return fail(`${parsed.error}\n\n${HELP}`, 2);
  if (parsed.args.flags.get("help") === true) {
    io.stdout(HELP);
    return 0;
  }
  let pidText = flagString(parsed.args, "pid");
  if (pidText === undefined) {
    const r = await deps.run("systemctl", ["show", "--property=MainPID", "--value", SERVICE_NAME]);
    if (!r.ok)
      return fail(
        `asking systemd for the main PID of ${SERVICE_NAME} failed (${r.missing ? "systemctl is not installed" : r.stderr.trim() || `exit ${r.code}`}); give --pid PID of the \`${PRODUCT_NAME} run\` process`,
      );
    pidText = r.stdout.trim();
    if (pidText === "0" || pidText === "")
      return fail(
        `${SERVICE_NAME} is not running: nothing to reload (start it: systemctl start ${SERVICE_NAME})`,
        3,
      );
  }
  const pid = Number(pidText);
  if (!/^\d+$/.test(pidText) || !Number.isSafeInteger(pid) || pid <= 1)
    return fail(`--pid ${pidText}: must be the process id of the running appliance (a number above 1)`, 2);
  const cmd = deps.cmdline(pid);
  if (cmd === undefined) return fail(`no process ${pid}: the appliance is not running under that id`, 3);
  if (!/\brun\b/.test(cmd) || !/pcoip-cmsg|bun/.test(cmd))
    return fail(
      `process ${pid} is not a \`${PRODUCT_NAME} run\` process (${cmd.slice(0, 120)}); not signalled`,
    );
  try {
    deps.signal(pid);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    return fail(
      `signalling process ${pid}: ${code ?? String(e)}${code === "EPERM" ? " (run as root or as the service account)" : ""}`,
    );
  }
  io.stdout(`reload requested (SIGHUP to ${pid}); the result is in: journalctl -u ${SERVICE_NAME} -n 20\n`);
  return 0;
}
