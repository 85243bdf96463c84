/**
 * Runs a command of ours (the CLI from source, the compiled binary) the way an administrator would: a clean
 * environment, output captured, killed by its own handle when it overstays `timeoutMs` (the exit code says so).
 */

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
  o: { cwd?: string; timeoutMs?: number } = {},
): Promise<Ran> {
  const proc = Bun.spawn([...argv], {
    ...(o.cwd ? { cwd: o.cwd } : {}),
    env: cleanEnv(),
    stdin: "ignore",
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
