/**
 * argv → command; nothing else. Each command lives in src/cli/ and is loaded only when called, so
 * `--version` and `--help` stay instant and a command's dependencies (selfsigned, ldapts) cost nothing elsewhere.
 */
import { type CliIo, type CommandMain, processIo } from "./cli/io.ts";
import { COMMIT, PRODUCT_NAME, VERSION } from "./version.ts";

interface CommandEntry {
  summary: string;
  load: () => Promise<CommandMain>;
}

const COMMANDS: Record<string, CommandEntry> = {
  run: {
    summary: "run the appliance in the foreground (what the systemd unit starts)",
    load: async () => (await import("./cli/run.ts")).runCommand,
  },
  install: {
    summary:
      "install or upgrade the service on this host (vendor flags: --broker-url, --external-pcoip-ip …)",
    load: async () => (await import("./cli/install.ts")).installCommand,
  },
  configure: {
    summary: "change the installed configuration and reload the service",
    load: async () => (await import("./cli/configure.ts")).configureCommand,
  },
  uninstall: {
    summary: "remove the service (--purge also removes config, certificates and users)",
    load: async () => (await import("./cli/uninstall.ts")).uninstallCommand,
  },
  reload: {
    summary: "send the running service SIGHUP: re-read the configuration (systemctl reload runs this)",
    load: async () => (await import("./cli/reload.ts")).reloadCommand,
  },
  "try-restart": {
    summary: "drain (bounded) and restart the service if it runs (the RPM/deb upgrade scripts run this)",
    load: async () => (await import("./cli/try-restart.ts")).tryRestartCommand,
  },
  sysctl: {
    summary: "raise the kernel settings of 90-pcoip-cmsg.conf now, without the sysctl tool",
    load: async () => (await import("./cli/sysctl.ts")).sysctlCommand,
  },
  "fastpath-cleanup": {
    summary: "remove the kernel UDP path's nftables table and bindings (the unit's ExecStopPost)",
    load: async () => (await import("./cli/fastpath-cleanup.ts")).fastpathCleanupCommand,
  },
  status: {
    summary: "installed version, service state and health",
    load: async () => (await import("./cli/status.ts")).statusCommand,
  },
  drain: {
    summary: "take this node out of its load balancer's rotation (health check 503); live sessions go on",
    load: async () => (await import("./cli/drain.ts")).drainCommand,
  },
  resume: {
    summary: "undo drain: the health check answers 200 again and new sessions are taken",
    load: async () => (await import("./cli/drain.ts")).resumeCommand,
  },
  diagnose: {
    summary: "run the troubleshooting checks (--support-bundle writes a redacted tar.gz)",
    load: async () => (await import("./cli/diagnose.ts")).diagnoseCommand,
  },
  "create-darksite-bundle": {
    summary: "write pcoip-cmsg-bundle.tar.gz for offline installs",
    load: async () => (await import("./cli/bundle.ts")).bundleCommand,
  },
  user: {
    summary: "user add|del|list NAME: local accounts of the built-in broker",
    load: async () => (await import("./cli/user.ts")).userCommand,
  },
  config: {
    summary: "config check | config schema: validate a file, print every key",
    load: async () => (await import("./cli/config.ts")).runConfigCommand,
  },
};

export function usage(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((c) => c.length));
  const lines = Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(width)}  ${c.summary}`);
  return [
    `${PRODUCT_NAME} ${VERSION} — PCoIP Connection Manager and Security Gateway in one executable`,
    "",
    `Usage: ${PRODUCT_NAME} <command> [options]`,
    "",
    "Commands:",
    ...lines,
    "",
    "Options:",
    "  --version    print the version and exit",
    "  --help       this text; `<command> --help` explains one command",
    "",
    `Configuration: /etc/pcoip-cmsg/pcoip-cmsg.toml by default (--config FILE); \`${PRODUCT_NAME} config schema\` lists every key.`,
    "",
  ].join("\n");
}

export async function main(argv: string[], io: CliIo = processIo): Promise<number> {
  const [command, ...rest] = argv;
  if (command === undefined || command === "--help" || command === "-h" || command === "help") {
    io.stdout(usage());
    return command === undefined ? 2 : 0;
  }
  if (command === "--version" || command === "-V" || command === "version") {
    io.stdout(`${PRODUCT_NAME} ${VERSION} (${COMMIT}) bun ${Bun.version}\n`);
    return 0;
  }
  const entry = COMMANDS[command];
  if (!entry) {
    io.stderr(`${PRODUCT_NAME}: unknown command "${command}"\n\n${usage()}`);
    return 2;
  }
  const run = await entry.load();
  return run(rest, io);
}

if (import.meta.main) {
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (err: unknown) => {
      // A throw reaching here is a bug, not a user error: say so plainly and exit non-zero.
      process.stderr.write(
        `${PRODUCT_NAME}: internal error: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`,
      );
      process.exitCode = 70;
    },
  );
}
