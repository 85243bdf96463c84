// Claim: on a front-door listener with proxyProtocolFrom, a listed peer's PROXY header (v1 or v2, sent in the
// same segment as the ClientHello or apart) makes its source the client address the application sees, over TLS
// and plain HTTP; a LOCAL header (the balancer's health check) keeps the balancer's own address; a listed peer
// without a header, and any header from a peer not listed, is refused before a single HTTP byte is answered,
// while direct TLS clients from unlisted peers are still served.
import { afterAll, describe, expect, test } from "bun:test";
import { compileTrustedProxies } from "../../src/net/client-address.ts";
import { createConnectionGuard } from "../../src/net/connection-guard.ts";
import { type Http1Server, startHttp1Server } from "../../src/net/http1.ts";
import { buildProxyV1, buildProxyV2 } from "../../src/net/proxy-protocol.ts";
import { proxiedRequest } from "../peers/proxy-client.ts";
import { rawConnect } from "../peers/raw-http.ts";
import { testPki } from "../peers/test-certs.ts";

const pki = testPki();
const leaf = pki.leaf(["localhost", "127.0.0.1"]);
const servers: Http1Server[] = [];
const refusals: string[] = [];
afterAll(() => {
  for (const s of servers) s.stop({ closeActive: true });
});

function serve(from: string[], tls: boolean): Http1Server {
  const s = startHttp1Server({
    hostname: "127.0.0.1",
    port: 0,
    ...(tls ? { tls: { cert: leaf.cert, key: leaf.key, ca: pki.ca.cert } } : {}),
    proxyProtocolFrom: compileTrustedProxies(from),
    onRefused: (reason) => refusals.push(reason),
    fetch: (_req, info) =>
      new Response(`ip=${info.remoteAddress} port=${info.remotePort} via=${info.proxiedBy ?? "-"}\n`),
  });
  servers.push(s);
  return s;
}

const src = { address: "198.18.7.9", port: 50123 };
const dst = { address: "198.18.0.1", port: 443 };
const tlsOpts = { ca: pki.ca.cert };

describe("PROXY protocol from a listed balancer", () => {
  const tlsServer = serve(["127.0.0.1"], true);
  const plainServer = serve(["127.0.0.0/8"], false);

  for (const [name, header] of [
    ["v1", buildProxyV1(src, dst)],
    ["v2", buildProxyV2(src, dst)],
  ] as const) {
    for (const coalesce of [true, false]) {
      test(`${name} ${coalesce ? "in the ClientHello's segment" : "apart"}: TLS, the header's source is the client`, async () => {
        const r = await proxiedRequest({ port: tlsServer.port, header, tls: tlsOpts, coalesce });
        expect(r.text).toContain("HTTP/1.1 200 OK");
        expect(r.text).toContain("ip=198.18.7.9 port=50123 via=127.0.0.1");
      });
    }
    test(`${name} on the plain health/redirect listener`, async () => {
      const r = await proxiedRequest({ port: plainServer.port, header });
      expect(r.text).toContain("ip=198.18.7.9 port=50123 via=127.0.0.1");
    });
  }

  test("v2 over IPv6 names an IPv6 client; a v2 TLV is skipped", async () => {
    const header = buildProxyV2(
      { address: "2001:db8::7", port: 40000 },
      { address: "2001:db8::1", port: 443 },
      Buffer.from([0x04, 0x00, 0x03, 0x61, 0x62, 0x63]), // PP2_TYPE_NOOP-like unknown TLV
    );
    const r = await proxiedRequest({ port: tlsServer.port, header, tls: tlsOpts });
    expect(r.text).toContain("ip=2001:db8::7 port=40000");
  });

  test("v2 LOCAL (HAProxy's health checks) and v1 UNKNOWN keep the balancer's address", async () => {
    const local = await proxiedRequest({ port: tlsServer.port, header: buildProxyV2(), tls: tlsOpts });
    expect(local.text).toContain("ip=127.0.0.1");
    expect(local.text).toContain("via=-");
    const unknown = await proxiedRequest({
      port: plainServer.port,
      header: Buffer.from("PROXY UNKNOWN\r\n"),
    });
    expect(unknown.text).toContain("ip=127.0.0.1");
  });

  test("a listed peer without a header, or with a broken one, is refused without an answer", async () => {
    const before = refusals.length;
    const noHeader = await proxiedRequest({ port: tlsServer.port, header: new Uint8Array(0), tls: tlsOpts });
    expect(noHeader.closedWithoutAnswer).toBe(true);
    const plainNoHeader = await proxiedRequest({ port: plainServer.port, header: new Uint8Array(0) });
    expect(plainNoHeader.closedWithoutAnswer).toBe(true);
    const broken = await proxiedRequest({
      port: plainServer.port,
      header: Buffer.from("PROXY TCP4 198.18.7.9 300.1.1.1 1 2\r\n"),
    });
    expect(broken.closedWithoutAnswer).toBe(true);
    expect(refusals.length).toBe(before + 3);
    expect(refusals.slice(before).join("\n")).toContain("did not start with a PROXY protocol header");
  });
});

describe("per-IP connection cap behind a PROXY balancer", () => {
  test("counts the client the header names, not the balancer: one client capped, another served, slot given back", async () => {
    const guard = createConnectionGuard({ maxPerIp: () => 1, exempt: (ip) => ip === "127.0.0.1" });
    const s = startHttp1Server({
      hostname: "127.0.0.1",
      port: 0,
      tls: { cert: leaf.cert, key: leaf.key, ca: pki.ca.cert },
      proxyProtocolFrom: compileTrustedProxies(["127.0.0.1"]),
      guard,
      fetch: (_req, info) => new Response(`ip=${info.remoteAddress}\n`),
    });
    servers.push(s);
    const a = { address: "198.18.9.1", port: 40001 };
    const b = { address: "198.18.9.2", port: 40002 };
    const keepAlive = "GET /pcoip-broker/xml HTTP/1.1\r\nHost: cm\r\n\r\n";
    const held = proxiedRequest({
      port: s.port,
      header: buildProxyV2(a, dst),
      tls: tlsOpts,
      request: keepAlive,
      timeoutMs: 1500,
    });
    const end = Date.now() + 3000;
    while (guard.count("198.18.9.1") === 0 && Date.now() < end) await Bun.sleep(10);
    expect(guard.count("198.18.9.1")).toBe(1);
    expect(guard.count("127.0.0.1")).toBe(0);
    const second = await proxiedRequest({ port: s.port, header: buildProxyV2(a, dst), tls: tlsOpts });
    expect(second.closedWithoutAnswer).toBe(true);
    expect(guard.refusals.per_ip).toBe(1);
    const other = await proxiedRequest({ port: s.port, header: buildProxyV2(b, dst), tls: tlsOpts });
    expect(other.text).toContain("ip=198.18.9.2");
    expect((await held).text).toContain("ip=198.18.9.1");
    while (guard.count("198.18.9.1") > 0 && Date.now() < end + 2000) await Bun.sleep(10);
    const again = await proxiedRequest({ port: s.port, header: buildProxyV2(a, dst), tls: tlsOpts });
    expect(again.text).toContain("ip=198.18.9.1");
  });
});

describe("certificate rotation on a PROXY listener", () => {
  test("reloadTls: new connections get the new certificate, behind a header as before", async () => {
    const s = serve(["127.0.0.1"], true);
    const header = buildProxyV2(src, dst);
    const before = await proxiedRequest({ port: s.port, header, tls: tlsOpts });
    const next = pki.leaf(["localhost", "127.0.0.1", "rotated.test"]);
    s.reloadTls({ cert: next.cert, key: next.key, ca: pki.ca.cert });
    const after = await proxiedRequest({ port: s.port, header, tls: tlsOpts });
    expect(after.text).toContain("ip=198.18.7.9");
    expect(before.fingerprint).toBeDefined();
    expect(after.fingerprint).toBeDefined();
    expect(after.fingerprint).not.toBe(before.fingerprint);
  });
});

describe("PROXY protocol from a peer that is not listed", () => {
  const tlsServer = serve(["198.18.0.0/15"], true);
  const plainServer = serve(["198.18.0.0/15"], false);

  test("its header is refused (v1 and v2, TLS and plain), never believed", async () => {
    const before = refusals.length;
    for (const header of [buildProxyV1(src, dst), buildProxyV2(src, dst)]) {
      const t = await proxiedRequest({ port: tlsServer.port, header, tls: tlsOpts });
      expect(t.text).not.toContain("198.18.7.9");
      expect(t.closedWithoutAnswer).toBe(true);
      const p = await proxiedRequest({ port: plainServer.port, header });
      expect(p.closedWithoutAnswer).toBe(true);
    }
    expect(refusals.length).toBe(before + 4);
    expect(refusals.at(-1)).toContain("not in proxyProtocolFrom");
  });

  test("a direct TLS client is served with its own address (keep-alive, two requests)", async () => {
    const c = await rawConnect({ port: tlsServer.port, ca: pki.ca.cert });
    c.send("GET /a HTTP/1.1\r\nHost: cm\r\n\r\n");
    await c.waitFor((t) => t.includes("ip=127.0.0.1"));
    c.send("GET /b HTTP/1.1\r\nHost: cm\r\nConnection: close\r\n\r\n");
    await c.waitFor((t) => (t.match(/ip=127\.0\.0\.1/g) ?? []).length === 2);
    expect(await c.closed()).toBe(true);
  });

  test("a direct plain request (POST, which starts with P) is served", async () => {
    const r = await proxiedRequest({
      port: plainServer.port,
      header: new Uint8Array(0),
      request: "POST /x HTTP/1.1\r\nHost: cm\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    });
    expect(r.text).toContain("ip=127.0.0.1");
  });
});
