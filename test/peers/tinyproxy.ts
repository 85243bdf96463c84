/**
 * A real forward proxy for the upstream-broker tests: Debian's tinyproxy on a loopback port, started in the
 * foreground (`-d`) from a generated config — basic auth (user/password), CONNECT allowed only to the ports the
 * test names (the broker's), clients only from 127.0.0.1 — and stopped by the test. Its log (stdout) is kept
 * so a test can show which CONNECTs went through it.
 *
 * Needs the `tinyproxy` package (scripts/system-deps.sh installs it); tests skip with `tinyproxyMissing()`.
 */
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { connect, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

export const TINYPROXY_BIN = "/usr/bin/tinyproxy";

export interface TinyproxyOptions {
  /** Ports CONNECT may reach (tinyproxy's ConnectPort); the broker's port. */
  readonly connectPorts: readonly number[];
  /** Basic-auth account; omit both for an open proxy. */
  readonly username?: string;
  readonly password?: string;
}

export interface TinyproxyPeer {
  readonly host: string;
  readonly port: number;
  /** http://127.0.0.1:PORT (no credentials). */
  readonly url: string;
  readonly pid: number;
  /** tinyproxy's log so far. */
  log(): string;
  /** CONNECT requests tinyproxy logged, as "host:port". */
  connects(): string[];
  stop(): Promise<void>;
}

/** Why tinyproxy cannot run here, or undefined when it can (tests skip with this message). */
export function tinyproxyMissing(): string | undefined {
  return existsSync(TINYPROXY_BIN)
    ? undefined
    : `${TINYPROXY_BIN} not found: run scripts/system-deps.sh (or apt-get install tinyproxy)`;
}

/** Starts tinyproxy; retries when the chosen free port was taken meanwhile. */
export async function startTinyproxy(opts: TinyproxyOptions): Promise<TinyproxyPeer> {
  const missing = tinyproxyMissing();
  if (missing) throw new Error(`starting tinyproxy: ${missing}`);
  for (const v of [opts.username, opts.password]) {
    // tinyproxy's config grammar takes nothing else in BasicAuth (no quoting).
    if (v !== undefined && !/^[A-Za-z0-9._-]+$/.test(v)) {
      throw new Error(
        `starting tinyproxy: BasicAuth accepts only letters, digits, ".", "_" and "-" (got ${JSON.stringify(v)})`,
      );
    }
  }
  let last: unknown;
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      return await startOnce(opts);
    } catch (e) {
      last = e;
    }
  }
  throw last;
}

async function startOnce(opts: TinyproxyOptions): Promise<TinyproxyPeer> {
  const dir = mkdtempSync(join(tmpdir(), "pcoip-cmsg-tinyproxy-"));
  const port = await freePort();
  const host = "127.0.0.1";
  const lines = [
    // As root tinyproxy must drop to an unprivileged account; as a user it keeps its own.
    ...(process.getuid?.() === 0 ? ["User nobody", "Group nogroup"] : []),
    `Port ${port}`,
    `Listen ${host}`,
    "Timeout 30",
    "LogLevel Info",
    "MaxClients 50",
    `Allow ${host}`,
    "DisableViaHeader Yes",
    ...opts.connectPorts.map((p) => `ConnectPort ${p}`),
    ...(opts.username !== undefined ? [`BasicAuth ${opts.username} ${opts.password ?? ""}`] : []),
  ];
  const conf = join(dir, "tinyproxy.conf");
  writeFileSync(conf, `${lines.join("\n")}\n`);
  const proc = Bun.spawn([TINYPROXY_BIN, "-d", "-c", conf], { stdout: "pipe", stderr: "pipe" });
  let output = "";
  const collect = async (stream: ReadableStream<Uint8Array>) => {
    const decoder = new TextDecoder();
    for await (const chunk of stream) output += decoder.decode(chunk, { stream: true });
  };
  const collecting = Promise.all([collect(proc.stdout), collect(proc.stderr)]);
  let stopped = false;
  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    proc.kill("SIGTERM");
    const timer = setTimeout(() => proc.kill("SIGKILL"), 5000);
    await proc.exited;
    clearTimeout(timer);
    await collecting.catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    await waitListening(host, port, proc.exited, () => output);
  } catch (e) {
    await stop();
    throw e;
  }
  return {
    host,
    port,
    url: `http://${host}:${port}`,
    pid: proc.pid,
    log: () => output,
    connects: () =>
      [...output.matchAll(/Request \(file descriptor \d+\): CONNECT (\S+) HTTP/g)].map((m) => m[1]!),
    stop,
  };
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      const port = typeof addr === "object" && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

async function waitListening(
  host: string,
  port: number,
  exited: Promise<number>,
  output: () => string,
): Promise<void> {
  let gone = false;
  void exited.then(() => {
    gone = true;
  });
  const deadline = Date.now() + 5000;
  while (Date.now() < deadline) {
    if (gone) throw new Error(`tinyproxy exited before listening: ${output().slice(-500)}`);
    const up = await new Promise<boolean>((resolve) => {
      const s = connect({ host, port });
      s.once("connect", () => {
        s.destroy();
        resolve(true);
      });
      s.once("error", () => resolve(false));
    });
    if (up) return;
    await Bun.sleep(50);
  }
  throw new Error(`tinyproxy did not listen on ${host}:${port} within 5 s: ${output().slice(-500)}`);
}
