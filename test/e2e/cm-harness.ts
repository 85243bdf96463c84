/**
 * One CM on real sockets for the cm-* e2e tests: the built-in broker with a local users file, a fake agent,
 * net/http1.ts with a test-PKI certificate, logs captured in memory. Every test file closes what it started.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createAgentClient } from "../../src/cm/agent-client.ts";
import { createLocalUsers, hashPassword, writeUsersFile } from "../../src/cm/auth/local-users.ts";
import { type BuiltinDesktop, createBuiltinBroker } from "../../src/cm/brokers/builtin.ts";
import {
  type CmApp,
  type CmAppOptions,
  type CmNodeState,
  createCmApp,
  standaloneNodeState,
} from "../../src/cm/server.ts";
import { compileTrustedProxies } from "../../src/net/client-address.ts";
import { type Http1Server, startHttp1Server } from "../../src/net/http1.ts";
import { createLogger, memoryDestination } from "../../src/observability/log.ts";
import {
  type FakeAgent,
  type FakeAgentOptions,
  loopbackAgentTargets,
  startFakeAgent,
} from "../peers/fake-agent.ts";
import { type PcoipClientOptions, pcoipClient } from "../peers/pcoip-client.ts";
import { testPki } from "../peers/test-certs.ts";

export const PRODUCT = {
  productName: "pcoip-cmsg",
  productVersion: "0.1.0",
  platform: "linux",
  locale: "en_US",
  ipAddress: "127.0.0.1",
  hostname: "cm.test",
};

export interface Harness {
  readonly cm: CmApp;
  /** The CM's node state (its drain flag can be raised and lowered). */
  readonly node: CmNodeState & { setDraining(on: boolean): void };
  readonly server: Http1Server;
  readonly agent: FakeAgent;
  readonly usersFile: string;
  readonly logs: ReturnType<typeof memoryDestination>;
  readonly ca: string;
  client(o?: Partial<PcoipClientOptions>): ReturnType<typeof pcoipClient>;
  close(): Promise<void>;
}

export interface HarnessOptions {
  readonly users?: Record<string, string>;
  readonly desktops?: (agent: FakeAgent) => BuiltinDesktop[];
  readonly agent?: FakeAgentOptions;
  readonly cm?: Partial<Omit<CmAppOptions, "log" | "broker" | "agentClient" | "trustedProxies">> & {
    trustedProxies?: string[];
  };
  readonly agentTimeoutMs?: number;
  /** Listen address of the CM (default 127.0.0.1). */
  readonly hostname?: string;
  readonly domains?: string[];
}

export async function startHarness(o: HarnessOptions = {}): Promise<Harness> {
  const dir = mkdtempSync(join(tmpdir(), "cm-harness-"));
  const usersFile = join(dir, "users");
  const users = o.users ?? { alice: "correct horse" };
  await writeUsersFile(
    usersFile,
    await Promise.all(
      Object.entries(users).map(async ([name, pw]) => ({ name, hash: await hashPassword(pw) })),
    ),
  );
  const logs = memoryDestination();
  const log = createLogger({ level: "debug", destination: logs });
  const agent = await startFakeAgent(o.agent ?? {});
  const desktops = o.desktops?.(agent) ?? [
    {
      id: "ws-1",
      name: "CAD workstation 1",
      agentHost: agent.hostname,
      agentPort: agent.port,
      hostname: "desktop-1.test",
      users: ["alice"],
      groups: [],
    },
  ];
  const broker = createBuiltinBroker({
    desktops,
    authenticators: [createLocalUsers({ file: usersFile, log })],
    domains: o.domains ?? ["corp.example"],
    brokerInfo: PRODUCT,
    pcmInfo: PRODUCT,
  });
  const { trustedProxies, ...cmRest } = o.cm ?? {};
  const node = standaloneNodeState(cmRest);
  const cm = createCmApp({
    node,
    // Loopback agents: loopback in sg.agentNetworks and the agent's session port in sg.agentPorts, explicitly.
    agentTargets: loopbackAgentTargets([agent.endpoint?.port ?? 4172]),
    log,
    broker,
    agentClient: createAgentClient({ timeoutMs: o.agentTimeoutMs ?? 3000 }),
    trustedProxies: compileTrustedProxies(trustedProxies ?? []),
    sweepEveryMs: 0,
    ...cmRest,
  });
  const pki = testPki();
  const leaf = pki.leaf(["localhost", "127.0.0.1", "::1"]);
  const server = startHttp1Server({
    hostname: o.hostname ?? "127.0.0.1",
    port: 0,
    tls: { cert: leaf.cert, key: leaf.key },
    fetch: cm.fetch,
  });
  return {
    cm,
    node,
    server,
    agent,
    usersFile,
    logs,
    ca: pki.ca.cert,
    client: (co = {}) =>
      pcoipClient({ host: o.hostname ?? "127.0.0.1", port: server.port, ca: pki.ca.cert, ...co }),
    async close() {
      server.stop({ closeActive: true });
      await cm.close();
      await agent.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
