// Claim: with real routing between three network namespaces — a "wan" client that cannot reach the "lan" agent
// at all, and the SG holding an interface in each — the client's TLS control connection and its UDP media reach
// the agent only through the SG, and the agent sees the SG's LAN address with a source port from the range.
// Everything lives in namespaces this test creates (10.250.x addresses inside them only) and removes afterwards.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { X509Certificate } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import type { Subprocess } from "bun";
import { testPki } from "../peers/test-certs.ts";

const id = process.pid % 100_000;
const NS = { wan: `sgw${id}`, sg: `sgs${id}`, lan: `sgl${id}` };
const IP = { client: "10.250.1.1", sgWan: "10.250.1.2", sgLan: "10.250.2.2", agent: "10.250.2.1" };
const SNI = "agent-lan.corp.test";
const SOURCE_PORTS = { from: 55000, to: 55099 };
const root = resolve(import.meta.dir, "../..");

function sh(args: string[]): { ok: boolean; err: string } {
  const r = Bun.spawnSync(args, { stdout: "pipe", stderr: "pipe" });
  return { ok: r.exitCode === 0, err: r.stderr.toString().trim() };
}

// Probe once at load: the only reason to skip is a kernel (or container) that refuses network namespaces.
const probe = sh(["ip", "netns", "add", NS.wan]);
const skipReason = probe.ok
  ? ""
  : `network namespaces unavailable (ip netns add: ${probe.err}); netns test skipped`;
if (skipReason) console.warn(skipReason);

const procs: Subprocess<"ignore", "pipe", "pipe">[] = [];
let dir = "";

function inNs(ns: string, cmd: string[]): Subprocess<"ignore", "pipe", "pipe"> {
  const p = Bun.spawn(["ip", "netns", "exec", ns, ...cmd], {
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
  });
  procs.push(p);
  return p;
}

/** Reads a process's stdout as JSON lines; `next(pred)` waits for the first line that satisfies `pred`. */
function jsonLines(p: Subprocess<"ignore", "pipe", "pipe">) {
  const seen: Record<string, unknown>[] = [];
  let wake: (() => void) | undefined;
  (async () => {
    let buf = "";
    for await (const chunk of p.stdout) {
      buf += new TextDecoder().decode(chunk);
      let nl = buf.indexOf("\n");
      while (nl >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        try {
          seen.push(JSON.parse(line));
        } catch {
          // not ours (a stray print): ignore
        }
        nl = buf.indexOf("\n");
      }
      wake?.();
    }
    wake?.();
  })();
  return {
    seen,
    async next(pred: (o: Record<string, unknown>) => boolean, ms = 8000): Promise<Record<string, unknown>> {
      const end = Date.now() + ms;
      for (;;) {
        const hit = seen.find(pred);
        if (hit) return hit;
        if (Date.now() > end || p.exitCode !== null) {
          const err = await new Response(p.stderr).text().catch(() => "");
          throw new Error(`no expected line from ${p.pid} (exit ${p.exitCode}); stderr: ${err.slice(-2000)}`);
        }
        await new Promise<void>((r) => {
          wake = r;
          setTimeout(r, 50);
        });
      }
    },
  };
}

const SG_SCRIPT = `
import { createLogger } from ${JSON.stringify(join(root, "src/observability/log.ts"))};
import { createAdmissions } from ${JSON.stringify(join(root, "src/sg/admissions.ts"))};
import { startTcpRelay } from ${JSON.stringify(join(root, "src/sg/tcp-relay.ts"))};
import { startUdpRelay } from ${JSON.stringify(join(root, "src/sg/udp-relay.ts"))};
const [clientIp, agentHost, sni, from, to] = process.argv.slice(2);
const log = createLogger({ destination: { write: (s) => process.stderr.write(s) } });
const admissions = createAdmissions();
const r = admissions.admit({ sessionLogId: "44444444-0000-4000-8000-000000000001", agentSessionId: "netns",
  clientIp, agentHost, agentTcpPort: 4172, agentUdpPort: 4172, sni });
if (!r.ok) throw new Error("admit: " + r.reason);
const tcp = await startTcpRelay({ listen: [{ hostname: "0.0.0.0", port: 4172 }], admissions, log });
const udp = await startUdpRelay({ listen: [{ hostname: "0.0.0.0", port: 4172 }], admissions, log,
  sourcePorts: { from: Number(from), to: Number(to) } });
if (!tcp.ok || !udp.ok) throw new Error("start: " + JSON.stringify(tcp.ok ? udp.error : tcp.error));
console.log(JSON.stringify({ event: "ready" }));
process.stdin.resume();
setInterval(() => console.log(JSON.stringify({ event: "counters", tcp: tcp.relay.counters, udp: udp.relay.counters,
  flows: udp.relay.flows() })), 100);
`;

const CLIENT_SCRIPT = `
import { connectControl } from ${JSON.stringify(join(root, "test/peers/agent-endpoint.ts"))};
const [sgIp, agentIp, sni, caFile] = process.argv.slice(2);
const ca = await Bun.file(caFile).text();
const out = {};
// 1. The agent is not routable from here: a direct connection must fail.
out.direct = await new Promise((res) => {
  Bun.connect({ hostname: agentIp, port: 4172, socket: { open: (s) => { s.end(); res("connected"); },
    connectError: (_s, e) => res("refused: " + (e.code ?? e.message)), data() {} } }).catch((e) => res("refused: " + (e.code ?? e.message)));
});
// 2. Through the SG: TLS with the agent's name, then data both ways.
const c = await connectControl({ hostname: sgIp, port: 4172, serverName: sni, ca, timeoutMs: 5000 });
out.tls = c.ok;
if (c.ok) {
  out.fingerprint = c.client.peerCert.fingerprint256;
  c.client.write("through-the-sg");
  await c.client.waitFor("through-the-sg", 5000);
  out.echo = true;
}
// 3. UDP media to the SG's 4172, echoed back by the agent.
let replies = 0;
const sock = await Bun.udpSocket({ hostname: "0.0.0.0", socket: { data() { replies++; }, error() {} } });
for (let i = 0; i < 50; i++) { sock.send("media-" + i, 4172, sgIp); if (i % 10 === 9) await Bun.sleep(5); }
const end = Date.now() + 3000;
while (replies < 50 && Date.now() < end) await Bun.sleep(10);
out.udpReplies = replies;
sock.close();
if (c.ok) c.client.close();
console.log(JSON.stringify({ event: "result", ...out }));
`;

beforeAll(() => {
  if (skipReason) return;
  dir = mkdtempSync(join(tmpdir(), "sg-netns-"));
  writeFileSync(join(dir, "sg.ts"), SG_SCRIPT);
  writeFileSync(join(dir, "client.ts"), CLIENT_SCRIPT);
  const steps: string[][] = [
    ["ip", "netns", "add", NS.sg],
    ["ip", "netns", "add", NS.lan],
    [
      "ip",
      "link",
      "add",
      `w${id}a`,
      "netns",
      NS.wan,
      "type",
      "veth",
      "peer",
      "name",
      `w${id}b`,
      "netns",
      NS.sg,
    ],
    [
      "ip",
      "link",
      "add",
      `l${id}a`,
      "netns",
      NS.lan,
      "type",
      "veth",
      "peer",
      "name",
      `l${id}b`,
      "netns",
      NS.sg,
    ],
    ["ip", "-n", NS.wan, "addr", "add", `${IP.client}/24`, "dev", `w${id}a`],
    ["ip", "-n", NS.sg, "addr", "add", `${IP.sgWan}/24`, "dev", `w${id}b`],
    ["ip", "-n", NS.sg, "addr", "add", `${IP.sgLan}/24`, "dev", `l${id}b`],
    ["ip", "-n", NS.lan, "addr", "add", `${IP.agent}/24`, "dev", `l${id}a`],
    ...[NS.wan, NS.sg, NS.lan].map((ns) => ["ip", "-n", ns, "link", "set", "lo", "up"]),
    ["ip", "-n", NS.wan, "link", "set", `w${id}a`, "up"],
    ["ip", "-n", NS.sg, "link", "set", `w${id}b`, "up"],
    ["ip", "-n", NS.sg, "link", "set", `l${id}b`, "up"],
    ["ip", "-n", NS.lan, "link", "set", `l${id}a`, "up"],
  ];
  for (const s of steps) {
    const r = sh(s);
    if (!r.ok) throw new Error(`${s.join(" ")}: ${r.err}`);
  }
});

afterAll(async () => {
  for (const p of procs) p.kill();
  await Promise.all(procs.map((p) => p.exited));
  // Deleting a namespace removes its veth ends too. Each is attempted even if another fails.
  if (probe.ok) for (const ns of [NS.wan, NS.sg, NS.lan]) sh(["ip", "netns", "del", ns]);
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test.skipIf(skipReason !== "")(
  "wan client → SG namespace → lan agent, TCP (TLS end to end) and UDP",
  async () => {
    const pki = testPki();
    const leaf = pki.leaf([SNI]);
    const agent = jsonLines(
      inNs(NS.lan, [
        process.execPath,
        join(root, "test/peers/agent-endpoint.ts"),
        "--host",
        IP.agent,
        "--port",
        "4172",
        "--cert",
        leaf.certFile,
        "--key",
        leaf.keyFile,
      ]),
    );
    await agent.next((o) => o.event === "ready");
    const sg = jsonLines(
      inNs(NS.sg, [
        process.execPath,
        join(dir, "sg.ts"),
        IP.client,
        IP.agent,
        SNI,
        String(SOURCE_PORTS.from),
        String(SOURCE_PORTS.to),
      ]),
    );
    await sg.next((o) => o.event === "ready");
    const client = jsonLines(
      inNs(NS.wan, [process.execPath, join(dir, "client.ts"), IP.sgWan, IP.agent, SNI, pki.ca.certFile]),
    );
    const result = await client.next((o) => o.event === "result", 15_000);

    // No route from wan to lan except through the SG: the kernel has none, and a direct connection fails.
    expect(sh(["ip", "-n", NS.wan, "route", "get", IP.agent]).err).toContain("unreachable");
    expect(String(result.direct)).toStartWith("refused");
    expect(result.tls).toBe(true);
    expect(result.fingerprint).toBe(new X509Certificate(leaf.cert).fingerprint256);
    expect(result.echo).toBe(true);
    expect(result.udpReplies).toBe(50);

    const tcpPeer = await agent.next((o) => o.event === "tcp");
    expect(tcpPeer).toMatchObject({ peer: IP.sgLan, sni: SNI });
    const udpSource = await agent.next((o) => o.event === "udp-source");
    expect(udpSource.address).toBe(IP.sgLan);
    expect(Number(udpSource.port)).toBeGreaterThanOrEqual(SOURCE_PORTS.from);
    expect(Number(udpSource.port)).toBeLessThanOrEqual(SOURCE_PORTS.to);
    expect(agent.seen.filter((o) => o.event === "udp-source").length).toBe(1); // one session, one source port

    const counters = await sg.next(
      (o) => o.event === "counters" && (o.udp as { packetsDown: number }).packetsDown === 50,
    );
    expect(counters).toMatchObject({
      tcp: { relayed: 1 },
      udp: { packetsUp: 50, packetsDown: 50, flowsBound: 1 },
    });
  },
  30_000,
);
