// Claim: the plain-HTTP listener answers the load balancer's `GET /pcoip-broker/xml` in the clear (200 when
// ready, 503 when not), and redirects everything else to this node's configured name (first hostAddress, else the
// HTTPS listener's address, else the local address of the connection) with the same path and query over HTTPS,
// naming the HTTPS port unless it is 443; the request's Host and port are never carried over.
import { describe, expect, test } from "bun:test";
import { createRedirectApp } from "../../src/cm/redirect.ts";

const app = (httpsPort: number, ready = () => true) =>
  createRedirectApp({ httpsPort, ready, hostAddress: ["cm.example.net"] });

describe("redirect listener", () => {
  test("GET elsewhere → 301 to https with the HTTPS port, path and query kept", async () => {
    const r = await app(8443).request("http://cm.example.net/x?y=1");
    expect(r.status).toBe(301);
    expect(r.headers.get("location")).toBe("https://cm.example.net:8443/x?y=1");
  });

  test("HTTPS port 443 is left out of the Location", async () => {
    const r = await app(443).request("http://cm.example.net/x?y=1");
    expect(r.status).toBe(301);
    expect(r.headers.get("location")).toBe("https://cm.example.net/x?y=1");
  });

  test("the incoming port is dropped; IPv6 literals stay bracketed; the root path is kept", async () => {
    const a = await app(8443).request("http://cm.example.net:8080/");
    expect(a.headers.get("location")).toBe("https://cm.example.net:8443/");
    const v6 = createRedirectApp({ httpsPort: 443, ready: () => true, hostAddress: ["2001:db8::1"] });
    const b = await v6.request("http://[2001:db8::1]:80/a/b?c=d&e");
    expect(b.status).toBe(301);
    expect(b.headers.get("location")).toBe("https://[2001:db8::1]/a/b?c=d&e");
  });

  test("a foreign Host never reaches the Location: hostAddress, else the listener's address, else the local one", async () => {
    const evil = "http://evil.example/login?next=1";
    expect((await app(443).request(evil)).headers.get("location")).toBe(
      "https://cm.example.net/login?next=1",
    );
    const listener = createRedirectApp({ httpsPort: 8443, ready: () => true, httpsHost: "192.0.2.7" });
    expect((await listener.request(evil)).headers.get("location")).toBe(
      "https://192.0.2.7:8443/login?next=1",
    );
    const wildcard = createRedirectApp({ httpsPort: 443, ready: () => true, httpsHost: "::" });
    const info = { remoteAddress: "198.51.100.9", remotePort: 1, localPort: 80, tls: false };
    const r = await wildcard.request(evil, {}, { ...info, localAddress: "::ffff:192.0.2.8" });
    expect(r.headers.get("location")).toBe("https://192.0.2.8/login?next=1");
  });

  test("GET /pcoip-broker/xml → 200 when ready, 503 when not (answered, not redirected)", async () => {
    let ready = true;
    const a = app(8443, () => ready);
    const ok = await a.request("http://cm.example.net/pcoip-broker/xml");
    expect(ok.status).toBe(200);
    expect(ok.headers.get("location")).toBeNull();
    expect(await ok.text()).toBe("OK\n");
    ready = false;
    const down = await a.request("http://cm.example.net/pcoip-broker/xml");
    expect(down.status).toBe(503);
    expect(down.headers.get("location")).toBeNull();
    expect(await down.text()).toContain("not ready");
    ready = true;
    expect((await a.request("http://cm.example.net/pcoip-broker/xml?probe=1")).status).toBe(200);
  });

  test("HEAD /pcoip-broker/xml is a health check too (no body)", async () => {
    const r = await app(8443).request("http://cm.example.net/pcoip-broker/xml", { method: "HEAD" });
    expect(r.status).toBe(200);
    expect(await r.text()).toBe("");
  });

  test("POST (to the broker path or elsewhere) is redirected to HTTPS, never answered in the clear", async () => {
    for (const path of ["/pcoip-broker/xml", "/somewhere?q=1"]) {
      const r = await app(8443).request(`http://cm.example.net${path}`, {
        method: "POST",
        body: "<pcoip-client version='2.1'><hello/></pcoip-client>",
        headers: { "content-type": "text/xml" },
      });
      expect(r.status).toBe(301);
      expect(r.headers.get("location")).toBe(`https://cm.example.net:8443${path}`);
      // No XML answer (and so no broker conversation) over plain HTTP.
      expect(await r.text()).not.toContain("pcoip");
    }
  });
});
