/**
 * Figure: logins through HAProxy to 1, 2 and 3 nodes, and what a node adds in memory (issue 19). HAProxy runs the
 * L7 reference as shipped (config/haproxy/l7-terminate-tls.cfg: TLS terminated, JSESSIONID prefix cookie,
 * X-Forwarded-For, re-encryption to the nodes), with its addresses and certificate paths swapped for loopback
 * ones and only the first N server lines kept. Each login is hello → authenticate → get-resource-list →
 * allocate-resource → bye on one kept-alive TLS connection to the VIP (bench/lib/logins.ts), closed loop.
 *
 * Every node, HAProxy, the fake agent (0 ms, own process) and the load generator share this machine's cores, so
 * the ratios say what a second and third node buy when they do NOT add CPU — on real hardware each node brings
 * its own 2 vCPU. The password is checked with argon2id at its lowest cost (the users file's default cost is
 * ≈84 ms of CPU per login by design and would measure the hash, not the path; bench/cm-logins.ts uses slapd).
 *
 * Prints: logins/s direct to one node (no balancer: the peer), through HAProxy to 1, 2 and 3 nodes (ratios to
 * the direct figure and to 1 node), and the RSS of a node idle and after the load (vs HAProxy's own RSS).
 *
 * Env: BENCH_LB_SECONDS (5), BENCH_LB_IN_FLIGHT (16). Run: npx bun bench/lb-nodes.ts
 */
import { readFileSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { writeUsersFile } from "../src/cm/auth/local-users.ts";
import { haproxyShowStat } from "../test/peers/haproxy-stat.ts";
import { testPki } from "../test/peers/test-certs.ts";
import { applianceArgv, cleanEnv, rssBytes, writeApplianceConfig } from "./lib/appliance.ts";
import { createCpuMeter } from "./lib/cpu.ts";
import { type LoginStats, runLogins } from "./lib/logins.ts";
import { machineNote } from "./lib/machine.ts";
import { freePort, LOOPBACK, waitBound } from "./lib/net.ts";
import { type Child, createProcessSet, type ProcessSet } from "./lib/processes.ts";
import { detail, envNumber, figureLine, fmt, print } from "./lib/report.ts";
import { workDir } from "./lib/tools.ts";

const SECONDS = envNumber("BENCH_LB_SECONDS", 5);
const IN_FLIGHT = envNumber("BENCH_LB_IN_FLIGHT", 16);
const AGENT_HOST = "127.0.0.83";
const REFERENCE = resolve(import.meta.dir, "../config/haproxy/l7-terminate-tls.cfg");
const cpu = createCpuMeter();

interface Node {
  readonly child: Child;
  readonly cmPort: number;
  readonly rssIdle: number;
}

async function startNode(
  procs: ProcessSet,
  i: number,
  cert: { certFile: string; keyFile: string },
  ca: string,
) {
  const name = `lb-node-${i}`;
  const adminPort = await freePort("tcp");
  const file = await writeApplianceConfig(
    {
      name,
      certFile: cert.certFile,
      keyFile: cert.keyFile,
      caCertFile: ca,
      cm: { maxConcurrentEstablishments: 5000, maxPreSessionsPerIp: 1000000, maxPasswordChecksPerIp: 10000 },
      // Each node its own UDP source range: three SGs on one host.
      sg: { maxSessions: 100000, udpSourcePorts: `${10000 + i * 10000}-${19999 + i * 10000}` },
      extraToml: ["[[desktops]]", 'id = "0"', `agent = "${AGENT_HOST}"`, 'users = ["*"]', ""].join("\n"),
    },
    adminPort,
  );
  // The balancer is trusted (its X-Forwarded-For names the client); a top-level key, so it goes first.
  // Each node its own external address (config check refuses the balancer's); no media flows in this bench.
  const toml = readFileSync(file, "utf8").replace(
    'externalPcoipIp = ["127.0.0.1"]',
    `externalPcoipIp = ["127.0.0.${91 + i}"]`,
  );
  writeFileSync(file, `trustedProxies = ["127.0.0.1"]\n${toml}`);
  const cheap = await Bun.password.hash("bench", { algorithm: "argon2id", memoryCost: 1024, timeCost: 1 });
  await writeUsersFile(join(workDir(`appliance-${name}`), "users"), [{ name: "bench", hash: cheap }]);
  const child = procs.spawn(name, applianceArgv({ name }, file), { env: cleanEnv() });
  const line = await child.waitForLine((l) => l.includes('"listener":"cm"'), 30_000);
  await child.waitForLine((l) => l.includes('"listener":"admin"'), 30_000);
  const address = String((JSON.parse(line) as { address: string }).address);
  await Bun.sleep(500);
  return { child, cmPort: Number(address.slice(address.lastIndexOf(":") + 1)), rssIdle: rssBytes(child.pid) };
}

/** The L7 reference with `nodes` as its servers, on loopback; returns the VIP port. */
async function startHaproxy(procs: ProcessSet, nodes: readonly Node[], pem: string, ca: string) {
  const dir = workDir(`haproxy-${nodes.length}`);
  const vip = await freePort("tcp");
  const plain = await freePort("tcp");
  let text = readFileSync(REFERENCE, "utf8")
    .replace("203.0.113.10:443", `${LOOPBACK}:${vip}`)
    .replace("203.0.113.10:80", `${LOOPBACK}:${plain}`)
    .replace("/etc/haproxy/certs/cm.pem", pem)
    .replaceAll("/etc/haproxy/certs/pcoip-ca.pem", ca)
    .replace("/run/haproxy/admin.sock", join(dir, "admin.sock"))
    .replace(/^ {4}log \/dev\/log local0\n/m, "");
  for (let k = 1; k <= 3; k++) {
    const node = nodes[k - 1];
    text = node
      ? text.replace(`192.0.2.1${k}:443`, `${LOOPBACK}:${node.cmPort}`)
      : text.replace(new RegExp(`^ {4}server node${k} .*\\n`, "m"), "");
  }
  const file = join(dir, "haproxy.cfg");
  writeFileSync(file, text);
  const child = procs.spawn(`haproxy-${nodes.length}`, ["haproxy", "-db", "-f", file]);
  await waitBound("tcp", vip, child.exited, child.name);
  return { child, vip, socket: join(dir, "admin.sock") };
}

/** Waits until HAProxy's checks passed for every server (rise 2 × inter 2 s at most). */
async function allUp(socket: string, n: number): Promise<void> {
  const end = Date.now() + 15_000;
  while (Date.now() < end) {
    const up = (await haproxyShowStat(socket))
      .split("\n")
      .filter((l) => /^pcoip_nodes,node\d,/.test(l) && l.split(",")[17] === "UP");
    if (up.length === n) return;
    await Bun.sleep(200);
  }
  throw new Error(`HAProxy did not see ${n} node(s) UP within 15 s`);
}

function describe(label: string, s: LoginStats, cpuNote: string): void {
  detail(
    `${label}: ${s.completed} done (${fmt(s.perSecond)}/s), ${s.failed} failed, p50 ${fmt(s.p50Ms)} / p99 ${fmt(s.p99Ms)} ms; ` +
      `CPU ${cpuNote}${s.errors.length ? `; errors: ${s.errors.join(" | ")}` : ""}`,
  );
}

async function measure(
  port: number,
  ca: string,
  pids: Record<string, number>,
): Promise<{ s: LoginStats; note: string }> {
  const before = Object.fromEntries(Object.entries(pids).map(([k, p]) => [k, cpu.seconds(p)]));
  const s = await runLogins({ port, ca }, { seconds: SECONDS, concurrency: IN_FLIGHT });
  const note = Object.entries(pids)
    .map(([k, p]) => `${k} ${fmt(((cpu.seconds(p) - before[k]!) / SECONDS) * 100)} %`)
    .join(", ");
  return { s, note };
}

async function main(): Promise<void> {
  const procs = createProcessSet();
  try {
    detail(await machineNote());
    const pki = testPki();
    const leaf = pki.leaf(["localhost", LOOPBACK]);
    const pem = join(workDir("haproxy-pem"), "vip.pem");
    writeFileSync(pem, `${leaf.cert.trimEnd()}\n${leaf.key}`);
    const agent = procs.spawn(
      "agent-0ms",
      [
        process.execPath,
        join(import.meta.dir, "lib/cm-upstreams.ts"),
        "--role",
        "agent",
        "--agent-host",
        AGENT_HOST,
      ],
      { stdin: "pipe", env: { ...process.env, BENCH_CM_UPSTREAM_MS: "0" } },
    );
    await agent.waitForLine((l) => l.includes('"event":"ready"'), 20_000);
    const nodes: Node[] = [];
    for (let i = 0; i < 3; i++) nodes.push(await startNode(procs, i, leaf, pki.ca.certFile));
    detail(
      `HAProxy ${Bun.spawnSync(["haproxy", "-v"]).stdout.toString().split("\n")[0]?.split(" ")[2] ?? "?"} with the ` +
        `L7 reference; built-in broker, fake agent at 0 ms (own process); ${IN_FLIGHT} logins in flight, ` +
        `${SECONDS} s per run; every process shares this machine's cores`,
    );

    const ca = pki.ca.cert;
    const direct = await measure(nodes[0]!.cmPort, ca, { node1: nodes[0]!.child.pid });
    describe("direct to node 1 (no balancer)", direct.s, direct.note);
    const through: LoginStats[] = [];
    let haproxyRss = 0;
    for (const n of [1, 2, 3]) {
      const set = nodes.slice(0, n);
      const ha = await startHaproxy(procs, set, pem, pki.ca.certFile);
      await allUp(ha.socket, n);
      const pids = Object.fromEntries([
        ["haproxy", ha.child.pid],
        ...set.map((x, k) => [`node${k + 1}`, x.child.pid]),
      ]);
      const m = await measure(ha.vip, ca, pids);
      describe(`through HAProxy to ${n} node(s)`, m.s, m.note);
      through.push(m.s);
      haproxyRss = rssBytes(ha.child.pid);
      await ha.child.stop();
    }
    const one = through[0]!.perSecond;
    print(
      figureLine({
        name: "logins through HAProxy (L7 reference) to 1 node",
        value: one,
        unit: "logins/s",
        peer: "the same node direct, no balancer",
        peerValue: direct.s.perSecond,
      }),
    );
    for (const n of [2, 3])
      print(
        figureLine({
          name: `logins through HAProxy to ${n} nodes (all on this machine's cores)`,
          value: through[n - 1]!.perSecond,
          unit: "logins/s",
          peer: "HAProxy to 1 node",
          peerValue: one,
        }),
      );
    const mib = (b: number) => b / 1024 / 1024;
    const idle = nodes.reduce((a, x) => a + x.rssIdle, 0) / nodes.length;
    const loaded = nodes.reduce((a, x) => a + rssBytes(x.child.pid), 0) / nodes.length;
    print(
      figureLine({
        name: "memory a node adds (RSS after the runs, mean of 3)",
        value: mib(loaded),
        unit: "MiB",
        peer: "HAProxy after 3 nodes' load",
        peerValue: mib(haproxyRss),
      }),
    );
    detail(`node RSS idle after start: ${fmt(mib(idle))} MiB (mean of 3)`);
    const failed = [direct.s, ...through].reduce((a, s) => a + s.failed, 0);
    if (failed > 0) detail(`${failed} logins failed in all: see the errors above`);
  } finally {
    await procs.stopAll();
  }
}

await main();
