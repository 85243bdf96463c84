// Claim: the plain-HTTP listener answers the load balancer's `GET /pcoip-broker/xml` in the clear (200 when
// ready, 503 when not), and redirects everything else to the same host, path and query over HTTPS, naming the
// HTTPS port unless it is 443; the port the request came in on is never carried over.
import { describe, expect, test } from "bun:test";
import { createRedirectApp } from "../../src/cm/redirect.ts";

const app = (httpsPort: number, ready = () => true) => createRedirectApp({ httpsPort, ready });

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
    const b = await app(443).request("http://[2001:db8::1]:80/a/b?c=d&e");
    expect(b.status).toBe(301);
    expect(b.headers.get("location")).toBe("https://[2001:db8::1]/a/b?c=d&e");
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
