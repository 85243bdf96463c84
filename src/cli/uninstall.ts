/**
 * `pcoip-cmsg uninstall [--purge]`: stops and disables the service, removes the unit, the executable (and its
 * rollback copy), the sysctl.d file, and closes the firewalld ports install opened. Configuration, certificates,
 * the users file and /var/lib/pcoip-cmsg stay unless --purge, which also removes the service account.
 * `--root DIR` works on a staged installation and changes nothing on this host.
 */
import { existsSync, rmSync } from "node:fs";
import { loadConfig } from "../config/load.ts";
import {
  type CommandRunner,
  commandLine,
  commandProblem,
  firewalldState,
  type Problem,
  runCommand,
  systemdRunning,
} from "../platform/host.ts";
import { installLayout, packagedBy, SERVICE_NAME, SERVICE_USER } from "../platform/paths.ts";
import { PRODUCT_NAME } from "../version.ts";
import { type FlagSpec, flagBool, flagString, formatFlags, parseCommandArgs } from "./args.ts";
import { createReporter } from "./configure.ts";
import { firewallPorts } from "./install.ts";
import { loggedReporter, openInstallLog } from "./install-log.ts";
import type { CliIo, CommandMain } from "./io.ts";

const FLAGS: FlagSpec[] = [
  {
    name: "purge",
    kind: "boolean",
    help: "also remove configuration, certificates, users, state and the service account",
  },
  {
    name: "root",
    kind: "string",
    value: "DIR",
    help: "remove a staged installation under DIR; change nothing on this host",
  },
  { name: "help", kind: "boolean", help: "this text" },
];

const HELP = `Usage: ${PRODUCT_NAME} uninstall [--purge]

Stops and disables ${SERVICE_NAME}, removes its unit, executable (and rollback copy) and sysctl.d file, and closes
the firewalld ports install opened. /etc/pcoip-cmsg (config, certificates, users) and /var/lib/pcoip-cmsg stay,
so a later install picks them up; --purge removes them and the ${SERVICE_USER} account too.

Options:
${formatFlags(FLAGS)}
`;

export interface UninstallDeps {
  readonly run: CommandRunner;
  readonly systemdRunning: () => boolean;
}

export const uninstallCommand: CommandMain = (argv, io) =>
  runUninstall(argv, io, { run: runCommand, systemdRunning });

export async function runUninstall(argv: string[], io: CliIo, deps: UninstallDeps): Promise<number> {
  const args = parseCommandArgs("uninstall", argv, FLAGS, HELP, io);
  if (typeof args === "number") return args;
  const purge = flagBool(args, "purge") === true;
  const layout = installLayout(flagString(args, "root") ?? "/");
  const d = layout.disk;
  const h = layout.host;
  const packaged = packagedBy(layout);
  const report = loggedReporter(
    createReporter(io),
    openInstallLog(layout.disk.installLog, "uninstall", io, { committed: true }),
  );
  const problems: Problem[] = [];
  const hostCommand = async (cmd: string, args: string[], fix: string, quietFailure = false) => {
    if (layout.staged) {
      report.would(commandLine(cmd, args));
      return;
    }
    const r = await deps.run(cmd, args);
    if (r.ok) report.done(commandLine(cmd, args));
    else if (!quietFailure) problems.push(commandProblem(cmd, args, r, fix));
  };
  const remove = (hostPath: string, diskPath: string) => {
    if (!existsSync(diskPath)) return;
    try {
      rmSync(diskPath, { recursive: true, force: true });
      report.done(`removed ${hostPath}`);
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      problems.push({
        what: `removing ${hostPath}`,
        cause: err.code ?? err.message,
        fix: `remove it by hand (rm -rf ${hostPath})`,
      });
    }
  };

  if (
    packaged === undefined &&
    !existsSync(d.binary) &&
    !existsSync(d.unitFile) &&
    !existsSync(d.configFile) &&
    !purge
  ) {
    io.stdout(
      `${PRODUCT_NAME} is not installed${layout.staged ? ` under ${layout.root}` : ""}; nothing to do\n`,
    );
    return 0;
  }
  io.stdout(
    `${PRODUCT_NAME} uninstall${purge ? " --purge" : ""}${layout.staged ? ` (staged under ${layout.root})` : ""}:\n`,
  );
  // Read before anything is removed: the config says which ports install opened.
  const cfg = loadConfig({ file: d.configFile, strict: false });
  const ports = cfg.ok ? firewallPorts(cfg.config) : firewallPorts(defaultsOnly());

  if (layout.staged || deps.systemdRunning()) {
    // disable --now stops the service (SIGTERM drains live sessions up to drainSeconds).
    await hostCommand(
      "systemctl",
      ["disable", "--now", SERVICE_NAME],
      `stop it by hand: systemctl stop ${SERVICE_NAME}`,
      !existsSync(d.unitFile) && packaged === undefined,
    );
  } else report.note("systemd is not running: stop a foreground `pcoip-cmsg run` yourself");
  remove(h.unitFile, d.unitFile);
  if (layout.staged || deps.systemdRunning())
    await hostCommand("systemctl", ["daemon-reload"], "run systemctl daemon-reload by hand");

  const fw = layout.staged ? "running" : await firewalldState(deps.run);
  if (fw === "running") {
    for (const p of ports)
      await hostCommand(
        "firewall-cmd",
        ["--permanent", `--remove-port=${p}`],
        `close it by hand: firewall-cmd --permanent --remove-port=${p}`,
      );
    await hostCommand("firewall-cmd", ["--reload"], "run firewall-cmd --reload by hand");
  }
  const hadSysctl = existsSync(d.sysctlFile);
  remove(h.sysctlFile, d.sysctlFile);
  if (hadSysctl)
    report.note(
      "the raised UDP buffer sizes (and IPv4 forwarding, when the file switched it on) stay until the next boot",
    );
  remove(h.binary, d.binary);
  remove(h.libDir, d.libDir);
  if (packaged !== undefined)
    report.note(
      `the executable, unit and this command come from the ${packaged} package: remove it with ${packaged === "rpm" ? "dnf remove pcoip-cmsg" : "apt remove pcoip-cmsg (apt purge also removes the configuration)"}`,
    );

  if (purge) {
    remove(h.configDir, d.configDir);
    remove(h.stateDir, d.stateDir);
    if (layout.staged) report.would(commandLine("userdel", [SERVICE_USER]));
    else if ((await deps.run("getent", ["passwd", SERVICE_USER])).ok)
      await hostCommand("userdel", [SERVICE_USER], `remove the account by hand: userdel ${SERVICE_USER}`);
  } else
    report.note(`kept ${h.configDir} (config, certificates, users) and ${h.stateDir}; --purge removes them`);

  if (problems.length > 0) {
    io.stderr(`${PRODUCT_NAME} uninstall: finished with ${problems.length} failed step(s):\n`);
    for (const p of problems) io.stderr(`  - ${p.what}: ${p.cause}\n    fix: ${p.fix}\n`);
    return 1;
  }
  io.stdout(
    `uninstalled${layout.staged ? ` (staged under ${layout.root}; nothing on this host changed)` : ""}\n`,
  );
  return 0;
}

function defaultsOnly() {
  const r = loadConfig({ text: "", strict: false });
  if (!r.ok) throw new Error("the built-in defaults do not validate: a bug");
  return r.config;
}
