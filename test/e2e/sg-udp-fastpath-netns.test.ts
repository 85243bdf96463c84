// Claim: in three network namespaces this test builds (client — SG with two veths — agent; 198.18.0.0/15; real
// nftables), an admitted session's datagrams reach the agent from the SG's LAN address and a port of
// sg.udpSourcePorts, and the replies come back from the SG's 4172; with sg.udpFastPath = "on" the SG process sees
// only the first datagram (the kernel carries the rest, and counts them for the session), with "off" the
// userspace relay carries all. In both: an unadmitted source port of another client IP is not forwarded, nothing is
// forwarded after the session ended, and a kill -9 of the SG and a restart leave no stale mapping (the restarted
// SG, which admits nothing, forwards nothing; the table is gone after a clean stop). The session's teardown line
// carries the packets both ways in both modes.
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import type { Subprocess } from "bun";

const root = resolve(import.meta.dir, "../..");
const suffix = Math.random().toString(36).slice(2, 8);
const NS = { client: `kfpc${suffix}`, sg: `kfps${suffix}`, agent: `kfpa${suffix}` };
const IP = {
  client: "198.18.1.1",
  otherClient: "198.18.1.3",
  sgWan: "198.18.1.2",
  sgLan: "198.18.2.2",
  agent: "198.18.2.1",
};
const SOURCE_PORTS = { from: 55100, to: 55199 };
const SESSION = "77777777-0000-4000-8000-000000000001";

function sh(args: string[]): { ok: boolean; out: string; err: string } {
  const r = Bun.spawnSync(args, { stdout: "pipe", stderr: "pipe" });
  return { ok: r.exitCode === 0, out: r.stdout.toString(), err: r.stderr.toString().trim() };
}

// The only reasons to skip: no CAP_NET_ADMIN (namespaces refused) or no nftables, and never under CI.
const probe = sh(["ip", "netns", "add", NS.client]);
const nftProbe = probe.ok ? sh(["ip", "netns", "exec", NS.client, "nft", "list", "ruleset"]) : undefined;
const skipReason = !probe.ok
  ? `no CAP_NET_ADMIN for network namespaces (ip netns add: ${probe.err})`
  : !nftProbe?.ok
    ? `nftables unavailable (nft: ${nftProbe?.err}; scripts/system-deps.sh installs it)`
    : "";
if (skipReason && process.env.CI === "true") throw new Error(`CI must not skip: ${skipReason}`);
if (skipReason) console.warn(`kernel UDP path netns test skipped: ${skipReason}`);

type Proc = Subprocess<"pipe", "pipe", "pipe">;
const procs: Proc[] = [];
let dir = "";

function inNs(ns: string, cmd: string[]): Proc {
  const p = Bun.spawn(["ip", "netns", "exec", ns, ...cmd], { stdin: "pipe", stdout: "pipe", stderr: "pipe" });
  procs.push(p);
  return p;
}

/** JSON lines of a process's stdout; `next(pred)` waits for the first new line that satisfies `pred`. */
function jsonLines(p: Proc) {
  const seen: Record<string, unknown>[] = [];
  (async () => {
    let buf = "";
    for await (const chunk of p.stdout) {
      buf += new TextDecoder().decode(chunk);
      for (let nl = buf.indexOf("\n"); nl >= 0; nl = buf.indexOf("\n")) {
        try {
          seen.push(JSON.parse(buf.slice(0, nl)));
        } catch {
          // not a JSON line
        }
        buf = buf.slice(nl + 1);
      }
    }
  })();
  return {
    seen,
    async next(pred: (o: Record<string, unknown>) => boolean, ms = 8000, from = 0) {
      const end = Date.now() + ms;
      for (;;) {
        const hit = seen.slice(from).find(pred);
        if (hit) return hit;
        if (Date.now() > end || p.exitCode !== null) {
          const err = await new Response(p.stderr).text().catch(() => "");
          throw new Error(`no expected line from pid ${p.pid} (exit ${p.exitCode}): ${err.slice(-1500)}`);
        }
        await Bun.sleep(25);
      }
    },
  };
}

const SG_SCRIPT = `
import { createLogger } from ${JSON.stringify(join(root, "src/observability/log.ts"))};
import { createAdmissions } from ${JSON.stringify(join(root, "src/sg/admissions.ts"))};
import { startUdpRelay } from ${JSON.stringify(join(root, "src/sg/udp-relay.ts"))};
const [mode, clientIp, agentHost, from, to, admit] = process.argv.slice(2);
const log = createLogger({ destination: { write: (s) => process.stdout.write(s) } }); // JSON lines the test reads
const admissions = createAdmissions();
if (admit === "1") {
  const r = admissions.admit({ sessionLogId: ${JSON.stringify(SESSION)}, agentSessionId: "netns", clientIp, agentHost,
    agentTcpPort: 4172, agentUdpPort: 4172, sni: agentHost });
  if (!r.ok) throw new Error("admit: " + r.reason);
  admissions.attachTcp(${JSON.stringify(SESSION)}); // its control connection is relayed (test/e2e/sg-netns.test.ts)
}
const u = await startUdpRelay({ listen: [{ hostname: "0.0.0.0", port: 4172 }], admissions, log, fastPath: mode,
  sourcePorts: { from: Number(from), to: Number(to) }, sweepEveryMs: 100 });
if (!u.ok) throw new Error("start: " + JSON.stringify(u.error));
const state = () => ({ path: u.relay.path, fastPathFlows: u.relay.fastPathFlows, counters: u.relay.counters,
  flows: u.relay.flows() });
console.log(JSON.stringify({ event: "ready", ...state() }));
let buf = "";
process.stdin.on("data", async (d) => {
  buf += d;
  for (let nl = buf.indexOf("\\n"); nl >= 0; nl = buf.indexOf("\\n")) {
    const cmd = buf.slice(0, nl).trim();
    buf = buf.slice(nl + 1);
    if (cmd === "end") { admissions.end(${JSON.stringify(SESSION)}); console.log(JSON.stringify({ event: "ended", ...state() })); }
    if (cmd === "state") console.log(JSON.stringify({ event: "state", ...state() }));
    if (cmd === "stop") { await u.relay.stop(); console.log(JSON.stringify({ event: "stopped", ...state() })); }
  }
});
`;

const AGENT_SCRIPT = `
const [host] = process.argv.slice(2);
const sources = {};
await Bun.udpSocket({ hostname: host, port: 4172, socket: {
  data(s, buf, port, addr) { const k = addr + ":" + port; sources[k] = (sources[k] ?? 0) + 1; s.send(buf, port, addr); },
  error() {} } });
console.log(JSON.stringify({ event: "ready" }));
setInterval(() => console.log(JSON.stringify({ event: "sources", sources })), 100);
`;

/** Closed loop: sends one datagram, waits for its echo (or waitMs), n times; reports replies and their sources. */
const CLIENT_SCRIPT = `
const [bindIp, sgIp, n, label, waitMs] = process.argv.slice(2);
let wake;
const from = new Set();
let replies = 0;
const sock = await Bun.udpSocket({ hostname: bindIp, socket: {
  data(_s, _b, port, addr) { replies++; from.add(addr + ":" + port); wake?.(); }, error() {} } });
for (let i = 0; i < Number(n); i++) {
  const got = new Promise((r) => { wake = r; setTimeout(r, Number(waitMs)); });
  sock.send(label + "-" + i, 4172, sgIp);
  await got;
}
await Bun.sleep(200);
console.log(JSON.stringify({ event: "result", replies, from: [...from], port: sock.port }));
sock.close();
`;

/** Expecting answers: wait up to 300 ms for each; expecting none: 50 ms is enough to see one come back. */
async function runClient(
  bindIp: string,
  n: number,
  label: string,
  waitMs = label.includes("after") || label === "other-ip" ? 50 : 300,
) {
  const c = jsonLines(
    inNs(NS.client, [
      process.execPath,
      join(dir, "client.ts"),
      bindIp,
      IP.sgWan,
      String(n),
      label,
      String(waitMs),
    ]),
  );
  return (await c.next((o) => o.event === "result", 20_000)) as {
    replies: number;
    from: string[];
    port: number;
  };
}

function startSg(mode: string, admit: boolean) {
  const p = inNs(NS.sg, [
    process.execPath,
    join(dir, "sg.ts"),
    mode,
    IP.client,
    IP.agent,
    String(SOURCE_PORTS.from),
    String(SOURCE_PORTS.to),
    admit ? "1" : "0",
  ]);
  sgProcs.push(p);
  return { p, lines: jsonLines(p), send: (cmd: string) => p.stdin.write(`${cmd}\n`) };
}

async function stopProc(p: Proc, signal: NodeJS.Signals = "SIGTERM") {
  p.kill(signal);
  await p.exited;
}

let agent: ReturnType<typeof jsonLines>;
/** Datagrams the agent received from each source so far. */
async function agentSources(): Promise<Record<string, number>> {
  const from = agent.seen.length;
  const o = await agent.next((x) => x.event === "sources", 3000, from);
  return o.sources as Record<string, number>;
}
const total = (s: Record<string, number>) => Object.values(s).reduce((a, b) => a + b, 0);

beforeAll(async () => {
  if (skipReason) return;
  dir = mkdtempSync(join(tmpdir(), "kfp-"));
  writeFileSync(join(dir, "sg.ts"), SG_SCRIPT);
  writeFileSync(join(dir, "agent.ts"), AGENT_SCRIPT);
  writeFileSync(join(dir, "client.ts"), CLIENT_SCRIPT);
  const v = (n: string) => `${n}${suffix}`;
  const steps: string[][] = [
    ["ip", "netns", "add", NS.sg],
    ["ip", "netns", "add", NS.agent],
    [
      "ip",
      "link",
      "add",
      v("kc"),
      "netns",
      NS.client,
      "type",
      "veth",
      "peer",
      "name",
      v("ks"),
      "netns",
      NS.sg,
    ],
    [
      "ip",
      "link",
      "add",
      v("ka"),
      "netns",
      NS.agent,
      "type",
      "veth",
      "peer",
      "name",
      v("kl"),
      "netns",
      NS.sg,
    ],
    ["ip", "-n", NS.client, "addr", "add", `${IP.client}/24`, "dev", v("kc")],
    ["ip", "-n", NS.client, "addr", "add", `${IP.otherClient}/24`, "dev", v("kc")],
    ["ip", "-n", NS.sg, "addr", "add", `${IP.sgWan}/24`, "dev", v("ks")],
    ["ip", "-n", NS.sg, "addr", "add", `${IP.sgLan}/24`, "dev", v("kl")],
    ["ip", "-n", NS.agent, "addr", "add", `${IP.agent}/24`, "dev", v("ka")],
    ...[NS.client, NS.sg, NS.agent].map((ns) => ["ip", "-n", ns, "link", "set", "lo", "up"]),
    ["ip", "-n", NS.client, "link", "set", v("kc"), "up"],
    ["ip", "-n", NS.sg, "link", "set", v("ks"), "up"],
    ["ip", "-n", NS.sg, "link", "set", v("kl"), "up"],
    ["ip", "-n", NS.agent, "link", "set", v("ka"), "up"],
    // The agent answers the SG's LAN address only (no route to the client): media must come back through the SG.
    ["ip", "netns", "exec", NS.sg, "sysctl", "-qw", "net.ipv4.ip_forward=0"],
  ];
  for (const s of steps) {
    const r = sh(s);
    if (!r.ok) throw new Error(`${s.join(" ")}: ${r.err}`);
  }
  agent = jsonLines(inNs(NS.agent, [process.execPath, join(dir, "agent.ts"), IP.agent]));
  await agent.next((o) => o.event === "ready");
});

afterAll(async () => {
  for (const p of procs) p.kill("SIGKILL");
  await Promise.all(procs.map((p) => p.exited));
  if (probe.ok) for (const ns of [NS.client, NS.sg, NS.agent]) sh(["ip", "netns", "del", ns]);
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** The SG processes of a test end with it, also when it fails (the agent lives for the whole file). */
const sgProcs: Proc[] = [];
afterEach(async () => {
  for (const p of sgProcs.splice(0)) p.kill("SIGKILL");
  await Bun.sleep(100);
});

const tableExists = () => sh(["ip", "netns", "exec", NS.sg, "nft", "list", "table", "inet", "pcoip_cmsg"]).ok;

describe.each([["on"], ["off"]])("sg.udpFastPath = %s", (mode) => {
  test.skipIf(skipReason !== "")(
    "admitted media flows (kernel or userspace), nothing else is forwarded, kill -9 leaves no stale mapping",
    async () => {
      const sg = startSg(mode, true);
      const ready = await sg.lines.next((o) => o.event === "ready");
      expect(ready.path).toBe(mode === "on" ? "kernel" : "userspace");
      const agentBefore = total(await agentSources());

      // 1. The admitted client: 200 closed-loop round trips.
      const r = await runClient(IP.client, 200, "admitted");
      expect(r.replies).toBeGreaterThanOrEqual(199);
      expect(r.from).toEqual([`${IP.sgWan}:4172`]);
      const sources = await agentSources();
      const fromSg = Object.entries(sources).filter(([k]) => k.startsWith(`${IP.sgLan}:`));
      expect(fromSg.length).toBe(1);
      const sourcePort = Number(fromSg[0]![0].split(":")[1]);
      expect(sourcePort).toBeGreaterThanOrEqual(SOURCE_PORTS.from);
      expect(sourcePort).toBeLessThanOrEqual(SOURCE_PORTS.to);
      expect(total(sources) - agentBefore).toBeGreaterThanOrEqual(199);
      // The kernel's counters reach the relay's totals on its sweep (at most every 5 s).
      type Counters = { packetsUp: number; kernelPacketsUp: number; kernelPacketsDown: number };
      let st: Record<string, unknown> = {};
      for (let i = 0; i < 40; i++) {
        const from = sg.lines.seen.length;
        sg.send("state");
        st = await sg.lines.next((o) => o.event === "state", 3000, from);
        if ((st.counters as Counters).packetsUp >= 199) break;
        await Bun.sleep(250);
      }
      const c = st.counters as Counters;
      const seenUp = c.packetsUp - c.kernelPacketsUp;
      console.log(
        `figure (${mode}): SG process saw ${seenUp} of ${c.packetsUp} client datagrams; kernel carried ${c.kernelPacketsUp} up, ${c.kernelPacketsDown} down`,
      );
      if (mode === "on") {
        expect(st.fastPathFlows).toBe(1);
        expect(seenUp).toBe(1);
        expect(c.kernelPacketsUp).toBeGreaterThanOrEqual(198);
        expect(c.kernelPacketsDown).toBeGreaterThanOrEqual(195); // the first answers reach the relay while the NAT binding forms
      } else {
        expect(c.kernelPacketsUp).toBe(0);
        expect(seenUp).toBeGreaterThanOrEqual(199);
      }

      // 2. Another client IP (no session): nothing forwarded, nothing answered.
      let before = total(await agentSources());
      const other = await runClient(IP.otherClient, 20, "other-ip");
      expect(other.replies).toBe(0);
      expect(total(await agentSources())).toBe(before);

      // 3. The session ends: the same client is neither forwarded nor answered.
      sg.send("end");
      await sg.lines.next((o) => o.event === "ended");
      // The teardown line carries what the kernel carried (its counters), both ways.
      const closed = await sg.lines.next((o) => o.msg === "sg udp flow closed");
      expect(Number(closed.packetsUp)).toBeGreaterThanOrEqual(199);
      expect(Number(closed.packetsDown)).toBeGreaterThanOrEqual(199);
      expect(Number(closed.bytesUp)).toBeGreaterThan(0);
      before = total(await agentSources());
      const after = await runClient(IP.client, 20, "after-end");
      expect(after.replies).toBe(0);
      expect(total(await agentSources())).toBe(before);

      // 4. kill -9 with a live kernel mapping, then a restart that admits nothing: no stale forwarding.
      await stopProc(sg.p, "SIGKILL");
      const sg2 = startSg(mode, true);
      await sg2.lines.next((o) => o.event === "ready");
      const warm = await runClient(IP.client, 20, "before-kill");
      expect(warm.replies).toBeGreaterThanOrEqual(19);
      await stopProc(sg2.p, "SIGKILL");
      if (mode === "on") expect(tableExists()).toBe(true); // what a crash leaves behind
      const sg3 = startSg(mode, false);
      await sg3.lines.next((o) => o.event === "ready");
      before = total(await agentSources());
      const stale = await runClient(IP.client, 20, "after-restart");
      expect(stale.replies).toBe(0);
      expect(total(await agentSources())).toBe(before);
      sg3.send("stop");
      await sg3.lines.next((o) => o.event === "stopped");
      expect(tableExists()).toBe(false);
      const fwd = sh(["ip", "netns", "exec", NS.sg, "cat", "/proc/sys/net/ipv4/ip_forward"]).out.trim();
      expect(fwd).toBe("0"); // switched back off: it was off before the SG started
      await stopProc(sg3.p);
    },
    60_000,
  );
});
