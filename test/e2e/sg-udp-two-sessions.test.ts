// Claim: two sessions from ONE client IP to ONE agent stay apart on UDP — each client port is bound to its own
// session and source port, and of 10,000 datagrams each way per session every reply reaches only its own client
// port (nothing is guessed from contents; the per-session socket is what keeps them apart).
import { afterAll, beforeAll, expect, test } from "bun:test";
import type { udp } from "bun";
import { createLogger, memoryDestination } from "../../src/observability/log.ts";
import { type Admissions, createAdmissions } from "../../src/sg/admissions.ts";
import { startTcpRelay, type TcpRelay } from "../../src/sg/tcp-relay.ts";
import { startUdpRelay, type UdpRelay } from "../../src/sg/udp-relay.ts";
import {
  type AgentEndpoint,
  type ControlClient,
  connectControl,
  startAgentEndpoint,
} from "../peers/agent-endpoint.ts";
import { testPki } from "../peers/test-certs.ts";

const SNI = "agent-2.corp.test";
const PER_SESSION = 10_000;
/** Datagrams in flight per client at most: loopback buffers hold this easily, so nothing should be lost. */
const WINDOW = 256;
const pki = testPki();
const agentCert = pki.leaf([SNI]);
const base = 20_000 + Math.floor(Math.random() * 90) * 100;
const sourcePorts = { from: base, to: base + 99 };

let agent: AgentEndpoint;
let admissions: Admissions;
let tcp: TcpRelay;
let udpRelay: UdpRelay;
const controls: ControlClient[] = [];
const sockets: udp.Socket<"buffer">[] = [];

beforeAll(async () => {
  const log = createLogger({ destination: memoryDestination() });
  agent = await startAgentEndpoint({ cert: agentCert.cert, key: agentCert.key });
  admissions = createAdmissions({ sweepEveryMs: 100 });
  const t = await startTcpRelay({ listen: [{ hostname: "127.0.0.1", port: 0 }], admissions, log });
  const u = await startUdpRelay({
    listen: [{ hostname: "127.0.0.1", port: 0 }],
    admissions,
    log,
    sourcePorts,
  });
  if (!t.ok || !u.ok) throw new Error("relay start failed");
  tcp = t.relay;
  udpRelay = u.relay;
});

afterAll(async () => {
  for (const c of controls) c.close();
  for (const s of sockets) s.close();
  await tcp?.stop();
  await udpRelay?.stop();
  admissions?.close();
  await agent?.close();
});

interface Client {
  readonly tag: string;
  readonly sock: udp.Socket<"buffer">;
  /** Replies carrying this client's tag, and replies carrying anyone else's (must stay 0). */
  readonly got: { own: number; foreign: number };
}

/** One PCoIP-like client: allocate (admit), control connection, then its UDP flow from its own port. */
async function openSession(tag: string, n: number): Promise<Client> {
  const r = admissions.admit({
    sessionLogId: `22222222-0000-4000-8000-00000000000${n}`,
    agentSessionId: `s-${tag}`,
    clientIp: "127.0.0.1",
    agentHost: "127.0.0.1",
    agentTcpPort: agent.port,
    agentUdpPort: agent.port,
    sni: SNI,
  });
  if (!r.ok) throw new Error(r.reason);
  const c = await connectControl({
    hostname: "127.0.0.1",
    port: tcp.ports[0]!,
    serverName: SNI,
    ca: pki.ca.cert,
  });
  if (!c.ok) throw new Error(c.error);
  controls.push(c.client);
  const got = { own: 0, foreign: 0 };
  const prefix = `${tag}:`;
  const sock = await Bun.udpSocket({
    hostname: "127.0.0.1",
    socket: {
      data(_s, buf) {
        if (buf.toString("latin1", 0, prefix.length) === prefix) got.own++;
        else got.foreign++;
      },
      error() {},
    },
  });
  sockets.push(sock);
  const client: Client = { tag, sock, got };
  // The first datagram binds this client port to the session that has no flow yet.
  sock.send(`${tag}:0`, udpRelay.ports[0]!, "127.0.0.1");
  const end = Date.now() + 3000;
  while (got.own < 1 && Date.now() < end) await Bun.sleep(5);
  expect(got.own).toBe(1);
  return client;
}

async function pump(c: Client): Promise<void> {
  let sent = 1; // the binding datagram
  const deadline = Date.now() + 30_000;
  while (sent < PER_SESSION) {
    // Paced in bursts: never more than WINDOW unanswered, so loopback buffers do not overflow.
    while (sent - (c.got.own + c.got.foreign) >= WINDOW) {
      if (Date.now() > deadline) return;
      await Bun.sleep(1);
    }
    const burst = Math.min(64, PER_SESSION - sent);
    for (let i = 0; i < burst; i++) c.sock.send(`${c.tag}:${sent++}`, udpRelay.ports[0]!, "127.0.0.1");
    await Bun.sleep(0);
  }
  while (c.got.own + c.got.foreign < PER_SESSION && Date.now() < deadline) await Bun.sleep(5);
}

test("10,000 datagrams each way for each of two sessions; every reply reaches only its own client port", async () => {
  const a = await openSession("A", 1);
  const b = await openSession("B", 2);
  await Promise.all([pump(a), pump(b)]);

  expect(a.got).toEqual({ own: PER_SESSION, foreign: 0 });
  expect(b.got).toEqual({ own: PER_SESSION, foreign: 0 });

  const flows = udpRelay.flows();
  expect(flows.length).toBe(2);
  const [fa, fb] = flows;
  expect(fa!.sourcePort).not.toBe(fb!.sourcePort);
  for (const f of flows) {
    expect(f.sourcePort).toBeGreaterThanOrEqual(sourcePorts.from);
    expect(f.sourcePort).toBeLessThanOrEqual(sourcePorts.to);
    expect(f.packetsUp).toBe(PER_SESSION);
    expect(f.packetsDown).toBe(PER_SESSION);
    // The agent saw this session's datagrams from this session's source port only.
    expect(agent.udpBySource.get(`127.0.0.1|${f.sourcePort}`)).toBe(PER_SESSION);
  }
  expect(udpRelay.counters.drops.flow_limit).toBe(0);
  expect(udpRelay.counters.drops.send_blocked).toBe(0);
}, 60_000);
