/**
 * `npm run soak`: the appliance as a real process under sustained load, watched for leaks (issue 10).
 *
 * - 400 establishments in flight at all times (10× the vendor's session-establishment figure): each worker loops
 *   hello → authenticate → get-resource-list → allocate-resource → bye on a fresh TLS connection. Every
 *   allocation is admitted at the SG and never connected, so pending admissions also churn (90 s TTL).
 * - Relayed traffic beside it: RELAYS sessions each hold a TLS control connection through SG TCP 4172 to the fake
 *   agent's endpoint (16 KiB echoed every 100 ms) and a UDP flow through SG UDP 4172 (a 1000-byte datagram every
 *   20 ms, echoed by the agent); each relayed session is replaced by a new one every minute.
 * - Every 10 s: RSS (/proc/<pid>/status VmRSS) and open descriptors (/proc/<pid>/fd) of the appliance.
 *
 * Passes when, after the warm-up, the mean of the last third of the samples is within ±10 % of the mean of the
 * first third, for both RSS and descriptors, and establishments mostly succeed. Writes a markdown report to
 * bench/results/soak-<date>.md (soak-<date>-<N>min.md for shortened runs).
 *
 * Environment: SOAK_MINUTES (default 10), SOAK_INFLIGHT (400), SOAK_RELAYS (16), SOAK_WARMUP_SECONDS
 * (default min(120, half the run)), SOAK_SAMPLE_SECONDS (10), SOAK_REPORT (report path override).
 */
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import type { udp } from "bun";
import { writeUsersFile } from "../../src/cm/auth/local-users.ts";
import { type ControlClient, connectControl } from "../peers/agent-endpoint.ts";
import { startApplianceProcess } from "../peers/appliance-process.ts";
import { pcoipClient } from "../peers/pcoip-client.ts";
import { testPki } from "../peers/test-certs.ts";

const num = (name: string, dflt: number) => {
  const v = process.env[name];
  return v === undefined || v === "" || Number.isNaN(Number(v)) ? dflt : Number(v);
};
const MINUTES = num("SOAK_MINUTES", 10);
/** Failed establishments tolerated (overload shedding at 400 in flight on 2 cores; see judge()). */
const MAX_FAILURE_RATE = 0.15;
const INFLIGHT = num("SOAK_INFLIGHT", 400);
const RELAYS = num("SOAK_RELAYS", 16);
const SAMPLE_S = num("SOAK_SAMPLE_SECONDS", 10);
const DURATION_MS = MINUTES * 60_000;
const WARMUP_S = num("SOAK_WARMUP_SECONDS", Math.min(120, Math.max(SAMPLE_S, (MINUTES * 60) / 2)));
const TOLERANCE = 0.1;
const RELAY_LIFETIME_MS = 60_000;

interface Sample {
  t: number;
  /** Taken after the load stopped (shown, not judged). */
  after?: boolean;
  rssKiB: number;
  fds: number;
  established: number;
  failed: number;
  relayBytes: number;
  udpEchoes: number;
  loadavg: string;
}

const say = (s: string) => process.stdout.write(`${s}\n`);

function rssKiB(pid: number): number {
  const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return m ? Number(m[1]) : Number.NaN;
}
function fdCount(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}
const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);

async function main(): Promise<number> {
  const pki = testPki();
  const agent = await startAgentProcess();
  const app = await startApplianceProcess({
    agent: `127.0.0.1:${agent.port}`,
    agentPorts: [agent.sessionPort],
    env: {
      // 400 in flight must not be answered "busy"; the default pipeline is 200.
      PCOIP_CMSG_CM_MAXCONCURRENTESTABLISHMENTS: String(Math.max(1000, INFLIGHT * 2)),
      // Every allocation leaves a pending admission for the 90 s TTL: ~90 s × the establishment rate of them.
      PCOIP_CMSG_SG_MAXSESSIONS: "200000",
      // The soak's clients all come from 127.0.0.1: lift the per-IP caps (issue 16) that would make it a flood test.
      PCOIP_CMSG_CM_MAXCONNECTIONSPERIP: "1000000",
      PCOIP_CMSG_CM_MAXPRESESSIONSPERIP: "1000000",
      PCOIP_CMSG_CM_MAXPASSWORDCHECKSPERIP: "10000",
    },
  });
  // The establishment path, not argon2, is what is soaked: a lighter hash than `user add` writes (64 MiB, t=2)
  // keeps 400 in flight from queueing behind the password checks alone (an LDAP bind costs the CM no CPU either).
  // The users file is re-read when it changes.
  await writeUsersFile(join(app.dir, "users"), [
    {
      name: "alice",
      hash: await Bun.password.hash("correct horse", {
        algorithm: "argon2id",
        memoryCost: 8192,
        timeCost: 1,
      }),
    },
  ]);
  const [cmHost, cmPort] = splitHostPort(app.cm);
  const [udpHost, udpPort] = splitHostPort(app.sgUdp);
  say(`soak: ${MINUTES} min, ${INFLIGHT} establishments in flight, ${RELAYS} relayed sessions`);
  say(`soak: appliance pid ${app.pid}, cm ${app.cm}, sg ${app.sgTcp} / ${app.sgUdp}, agent ${agent.port}`);

  const started = Date.now();
  const deadline = started + DURATION_MS;
  let stopping = false;
  const stats = {
    established: 0,
    failed: 0,
    failures: new Map<string, number>(),
    relayBytes: 0,
    udpEchoes: 0,
  };
  const latencies: number[] = [];
  const fail = (why: string) => {
    stats.failed++;
    stats.failures.set(why, (stats.failures.get(why) ?? 0) + 1);
  };

  /** One establishment: hello → authenticate → list → allocate → bye. Returns the target on success. */
  const establish = async () => {
    const c = pcoipClient({ host: cmHost, port: cmPort, ca: app.ca, clientLogId: crypto.randomUUID() });
    const t0 = performance.now();
    try {
      const hello = await c.hello();
      if (hello.operation !== "hello-resp") return void fail(`hello: ${hello.status} ${hello.operation}`);
      const auth = await c.authenticate("alice", "correct horse");
      if (auth.resultId !== "AUTH_SUCCESSFUL_AND_COMPLETE") return void fail(`auth: ${auth.resultId}`);
      const list = await c.getResourceList();
      if (list.resultId !== "LIST_SUCCESSFUL") return void fail(`list: ${list.resultId}`);
      const alloc = await c.allocate("desktop-1");
      const target = alloc.msg?.op === "allocate-resource-resp" ? alloc.msg.target : undefined;
      if (alloc.resultId !== "ALLOC_SUCCESSFUL" || !target) return void fail(`allocate: ${alloc.resultId}`);
      const bye = await c.bye();
      if (bye.operation !== "bye-resp") return void fail(`bye: ${bye.operation}`);
      stats.established++;
      latencies.push(performance.now() - t0);
      if (latencies.length > 20_000) latencies.splice(0, 10_000);
      return target;
    } catch (e) {
      fail(`exception: ${String(e).slice(0, 80)}`);
      return undefined;
    } finally {
      c.close();
    }
  };

  const worker = async () => {
    while (!stopping && Date.now() < deadline) await establish();
  };

  /** A relayed session: allocate, then TCP echo + UDP echo through the SG until its lifetime is over. */
  const relayed = async (n: number) => {
    while (!stopping && Date.now() < deadline) {
      const target = await establish();
      if (!target) {
        await Bun.sleep(500);
        continue;
      }
      const ctl = await connectControl({
        hostname: target.ipAddress,
        port: target.port,
        serverName: target.sni,
        ca: pki.ca.cert,
        timeoutMs: 10_000,
      });
      if (!ctl.ok) {
        fail(`relay connect: ${ctl.error}`);
        await Bun.sleep(500);
        continue;
      }
      const control: ControlClient = ctl.client;
      let echoed = 0;
      const sock: udp.Socket<"buffer"> = await Bun.udpSocket({
        hostname: "127.0.0.1",
        socket: {
          data: () => {
            echoed++;
            stats.udpEchoes++;
          },
          error() {},
        },
      });
      const datagram = Buffer.alloc(1000, n);
      const udpTimer = setInterval(() => sock.send(datagram, udpPort, udpHost), 20);
      const end = Math.min(deadline, Date.now() + RELAY_LIFETIME_MS);
      const chunk = "x".repeat(16 * 1024);
      let round = 0;
      try {
        while (!stopping && Date.now() < end) {
          const tag = `<${n}.${round++}>`;
          control.write(chunk + tag);
          await control.waitFor(tag, 15_000);
          stats.relayBytes += chunk.length * 2;
          await Bun.sleep(100);
        }
        if (echoed === 0) fail("relay: no udp echo");
      } catch (e) {
        fail(`relay: ${String(e).slice(0, 60)}`);
      } finally {
        clearInterval(udpTimer);
        sock.close();
        control.close();
      }
    }
  };

  const samples: Sample[] = [];
  const sample = () => {
    const s: Sample = {
      ...(Date.now() >= deadline ? { after: true } : {}),
      t: Math.round((Date.now() - started) / 1000),
      rssKiB: rssKiB(app.pid),
      fds: fdCount(app.pid),
      established: stats.established,
      failed: stats.failed,
      relayBytes: stats.relayBytes,
      udpEchoes: stats.udpEchoes,
      loadavg: readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" "),
    };
    samples.push(s);
    say(
      `t=${String(s.t).padStart(4)}s rss=${(s.rssKiB / 1024).toFixed(1)}MiB fds=${s.fds} established=${s.established} failed=${s.failed} relayMiB=${(s.relayBytes / 2 ** 20).toFixed(0)} udpEchoes=${s.udpEchoes} load=${s.loadavg}`,
    );
    // The soak process keeps every parsed log line of the appliance; keep only what the report needs.
    const logs = app.logs as Record<string, unknown>[];
    for (const l of logs) {
      const level = String(l.level);
      if (level !== "warn" && level !== "error" && level !== "fatal") continue;
      if (level !== "warn") errorLines.push(l);
      const key = `${level}: ${String(l.msg).slice(0, 90)}${l.failure ? ` (${String(l.failure)})` : ""}`;
      warnings.set(key, (warnings.get(key) ?? 0) + 1);
    }
    logs.length = 0;
  };
  const errorLines: Record<string, unknown>[] = [];
  const warnings = new Map<string, number>();

  sample();
  const sampler = setInterval(sample, SAMPLE_S * 1000);
  const work = [
    ...Array.from({ length: INFLIGHT }, () => worker()),
    ...Array.from({ length: RELAYS }, (_, i) => relayed(i)),
  ];
  let exitCode = 1;
  let verdict = "";
  try {
    await Promise.all(work);
    clearInterval(sampler);
    sample();
    samples.at(-1)!.after = true;
    const r = judge(samples, stats.established, stats.failed);
    exitCode = r.ok ? 0 : 1;
    verdict = r.text;
  } finally {
    stopping = true;
    clearInterval(sampler);
    await app.stop(15_000);
    agent.proc.kill();
    await agent.proc.exited;
    app.cleanup();
  }
  latencies.sort((a, b) => a - b);
  const pct = (p: number) => latencies[Math.min(latencies.length - 1, Math.floor(latencies.length * p))] ?? 0;
  const report = renderReport(samples, verdict, exitCode === 0, {
    failures: stats.failures,
    errorLines,
    warnings,
    p50: pct(0.5),
    p99: pct(0.99),
  });
  const file =
    process.env.SOAK_REPORT ??
    resolve(
      import.meta.dir,
      "../../bench/results",
      `soak-${new Date().toISOString().slice(0, 10)}${MINUTES === 10 ? "" : `-${MINUTES}min`}.md`,
    );
  mkdirSync(join(file, ".."), { recursive: true });
  writeFileSync(file, report);
  say(verdict);
  say(`soak: report written to ${file}`);
  return exitCode;
}

function judge(samples: Sample[], established: number, failed: number): { ok: boolean; text: string } {
  const steady = samples.filter((s) => s.t >= WARMUP_S && !s.after);
  const lines: string[] = [];
  let ok = true;
  if (steady.length < 3) {
    return { ok: false, text: `FAIL: only ${steady.length} samples after the ${WARMUP_S} s warm-up` };
  }
  const third = Math.max(1, Math.floor(steady.length / 3));
  const first = steady.slice(0, third);
  const last = steady.slice(-third);
  for (const [name, get] of [
    ["RSS (KiB)", (s: Sample) => s.rssKiB],
    ["open descriptors", (s: Sample) => s.fds],
  ] as const) {
    const a = mean(first.map(get));
    const b = mean(last.map(get));
    const change = (b - a) / a;
    const pass = Math.abs(change) <= TOLERANCE;
    ok &&= pass;
    lines.push(
      `${pass ? "PASS" : "FAIL"}: ${name} first third ${a.toFixed(0)}, last third ${b.toFixed(0)}, change ${(change * 100).toFixed(1)} % (limit ±${TOLERANCE * 100} %)`,
    );
  }
  const rate = failed / Math.max(1, established + failed);
  // The load must really have run. 400 in flight saturates a 2-core machine that also hosts the load generator
  // and the agent (load average ≈4.5): the front door then sheds the connections whose TLS handshake waited past
  // headerTimeout (a reset at hello, seen as ≈10 % of attempts here), and the loaded agent misses some launches.
  // Shedding is the designed answer to overload; a leak or a hang would show as the curves or as no progress.
  const workOk = established > 0 && rate <= MAX_FAILURE_RATE;
  ok &&= workOk;
  lines.push(
    `${workOk ? "PASS" : "FAIL"}: ${established} establishments, ${failed} failures (${(rate * 100).toFixed(2)} %, limit ${MAX_FAILURE_RATE * 100} %)`,
  );
  const relayOk = (samples.at(-1)?.relayBytes ?? 0) > 0 && (samples.at(-1)?.udpEchoes ?? 0) > 0;
  ok &&= relayOk || RELAYS === 0;
  lines.push(`${relayOk ? "PASS" : "FAIL"}: relayed TCP and UDP traffic flowed`);
  return { ok, text: lines.join("\n") };
}

function renderReport(
  samples: Sample[],
  verdict: string,
  ok: boolean,
  extra: {
    failures: Map<string, number>;
    errorLines: Record<string, unknown>[];
    warnings: Map<string, number>;
    p50: number;
    p99: number;
  },
): string {
  const last = samples.at(-1);
  const elapsed = last?.t ?? 0;
  const rows = samples.map((s, i) => {
    const prev = samples[i - 1];
    const rate = prev ? ((s.established - prev.established) / Math.max(1, s.t - prev.t)).toFixed(1) : "";
    return `| ${s.t} | ${(s.rssKiB / 1024).toFixed(1)} | ${s.fds} | ${s.established} | ${rate} | ${s.failed} | ${(s.relayBytes / 2 ** 20).toFixed(0)} | ${s.udpEchoes} | ${s.loadavg} | ${s.after ? "after the load" : s.t < WARMUP_S ? "warm-up" : ""} |`;
  });
  const failures = [...extra.failures.entries()].sort((a, b) => b[1] - a[1]);
  return `# Soak ${new Date().toISOString()} — ${ok ? "PASS" : "FAIL"}

\`SOAK_MINUTES=${MINUTES} npm run soak\` (test/soak/run.ts) on ${readFileSync("/proc/cpuinfo", "utf8").match(/^processor/gm)?.length ?? "?"} cores (shared), Bun ${Bun.version}.
The appliance ran as a process (\`bun src/main.ts run\`, log level info), the fake agent and its session endpoint as
another (\`bun test/peers/fake-agent.ts --endpoint\`), the clients in the soak process. Load: ${INFLIGHT} establishments in flight (hello → authenticate (local user, argon2id) →
get-resource-list → allocate-resource → bye, each on a new TLS connection; the users file holds a lighter argon2id
hash (8 MiB, t=1) than \`user add\` writes, so that the establishment path rather than argon2 alone is soaked; every allocation admitted at the SG and
left pending), plus ${RELAYS} relayed sessions (TLS control through SG TCP 4172, 16 KiB echoed every 100 ms; UDP
through SG UDP 4172, 1000 bytes every 20 ms, echoed), each replaced every ${RELAY_LIFETIME_MS / 1000} s.
Sampled every ${SAMPLE_S} s; warm-up ${WARMUP_S} s excluded; first third vs last third of the rest, ±${TOLERANCE * 100} %.

## Verdict

\`\`\`
${verdict}
\`\`\`

Elapsed ${elapsed} s; ${last?.established ?? 0} establishments (${((last?.established ?? 0) / Math.max(1, elapsed)).toFixed(1)}/s),
latency p50 ${(extra.p50 / 1000).toFixed(2)} s, p99 ${(extra.p99 / 1000).toFixed(2)} s (5 requests, 400 in flight);
${((last?.relayBytes ?? 0) / 2 ** 20).toFixed(0)} MiB relayed over TCP, ${last?.udpEchoes ?? 0} UDP datagrams echoed.
Failures by kind: ${failures.length ? failures.map(([k, v]) => `${k} × ${v}`).join("; ") : "none"}.
Error-level log lines of the appliance: ${extra.errorLines.length}${extra.errorLines.length ? ` (first: ${JSON.stringify(extra.errorLines[0]).slice(0, 300)})` : ""}.
Warn/error log lines by message: ${
    [...extra.warnings.entries()]
      .sort((a, b) => b[1] - a[1])
      .slice(0, 8)
      .map(([k, v]) => `\`${k}\` × ${v}`)
      .join("; ") || "none"
  }.

## Curve

| t (s) | RSS (MiB) | fds | established | per s | failed | TCP relayed (MiB) | UDP echoes | load avg | |
|---:|---:|---:|---:|---:|---:|---:|---:|---|---|
${rows.join("\n")}
`;
}

/**
 * The fake agent (with its session endpoint) in a process of its own, so that the load generator's event loop does
 * not slow the agent's answers down (the appliance would time them out and count its own failures).
 */
async function startAgentProcess(): Promise<{
  port: number;
  sessionPort: number;
  proc: ReturnType<typeof Bun.spawn>;
}> {
  // The agent's certificate comes from this process's test CA (the relayed clients verify it); the fake agent's
  // default would come from the child's own CA. Its names are those fake-agent.ts itself would use.
  const leaf = testPki().leaf(["localhost", "127.0.0.1", "::1", "desktop-1.test"]);
  const proc = Bun.spawn([process.execPath, resolve(import.meta.dir, "agent-process.ts")], {
    stdin: "ignore",
    stdout: "pipe",
    stderr: "inherit",
    env: { ...process.env, SOAK_AGENT_CERT: leaf.certFile, SOAK_AGENT_KEY: leaf.keyFile },
  });
  const text = await Promise.race([
    (async () => {
      const dec = new TextDecoder();
      let buf = "";
      for await (const chunk of proc.stdout as ReadableStream<Uint8Array>) {
        buf += dec.decode(chunk, { stream: true });
        if (buf.includes("\n")) return buf;
      }
      return buf;
    })(),
    Bun.sleep(20_000).then(() => ""),
  ]);
  const port = Number(/"port":(\d+)/.exec(text)?.[1] ?? Number.NaN);
  if (!Number.isFinite(port)) {
    proc.kill();
    throw new Error(`fake agent process did not start: ${JSON.stringify(text)}`);
  }
  const sessionPort = Number(/"sessionPort":(\d+)/.exec(text)?.[1] ?? 4172);
  return { port, sessionPort, proc };
}

function splitHostPort(hp: string): [string, number] {
  const i = hp.lastIndexOf(":");
  return [hp.slice(0, i).replace(/^\[|\]$/g, ""), Number(hp.slice(i + 1))];
}

if (import.meta.main) {
  main().then(
    (code) => process.exit(code),
    (e) => {
      process.stderr.write(`soak: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
      process.exit(1);
    },
  );
}
