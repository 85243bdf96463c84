// Claim: the upstream broker keeps the CM's broker contract (test/unit/cm-broker-contract.ts) against a real fake
// broker over TLS, both when the broker launches the session itself and when it names only the desktop host.
import { setDefaultTimeout } from "bun:test";
import { createUpstreamBroker } from "../../src/cm/brokers/upstream.ts";
import { type FakeAgent, startFakeAgent } from "../peers/fake-agent.ts";
import { startFakeBroker } from "../peers/fake-broker.ts";
import { TEST_PCM_INFO } from "../peers/upstream-cm.ts";
import { runBrokerContract } from "./cm-broker-contract.ts";

// The setup starts a fake agent and broker (and, in a fresh process, makes test certificates): seconds when busy.
setDefaultTimeout(30_000);

for (const launch of ["broker", "host-only"] as const) {
  runBrokerContract(
    `upstream (${launch === "broker" ? "the broker launches" : "the broker names the host"})`,
    async () => {
      let agent: FakeAgent | undefined;
      if (launch === "broker") agent = await startFakeAgent();
      const fake = await startFakeBroker({
        launch,
        users: {
          alice: {
            password: "alice-pw",
            desktops: [
              {
                name: "CAD 1",
                agentHost: agent?.hostname ?? "10.20.3.14",
                ...(agent ? { agentPort: agent.port } : {}),
              },
            ],
          },
        },
      });
      const made = createUpstreamBroker({
        brokerUrl: fake.url,
        caCertPem: fake.caCert,
        systemCa: false,
        env: {},
        pcmInfo: TEST_PCM_INFO,
      });
      if (!made.ok) throw new Error(made.error.cause);
      return {
        broker: made.broker,
        good: { username: "alice", password: "alice-pw", domain: "corp.example" },
        badPassword: "wrong",
        // Resource ids of the real broker are list positions.
        entitledResourceId: "0",
        unknownResourceId: "7",
        async close() {
          await fake.close();
          await agent?.close();
        },
      };
    },
  );
}
