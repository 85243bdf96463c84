/**
 * What `install`, `uninstall`, `status` and `diagnose` ask of the operating system: free disk and memory, the CPU's
 * AVX2 flag (to pick the baseline build), whether systemd, firewalld and SELinux are active, whether a port is
 * free, the service account — and one runner for every external command, so each failure is reported the same
 * way (what failed, the cause, the fix) and tests can record what would have run.
 */
import { existsSync, readFileSync, statfsSync } from "node:fs";
import { dirname } from "node:path";

/** An expected failure, worded for the administrator. */
export interface Problem {
  readonly what: string;
  readonly cause: string;
  readonly fix: string;
}

export interface CommandResult {
  readonly ok: boolean;
  /** Exit code; null when the command could not be started or was killed. */
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
  /** The program is not installed (ENOENT). */
  readonly missing: boolean;
  readonly timedOut: boolean;
}

export interface RunOptions {
  readonly timeoutMs?: number;
  readonly stdin?: string;
}

/** Runs an external program; never throws. The seam tests replace to record commands. */
export type CommandRunner = (
  cmd: string,
  args: readonly string[],
  opts?: RunOptions,
) => Promise<CommandResult>;

/**
 * @example
 * const r = await runCommand("firewall-cmd", ["--state"]);
 * if (r.missing) … // firewalld not installed
 */
export const runCommand: CommandRunner = async (cmd, args, opts = {}) => {
  const timeoutMs = opts.timeoutMs ?? 120_000;
  let proc: ReturnType<typeof Bun.spawn>;
  try {
    proc = Bun.spawn([cmd, ...args], {
      stdin: opts.stdin === undefined ? "ignore" : new TextEncoder().encode(opts.stdin),
      stdout: "pipe",
      stderr: "pipe",
      timeout: timeoutMs,
      env: { ...process.env, LC_ALL: "C" },
    });
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    return {
      ok: false,
      code: null,
      stdout: "",
      stderr: (e as Error).message,
      missing: code === "ENOENT" || /ENOENT|no such file/i.test(String((e as Error).message)),
      timedOut: false,
    };
  }
  const [stdout, stderr, code] = await Promise.all([
    new Response(proc.stdout as ReadableStream).text(),
    new Response(proc.stderr as ReadableStream).text(),
    proc.exited,
  ]);
  const timedOut = proc.signalCode === "SIGTERM" && code !== 0;
  return { ok: code === 0, code, stdout, stderr, missing: false, timedOut };
};

/** "cmd a b" as the administrator would type it again. */
export function commandLine(cmd: string, args: readonly string[]): string {
  return [cmd, ...args]
    .map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, "'\\''")}'`))
    .join(" ");
}

/** A failed command as a Problem: what ran, what it said, and the fix the caller knows. */
export function commandProblem(cmd: string, args: readonly string[], r: CommandResult, fix: string): Problem {
  const what = `running ${commandLine(cmd, args)}`;
  if (r.missing) return { what, cause: `${cmd} is not installed (not found in PATH)`, fix };
  if (r.timedOut) return { what, cause: "it did not finish in time and was stopped", fix };
  const said = (r.stderr.trim() || r.stdout.trim()).split("\n").slice(-3).join(" / ");
  return { what, cause: `exit code ${r.code ?? "none"}${said ? `: ${said}` : ""}`, fix };
}

export function formatProblem(p: Problem): string {
  return `${p.what}: ${p.cause}\n  fix: ${p.fix}\n`;
}

/** Free bytes for an unprivileged writer on the filesystem holding `path` (or its nearest existing parent). */
export function freeDiskBytes(path: string): number | undefined {
  let p = path;
  while (!existsSync(p)) {
    const up = dirname(p);
    if (up === p) return undefined;
    p = up;
  }
  try {
    const s = statfsSync(p);
    return Number(s.bavail) * Number(s.bsize);
  } catch {
    return undefined;
  }
}

export interface MemoryInfo {
  readonly totalBytes: number;
  readonly availableBytes: number;
}

/** From /proc/meminfo (MemAvailable counts reclaimable cache, unlike os.freemem). */
export function memoryInfo(meminfo?: string): MemoryInfo | undefined {
  let text = meminfo;
  if (text === undefined) {
    try {
      text = readFileSync("/proc/meminfo", "utf8");
    } catch {
      return undefined;
    }
  }
  const kb = (name: string) => {
    const m = new RegExp(`^${name}:\\s+(\\d+)\\s*kB`, "m").exec(text!);
    return m ? Number(m[1]) * 1024 : undefined;
  };
  const total = kb("MemTotal");
  if (total === undefined) return undefined;
  return { totalBytes: total, availableBytes: kb("MemAvailable") ?? kb("MemFree") ?? 0 };
}

/**
 * Whether the CPU has AVX2: the default build needs it; without it the x64-baseline build must be installed.
 * undefined when unknown (not x64, or no /proc/cpuinfo): the default build is used.
 */
export function cpuHasAvx2(cpuinfo?: string, arch: string = process.arch): boolean | undefined {
  if (arch !== "x64") return undefined;
  let text = cpuinfo;
  if (text === undefined) {
    try {
      text = readFileSync("/proc/cpuinfo", "utf8");
    } catch {
      return undefined;
    }
  }
  const flags = /^flags\s*:(.*)$/m.exec(text);
  if (!flags) return undefined;
  return flags[1]!.split(/\s+/).includes("avx2");
}

/** sd_booted(3): systemd is PID 1 exactly when /run/systemd/system exists. */
export function systemdRunning(): boolean {
  return existsSync("/run/systemd/system");
}

export type FirewalldState = "running" | "not running" | "absent";

export async function firewalldState(run: CommandRunner): Promise<FirewalldState> {
  const r = await run("firewall-cmd", ["--state"], { timeoutMs: 15_000 });
  if (r.missing) return "absent";
  return r.ok && r.stdout.trim() === "running" ? "running" : "not running";
}

export type SelinuxState = "enforcing" | "permissive" | "disabled";

/** From selinuxfs (what getenforce reads); no selinuxfs = disabled. */
export function selinuxState(selinuxfs = "/sys/fs/selinux"): SelinuxState {
  try {
    return readFileSync(`${selinuxfs}/enforce`, "utf8").trim() === "1" ? "enforcing" : "permissive";
  } catch {
    return "disabled";
  }
}

export type PortProbe = { readonly free: true } | { readonly free: false; readonly cause: string };

/**
 * Whether `hostname:port` can be bound now (bind, then close at once). EADDRINUSE means another process listens;
 * EADDRNOTAVAIL means the address is not on this host (a listen address typed wrong).
 */
export async function portFree(hostname: string, port: number, protocol: "tcp" | "udp"): Promise<PortProbe> {
  try {
    if (protocol === "tcp") {
      const l = Bun.listen({ hostname, port, socket: { data() {} } });
      l.stop(true);
    } else {
      const s = await Bun.udpSocket({ hostname, port, socket: { data() {}, error() {} } });
      s.close();
    }
    return { free: true };
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? "";
    const msg = (e as Error).message;
    if (code === "EADDRINUSE" || /in use/i.test(msg))
      return {
        free: false,
        cause: `${protocol.toUpperCase()} ${hostname}:${port} is already in use by another process`,
      };
    if (code === "EADDRNOTAVAIL" || /not available|cannot assign/i.test(msg))
      return { free: false, cause: `${hostname} is not an address of this host` };
    return { free: false, cause: `binding ${protocol.toUpperCase()} ${hostname}:${port}: ${code || msg}` };
  }
}

export interface SystemUser {
  readonly uid: number;
  readonly gid: number;
  readonly home: string;
}

/** The account from the name service (local files, LDAP/SSSD alike); undefined when it does not exist. */
export async function lookupUser(run: CommandRunner, name: string): Promise<SystemUser | undefined> {
  const r = await run("getent", ["passwd", name], { timeoutMs: 15_000 });
  if (!r.ok) return undefined;
  const f = r.stdout.trim().split(":");
  if (f.length < 6) return undefined;
  return { uid: Number(f[2]), gid: Number(f[3]), home: f[5]! };
}

/** The arguments of `useradd` for the service account: system range, no login, no home created. */
export function useraddArgs(name: string, home: string): string[] {
  return [
    "--system",
    "--user-group",
    "--no-create-home",
    "--home-dir",
    home,
    "--shell",
    "/sbin/nologin",
    "--comment",
    "pcoip-cmsg service",
    name,
  ];
}

/** Creates the service account when missing. */
export async function ensureSystemUser(
  run: CommandRunner,
  name: string,
  home: string,
): Promise<{ ok: true; user: SystemUser; created: boolean } | { ok: false; error: Problem }> {
  const existing = await lookupUser(run, name);
  if (existing) return { ok: true, user: existing, created: false };
  const args = useraddArgs(name, home);
  const r = await run("useradd", args);
  if (!r.ok)
    return {
      ok: false,
      error: commandProblem(
        "useradd",
        args,
        r,
        `create the account by hand (useradd ${args.join(" ")}) and run install again`,
      ),
    };
  const user = await lookupUser(run, name);
  if (!user)
    return {
      ok: false,
      error: {
        what: `looking up the new account ${name}`,
        cause: "useradd succeeded but getent passwd does not find it",
        fix: "check /etc/nsswitch.conf (passwd: files …) and run install again",
      },
    };
  return { ok: true, user, created: true };
}

/** Current value of a sysctl from /proc/sys, or undefined. */
export function readSysctl(name: string): number | undefined {
  try {
    const v = Number(readFileSync(`/proc/sys/${name.replace(/\./g, "/")}`, "utf8").trim());
    return Number.isFinite(v) ? v : undefined;
  } catch {
    return undefined;
  }
}
