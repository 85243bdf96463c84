// Claim: the appliance process keeps the two TLS CA keys apart (issue 18 case 5): with a broker whose certificate
// comes from a private CA, `tls.trustedCa` makes the CM verify it (a client signs in and gets a desktop through
// the CM) while the CM still serves only its own chain from `tls.caCert` — the private broker CA is never sent to
// clients; an old configuration that put the broker's CA in `tls.caCert` keeps working and logs a deprecation note
// naming `tls.trustedCa`.
import { afterEach, expect, setDefaultTimeout, test } from "bun:test";
import { connect } from "node:tls";
import { type ApplianceProcess, startApplianceProcess } from "../peers/appliance-process.ts";
import { type FakeAgent, startFakeAgent } from "../peers/fake-agent.ts";
import { type FalconBroker, startFalconBroker } from "../peers/falcon-broker.ts";
import { pcoipClient } from "../peers/pcoip-client.ts";

setDefaultTimeout(60_000);

let app: ApplianceProcess | undefined;
let broker: FalconBroker | undefined;
let agent: FakeAgent | undefined;

afterEach(async () => {
  await app?.kill();
  app?.cleanup();
  app = undefined;
  await broker?.close();
  broker = undefined;
  await agent?.close();
  agent = undefined;
});

async function privateCaBroker(): Promise<FalconBroker> {
  agent = await startFakeAgent({ sni: "desktop-1.test" });
  return startFalconBroker({
    certificate: "private-ca",
    users: {
      alice: {
        password: "alice pw",
        desktops: [
          { name: "Desk", agentHost: agent.hostname, agentPort: agent.port, hostname: "desktop-1.test" },
        ],
      },
    },
  });
}

/** A client's sign-in through the appliance's CM: the result ids of authenticate and allocate. */
async function signIn(a: ApplianceProcess): Promise<[string, string]> {
  const [host = "", port = ""] = a.cm.split(/:(?=\d+$)/);
  const c = pcoipClient({ host, port: Number(port), ca: a.ca, servername: "localhost" });
  try {
    await c.probe();
    await c.hello();
    const auth = await c.authenticate("alice", "alice pw", "corp.example");
    await c.getResourceList();
    const alloc = await c.allocate("0");
    return [auth.resultId, alloc.resultId];
  } finally {
    c.close();
  }
}

/** The subjects of the certificates the CM serves, leaf first. */
function servedChain(a: ApplianceProcess): Promise<string[]> {
  const [host = "", port = ""] = a.cm.split(/:(?=\d+$)/);
  return new Promise((resolve, reject) => {
    const s = connect(
      { host, port: Number(port), servername: "localhost", rejectUnauthorized: false },
      () => {
        const subjects: string[] = [];
        const seen = new Set<string>();
        let cert = s.getPeerCertificate(true);
        while (cert?.fingerprint256 && !seen.has(cert.fingerprint256)) {
          seen.add(cert.fingerprint256);
          subjects.push(String(cert.subject?.CN ?? ""));
          cert = cert.issuerCertificate;
        }
        s.destroy();
        resolve(subjects);
      },
    );
    s.on("error", reject);
  });
}

test("tls.trustedCa verifies a broker from a private CA; tls.caCert stays the CM's own chain", async () => {
  broker = await privateCaBroker();
  app = await startApplianceProcess({
    topLevel: `brokerUrl = "${broker.url}"`,
    env: { PCOIP_CMSG_TLS_TRUSTEDCA: broker.caCertFile },
  });
  expect(await signIn(app)).toEqual(["AUTH_SUCCESSFUL_AND_COMPLETE", "ALLOC_SUCCESSFUL"]);
  const chain = await servedChain(app);
  expect(chain[0]).toBe("localhost");
  expect(chain).not.toContain("Falcon Broker Private CA");
  const said = JSON.stringify(app.logs);
  expect(said).not.toContain("out of order");
  expect(said).not.toContain("deprecated");
});

test("an old config with the broker's CA in tls.caCert keeps working and logs a deprecation note", async () => {
  broker = await privateCaBroker();
  app = await startApplianceProcess({
    topLevel: `brokerUrl = "${broker.url}"`,
    env: { PCOIP_CMSG_TLS_CACERT: broker.caCertFile },
  });
  expect(await signIn(app)).toEqual(["AUTH_SUCCESSFUL_AND_COMPLETE", "ALLOC_SUCCESSFUL"]);
  const note = app.logs.find((l) => String(l.msg).includes("deprecated"));
  expect(note?.level).toBe("warn");
  expect(String(note?.msg)).toContain(`tls.trustedCa = "${broker.caCertFile}"`);
});
