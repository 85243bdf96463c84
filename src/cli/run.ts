/**
 * `pcoip-cmsg run --config FILE`: the appliance in the foreground, what the systemd unit's ExecStart calls.
 * Logs one line per listener; SIGHUP re-reads the file (an invalid one is refused and the old one stays);
 * SIGTERM/SIGINT drain (no new sessions, live relays run up to drainSeconds) and exit 0. With NOTIFY_SOCKET
 * it tells systemd READY / RELOADING / STOPPING / WATCHDOG / STATUS.
 */
import { loadConfig } from "../config/load.ts";
import { createLogger, isLogLevel } from "../observability/log.ts";
import { type Appliance, startAppliance } from "../platform/appliance.ts";
import { createNotifier } from "../platform/systemd.ts";
import { type FlagSpec, flagString, formatFlags, parseCommandArgs } from "./args.ts";
import { CONFIG_FLAG, DEFAULT_CONFIG_FILE } from "./config.ts";
import type { CliIo } from "./io.ts";

const FLAGS: FlagSpec[] = [
  CONFIG_FLAG,
  {
    name: "log-level",
    kind: "string",
    value: "LEVEL",
    help: "debug | info | warn | error (overrides the file)",
  },
  { name: "help", kind: "boolean", help: "this text" },
];

const HELP = `Usage: pcoip-cmsg run [--config FILE] [--log-level LEVEL]

Runs the Connection Manager, the Security Gateway and the admin listener in the foreground, as configured.
Signals: SIGHUP reloads the configuration; SIGTERM/SIGINT drain and exit.

Options:
${formatFlags(FLAGS)}
`;

export async function runCommand(argv: string[], io: CliIo): Promise<number> {
  const args = parseCommandArgs("run", argv, FLAGS, HELP, io);
  if (typeof args === "number") return args;
  const file = flagString(args, "config") ?? DEFAULT_CONFIG_FILE;
  const levelFlag = flagString(args, "log-level");
  if (levelFlag !== undefined && !isLogLevel(levelFlag)) {
    io.stderr(`pcoip-cmsg run: --log-level ${levelFlag}: must be one of debug, info, warn, error\n`);
    return 2;
  }
  const flags = levelFlag ? [{ path: "logLevel", value: levelFlag, flag: "--log-level" }] : [];
  const loaded = loadConfig({ file, env: process.env, flags, strict: false });
  if (!loaded.ok) {
    for (const e of loaded.errors) io.stderr(`error: ${e}\n`);
    io.stderr(
      `pcoip-cmsg run: ${file} is not usable; fix the errors above (check with: pcoip-cmsg config check --config ${file})\n`,
    );
    return 78; // EX_CONFIG
  }
  const log = createLogger({ level: loaded.config.logLevel });
  for (const w of loaded.warnings) log.warn({ config: file }, w);
  const notifier = createNotifier();

  // Signal handlers go in before anything listens: a SIGTERM or SIGHUP (whose default action kills) that lands
  // while start-up runs is held and acted on once the appliance is up, never a silent exit 143/129.
  const early: string[] = [];
  const holdEarly = (signal: string) => () => void early.push(signal);
  const earlyHandlers = {
    SIGHUP: holdEarly("SIGHUP"),
    SIGTERM: holdEarly("SIGTERM"),
    SIGINT: holdEarly("SIGINT"),
  };
  for (const [sig, h] of Object.entries(earlyHandlers)) process.on(sig, h);
  const dropEarlyHandlers = () => {
    for (const [sig, h] of Object.entries(earlyHandlers)) process.off(sig, h);
  };

  const started = await startAppliance(loaded.config, { log });
  if (!started.ok) {
    dropEarlyHandlers();
    const { what, cause, fix } = started.error;
    log.error({ what, cause, fix }, `start-up failed: ${what}: ${cause}`);
    io.stderr(`pcoip-cmsg run: ${what}: ${cause}\n  fix: ${fix}\n`);
    notifier.status(`start-up failed: ${what}: ${cause}`);
    return started.error.config ? 78 : 1; // EX_CONFIG: the file must change first
  }
  const appliance = started.appliance;
  logListeners(appliance, log);
  notifier.ready("serving");
  const watchdog = notifier.watchdogIntervalMs
    ? setInterval(() => notifier.watchdog(), notifier.watchdogIntervalMs)
    : undefined;

  let reloading = false;
  const onReload = async () => {
    if (reloading) return;
    reloading = true;
    notifier.reloading("reloading configuration");
    try {
      const next = loadConfig({ file, env: process.env, flags, strict: false });
      if (!next.ok) {
        log.error(
          { config: file, errors: next.errors },
          `reloading config: ${next.errors[0]}; kept the previous config`,
        );
        notifier.ready(`reload refused: ${next.errors[0]}`);
        return;
      }
      for (const w of next.warnings) log.warn({ config: file }, w);
      const r = await appliance.reload(next.config);
      if (!r.ok) {
        log.error({ config: file }, `reloading config: ${r.error}; kept the previous config`);
        notifier.ready(`reload refused: ${r.error}`);
        return;
      }
      log.info(
        { config: file, changed: r.changed },
        r.changed.length ? "configuration reloaded" : "configuration unchanged",
      );
      notifier.ready("serving");
    } finally {
      reloading = false;
    }
  };

  return new Promise<number>((resolve) => {
    let stopping = false;
    const onStop = async (signal: string) => {
      if (stopping) return;
      stopping = true;
      notifier.stopping(`draining (${signal})`);
      appliance.startDrain();
      const deadline = Date.now() + appliance.config.drainSeconds * 1000;
      while (appliance.liveSessions() > 0 && Date.now() < deadline) await Bun.sleep(250);
      const left = appliance.liveSessions();
      log.info(
        { signal, liveSessionsCut: left },
        left > 0 ? `drain time over: closing ${left} live session(s)` : "drained: no live sessions",
      );
      if (watchdog) clearInterval(watchdog);
      await appliance.stop();
      process.off("SIGHUP", hup);
      process.off("SIGTERM", term);
      process.off("SIGINT", int);
      resolve(0);
    };
    const hup = () => void onReload();
    const term = () => void onStop("SIGTERM");
    const int = () => void onStop("SIGINT");
    process.on("SIGHUP", hup);
    process.on("SIGTERM", term);
    process.on("SIGINT", int);
    dropEarlyHandlers();
    for (const signal of early) {
      if (signal === "SIGHUP") hup();
      else void onStop(signal);
    }
  });
}

function logListeners(a: Appliance, log: ReturnType<typeof createLogger>): void {
  for (const addr of a.bound.cm)
    log.info(
      { listener: "cm", address: addr },
      `connection manager listening on https://${addr}/pcoip-broker/xml`,
    );
  for (const addr of a.bound.redirect)
    log.info({ listener: "redirect", address: addr }, `HTTP redirect and health check on http://${addr}`);
  for (const addr of a.bound.sgTcp)
    log.info({ listener: "sg-tcp", address: addr }, `security gateway TCP (PCoIP control) on ${addr}`);
  for (const addr of a.bound.sgUdp)
    log.info({ listener: "sg-udp", address: addr }, `security gateway UDP (PCoIP media) on ${addr}`);
  if (a.bound.admin)
    log.info(
      { listener: "admin", address: a.bound.admin },
      `admin on http://${a.bound.admin} (/healthz /readyz /metrics /sessions)`,
    );
}
