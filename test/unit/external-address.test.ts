// Claim: the Security Gateway address handed to a client matches the client's address family (an IPv4-mapped
// IPv6 client is an IPv4 client); when there is none of that family the other one is handed out (dual-stack
// clients can still reach it, as documented on externalAddressFor); with no external address there is none.
import { describe, expect, test } from "bun:test";
import { externalAddressFor } from "../../src/platform/appliance.ts";

const BOTH = ["203.0.113.10", "2001:db8::10"];
const BOTH_V6_FIRST = ["2001:db8::10", "203.0.113.10"];

describe("externalAddressFor", () => {
  const rows: [string, readonly string[], string, string | undefined][] = [
    ["IPv6 loopback client gets the IPv6 address", BOTH, "::1", "2001:db8::10"],
    ["IPv4 client gets the IPv4 address", BOTH, "127.0.0.1", "203.0.113.10"],
    ["IPv4-mapped IPv6 client counts as IPv4", BOTH, "::ffff:10.0.0.1", "203.0.113.10"],
    ["IPv4-mapped in hex form counts as IPv4", BOTH, "::ffff:7f00:1", "203.0.113.10"],
    ["order of the list does not matter (IPv4 client)", BOTH_V6_FIRST, "198.51.100.4", "203.0.113.10"],
    ["order of the list does not matter (IPv6 client)", BOTH_V6_FIRST, "2001:db8:1::5", "2001:db8::10"],
    ["only IPv4 configured, IPv6 client: the IPv4 one", ["203.0.113.10"], "::1", "203.0.113.10"],
    ["only IPv6 configured, IPv4 client: the IPv6 one", ["2001:db8::10"], "10.0.0.1", "2001:db8::10"],
    ["nothing configured: none", [], "::1", undefined],
    ["nothing configured, IPv4 client: none", [], "10.0.0.1", undefined],
  ];
  for (const [name, external, client, want] of rows) {
    test(name, () => {
      const r = externalAddressFor(external, client, 4172);
      if (want === undefined) expect(r).toBeUndefined();
      else expect(r).toEqual({ ip: want, port: 4172 });
    });
  }

  test("the port given is the port handed out", () => {
    expect(externalAddressFor(BOTH, "::1", 14172)).toEqual({ ip: "2001:db8::10", port: 14172 });
  });
});
