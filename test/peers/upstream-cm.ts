/**
 * A whole CM in upstream broker mode for the upstream e2e tests: the hono app behind the strict HTTP/1.1 front door
 * on real TLS (a test-PKI leaf for localhost/127.0.0.1), its broker the upstream broker pointed at a fake broker
 * (fake-broker.ts or falcon-broker.ts), with the real agent client and, optionally, a real SG (admissions + TCP
 * relay) behind the CM's SessionGateway. Logs go to memory, at debug.
 */
import { createAgentClient } from "../../src/cm/agent-client.ts";
import type { AgentTargetRules } from "../../src/cm/agent-targets.ts";
import { createUpstreamBroker, type UpstreamOptions } from "../../src/cm/brokers/upstream.ts";
import { type CmApp, createCmApp, type SessionGateway } from "../../src/cm/server.ts";
import { compileTrustedProxies } from "../../src/net/client-address.ts";
import { type Http1Server, startHttp1Server } from "../../src/net/http1.ts";
import { createLogger, memoryDestination } from "../../src/observability/log.ts";
import { createSessionGateway } from "../../src/platform/session-gateway.ts";
import { type Admissions, createAdmissions } from "../../src/sg/admissions.ts";
import { startTcpRelay, type TcpRelay } from "../../src/sg/tcp-relay.ts";
import { testPki } from "./test-certs.ts";

/** The CM's own product info as the upstream broker announces it to the broker. */
export const TEST_PCM_INFO = {
  productName: "pcoip-cmsg",
  productVersion: "0.1.0",
  platform: "linux",
  ipAddress: "127.0.0.1",
  hostname: "cm.test",
};

export interface UpstreamCm {
  readonly port: number;
  readonly app: CmApp;
  readonly sink: ReturnType<typeof memoryDestination>;
  /** Parsed log lines. */
  lines(): Record<string, unknown>[];
  /** The SG's TCP port when the SG is on. */
  readonly sgPort: number | undefined;
  readonly admissions: Admissions | undefined;
  stop(): Promise<void>;
}

export interface UpstreamCmOptions {
  /** Put an SG (admissions + TCP relay on 127.0.0.1) behind the CM. */
  readonly sg?: boolean;
  /** The CM's agent client timeout (default 5000 ms). */
  readonly agentTimeoutMs?: number;
  /** The agent targets the CM accepts (default: the product's). */
  readonly agentTargets?: AgentTargetRules;
}

export async function startUpstreamCm(
  upstream: Partial<UpstreamOptions> & Pick<UpstreamOptions, "brokerUrl">,
  opts: UpstreamCmOptions = {},
): Promise<UpstreamCm> {
  const sink = memoryDestination();
  const log = createLogger({ level: "debug", destination: sink });
  const made = createUpstreamBroker({ systemCa: false, env: {}, pcmInfo: TEST_PCM_INFO, ...upstream });
  if (!made.ok) throw new Error(`upstream broker: ${made.error.cause}`);
  let admissions: Admissions | undefined;
  let relay: TcpRelay | undefined;
  let gateway: SessionGateway | undefined;
  if (opts.sg) {
    const adm = createAdmissions({ sweepEveryMs: 0 });
    const t = await startTcpRelay({ listen: [{ hostname: "127.0.0.1", port: 0 }], admissions: adm, log });
    if (!t.ok) throw new Error(t.error.cause);
    admissions = adm;
    relay = t.relay;
    const sgPort = t.relay.ports[0]!;
    gateway = createSessionGateway({
      admissions: adm,
      externalAddressFor: () => ({ ip: "127.0.0.1", port: sgPort }),
    });
  }
  const app = createCmApp({
    log,
    broker: made.broker,
    agentClient: createAgentClient({ timeoutMs: opts.agentTimeoutMs ?? 5000 }),
    ...(gateway ? { gateway } : {}),
    ...(opts.agentTargets ? { agentTargets: opts.agentTargets } : {}),
    trustedProxies: compileTrustedProxies([]),
    sweepEveryMs: 0,
  });
  const leaf = testPki().leaf(["localhost", "127.0.0.1"]);
  const server: Http1Server = startHttp1Server({
    hostname: "127.0.0.1",
    port: 0,
    tls: { cert: leaf.cert, key: leaf.key },
    fetch: app.fetch,
  });
  return {
    port: server.port,
    app,
    sink,
    lines: () => sink.lines().map((l) => JSON.parse(l) as Record<string, unknown>),
    sgPort: relay?.ports[0],
    admissions,
    async stop() {
      server.stop({ closeActive: true });
      await app.close();
      await relay?.stop();
      admissions?.close();
    },
  };
}
