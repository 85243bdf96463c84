// Claim: with HTTPS_PROXY set, broker traffic goes through a real tinyproxy with basic auth (CONNECT, our own TLS
// and HTTP inside), a wrong or missing proxy password is reported as the proxy's refusal (never logged), NO_PROXY
// sends the broker direct, and a broker certificate re-signed by the proxy's CA is reported as TLS inspection.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { createUpstreamConversation, relayProbe } from "../../src/cm/brokers/upstream-conversation.ts";
import { brokerFailureResult } from "../../src/cm/brokers/upstream-failures.ts";
import { resolveUpstreamOptions, type UpstreamOptions } from "../../src/cm/brokers/upstream-settings.ts";
import { createLogger, memoryDestination } from "../../src/observability/log.ts";
import { parseClientRequest } from "../../src/protocol/broker.ts";
import type { ClientRequest } from "../../src/protocol/types.ts";
import { type FakeBroker, startFakeBroker } from "../peers/fake-broker.ts";
import { startTinyproxy, type TinyproxyPeer, tinyproxyMissing } from "../peers/tinyproxy.ts";

const missing = tinyproxyMissing();
if (missing) console.warn(`skipping upstream proxy tests: ${missing}`);

const PCM = {
  productName: "pcoip-cmsg",
  productVersion: "0.1.0",
  platform: "linux",
  ipAddress: "10.0.1.7",
  hostname: "cm",
};
const FACTS = { clientIp: "198.51.100.77", clientLogId: "a1ff3a80-8801-1038-a9bd-00505680aded" };
const PROXY_PASSWORD = "pr0xy-s3cret";

function req<T extends ClientRequest>(inner: string): T {
  const r = parseClientRequest(`<pcoip-client version="2.1">${inner}</pcoip-client>`);
  if (!r.ok) throw new Error(r.error.detail);
  return r.msg as T;
}

function setup(broker: FakeBroker, env: Record<string, string>, extra: Partial<UpstreamOptions> = {}) {
  const sink = memoryDestination();
  const log = createLogger({ level: "debug", destination: sink });
  const r = resolveUpstreamOptions({
    brokerUrl: broker.url,
    caCertPem: broker.caCert,
    systemCa: false,
    env,
    pcmInfo: PCM,
    ...extra,
  });
  if (!r.ok) throw new Error(r.error.cause);
  return { settings: r.value.conversation, log, sink };
}

describe.skipIf(missing !== undefined)("broker traffic through tinyproxy", () => {
  let broker: FakeBroker;
  let inspected: FakeBroker;
  let proxy: TinyproxyPeer;
  let env: Record<string, string>;
  beforeAll(async () => {
    broker = await startFakeBroker({
      launch: "host-only",
      users: { alice: { password: "alice-pw", desktops: [{ name: "CAD 1", agentHost: "10.20.3.14" }] } },
    });
    inspected = await startFakeBroker({ certificate: "inspection", users: {} });
    proxy = await startTinyproxy({
      connectPorts: [broker.port, inspected.port],
      username: "cm",
      password: PROXY_PASSWORD,
    });
    // Lower-case names, ip:port without a scheme: as administrators write them.
    env = {
      https_proxy: `127.0.0.1:${proxy.port}`,
      https_proxy_username: "cm",
      https_proxy_password: PROXY_PASSWORD,
    };
  });
  afterAll(async () => {
    await proxy?.stop();
    await broker?.close();
    await inspected?.close();
  });

  test("a whole conversation goes through CONNECT, unchanged inside the tunnel", async () => {
    const { settings, log, sink } = setup(broker, env);
    const before = proxy.connects().length;
    const c = createUpstreamConversation(settings, log);
    const hello = await c.hello(
      req(
        "<hello><client-info><product-name>Teradici PCoIP Desktop Client</product-name></client-info></hello>",
      ),
      FACTS,
    );
    const auth = await c.authenticate(
      req(
        '<authenticate method="password"><username>alice</username><password>alice-pw</password></authenticate>',
      ),
      FACTS,
    );
    const list = await c.getResourceList(req("<get-resource-list/>"), FACTS);
    const alloc = await c.allocateResource(
      req("<allocate-resource><resource-id>0</resource-id></allocate-resource>"),
      FACTS,
    );
    await c.bye(req("<bye/>"), FACTS);
    expect(hello.ok).toBe(true);
    expect(auth.ok && auth.resp.result.resultId).toBe("AUTH_SUCCESSFUL_AND_COMPLETE");
    expect(list.ok && list.resp.resources.length).toBe(1);
    expect(alloc.ok && alloc.resp.target?.ipAddress).toBe("10.20.3.14");
    await Bun.sleep(100);
    expect(
      proxy
        .connects()
        .slice(before)
        .every((c) => c === `127.0.0.1:${broker.port}`),
    ).toBe(true);
    expect(proxy.connects().length).toBeGreaterThan(before);
    // The broker saw the real client, not the proxy, and the CM's cookie handling is intact through the tunnel.
    const last = broker.requests.slice(-5);
    expect(last.every((r) => r.header("x-forwarded-for") === "198.51.100.77")).toBe(true);
    expect(new Set(last.slice(1).map((r) => r.cookie)).size).toBe(1);
    const text = sink.text();
    expect(text).not.toContain(PROXY_PASSWORD);
    expect(text).not.toContain(Buffer.from(`cm:${PROXY_PASSWORD}`).toString("base64"));
  });

  test("a wrong proxy password: the proxy's refusal is reported, the client reads the broker error, nothing leaks", async () => {
    const { settings, log, sink } = setup(broker, { ...env, https_proxy_password: "wrong-proxy-pw" });
    const start = broker.requests.length;
    const r = await relayProbe(
      settings,
      req("<hello><client-info><product-name>QueryBrokerClient</product-name></client-info></hello>"),
      FACTS,
      log,
    );
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(r.failure.kind).toBe("proxy_auth");
    expect(r.failure.cause).toContain("refused the credentials");
    expect(r.failure.fix).toContain("HTTPS_PROXY_PASSWORD");
    expect(brokerFailureResult("authenticate", r.failure).resultStr).toBe(
      "Error occurred while communicating with broker",
    );
    expect(broker.requests.length).toBe(start);
    const line = sink
      .lines()
      .map((l) => JSON.parse(l))
      .find((l) => l.failure === "proxy_auth");
    expect(line?.level).toBe("warn");
    expect(sink.text()).not.toContain("wrong-proxy-pw");
  });

  test("no proxy credentials: 407 reported as such", async () => {
    const { settings, log } = setup(broker, { HTTPS_PROXY: `http://127.0.0.1:${proxy.port}` });
    const r = await relayProbe(settings, req("<hello/>"), FACTS, log);
    expect(!r.ok && r.failure.kind).toBe("proxy_auth");
    expect(!r.ok && r.failure.status).toBe(407);
    expect(!r.ok && r.failure.cause).toContain("HTTP 407 Proxy Authentication Required");
  });

  test("credentials in the URL work too", async () => {
    const { settings, log } = setup(broker, {
      HTTPS_PROXY: `http://cm:${encodeURIComponent(PROXY_PASSWORD)}@127.0.0.1:${proxy.port}`,
    });
    const r = await relayProbe(settings, req("<hello/>"), FACTS, log);
    expect(r.ok).toBe(true);
  });

  test("NO_PROXY naming the broker sends it direct", async () => {
    const { settings, log } = setup(broker, { ...env, NO_PROXY: "localhost,127.0.0.0/8" });
    const before = proxy.connects().length;
    const r = await relayProbe(settings, req("<hello/>"), FACTS, log);
    expect(r.ok).toBe(true);
    await Bun.sleep(50);
    expect(proxy.connects().length).toBe(before);
  });

  test("a broker certificate issued by the proxy's CA is reported as TLS inspection", async () => {
    const { settings, log, sink } = setup(inspected, env);
    const r = await relayProbe(settings, req("<hello/>"), FACTS, log);
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(r.failure.kind).toBe("tls_inspection");
    expect(r.failure.cause).toContain('issued by "CN=Corp SSL Inspection Proxy CA"');
    expect(r.failure.cause).toContain("inspecting TLS");
    expect(r.failure.fix).toContain("exempt the broker's address from TLS inspection");
    expect(sink.text()).toContain("tls_inspection");
  });

  test("when the host trusts the inspecting proxy's CA, the connection works and a warning says what happens", async () => {
    const { settings, log, sink } = setup(inspected, env, { systemCa: inspected.inspectionCaCert });
    const r = await relayProbe(settings, req("<hello/>"), FACTS, log);
    expect(r.ok).toBe(true);
    const warning = sink
      .lines()
      .map((l) => JSON.parse(l))
      .find((l) => String(l.msg).includes("TLS-inspecting proxy"));
    expect(warning?.level).toBe("warn");
  });
});
