// Claim: the SG stays closed and calm under hostile traffic while an admitted session keeps relaying both planes:
// random bytes and truncated ClientHellos on TCP 4172 are closed without a byte of answer and never reach an
// agent; forged, other-IP and expired SNIs never match; a UDP flood from unknown sources gets zero replies;
// admitted-but-never-connected sessions expire on time; and at the descriptor cap new connections are refused
// cleanly, without a busy loop, in the real process. (Single refusals of each kind: test/e2e/sg-refusals.test.ts.)
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import fc from "fast-check";
import { createLogger, memoryDestination } from "../../src/observability/log.ts";
import { type Admissions, createAdmissions } from "../../src/sg/admissions.ts";
import { parseClientHello } from "../../src/sg/client-hello.ts";
import { createRelayLimits } from "../../src/sg/limits.ts";
import { startTcpRelay, type TcpRelay } from "../../src/sg/tcp-relay.ts";
import type { UdpRelay } from "../../src/sg/udp-relay.ts";
import { type AgentEndpoint, connectControl } from "../peers/agent-endpoint.ts";
import { type ApplianceProcess, startApplianceProcess } from "../peers/appliance-process.ts";
import { type SgFixture, startSgFixture, until } from "../peers/sg-fixture.ts";
import { testPki } from "../peers/test-certs.ts";

const SNI = "agent-9.corp.test";
const pki = testPki();
const sink = memoryDestination();
const log = createLogger({ destination: sink, level: "info" });

let sg: SgFixture;
let agent: AgentEndpoint;
let admissions: Admissions;
let tcp: TcpRelay;
let udpRelay: UdpRelay;

function admit(over: Partial<Parameters<Admissions["admit"]>[0]> = {}, into: Admissions = admissions) {
  return sg.admit(over, into);
}

/** Sends bytes on plain TCP; resolves with the bytes that came back and the time until the SG closed. */
function raw(bytes: Uint8Array, port = tcp.ports[0]!): Promise<{ received: number; ms: number }> {
  const done = Promise.withResolvers<{ received: number; ms: number }>();
  let received = 0;
  const t0 = Date.now();
  // Not closed within 5 s: report it (ms = Infinity) rather than hang the test.
  const guard = setTimeout(() => done.resolve({ received, ms: Number.POSITIVE_INFINITY }), 5000);
  void done.promise.then(() => clearTimeout(guard));
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
      close: () => done.resolve({ received, ms: Date.now() - t0 }),
      error() {},
    },
  }).catch(() => done.resolve({ received, ms: Date.now() - t0 }));
  return done.promise;
}

/** A real ClientHello (BoringSSL) for `sni`, captured on a plain listener. */
async function realHello(sni: string): Promise<Uint8Array> {
  const got = Promise.withResolvers<Uint8Array>();
  const l = Bun.listen({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      data(s, d) {
        got.resolve(new Uint8Array(d));
        s.terminate();
      },
    },
  });
  const c = await Bun.connect({
    hostname: "127.0.0.1",
    port: l.port,
    tls: { serverName: sni, rejectUnauthorized: false },
    socket: { data() {}, error() {} },
  });
  const hello = await got.promise;
  c.terminate();
  l.stop(true);
  return hello;
}

let hello: Uint8Array;

beforeAll(async () => {
  sg = await startSgFixture({
    sni: SNI,
    idPrefix: "22222222",
    log,
    tcp: { handshakeTimeoutMs: 500 },
    udpHostname: "0.0.0.0",
  });
  ({ agent, admissions, tcp, udpRelay } = sg);
  hello = await realHello(SNI);
});

// The admitted session still relays both planes after whatever the test threw at the SG.
afterEach(() => sg.checkKeeper(3000));

afterAll(() => sg?.close());

describe("TCP 4172 under hostile input", () => {
  test("random bytes and mutated ClientHellos: closed without a byte of answer, no agent reached", async () => {
    const agentBefore = agent.accepted.length;
    const acceptedBefore = tcp.counters.accepted;
    const relayedBefore = tcp.counters.relayed;
    // Bytes that happen to form a complete ClientHello are a client, not an attack: left out.
    const notHello = (b: Uint8Array) => parseClientHello(b).kind !== "hello";
    const anyBytes = fc
      .oneof(
        fc.uint8Array({ minLength: 1, maxLength: 400 }),
        fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 }), fc.nat({ max: 3 })).map(([at, byte, extra]) => {
          const b = Uint8Array.from(hello);
          b[at % b.length] = byte;
          return extra === 0 ? b : b.subarray(0, (at % b.length) + 1);
        }),
      )
      .filter(notHello);
    let runs = 0;
    await fc.assert(
      fc.asyncProperty(anyBytes, async (bytes) => {
        runs++;
        const r = await raw(bytes);
        expect(r.received).toBe(0);
        expect(r.ms).toBeLessThan(2000); // refused at once, or at the 500 ms hello timeout
      }),
      { numRuns: 30 },
    );
    expect(tcp.counters.relayed - relayedBefore).toBe(0);
    expect(agent.accepted.length - agentBefore).toBe(0);
    expect(tcp.counters.accepted - acceptedBefore).toBe(runs);
  }, 30_000);

  test("200 truncated real ClientHellos, then silence: every one closed at the hello timeout", async () => {
    const before = tcp.counters.refused.hello_timeout;
    const agentBefore = agent.accepted.length;
    const results = await Promise.all(
      Array.from({ length: 200 }, (_, i) => raw(hello.subarray(0, 1 + (i % (hello.length - 1))))),
    );
    for (const r of results) {
      expect(r.received).toBe(0);
      expect(r.ms).toBeGreaterThanOrEqual(400);
      expect(r.ms).toBeLessThan(3000);
    }
    expect(tcp.counters.refused.hello_timeout - before).toBe(200);
    expect(agent.accepted.length).toBe(agentBefore);
  });

  test("forged SNIs never match; the right SNI from another IP or after expiry never matches either", async () => {
    let clock = 1_000_000;
    const other = createAdmissions({ now: () => clock, sweepEveryMs: 0, pendingTtlMs: 90_000 });
    const t = await startTcpRelay({ listen: [{ hostname: "0.0.0.0", port: 0 }], admissions: other, log });
    if (!t.ok) throw new Error(t.error.cause);
    const connect = (serverName: string, from = "127.0.0.1") =>
      connectControl({
        hostname: from,
        port: t.relay.ports[0]!,
        serverName,
        ca: pki.ca.cert,
        timeoutMs: 2000,
      });
    try {
      const a = admit({}, other);
      if (!a.ok) throw new Error(a.reason);
      const forged = fc
        .oneof(
          fc.domain(),
          // (`agent-9.corp.test.` is not a forgery: the TLS client drops the trailing dot and sends the real name.)
          fc.constantFrom(`x${SNI}`, `${SNI}x`, SNI.replace("9", "8"), `*.corp.test`, "localhost"),
        )
        // An IP literal sends no SNI, which by design falls back to the IP's only pending admission (SPEC §4).
        .filter((s) => s.toLowerCase() !== SNI && !/^[\d.]+$/.test(s));
      await fc.assert(
        fc.asyncProperty(forged, async (sni) => {
          const r = await connect(sni);
          expect(r.ok).toBe(false);
        }),
        { numRuns: 25 },
      );
      expect(t.relay.counters.relayed).toBe(0);
      expect(other.get(a.admission.sessionLogId)?.state).toBe("pending"); // not consumed by the forgeries
      // An admission for another client IP does not let this one in, even with the right SNI.
      const elsewhere = admit({ clientIp: "127.0.0.2", sni: "other-agent.corp.test" }, other);
      expect(elsewhere.ok).toBe(true);
      expect((await connect("other-agent.corp.test")).ok).toBe(false);
      // After the pending TTL, the right SNI from the right IP is refused as well.
      clock += 90_001;
      expect((await connect(SNI)).ok).toBe(false);
      expect(t.relay.counters.relayed).toBe(0);
      expect(
        t.relay.counters.refused.wrong_sni + t.relay.counters.refused.no_admission,
      ).toBeGreaterThanOrEqual(27);
    } finally {
      await t.relay.stop();
      other.close();
    }
  }, 30_000);
});

describe("UDP 4172 flood from unknown sources", () => {
  test("10,000 datagrams from 20 unknown sources: zero replies, all counted, the agent sees none", async () => {
    const received: string[] = [];
    const senders = await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        Bun.udpSocket({
          hostname: `127.0.${1 + (i % 4)}.${10 + i}`,
          socket: {
            data: (_s, b) => {
              received.push(String(b));
            },
            error() {},
          },
        }),
      ),
    );
    const agentBefore = agent.udpPackets;
    const dropsBefore = udpRelay.counters.drops.no_session + udpRelay.counters.drops.client_ip_mismatch;
    const upBefore = udpRelay.counters.packetsUp;
    try {
      const payload = Buffer.alloc(200, 0x41);
      let sent = 0;
      // The senders share the relay's event loop: small rounds let it read between them (else the kernel drops).
      for (let round = 0; round < 500; round++) {
        for (const s of senders) s.send(payload, udpRelay.ports[0]!, "127.0.0.1");
        sent += senders.length;
        if (round % 2 === 1) await Bun.sleep(1);
      }
      // The admitted session's media keeps flowing during the flood.
      sg.keeper.udp.send("during-flood", udpRelay.ports[0]!, "127.0.0.1");
      await until(() => sg.keeper.replies.includes("during-flood"), 3000);
      const dropped = () =>
        udpRelay.counters.drops.no_session + udpRelay.counters.drops.client_ip_mismatch - dropsBefore;
      // Loopback may drop some datagrams in the kernel when buffers fill; those that arrive are all counted.
      await until(() => dropped() >= 9000, 5000).catch(() => {
        throw new Error(
          `only ${dropped()} drops counted of ${sent} sent: ${JSON.stringify(udpRelay.counters.drops)}`,
        );
      });
      await Bun.sleep(300);
      expect(received).toEqual([]);
      expect(agent.udpPackets - agentBefore).toBe(1); // only the keeper's "during-flood"
      expect(udpRelay.counters.packetsUp - upBefore).toBe(1);
    } finally {
      for (const s of senders) s.close();
    }
  });
});

describe("admitted but never connected", () => {
  test("2,000 pending admissions expire on time, counted, and make room for new ones", async () => {
    const other = createAdmissions({ pendingTtlMs: 1000, sweepEveryMs: 100, maxSessions: 2000 });
    const events: string[] = [];
    const unsubscribe = other.subscribe((e) => {
      events.push(e.reason);
    });
    try {
      const t0 = Date.now();
      for (let i = 0; i < 2000; i++)
        expect(admit({ clientIp: `10.${i >> 8}.${i & 255}.1` }, other).ok).toBe(true);
      expect(admit({}, other)).toEqual({ ok: false, reason: "max_sessions" });
      await Bun.sleep(700);
      expect(other.size).toBe(2000); // not before the TTL
      await until(() => other.size === 0, 3000);
      expect(Date.now() - t0).toBeLessThan(2500); // within a sweep or two of the TTL
      expect(other.counters.removed.expired).toBe(2000);
      expect(events.filter((r) => r === "expired").length).toBe(2000);
      expect(admit({}, other).ok).toBe(true);
    } finally {
      unsubscribe();
      other.close();
    }
  });
});

// ---- descriptors --------------------------------------------------------------------------------------------

/** CPU seconds (user + system) a process has used, from /proc/<pid>/stat. */
function cpuSeconds(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100; // utime, stime in clock ticks (USER_HZ = 100)
}

describe("descriptor exhaustion", () => {
  test("at the relay cap 150 silent connections: the excess refused at once and counted, no spinning, budget returned", async () => {
    const other = createAdmissions({ sweepEveryMs: 0 });
    const limits = createRelayLimits({ nofile: 512 + 90, reservedFds: 512 }); // 30 relays = 90 descriptors
    const t = await startTcpRelay({
      listen: [{ hostname: "127.0.0.1", port: 0 }],
      admissions: other,
      log,
      limits,
      handshakeTimeoutMs: 1500,
    });
    if (!t.ok) throw new Error(t.error.cause);
    const sockets = await Promise.all(
      Array.from({ length: 150 }, () =>
        Bun.connect({ hostname: "127.0.0.1", port: t.relay.ports[0]!, socket: { data() {}, error() {} } }),
      ),
    );
    try {
      await until(() => t.relay.counters.refused.relay_limit === 60, 3000);
      expect(limits.inUse).toBe(90);
      const c0 = process.cpuUsage();
      await Bun.sleep(800);
      const used = process.cpuUsage(c0);
      expect((used.user + used.system) / 1000).toBeLessThan(200); // ms of CPU in 800 ms: idle, not spinning
      // The silent ones time out and give their descriptors back; a real client gets through again.
      await until(() => limits.inUse === 0, 4000);
      const a = admit({}, other);
      expect(a.ok).toBe(true);
      const c = await connectControl({
        hostname: "127.0.0.1",
        port: t.relay.ports[0]!,
        serverName: SNI,
        ca: pki.ca.cert,
      });
      expect(c.ok).toBe(true);
      if (c.ok) c.client.close();
    } finally {
      for (const s of sockets) s.terminate();
      await t.relay.stop();
      other.close();
    }
  });

  describe("the appliance process with RLIMIT_NOFILE lowered to 600", () => {
    let app: ApplianceProcess | undefined;
    afterEach(async () => {
      await app?.kill();
      app?.cleanup();
      app = undefined;
    });

    // The CM's connections draw on the CM's descriptor budget (sg/limits.ts, createDescriptorBudgets: a reserve
    // kept for the rest), so the process never reaches EMFILE — where Bun's accept loop spins on a readable listener —
    // and silent connections beyond the budget are closed at once.
    test("700 silent connections to the CM: no busy loop at EMFILE, and it serves again after", async () => {
      app = await startApplianceProcess({ wrap: ["prlimit", "--nofile=600:600", "--"] });
      expect(readFileSync(`/proc/${app.pid}/limits`, "utf8")).toMatch(/Max open files\s+600\s+600/);
      const port = Number(app.cm.split(":").at(-1));
      const sockets = await Promise.all(
        Array.from({ length: 700 }, () =>
          Bun.connect({ hostname: "127.0.0.1", port, socket: { data() {}, error() {} } }).catch(
            () => undefined,
          ),
        ),
      );
      try {
        await Bun.sleep(500);
        const c0 = cpuSeconds(app.pid);
        await Bun.sleep(2000);
        expect(cpuSeconds(app.pid) - c0).toBeLessThan(0.4);
      } finally {
        for (const s of sockets) s?.terminate();
      }
      await Bun.sleep(500);
      expect((await app.adminGet("/healthz")).status).toBe(200);
    }, 30_000);
  });
});
