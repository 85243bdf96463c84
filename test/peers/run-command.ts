/**
 * Runs a command of ours (the CLI from source, the compiled binary) the way an administrator would: a clean
 * environment, output captured, killed by its own handle when it overstays `timeoutMs` (the exit code says so).
 * `compileExecutable` builds that binary the way scripts/build.ts does.
 */
import { readFileSync } from "node:fs";
import { join, resolve } from "node:path";

const REPO = resolve(import.meta.dir, "../..");

export interface Ran {
  readonly code: number;
  readonly out: string;
  readonly err: string;
}

/** The environment without anything that would steer the program (config overrides, proxies, systemd, log level). */
export function cleanEnv(): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (v === undefined || /^PCOIP_CMSG_|^(https?|all|no)_proxy$|^NOTIFY_SOCKET$|^LOG_LEVEL$/i.test(k))
      continue;
    env[k] = v;
  }
  return env;
}

export async function runCommand(
  argv: readonly string[],
  o: { cwd?: string; timeoutMs?: number; stdin?: string } = {},
): Promise<Ran> {
  const proc = Bun.spawn([...argv], {
    ...(o.cwd ? { cwd: o.cwd } : {}),
    env: cleanEnv(),
    stdin: o.stdin === undefined ? "ignore" : new TextEncoder().encode(o.stdin),
    stdout: "pipe",
    stderr: "pipe",
  });
  const timer = setTimeout(() => proc.kill("SIGKILL"), o.timeoutMs ?? 20_000);
  try {
    const [out, err, code] = await Promise.all([
      new Response(proc.stdout).text(),
      new Response(proc.stderr).text(),
      proc.exited,
    ]);
    return { code, out, err };
  } finally {
    clearTimeout(timer);
    if (proc.exitCode === null && proc.signalCode === null) proc.kill("SIGKILL");
  }
}

/**
 * `bun build --compile` of src/main.ts into `outfile` with the flags of scripts/build.ts's compile() (default
 * target only), stamped with package.json's version and `commit`.
 */
export function compileExecutable(outfile: string, commit: string, timeoutMs: number): Promise<Ran> {
  const version = (JSON.parse(readFileSync(join(REPO, "package.json"), "utf8")) as { version: string })
    .version;
  return runCommand(
    [
      process.execPath,
      "build",
      "--compile",
      "--minify",
      "--bytecode",
      `--define=PCOIP_CMSG_VERSION=${JSON.stringify(version)}`,
      `--define=PCOIP_CMSG_COMMIT=${JSON.stringify(commit)}`,
      "src/main.ts",
      // Loaded by `new Worker` (platform/front-door-workers.ts): a compiled executable holds only its entry points.
      "src/net/front-door-worker.ts",
      "--outfile",
      outfile,
    ],
    { cwd: REPO, timeoutMs },
  );
}
