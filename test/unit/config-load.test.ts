// Claim: configuration merges built-in defaults < TOML file < PCOIP_CMSG_* environment < flags (each layer proven by
// a value that differs from the one below it), coerces environment text by the key's type, returns a frozen object,
// and derives the effective listener lists for enableIpv6 after parsing.
import { describe, expect, test } from "bun:test";
import { describeKeys, envVarName, keyPaths, loadConfig } from "../../src/config/load.ts";
import {
  effectiveConfig,
  effectiveListeners,
  isLoopbackHost,
  parseAgentAddress,
  parseListen,
  parsePortRange,
} from "../../src/config/schema.ts";

function ok(r: ReturnType<typeof loadConfig>) {
  if (!r.ok) throw new Error(`expected a valid config, got:\n${r.errors.join("\n")}`);
  return r;
}

describe("precedence", () => {
  test("default < file < env < flag, each proven by a value that differs", () => {
    const text = "[sg]\nmaxSessions = 100\nmaxSessionsPerClientIp = 7\npendingTtlSeconds = 60\n";
    const r = ok(
      loadConfig({
        file: "f.toml",
        text,
        env: { PCOIP_CMSG_SG_MAXSESSIONS: "200", PCOIP_CMSG_SG_PENDINGTTLSECONDS: "70" },
        flags: [{ path: "sg.pendingTtlSeconds", value: 80, flag: "--pending-ttl" }],
        strict: true,
      }),
    );
    expect(r.config.sg.udpIdleSeconds).toBe(120); // default (nothing sets it)
    expect(r.config.sg.maxSessionsPerClientIp).toBe(7); // file over default 0
    expect(r.config.sg.maxSessions).toBe(200); // env over file 100 over default 5000
    expect(r.config.sg.pendingTtlSeconds).toBe(80); // flag over env 70 over file 60 over default 90
  });

  test("an override replaces a list rather than appending to it", () => {
    const r = ok(
      loadConfig({
        text: '[cm]\nlisten = ["127.0.0.1:1", "127.0.0.1:2"]\n',
        flags: [{ path: "cm.listen", value: ["127.0.0.1:3"], flag: "--listen" }],
        strict: true,
      }),
    );
    expect(r.config.cm.listen).toEqual(["127.0.0.1:3"]);
  });

  test("the result is deep-frozen", () => {
    const r = ok(loadConfig({ text: '[[desktops]]\nid = "a"\nagent = "h"\nusers = ["*"]\n', strict: true }));
    expect(Object.isFrozen(r.config)).toBe(true);
    expect(Object.isFrozen(r.config.cm.throttle)).toBe(true);
    expect(Object.isFrozen(r.config.desktops[0]!.users)).toBe(true);
    expect(() => (r.config.sg as { maxSessions: number }).maxSessions++).toThrow();
  });

  test("defaults alone are valid and match SPEC §6", () => {
    const { config } = ok(loadConfig({ strict: true }));
    expect(config.logLevel).toBe("info");
    expect(config.enableSecurityGateway).toBe(true);
    expect(config.enableIpv6).toBe(false);
    expect(config.brokerUrl).toBe("");
    expect(config.usersFile).toBe("/etc/pcoip-cmsg/users");
    expect(config.dataDir).toBe("/var/lib/pcoip-cmsg");
    expect(config.drainSeconds).toBe(30);
    expect(config.tls.cert).toBe("/etc/pcoip-cmsg/certs/cm.pem");
    expect(config.tls.brokerCertCheck).toBe(true);
    expect(config.tls.agentCertCheck).toBe(false);
    expect(config.tls.minVersion).toBe("TLSv1.2");
    expect(config.tls.ciphers).toEqual([
      "ECDHE-RSA-AES256-GCM-SHA384",
      "ECDHE-RSA-AES128-GCM-SHA256",
      "AES256-GCM-SHA384",
      "AES128-GCM-SHA256",
    ]);
    expect(config.cm.listen).toEqual(["0.0.0.0:443"]);
    expect(config.cm.redirectListen).toEqual(["0.0.0.0:80"]);
    expect(config.cm.bodyLimitBytes).toBe(65536);
    expect(config.cm.preSessionIdleSeconds).toBe(900);
    expect(config.ldap.bindDn).toBe("{user}@{domain}");
    expect(config.ldap.groupAttribute).toBe("memberOf");
    expect(config.ldap.allowInsecure).toBe(false);
    expect(config.upstream.dialect).toBe("pcoip-client");
    expect(config.sg.tcpListen).toEqual(["0.0.0.0:4172"]);
    expect(config.sg.udpListen).toEqual(["0.0.0.0:4172"]);
    expect(config.sg.udpSourcePorts).toBe("55000-59999");
    expect(config.sg.maxSessions).toBe(5000);
    expect(config.sg.pendingTtlSeconds).toBe(90);
    expect(config.admin.listen).toBe("127.0.0.1:8099");
    expect(config.desktops).toEqual([]);
  });
});

describe("environment", () => {
  test("values are coerced by the key's type: integers, booleans, lists, nested sections, string-or-list", () => {
    const { config } = ok(
      loadConfig({
        env: {
          PCOIP_CMSG_LOGLEVEL: "debug",
          PCOIP_CMSG_ENABLESECURITYGATEWAY: "false",
          PCOIP_CMSG_ENABLEIPV6: "yes",
          PCOIP_CMSG_EXTERNALPCOIPIP: "198.51.100.1, 2001:db8::1",
          PCOIP_CMSG_CM_REDIRECTLISTEN: "",
          PCOIP_CMSG_CM_THROTTLE_MAXDELAYSECONDS: "3",
          PCOIP_CMSG_LDAP_URL: "ldaps://a:636,ldaps://b:636",
          PCOIP_CMSG_AUTH_ORDER: '["local","ldap"]',
          PATH: "/usr/bin", // not ours: ignored even in strict mode
        },
        strict: true,
      }),
    );
    expect(config.logLevel).toBe("debug");
    expect(config.enableSecurityGateway).toBe(false);
    expect(config.enableIpv6).toBe(true);
    expect(config.externalPcoipIp).toEqual(["198.51.100.1", "2001:db8::1"]);
    expect(config.cm.redirectListen).toEqual([]);
    expect(config.cm.throttle.maxDelaySeconds).toBe(3);
    expect(config.ldap.url).toEqual(["ldaps://a:636", "ldaps://b:636"]);
    expect(config.auth.order).toEqual(["local", "ldap"]);
  });

  test("a single LDAP URL stays a string", () => {
    const { config } = ok(loadConfig({ env: { PCOIP_CMSG_LDAP_URL: "ldaps://dc1:636" }, strict: true }));
    expect(config.ldap.url).toBe("ldaps://dc1:636");
  });

  test("every key outside [[desktops]] has a variable, named PCOIP_CMSG_<SECTION>_<KEY>", () => {
    expect(envVarName("sg.maxSessions")).toBe("PCOIP_CMSG_SG_MAXSESSIONS");
    expect(envVarName("logLevel")).toBe("PCOIP_CMSG_LOGLEVEL");
    expect(envVarName("cm.throttle.maxDelaySeconds")).toBe("PCOIP_CMSG_CM_THROTTLE_MAXDELAYSECONDS");
    for (const k of describeKeys()) {
      if (k.path.startsWith("desktops")) expect(k.envName).toBeUndefined();
      else expect(k.envName).toBe(envVarName(k.path));
    }
  });
});

describe("key catalogue", () => {
  test("lists the SPEC §6 keys (whose names are fixed) with kinds, defaults and limits", () => {
    const fixed = [
      "logLevel",
      "enableSecurityGateway",
      "enableCollaboration",
      "enableIpv6",
      "externalPcoipIp",
      "hostAddress",
      "brokerUrl",
      "licenseServerUrl",
      "domains",
      "trustedProxies",
      "usersFile",
      "tls.cert",
      "tls.key",
      "tls.caCert",
      "tls.brokerCertCheck",
      "tls.agentCertCheck",
      "cm.listen",
      "cm.redirectListen",
      "ldap.url",
      "ldap.bindDn",
      "ldap.allowInsecure",
      "ldap.groupAttribute",
      "upstream.dialect",
      "sg.tcpListen",
      "sg.udpListen",
      "sg.udpSourcePorts",
      "sg.maxSessions",
      "admin.listen",
      "desktops",
      "desktops.*.id",
      "desktops.*.name",
      "desktops.*.agent",
      "desktops.*.users",
      "desktops.*.groups",
    ];
    const paths = keyPaths();
    for (const k of fixed) expect(paths).toContain(k);
    const max = describeKeys().find((k) => k.path === "sg.maxSessions")!;
    expect(max).toMatchObject({ kind: "integer", min: 1, max: 1000000, defaultValue: 5000 });
    expect(max.description).not.toBe("");
    expect(describeKeys().find((k) => k.path === "logLevel")!.allowed).toEqual([
      "debug",
      "info",
      "warn",
      "error",
    ]);
    expect(describeKeys().find((k) => k.path === "desktops.*.agent")!.defaultValue).toBeUndefined();
    for (const k of describeKeys()) expect(k.description, k.path).not.toBe("");
  });
});

describe("advice: valid, but probably not meant", () => {
  test("warns, naming the source line, without refusing", () => {
    const r = ok(
      loadConfig({
        file: "f.toml",
        text: '[sg]\nmaxSessions = 9000\n\n[[desktops]]\nid = "x"\nagent = "h"\n',
        strict: true,
      }),
    );
    expect(r.warnings).toEqual([
      "f.toml: externalPcoipIp: is empty while enableSecurityGateway = true: clients need the gateway's public " +
        "address; set it, or enableSecurityGateway = false for LAN mode",
      "f.toml:2: sg.maxSessions: 9000 sessions exceed the 5000 ports of sg.udpSourcePorts (one per session): widen the range",
      'f.toml:4: desktops[0]: desktop "x" lists no users and no groups, so nobody is entitled to it (users = ["*"] = everyone)',
    ]);
  });
});

describe("value formats", () => {
  test("listen addresses (rows: input → parsed or refused)", () => {
    const rows: [string, ReturnType<typeof parseListen>][] = [
      ["0.0.0.0:443", { hostname: "0.0.0.0", port: 443 }],
      ["[::]:443", { hostname: "::", port: 443 }],
      ["[::1]:8099", { hostname: "::1", port: 8099 }],
      ["127.0.0.1:0", { hostname: "127.0.0.1", port: 0 }],
      ["localhost:8443", { hostname: "localhost", port: 8443 }],
      [":80", { hostname: "0.0.0.0", port: 80 }],
      ["0.0.0.0", undefined],
      ["::1:443", undefined],
      ["[127.0.0.1]:443", undefined],
      ["1.2.3.4:65536", undefined],
      ["10.0.0.300:443", undefined],
      [" 0.0.0.0:443", undefined],
      ["host name:443", undefined],
    ];
    for (const [input, want] of rows) expect(parseListen(input), input).toEqual(want);
  });

  test("agent addresses default to port 60443", () => {
    expect(parseAgentAddress("10.20.3.14")).toEqual({ host: "10.20.3.14", port: 60443 });
    expect(parseAgentAddress("ws-3.corp.example:60444")).toEqual({ host: "ws-3.corp.example", port: 60444 });
    expect(parseAgentAddress("[fd00::3]:60443")).toEqual({ host: "fd00::3", port: 60443 });
    expect(parseAgentAddress("fd00::3")).toEqual({ host: "fd00::3", port: 60443 });
    expect(parseAgentAddress("h:0")).toBeUndefined();
    expect(parseAgentAddress("h:x")).toBeUndefined();
    expect(parseAgentAddress("")).toBeUndefined();
  });

  test("port ranges and loopback hosts", () => {
    expect(parsePortRange("55000-59999")).toEqual({ from: 55000, to: 59999 });
    expect(() => parsePortRange("59999-55000")).toThrow(TypeError);
    for (const h of ["127.0.0.1", "127.8.9.10", "::1", "localhost", "::ffff:127.0.0.1"])
      expect(isLoopbackHost(h), h).toBe(true);
    for (const h of ["0.0.0.0", "::", "10.0.0.1", "128.0.0.1"]) expect(isLoopbackHost(h), h).toBe(false);
  });
});

describe("effective config", () => {
  test("enableIpv6 adds [::]:port beside each 0.0.0.0:port, once; explicit addresses stay as written", () => {
    expect(effectiveListeners(["0.0.0.0:443"], false)).toEqual(["0.0.0.0:443"]);
    expect(effectiveListeners(["0.0.0.0:443", "127.0.0.1:8443"], true)).toEqual([
      "0.0.0.0:443",
      "127.0.0.1:8443",
      "[::]:443",
    ]);
    expect(effectiveListeners(["0.0.0.0:443", "[::]:443"], true)).toEqual(["0.0.0.0:443", "[::]:443"]);

    const { config } = ok(loadConfig({ text: "enableIpv6 = true\n", strict: true }));
    expect(config.cm.listen).toEqual(["0.0.0.0:443"]); // parsing leaves the file's lists alone
    const eff = effectiveConfig(config);
    expect(eff.cm.listen).toEqual(["0.0.0.0:443", "[::]:443"]);
    expect(eff.cm.redirectListen).toEqual(["0.0.0.0:80", "[::]:80"]);
    expect(eff.sg.tcpListen).toEqual(["0.0.0.0:4172", "[::]:4172"]);
    expect(eff.sg.udpListen).toEqual(["0.0.0.0:4172", "[::]:4172"]);
    expect(eff.admin.listen).toBe("127.0.0.1:8099");
    expect(Object.isFrozen(eff.sg)).toBe(true);
  });
});

describe("warnings come in two kinds", () => {
  test("ignored unknown keys (lenient) and advice are kept apart, and both are in warnings", () => {
    const r = ok(
      loadConfig({ file: "f.toml", text: "[sg]\nfutureKey = 1\nmaxSessions = 9000\n", strict: false }),
    );
    expect(r.ok && r.ignored).toEqual(['f.toml:2: unknown key "sg.futureKey"; ignored']);
    expect(r.ok && r.advice.some((a) => a.startsWith("f.toml:3: sg.maxSessions: 9000 sessions"))).toBe(true);
    expect(r.warnings).toEqual(r.ok ? [...r.ignored, ...r.advice] : []);
  });
});
