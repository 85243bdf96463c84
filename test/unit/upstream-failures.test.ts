// Claim: every way the upstream broker can fail — DNS, refused, timeout, closed mid-answer, not TLS, each
// certificate rule (self-signed, wrong CA, 1024-bit key, wrong name), HTTP status, garbage, wrong root — becomes a
// failure value with the right kind, the vendor sentence the client reads ("Error …" / "Timeout occurred …"), and
// one log line naming the cause (the certificate's subject and the rule for certificates) and the fix.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { createServer, type Server } from "node:net";
import { relayProbe } from "../../src/cm/brokers/upstream-conversation.ts";
import { brokerFailureResult } from "../../src/cm/brokers/upstream-failures.ts";
import { resolveUpstreamOptions, type UpstreamOptions } from "../../src/cm/brokers/upstream-settings.ts";
import { createLogger, memoryDestination } from "../../src/observability/log.ts";
import { parseClientRequest } from "../../src/protocol/broker.ts";
import type { Hello } from "../../src/protocol/types.ts";
import { type FakeBroker, type FakeBrokerCertificate, startFakeBroker } from "../peers/fake-broker.ts";

const PCM = {
  productName: "pcoip-cmsg",
  productVersion: "0.1.0",
  platform: "linux",
  ipAddress: "10.0.1.7",
  hostname: "cm",
};
const FACTS = { clientIp: "198.51.100.77", clientLogId: "a1ff3a80-8801-1038-a9bd-00505680aded" };
const parsed = parseClientRequest(
  '<pcoip-client version="2.1"><hello><client-info><product-name>QueryBrokerClient</product-name></client-info></hello></pcoip-client>',
);
const PROBE = (parsed.ok ? parsed.msg : undefined) as Hello;

async function probe(url: string, caCertPem: string, extra: Partial<UpstreamOptions> = {}) {
  const sink = memoryDestination();
  const log = createLogger({ destination: sink });
  const r = resolveUpstreamOptions({
    brokerUrl: url,
    caCertPem,
    systemCa: false,
    env: {},
    pcmInfo: PCM,
    ...extra,
  });
  if (!r.ok) throw new Error(r.error.cause);
  const result = await relayProbe(r.value.conversation, PROBE, FACTS, log);
  const lines = sink.lines().map((l) => JSON.parse(l) as Record<string, unknown>);
  return { result, lines, failure: result.ok ? undefined : result.failure };
}

describe("broker failures mapped to the client and the log", () => {
  let broker: FakeBroker;
  beforeAll(async () => {
    broker = await startFakeBroker({ users: {} });
  });
  afterAll(async () => {
    await broker?.close();
  });

  test.each([
    ["http-500", "http_status", 'HTTP 500 Internal Server Error ("A server error occurred.")'],
    ["garbage", "bad_xml", "not valid XML"],
    ["wrong-root", "wrong_root", "not a pcoip-client document"],
    ["close-mid-response", "closed", "in the middle of its answer"],
  ] as const)("%s → %s", async (fault, kind, words) => {
    broker.fail(fault, { times: 1 });
    const { failure, lines } = await probe(broker.url, broker.caCert);
    expect(failure?.kind).toBe(kind);
    expect(failure?.timeout).toBe(false);
    expect(failure?.cause).toContain(words);
    expect(brokerFailureResult("authenticate", failure!)).toEqual({
      resultId: "AUTH_FAILED_BROKER_ERROR",
      resultStr: "Error occurred while communicating with broker",
    });
    const line = lines.find((l) => l.failure === kind)!;
    expect(line.level).toBe("warn");
    expect(String(line.msg)).toContain(words);
    expect(String(line.fix).length).toBeGreaterThan(10);
  });

  test("no answer in time → timeout, and the client reads the vendor's timeout sentence", async () => {
    broker.fail("timeout", { times: 1 });
    const { failure, lines } = await probe(broker.url, broker.caCert, { timeoutMs: 300 });
    expect(failure?.kind).toBe("timeout");
    expect(failure?.timeout).toBe(true);
    expect(brokerFailureResult("get-resource-list", failure!)).toEqual({
      resultId: "LIST_FAILED_BROKER_ERROR",
      resultStr: "Timeout occurred while communicating with broker",
    });
    expect(lines.some((l) => String(l.msg).includes("did not answer within 300 ms"))).toBe(true);
  });

  test("a wrong path → HTTP 404 with a fix naming the path", async () => {
    const { failure } = await probe(`${broker.url}/wrong/xml`, broker.caCert);
    expect(failure?.kind).toBe("http_status");
    expect(failure?.status).toBe(404);
    expect(failure?.fix).toContain("/pcoip-broker/xml");
  });

  test("a name that does not resolve → dns (resolved by the injected resolver: no query leaves the machine)", async () => {
    const resolve = async () => {
      throw Object.assign(new Error("getaddrinfo ENOTFOUND"), { code: "ENOTFOUND" });
    };
    const { failure } = await probe(`https://broker.corp.example:${broker.port}`, broker.caCert, { resolve });
    expect(failure?.kind).toBe("dns");
    expect(failure?.cause).toContain("broker.corp.example does not resolve (ENOTFOUND)");
    expect(failure?.fix).toContain("DNS");
  });

  test("a name the certificate does not cover → certificate, naming the subject and the rule", async () => {
    const resolve = async () => ["127.0.0.1"];
    const { failure, lines } = await probe(`https://broker.corp.example:${broker.port}`, broker.caCert, {
      resolve,
    });
    expect(failure?.kind).toBe("certificate");
    expect(failure?.cause).toContain('subject "CN=localhost"');
    expect(failure?.cause).toContain("the certificate must name the host in brokerUrl");
    expect(lines.some((l) => l.failure === "certificate")).toBe(true);
  });

  test("the same broker by a name its certificate has, through the resolver → fine", async () => {
    const resolve = async () => ["127.0.0.1"];
    const { result } = await probe(`https://localhost:${broker.port}`, broker.caCert, { resolve });
    expect(result.ok).toBe(true);
  });
});

describe("certificate rules", () => {
  const brokers: FakeBroker[] = [];
  afterAll(async () => {
    for (const b of brokers) await b.close();
  });
  const start = async (certificate: FakeBrokerCertificate) => {
    const b = await startFakeBroker({ certificate, users: {} });
    brokers.push(b);
    return b;
  };

  test.each([
    [
      "self-signed",
      'is self-signed and not trusted: rule "the certificate must chain to tls.trustedCa or the system store"',
    ],
    ["wrong-ca", 'issuer "CN=Some Other CA") does not chain to a trusted CA'],
    ["weak-key", 'has a 1024-bit RSA key: rule "RSA keys of at least 2048 bits" broken'],
  ] as const)("%s is refused with the rule it breaks", async (certificate, words) => {
    const b = await start(certificate);
    const { failure, lines } = await probe(b.url, b.caCert);
    expect(failure?.kind).toBe("certificate");
    expect(failure?.cause).toContain(words);
    expect(failure?.cause).toContain('subject "CN=localhost"');
    expect(failure?.timeout).toBe(false);
    expect(lines.find((l) => l.failure === "certificate")?.fix).toBeString();
    expect(b.requests).toEqual([]);
  });

  test("brokerCertCheck = false accepts a self-signed broker", async () => {
    const b = await start("self-signed");
    const { result } = await probe(b.url, b.caCert, { brokerCertCheck: false });
    expect(result.ok).toBe(true);
  });

  test("the configured CA may be the self-signed certificate itself", async () => {
    const b = await start("self-signed");
    const { result } = await probe(b.url, b.certPem);
    expect(result.ok).toBe(true);
  });
});

describe("connection-level failures", () => {
  test("nothing listening → refused, fix names the port and the service", async () => {
    const b = await startFakeBroker({ users: {} });
    b.stopListening();
    try {
      const { failure, lines } = await probe(b.url, b.caCert);
      expect(failure?.kind).toBe("refused");
      expect(failure?.cause).toContain("ECONNREFUSED");
      expect(lines.some((l) => String(l.msg).includes("refused the connection"))).toBe(true);
    } finally {
      await b.close();
    }
  });

  test("a port that does not speak TLS → tls", async () => {
    const plain: Server = createServer((s) => s.end("HTTP/1.1 400 Bad Request\r\n\r\n"));
    await new Promise<void>((r) => plain.listen(0, "127.0.0.1", r));
    try {
      const port = (plain.address() as { port: number }).port;
      const { failure } = await probe(`https://127.0.0.1:${port}`, "");
      expect(failure?.kind).toBe("tls");
    } finally {
      plain.close();
    }
  });
});
