// Claim: the outbound proxy is read from HTTPS_PROXY (+ _USERNAME/_PASSWORD, any case, ip:port without a scheme,
// credentials in the URL) and NO_PROXY exactly as administrators write them; mistakes are values naming the fix.
import { describe, expect, test } from "bun:test";
import { describeProxy, parseNoProxy, proxyFor, proxyFromEnv } from "../../src/net/proxy-env.ts";

function proxy(env: Record<string, string>) {
  const r = proxyFromEnv(env);
  if (!r.ok) throw new Error(`unexpected error: ${r.error.cause}`);
  return r.proxy;
}

describe("proxyFromEnv", () => {
  test("no or empty HTTPS_PROXY means no proxy", () => {
    expect(proxy({})).toBeUndefined();
    expect(proxy({ HTTPS_PROXY: "  " })).toBeUndefined();
    // HTTP_PROXY is for plain HTTP: the broker is always HTTPS.
    expect(proxy({ HTTP_PROXY: "10.0.0.8:3128" })).toBeUndefined();
  });

  test.each([
    ["10.0.0.8:3128", "10.0.0.8", 3128],
    ["proxy.corp.example:8080", "proxy.corp.example", 8080],
    ["http://proxy.corp.example:8080", "proxy.corp.example", 8080],
    ["http://proxy.corp.example:8080/", "proxy.corp.example", 8080],
    ["http://proxy.corp.example", "proxy.corp.example", 80],
    ["[fd00::8]:3128", "fd00::8", 3128],
    ["http://[fd00::8]:3128", "fd00::8", 3128],
  ])("HTTPS_PROXY=%s → %s port %d", (value, host, port) => {
    const p = proxy({ HTTPS_PROXY: value });
    expect(p?.host).toBe(host);
    expect(p?.port).toBe(port);
    expect(p?.username).toBeUndefined();
  });

  test("names are not case sensitive; the exact upper-case spelling wins when both exist", () => {
    expect(proxy({ https_proxy: "10.0.0.8:3128" })?.source).toBe("https_proxy");
    const both = proxy({
      https_proxy: "10.0.0.9:1",
      HTTPS_PROXY: "10.0.0.8:3128",
      Https_Proxy_Username: "cm",
    });
    expect(both?.host).toBe("10.0.0.8");
    expect(both?.username).toBe("cm");
    expect(both?.password).toBe("");
  });

  test("credentials come from the URL (percent-decoded) or from the two variables, which win", () => {
    const url = proxy({ HTTPS_PROXY: "http://cm%40corp:p%3Ass%20w@10.0.0.8:3128" });
    expect(url?.username).toBe("cm@corp");
    expect(url?.password).toBe("p:ss w");
    const vars = proxy({
      HTTPS_PROXY: "http://old:old@10.0.0.8:3128",
      HTTPS_PROXY_USERNAME: "cm",
      HTTPS_PROXY_PASSWORD: "n3w:pass",
    });
    expect(vars?.username).toBe("cm");
    expect(vars?.password).toBe("n3w:pass");
    const passOnly = proxy({ HTTPS_PROXY: "http://cm:old@10.0.0.8:3128", https_proxy_password: "new" });
    expect(passOnly?.username).toBe("cm");
    expect(passOnly?.password).toBe("new");
  });

  test.each([
    [{ HTTPS_PROXY: "socks5://10.0.0.8:1080" }, "not supported"],
    [{ HTTPS_PROXY: "https://10.0.0.8:3128" }, "not supported"],
    [{ HTTPS_PROXY: "10.0.0.8" }, "no port"],
    [{ HTTPS_PROXY: "http://10.0.0.8:3128/path" }, "path"],
    [{ HTTPS_PROXY: "http://10.0.0.8:99999" }, "not a proxy address"],
    [{ HTTPS_PROXY: "10.0.0.8:3128", HTTPS_PROXY_PASSWORD: "x" }, "no user name"],
    [{ HTTPS_PROXY: "10.0.0.8:3128", HTTPS_PROXY_USERNAME: "a:b" }, "contains ':'"],
  ])("%j is refused (%s), with a fix", (env, words) => {
    const r = proxyFromEnv(env);
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(`${r.error.cause}`).toContain(words);
    expect(r.error.fix.length).toBeGreaterThan(10);
  });

  test("a refused URL with credentials does not repeat the password", () => {
    const r = proxyFromEnv({ HTTPS_PROXY: "http://cm:hunter2@[bad" });
    expect(r.ok).toBe(false);
    expect(JSON.stringify(r)).not.toContain("hunter2");
  });

  test("describeProxy never shows the password", () => {
    const p = proxy({
      HTTPS_PROXY: "10.0.0.8:3128",
      HTTPS_PROXY_USERNAME: "cm",
      HTTPS_PROXY_PASSWORD: "hunter2",
    })!;
    expect(describeProxy(p)).toBe('http://10.0.0.8:3128 (basic auth as "cm") from HTTPS_PROXY');
    expect(describeProxy(p)).not.toContain("hunter2");
  });
});

describe("NO_PROXY", () => {
  const withNoProxy = (value: string) => proxy({ HTTPS_PROXY: "10.0.0.8:3128", no_proxy: value })!;

  test.each([
    ["broker.corp.example", "broker.corp.example", 443, true],
    ["broker.corp.example", "BROKER.corp.example.", 443, true],
    ["corp.example", "broker.corp.example", 443, true],
    [".corp.example", "broker.corp.example", 443, true],
    ["*.corp.example", "broker.corp.example", 443, true],
    ["corp.example", "evilcorp.example", 443, false],
    ["10.1.2.3", "10.1.2.3", 443, true],
    ["10.1.0.0/16", "10.1.2.3", 443, true],
    ["10.1.0.0/16", "10.2.2.3", 443, false],
    ["fd00::/8", "fd12::1", 443, true],
    ["[fd00::1]:8443", "fd00::1", 8443, true],
    ["[fd00::1]:8443", "fd00::1", 443, false],
    ["broker.corp.example:8443", "broker.corp.example", 443, false],
    ["broker.corp.example:8443", "broker.corp.example", 8443, true],
    ["*", "anything.example", 443, true],
    ["localhost, 127.0.0.1 other.example", "other.example", 443, true],
  ])("NO_PROXY=%s exempts %s:%d → %p", (value, host, port, exempt) => {
    expect(proxyFor(withNoProxy(value), host, port) === undefined).toBe(exempt);
  });

  test("malformed entries are skipped, not fatal", () => {
    expect(parseNoProxy("10.0.0.0/99, ,broker")).toEqual([{ host: "broker" }]);
  });
});
