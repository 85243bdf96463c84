// Claim: configuration merges defaults < file < environment < flags, and every bad input is refused with a
// message naming its source (FILE:LINE, variable, flag), the key, the value and what is allowed.
import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { runConfigCommand } from "../../src/cli/config.ts";
import { describeKeys, envVarName, loadConfig } from "../../src/config/load.ts";
import { effectiveListeners, parseListen } from "../../src/config/schema.ts";

const EXAMPLE = "config/pcoip-cmsg.example.toml";

function errorsOf(text: string, env: Record<string, string> = {}) {
  const r = loadConfig({ file: "test.toml", text, env, strict: true });
  return r.ok ? [] : r.errors;
}

describe("precedence", () => {
  test("default < file < env < flag, each proven by a value that differs", () => {
    const text = "[sg]\nmaxSessions = 100\nmaxSessionsPerClientIp = 7\npendingTtlSeconds = 60\n";
    const r = loadConfig({
      file: "f.toml",
      text,
      env: { PCOIP_CMSG_SG_MAXSESSIONS: "200", PCOIP_CMSG_SG_PENDINGTTLSECONDS: "70" },
      flags: [{ path: "sg.pendingTtlSeconds", value: 80, flag: "--pending-ttl" }],
      strict: true,
    });
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(r.config.sg.udpIdleSeconds).toBe(120); // default
    expect(r.config.sg.maxSessionsPerClientIp).toBe(7); // file
    expect(r.config.sg.maxSessions).toBe(200); // env over file
    expect(r.config.sg.pendingTtlSeconds).toBe(80); // flag over env over file
    expect(Object.isFrozen(r.config.sg)).toBe(true);
  });

  test("env values are coerced by type: booleans, lists, nested sections", () => {
    const r = loadConfig({
      env: {
        PCOIP_CMSG_ENABLESECURITYGATEWAY: "false",
        PCOIP_CMSG_EXTERNALPCOIPIP: "198.51.100.1, 2001:db8::1",
        PCOIP_CMSG_CM_THROTTLE_MAXDELAYSECONDS: "3",
        PCOIP_CMSG_LDAP_URL: "ldaps://a:636,ldaps://b:636",
      },
      strict: true,
    });
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(r.config.enableSecurityGateway).toBe(false);
    expect(r.config.externalPcoipIp).toEqual(["198.51.100.1", "2001:db8::1"]);
    expect(r.config.cm.throttle.maxDelaySeconds).toBe(3);
    expect(r.config.ldap.url).toEqual(["ldaps://a:636", "ldaps://b:636"]);
  });

  test("defaults alone are valid and match SPEC §6", () => {
    const r = loadConfig({ strict: true });
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(r.config.cm.listen).toEqual(["0.0.0.0:443"]);
    expect(r.config.sg.udpSourcePorts).toBe("55000-59999");
    expect(r.config.sg.maxSessions).toBe(5000);
    expect(r.config.admin.listen).toBe("127.0.0.1:8099");
    expect(r.config.tls.agentCertCheck).toBe(false);
  });
});

describe("errors name source, key, value and what is allowed", () => {
  test("unknown key: error with did-you-mean in strict mode, warning in lenient mode", () => {
    const text = 'logLevel = "info"\n[sg]\nmaxSesions = 5\n';
    expect(errorsOf(text)).toEqual([
      'test.toml:3: unknown key "sg.maxSesions" (did you mean "sg.maxSessions"?)',
    ]);
    const lenient = loadConfig({ file: "test.toml", text, strict: false });
    expect(lenient.ok).toBe(true);
    expect(lenient.warnings[0]).toContain(
      'unknown key "sg.maxSesions" (did you mean "sg.maxSessions"?); ignored',
    );
    const top = errorsOf("enableSecurityGatway = true\n");
    expect(top[0]).toContain('(did you mean "enableSecurityGateway"?)');
  });

  test("bad type, out of range, bad enum, bad listen, bad CIDR, bad port range", () => {
    expect(errorsOf("[sg]\nmaxSessions = -5\n")).toEqual([
      "test.toml:2: sg.maxSessions = -5: must be an integer from 1 to 1000000",
    ]);
    expect(errorsOf('enableIpv6 = "yes"\n')[0]).toBe('test.toml:1: enableIpv6 = "yes": must be a boolean');
    expect(errorsOf('logLevel = "verbose"\n')[0]).toBe(
      'test.toml:1: logLevel = "verbose": must be one of debug, info, warn, error',
    );
    expect(errorsOf('[cm]\nlisten = ["0.0.0.0"]\n')[0]).toContain(
      'test.toml:2: cm.listen.0 = "0.0.0.0": must be "host:port"',
    );
    expect(errorsOf('trustedProxies = ["10.0.0.0/33"]\n')[0]).toContain(
      'trusted proxy "10.0.0.0/33": prefix must be 0..32',
    );
    expect(errorsOf('[sg]\nudpSourcePorts = "60000-50000"\n')[0]).toContain(
      'must be "FROM-TO" with 1024 ≤ FROM ≤ TO ≤ 65535',
    );
    expect(errorsOf('externalPcoipIp = ["1.2.3.4", "5.6.7.8"]\n')[0]).toContain(
      "at most one IPv4 and one IPv6 address",
    );
    expect(errorsOf('brokerUrl = "http://broker"\n')[0]).toContain(
      'must be "" (built-in broker) or https://host[:port]',
    );
  });

  test("admin token required off loopback", () => {
    expect(errorsOf('[admin]\nlisten = "0.0.0.0:8099"\n')[0]).toContain("admin.token");
    expect(errorsOf('[admin]\nlisten = "0.0.0.0:8099"\ntoken = "x"\n')).toEqual([]);
  });

  test("desktops: missing agent and duplicate ids name the table", () => {
    expect(errorsOf('[[desktops]]\nid = "a"\nagent = "h"\n[[desktops]]\nid = "b"\n')).toEqual([
      "test.toml:5: desktops.1.agent = (missing): is required (a string)",
    ]);
    const dup = errorsOf('[[desktops]]\nid = "a"\nagent = "h"\n[[desktops]]\nid = "a"\nagent = "h"\n');
    expect(dup).toEqual(['test.toml:5: desktops.1.id = "a": duplicate desktop id "a"']);
    expect(errorsOf('[[desktops]]\nid = "a"\nagent = "h"\ncolour = "x"\n')[0]).toBe(
      'test.toml:4: unknown key "desktops.0.colour"',
    );
  });

  test("TOML syntax errors name the file and line", () => {
    const errs = errorsOf("a = 1\nb = \n");
    expect(errs[0]).toMatch(/^test\.toml(:2)?: not valid TOML: Missing value after '='/);
  });

  test("a bad environment value names the variable; an unknown variable gets a did-you-mean", () => {
    expect(errorsOf("", { PCOIP_CMSG_SG_MAXSESSIONS: "lots" })[0]).toBe(
      'PCOIP_CMSG_SG_MAXSESSIONS: sg.maxSessions = "lots": must be a number',
    );
    expect(errorsOf("", { PCOIP_CMSG_SG_MAXSESION: "3" })[0]).toContain(
      "did you mean PCOIP_CMSG_SG_MAXSESSIONS?",
    );
  });

  test("a bad flag value names the flag", () => {
    const r = loadConfig({
      flags: [{ path: "externalPcoipIp", value: ["not-an-ip"], flag: "--external-pcoip-ip" }],
      strict: true,
    });
    expect(r.ok).toBe(false);
    if (!r.ok)
      expect(r.errors[0]).toBe(
        '--external-pcoip-ip: externalPcoipIp.0 = "not-an-ip": must be an IPv4 or IPv6 address literal',
      );
  });

  test("an unreadable file says what to do", () => {
    const r = loadConfig({ file: "/nonexistent/pcoip-cmsg.toml", strict: true });
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.errors[0]).toContain("ENOENT: create it");
  });
});

describe("reference and example", () => {
  test("every schema key appears in the example file, which passes strict check", () => {
    const text = readFileSync(EXAMPLE, "utf8");
    expect(text).toContain("[[desktops]]");
    for (const k of describeKeys().filter((k) => k.kind !== "object-array")) {
      const leaf = k.path.split(".").pop()!;
      expect(text).toMatch(new RegExp(`^\\s*${leaf}\\s*=`, "m"));
    }
    expect(loadConfig({ file: EXAMPLE, strict: true }).ok).toBe(true);
  });

  test("config check exit codes and messages", async () => {
    const out: string[] = [];
    const io = { stdout: (s: string) => out.push(s), stderr: (s: string) => out.push(s) };
    expect(await runConfigCommand(["check", "--config", EXAMPLE], io)).toBe(0);
    expect(out.join("")).toContain(`config OK: ${EXAMPLE}`);
    out.length = 0;
    expect(await runConfigCommand(["check", "--config", "/nonexistent.toml"], io)).toBe(1);
    expect(await runConfigCommand(["chek"], io)).toBe(2);
    expect(await runConfigCommand(["check", "--confg", "x"], io)).toBe(2);
    expect(out.join("")).toContain("did you mean --config?");
    out.length = 0;
    expect(await runConfigCommand(["schema"], io)).toBe(0);
    expect(out.join("")).toContain("sg.maxSessions  (number)");
    expect(out.join("")).toContain(`env: ${envVarName("sg.maxSessions")}`);
  });

  test("listen parsing and IPv6 listener expansion", () => {
    expect(parseListen("[::]:443")).toEqual({ hostname: "::", port: 443 });
    expect(parseListen("127.0.0.1:0")).toEqual({ hostname: "127.0.0.1", port: 0 });
    expect(parseListen(":80")).toEqual({ hostname: "0.0.0.0", port: 80 });
    expect(parseListen("1.2.3.4:70000")).toBeUndefined();
    expect(effectiveListeners(["0.0.0.0:443"], true)).toEqual(["0.0.0.0:443", "[::]:443"]);
    expect(effectiveListeners(["0.0.0.0:443"], false)).toEqual(["0.0.0.0:443"]);
  });
});
