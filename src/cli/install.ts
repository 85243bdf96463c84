/**
 * `pcoip-cmsg install` (SPEC §7, §9): the vendor's flags, without Docker. In order: required values (prompted on
 * a terminal, else refused with the list of what is missing) → everything checked before anything is written
 * (certificates, proxy, the resulting config, disk, memory, free ports, the bundle's SHA-256 sums) → service
 * account → config, certificates, users file, proxy.env → drain live sessions when upgrading → binary (the
 * previous one kept for rollback; the baseline build on CPUs without AVX2) → unit, sysctl.d → SELinux contexts,
 * firewalld ports, sysctl, systemctl enable + start.
 *
 * `--root DIR` stages every file under DIR and changes nothing on this host: each host change is printed as
 * "staged, not run here: …" instead. Every failed external command is reported with what failed, the cause and
 * the fix.
 */
import { copyFileSync, existsSync, mkdirSync, readFileSync } from "node:fs";
import { isIP } from "node:net";
import { basename, dirname, join } from "node:path";
import { noDesktopsAdvice } from "../config/advice.ts";
import { loadConfig } from "../config/load.ts";
import { type Config, effectiveListeners, parseListen } from "../config/schema.ts";
import { ensureAdminTokenFile } from "../observability/admin-token.ts";
import {
  type CommandRunner,
  commandLine,
  commandProblem,
  cpuHasAvx2,
  ensureSystemUser,
  type FirewalldState,
  firewalldState,
  formatProblem,
  freeDiskBytes,
  type MemoryInfo,
  memoryInfo,
  type PortProbe,
  type Problem,
  portFree,
  readSysctl,
  runCommand,
  type SelinuxState,
  selinuxState,
  systemdRunning,
  useraddArgs,
} from "../platform/host.ts";
import {
  BASELINE_BINARY_NAME,
  type InstallLayout,
  installLayout,
  packagedBy,
  SERVICE_NAME,
  SERVICE_USER,
} from "../platform/paths.ts";
import { describeOutcome } from "../platform/sysctl.ts";
import { PRODUCT_NAME, VERSION } from "../version.ts";
import { flagBool, flagString, formatFlags, parseArgs } from "./args.ts";
import {
  binaryVersion,
  defaultBinary,
  EMBEDDED_UNIT,
  isCompiled,
  type OpenedBundle,
  openBundle,
  sha256File,
} from "./bundle.ts";
import {
  applyConfiguration,
  type ConfigurationPlan,
  createReporter,
  type Ownership,
  planConfiguration,
  type Reporter,
  readInstalledConfig,
  serviceOwnership,
  writeFileAtomic,
} from "./configure.ts";
import { loggedReporter, openInstallLog } from "./install-log.ts";
import type { CliIo, CommandMain } from "./io.ts";
import {
  type AdminEndpoint,
  adminEndpointFor,
  adminRequest,
  type InstallRecord,
  liveSessions,
  readInstallRecord,
} from "./status.ts";
import { applySysctlFile, defaultSysctlFile } from "./sysctl.ts";
import { FORWARDING_LINE, forwardingLineWanted, syncForwardingLine, sysctlText } from "./sysctl-file.ts";
import {
  INSTALL_FLAGS,
  type Installed,
  type MissingValue,
  missingRequired,
  readVendorSettings,
  stripDockerFlags,
  VENDOR_NOTES,
  type VendorSettings,
} from "./vendor-flags.ts";

export const MIN_FREE_DISK_BYTES = 10 * 1024 ** 3;
/** Below this much memory the appliance runs, but a busy node will not: warned, not refused. */
export const LOW_MEMORY_BYTES = 2 * 1024 ** 3;
export const DEFAULT_DRAIN_TIMEOUT_SECONDS = 600;
/**
 * Default UDP socket buffers (sysctl.d): Bun's UDP sockets cannot set SO_RCVBUF/SO_SNDBUF, and the kernel's
 * ~208 KiB default holds only milliseconds of media for all sessions sharing the 4172 listener.
 */
export const SOCKET_BUFFER_BYTES = 4 * 1024 * 1024;

export interface InstallDeps {
  readonly run: CommandRunner;
  /** A person can answer questions (stdin and stdout are terminals). */
  readonly interactive: boolean;
  /** Asks one question on the terminal; undefined at end of input. */
  readonly ask: (question: string) => string | undefined;
  readonly systemdRunning: () => boolean;
  readonly firewalld: () => Promise<FirewalldState>;
  readonly selinux: () => SelinuxState;
  readonly cpuHasAvx2: () => boolean | undefined;
  readonly freeDisk: (path: string) => number | undefined;
  readonly memory: () => MemoryInfo | undefined;
  readonly portFree: (host: string, port: number, protocol: "tcp" | "udp") => Promise<PortProbe>;
  readonly sleep: (ms: number) => Promise<void>;
}

export function hostInstallDeps(): InstallDeps {
  return {
    run: runCommand,
    interactive: process.stdin.isTTY === true && process.stdout.isTTY === true,
    ask: (q) => prompt(q) ?? undefined,
    systemdRunning,
    firewalld: () => firewalldState(runCommand),
    selinux: () => selinuxState(),
    cpuHasAvx2: () => cpuHasAvx2(),
    freeDisk: freeDiskBytes,
    memory: () => memoryInfo(),
    portFree,
    sleep: (ms) => Bun.sleep(ms),
  };
}

export const installCommand: CommandMain = (argv, io) => runInstall(argv, io, hostInstallDeps());

const HELP = `Usage: ${PRODUCT_NAME} install --accept-policies --external-pcoip-ip IP (--self-signed | --ssl-cert FILE --ssl-key FILE) [flags]

Installs the appliance as the systemd service ${SERVICE_NAME}: the executable at /usr/local/bin/pcoip-cmsg, the
configuration, certificates and users file under /etc/pcoip-cmsg, the unit, a sysctl.d file for UDP buffers, the
service account, firewalld ports and SELinux contexts; then enables and starts the service. Run it again with a
newer build or bundle to upgrade: configuration, users and certificates are kept, the previous executable is kept
for rollback, and live sessions are drained first. Missing required values are asked for on a terminal.

Flags:
${formatFlags(INSTALL_FLAGS)}

${VENDOR_NOTES}
`;

export async function runInstall(argv: string[], io: CliIo, deps: InstallDeps): Promise<number> {
  const fail = (text: string, code = 1) => {
    io.stderr(`${PRODUCT_NAME} install: ${text}`);
    return code;
  };
  const stripped = stripDockerFlags(argv);
  for (const n of stripped.notes) io.stderr(`${PRODUCT_NAME} install: ${n}\n`);
  const parsed = parseArgs(stripped.argv, INSTALL_FLAGS);
  if (!parsed.ok)
    return fail(`${parsed.error}\n\nRun \`${PRODUCT_NAME} install --help\` for the flags.\n`, 2);
  const args = parsed.args;
  if (args.flags.get("help") === true) {
    io.stdout(HELP);
    return 0;
  }
  if (args.positional.length > 0) return fail(`unexpected argument "${args.positional[0]}"\n`, 2);
  const drainText = flagString(args, "drain-timeout");
  const drainTimeout = drainText === undefined ? DEFAULT_DRAIN_TIMEOUT_SECONDS : Number(drainText);
  if (!Number.isInteger(drainTimeout) || drainTimeout < 0)
    return fail(`--drain-timeout ${drainText}: must be a whole number of seconds (0 or more)\n`, 2);
  const force = flagBool(args, "force") === true;
  const configOnly = flagBool(args, "config-only") === true;
  const layout = installLayout(flagString(args, "root") ?? "/");
  const log = openInstallLog(layout.disk.installLog, "install", io);
  log.line(`pcoip-cmsg ${VERSION} install ${stripped.argv.join(" ")}`);
  const report = loggedReporter(createReporter(io), log);
  const packaged = packagedBy(layout);

  const existing = readInstalledConfig(layout);
  if (!existing.ok) return fail(`${existing.error}\n`);
  let settings = readVendorSettings(args);
  const installed = installedState(layout, existing.raw);
  const missing = missingRequired(settings, installed);
  if (missing.length > 0) {
    if (!deps.interactive) {
      return fail(
        `required values are missing (no terminal to ask on):\n${missing.map((m) => `  ${m.flag.padEnd(50)} ${m.why}\n`).join("")}` +
          `Nothing was changed. Run again with these flags (\`${PRODUCT_NAME} install --help\` lists them all).\n`,
        2,
      );
    }
    const answered = askMissing(settings, missing, deps, io);
    if (!answered) return fail("stopped: a required value was not given; nothing was changed\n", 2);
    settings = answered;
  }

  io.stdout(
    `${PRODUCT_NAME} install${layout.staged ? ` (staged under ${layout.root}: nothing on this host changes)` : ""}:\n`,
  );

  // Everything that can refuse, before anything is written.
  let bundle: OpenedBundle | undefined;
  try {
    let source:
      | { binary: string; baseline: string | undefined; version: string; unitText: string; from: string }
      | undefined;
    if (settings.darksiteBundlePath !== undefined) {
      const opened = await openBundle(settings.darksiteBundlePath, deps.run);
      if (!opened.ok) return fail(`refused; nothing was changed:\n${formatProblem(opened.error)}`);
      bundle = opened.bundle;
      report.done(
        `bundle ${settings.darksiteBundlePath}: ${PRODUCT_NAME} ${bundle.version}, every SHA-256 sum matches`,
      );
      source = { ...bundle, from: `bundle ${settings.darksiteBundlePath}` };
    } else if (packaged !== undefined) {
      report.note(
        `the ${packaged === "rpm" ? "RPM" : "deb"} package installed the executable and the unit: they are upgraded with ${packaged === "rpm" ? "dnf upgrade pcoip-cmsg" : "apt install pcoip-cmsg"}, not here`,
      );
    } else if (!configOnly) {
      const bin = defaultBinary(flagString(args, "binary"));
      if (!bin.ok)
        return fail(`refused; nothing was changed:\n${formatProblem(bin.error)}  (or use --config-only)\n`);
      const beside = join(dirname(bin.file), BASELINE_BINARY_NAME);
      source = {
        binary: bin.file,
        baseline: existsSync(beside) && beside !== bin.file ? beside : undefined,
        version: (await binaryVersion(deps.run, bin.file)) ?? (isCompiled() ? VERSION : "unknown"),
        unitText: EMBEDDED_UNIT,
        from: bin.file,
      };
    }

    const planned = await planConfiguration({
      layout,
      settings,
      existing: existing.raw,
      strict: true,
      replaceCertificate: false,
    });
    if (!planned.ok)
      return fail(`refused; nothing was changed:\n${planned.errors.map((e) => `  - ${e}\n`).join("")}`);
    const plan = planned.plan;
    for (const w of plan.warnings) report.warn(w);
    const config = loadConfig({ text: plan.text, strict: true });
    if (!config.ok) return fail(`refused: ${config.errors.join("; ")}\n`); // planConfiguration checked it: a bug
    const advice = noDesktopsAdvice(config.config);
    if (advice) report.warn(advice);

    const serviceActive =
      !layout.staged &&
      deps.systemdRunning() &&
      (await deps.run("systemctl", ["is-active", "--quiet", SERVICE_NAME])).ok;
    const preflight = await checkHost(layout, config.config, settings, deps, report, {
      serviceActive,
      configOnly,
    });
    if (preflight.length > 0)
      return fail(
        `refused; nothing was changed:\n${preflight.map((p) => `  - ${p.what}: ${p.cause}\n    fix: ${p.fix}\n`).join("")}`,
      );

    log.commit();
    return await carryOut({
      layout,
      plan,
      config: config.config,
      source,
      deps,
      report,
      io,
      force,
      drainTimeout,
      configOnly,
      serviceActive,
      packaged,
      bundleRpm: bundle?.rpm,
    });
  } finally {
    bundle?.close();
  }
}

function installedState(layout: InstallLayout, raw: Record<string, unknown> | undefined): Installed {
  const tls = (raw?.tls ?? {}) as Record<string, unknown>;
  const cert = layout.onDisk(typeof tls.cert === "string" ? tls.cert : layout.host.certFile);
  const key = layout.onDisk(typeof tls.key === "string" ? tls.key : layout.host.keyFile);
  return {
    // The packages ship a config with comments only: that is not an installed configuration (policies unaccepted).
    configExists: raw !== undefined && Object.keys(raw).length > 0,
    enableSecurityGateway: raw?.enableSecurityGateway !== false,
    externalPcoipIp: Array.isArray(raw?.externalPcoipIp) ? (raw.externalPcoipIp as string[]) : [],
    certificatePresent: existsSync(cert) && existsSync(key),
  };
}

/** Asks for each missing value on the terminal; undefined when the person gives up. */
function askMissing(
  s: VendorSettings,
  missing: readonly MissingValue[],
  deps: InstallDeps,
  io: CliIo,
): VendorSettings | undefined {
  const out: Record<string, unknown> = { ...s };
  for (const m of missing) {
    if (m.flag === "--accept-policies") {
      const a = deps.ask("Do you accept the license and privacy policies? [y/N]");
      if (!a || !/^y(es)?$/i.test(a.trim())) return undefined;
      out.acceptPolicies = true;
    } else if (m.flag.startsWith("--external-pcoip-ip")) {
      io.stdout(
        "The Security Gateway hands clients its public address (one IPv4 and/or one IPv6, separated by a space).\n",
      );
      for (;;) {
        const a = deps.ask("External PCoIP IP address(es):");
        if (a === undefined || a.trim() === "") return undefined;
        const ips = a.trim().split(/[\s,]+/);
        if (ips.every((ip) => isIP(ip) !== 0)) {
          out.externalPcoipIp = ips;
          break;
        }
        io.stdout("  not an IP address literal; try again (empty to stop)\n");
      }
    } else {
      const names = (out.hostAddress as string[] | undefined) ?? [];
      const a = deps.ask(
        `No certificate given. Generate a self-signed one${names.length ? ` for ${names.join(", ")}` : ""}? [Y/n]`,
      );
      if (a === undefined) return undefined;
      if (a.trim() === "" || /^y(es)?$/i.test(a.trim())) out.selfSigned = true;
      else {
        const cert = deps.ask("Certificate file (PEM):");
        const key = deps.ask("Private key file (PEM):");
        if (!cert || !key) return undefined;
        out.sslCert = cert.trim();
        out.sslKey = key.trim();
      }
    }
  }
  return out as VendorSettings;
}

/** The ports of a config as firewalld names them: "443/tcp", "4172/udp" (port 0 = ephemeral, left out). */
export function firewallPorts(config: Readonly<Config>): string[] {
  const out = new Set<string>();
  const add = (list: readonly string[], proto: "tcp" | "udp") => {
    for (const l of effectiveListeners(list, config.enableIpv6)) {
      const a = parseListen(l);
      if (a && a.port !== 0) out.add(`${a.port}/${proto}`);
    }
  };
  add(config.cm.listen, "tcp");
  add(config.cm.redirectListen, "tcp");
  if (config.enableSecurityGateway) {
    add(config.sg.tcpListen, "tcp");
    add(config.sg.udpListen, "udp");
  }
  return [...out];
}

/** Every listener of a config with its protocol (the admin listener included: it must be free too). */
export function listeners(
  config: Readonly<Config>,
): { host: string; port: number; protocol: "tcp" | "udp"; key: string }[] {
  const out: { host: string; port: number; protocol: "tcp" | "udp"; key: string }[] = [];
  const add = (list: readonly string[], protocol: "tcp" | "udp", key: string) => {
    for (const l of effectiveListeners(list, config.enableIpv6)) {
      const a = parseListen(l);
      if (a && a.port !== 0) out.push({ host: a.hostname, port: a.port, protocol, key });
    }
  };
  add(config.cm.listen, "tcp", "cm.listen");
  add(config.cm.redirectListen, "tcp", "cm.redirectListen");
  if (config.enableSecurityGateway) {
    add(config.sg.tcpListen, "tcp", "sg.tcpListen");
    add(config.sg.udpListen, "udp", "sg.udpListen");
  }
  if (config.admin.listen !== "") add([config.admin.listen], "tcp", "admin.listen");
  return out;
}

const gb = (n: number) => `${(n / 1024 ** 3).toFixed(1)} GB`;

async function checkHost(
  layout: InstallLayout,
  config: Readonly<Config>,
  s: VendorSettings,
  deps: InstallDeps,
  report: Reporter,
  o: { serviceActive: boolean; configOnly: boolean },
): Promise<Problem[]> {
  const problems: Problem[] = [];
  const free = deps.freeDisk(layout.disk.stateDir);
  if (free === undefined) report.warn(`could not read the free space under ${layout.root}`);
  else if (free < MIN_FREE_DISK_BYTES && s.ignoreDiskReq !== true)
    problems.push({
      what: "checking free disk space",
      cause: `${gb(free)} free for ${layout.host.stateDir}; 10 GB are required (logs, upgrades, support bundles)`,
      fix: "free some space, or pass --ignore-disk-req to install anyway",
    });
  else
    report.done(
      `disk: ${gb(free)} free${free < MIN_FREE_DISK_BYTES ? " (below 10 GB: --ignore-disk-req)" : ""}`,
    );
  const mem = deps.memory();
  if (mem && mem.totalBytes < LOW_MEMORY_BYTES)
    report.warn(`memory: ${gb(mem.totalBytes)} in total; 2 GB or more is recommended for a busy node`);
  else if (mem) report.done(`memory: ${gb(mem.totalBytes)} (${gb(mem.availableBytes)} available)`);
  if (layout.staged || o.configOnly) {
    report.note(
      "ports: not checked (staged or --config-only: they are checked on the host that runs the service)",
    );
    return problems;
  }
  if (o.serviceActive) {
    report.note(`ports: held by the running ${SERVICE_NAME} (upgrade)`);
    return problems;
  }
  const busy: string[] = [];
  for (const l of listeners(config)) {
    const p = await deps.portFree(l.host, l.port, l.protocol);
    if (!p.free) busy.push(`${l.key} ${l.host}:${l.port}/${l.protocol}: ${p.cause}`);
  }
  if (busy.length > 0)
    problems.push({
      what: "checking that the ports are free",
      cause: busy.join("; "),
      fix: "stop what listens there (ss -lntup shows it), or change the listen addresses in the config (pcoip-cmsg configure cannot; edit /etc/pcoip-cmsg/pcoip-cmsg.toml)",
    });
  else
    report.done(
      `ports free: ${listeners(config)
        .map((l) => `${l.port}/${l.protocol}`)
        .join(", ")}`,
    );
  return problems;
}

interface CarryOut {
  readonly layout: InstallLayout;
  readonly plan: ConfigurationPlan;
  readonly config: Readonly<Config>;
  readonly source:
    | { binary: string; baseline: string | undefined; version: string; unitText: string; from: string }
    | undefined;
  readonly deps: InstallDeps;
  readonly report: Reporter;
  readonly io: CliIo;
  readonly force: boolean;
  readonly drainTimeout: number;
  readonly configOnly: boolean;
  readonly serviceActive: boolean;
  /** The package manager owns the executable, unit and sysctl.d file: only configuration and service here. */
  readonly packaged: "rpm" | "deb" | undefined;
  /** The RPM a dark-site bundle carries: installed with rpm where rpm exists, instead of copying the binary. */
  readonly bundleRpm: string | undefined;
}

async function carryOut(given: CarryOut): Promise<number> {
  const { layout, deps, report, io } = given;
  const h = layout.host;
  const problems: Problem[] = [];
  const c = given.bundleRpm ? await installBundleRpm(given, given.bundleRpm, problems) : given;

  // 1. The service account: files are chowned to it.
  let owner: Ownership | undefined;
  if (layout.staged)
    report.would(
      `${commandLine("useradd", useraddArgs(SERVICE_USER, h.stateDir))} (when ${SERVICE_USER} does not exist)`,
    );
  else {
    const u = await ensureSystemUser(deps.run, SERVICE_USER, h.stateDir);
    if (!u.ok) return stop(io, u.error);
    report[u.created ? "done" : "note"](
      `${u.created ? "created" : "kept"} the system account ${SERVICE_USER} (uid ${u.user.uid})`,
    );
    owner = (await serviceOwnership(deps.run)) ?? { uid: u.user.uid, gid: u.user.gid };
  }

  // 2. Configuration, certificates, users file, proxy settings.
  const applied = applyConfiguration(c.plan, layout, owner, report);
  if (!applied.ok) return stop(io, applied.problem!);
  const token = ensureInstalledAdminToken(c.config.admin, layout, owner, report);
  if (token) return stop(io, token);
  if (c.configOnly || (c.packaged === undefined && !c.source)) {
    report.note("--config-only: executable, unit, firewall and service left as they are");
    return finish(io, problems, layout);
  }
  const placed =
    c.packaged === undefined && c.source
      ? await placeFiles(c, c.source)
      : { unitChanged: false, upgrade: false };
  if ("problem" in placed) return stop(io, placed.problem);
  return await serviceSteps(c, placed, problems);
}

/**
 * The bundle's RPM (vendor: create-darksite-bundle --pcoip-cmsg-rpm-path), installed, upgraded or downgraded with
 * `rpm -U --oldpackage` — no repository needed at the dark site. From then on the package owns the executable and
 * the unit. Where rpm is missing (a Debian host) the bundle's executable is installed as usual.
 */
async function installBundleRpm(c: CarryOut, rpm: string, problems: Problem[]): Promise<CarryOut> {
  const { layout, deps, report } = c;
  if (layout.staged) {
    report.would(commandLine("rpm", ["-U", "--oldpackage", "--replacepkgs", rpm]));
    return c;
  }
  const has = await deps.run("rpm", ["--version"]);
  if (!has.ok) {
    report.note(`this host has no rpm: the bundle's executable is installed instead of ${basename(rpm)}`);
    return c;
  }
  const qf = ["--qf", "%{VERSION}-%{RELEASE}"];
  const installed = await deps.run("rpm", ["-q", ...qf, PRODUCT_NAME]);
  const carried = await deps.run("rpm", ["-qp", ...qf, rpm]);
  if (installed.ok && carried.ok && installed.stdout.trim() === carried.stdout.trim()) {
    report.note(`${PRODUCT_NAME} ${installed.stdout.trim()} (the bundle's RPM) is installed already; kept`);
    return { ...c, packaged: "rpm", source: undefined };
  }
  const args = ["-U", "--oldpackage", "--replacepkgs", rpm];
  const r = await deps.run("rpm", args, { timeoutMs: 900_000 });
  if (!r.ok) {
    problems.push(
      commandProblem(
        "rpm",
        args,
        r,
        `install it by hand: dnf install --disablerepo='*' ${rpm}, then run install again`,
      ),
    );
    report.warn(`${commandLine("rpm", args)} failed; installing the bundle's executable instead`);
    return c;
  }
  report.done(`${commandLine("rpm", args)}: the package now owns the executable and the unit`);
  return { ...c, packaged: "rpm", source: undefined };
}

/** Steps 3–5 of a copy-and-run install: drain, the executable (rollback copy kept), the unit and sysctl.d. */
async function placeFiles(
  c: CarryOut,
  src: NonNullable<CarryOut["source"]>,
): Promise<{ unitChanged: boolean; upgrade: boolean } | { problem: Problem }> {
  const { layout, deps, report } = c;
  const d = layout.disk;
  const h = layout.host;

  // 3. Drain before replacing a running binary.
  const avx2 = deps.cpuHasAvx2();
  let chosen = src.binary;
  if (avx2 === false && src.baseline) {
    chosen = src.baseline;
    report.note(`this CPU has no AVX2: installing the x64-baseline build (${BASELINE_BINARY_NAME})`);
  } else if (avx2 === false)
    report.warn(
      `this CPU has no AVX2 and no ${BASELINE_BINARY_NAME} came with ${src.from}: the service will likely die with SIGILL; use a bundle that has it`,
    );
  const newSum = sha256File(chosen);
  const oldSum = existsSync(d.binary) ? sha256File(d.binary) : undefined;
  const upgrade = oldSum !== undefined && oldSum !== newSum;
  if (upgrade) {
    if (layout.staged)
      report.would(
        `ask the admin listener (${c.config.admin.listen}) for live sessions, drain them (POST /drain, up to ${c.drainTimeout} s)`,
      );
    else
      await drainForUpgrade(
        adminEndpointFor(c.config.admin, layout.onDisk),
        { timeoutSeconds: c.drainTimeout, force: c.force, sleep: deps.sleep },
        report,
      );
  }

  // 4. The executable, keeping the previous one for rollback.
  const previousRecord = readInstallRecord(d.installRecord);
  try {
    mkdirSync(d.libDir, { recursive: true, mode: 0o755 });
    if (oldSum === newSum) report.note(`${h.binary} is already this build; kept`);
    else {
      if (upgrade) {
        copyFileSync(d.binary, d.previousBinary);
        report.done(
          `previous executable kept for rollback: ${h.previousBinary}${previousRecord ? ` (${previousRecord.version})` : ""}`,
        );
      }
      writeFileAtomic(d.binary, readFileSync(chosen), 0o755);
      report.done(
        `${h.binary} ← ${src.from}${chosen === src.baseline ? ` (${BASELINE_BINARY_NAME})` : ""}, ${PRODUCT_NAME} ${src.version}`,
      );
    }
    const record: InstallRecord = {
      version: src.version,
      installedAt: new Date().toISOString(),
      source: src.from,
      binary: chosen === src.baseline ? BASELINE_BINARY_NAME : "default",
      ...(upgrade && previousRecord ? { previousVersion: previousRecord.version } : {}),
    };
    writeFileAtomic(d.installRecord, `${JSON.stringify(record, null, 2)}\n`, 0o644);
  } catch (e) {
    return { problem: fsProblem(`installing the executable at ${h.binary}`, e) };
  }

  // 5. Unit and sysctl.d.
  let unitChanged = false;
  try {
    const oldUnit = existsSync(d.unitFile) ? readFileSync(d.unitFile, "utf8") : undefined;
    unitChanged = oldUnit !== src.unitText;
    if (unitChanged) {
      writeFileAtomic(d.unitFile, src.unitText, 0o644);
      report.done(`unit ${h.unitFile}`);
    } else report.note(`unit ${h.unitFile} unchanged`);
    const rmem = layout.staged
      ? SOCKET_BUFFER_BYTES
      : Math.max(SOCKET_BUFFER_BYTES, readSysctl("net.core.rmem_default") ?? 0);
    const wmem = layout.staged
      ? SOCKET_BUFFER_BYTES
      : Math.max(SOCKET_BUFFER_BYTES, readSysctl("net.core.wmem_default") ?? 0);
    const decided = forwardingLineWanted(
      c.config,
      existsSync(d.sysctlFile) ? readFileSync(d.sysctlFile, "utf8") : undefined,
      layout.staged ? undefined : readSysctl("net.ipv4.ip_forward"),
    );
    const forward = decided.write;
    if (decided.note) report.note(decided.note);
    writeFileAtomic(d.sysctlFile, sysctlText(rmem, wmem, forward), 0o644);
    report.done(
      `${h.sysctlFile}: net.core.rmem_default = ${rmem}, net.core.wmem_default = ${wmem}${forward ? `, ${FORWARDING_LINE} (sg.udpFastPath: only admitted media is forwarded)` : ""}`,
    );
  } catch (e) {
    return { problem: fsProblem(`writing ${h.unitFile} and ${h.sysctlFile}`, e) };
  }
  return { unitChanged, upgrade };
}

/** Step 6, host changes: SELinux contexts, firewall, kernel settings, the service. */
async function serviceSteps(
  c: CarryOut,
  placed: { unitChanged: boolean; upgrade: boolean },
  problems: Problem[],
): Promise<number> {
  const { layout, deps, report, io } = c;
  const h = layout.host;
  const { unitChanged, upgrade } = placed;
  const hostCommand = hostCommandRunner(layout, deps, report, problems);
  const copied =
    c.packaged === undefined
      ? [h.binary, h.libDir, h.configDir, h.stateDir, h.unitFile, h.sysctlFile]
      : [h.configDir, h.stateDir];
  const selinux = layout.staged ? "enforcing" : deps.selinux();
  if (selinux !== "disabled")
    await hostCommand(
      "restorecon",
      ["-R", ...copied],
      "install policycoreutils (restorecon), then run it on the listed paths",
    );
  else report.note("SELinux is disabled: no contexts to restore");
  const fw = layout.staged ? "running" : await deps.firewalld();
  if (fw === "running") {
    for (const p of firewallPorts(c.config))
      await hostCommand(
        "firewall-cmd",
        ["--permanent", `--add-port=${p}`],
        `open it by hand: firewall-cmd --permanent --add-port=${p} && firewall-cmd --reload`,
      );
    await hostCommand(
      "firewall-cmd",
      ["--reload"],
      "run firewall-cmd --reload by hand; check `firewall-cmd --state`",
    );
  } else
    report.note(
      `firewalld is ${fw === "absent" ? "not installed" : "not running"}: no ports opened (open ${firewallPorts(c.config).join(", ")} in your firewall)`,
    );
  if (c.packaged !== undefined) {
    // The package's sysctl.d file has no forwarding (a host with the SG off must not start routing): ours in /etc.
    try {
      syncForwardingLine(layout, c.config, report);
    } catch (e) {
      problems.push(fsProblem(`writing ${h.sysctlFile}`, e));
    }
  }
  applyKernelSettings(layout, report, problems);
  if (!layout.staged && !deps.systemdRunning()) {
    report.note(
      `systemd is not running: start the appliance yourself: ${h.binary} run --config ${h.configFile}`,
    );
    return finish(io, problems, layout);
  }
  if (unitChanged || layout.staged)
    await hostCommand("systemctl", ["daemon-reload"], "run systemctl daemon-reload by hand");
  await hostCommand("systemctl", ["enable", SERVICE_NAME], `see systemctl status ${SERVICE_NAME}`);
  // A running service is restarted only for a new binary or unit (sessions were drained above); a changed
  // config alone is a reload, which live sessions survive; an unchanged install leaves it alone.
  const configChanged =
    c.plan.changes.length > 0 || c.plan.certificate.kind !== "keep" || c.plan.proxyChanged;
  const action = !c.serviceActive
    ? "start"
    : upgrade || unitChanged || c.plan.proxyChanged
      ? "restart"
      : configChanged
        ? "reload"
        : undefined;
  if (action === undefined) {
    report.note(`${SERVICE_NAME} is running this build and configuration already; left running`);
    return finish(io, problems, layout);
  }
  const started = await hostCommand(
    "systemctl",
    [action, SERVICE_NAME],
    `see why: journalctl -u ${SERVICE_NAME} -n 50 --no-pager; check the config: ${h.binary} config check --config ${h.configFile}`,
  );
  if (started && !layout.staged) {
    const health = await adminRequest(adminEndpointFor(c.config.admin, layout.onDisk), "GET", "/healthz");
    if (health.ok && health.status === 200)
      report.done(`${SERVICE_NAME} answers on its admin listener (${c.config.admin.listen})`);
    else
      report.note(
        `the admin listener (${c.config.admin.listen || "disabled"}) does not answer yet; check with: ${PRODUCT_NAME} status`,
      );
  }
  return finish(io, problems, layout);
}

/** admin.tokenFile, created 0600 and owned by the service account unless it holds a token already. */
function ensureInstalledAdminToken(
  admin: Readonly<Config>["admin"],
  layout: InstallLayout,
  owner: Ownership | undefined,
  report: Reporter,
): Problem | undefined {
  if (admin.tokenFile === "" || admin.token !== "") return undefined;
  try {
    const r = ensureAdminTokenFile(layout.onDisk(admin.tokenFile), owner);
    report[r.created ? "done" : "note"](
      `${r.created ? "created" : "kept"} the admin token ${admin.tokenFile} (0600; status, drain and resume read it)`,
    );
    return undefined;
  } catch (e) {
    return fsProblem(`creating the admin token ${admin.tokenFile}`, e);
  }
}

/**
 * Runs a host command and reports it; a failure is collected into `problems` (reported at the end) rather than
 * stopping the install. Staged: printed, never run.
 */
function hostCommandRunner(
  layout: InstallLayout,
  deps: InstallDeps,
  report: Reporter,
  problems: Problem[],
): (cmd: string, args: string[], fix: string) => Promise<boolean> {
  return async (cmd, args, fix) => {
    if (layout.staged) {
      report.would(commandLine(cmd, args));
      return true;
    }
    const r = await deps.run(cmd, args);
    if (r.ok) {
      report.done(commandLine(cmd, args));
      return true;
    }
    problems.push(commandProblem(cmd, args, r, fix));
    report.warn(`${commandLine(cmd, args)} failed (details at the end)`);
    return false;
  };
}

/**
 * Raises the UDP buffer settings now, through /proc/sys (no sysctl tool on a minimal host); systemd-sysctl
 * applies the same file at boot. Staged: said, not done.
 */
function applyKernelSettings(layout: InstallLayout, report: Reporter, problems: Problem[]): void {
  const file = defaultSysctlFile(layout.root);
  if (layout.staged) {
    report.would(
      `raise the kernel settings of ${file ? file.slice(layout.root.length) : layout.host.sysctlFile} through /proc/sys (pcoip-cmsg sysctl)`,
    );
    return;
  }
  if (file === undefined) {
    report.warn(`no ${layout.host.sysctlFile}: UDP buffers left at the kernel default`);
    return;
  }
  const r = applySysctlFile(file);
  if (typeof r === "string") {
    problems.push({ what: "applying the kernel settings", cause: r, fix: `run ${PRODUCT_NAME} sysctl` });
    return;
  }
  for (const o of r) {
    // Not a failed install: the service runs with the kernel's default buffers. In a container /proc/sys is
    // read-only (EACCES/EROFS) and the settings belong to the host.
    if (o.outcome === "failed")
      report.warn(
        `${describeOutcome(o)}; ${o.key === "net.ipv4.ip_forward" ? "media stays in user space (sg.udpFastPath)" : "the service runs with smaller UDP buffers"}. Fix: run ${PRODUCT_NAME} sysctl as root on the host (systemd-sysctl applies ${file.slice(layout.root === "/" ? 0 : layout.root.length)} at every boot)`,
      );
    else if (o.outcome === "absent") report.note(describeOutcome(o));
    else report.done(describeOutcome(o));
  }
}

function fsProblem(what: string, e: unknown): Problem {
  const err = e as NodeJS.ErrnoException;
  return {
    what,
    cause: err.code ? `${err.code}: ${err.message}` : String(err.message ?? e),
    fix:
      err.code === "EACCES" || err.code === "EPERM"
        ? "run as root (sudo)"
        : "check the path and free space, then run install again",
  };
}

function stop(io: CliIo, p: Problem): number {
  io.stderr(`${PRODUCT_NAME} install: ${formatProblem(p)}`);
  return 1;
}

function finish(io: CliIo, problems: readonly Problem[], layout: InstallLayout): number {
  if (problems.length > 0) {
    io.stderr(`${PRODUCT_NAME} install: finished with ${problems.length} failed step(s):\n`);
    for (const p of problems) io.stderr(`  - ${p.what}: ${p.cause}\n    fix: ${p.fix}\n`);
    return 1;
  }
  io.stdout(
    layout.staged
      ? `staged under ${layout.root}; nothing on this host was changed\n`
      : `installed. Check it with: ${PRODUCT_NAME} status, ${PRODUCT_NAME} diagnose\n`,
  );
  return 0;
}

export interface DrainOptions {
  readonly timeoutSeconds: number;
  readonly force: boolean;
  readonly sleep: (ms: number) => Promise<void>;
  /** Seconds between polls of GET /sessions. */
  readonly pollSeconds?: number;
}

/**
 * Before an upgrade restarts the service: counts live sessions (admin GET /sessions; unreachable = none), and
 * unless `force`, puts the node in drain (POST /drain: load balancers see 503 and stop sending new clients) and
 * waits up to `timeoutSeconds` for them to end. Returns the sessions still live when it stopped waiting.
 */
export async function drainForUpgrade(
  admin: AdminEndpoint,
  o: DrainOptions,
  report: Reporter,
): Promise<number> {
  const first = await liveSessions(admin);
  if (!first.reachable) {
    report.note(`no live sessions to drain (admin listener ${admin.listen || "disabled"}: ${first.cause})`);
    return 0;
  }
  if (first.count === 0) {
    report.done("no live sessions");
    return 0;
  }
  if (o.force) {
    report.warn(`${first.count} live session(s) will end with the restart (--force: not waiting)`);
    return first.count;
  }
  const drain = await adminRequest(admin, "POST", "/drain");
  if (!drain.ok || drain.status !== 200)
    report.warn(
      `POST /drain failed (${drain.ok ? `HTTP ${drain.status}` : drain.cause}): new sessions may still start while waiting`,
    );
  else
    report.done(
      `${first.count} live session(s): node put in drain (new clients get 503); waiting up to ${o.timeoutSeconds} s (--force skips this)`,
    );
  const poll = (o.pollSeconds ?? 5) * 1000;
  let waited = 0;
  let count = first.count;
  let lastSaid = 0;
  while (count > 0 && waited < o.timeoutSeconds * 1000) {
    const step = Math.min(poll, o.timeoutSeconds * 1000 - waited);
    await o.sleep(step);
    waited += step;
    const now = await liveSessions(admin);
    count = now.count;
    if (count > 0 && waited - lastSaid >= 30_000) {
      report.note(`${count} session(s) still live after ${Math.round(waited / 1000)} s`);
      lastSaid = waited;
    }
  }
  if (count > 0)
    report.warn(`${count} session(s) still live after ${o.timeoutSeconds} s: they end with the restart`);
  else report.done("every session ended");
  return count;
}
