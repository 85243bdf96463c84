// Claim: `config check` exits 0 with "config OK: FILE" for a valid file and 1 with every error for an invalid one
// (2 for usage mistakes); `config schema` prints every key with its type, default, allowed values and variable; the
// example file documents every key with a comment and passes the strict check, as does the dev config.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { runConfigCommand } from "../../src/cli/config.ts";
import { describeKeys, loadConfig } from "../../src/config/load.ts";

const EXAMPLE = "config/pcoip-cmsg.example.toml";
const DEV = "config/dev.toml";

function capture() {
  const out: string[] = [];
  const err: string[] = [];
  return {
    io: { stdout: (s: string) => void out.push(s), stderr: (s: string) => void err.push(s) },
    out: () => out.join(""),
    err: () => err.join(""),
  };
}

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "pcoip-cmsg-config-"));
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

function file(name: string, text: string): string {
  const p = join(dir, name);
  writeFileSync(p, text);
  return p;
}

describe("config check", () => {
  test("a valid file: exit 0, config OK on stdout, the TLS 1.3 note", async () => {
    const c = capture();
    expect(await runConfigCommand(["check", "--config", EXAMPLE], c.io, { env: {} })).toBe(0);
    expect(c.out()).toStartWith(`config OK: ${EXAMPLE}\n`);
    expect(c.out()).toContain("TLS 1.3 suites are the TLS library's own");
    expect(c.err()).toBe("");
  });

  test("explains sg.agentPorts and sg.agentNetworks with the file's values; refuses a bad network or port", async () => {
    const c = capture();
    const f = file("trust.toml", '[sg]\nagentPorts = [4172, 4173]\nagentNetworks = ["10.0.0.0/8"]\n');
    expect(await runConfigCommand(["check", "--config", f], c.io, { env: {} })).toBe(0);
    expect(c.out()).toContain("sg.agentPorts = [4172, 4173]");
    expect(c.out()).toContain("sg.agentNetworks = [10.0.0.0/8]");
    expect(c.out()).toContain("ALLOC_FAILED_TO_ALLOCATE_AGENT");
    const up = capture();
    const u = file("trust-up.toml", 'brokerUrl = "https://broker.corp.example"\n');
    expect(await runConfigCommand(["check", "--config", u], up.io, { env: {} })).toBe(0);
    expect(up.out()).toContain(
      "the upstream broker's agents must have an address in sg.agentNetworks = [10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 100.64.0.0/10, fc00::/7]",
    );
    const bad = capture();
    const b = file("trust-bad.toml", '[sg]\nagentPorts = [0]\nagentNetworks = ["10.0.0.0/33"]\n');
    expect(await runConfigCommand(["check", "--config", b], bad.io, { env: {} })).toBe(1);
    expect(bad.err()).toContain("sg.agentPorts");
    expect(bad.err()).toContain("sg.agentNetworks");
  });

  test("an invalid file: exit 1, every error on stderr", async () => {
    const bad = file("bad.toml", 'logLevel = "loud"\n\n[sg]\nmaxSesions = 3\n');
    const c = capture();
    expect(await runConfigCommand(["check", `--config=${bad}`], c.io, { env: {} })).toBe(1);
    expect(c.err()).toBe(
      `error: ${bad}:4: unknown key "sg.maxSesions" (did you mean "sg.maxSessions"?)\n` +
        `error: ${bad}:1: logLevel = "loud": must be one of "debug", "info", "warn", "error"\n` +
        `config check failed: ${bad}: 2 errors\n`,
    );
    expect(c.out()).toBe("");
  });

  test("strict about the environment too, which overrides the file", async () => {
    const good = file("good.toml", "[sg]\nmaxSessions = 10\n");
    const c = capture();
    expect(
      await runConfigCommand(["check", "--config", good], c.io, { env: { PCOIP_CMSG_SG_MAXSESSIONS: "0" } }),
    ).toBe(1);
    expect(c.err()).toContain(
      "error: PCOIP_CMSG_SG_MAXSESSIONS: sg.maxSessions = 0: must be an integer from 1 to 1000000",
    );
  });

  test("a cipher suite the TLS library lacks is refused; warnings do not fail the check", async () => {
    const c = capture();
    const bad = file("cipher.toml", '[tls]\nciphers = ["ECDHE-RSA-AES256-GCM-SHA384", "NOT-A-SUITE"]\n');
    expect(await runConfigCommand(["check", "--config", bad], c.io, { env: {} })).toBe(1);
    expect(c.err()).toContain(
      `error: ${bad}: tls.ciphers: checking the TLS 1.2 cipher suites: suite "NOT-A-SUITE"`,
    );

    const warned = capture();
    const ok = file("warn.toml", "[sg]\nmaxSessions = 6000\n");
    expect(await runConfigCommand(["check", "--config", ok], warned.io, { env: {} })).toBe(0);
    expect(warned.err()).toContain(`warning: ${ok}:2: sg.maxSessions: 6000 sessions exceed the 5000 ports`);
    expect(warned.out()).toStartWith(`config OK: ${ok}`);
  });

  test("a missing file: exit 1 with what to do", async () => {
    const c = capture();
    expect(await runConfigCommand(["check", "--config", join(dir, "none.toml")], c.io, { env: {} })).toBe(1);
    expect(c.err()).toContain("no such file: create it from pcoip-cmsg.example.toml");
  });

  test("usage mistakes: exit 2 with a did-you-mean", async () => {
    const c = capture();
    expect(await runConfigCommand(["check", "--confg", "x"], c.io, { env: {} })).toBe(2);
    expect(c.err()).toContain("unknown option --confg (did you mean --config?)");
    expect(await runConfigCommand(["chek"], c.io)).toBe(2);
    expect(c.err()).toContain('unknown subcommand "chek" (did you mean "check"?)');
    expect(await runConfigCommand(["check", "extra.toml"], c.io)).toBe(2);
    expect(c.err()).toContain("name the file with --config FILE");
    expect(await runConfigCommand([], c.io)).toBe(2);
  });

  test("--help for the command and each subcommand: exit 0", async () => {
    for (const argv of [["--help"], ["check", "--help"], ["schema", "-h"]]) {
      const c = capture();
      expect(await runConfigCommand(argv, c.io), argv.join(" ")).toBe(0);
      expect(c.out()).toStartWith("Usage:");
    }
  });
});

describe("config schema", () => {
  test("prints every key with type, default, allowed values, description and variable", async () => {
    const c = capture();
    expect(await runConfigCommand(["schema"], c.io)).toBe(0);
    const text = c.out();
    for (const k of describeKeys()) {
      expect(text).toContain(`\n${k.path}\n`);
      if (k.envName) expect(text).toContain(`env:      ${k.envName}\n`);
      expect(text).toContain(k.description);
    }
    expect(text).toContain(
      "sg.maxSessions\n    type:     integer, 1 to 1000000\n    default:  5000\n    env:      PCOIP_CMSG_SG_MAXSESSIONS\n",
    );
    expect(text).toContain(
      'logLevel\n    type:     one of "debug" | "info" | "warn" | "error"\n    default:  "info"\n',
    );
    expect(text).toContain("desktops.*.agent\n    type:     string");
    expect(text).toContain("default:  (none: required)");
    expect(text).toContain("[cm.throttle]");
  });

  test("--json gives the same catalogue to tools", async () => {
    const c = capture();
    expect(await runConfigCommand(["schema", "--json"], c.io)).toBe(0);
    expect(JSON.parse(c.out())).toEqual(JSON.parse(JSON.stringify(describeKeys())));
  });
});

describe("shipped configuration files", () => {
  test("the example sets every key of the schema and passes the strict check without warnings", async () => {
    const example = Bun.TOML.parse(await Bun.file(EXAMPLE).text()) as Record<string, unknown>;
    const get = (obj: unknown, path: string): unknown =>
      path.split(".").reduce<unknown>((o, p) => (o as Record<string, unknown> | undefined)?.[p], obj);
    const desktops = example.desktops as Record<string, unknown>[];
    for (const k of describeKeys()) {
      const value = k.path.startsWith("desktops.*.")
        ? desktops[0]?.[k.path.slice("desktops.*.".length)]
        : get(example, k.path);
      expect(value, `${k.path} is missing from ${EXAMPLE}`).toBeDefined();
    }
    const r = loadConfig({ file: EXAMPLE, strict: true });
    expect(r.ok ? r.warnings : r.errors).toEqual([]);
  });

  test("every key line of the example carries a comment", async () => {
    const lines = (await Bun.file(EXAMPLE).text()).split("\n");
    lines.forEach((line, i) => {
      if (!/^\s*[A-Za-z][\w.]*\s*=/.test(line)) return;
      const commented = line.includes(" # ") || /^\s*#/.test(lines[i - 1] ?? "");
      expect(commented, `${EXAMPLE}:${i + 1} has no comment: ${line}`).toBe(true);
    });
  });

  test("the dev config passes the strict check and is what `npm start` promises", () => {
    const r = loadConfig({ file: DEV, strict: true });
    if (!r.ok) throw new Error(r.errors.join("\n"));
    expect(r.warnings).toEqual([]);
    const c = r.config;
    expect(c.cm.listen).toEqual(["127.0.0.1:8443"]);
    expect(c.cm.redirectListen).toEqual(["127.0.0.1:8080"]);
    expect(c.sg.tcpListen).toEqual(["127.0.0.1:4172"]);
    expect(c.sg.udpListen).toEqual(["127.0.0.1:4172"]);
    expect(c.admin.listen).toBe("127.0.0.1:8099");
    expect(c.tls).toMatchObject({ selfSigned: true, cert: ".data/certs/cm.pem", key: ".data/certs/cm.key" });
    expect(c.dataDir).toBe(".data");
    expect(c.usersFile).toBe(".data/users");
    expect(c.brokerUrl).toBe("");
    expect(c.externalPcoipIp).toEqual(["127.0.0.1"]);
    expect(c.domains).toEqual(["demo.local"]);
    expect(c.desktops).toEqual([
      {
        id: "demo-desktop",
        name: "Demo desktop (fake agent)",
        agent: "127.0.0.1:60443",
        hostname: "localhost",
        users: ["*"],
        groups: [],
      },
    ]);
  });
});
