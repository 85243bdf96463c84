/**
 * What the package tests share: the executable compiled once per test file (default target; a copy stands in for
 * the x64-baseline build, which this CPU runs too), packages built from it by scripts/package.ts, and a minimal
 * Debian 12 root filesystem (debootstrap --variant=minbase, with systemd) cached between runs outside the
 * repository. Each test works on its own overlay of that root, in its own mount, PID, network, UTS and IPC
 * namespaces, so neither the rpm/dpkg database, the users nor the kernel settings of this machine are touched.
 */
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { join, resolve } from "node:path";
import { cleanEnv, compileExecutable, type Ran, runCommand } from "../peers/run-command.ts";

export const REPO = resolve(import.meta.dir, "../..");
export const VERSION = (JSON.parse(readFileSync(join(REPO, "package.json"), "utf8")) as { version: string })
  .version;
/** Outside the repository, kept between runs (CI's machine keeps it too; a new machine rebuilds it in ~1 min). */
export const CACHE = process.env.PCOIP_CMSG_TEST_CACHE ?? "/var/cache/pcoip-cmsg-test";
const ROOT = join(CACHE, "bookworm-systemd");

/** Runs `argv` from the repository (unless `cwd`) with a clean environment; 120 s unless `timeoutMs`. */
export function sh(
  argv: string[],
  o: { timeoutMs?: number; cwd?: string; stdin?: string } = {},
): Promise<Ran> {
  return runCommand(argv, { ...o, cwd: o.cwd ?? REPO, timeoutMs: o.timeoutMs ?? 120_000 });
}

/** Why these tests cannot run here, or undefined. Under CI=true the caller fails instead of skipping. */
export function cannotRun(tools: readonly string[]): string | undefined {
  if (process.getuid?.() !== 0) return "not root: mounting an overlay and making namespaces need root";
  for (const t of ["unshare", "nsenter", "mount", "debootstrap", ...tools])
    if (!Bun.which(t)) return `${t} is not installed (bash scripts/system-deps.sh installs it)`;
  return undefined;
}

/** Compiles the executable into `dir` (pcoip-cmsg, plus a copy as pcoip-cmsg-baseline). */
export async function buildExecutables(dir: string): Promise<void> {
  mkdirSync(dir, { recursive: true });
  const r = await compileExecutable(join(dir, "pcoip-cmsg"), "pkgtest", 170_000);
  if (r.code !== 0) throw new Error(`bun build --compile exited ${r.code}: ${r.err}`);
  const cp = await sh(["cp", join(dir, "pcoip-cmsg"), join(dir, "pcoip-cmsg-baseline")]);
  if (cp.code !== 0) throw new Error(cp.err);
}

/** Runs scripts/package.ts; returns the package file. */
export async function buildPackage(
  binDir: string,
  out: string,
  kind: "rpm" | "deb",
  release: string,
): Promise<string> {
  const r = await sh(
    [
      process.execPath,
      "scripts/package.ts",
      "--bin-dir",
      binDir,
      "--out",
      out,
      "--only",
      kind,
      "--release",
      release,
      "--fast",
    ],
    { timeoutMs: 170_000 },
  );
  if (r.code !== 0) throw new Error(`npm run package exited ${r.code}:\n${r.out}\n${r.err}`);
  const file = join(
    out,
    kind === "rpm"
      ? `pcoip-cmsg-${VERSION}-${release}.x86_64.rpm`
      : `pcoip-cmsg_${VERSION}-${release}_amd64.deb`,
  );
  if (!existsSync(file)) throw new Error(`${file} was not built:\n${r.out}`);
  return file;
}

/** The mirror apt uses here (so the test names no host of its own). */
function debianMirror(): string {
  for (const f of [
    "/etc/apt/sources.list",
    ...listDir("/etc/apt/sources.list.d").map((n) => `/etc/apt/sources.list.d/${n}`),
  ]) {
    const text = existsSync(f) ? readFileSync(f, "utf8") : "";
    const m =
      /^URIs:\s*(\S+\/debian)\/?\s*$/m.exec(text) ??
      /^deb\s+(?:\[[^\]]*\]\s+)?(\S+\/debian)\/?\s/m.exec(text);
    if (m) return m[1]!;
  }
  throw new Error("no Debian mirror in /etc/apt/sources.list(.d): debootstrap needs one");
}

function listDir(d: string): string[] {
  try {
    return readdirSync(d);
  } catch {
    return [];
  }
}

/**
 * The cached minimal Debian 12 root with systemd (built on first use under a lock, so parallel test files wait
 * for one debootstrap instead of racing).
 */
export async function debianRoot(): Promise<string> {
  mkdirSync(CACHE, { recursive: true });
  if (existsSync(join(ROOT, "lib/systemd/systemd"))) return ROOT;
  const script = `set -e
if [ ! -e '${ROOT}/lib/systemd/systemd' ]; then
  rm -rf '${ROOT}.tmp'
  debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus bookworm '${ROOT}.tmp' '${debianMirror()}' >'${CACHE}/debootstrap.log' 2>&1 || { tail -20 '${CACHE}/debootstrap.log' >&2; exit 1; }
  rm -rf '${ROOT}'
  mv '${ROOT}.tmp' '${ROOT}'
fi`;
  const r = await sh(["flock", join(CACHE, ".lock"), "sh", "-c", script], { timeoutMs: 600_000 });
  if (r.code !== 0) throw new Error(`debootstrap of the test root failed:\n${r.err}`);
  return ROOT;
}

/** A writable copy-on-write view of the cached root, mounted at `merged`. */
export class OverlayRoot {
  readonly dir: string;
  readonly merged: string;
  private constructor(dir: string) {
    this.dir = dir;
    this.merged = join(dir, "merged");
  }

  static async create(lower: string, prefix: string): Promise<OverlayRoot> {
    const runs = join(CACHE, "runs");
    mkdirSync(runs, { recursive: true });
    const o = new OverlayRoot(mkdtempSync(join(runs, `${prefix}-`)));
    for (const d of ["upper", "work", "merged"]) mkdirSync(join(o.dir, d));
    const r = await sh([
      "mount",
      "-t",
      "overlay",
      "overlay",
      "-o",
      `lowerdir=${lower},upperdir=${join(o.dir, "upper")},workdir=${join(o.dir, "work")}`,
      o.merged,
    ]);
    if (r.code !== 0) {
      rmSync(o.dir, { recursive: true, force: true });
      throw new Error(`mounting the overlay failed: ${r.err}`);
    }
    return o;
  }

  /**
   * Runs a shell script on this machine in new mount, PID, network, UTS and IPC namespaces, with /proc mounted in
   * the root (for chroot'ed scriptlets): sysctl writes land in the namespace's own network stack.
   */
  inNamespaces(script: string, timeoutMs = 120_000): Promise<Ran> {
    return sh(
      [
        "unshare",
        "--mount",
        "--pid",
        "--fork",
        "--net",
        "--uts",
        "--ipc",
        "sh",
        "-c",
        `set -e; mount --make-rprivate /; mount -t proc proc '${this.merged}/proc'; R='${this.merged}'; set +e\n${script}`,
      ],
      { timeoutMs },
    );
  }

  async dispose(): Promise<void> {
    await sh(["umount", "-l", this.merged]);
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** The child of `pid` that runs systemd, or 0. */
function systemdChild(pid: number): number {
  try {
    for (const c of readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim().split(" ")) {
      if (c === "") continue;
      const cmd = readFileSync(`/proc/${c}/cmdline`, "utf8");
      if (cmd.startsWith("/lib/systemd/systemd\0")) return Number(c);
    }
  } catch {}
  return 0;
}

/**
 * A minimal Debian 12 booted with systemd as PID 1 on an overlay of the cached root, in new PID, mount, UTS, IPC,
 * network and cgroup namespaces (each cgroup hierarchy gets a fresh child group first, so the guest's systemd
 * manages its own subtree and nothing of this machine's). systemd-nspawn does not work here; this does.
 * `unshare --kill-child`: when the launcher dies for any reason, PID 1 and so the whole namespace die with it.
 */
export class BootedSystem {
  private constructor(
    readonly root: OverlayRoot,
    private readonly launcher: ReturnType<typeof Bun.spawn>,
    readonly pid1: number,
    private readonly cgroupName: string,
  ) {}

  static async boot(root: OverlayRoot): Promise<BootedSystem> {
    const cgroupName = `pkg-boot-${Math.random().toString(36).slice(2, 10)}`;
    const script = `set -e
lines=$(cat /proc/self/cgroup)
echo "$lines" | while IFS=: read -r id ctrl path; do
  case "$ctrl" in cpuset) continue ;; "") d=/sys/fs/cgroup/unified ;; *) d=/sys/fs/cgroup/\${ctrl#name=} ;; esac
  [ -d "$d$path" ] || continue
  mkdir -p "$d$path/${cgroupName}" && echo $$ >"$d$path/${cgroupName}/cgroup.procs" || true
done
exec unshare --kill-child --pid --fork --mount --uts --ipc --net --cgroup sh -c 'mount --make-rprivate / && exec chroot "${root.merged}" /usr/bin/env -i container=pcoip-cmsg-test /lib/systemd/systemd --system'`;
    // systemd's console output goes to a file: an unread pipe would fill and stall PID 1.
    const consoleLog = join(root.dir, "console.log");
    const launcher = Bun.spawn(["sh", "-c", script], {
      stdin: "ignore",
      stdout: Bun.file(consoleLog),
      stderr: Bun.file(consoleLog),
      env: cleanEnv(),
    });
    // PID 1 is unshare's child once it has exec'd systemd (earlier children of the launcher are cat and mkdir).
    let pid1 = 0;
    for (let i = 0; i < 300 && pid1 === 0 && launcher.exitCode === null; i++) {
      await Bun.sleep(100);
      pid1 = systemdChild(launcher.pid);
    }
    const booted = new BootedSystem(root, launcher, pid1, cgroupName);
    if (pid1 === 0) {
      await booted.shutdown();
      throw new Error(
        `systemd did not start in the namespaces: ${existsSync(consoleLog) ? readFileSync(consoleLog, "utf8").slice(-2000) : ""}`,
      );
    }
    // Wait until the system has finished booting (running or degraded); slow on 2 busy cores.
    let said = "";
    for (let i = 0; i < 120; i++) {
      said = (await booted.exec(["systemctl", "is-system-running"])).out.trim();
      if (/^(running|degraded)/.test(said)) return booted;
      await Bun.sleep(500);
    }
    await booted.shutdown();
    throw new Error(`the booted system did not reach running within 60 s (is-system-running: ${said})`);
  }

  /** Runs a command inside the booted system (its namespaces and root). */
  exec(argv: string[], timeoutMs = 120_000): Promise<Ran> {
    return sh(
      [
        "nsenter",
        "-t",
        String(this.pid1),
        "-m",
        "-p",
        "-u",
        "-i",
        "-n",
        "-r",
        "-w",
        "/usr/bin/env",
        "-i",
        "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG=C.UTF-8",
        ...argv,
      ],
      { timeoutMs },
    );
  }

  /** Kills PID 1 (and so the whole PID namespace), then removes the cgroups it made. */
  async shutdown(): Promise<void> {
    if (this.pid1 > 0) {
      try {
        process.kill(this.pid1, "SIGKILL");
      } catch {}
    }
    this.launcher.kill("SIGKILL");
    await this.launcher.exited;
    await Bun.sleep(300);
    await sh([
      "sh",
      "-c",
      `for d in /sys/fs/cgroup/*/; do find "$d" -depth -type d -path "*/${this.cgroupName}*" -exec rmdir {} + 2>/dev/null; done; true`,
    ]);
  }
}
