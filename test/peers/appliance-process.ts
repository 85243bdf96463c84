/**
 * The appliance as a real process: `bun src/main.ts run --config FILE` in a temporary folder, the way systemd
 * runs the installed binary. Tests use it for what only a process shows: signals (SIGHUP reload, SIGTERM drain,
 * kill -9), sd_notify, exit codes and the JSON log on stdout. Ports are 0 in the generated config; the real ones
 * come from the start-up listener lines. Every process is ended by its handle in `stop()`/`kill()`, and tests call
 * one of them in `afterEach`/`finally`.
 *
 * const app = await startApplianceProcess({ agent: "127.0.0.1:60443", users: { alice: "pw" } });
 * app.cm;            // "127.0.0.1:41234", the HTTPS front door
 * await app.waitForLog((l) => l.msg === "configuration reloaded");
 * await app.stop();  // SIGTERM, waits for exit
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import type { Subprocess } from "bun";
import { hashPassword, writeUsersFile } from "../../src/cm/auth/local-users.ts";
import { ensureAdminTokenFile, readAdminTokenFile } from "../../src/observability/admin-token.ts";
import type { FakeAgent } from "./fake-agent.ts";
import { eachLine } from "./lines.ts";
import { cleanEnv } from "./run-command.ts";
import { testPki } from "./test-certs.ts";

const MAIN = resolve(import.meta.dir, "../../src/main.ts");

export interface ApplianceProcessOptions {
  /**
   * The one built-in desktop's agent: "host:port", or a fake agent (its address, and its session endpoint's port
   * goes into sg.agentPorts); omit for none.
   */
  readonly agent?: string | FakeAgent;
  /** sg.agentPorts (default: the fake agent's session port, else 4172). */
  readonly agentPorts?: readonly number[];
  /** sg.agentNetworks (default: loopback, which the product's defaults never hold). */
  readonly agentNetworks?: readonly string[];
  /** SNI/host name of that desktop (default "desktop-1.test", the fake agent's default). */
  readonly desktopHostname?: string;
  /** Local accounts (default alice / "correct horse"). */
  readonly users?: Readonly<Record<string, string>>;
  /** More TOML appended at the top level before the tables (e.g. `brokerUrl = "https://…"`). */
  readonly topLevel?: string;
  /** More TOML appended at the end (whole tables, e.g. "[upstream]\ntimeoutSeconds = 2"). */
  readonly tables?: string;
  /** Extra environment (NOTIFY_SOCKET, PCOIP_CMSG_… overrides). */
  readonly env?: Readonly<Record<string, string>>;
  /** Reuse a folder (after kill -9, to restart on the same state). */
  readonly dir?: string;
  /** Milliseconds to wait for the listener lines (default 20 s). */
  readonly startTimeoutMs?: number;
  /** A command the process runs under, e.g. ["prlimit", "--nofile=600:600", "--"] (it must exec, keeping the pid). */
  readonly wrap?: readonly string[];
  /** Wait for the listener lines (default true; false for start-up failure tests). */
  readonly waitReady?: boolean;
}

/** `level` is the label ("debug", "info", "warn", "error"): the logger formats levels as labels. */
export type LogLine = Record<string, unknown> & { msg?: string; level?: string };

export interface ApplianceProcess {
  readonly proc: Subprocess<"ignore", "pipe", "pipe">;
  readonly pid: number;
  readonly dir: string;
  readonly configFile: string;
  /** The CA that signed the CM's certificate (for the test client's trust). */
  readonly ca: string;
  /** "host:port" of each plane (first listener). */
  readonly cm: string;
  readonly redirect: string;
  readonly sgTcp: string;
  readonly sgUdp: string;
  readonly admin: string;
  /** Every JSON log line so far, parsed; non-JSON lines appear as { msg: "<raw>", raw: true }. */
  readonly logs: readonly LogLine[];
  /** Standard error so far. */
  stderr(): string;
  waitForLog(pred: (l: LogLine) => boolean, timeoutMs?: number): Promise<LogLine>;
  /** Rewrites the config file with the options merged over the first ones (then send SIGHUP). */
  rewriteConfig(next: Partial<ApplianceProcessOptions> | string): void;
  signal(sig: "SIGHUP" | "SIGTERM" | "SIGINT" | "SIGKILL"): void;
  readonly exited: Promise<number>;
  /** SIGTERM then wait (SIGKILL after `graceMs`, default 10 s); resolves with the exit code. */
  stop(graceMs?: number): Promise<number>;
  /** SIGKILL and wait. */
  kill(): Promise<void>;
  /** Removes the folder (after the process ended). */
  cleanup(): void;
  /** The bearer token of the admin listener (admin.tokenFile in the folder). */
  readonly adminToken: string;
  /** Admin GET on the bound admin listener, with the bearer token. */
  adminGet(path: string): Promise<Response>;
  /** Admin POST (drain, resume) with the bearer token. */
  adminPost(path: string): Promise<Response>;
}

/** The config text for `o`, with every listener on port 0 and TLS from the test PKI. */
export function applianceToml(dir: string, o: ApplianceProcessOptions): string {
  const leaf = testPki().leaf(["localhost", "127.0.0.1", "::1", "cm.test"]);
  const desktop = o.agent
    ? `
[[desktops]]
id = "desktop-1"
name = "Desktop 1"
agent = "${agentAddress(o.agent)}"
hostname = "${o.desktopHostname ?? "desktop-1.test"}"
users = ["*"]
`
    : "";
  return `logLevel = "info"
externalPcoipIp = ["127.0.0.1"]
hostAddress = ["localhost"]
domains = ["test.local"]
usersFile = "${join(dir, "users")}"
dataDir = "${join(dir, "data")}"
drainSeconds = 5
${o.topLevel ?? ""}

[tls]
cert = "${leaf.certFile}"
key = "${leaf.keyFile}"
caCert = "${testPki().ca.certFile}"

[cm]
listen = ["127.0.0.1:0"]
redirectListen = ["127.0.0.1:0"]

[sg]
tcpListen = ["127.0.0.1:0"]
udpListen = ["127.0.0.1:0"]
${sgTrust(o)}

[admin]
listen = "127.0.0.1:0"
tokenFile = "${join(dir, "admin.token")}"
${desktop}
${o.tables ?? ""}
`;
}

/** "host:port" of an agent option. */
export function agentAddress(agent: string | FakeAgent): string {
  if (typeof agent === "string") return agent;
  return agent.hostname.includes(":")
    ? `[${agent.hostname}]:${agent.port}`
    : `${agent.hostname}:${agent.port}`;
}

/**
 * The SG's trust keys for a loopback test setup, written in one place: sg.agentNetworks = loopback (never in the
 * defaults) and sg.agentPorts = the fake agent's session port (an ephemeral one, not 4172).
 */
export function sgTrust(o: Pick<ApplianceProcessOptions, "agent" | "agentPorts" | "agentNetworks">): string {
  const fromAgent = typeof o.agent === "object" && o.agent.endpoint ? [o.agent.endpoint.port] : [4172];
  const ports = o.agentPorts ?? fromAgent;
  const networks = o.agentNetworks ?? ["127.0.0.0/8", "::1/128"];
  return `agentNetworks = ${JSON.stringify(networks)}\nagentPorts = [${ports.join(", ")}]`;
}

export async function startApplianceProcess(o: ApplianceProcessOptions = {}): Promise<ApplianceProcess> {
  const dir = o.dir ?? mkdtempSync(join(tmpdir(), "appliance-"));
  const configFile = join(dir, "pcoip-cmsg.toml");
  let options = o;
  writeFileSync(configFile, applianceToml(dir, o));
  ensureAdminTokenFile(join(dir, "admin.token"));
  const adminToken = readAdminTokenFile(join(dir, "admin.token"));
  const users = o.users ?? { alice: "correct horse" };
  await writeUsersFile(
    join(dir, "users"),
    await Promise.all(
      Object.entries(users).map(async ([name, pw]) => ({ name, hash: await hashPassword(pw) })),
    ),
  );

  // The appliance must see only this test's settings: no proxies, no inherited config overrides.
  const env = { ...cleanEnv(), ...o.env };
  const proc = Bun.spawn([...(o.wrap ?? []), process.execPath, MAIN, "run", "--config", configFile], {
    cwd: dir,
    env,
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
  });
  const logs: LogLine[] = [];
  const waiters = new Set<{ pred: (l: LogLine) => boolean; resolve: (l: LogLine) => void }>();
  let errText = "";
  const onLine = (line: string) => {
    if (line.trim() === "") return;
    let parsed: LogLine;
    try {
      parsed = JSON.parse(line) as LogLine;
    } catch {
      parsed = { msg: line, raw: true };
    }
    logs.push(parsed);
    for (const w of waiters)
      if (w.pred(parsed)) {
        waiters.delete(w);
        w.resolve(parsed);
      }
  };
  void eachLine(proc.stdout, onLine);
  void eachLine(proc.stderr, (t) => {
    errText += `${t}\n`;
  });
  const exited = proc.exited;

  const waitForLog = (pred: (l: LogLine) => boolean, timeoutMs = 15_000): Promise<LogLine> => {
    const hit = logs.find(pred);
    if (hit) return Promise.resolve(hit);
    return new Promise<LogLine>((res, rej) => {
      const w = {
        pred,
        resolve: (l: LogLine) => {
          clearTimeout(t);
          res(l);
        },
      };
      const t = setTimeout(() => {
        waiters.delete(w);
        rej(
          new Error(
            `appliance log line not seen within ${timeoutMs} ms; last lines:\n${logs
              .slice(-8)
              .map((l) => JSON.stringify(l))
              .join("\n")}\nstderr: ${errText.slice(-2000)}`,
          ),
        );
      }, timeoutMs);
      waiters.add(w);
      void exited.then(() => {
        if (!waiters.has(w)) return;
        // Give the pump a moment to deliver the last lines before declaring the process gone.
        setTimeout(() => {
          if (!waiters.has(w)) return;
          waiters.delete(w);
          clearTimeout(t);
          rej(
            new Error(
              `appliance exited (${proc.exitCode}) before the log line; stderr: ${errText.slice(-2000)}`,
            ),
          );
        }, 200);
      });
    });
  };

  const listener = async (name: string): Promise<string> => {
    const l = await waitForLog((x) => x.listener === name, o.startTimeoutMs ?? 20_000);
    return String(l.address);
  };
  let cm = "";
  let redirect = "";
  let sgTcp = "";
  let sgUdp = "";
  let admin = "";
  if (o.waitReady !== false) {
    try {
      [cm, redirect, sgTcp, sgUdp, admin] = await Promise.all([
        listener("cm"),
        listener("redirect"),
        listener("sg-tcp"),
        listener("sg-udp"),
        listener("admin"),
      ]);
    } catch (e) {
      proc.kill("SIGKILL");
      await exited;
      throw e;
    }
  }

  const app: ApplianceProcess = {
    proc,
    pid: proc.pid,
    dir,
    configFile,
    ca: testPki().ca.cert,
    cm,
    redirect,
    sgTcp,
    sgUdp,
    admin,
    logs,
    stderr: () => errText,
    waitForLog,
    rewriteConfig(next) {
      if (typeof next === "string") {
        writeFileSync(configFile, next);
        return;
      }
      options = { ...options, ...next };
      writeFileSync(configFile, applianceToml(dir, options));
    },
    signal(sig) {
      if (proc.exitCode === null) proc.kill(sig);
    },
    exited,
    async stop(graceMs = 10_000) {
      if (proc.exitCode !== null) return proc.exitCode;
      proc.kill("SIGTERM");
      const t = setTimeout(() => proc.kill("SIGKILL"), graceMs);
      const code = await exited;
      clearTimeout(t);
      return code;
    },
    async kill() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill("SIGKILL");
      await exited;
    },
    cleanup() {
      rmSync(dir, { recursive: true, force: true });
    },
    adminToken: adminToken.ok ? adminToken.token : "",
    adminGet(path: string) {
      return fetch(`http://${admin}${path}`, { headers: { Authorization: `Bearer ${app.adminToken}` } });
    },
    adminPost(path: string) {
      return fetch(`http://${admin}${path}`, {
        method: "POST",
        headers: { Authorization: `Bearer ${app.adminToken}` },
      });
    },
  };
  return app;
}
