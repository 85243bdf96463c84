// Claim: the CM's connections to an upstream broker resume the TLS session of an earlier accepted connection to
// the same broker (each client conversation opens its own connection, issue 21), with brokerCertCheck on; a
// certificate the judgement refuses is refused on every connection; and without a session cache every
// connection is a full handshake.
import { afterAll, expect, test } from "bun:test";
import { X509Certificate } from "node:crypto";
import {
  type BrokerEndpoint,
  brokerTrust,
  type ConnectBrokerOptions,
  connectBroker,
} from "../../src/cm/brokers/upstream-transport.ts";
import { createTlsSessionCache } from "../../src/cm/tls-sessions.ts";
import { testPki } from "../peers/test-certs.ts";

const pki = testPki();
const good = pki.leaf(["localhost", "127.0.0.1"]);
const servers: ReturnType<typeof Bun.serve>[] = [];
afterAll(() => {
  for (const s of servers) s.stop(true);
});

function broker(cert: { cert: string; key: string }): BrokerEndpoint {
  const s = Bun.serve({ hostname: "127.0.0.1", port: 0, tls: cert, fetch: () => new Response("ok") });
  servers.push(s);
  const port = s.port ?? 0;
  return { url: `https://localhost:${port}`, host: "localhost", port, path: "/pcoip-broker/xml" };
}

function options(endpoint: BrokerEndpoint, withCache: boolean): ConnectBrokerOptions {
  return {
    endpoint,
    proxy: undefined,
    trust: brokerTrust(true, [pki.ca.cert], [new X509Certificate(pki.ca.cert)]),
    timeoutMs: 3000,
    resolve: async () => ["127.0.0.1"],
    ...(withCache ? { sessions: createTlsSessionCache(16) } : {}),
  };
}

/** Connects, sends one request, reads the answer (the TLS 1.3 session arrives with it), closes. */
async function visit(o: ConnectBrokerOptions): Promise<{ ok: boolean; resumed: boolean; kind?: string }> {
  const r = await connectBroker(o);
  if (!r.ok) return { ok: false, resumed: false, kind: r.failure.kind };
  const resumed = r.socket.isSessionReused();
  await new Promise<void>((done) => {
    r.socket.on("data", () => {
      r.socket.destroy();
      done();
    });
    r.socket.write("GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
  });
  return { ok: true, resumed };
}

test("brokerCertCheck on: the second and third connections resume the first one's session", async () => {
  const o = options(broker(good), true);
  const runs = [await visit(o), await visit(o), await visit(o)];
  expect(runs.map((r) => r.ok)).toEqual([true, true, true]);
  expect(runs.map((r) => r.resumed)).toEqual([false, true, true]);
});

test("without a session cache every connection is a full handshake", async () => {
  const o = options(broker(good), false);
  const runs = [await visit(o), await visit(o)];
  expect(runs.map((r) => r.resumed)).toEqual([false, false]);
});

test("a refused certificate is refused on every connection", async () => {
  // Names another host: the judgement refuses it (the name rule), every time.
  const other = pki.leaf(["broker-elsewhere.test"]);
  const o = options(broker(other), true);
  const runs = [await visit(o), await visit(o)];
  expect(runs.map((r) => r.ok)).toEqual([false, false]);
});
