// Claim: an admitted client reaches its agent through the SG unchanged — TLS end to end (the client sees the
// agent's certificate), data both ways with half-close and backpressure, UDP via a per-session source port from
// the configured range — and keeps its session across a control-connection reconnect and on [::] listeners.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomBytes, X509Certificate } from "node:crypto";
import { createLogger, memoryDestination } from "../../src/observability/log.ts";
import { type Admissions, createAdmissions } from "../../src/sg/admissions.ts";
import { startTcpRelay, type TcpRelay } from "../../src/sg/tcp-relay.ts";
import { startUdpRelay, type UdpRelay } from "../../src/sg/udp-relay.ts";
import { type AgentEndpoint, connectControl, startAgentEndpoint } from "../peers/agent-endpoint.ts";
import { until } from "../peers/sg-fixture.ts";
import { testPki } from "../peers/test-certs.ts";

const SNI = "Agent-7.Corp.Test";
const pki = testPki();
const agentCert = pki.leaf(["agent-7.corp.test"]);
// Below the kernel's ephemeral range so parallel tests' sockets do not collide with it.
const base = 20_000 + Math.floor(Math.random() * 90) * 100;
const sourcePorts = { from: base, to: base + 99 };

let agent: AgentEndpoint;
let admissions: Admissions;
let tcp: TcpRelay;
let udp: UdpRelay;
const sink = memoryDestination();
const log = createLogger({ destination: sink, level: "debug" });
let n = 0;

function admit(clientIp = "127.0.0.1", sni = SNI) {
  n++;
  const sessionLogId = `00000000-0000-4000-8000-${String(n).padStart(12, "0")}`;
  const r = admissions.admit({
    sessionLogId,
    agentSessionId: `agent-session-${n}`,
    clientIp,
    agentHost: "127.0.0.1",
    agentTcpPort: agent.port,
    agentUdpPort: agent.port,
    sni,
  });
  if (!r.ok) throw new Error(`admit refused: ${r.reason}`);
  return r.admission;
}

async function control(port = tcp.ports[0]!, hostname = "127.0.0.1") {
  const r = await connectControl({ hostname, port, serverName: SNI.toLowerCase(), ca: pki.ca.cert });
  if (!r.ok) throw new Error(`control connection refused: ${r.error}`);
  return r.client;
}

async function udpClient() {
  const replies: Buffer[] = [];
  const from: string[] = [];
  const sock = await Bun.udpSocket({
    hostname: "127.0.0.1",
    socket: {
      data(_s, buf, port, address) {
        replies.push(buf);
        from.push(`${address}:${port}`);
      },
      error() {},
    },
  });
  return { sock, replies, from };
}

beforeAll(async () => {
  agent = await startAgentEndpoint({ cert: agentCert.cert, key: agentCert.key });
  admissions = createAdmissions({ sweepEveryMs: 50, reconnectGraceMs: 2000 });
  const t = await startTcpRelay({ listen: [{ hostname: "127.0.0.1", port: 0 }], admissions, log });
  if (!t.ok) throw new Error(t.error.cause);
  tcp = t.relay;
  const u = await startUdpRelay({
    listen: [{ hostname: "127.0.0.1", port: 0 }],
    admissions,
    log,
    sourcePorts,
  });
  if (!u.ok) throw new Error(u.error.cause);
  udp = u.relay;
});

afterAll(async () => {
  await tcp?.stop();
  await udp?.stop();
  admissions?.close();
  await agent?.close();
});

describe("tcp 4172 pass-through", () => {
  test("the client completes TLS with the agent itself, exchanges data both ways and half-closes", async () => {
    const adm = admit();
    const c = await control();
    const agentFingerprint = new X509Certificate(agentCert.cert).fingerprint256;
    expect(c.peerCert.fingerprint256).toBe(agentFingerprint);
    expect(c.peerCert.subjectCN).toBe("agent-7.corp.test");
    c.write("ping-1");
    await c.waitFor("ping-1");
    c.halfClose(); // FIN travels client → SG → agent; the agent answers after it
    await c.waitFor("END 6\n");
    await c.closed;
    expect(agent.accepted.at(-1)?.sni).toBe("agent-7.corp.test");
    expect(agent.accepted.at(-1)?.peer).toBe("127.0.0.1");
    await until(() => tcp.connectionsOf(adm.sessionLogId) === 0);
    expect(admissions.get(adm.sessionLogId)?.state).toBe("ended");
    const lines = sink.lines().filter((l) => l.includes(adm.sessionLogId));
    expect(lines.some((l) => l.includes("sg tcp relay open"))).toBe(true);
    expect(lines.some((l) => l.includes("sg tcp relay closed") && l.includes('"bytesUp"'))).toBe(true);
  });

  test("8 MiB each way arrives intact through the splice (backpressure: pause, resume on drain)", async () => {
    admit();
    const c = await control();
    // Random text, so a chunk lost, repeated or reordered anywhere changes the echo.
    const total = 8 * 1024 * 1024;
    const payload = randomBytes(total / 2).toString("hex");
    const bytes = new TextEncoder().encode(payload);
    // The client stops reading until the relay has paused a side: on a fast, idle box the socket buffers could
    // otherwise absorb everything and the pause/resume path would go untested.
    const pausesBefore = tcp.counters.pauses;
    c.pause();
    const writing = (async () => {
      for (let at = 0; at < total; at += 65_536) await c.writeAll(bytes.subarray(at, at + 65_536));
      c.halfClose();
    })();
    await until(() => tcp.counters.pauses > pausesBefore, 20_000);
    c.resume();
    await writing;
    await c.waitFor(`END ${total}\n`, 20_000);
    expect(c.text() === `${payload}END ${total}\n`).toBe(true); // the relay paused a side, and lost nothing
    await c.closed;
  });

  test("a client that stops reading stalls only its own relay", async () => {
    admit();
    admit();
    const stalled = await control();
    const other = await control();
    stalled.pause();
    const chunk = new Uint8Array(256 * 1024).fill(0x61);
    // 16 MiB toward an agent that echoes into a client that does not read: everything backs up to the stalled
    // client's own socket, not further.
    const pushing = (async () => {
      for (let i = 0; i < 64; i++) await stalled.writeAll(chunk);
    })();
    await Bun.sleep(200);
    for (let i = 0; i < 20; i++) {
      other.write(`still-moving-${i};`);
      await other.waitFor(`still-moving-${i};`, 2000);
    }
    stalled.resume();
    await pushing;
    stalled.halfClose();
    await stalled.waitFor(`END ${64 * chunk.length}\n`, 20_000);
    other.close();
  });
});

describe("udp 4172", () => {
  test("datagrams reach the agent from a source port in the range and come back from the 4172 listener", async () => {
    const adm = admit();
    const c = await control();
    const u = await udpClient();
    try {
      for (let i = 0; i < 20; i++) u.sock.send(`dgram-${i}`, udp.ports[0]!, "127.0.0.1");
      await until(() => u.replies.length === 20);
      expect(u.replies.map(String).sort()).toEqual(Array.from({ length: 20 }, (_, i) => `dgram-${i}`).sort());
      expect(new Set(u.from)).toEqual(new Set([`127.0.0.1:${udp.ports[0]}`]));
      const flow = udp.flows().find((f) => f.sessionLogId === adm.sessionLogId);
      expect(flow?.sourcePort).toBeGreaterThanOrEqual(sourcePorts.from);
      expect(flow?.sourcePort).toBeLessThanOrEqual(sourcePorts.to);
      expect(agent.udpBySource.get(`127.0.0.1|${flow?.sourcePort}`)).toBe(20);
    } finally {
      u.sock.close();
      c.close();
    }
  });

  test("a control connection that drops and reconnects keeps its session and its UDP source port", async () => {
    const adm = admit();
    const first = await control();
    const u = await udpClient();
    try {
      u.sock.send("before", udp.ports[0]!, "127.0.0.1");
      await until(() => u.replies.length === 1);
      const portBefore = udp.flows().find((f) => f.sessionLogId === adm.sessionLogId)?.sourcePort;
      first.close(); // network blip: the client's TCP goes away
      await first.closed;
      await until(() => admissions.get(adm.sessionLogId)?.state === "ended");
      const again = await control();
      expect(admissions.get(adm.sessionLogId)?.state).toBe("active");
      expect(admissions.get(adm.sessionLogId)?.tcpConnects).toBe(2);
      again.write("after-reconnect");
      await again.waitFor("after-reconnect");
      u.sock.send("after", udp.ports[0]!, "127.0.0.1");
      await until(() => u.replies.length === 2);
      expect(udp.flows().find((f) => f.sessionLogId === adm.sessionLogId)?.sourcePort).toBe(portBefore!);
      expect(sink.lines().some((l) => l.includes(adm.sessionLogId) && l.includes('"reconnect":true'))).toBe(
        true,
      );
      again.close();
    } finally {
      u.sock.close();
    }
  });
});

describe("[::] listeners", () => {
  let tcp6: TcpRelay;
  let udp6: UdpRelay;
  const sink6 = memoryDestination();
  beforeAll(async () => {
    const log6 = createLogger({ destination: sink6, level: "debug" });
    const t = await startTcpRelay({ listen: [{ hostname: "[::]", port: 0 }], admissions, log: log6 });
    if (!t.ok) throw new Error(t.error.cause);
    tcp6 = t.relay;
    const u = await startUdpRelay({
      listen: [{ hostname: "::", port: 0 }],
      admissions,
      log: log6,
      sourcePorts: { from: sourcePorts.from, to: sourcePorts.to },
    });
    if (!u.ok) throw new Error(u.error.cause);
    udp6 = u.relay;
  });
  afterAll(async () => {
    await tcp6?.stop();
    await udp6?.stop();
  });

  test("an IPv4 client on a [::] listener is admitted by its canonical IPv4 (no ::ffff: anywhere)", async () => {
    const adm = admit("127.0.0.1");
    const c = await control(tcp6.ports[0]!, "127.0.0.1");
    c.write("v4-on-v6");
    await c.waitFor("v4-on-v6");
    const u = await udpClient();
    try {
      u.sock.send("v4-dgram", udp6.ports[0]!, "127.0.0.1");
      await until(() => u.replies.length === 1);
      expect(String(u.replies[0])).toBe("v4-dgram");
    } finally {
      u.sock.close();
      c.close();
    }
    const lines = sink6.lines().filter((l) => l.includes(adm.sessionLogId));
    expect(lines.length).toBeGreaterThan(0);
    expect(sink6.text()).not.toContain("::ffff:");
  });

  test("a ::1 client works when the admission is for ::1", async () => {
    admit("::1");
    const c = await control(tcp6.ports[0]!, "::1");
    c.write("over-v6");
    await c.waitFor("over-v6");
    const replies: string[] = [];
    const sock = await Bun.udpSocket({
      hostname: "::1",
      socket: {
        data: (_s, b) => {
          replies.push(String(b));
        },
        error() {},
      },
    });
    try {
      sock.send("v6-dgram", udp6.ports[0]!, "::1");
      await until(() => replies.length === 1);
      expect(replies).toEqual(["v6-dgram"]);
    } finally {
      sock.close();
      c.close();
    }
  });
});

describe("udp flow lifecycle (short timers)", () => {
  let u2: UdpRelay;
  const sink2 = memoryDestination();
  beforeAll(async () => {
    const log2 = createLogger({ destination: sink2 });
    const u = await startUdpRelay({
      listen: [{ hostname: "127.0.0.1", port: 0 }],
      admissions,
      log: log2,
      sourcePorts: { from: sourcePorts.from + 50, to: sourcePorts.to },
      idleMs: 600,
      rebindMs: 200,
    });
    if (!u.ok) throw new Error(u.error.cause);
    u2 = u.relay;
  });
  afterAll(async () => {
    await u2?.stop();
  });

  test("a second client port joins the session's flow at once and replies follow the port heard last (NAT rebinding)", async () => {
    const adm = admit();
    const c = await control();
    const first = await udpClient();
    const second = await udpClient();
    try {
      first.sock.send("first", u2.ports[0]!, "127.0.0.1");
      await until(() => first.replies.length === 1);
      const sourcePort = u2.flows().find((f) => f.sessionLogId === adm.sessionLogId)?.sourcePort;
      expect(sourcePort).toBeNumber();

      second.sock.send("rebound", u2.ports[0]!, "127.0.0.1");
      await until(() => second.replies.length === 1);
      expect(String(second.replies[0])).toBe("rebound");
      first.sock.send("back", u2.ports[0]!, "127.0.0.1");
      await until(() => first.replies.length === 2);
      expect(second.replies.length).toBe(1); // the reply went to the port heard last only
      const flow = u2.flows().find((f) => f.sessionLogId === adm.sessionLogId);
      expect(flow?.sourcePort).toBe(sourcePort!); // same session socket toward the agent
      expect(u2.counters.flowsRebound).toBeGreaterThanOrEqual(1);
      const lines = sink2.lines().filter((l) => l.includes(adm.sessionLogId));
      expect(lines.some((l) => l.includes("client port added"))).toBe(true);
    } finally {
      first.sock.close();
      second.sock.close();
      c.close();
    }
  });

  test("an idle flow expires with a teardown line carrying bytes and packets each way", async () => {
    const adm = admit();
    const c = await control();
    const u = await udpClient();
    try {
      for (let i = 0; i < 3; i++) u.sock.send("12345", u2.ports[0]!, "127.0.0.1");
      await until(() => u.replies.length === 3);
      await until(
        () => sink2.text().includes(`"sessionId":"${adm.sessionLogId}"`) && !u2.flows().length,
        3000,
      );
      const teardown = sink2
        .lines()
        .map((l) => JSON.parse(l))
        .find((o) => o.sessionId === adm.sessionLogId && o.msg === "sg udp flow closed");
      expect(teardown).toMatchObject({
        reason: "idle",
        packetsUp: 3,
        bytesUp: 15,
        packetsDown: 3,
        bytesDown: 15,
      });
      expect(u2.counters.sessionsOpen).toBe(0);
    } finally {
      u.sock.close();
      c.close();
    }
  });
});
