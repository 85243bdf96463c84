/**
 * The assembled appliance as the CM benchmarks run it: `pcoip-cmsg run --config FILE` (the compiled
 * dist/pcoip-cmsg when asked, else `bun src/main.ts run`), from a generated TOML in a bench work folder, started
 * through the bench's ProcessSet. Listeners are on 127.0.0.1 with port 0 except admin (a free port chosen here,
 * so start-up can be timed by polling /readyz); the real ports come from the start-up listener log lines.
 */
import { existsSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { hashPassword, writeUsersFile } from "../../src/cm/auth/local-users.ts";
import { freePort } from "./net.ts";
import type { Child, ProcessSet } from "./processes.ts";
import { workDir } from "./tools.ts";

const MAIN = resolve(import.meta.dir, "../../src/main.ts");
export const BINARY = resolve(import.meta.dir, "../../dist/pcoip-cmsg");

export interface ApplianceOptions {
  /** Names the work folder and the process. */
  readonly name: string;
  readonly certFile: string;
  readonly keyFile: string;
  /** Trust anchor for the broker's certificate (brokerCertCheck stays on, as installed). */
  readonly caCertFile: string;
  /** "" = the built-in broker (one local user, no desktops); else the upstream broker's https URL. */
  readonly brokerUrl?: string;
  /** Run dist/pcoip-cmsg instead of `bun src/main.ts`. */
  readonly binary?: boolean;
  /** Extra keys of the [cm] and [sg] tables (numbers and strings, written as TOML values). */
  readonly cm?: Readonly<Record<string, number | string>>;
  readonly sg?: Readonly<Record<string, number | string>>;
  /** TOML appended as is (e.g. an [ldap] table and [[desktops]] for the built-in broker). */
  readonly extraToml?: string;
  /**
   * Log lines go to this file instead of a pipe to the bench. Under load the bench process (also the load
   * generator) reads the pipe late; once its 64 KiB are full the appliance's synchronous log write waits, and the
   * bench would measure its own reading. A file stands for journald, which reads at once.
   */
  readonly logFile?: string;
  /** Default "info", as installed (the listener lines that give the ports are info). */
  readonly logLevel?: "info" | "debug";
  /** argv prefix, e.g. ["prlimit", "--nofile=40000:40000", "--"] to raise the descriptor limit. */
  readonly wrap?: readonly string[];
}

export interface ApplianceRun {
  readonly child: Child;
  readonly pid: number;
  readonly cmPort: number;
  readonly sgTcpPort: number;
  readonly adminPort: number;
  readonly configFile: string;
}

const tomlValue = (v: number | string) => (typeof v === "number" ? String(v) : JSON.stringify(v));
const table = (name: string, keys: Readonly<Record<string, number | string>>) =>
  [`[${name}]`, ...Object.entries(keys).map(([k, v]) => `${k} = ${tomlValue(v)}`)].join("\n");

/** Writes the config (and a one-user users file) into the run's work folder; returns the config path. */
export async function writeApplianceConfig(o: ApplianceOptions, adminPort: number): Promise<string> {
  const dir = workDir(`appliance-${o.name}`);
  const usersFile = join(dir, "users");
  await writeUsersFile(usersFile, [{ name: "bench", hash: await hashPassword("bench") }]);
  const toml = [
    `logLevel = "${o.logLevel ?? "info"}"`,
    'externalPcoipIp = ["127.0.0.1"]',
    'hostAddress = ["localhost"]',
    'domains = ["bench.test"]',
    `brokerUrl = ${JSON.stringify(o.brokerUrl ?? "")}`,
    `usersFile = ${JSON.stringify(usersFile)}`,
    `dataDir = ${JSON.stringify(join(dir, "data"))}`,
    "drainSeconds = 1",
    "",
    table("tls", { cert: o.certFile, key: o.keyFile, caCert: o.caCertFile }),
    "",
    // One load generator at one address stands for many clients at many: the per-IP caps (issue 16) are lifted
    // unless a bench sets them, or every bench would measure them instead of the CM.
    table("cm", {
      listen: "__CM__",
      redirectListen: "__REDIRECT__",
      maxConnectionsPerIp: 1_000_000,
      maxPreSessionsPerIp: 1_000_000,
      maxPasswordChecksPerIp: 10_000,
      ...o.cm,
    }),
    "",
    // The benches' agents are on loopback, which sg.agentNetworks never holds by default.
    table("sg", { tcpListen: "__SGT__", udpListen: "__SGU__", agentNetworks: "__AGENTNETS__", ...o.sg }),
    "",
    table("admin", { listen: `127.0.0.1:${adminPort}` }),
    "",
    o.extraToml ?? "",
  ]
    .join("\n")
    // Listener lists are TOML arrays; table() writes scalars only.
    .replace('"__CM__"', '["127.0.0.1:0"]')
    .replace('"__REDIRECT__"', "[]")
    .replace('"__SGT__"', '["127.0.0.1:0"]')
    .replace('"__SGU__"', '["127.0.0.1:0"]')
    .replace('"__AGENTNETS__"', '["127.0.0.0/8", "::1/128"]');
  const file = join(dir, "pcoip-cmsg.toml");
  writeFileSync(file, toml);
  return file;
}

/** The argv that runs the appliance with `configFile`. */
export function applianceArgv(
  o: Pick<ApplianceOptions, "binary" | "wrap" | "name">,
  configFile: string,
): string[] {
  // BENCH_CM_PROFILE=1: a CPU profile of the appliance (bun --cpu-prof, written when it exits) in bench/.work/prof.
  const prof =
    process.env.BENCH_CM_PROFILE === "1"
      ? [
          "--cpu-prof",
          "--cpu-prof-md",
          `--cpu-prof-dir=${workDir("prof")}`,
          `--cpu-prof-name=${o.name}.cpuprofile`,
        ]
      : [];
  const run = o.binary ? [BINARY] : [process.execPath, ...prof, MAIN];
  return [...(o.wrap ?? []), ...run, "run", "--config", configFile];
}

/** Environment without inherited PCOIP_CMSG_* overrides or proxies: the appliance sees only the bench's config. */
export function cleanEnv(): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (v === undefined || /^PCOIP_CMSG_|^(https?|all|no)_proxy$|^NOTIFY_SOCKET$|^LOG_LEVEL$/i.test(k))
      continue;
    env[k] = v;
  }
  return env;
}

/** Starts the appliance and resolves once every listener is bound (the admin listener line comes last). */
export async function startApplianceRun(procs: ProcessSet, o: ApplianceOptions): Promise<ApplianceRun> {
  const adminPort = await freePort("tcp");
  const configFile = await writeApplianceConfig(o, adminPort);
  // The listener lines are logged at info: a run at "warn" never reports its ports.
  const argv = applianceArgv(o, configFile);
  // A previous run's file would give its ports before the shell truncates it.
  if (o.logFile) rmSync(o.logFile, { force: true });
  const child = o.logFile
    ? procs.spawn(`appliance (${o.name})`, ["sh", "-c", 'exec "$0" "$@" >"$BENCH_LOG_FILE" 2>&1', ...argv], {
        env: { ...cleanEnv(), BENCH_LOG_FILE: o.logFile },
      })
    : procs.spawn(`appliance (${o.name})`, argv, { env: cleanEnv() });
  const logFile = o.logFile;
  const waitLine = logFile
    ? async (match: (l: string) => boolean) => {
        for (let waited = 0; waited < 30_000; waited += 50) {
          const found = (existsSync(logFile) ? readFileSync(logFile, "utf8") : "").split("\n").find(match);
          if (found) return found;
          await Bun.sleep(50);
        }
        throw new Error(`appliance (${o.name}): no matching line in ${logFile} within 30 s`);
      }
    : (match: (l: string) => boolean) => child.waitForLine(match, 30_000);
  const port = async (listener: string) => {
    const line = await waitLine((l) => l.includes(`"listener":"${listener}"`));
    const address = String((JSON.parse(line) as { address: string }).address);
    return Number(address.slice(address.lastIndexOf(":") + 1));
  };
  const [cmPort, sgTcpPort] = await Promise.all([port("cm"), port("sg-tcp"), port("admin")]);
  return { child, pid: child.pid, cmPort, sgTcpPort, adminPort, configFile };
}

/** Resident set size of a process in bytes (VmRSS), 0 when it is gone. */
export function rssBytes(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}
