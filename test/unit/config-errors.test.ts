// Claim: every refused configuration gets a message naming its source (FILE:LINE, the PCOIP_CMSG_* variable or the
// --flag), the key, the bad value and what is allowed; unknown keys are errors with a did-you-mean in strict mode and
// warnings in lenient mode; user errors are values, never throws.
import { describe, expect, test } from "bun:test";
import { loadConfig } from "../../src/config/load.ts";

function errorsOf(text: string, env: Record<string, string> = {}): readonly string[] {
  const r = loadConfig({ file: "test.toml", text, env, strict: true });
  return r.ok ? [] : r.errors;
}

describe("unknown keys", () => {
  test("strict: an error at FILE:LINE with the nearest key", () => {
    expect(errorsOf('logLevel = "info"\n[sg]\nmaxSesions = 5\n')).toEqual([
      'test.toml:3: unknown key "sg.maxSesions" (did you mean "sg.maxSessions"?)',
    ]);
    expect(errorsOf("enableSecurityGatway = true\n")).toEqual([
      'test.toml:1: unknown key "enableSecurityGatway" (did you mean "enableSecurityGateway"?)',
    ]);
    expect(errorsOf("loglevel = 'info'\n")).toEqual([
      'test.toml:1: unknown key "loglevel" (did you mean "logLevel"?)',
    ]);
  });

  test("a key in the wrong section points to the right one", () => {
    expect(errorsOf("[cm]\nmaxSessions = 5\n")).toEqual([
      'test.toml:2: unknown key "cm.maxSessions" (did you mean "sg.maxSessions"?)',
    ]);
    expect(errorsOf("maxSessions = 5\n")).toEqual([
      'test.toml:1: unknown key "maxSessions" (did you mean "sg.maxSessions"?)',
    ]);
  });

  test("unknown keys and sections: inside [[desktops]], a whole unknown table, nothing close", () => {
    expect(errorsOf('[[desktops]]\nid = "a"\nagent = "h"\nuser = ["x"]\ncolour = "x"\n')).toEqual([
      'test.toml:4: unknown key "desktops[0].user" (did you mean "desktops[0].users"?)',
      'test.toml:5: unknown key "desktops[0].colour"',
    ]);
    expect(errorsOf("[sgg]\nmaxSessions = 5\n")).toEqual([
      'test.toml:1: unknown key "sgg" (did you mean "sg"?)',
    ]);
  });

  test("lenient: the same keys are warnings, ignored, and the rest loads", () => {
    const r = loadConfig({
      file: "test.toml",
      text: "[sg]\nmaxSesions = 5\nmaxSessions = 6\n",
      env: { PCOIP_CMSG_SG_FUTUREKEY: "1" },
      strict: false,
    });
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(r.config.sg.maxSessions).toBe(6);
    expect(r.warnings).toContain(
      'test.toml:2: unknown key "sg.maxSesions" (did you mean "sg.maxSessions"?); ignored',
    );
    expect(r.warnings).toContain("PCOIP_CMSG_SG_FUTUREKEY: not a configuration variable; ignored");
  });

  test("an unknown PCOIP_CMSG_ variable gets a did-you-mean", () => {
    expect(errorsOf("", { PCOIP_CMSG_SG_MAXSESION: "3" })).toEqual([
      "PCOIP_CMSG_SG_MAXSESION: not a configuration variable (did you mean PCOIP_CMSG_SG_MAXSESSIONS?)",
    ]);
  });
});

describe("bad values (rows: file text → the one message)", () => {
  const rows: [what: string, text: string, message: string][] = [
    ["bad type", 'enableIpv6 = "yes"\n', 'test.toml:1: enableIpv6 = "yes": must be true or false'],
    ["string expected", "usersFile = 5\n", "test.toml:1: usersFile = 5: must be a string in quotes"],
    [
      "list expected",
      'domains = "corp.example"\n',
      'test.toml:1: domains = "corp.example": must be a list, e.g. ["a", "b"]',
    ],
    [
      "table expected",
      "sg = 5\n",
      "test.toml:1: sg = 5: must be a table: write [sg] and its keys on the lines below",
    ],
    [
      "out of range",
      "[sg]\nmaxSessions = -5\n",
      "test.toml:2: sg.maxSessions = -5: must be an integer from 1 to 1000000",
    ],
    [
      "not an integer",
      "[sg]\n\nmaxSessions = 1.5\n",
      "test.toml:3: sg.maxSessions = 1.5: must be an integer from 1 to 1000000",
    ],
    [
      "number as text",
      '[sg]\nmaxSessions = "5000"\n',
      'test.toml:2: sg.maxSessions = "5000": must be an integer from 1 to 1000000',
    ],
    [
      "dotted key",
      "sg.maxSessions = 0\n",
      "test.toml:1: sg.maxSessions = 0: must be an integer from 1 to 1000000",
    ],
    [
      "inline table",
      "[cm]\nthrottle = { maxDelaySeconds = 500 }\n",
      "test.toml:2: cm.throttle.maxDelaySeconds = 500: must be an integer from 0 to 120",
    ],
    [
      "nested section",
      "[cm.throttle]\nwindowSeconds = 0\n",
      "test.toml:2: cm.throttle.windowSeconds = 0: must be an integer from 1 to 86400",
    ],
    [
      "bad enum",
      'logLevel = "verbose"\n',
      'test.toml:1: logLevel = "verbose": must be one of "debug", "info", "warn", "error"',
    ],
    [
      "bad enum in section",
      '[upstream]\ndialect = "xml"\n',
      'test.toml:2: upstream.dialect = "xml": must be one of "pcoip-client", "pcoip-broker"',
    ],
    [
      "bad enum in a list",
      '[auth]\norder = ["ldap", "radius"]\n',
      'test.toml:2: auth.order[1] = "radius": must be one of "ldap", "local"',
    ],
    [
      "listen without port",
      '[cm]\nlisten = ["0.0.0.0"]\n',
      'test.toml:2: cm.listen[0] = "0.0.0.0": must be "host:port" or "[ipv6]:port" with port 0–65535, e.g. "0.0.0.0:443"',
    ],
    [
      "IPv6 listen without brackets",
      '[sg]\ntcpListen = ["::1:4172"]\n',
      'test.toml:2: sg.tcpListen[0] = "::1:4172": must be "host:port" or "[ipv6]:port" with port 0–65535, e.g. "0.0.0.0:443"',
    ],
    [
      "listen port too big",
      '[admin]\nlisten = "127.0.0.1:99999"\n',
      'test.toml:2: admin.listen = "127.0.0.1:99999": must be "host:port" or "[ipv6]:port" with port 0–65535, e.g. "0.0.0.0:443"',
    ],
    [
      "listener twice",
      '[cm]\nlisten = ["0.0.0.0:443", "0.0.0.0:443"]\n',
      'test.toml:2: cm.listen[1] = "0.0.0.0:443": listener "0.0.0.0:443" is listed twice',
    ],
    [
      "no HTTPS listener",
      "[cm]\nlisten = []\n",
      "test.toml:2: cm.listen = []: must name at least one listener",
    ],
    [
      "bad CIDR",
      'trustedProxies = ["10.0.0.0/33"]\n',
      'test.toml:1: trustedProxies = ["10.0.0.0/33"]: trusted proxy "10.0.0.0/33": prefix must be 0..32',
    ],
    [
      "reversed port range",
      '[sg]\nudpSourcePorts = "60000-50000"\n',
      'test.toml:2: sg.udpSourcePorts = "60000-50000": must be "FROM-TO" with 1024 ≤ FROM ≤ TO ≤ 65535, e.g. "55000-59999"',
    ],
    [
      "privileged port range",
      '[sg]\nudpSourcePorts = "80-90"\n',
      'test.toml:2: sg.udpSourcePorts = "80-90": must be "FROM-TO" with 1024 ≤ FROM ≤ TO ≤ 65535, e.g. "55000-59999"',
    ],
    [
      "port range not a range",
      '[sg]\nudpSourcePorts = "55000"\n',
      'test.toml:2: sg.udpSourcePorts = "55000": must be "FROM-TO" with 1024 ≤ FROM ≤ TO ≤ 65535, e.g. "55000-59999"',
    ],
    [
      "UDP listener inside the source range",
      '[sg]\nudpSourcePorts = "4000-5000"\n',
      'test.toml:1: sg.udpListen[0] = "0.0.0.0:4172": port 4172 lies inside sg.udpSourcePorts (4000-5000): move the listener or the range',
    ],
    [
      "two IPv4 external addresses",
      'externalPcoipIp = ["1.2.3.4", "5.6.7.8"]\n',
      'test.toml:1: externalPcoipIp = ["1.2.3.4","5.6.7.8"]: must hold at most one IPv4 and one IPv6 address',
    ],
    [
      "external address not a literal",
      'externalPcoipIp = ["sg.example.net"]\n',
      'test.toml:1: externalPcoipIp[0] = "sg.example.net": must be an IPv4 or IPv6 address literal',
    ],
    [
      "host address",
      'hostAddress = ["cm example"]\n',
      'test.toml:1: hostAddress[0] = "cm example": must be an IP address or a DNS name',
    ],
    [
      "broker over plain HTTP",
      'brokerUrl = "http://broker.example"\n',
      'test.toml:1: brokerUrl = "http://broker.example": must be "" (built-in broker) or https://host[:port]',
    ],
    [
      "license server",
      'licenseServerUrl = "license.example"\n',
      'test.toml:1: licenseServerUrl = "license.example": must be "", "port@host" or "http(s)://host:port/request"',
    ],
    [
      "LDAP URL",
      '[ldap]\nurl = ["ldaps://a", "http://b"]\n',
      'test.toml:2: ldap.url[1] = "http://b": must be "ldaps://host[:port]" or "ldap://host[:port]"',
    ],
    [
      "LDAP in clear",
      '[ldap]\nurl = "ldap://dc1"\nstartTls = false\n',
      "test.toml:1: ldap.allowInsecure = false: ldap:// with startTls = false sends passwords in clear: use ldaps://, keep startTls = true, or set allowInsecure = true for a lab",
    ],
    [
      "LDAP service account without password",
      '[ldap]\nserviceBindDn = "cn=svc"\n',
      'test.toml:1: ldap.serviceBindPasswordFile = "": must name the file holding the password of serviceBindDn: an empty password is an unauthenticated bind',
    ],
    [
      "half a group search",
      '[ldap]\ngroupSearchBase = "ou=groups"\n',
      'test.toml:1: ldap.groupSearchFilter = "": a group search needs both groupSearchBase and groupSearchFilter (e.g. "(member={dn})")',
    ],
    [
      "allocate shorter than the other calls",
      "[upstream]\ntimeoutSeconds = 60\n",
      "test.toml:1: upstream.allocateTimeoutSeconds = 30: must be at least upstream.timeoutSeconds (60): an allocation waits on the broker's own call to the agent",
    ],
    [
      "desktop agent missing",
      '[[desktops]]\nid = "a"\nagent = "h"\n\n[[desktops]]\nid = "b"\n',
      "test.toml:5: desktops[1].agent = (missing): is required",
    ],
    [
      "desktop agent port",
      '[[desktops]]\nid = "a"\nagent = "h:70000"\n',
      'test.toml:3: desktops[0].agent = "h:70000": must be "host", "host:port" or "[ipv6]:port" with port 1–65535',
    ],
    [
      "duplicate desktop",
      '[[desktops]]\nid = "a"\nagent = "h"\n[[desktops]]\nid = "a"\nagent = "h"\n',
      'test.toml:5: desktops[1].id = "a": duplicate desktop id "a": ids must be unique',
    ],
    [
      "secrets are not echoed",
      "[admin]\ntoken = 12345\n",
      "test.toml:2: admin.token = (hidden): must be a string in quotes",
    ],
  ];
  for (const [what, text, message] of rows) {
    test(what, () => {
      expect(errorsOf(text)).toEqual([message]);
    });
  }

  test("several problems are all reported, in one pass", () => {
    expect(errorsOf('logLevel = "loud"\n[sg]\nmaxSessions = 0\n')).toEqual([
      'test.toml:1: logLevel = "loud": must be one of "debug", "info", "warn", "error"',
      "test.toml:3: sg.maxSessions = 0: must be an integer from 1 to 1000000",
    ]);
  });
});

describe("admin token", () => {
  test("required when the admin listener is not on loopback", () => {
    expect(errorsOf('[admin]\nlisten = "0.0.0.0:8099"\ntokenFile = ""\n')).toEqual([
      'test.toml:3: admin.tokenFile = "": must be set when admin.listen (0.0.0.0:8099) is not a loopback address: ' +
        "/sessions lists users and client IPs, and drain stops the service; name a file holding a long random token",
    ]);
    expect(errorsOf('[admin]\nlisten = "0.0.0.0:8099"\n')).toEqual([]);
    expect(errorsOf('[admin]\nlisten = "0.0.0.0:8099"\ntoken = "s3cret-s3cret"\n')).toEqual([]);
    for (const loopback of ["127.0.0.1:8099", "[::1]:8099", "localhost:8099", ""])
      expect(errorsOf(`[admin]\nlisten = "${loopback}"\n`), loopback).toEqual([]);
  });
});

describe("TOML syntax errors name the file and the line", () => {
  const rows: [what: string, text: string, message: string][] = [
    [
      "missing value",
      "a = 1\nb = \n",
      "test.toml:2: not valid TOML: Missing value after '='; values must be on the same line",
    ],
    [
      "after a multi-line array",
      '[cm]\nlisten = [\n  "0.0.0.0:443",\n]\n\n[sg]\nmaxSessions = 5 5\n',
      "test.toml:7: not valid TOML: Expected a newline or end of file after a key/value pair",
    ],
    [
      "key given twice",
      'logLevel = "info"\n# comment\nlogLevel = "debug"\n',
      "test.toml:3: not valid TOML: Cannot redefine key 'logLevel'",
    ],
    [
      "array left open",
      '[cm]\nlisten = [\n  "0.0.0.0:443",\n]\n\n[sg]\ntcpListen = [\n  "0.0.0.0:4172",\n',
      "test.toml:7: not valid TOML: Unterminated array; expected ']'",
    ],
    ["unquoted string", "[sg]\nudpSourcePorts = 55000-59999\n", "test.toml:2: not valid TOML: "],
  ];
  for (const [what, text, message] of rows) {
    test(what, () => {
      const errors = errorsOf(text);
      expect(errors).toHaveLength(1);
      expect(errors[0]!.startsWith(message)).toBe(true);
    });
  }
});

describe("environment and flags", () => {
  test("a bad environment value names the variable, the key and what is allowed", () => {
    expect(
      errorsOf("[sg]\nmaxSessions = 100\n", {
        PCOIP_CMSG_SG_MAXSESSIONS: "lots",
        PCOIP_CMSG_ENABLEIPV6: "maybe",
      }),
    ).toEqual([
      'PCOIP_CMSG_ENABLEIPV6: enableIpv6 = "maybe": must be true or false',
      'PCOIP_CMSG_SG_MAXSESSIONS: sg.maxSessions = "lots": must be an integer from 1 to 1000000',
    ]);
    expect(errorsOf("", { PCOIP_CMSG_CM_LISTEN: "0.0.0.0:443,nope" })).toEqual([
      'PCOIP_CMSG_CM_LISTEN: cm.listen[1] = "nope": must be "host:port" or "[ipv6]:port" with port 0–65535, e.g. "0.0.0.0:443"',
    ]);
  });

  test("a rule broken by a variable names the variable", () => {
    expect(
      errorsOf("", { PCOIP_CMSG_ADMIN_LISTEN: "0.0.0.0:9", PCOIP_CMSG_ADMIN_TOKENFILE: "" })[0],
    ).toStartWith(
      'PCOIP_CMSG_ADMIN_TOKENFILE: admin.tokenFile = "": must be set when admin.listen (0.0.0.0:9)',
    );
  });

  test("a bad flag value names the flag", () => {
    const r = loadConfig({
      text: 'externalPcoipIp = ["203.0.113.1"]\n',
      flags: [{ path: "externalPcoipIp", value: ["not-an-ip"], flag: "--external-pcoip-ip" }],
      strict: true,
    });
    expect(r.ok ? [] : r.errors).toEqual([
      '--external-pcoip-ip: externalPcoipIp[0] = "not-an-ip": must be an IPv4 or IPv6 address literal',
    ]);
  });

  test("a flag naming no key is a bug in the caller, thrown", () => {
    expect(() =>
      loadConfig({ flags: [{ path: "sg.nope", value: 1, flag: "--nope" }], strict: true }),
    ).toThrow(TypeError);
  });
});

describe("the file itself", () => {
  test("a missing file says what to do", () => {
    const r = loadConfig({ file: "/nonexistent/pcoip-cmsg.toml", strict: true });
    expect(r.ok ? [] : r.errors).toEqual([
      "reading /nonexistent/pcoip-cmsg.toml: no such file: create it from pcoip-cmsg.example.toml, or run `pcoip-cmsg install`",
    ]);
  });

  test("a directory is not a file", () => {
    const r = loadConfig({ file: "/tmp", strict: true });
    expect(r.ok ? [] : r.errors).toEqual(["reading /tmp: it is a directory: name the .toml file itself"]);
  });

  test("Windows line endings and a byte-order mark are accepted, and lines still count right", () => {
    expect(errorsOf("\uFEFF# c\r\n[sg]\r\nmaxSessions = 0\r\n")).toEqual([
      "test.toml:3: sg.maxSessions = 0: must be an integer from 1 to 1000000",
    ]);
  });
});

describe("several nodes behind a balancer", () => {
  test("externalPcoipIp equal to a trustedProxies / proxyProtocolFrom address is refused, naming both", () => {
    const l7 = errorsOf('externalPcoipIp = ["198.18.0.10"]\ntrustedProxies = ["198.18.0.10"]\n');
    expect(l7).toHaveLength(1);
    expect(l7[0]).toContain("externalPcoipIp");
    expect(l7[0]).toContain("198.18.0.10 is a load balancer's address (trustedProxies)");
    const l4 = errorsOf('externalPcoipIp = ["198.18.0.10"]\n[cm]\nproxyProtocolFrom = ["198.18.0.10/32"]\n');
    expect(l4[0]).toContain("(cm.proxyProtocolFrom)");
    // A node's own address inside a balancer subnet is fine: only the balancer's exact address is refused.
    expect(
      errorsOf('externalPcoipIp = ["198.18.0.11"]\n[cm]\nproxyProtocolFrom = ["198.18.0.0/24"]\n'),
    ).toEqual([]);
  });

  test("proxyProtocolFrom entries must be IPs or CIDRs", () => {
    const e = errorsOf('[cm]\nproxyProtocolFrom = ["balancer.example"]\n');
    expect(e[0]).toContain("cm.proxyProtocolFrom");
    expect(e[0]).toContain("not an IP address or CIDR");
  });
});
