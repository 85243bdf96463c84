/**
 * Figure: full PCoIP logins through the CM against the TLS handshake ceiling (issue 21). Every login is a new TLS
 * connection to the CM (a full handshake, no resumption) carrying hello → authenticate → get-resource-list →
 * allocate-resource → bye (bench/lib/logins.ts). The CM runs the built-in broker: the password is checked by a
 * directory (OpenLDAP slapd in its own process, ldap:// on loopback, template bind as the user), and the CM
 * launches the session on a fake agent (bench/lib/cm-upstreams.ts, own process) that answers after 0 ms or after
 * 50 ms of think time; the SG admits each session. The local users file is not used: its argon2id check costs
 * ≈84 ms of CPU by design, which would measure the hash, not the login path.
 *
 * Peer: nginx (one worker per core) terminating full TLS handshakes with the same certificate, one request per
 * new connection — the cost floor of the one server handshake a login needs. For each certificate (RSA-3072 as
 * `--self-signed` makes, RSA-2048, EC P-256) it prints:
 *   - nginx handshakes/s (closed loop, BENCH_LOGINS_IN_FLIGHT connections at once);
 *   - CM logins/s, same closed loop, agent at 0 ms, and agent at 50 ms (4× as many in flight); ratio to nginx;
 *   - CPU ms per login of the CM process (/proc/<pid>/stat over the 0 ms run), and nginx's per handshake;
 *   - p99 added at BENCH_LOGINS_RATE (200) logins/s open loop: p99 there minus the p50 of the same logins at
 *     BENCH_LOGINS_IDLE_RATE (20)/s, when the CM is idle (agent at 0 ms).
 * Each line carries the machine's load (share of both cores busy over the run, from /proc/stat): the box is
 * shared, and only CPU ms per login stays meaningful when it is busy.
 *
 * The CM logs into a file (bench/.work/cm-logins/<cert>.log), not a pipe to this process: the load generator
 * would read it late and the CM's synchronous log writes would wait on it (BENCH_LOGINS_LOG_PIPE=1: the pipe).
 *
 * Env: BENCH_LOGINS_SECONDS (5), BENCH_LOGINS_IN_FLIGHT (32), BENCH_LOGINS_RATE (200), BENCH_LOGINS_IDLE_RATE
 * (20), BENCH_LOGINS_CERTS ("rsa3072,rsa2048,p256"), BENCH_LOGINS_QUICK=1 (CPU per login only, for A/B),
 * BENCH_LOGINS_LOG_PIPE=1, BENCH_CM_PROFILE=1 (CPU profile of the CM's main thread into
 * bench/.work/prof), BENCH_LOGINS_CM_WORKERS (cm.workers; default "auto", 0 = the one-thread CM for A/B). Run: npx bun bench/cm-logins.ts
 */
import { readFileSync, writeFileSync } from "node:fs";
import { cpus, loadavg } from "node:os";
import { join } from "node:path";
import type { Socket } from "bun";
import { FIXTURE, PEOPLE_DN, startSlapd } from "../test/peers/slapd.ts";
import { openssl, type TestCert, type TestPki, testPki } from "../test/peers/test-certs.ts";
import { startApplianceRun } from "./lib/appliance.ts";
import { createCpuMeter } from "./lib/cpu.ts";
import { type LoginStats, type LoginTarget, runLogins } from "./lib/logins.ts";
import { machineNote } from "./lib/machine.ts";
import { freePort, LOOPBACK, waitBound } from "./lib/net.ts";
import { createProcessSet, type ProcessSet } from "./lib/processes.ts";
import { detail, envNumber, figureLine, fmt, print, verdictLine } from "./lib/report.ts";
import { workDir } from "./lib/tools.ts";

const SECONDS = envNumber("BENCH_LOGINS_SECONDS", 5);
const IN_FLIGHT = envNumber("BENCH_LOGINS_IN_FLIGHT", 32);
const RATE = envNumber("BENCH_LOGINS_RATE", 200);
const IDLE_RATE = envNumber("BENCH_LOGINS_IDLE_RATE", 20);
/** BENCH_LOGINS_QUICK=1: only the CM's CPU per login (agent 0 ms closed loop), no nginx, no latency runs. */
const QUICK = process.env.BENCH_LOGINS_QUICK === "1";
/** BENCH_LOGINS_CM_WORKERS: cm.workers of the CM under test ("auto" when unset; 0 = one thread, the A/B peer). */
const CM_WORKERS = process.env.BENCH_LOGINS_CM_WORKERS;
const CERTS = (process.env.BENCH_LOGINS_CERTS ?? "rsa3072,rsa2048,p256").split(",").map((s) => s.trim());
const GOAL_RATIO = 0.5;
const GOAL_LOGINS = 500;
const MAX_ADDED_P99_MS = 10;
const AGENT_FAST = "127.0.0.78";
const AGENT_SLOW = "127.0.0.79";
const cpu = createCpuMeter();

/** Share of both cores busy between two /proc/stat readings. */
function coresBusy(): () => number {
  const read = () => {
    const v = readFileSync("/proc/stat", "utf8").split("\n")[0]!.trim().split(/\s+/).slice(1).map(Number);
    const total = v.reduce((a, b) => a + b, 0);
    return { busy: total - (v[3] ?? 0) - (v[4] ?? 0), total };
  };
  const a = read();
  return () => {
    const b = read();
    return b.total > a.total ? (b.busy - a.busy) / (b.total - a.total) : 0;
  };
}

interface Measured<T> {
  readonly result: T;
  /** CPU seconds of each watched process over the run. */
  readonly cpuS: Record<string, number>;
  /** Share of the machine busy over the run (all processes, ours and the neighbours'). */
  readonly busy: number;
  /** Load average (1 min) at the end. */
  readonly load1: number;
}

async function measured<T>(pids: Record<string, number>, run: () => Promise<T>): Promise<Measured<T>> {
  const before = Object.fromEntries(Object.entries(pids).map(([k, pid]) => [k, cpu.seconds(pid)]));
  const busy = coresBusy();
  const result = await run();
  const cpuS: Record<string, number> = {};
  for (const [k, pid] of Object.entries(pids)) cpuS[k] = cpu.seconds(pid) - before[k]!;
  // `loadgen` is this process with its children (the CM, agents, nginx): its own share is what is left.
  if (cpuS.loadgen !== undefined)
    for (const [k, v] of Object.entries(cpuS)) if (k !== "loadgen") cpuS.loadgen -= v;
  return { result, cpuS, busy: busy(), load1: loadavg()[0]! };
}

const loadNote = (m: Measured<unknown>) =>
  `machine ${fmt(m.busy * 100)} % busy over the run, load average ${m.load1.toFixed(2)}`;

/** An EC P-256 leaf from the test CA (test-certs.ts makes RSA only). */
function p256Leaf(pki: TestPki): TestCert {
  const dir = pki.dir;
  const keyFile = join(dir, "p256.key");
  const certFile = join(dir, "p256.pem");
  writeFileSync(
    join(dir, "p256.ext"),
    "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
  );
  openssl(["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", keyFile]);
  openssl(["req", "-new", "-key", keyFile, "-subj", "/CN=localhost", "-out", join(dir, "p256.csr")]);
  openssl([
    ...["x509", "-req", "-in", join(dir, "p256.csr"), "-CA", pki.ca.certFile, "-CAkey", join(dir, "ca.key")],
    ...["-CAcreateserial", "-days", "30", "-sha256", "-extfile", join(dir, "p256.ext"), "-out", certFile],
  ]);
  return { cert: readFileSync(certFile, "utf8"), key: readFileSync(keyFile, "utf8"), certFile, keyFile };
}

function certFor(pki: TestPki, name: string): TestCert {
  if (name === "p256") return p256Leaf(pki);
  const bits = Number(/^rsa(\d+)$/.exec(name)?.[1]);
  if (!bits) throw new Error(`BENCH_LOGINS_CERTS: unknown certificate "${name}" (rsa3072, rsa2048, p256)`);
  return pki.leaf(["localhost", "127.0.0.1"], { bits });
}

const certLabel = (name: string) => (name === "p256" ? "EC P-256" : `RSA-${name.slice(3)}`);

/** nginx terminating TLS (one worker per core), answering every request on a new connection and closing it. */
async function startNginxTls(procs: ProcessSet, name: string, cert: TestCert, ca: string) {
  const dir = workDir(`nginx-tls-${name}`);
  const port = await freePort("tcp");
  const chain = join(dir, "chain.pem");
  writeFileSync(chain, `${cert.cert.trimEnd()}\n${ca}`);
  const conf = [
    "daemon off;",
    "master_process on;",
    `worker_processes ${cpus().length};`,
    ...(process.getuid?.() === 0 ? ["user nobody nogroup;"] : []),
    `pid ${join(dir, "nginx.pid")};`,
    "error_log stderr warn;",
    "events { worker_connections 4096; }",
    "http {",
    "  access_log off;",
    `  client_body_temp_path ${dir}/body; proxy_temp_path ${dir}/proxy; fastcgi_temp_path ${dir}/fcgi;`,
    `  uwsgi_temp_path ${dir}/uwsgi; scgi_temp_path ${dir}/scgi;`,
    "  server {",
    `    listen ${LOOPBACK}:${port} ssl;`,
    `    ssl_certificate ${chain};`,
    `    ssl_certificate_key ${cert.keyFile};`,
    "    ssl_protocols TLSv1.2 TLSv1.3;",
    "    ssl_session_cache off;",
    "    ssl_session_tickets off;",
    "    keepalive_timeout 0;",
    '    location / { return 200 "ok\\n"; }',
    "  }",
    "}",
  ].join("\n");
  const file = join(dir, "nginx.conf");
  writeFileSync(file, `${conf}\n`);
  const child = procs.spawn(`nginx-tls-${name}`, ["nginx", "-e", "stderr", "-p", dir, "-c", file]);
  await waitBound("tcp", port, child.exited, child.name);
  return { port, pid: child.pid, child };
}

/** One full handshake and one request on a new connection; resolves when the answer is complete. */
function handshakeOnce(port: number, ca: string): Promise<void> {
  const done = Promise.withResolvers<void>();
  let text = "";
  let settled = false;
  const settle = (err?: Error) => {
    if (settled) return;
    settled = true;
    if (err) done.reject(err);
    else done.resolve();
  };
  Bun.connect({
    hostname: LOOPBACK,
    port,
    tls: { ca, serverName: "localhost" },
    socket: {
      handshake(s: Socket, ok: boolean, err: Error | null) {
        if (!ok) {
          settle(new Error(`TLS: ${err?.message ?? "handshake failed"}`));
          s.end();
        } else s.write(`GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n`);
      },
      data(s: Socket, d: Buffer) {
        text += d.toString("latin1");
        if (text.includes("\r\n\r\nok\n")) {
          if (!text.startsWith("HTTP/1.1 200")) settle(new Error(text.slice(0, 40)));
          else settle();
          s.end();
        }
      },
      close() {
        settle(new Error("closed before the answer"));
      },
      error(_s: Socket, err: Error) {
        settle(err);
      },
      connectError(_s: Socket, err: Error) {
        settle(err);
      },
    },
  }).catch((e: unknown) => settle(e instanceof Error ? e : new Error(String(e))));
  return done.promise;
}

/** Closed loop of new-connection requests: completed per second and failures. */
async function runHandshakes(port: number, ca: string, concurrency: number, seconds: number) {
  const end = performance.now() + seconds * 1000;
  const t0 = performance.now();
  let completed = 0;
  let failed = 0;
  let lastError = "";
  const loop = async () => {
    while (performance.now() < end) {
      try {
        await handshakeOnce(port, ca);
        completed++;
      } catch (e) {
        failed++;
        lastError = e instanceof Error ? e.message : String(e);
      }
    }
  };
  await Promise.all(Array.from({ length: concurrency }, loop));
  return { completed, failed, lastError, perSecond: completed / ((performance.now() - t0) / 1000) };
}

function describe(label: string, m: Measured<LoginStats>): void {
  const s = m.result;
  const skipped = s.skipped ? `, ${s.skipped} not started (cap in flight)` : "";
  const shares = Object.entries(m.cpuS)
    .map(([k, v]) => `${k} ${fmt(v)} s`)
    .join(", ");
  detail(
    `${label}: ${s.completed} done (${fmt(s.perSecond)}/s), ${s.failed} failed${skipped}, p50 ${fmt(s.p50Ms)} / ` +
      `p99 ${fmt(s.p99Ms)} ms, most in flight ${s.maxInFlight}; CPU ${shares}; ${loadNote(m)}` +
      (s.errors.length ? `; errors: ${s.errors.join(" | ")}` : ""),
  );
}

const LOGIN_USER = { user: "alice", password: FIXTURE.alice.password };
/** BENCH_LOGINS_LOG_PIPE=1: the CM logs into a pipe read by this process, as before (see ApplianceOptions.logFile). */
const LOG_PIPE = process.env.BENCH_LOGINS_LOG_PIPE === "1";
const logFileFor = (certName: string) => join(workDir("cm-logins"), `${certName}.log`);

/** The appliance with `cert`: built-in broker, slapd for passwords, the two fake agents as desktops. */
function startCm(procs: ProcessSet, pki: TestPki, certName: string, cert: TestCert, ldapUrl: string) {
  const extraToml = [
    "[auth]",
    'order = ["ldap"]',
    "",
    "[ldap]",
    `url = ${JSON.stringify(ldapUrl)}`,
    "startTls = false",
    "allowInsecure = true",
    `bindDn = ${JSON.stringify(`uid={user},${PEOPLE_DN}`)}`,
    "",
    "[[desktops]]",
    'id = "fast"',
    `agent = "${AGENT_FAST}"`,
    'users = ["*"]',
    "",
    "[[desktops]]",
    'id = "slow"',
    `agent = "${AGENT_SLOW}"`,
    'users = ["*"]',
    "",
  ].join("\n");
  return startApplianceRun(procs, {
    name: `cm-logins-${certName}`,
    certFile: cert.certFile,
    keyFile: cert.keyFile,
    caCertFile: pki.ca.certFile,
    brokerUrl: "",
    cm: {
      maxConcurrentEstablishments: 5000,
      ...(CM_WORKERS ? { workers: /^\d+$/.test(CM_WORKERS) ? Number(CM_WORKERS) : CM_WORKERS } : {}),
    },
    sg: { maxSessions: 200000, udpSourcePorts: "10000-60000" },
    extraToml,
    // Not a pipe to this process (the load generator): see ApplianceOptions.logFile.
    ...(LOG_PIPE ? {} : { logFile: logFileFor(certName) }),
  });
}

/** BENCH_LOGINS_QUICK: the CM's CPU per login only, over three closed-loop runs (for A/B of a change). */
async function quickCpuPerLogin(
  procs: ProcessSet,
  pki: TestPki,
  certName: string,
  cert: TestCert,
  ldapUrl: string,
  agents: Record<string, number>,
): Promise<void> {
  const cm = await startCm(procs, pki, certName, cert, ldapUrl);
  try {
    const fast: LoginTarget = { port: cm.cmPort, ca: pki.ca.cert, ...LOGIN_USER, resourceId: "fast" };
    await runLogins(fast, { concurrency: 8, seconds: 1.5 });
    const lineCount = () =>
      LOG_PIPE ? cm.child.lines().length : readFileSync(logFileFor(certName), "utf8").split("\n").length;
    const lines0 = lineCount();
    const logins0 = (await runLogins(fast, { concurrency: 8, seconds: 1 })).completed;
    detail(`CM log lines per login: ${fmt((lineCount() - lines0) / Math.max(1, logins0))}`);
    for (let i = 0; i < 3; i++) {
      const f = await measured({ cm: cm.pid, ...agents }, () =>
        runLogins(fast, { concurrency: IN_FLIGHT, seconds: SECONDS }),
      );
      print(
        `CM CPU per login, ${certLabel(certName)}: ${fmt((f.cpuS.cm! * 1000) / Math.max(1, f.result.completed))} ms ` +
          `(${f.result.completed} logins, ${fmt(f.result.perSecond)}/s, ${f.result.failed} failed; per login: ` +
          `${Object.entries(f.cpuS)
            .filter(([k]) => k !== "cm")
            .map(([k, v]) => `${k} ${fmt((v * 1000) / Math.max(1, f.result.completed))} ms`)
            .join(", ")}) [${loadNote(f)}]`,
      );
    }
  } finally {
    await cm.child.stop();
  }
}

async function benchCertificate(
  procs: ProcessSet,
  pki: TestPki,
  certName: string,
  ldapUrl: string,
  agents: Record<string, number>,
): Promise<void> {
  const label = certLabel(certName);
  const cert = certFor(pki, certName);
  print(`-- certificate ${label}`);

  if (QUICK) return quickCpuPerLogin(procs, pki, certName, cert, ldapUrl, agents);
  // The ceiling: nginx alone on the machine (the CM is not started yet).
  const nginx = await startNginxTls(procs, certName, cert, pki.ca.cert);
  await runHandshakes(nginx.port, pki.ca.cert, 8, 1);
  const ng = await measured({ nginx: nginx.pid }, () =>
    runHandshakes(nginx.port, pki.ca.cert, IN_FLIGHT, SECONDS),
  );
  await nginx.child.stop();
  const ngCpuMs = (ng.cpuS.nginx! * 1000) / Math.max(1, ng.result.completed);
  detail(
    `nginx ${cpus().length} workers, ${IN_FLIGHT} new connections in flight: ${ng.result.completed} handshakes ` +
      `(${fmt(ng.result.perSecond)}/s), ${ng.result.failed} failed${ng.result.lastError ? ` (${ng.result.lastError})` : ""}; ` +
      `nginx CPU ${fmt(ngCpuMs)} ms per handshake; ${loadNote(ng)}`,
  );

  const cm = await startCm(procs, pki, certName, cert, ldapUrl);
  try {
    const fast: LoginTarget = { port: cm.cmPort, ca: pki.ca.cert, ...LOGIN_USER, resourceId: "fast" };
    const slow: LoginTarget = { port: cm.cmPort, ca: pki.ca.cert, ...LOGIN_USER, resourceId: "slow" };
    await runLogins(fast, { concurrency: 8, seconds: 1.5 }); // warm-up: JIT
    const pids = { cm: cm.pid, ...agents };

    const f = await measured(pids, () => runLogins(fast, { concurrency: IN_FLIGHT, seconds: SECONDS }));
    describe(`agent 0 ms, closed loop ${IN_FLIGHT} in flight`, f);
    const s = await measured(pids, () => runLogins(slow, { concurrency: IN_FLIGHT * 4, seconds: SECONDS }));
    describe(`agent 50 ms, closed loop ${IN_FLIGHT * 4} in flight`, s);
    const idle = await measured(pids, () => runLogins(fast, { rate: IDLE_RATE, seconds: SECONDS }));
    describe(`agent 0 ms, open loop ${IDLE_RATE}/s`, idle);
    const at = await measured(pids, () => runLogins(fast, { rate: RATE, seconds: SECONDS }));
    describe(`agent 0 ms, open loop ${RATE}/s`, at);

    const cmMs = (f.cpuS.cm! * 1000) / Math.max(1, f.result.completed);
    const ratio = f.result.perSecond / ng.result.perSecond;
    print(
      `${figureLine({
        name: `CM full logins, ${label}, agent 0 ms`,
        value: f.result.perSecond,
        unit: "logins/s",
        peer: `nginx full ${label} handshakes`,
        peerValue: ng.result.perSecond,
        peerUnit: "handshakes/s",
      })} [${loadNote(f)}]`,
    );
    print(
      `${figureLine({
        name: `CM full logins, ${label}, agent 50 ms`,
        value: s.result.perSecond,
        unit: "logins/s",
        peer: `nginx full ${label} handshakes`,
        peerValue: ng.result.perSecond,
        peerUnit: "handshakes/s",
      })} [${loadNote(s)}]`,
    );
    print(
      `${figureLine({
        name: `CM CPU per login, ${label}`,
        value: cmMs,
        unit: "ms",
        peer: "nginx CPU per handshake",
        peerValue: ngCpuMs,
      })} [${loadNote(f)}]`,
    );
    const added = at.result.p99Ms - idle.result.p50Ms;
    print(
      `${figureLine({
        name: `CM login p99 at ${RATE}/s, ${label}`,
        value: at.result.p99Ms,
        unit: "ms",
        peer: `p50 at ${IDLE_RATE}/s`,
        peerValue: idle.result.p50Ms,
      })} [${loadNote(at)}]`,
    );
    print(
      verdictLine(
        `${label}: logins/s ≥ ${GOAL_RATIO} × nginx handshakes/s`,
        ratio >= GOAL_RATIO && f.result.failed === 0,
        `${fmt(GOAL_RATIO - ratio)} (ratio ${fmt(ratio)})`,
      ),
    );
    print(
      verdictLine(
        `${label}: ≥${GOAL_LOGINS} logins/s (agent 0 ms)`,
        f.result.perSecond >= GOAL_LOGINS && f.result.failed === 0,
        `${fmt(Math.max(0, GOAL_LOGINS - f.result.perSecond))}/s${f.result.failed ? ` (${f.result.failed} failed)` : ""}`,
      ),
    );
    print(
      verdictLine(
        `${label}: p99 added at ${RATE}/s ≤${MAX_ADDED_P99_MS} ms`,
        added <= MAX_ADDED_P99_MS && at.result.failed === 0,
        `${fmt(added - MAX_ADDED_P99_MS)} ms (added ${fmt(added)} ms)`,
      ),
    );
  } finally {
    await cm.child.stop();
  }
}

async function main(): Promise<void> {
  const procs = createProcessSet();
  const slapd = await startSlapd();
  try {
    detail(await machineNote());
    const pki = testPki();
    const agent = (host: string, ms: number) =>
      procs.spawn(
        `agent-${ms}ms`,
        [
          process.execPath,
          join(import.meta.dir, "lib/cm-upstreams.ts"),
          "--role",
          "agent",
          "--agent-host",
          host,
        ],
        { stdin: "pipe", env: { ...process.env, BENCH_CM_UPSTREAM_MS: String(ms) } },
      );
    const fastAgent = agent(AGENT_FAST, 0);
    const slowAgent = agent(AGENT_SLOW, 50);
    await Promise.all(
      [fastAgent, slowAgent].map((a) => a.waitForLine((l) => l.includes('"event":"ready"'), 20_000)),
    );
    detail(
      `built-in broker, password checked by slapd (ldap:// on loopback, own process), agents at 0 and 50 ms ` +
        `(own processes), SG admitting every session; ${SECONDS} s per run; load generator, CM, nginx, slapd and ` +
        "agents share this machine's cores",
    );
    // The load generator is this process: its share of the cores is part of what the CM can get. Its CPU is
    // measured with its descendants (the meter's rule), and `measured` subtracts the other watched processes.
    const agents = {
      slapd: slapd.pid,
      agent0ms: fastAgent.pid,
      agent50ms: slowAgent.pid,
      loadgen: process.pid,
    };
    for (const name of CERTS) await benchCertificate(procs, pki, name, slapd.url, agents);
  } finally {
    await procs.stopAll();
    await slapd.stop();
  }
}

await main();
