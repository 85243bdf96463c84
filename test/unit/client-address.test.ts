import { expect, test } from "bun:test";
import { canonicalIp, clientAddress, compileTrustedProxies } from "../../src/net/client-address.ts";

test("canonical IPs, trusted proxies and X-Forwarded-For hops", () => {
  expect(canonicalIp("::ffff:10.1.2.3")).toBe("10.1.2.3");
  expect(canonicalIp("::FFFF:a01:203")).toBe("10.1.2.3");
  expect(canonicalIp("[::1]")).toBe("::1");
  expect(canonicalIp("2001:DB8:0:0:0:0:0:1")).toBe("2001:db8::1");
  expect(canonicalIp("fe80::1%eth0")).toBe("fe80::1");
  const t = compileTrustedProxies(["10.0.0.0/8", "fd00::/8", "127.0.0.1"]);
  expect(t.has("10.9.9.9")).toBe(true);
  expect(t.has("::ffff:10.9.9.9")).toBe(true);
  expect(t.has("11.0.0.1")).toBe(false);
  expect(t.has("fd12::1")).toBe(true);
  expect(clientAddress("::ffff:10.0.0.5", "198.51.100.7, 10.0.0.6", t)).toBe("198.51.100.7");
  expect(clientAddress("192.0.2.1", "198.51.100.7", t)).toBe("192.0.2.1");
  expect(clientAddress("10.0.0.5", "6.6.6.6, 198.51.100.7", t)).toBe("198.51.100.7");
  expect(clientAddress("10.0.0.5", "garbage", t)).toBe("10.0.0.5");
});
