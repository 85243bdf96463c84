/**
 * An SG on loopback for tests that throw things at it: the TCP and UDP relays over one admissions table, an agent
 * endpoint, and the "keeper" — a session admitted and connected (TLS control + a UDP flow) before anything else,
 * which `checkKeeper()` proves still relays both planes after each test. Every test file closes it in afterAll.
 *
 * const sg = await startSgFixture({ sni: "agent-9.corp.test", idPrefix: "11111111", log });
 * afterEach(() => sg.checkKeeper());
 */
import type { udp } from "bun";
import type { Logger } from "../../src/observability/log.ts";
import {
  type Admissions,
  type AdmissionsOptions,
  type AdmitRequest,
  type AdmitResult,
  createAdmissions,
} from "../../src/sg/admissions.ts";
import { startTcpRelay, type TcpRelay, type TcpRelayOptions } from "../../src/sg/tcp-relay.ts";
import { startUdpRelay, type UdpRelay, type UdpRelayOptions } from "../../src/sg/udp-relay.ts";
import {
  type AgentEndpoint,
  type ControlClient,
  connectControl,
  startAgentEndpoint,
} from "./agent-endpoint.ts";
import { testPki } from "./test-certs.ts";

export interface Keeper {
  readonly client: ControlClient;
  readonly udp: udp.Socket<"buffer">;
  readonly replies: string[];
}

export interface SgFixture {
  readonly agent: AgentEndpoint;
  readonly admissions: Admissions;
  readonly tcp: TcpRelay;
  readonly udpRelay: UdpRelay;
  readonly keeper: Keeper;
  /** Admits a session toward the fixture's agent for 127.0.0.1 and the fixture's SNI, `over` laid on top. */
  admit(over?: Partial<AdmitRequest>, into?: Admissions): AdmitResult;
  /** A tagged message round-trips on the keeper's control connection and its UDP flow (throws otherwise). */
  checkKeeper(ms?: number): Promise<void>;
  close(): Promise<void>;
}

export interface SgFixtureOptions {
  readonly sni: string;
  /** First 8 hex digits of the session ids this fixture admits (one per test file, for telling them apart). */
  readonly idPrefix: string;
  readonly log: Logger;
  /** Extra names on the agent's certificate. */
  readonly agentNames?: readonly string[];
  readonly admissions?: AdmissionsOptions;
  readonly tcp?: Partial<TcpRelayOptions>;
  readonly udp?: Partial<UdpRelayOptions>;
  /** UDP listener host (default 127.0.0.1). */
  readonly udpHostname?: string;
}

/** Polls `cond` every 10 ms; throws when it is still false after `ms`. */
export async function until(cond: () => boolean, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error("condition not met in time");
    await Bun.sleep(10);
  }
}

export async function startSgFixture(o: SgFixtureOptions): Promise<SgFixture> {
  const pki = testPki();
  const agentCert = pki.leaf([o.sni, ...(o.agentNames ?? [])]);
  // A random 100-port source range below the ephemeral range: parallel test files do not collide.
  const base = 20_000 + Math.floor(Math.random() * 200) * 100;
  const agent = await startAgentEndpoint({ hostname: "127.0.0.1", cert: agentCert.cert, key: agentCert.key });
  const admissions = createAdmissions({ sweepEveryMs: 0, ...o.admissions });
  const t = await startTcpRelay({
    listen: [{ hostname: "127.0.0.1", port: 0 }],
    admissions,
    log: o.log,
    ...o.tcp,
  });
  if (!t.ok) throw new Error(t.error.cause);
  const tcp = t.relay;
  const u = await startUdpRelay({
    listen: [{ hostname: o.udpHostname ?? "127.0.0.1", port: 0 }],
    admissions,
    log: o.log,
    sourcePorts: { from: base, to: base + 99 },
    ...o.udp,
  });
  if (!u.ok) throw new Error(u.error.cause);
  const udpRelay = u.relay;

  let seq = 0;
  const admit = (over: Partial<AdmitRequest> = {}, into: Admissions = admissions): AdmitResult => {
    seq++;
    return into.admit({
      sessionLogId: `${o.idPrefix}-0000-4000-8000-${String(seq).padStart(12, "0")}`,
      agentSessionId: `s-${seq}`,
      clientIp: "127.0.0.1",
      agentHost: "127.0.0.1",
      agentTcpPort: agent.port,
      agentUdpPort: agent.port,
      sni: o.sni,
      ...over,
    });
  };

  const r = admit();
  if (!r.ok) throw new Error(r.reason);
  const c = await connectControl({
    hostname: "127.0.0.1",
    port: tcp.ports[0]!,
    serverName: o.sni,
    ca: pki.ca.cert,
    timeoutMs: 3000,
  });
  if (!c.ok) throw new Error(c.error);
  const replies: string[] = [];
  const sock = await Bun.udpSocket({
    hostname: "127.0.0.1",
    socket: {
      data: (_s, b) => {
        replies.push(String(b));
      },
      error() {},
    },
  });
  const keeper: Keeper = { client: c.client, udp: sock, replies };
  await until(() => agent.accepted.length === 1); // the agent's side of the keeper's handshake has completed

  return {
    agent,
    admissions,
    tcp,
    udpRelay,
    keeper,
    admit,
    async checkKeeper(ms = 3000) {
      const tag = `keeper-${Date.now()}-${Math.random()}`;
      keeper.client.write(tag);
      await keeper.client.waitFor(tag, ms);
      keeper.udp.send(tag, udpRelay.ports[0]!, "127.0.0.1");
      await until(() => keeper.replies.includes(tag), ms);
    },
    async close() {
      keeper.client.close();
      keeper.udp.close();
      await tcp.stop();
      await udpRelay.stop();
      admissions.close();
      await agent.close();
    },
  };
}
