// Claim: nothing passes the SG without a matching admission — unknown, expired, wrong-IP and wrong-SNI control
// connections, non-TLS bytes, oversized or slow hellos, sessions over the limits and UDP from unknown sources are
// each refused (UDP: never answered) and counted, while an admitted session keeps working throughout.
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { createLogger, memoryDestination } from "../../src/observability/log.ts";
import { type Admissions, createAdmissions } from "../../src/sg/admissions.ts";
import { createRelayLimits } from "../../src/sg/limits.ts";
import { startTcpRelay, type TcpRelay } from "../../src/sg/tcp-relay.ts";
import { startUdpRelay, type UdpRelay } from "../../src/sg/udp-relay.ts";
import { type AgentEndpoint, connectControl } from "../peers/agent-endpoint.ts";
import { type SgFixture, startSgFixture, until } from "../peers/sg-fixture.ts";
import { testPki } from "../peers/test-certs.ts";

const SNI = "agent-9.corp.test";
const pki = testPki();
/** Source ports of the extra relays some tests start beside the fixture's. */
const base = 20_000 + Math.floor(Math.random() * 90) * 100;

let clock = 1_000_000;
const sink = memoryDestination();
const log = createLogger({ destination: sink, level: "debug" });

let sg: SgFixture;
let agent: AgentEndpoint;
let admissions: Admissions;
let tcp: TcpRelay;
let udpRelay: UdpRelay;

function admit(over: Partial<Parameters<Admissions["admit"]>[0]> = {}, into: Admissions = admissions) {
  return sg.admit(over, into);
}

function tls(port = tcp.ports[0]!, serverName = SNI) {
  return connectControl({ hostname: "127.0.0.1", port, serverName, ca: pki.ca.cert, timeoutMs: 3000 });
}

/** Sends raw bytes on a plain TCP connection; resolves with what came back once the SG closes it. */
function raw(bytes: Uint8Array | string, port = tcp.ports[0]!): Promise<{ received: number }> {
  const done = Promise.withResolvers<{ received: number }>();
  let received = 0;
  Bun.connect({
    hostname: "127.0.0.1",
    port,
    socket: {
      open: (s) => {
        s.write(bytes);
      },
      data: (_s, d) => {
        received += d.length;
      },
      close: () => done.resolve({ received }),
      error() {},
    },
  });
  return done.promise;
}

beforeAll(async () => {
  sg = await startSgFixture({
    sni: SNI,
    idPrefix: "11111111",
    log,
    agentNames: ["other-agent.corp.test"],
    // A clock the tests move by hand: expiry is tested by crossing it, not by waiting.
    admissions: { now: () => clock, maxSessions: 3 },
    tcp: { handshakeTimeoutMs: 300, connectTimeoutMs: 1000 },
    udp: { verdictMs: 200, sweepEveryMs: 20, now: () => Date.now() },
  });
  ({ agent, admissions, tcp, udpRelay } = sg);
});

// The admitted session still relays both planes after whatever the test threw at the SG.
afterEach(() => sg.checkKeeper(2000));

afterAll(() => sg?.close());

describe("tcp 4172 refusals", () => {
  test("no admission at all for the client IP", async () => {
    const other = createAdmissions({ sweepEveryMs: 0 });
    const t = await startTcpRelay({ listen: [{ hostname: "127.0.0.1", port: 0 }], admissions: other, log });
    if (!t.ok) throw new Error(t.error.cause);
    try {
      const r = await tls(t.relay.ports[0]!);
      expect(r.ok).toBe(false);
      expect(t.relay.counters.refused.no_admission).toBe(1);
      expect(agent.accepted.length).toBe(1); // only the keeper ever reached the agent
    } finally {
      await t.relay.stop();
      other.close();
    }
  });

  test("an expired admission is refused (pending TTL crossed on the injected clock)", async () => {
    const other = createAdmissions({ now: () => clock, sweepEveryMs: 0, pendingTtlMs: 90_000 });
    const t = await startTcpRelay({ listen: [{ hostname: "127.0.0.1", port: 0 }], admissions: other, log });
    if (!t.ok) throw new Error(t.error.cause);
    try {
      const a = admit({ sni: "other-agent.corp.test" }, other);
      expect(a.ok).toBe(true);
      clock += 90_000;
      const r = await tls(t.relay.ports[0]!, "other-agent.corp.test");
      expect(r.ok).toBe(false);
      expect(t.relay.counters.refused.no_admission).toBe(1);
    } finally {
      await t.relay.stop();
      other.close();
    }
  });

  test("an admission for another client IP is refused, even with the right SNI", async () => {
    const other = createAdmissions({ sweepEveryMs: 0 });
    const t = await startTcpRelay({ listen: [{ hostname: "127.0.0.1", port: 0 }], admissions: other, log });
    if (!t.ok) throw new Error(t.error.cause);
    try {
      expect(admit({ clientIp: "127.0.0.2" }, other).ok).toBe(true);
      const r = await tls(t.relay.ports[0]!);
      expect(r.ok).toBe(false);
      expect(t.relay.counters.refused.no_admission).toBe(1);
    } finally {
      await t.relay.stop();
      other.close();
    }
  });

  test("a wrong SNI is refused even when the client IP has exactly one pending admission", async () => {
    const other = createAdmissions({ sweepEveryMs: 0 });
    const t = await startTcpRelay({ listen: [{ hostname: "127.0.0.1", port: 0 }], admissions: other, log });
    if (!t.ok) throw new Error(t.error.cause);
    try {
      expect(admit({}, other).ok).toBe(true);
      const r = await tls(t.relay.ports[0]!, "other-agent.corp.test");
      expect(r.ok).toBe(false);
      expect(t.relay.counters.refused.wrong_sni).toBe(1);
      expect(other.list()[0]?.state).toBe("pending"); // the refused hello did not consume the admission
    } finally {
      await t.relay.stop();
      other.close();
    }
  });

  test("plain HTTP on 4172 is closed without a byte of answer", async () => {
    const before = tcp.counters.refused.not_tls;
    const r = await raw("GET / HTTP/1.1\r\nHost: sg\r\n\r\n");
    expect(r.received).toBe(0);
    expect(tcp.counters.refused.not_tls).toBe(before + 1);
  });

  test("garbage that looks like a TLS record is closed and counted", async () => {
    const before = tcp.counters.refused.bad_hello;
    // record: handshake, version 3.3, length 4 | handshake type 2 (server_hello), length 0
    const r = await raw(new Uint8Array([0x16, 0x03, 0x03, 0x00, 0x04, 0x02, 0x00, 0x00, 0x00]));
    expect(r.received).toBe(0);
    expect(tcp.counters.refused.bad_hello).toBe(before + 1);
  });

  test("a hello that never completes is closed after handshakeTimeoutMs", async () => {
    const before = tcp.counters.refused.hello_timeout;
    const r = await raw(new Uint8Array([0x16, 0x03, 0x01])); // three bytes of a record header, then silence
    expect(r.received).toBe(0);
    expect(tcp.counters.refused.hello_timeout).toBe(before + 1);
  });

  test("a hello over the 16 KiB peek limit is refused", async () => {
    const before = tcp.counters.refused.hello_too_large;
    // record header: handshake, 3.1, 16384 bytes | handshake header: client_hello, length 20000 (> 16 KiB)
    const big = new Uint8Array(5 + 16_384);
    big.set([0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00, 0x4e, 0x20]);
    const r = await raw(big);
    expect(r.received).toBe(0);
    expect(tcp.counters.refused.hello_too_large).toBe(before + 1);
  });

  test("an unreachable agent closes the client and is counted", async () => {
    const dead = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
    const deadPort = dead.port;
    dead.stop(true);
    const other = createAdmissions({ sweepEveryMs: 0 });
    const t = await startTcpRelay({ listen: [{ hostname: "127.0.0.1", port: 0 }], admissions: other, log });
    if (!t.ok) throw new Error(t.error.cause);
    try {
      expect(admit({ agentTcpPort: deadPort }, other).ok).toBe(true);
      const r = await tls(t.relay.ports[0]!);
      expect(r.ok).toBe(false);
      expect(t.relay.counters.refused.agent_unreachable).toBe(1);
    } finally {
      await t.relay.stop();
      other.close();
    }
  });

  test("a dial still in flight when its client is gone keeps its descriptor counted until it settles", async () => {
    // An agent that never answers a SYN: a listener that never accepts, its accept queue filled, drops new SYNs.
    const silent = Bun.spawn(
      [
        "python3",
        "-c",
        [
          "import socket, sys, time",
          "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(0)",
          "held = []",
          "for _ in range(4):",
          "    c = socket.socket(); c.setblocking(False); c.connect_ex(s.getsockname()); held.append(c)",
          // The filling handshakes are done before anyone dials: the relay's SYN finds the queue full.
          "time.sleep(0.3); print(s.getsockname()[1], flush=True); time.sleep(60)",
        ].join("\n"),
      ],
      { stdout: "pipe", stderr: "ignore" },
    );
    const other = createAdmissions({ sweepEveryMs: 0 });
    const limits = createRelayLimits({ nofile: 512 + 3 * 4, reservedFds: 512 });
    const t = await startTcpRelay({
      listen: [{ hostname: "127.0.0.1", port: 0 }],
      admissions: other,
      log,
      limits,
      connectTimeoutMs: 300,
    });
    try {
      if (!t.ok) throw new Error(t.error.cause);
      const reader = silent.stdout.getReader();
      const port = Number(new TextDecoder().decode((await reader.read()).value).trim());
      expect(admit({ agentTcpPort: port }, other).ok).toBe(true);
      const r = await tls(t.relay.ports[0]!);
      expect(r.ok).toBe(false); // closed when the dial timed out
      expect(t.relay.counters.refused.agent_unreachable).toBe(1);
      // The client's descriptor is back; the dial's socket still exists (the kernel retries its SYN), so it counts.
      await until(() => limits.inUse === 1, 10_000); // only the dial's descriptor is held
      // The silent agent goes away: the next SYN is answered with a reset, the dial fails, its descriptor returns.
      silent.kill();
      await until(() => limits.inUse === 0, 10_000); // the settled dial's descriptor is given back
    } finally {
      silent.kill();
      if (t.ok) await t.relay.stop();
      other.close();
    }
  }, 20_000);

  test("at the descriptor cap a new control connection is refused and counted", async () => {
    const other = createAdmissions({ sweepEveryMs: 0 });
    const limits = createRelayLimits({ nofile: 512 + 3, reservedFds: 512 }); // room for exactly one relay
    const t = await startTcpRelay({
      listen: [{ hostname: "127.0.0.1", port: 0 }],
      admissions: other,
      log,
      limits,
    });
    if (!t.ok) throw new Error(t.error.cause);
    try {
      expect(admit({}, other).ok).toBe(true);
      expect(admit({}, other).ok).toBe(true);
      const first = await tls(t.relay.ports[0]!);
      expect(first.ok).toBe(true);
      const second = await tls(t.relay.ports[0]!);
      expect(second.ok).toBe(false);
      expect(t.relay.counters.refused.relay_limit).toBe(1);
      expect(limits.refused).toBe(1);
      if (first.ok) first.client.close();
    } finally {
      await t.relay.stop();
      other.close();
    }
  });

  test("a revoked session loses its live control connection", async () => {
    const other = createAdmissions({ sweepEveryMs: 0 });
    const t = await startTcpRelay({ listen: [{ hostname: "127.0.0.1", port: 0 }], admissions: other, log });
    if (!t.ok) throw new Error(t.error.cause);
    try {
      const a = admit({}, other);
      if (!a.ok) throw new Error(a.reason);
      const c = await tls(t.relay.ports[0]!);
      if (!c.ok) throw new Error(c.error);
      expect(other.end(a.admission.sessionLogId)).toBe(true);
      await c.client.closed;
      expect(t.relay.connectionsOf(a.admission.sessionLogId)).toBe(0);
    } finally {
      await t.relay.stop();
      other.close();
    }
  });
});

describe("admission limits", () => {
  test("over maxSessions the CM's admit is refused and counted", () => {
    // maxSessions is 3 and the keeper holds one.
    const before = admissions.counters.refused.max_sessions;
    const held = [admit(), admit()];
    expect(held.every((r) => r.ok)).toBe(true);
    const over = admit();
    expect(over).toEqual({ ok: false, reason: "max_sessions" });
    expect(admissions.counters.refused.max_sessions).toBe(before + 1);
    for (const r of held) if (r.ok) admissions.end(r.admission.sessionLogId);
  });
});

describe("udp 4172 refusals", () => {
  test("an agent whose UDP port is closed (ICMP port unreachable) costs only its own session", async () => {
    const probe = await Bun.udpSocket({ hostname: "127.0.0.1", socket: { error() {} } });
    const deadPort = probe.port;
    probe.close();
    const a = admit({ agentUdpPort: deadPort, sni: "other-agent.corp.test" });
    if (!a.ok) throw new Error(a.reason);
    const c = await tls(tcp.ports[0]!, "other-agent.corp.test");
    if (!c.ok) throw new Error(c.error);
    const replies: string[] = [];
    const client = await Bun.udpSocket({
      hostname: "127.0.0.1",
      socket: {
        data: (_s, b) => {
          replies.push(String(b));
        },
        error() {},
      },
    });
    try {
      const errorsBefore = udpRelay.counters.socketErrors;
      const upBefore = udpRelay.counters.packetsUp;
      for (let i = 0; i < 20; i++) {
        client.send(`to-a-dead-port-${i}`, udpRelay.ports[0]!, "127.0.0.1");
        await Bun.sleep(5);
      }
      await until(() => udpRelay.counters.packetsUp - upBefore >= 20, 3000);
      // The kernel's port-unreachable answers reach the session's socket as errors, never a crash.
      await until(() => udpRelay.counters.socketErrors > errorsBefore, 3000);
      expect(replies).toEqual([]);
    } finally {
      client.close();
      c.client.close();
      admissions.end(a.admission.sessionLogId);
    }
  });

  test("UDP from a source with no session is dropped, counted and never answered", async () => {
    const other = createAdmissions({ sweepEveryMs: 0 });
    const u = await startUdpRelay({
      listen: [{ hostname: "127.0.0.1", port: 0 }],
      admissions: other,
      log,
      sourcePorts: { from: base, to: base + 99 },
    });
    if (!u.ok) throw new Error(u.error.cause);
    const received: string[] = [];
    const sender = await Bun.udpSocket({
      hostname: "127.0.0.1",
      socket: {
        data: (_s, b) => {
          received.push(String(b));
        },
        error() {},
      },
    });
    const agentPacketsBefore = agent.udpPackets;
    try {
      for (let i = 0; i < 10; i++) sender.send(`probe-${i}`, u.relay.ports[0]!, "127.0.0.1");
      await until(() => u.relay.counters.drops.no_session === 10);
      await Bun.sleep(500); // listen for any answer a while: there must be none
      expect(received).toEqual([]);
      expect(agent.udpPackets).toBe(agentPacketsBefore); // nothing went to the agent either
      expect(u.relay.counters.packetsUp).toBe(0);
    } finally {
      sender.close();
      await u.relay.stop();
      other.close();
    }
  });

  test("UDP from another IP than the session's TCP is dropped, counted, and the session gets a verdict", async () => {
    const other = createAdmissions({ sweepEveryMs: 0 });
    const otherSink = memoryDestination();
    const otherLog = createLogger({ destination: otherSink });
    const t = await startTcpRelay({
      listen: [{ hostname: "127.0.0.1", port: 0 }],
      admissions: other,
      log: otherLog,
    });
    const u = await startUdpRelay({
      listen: [{ hostname: "0.0.0.0", port: 0 }],
      admissions: other,
      log: otherLog,
      sourcePorts: { from: base, to: base + 99 },
      verdictMs: 200,
      sweepEveryMs: 20,
    });
    if (!t.ok || !u.ok) throw new Error("start failed");
    const received: string[] = [];
    const fromElsewhere = await Bun.udpSocket({
      hostname: "127.0.0.2", // the same client behind a NAT that maps UDP to another public IP
      socket: {
        data: (_s, b) => {
          received.push(String(b));
        },
        error() {},
      },
    });
    try {
      const a = admit({}, other);
      if (!a.ok) throw new Error(a.reason);
      const c = await tls(t.relay.ports[0]!);
      if (!c.ok) throw new Error(c.error);
      await Bun.sleep(60); // a sweep sees the session waiting for its UDP
      for (let i = 0; i < 5; i++) fromElsewhere.send(`media-${i}`, u.relay.ports[0]!, "127.0.0.1");
      await until(() => u.relay.counters.drops.client_ip_mismatch === 5);
      await until(() => otherSink.text().includes("sg udp verdict"));
      const verdict = otherSink.lines().find((l) => l.includes("sg udp verdict"))!;
      expect(JSON.parse(verdict)).toMatchObject({
        sessionId: a.admission.sessionLogId,
        stage: "udp-from-client", // where it is stuck, not the TCP stage it passed
        clientIp: "127.0.0.1",
        udpFromOtherIps: ["127.0.0.2"],
      });
      await Bun.sleep(200);
      expect(received).toEqual([]);
      c.client.close();
    } finally {
      fromElsewhere.close();
      await t.relay.stop();
      await u.relay.stop();
      other.close();
    }
  });
});

describe("start-up failures are values", () => {
  test("a TCP or UDP port already in use: what, cause and fix, and nothing left listening", async () => {
    const other = createAdmissions({ sweepEveryMs: 0 });
    const t = await startTcpRelay({
      listen: [
        { hostname: "127.0.0.1", port: 0 },
        { hostname: "127.0.0.1", port: tcp.ports[0]! },
      ],
      admissions: other,
      log,
    });
    expect(t.ok).toBe(false);
    if (!t.ok) {
      expect(t.error.what).toBe(`listening on tcp 127.0.0.1:${tcp.ports[0]}`);
      expect(t.error.cause).toContain("EADDRINUSE");
      expect(t.error.fix).toContain("sg.tcpListen");
    }
    const u = await startUdpRelay({
      listen: [{ hostname: "127.0.0.1", port: udpRelay.ports[0]! }],
      admissions: other,
      log,
      sourcePorts: { from: base, to: base + 99 },
    });
    expect(u.ok).toBe(false);
    if (!u.ok) expect(u.error.fix).toContain("sg.udpListen");
    other.close();
  });
});
