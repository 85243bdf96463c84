/**
 * The real CM (src/cm/server.ts in upstream broker mode) in the calling process, wired to that process's SG
 * admissions as src/platform/cm-plane.ts wires the appliance's: allocations admit sessions into the same SG, and
 * CM work shares the SG's event loop. Used by the SG processes of bench/lib/sg-server.ts (loopback) and
 * bench/sg-udp-netns.ts (namespaces), driven by real logins (bench/lib/logins.ts) against a broker and agent in
 * other processes (bench/lib/cm-upstreams.ts).
 */
import type { Logger } from "pino";
import { createAgentClient } from "../../src/cm/agent-client.ts";
import { compileAgentTargets } from "../../src/cm/agent-targets.ts";
import { createUpstreamBroker } from "../../src/cm/brokers/upstream.ts";
import { createCmApp } from "../../src/cm/server.ts";
import { compileTrustedProxies } from "../../src/net/client-address.ts";
import { startHttp1Server } from "../../src/net/http1.ts";
import { createSessionGateway } from "../../src/platform/session-gateway.ts";
import type { Admissions } from "../../src/sg/admissions.ts";

export interface RealCm {
  readonly port: number;
  stop(opts?: { closeActive?: boolean }): void;
}

export async function startRealCm(o: {
  log: Logger;
  admissions: Admissions;
  /** The SG address clients are sent to (allocate's answer). */
  external: { ip: string; port: number };
  cert: string;
  key: string;
  ca: string;
  brokerUrl: string;
  agentPort: number;
}): Promise<{ ok: true; cm: RealCm } | { ok: false; error: string }> {
  const ca = await Bun.file(o.ca).text();
  const self = {
    productName: "pcoip-cmsg Connection Manager",
    productVersion: "bench",
    platform: `${process.platform} ${process.arch}`,
    locale: "en_US",
    ipAddress: "127.0.0.1",
    hostname: "localhost",
  };
  const up = createUpstreamBroker({
    brokerUrl: o.brokerUrl,
    brokerCertCheck: true,
    caCertPem: ca,
    env: {},
    pcmInfo: self,
    agentPort: o.agentPort,
  });
  if (!up.ok) return { ok: false, error: `upstream broker: ${JSON.stringify(up.error)}` };
  const app = createCmApp({
    log: o.log,
    broker: up.broker,
    agentClient: createAgentClient({ timeoutMs: 20_000 }),
    // As appliance.ts: allocations admit the session in this SG.
    gateway: createSessionGateway({ admissions: o.admissions, externalAddressFor: () => o.external }),
    // The bench's agents answer on loopback (never in sg.agentNetworks by default).
    agentTargets: compileAgentTargets({ networks: ["127.0.0.0/8", "::1/128"] }),
    trustedProxies: compileTrustedProxies([]),
    // One load generator at one address stands for many clients at many: the per-IP caps (issue 16) are lifted.
    limits: {
      maxConcurrentEstablishments: 2000,
      maxPreSessionsPerIp: 1_000_000,
      maxPasswordChecksPerIp: 10_000,
    },
  });
  const server = startHttp1Server({
    hostname: "127.0.0.1",
    port: 0,
    tls: { cert: await Bun.file(o.cert).text(), key: await Bun.file(o.key).text() },
    fetch: app.fetch,
  });
  return {
    ok: true,
    cm: {
      port: server.port,
      stop(opts) {
        server.stop(opts);
        void app.close();
      },
    },
  };
}
