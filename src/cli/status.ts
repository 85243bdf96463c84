/**
 * `pcoip-cmsg status`: what is installed (version, rollback binary), what systemd says about the service, and —
 * when the admin listener answers — /healthz, /readyz and the number of live sessions. Also home of the small
 * admin-listener client that `install` uses to count and drain sessions before an upgrade.
 * Exit codes follow LSB `status`: 0 running, 3 not running, 4 not installed.
 */
import { existsSync, readFileSync } from "node:fs";
import { connect } from "node:net";
import { loadConfig } from "../config/load.ts";
import { parseListen } from "../config/schema.ts";
import { adminTokenOf } from "../observability/admin-token.ts";
import { type CommandRunner, runCommand, systemdRunning } from "../platform/host.ts";
import { installLayout, packagedBy, SERVICE_NAME } from "../platform/paths.ts";
import { PRODUCT_NAME } from "../version.ts";
import { type FlagSpec, flagString, formatFlags, parseCommandArgs } from "./args.ts";
import { binaryVersion } from "./bundle.ts";
import type { CliIo, CommandMain } from "./io.ts";

export interface AdminEndpoint {
  /** admin.listen: "127.0.0.1:8099"; a wildcard address is reached through loopback. */
  readonly listen: string;
  /** The bearer token ("" = none: /sessions and POST calls will be refused, see `tokenProblem`). */
  readonly token: string;
  /** Why there is no token (the token file is missing or unreadable), for the CLI's messages. */
  readonly tokenProblem?: string;
}

/**
 * The admin endpoint of a parsed config: its listener and the token of admin.tokenFile (or admin.token), read
 * where this process sees the file (`onDisk`: under --root DIR for a staged layout).
 */
export function adminEndpointFor(
  admin: { readonly listen: string; readonly token: string; readonly tokenFile: string },
  onDisk: (hostPath: string) => string = (p) => p,
): AdminEndpoint {
  const t = adminTokenOf(admin, onDisk);
  return t.ok
    ? { listen: admin.listen, token: t.token }
    : { listen: admin.listen, token: "", tokenProblem: t.cause };
}

export type AdminAnswer =
  | { readonly ok: true; readonly status: number; readonly body: string }
  | { readonly ok: false; readonly cause: string };

/**
 * One HTTP/1.1 request to the admin listener over a plain TCP socket: no proxy can get in the way (Bun's fetch
 * honours HTTP(S)_PROXY), and "unreachable" is a value, not a throw.
 *
 * @example
 * const r = await adminRequest({ listen: "127.0.0.1:8099", token: "" }, "GET", "/sessions");
 * if (r.ok && r.status === 200) JSON.parse(r.body).length;
 */
export function adminRequest(
  admin: AdminEndpoint,
  method: "GET" | "POST",
  path: string,
  timeoutMs = 3000,
): Promise<AdminAnswer> {
  const a = parseListen(admin.listen);
  if (!a || admin.listen === "")
    return Promise.resolve({ ok: false, cause: "admin.listen is disabled or invalid" });
  const host = a.hostname === "0.0.0.0" ? "127.0.0.1" : a.hostname === "::" ? "::1" : a.hostname;
  const hostHeader = host.includes(":") ? `[${host}]:${a.port}` : `${host}:${a.port}`;
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let settled = false;
    const done = (r: AdminAnswer) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      resolve(r);
    };
    const socket = connect({ host, port: a.port });
    const timer = setTimeout(
      () => done({ ok: false, cause: `no answer from ${hostHeader} within ${timeoutMs} ms` }),
      timeoutMs,
    );
    socket.on("connect", () => {
      socket.write(
        `${method} ${path} HTTP/1.1\r\nHost: ${hostHeader}\r\nConnection: close\r\nContent-Length: 0\r\n` +
          `${admin.token ? `Authorization: Bearer ${admin.token}\r\n` : ""}\r\n`,
      );
    });
    socket.on("data", (d: Buffer) => chunks.push(d));
    socket.on("error", (e: NodeJS.ErrnoException) =>
      done({ ok: false, cause: `${hostHeader}: ${e.code ?? e.message}` }),
    );
    socket.on("close", () => {
      const parsed = parseHttpResponse(Buffer.concat(chunks));
      done(parsed ?? { ok: false, cause: `${hostHeader} closed the connection without an HTTP answer` });
    });
  });
}

/** Status and body of a whole HTTP/1.1 response (Content-Length, chunked or read-to-close). */
export function parseHttpResponse(buf: Buffer): { ok: true; status: number; body: string } | undefined {
  const end = buf.indexOf("\r\n\r\n");
  if (end < 0) return undefined;
  const head = buf.subarray(0, end).toString("latin1");
  const m = /^HTTP\/1\.[01] (\d{3})/.exec(head);
  if (!m) return undefined;
  let body = buf.subarray(end + 4);
  if (/^transfer-encoding:\s*chunked/im.test(head)) {
    const parts: Buffer[] = [];
    let at = 0;
    for (;;) {
      const eol = body.indexOf("\r\n", at);
      if (eol < 0) break;
      const size = Number.parseInt(body.subarray(at, eol).toString("latin1"), 16);
      if (!Number.isFinite(size) || size === 0) break;
      parts.push(body.subarray(eol + 2, eol + 2 + size));
      at = eol + 2 + size + 2;
    }
    body = Buffer.concat(parts);
  }
  return { ok: true, status: Number(m[1]), body: body.toString("utf8") };
}

/** Live sessions per the admin listener; unreachable counts as zero (no service, nothing to drain). */
export async function liveSessions(
  admin: AdminEndpoint,
): Promise<{ count: number; reachable: boolean; cause?: string }> {
  const r = await adminRequest(admin, "GET", "/sessions");
  if (!r.ok) return { count: 0, reachable: false, cause: r.cause };
  if (r.status !== 200)
    return {
      count: 0,
      reachable: false,
      cause: `GET /sessions answered HTTP ${r.status}${r.status === 401 && admin.tokenProblem ? ` (no admin token: ${admin.tokenProblem})` : ""}`,
    };
  try {
    const list = JSON.parse(r.body) as unknown;
    return { count: Array.isArray(list) ? list.length : 0, reachable: true };
  } catch {
    return { count: 0, reachable: false, cause: "GET /sessions did not answer JSON" };
  }
}

/** The admin endpoint from a config file (defaults when the file cannot be read). */
export function adminEndpointOf(configFile: string): AdminEndpoint {
  const r = loadConfig({ file: configFile, strict: false });
  if (!r.ok) return { listen: "127.0.0.1:8099", token: "" };
  return adminEndpointFor(r.config.admin);
}

export interface InstallRecord {
  readonly version: string;
  readonly installedAt: string;
  readonly source: string;
  readonly binary: string;
  readonly previousVersion?: string;
}

export function readInstallRecord(file: string): InstallRecord | undefined {
  try {
    return JSON.parse(readFileSync(file, "utf8")) as InstallRecord;
  } catch {
    return undefined;
  }
}

const FLAGS: FlagSpec[] = [
  { name: "root", kind: "string", value: "DIR", help: "look at an installation staged under DIR" },
  { name: "help", kind: "boolean", help: "this text" },
];

const HELP = `Usage: ${PRODUCT_NAME} status [--root DIR]

Shows the installed version, the rollback binary, the service state (systemctl) and, when the admin listener
answers, /healthz, /readyz and the number of live sessions. Exit code: 0 running, 3 not running, 4 not installed.

Options:
${formatFlags(FLAGS)}
`;

export interface StatusDeps {
  readonly run: CommandRunner;
  readonly systemdRunning: () => boolean;
}

export const statusCommand: CommandMain = (argv, io) =>
  runStatus(argv, io, { run: runCommand, systemdRunning });

export async function runStatus(argv: string[], io: CliIo, deps: StatusDeps): Promise<number> {
  const args = parseCommandArgs("status", argv, FLAGS, HELP, io);
  if (typeof args === "number") return args;
  const layout = installLayout(flagString(args, "root") ?? "/");
  const d = layout.disk;
  const line = (k: string, v: string) => io.stdout(`${`${k}:`.padEnd(14)}${v}\n`);
  if (!existsSync(d.binary) && !existsSync(d.configFile) && packagedBy(layout) === undefined) {
    line("installed", `no (${layout.host.binary} and ${layout.host.configFile} are absent)`);
    return 4;
  }
  const record = readInstallRecord(d.installRecord);
  const packaged = packagedBy(layout);
  const reported = existsSync(d.binary) ? await binaryVersion(deps.run, d.binary) : undefined;
  line(
    "installed",
    packaged
      ? `${layout.host.packageBinary} from the ${packaged} package, ${(await binaryVersion(deps.run, layout.disk.packageBinary)) ?? "(version unknown)"}`
      : existsSync(d.binary)
        ? `${layout.host.binary} ${reported ?? record?.version ?? "(version unknown)"}${record ? ` since ${record.installedAt} from ${record.source}` : ""}`
        : `config only (${layout.host.binary} is absent)`,
  );
  if (existsSync(d.previousBinary))
    line(
      "rollback",
      `${layout.host.previousBinary}${record?.previousVersion ? ` (${record.previousVersion})` : ""}`,
    );
  const cfg = loadConfig({ file: d.configFile, strict: false });
  line(
    "config",
    cfg.ok ? `${layout.host.configFile} valid` : `${layout.host.configFile} INVALID: ${cfg.errors[0]}`,
  );

  let running = false;
  if (layout.staged) line("service", "staged installation: no service on this host");
  else if (!deps.systemdRunning())
    line("service", "systemd is not running here (start it yourself: pcoip-cmsg run)");
  else {
    const active = (await deps.run("systemctl", ["is-active", SERVICE_NAME])).stdout.trim() || "unknown";
    const enabled = (await deps.run("systemctl", ["is-enabled", SERVICE_NAME])).stdout.trim() || "unknown";
    running = active === "active" || active === "reloading";
    line("service", `${active} (${enabled} at boot)`);
  }
  if (layout.staged) return 3;
  const admin: AdminEndpoint = cfg.ok
    ? adminEndpointFor(cfg.config.admin, layout.onDisk)
    : adminEndpointOf(d.configFile);
  const health = await adminRequest(admin, "GET", "/healthz");
  if (!health.ok) {
    line("admin", `not reachable at ${admin.listen || "(disabled)"}: ${health.cause}`);
    return running ? 0 : 3;
  }
  line("health", health.status === 200 ? "ok" : `HTTP ${health.status}`);
  const ready = await adminRequest(admin, "GET", "/readyz");
  if (ready.ok) line("ready", ready.body.trim().split("\n").join("; "));
  const udpPath = ready.ok ? /sg-udp-path: (.*)/.exec(ready.body)?.[1] : undefined;
  if (udpPath) line("udp path", udpPath);
  const drain = await adminRequest(admin, "GET", "/drain");
  if (drain.ok && drain.status === 200) line("draining", drainLine(drain.body));
  const sessions = await liveSessions(admin);
  line("sessions", sessions.reachable ? `${sessions.count} live` : `not shown: ${sessions.cause}`);
  return 0;
}

/** "no", "yes (pcoip-cmsg drain; resume to undo)" or "yes (stopping)" from GET /drain. */
export function drainLine(body: string): string {
  try {
    const s = JSON.parse(body) as { draining?: boolean; shuttingDown?: boolean };
    if (!s.draining) return "no";
    return s.shuttingDown ? "yes (stopping)" : `yes (${PRODUCT_NAME} resume to undo)`;
  } catch {
    return "unknown";
  }
}
