/**
 * `pcoip-cmsg try-restart`: what an upgrade does to a running service, for the RPM/deb scripts after new files
 * are unpacked (and for administrators): when the service runs, drain it (POST /drain; load balancers see 503
 * and stop sending clients) and wait, bounded, for live sessions to end, then `systemctl try-restart`. A service
 * that is not running stays stopped: a package upgrade never starts it. Steps go to the install log too.
 */
import { type CommandRunner, commandLine, runCommand, systemdRunning } from "../platform/host.ts";
import { installLayout, SERVICE_NAME } from "../platform/paths.ts";
import { PRODUCT_NAME } from "../version.ts";
import { type FlagSpec, flagBool, flagString, formatFlags, parseCommandArgs } from "./args.ts";
import { createReporter } from "./configure.ts";
import { drainForUpgrade } from "./install.ts";
import { loggedReporter, openInstallLog } from "./install-log.ts";
import type { CliIo, CommandMain } from "./io.ts";
import { adminEndpointOf } from "./status.ts";

/** A package upgrade should not hold dnf/apt for the installer's 10 minutes; the unit's stop timeout bounds it too. */
export const PACKAGE_DRAIN_TIMEOUT_SECONDS = 300;

const FLAGS: FlagSpec[] = [
  {
    name: "drain-timeout",
    kind: "string",
    value: "SECONDS",
    help: `wait this long for live sessions to end before restarting (default ${PACKAGE_DRAIN_TIMEOUT_SECONDS})`,
  },
  { name: "force", kind: "boolean", help: "restart without waiting for live sessions" },
  { name: "help", kind: "boolean", help: "this text" },
];

const HELP = `Usage: ${PRODUCT_NAME} try-restart [--drain-timeout SECONDS] [--force]

When ${SERVICE_NAME} is running: puts it in drain (new clients get 503 from GET /pcoip-broker/xml), waits up to
--drain-timeout seconds for live sessions to end, then restarts it (systemctl try-restart). When it is not
running, nothing is started. The RPM and deb upgrade scripts run this; the steps also go to /var/log/pcoip-cmsg/install.log.

Options:
${formatFlags(FLAGS)}
`;

export interface TryRestartDeps {
  readonly run: CommandRunner;
  readonly systemdRunning: () => boolean;
  readonly sleep: (ms: number) => Promise<void>;
}

export const tryRestartCommand: CommandMain = (argv, io) =>
  runTryRestart(argv, io, { run: runCommand, systemdRunning, sleep: (ms) => Bun.sleep(ms) });

export async function runTryRestart(argv: string[], io: CliIo, deps: TryRestartDeps): Promise<number> {
  const args = parseCommandArgs("try-restart", argv, FLAGS, HELP, io);
  if (typeof args === "number") return args;
  const text = flagString(args, "drain-timeout");
  const timeout = text === undefined ? PACKAGE_DRAIN_TIMEOUT_SECONDS : Number(text);
  if (!Number.isInteger(timeout) || timeout < 0) {
    io.stderr(`${PRODUCT_NAME} try-restart: --drain-timeout ${text}: must be a whole number of seconds\n`);
    return 2;
  }
  const layout = installLayout("/");
  const report = loggedReporter(
    createReporter(io),
    openInstallLog(layout.host.installLog, "try-restart", io, { committed: true }),
  );
  if (!deps.systemdRunning()) {
    report.note("systemd is not running here: nothing to restart");
    return 0;
  }
  if (!(await deps.run("systemctl", ["is-active", "--quiet", SERVICE_NAME])).ok) {
    report.note(`${SERVICE_NAME} is not running: left stopped (start it: systemctl start ${SERVICE_NAME})`);
    return 0;
  }
  const admin = adminEndpointOf(layout.host.configFile);
  await drainForUpgrade(
    admin,
    { timeoutSeconds: timeout, force: flagBool(args, "force") === true, sleep: deps.sleep },
    report,
  );
  const r = await deps.run("systemctl", ["try-restart", SERVICE_NAME], { timeoutMs: 300_000 });
  if (!r.ok) {
    report.warn(
      `${commandLine("systemctl", ["try-restart", SERVICE_NAME])} failed: ${r.stderr.trim() || `exit ${r.code}`}`,
    );
    io.stderr(`  fix: see why: journalctl -u ${SERVICE_NAME} -n 50 --no-pager\n`);
    return 1;
  }
  report.done(`restarted ${SERVICE_NAME} on the new executable`);
  return 0;
}
