/**
 * `install --root DIR` writes a complete installation under DIR — a config that passes strict `config check`,
 * unit, sysctl.d, 0600 proxy.env, users file, self-signed certificate, the binary — and runs nothing that would
 * change this host; missing required values are listed (no terminal), Docker flags answered, weak certificates
 * refused with the rule, before anything is written.
 */

import { afterAll, describe, expect, test } from "bun:test";
import {
  chmodSync,
  existsSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { EMBEDDED_UNIT } from "../../src/cli/bundle.ts";
import { runConfigure } from "../../src/cli/configure.ts";
import { hostInstallDeps, type InstallDeps, runInstall } from "../../src/cli/install.ts";
import { adminEndpointFor } from "../../src/cli/status.ts";
import { runUninstall } from "../../src/cli/uninstall.ts";
import { loadConfig } from "../../src/config/load.ts";
import { type CommandRunner, type PortProbe, runCommand } from "../../src/platform/host.ts";
import { installLayout } from "../../src/platform/paths.ts";
import { parseSysctlConf } from "../../src/platform/sysctl.ts";
import { loadCertificatePair } from "../../src/tls/certs.ts";
import { capturedIo } from "../peers/captured-io.ts";

const work = mkdtempSync(join(tmpdir(), "pcoip-cmsg-install-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

/** Commands that change a host: none may run during a staged install. */
const HOST_CHANGING = ["useradd", "userdel", "firewall-cmd", "systemctl", "sysctl", "restorecon", "chown"];

function recorder(): { run: CommandRunner; ran: string[] } {
  const ran: string[] = [];
  return {
    ran,
    run: async (cmd, args, opts) => {
      ran.push([cmd, ...args].join(" "));
      if (HOST_CHANGING.includes(cmd)) throw new Error(`test: ${cmd} must not run in a staged install`);
      return runCommand(cmd, args, opts);
    },
  };
}

function deps(run: CommandRunner): InstallDeps {
  return { ...hostInstallDeps(), run, interactive: false, ask: () => undefined, systemdRunning: () => true };
}

function fakeBinary(version: string): string {
  const file = join(work, `fake-${version}`);
  writeFileSync(file, `#!/bin/sh\necho "pcoip-cmsg ${version} (fake)"\n`);
  chmodSync(file, 0o755);
  return file;
}

const mode = (f: string) => statSync(f).mode & 0o777;

describe("install --root (staged)", () => {
  const root = join(work, "stage1");
  const passwordFile = join(work, "proxy-pass");
  writeFileSync(passwordFile, "pr0xy-S3cret\n");
  const binary = fakeBinary("9.9.9");
  const rec = recorder();
  const io = capturedIo();
  let code = -1;
  const layout = installLayout(root);

  test("installs everything under the root", async () => {
    code = await runInstall(
      [
        "--root",
        root,
        "--accept-policies",
        "--external-pcoip-ip",
        "203.0.113.10",
        "--external-pcoip-ip=2001:db8::10",
        "--host-address",
        "cm.example.net",
        "--host-address",
        "192.0.2.5",
        "--self-signed",
        "--enable-collaboration=false",
        "--binary",
        binary,
        "--ignore-disk-req",
        "--https-proxy",
        "10.0.0.8:3128",
        "--https-proxy-username",
        "cm",
        "--https-proxy-password-file",
        passwordFile,
        "--license-server-url",
        "27000@lic.example",
      ],
      io,
      deps(rec.run),
    );
    expect(io.err).not.toContain("install: ");
    expect(code).toBe(0);
  }, 60_000);

  test("the config passes strict config check and holds the flags", () => {
    const r = loadConfig({ file: layout.disk.configFile, strict: true });
    if (!r.ok) throw new Error(r.errors.join("\n"));
    expect(r.config.externalPcoipIp).toEqual(["203.0.113.10", "2001:db8::10"]);
    expect(r.config.hostAddress).toEqual(["cm.example.net", "192.0.2.5"]);
    expect(r.config.enableCollaboration).toBe(false);
    expect(r.config.licenseServerUrl).toBe("27000@lic.example");
    expect(r.config.tls.cert).toBe("/etc/pcoip-cmsg/certs/cm.pem");
    expect(r.config.usersFile).toBe("/etc/pcoip-cmsg/users");
    expect(mode(layout.disk.configFile)).toBe(0o640);
  });

  test("unit, sysctl.d, users file, proxy.env (0600) and binary are written", () => {
    expect(readFileSync(layout.disk.unitFile, "utf8")).toBe(EMBEDDED_UNIT);
    expect(EMBEDDED_UNIT).toContain(
      "ExecStart=/usr/local/bin/pcoip-cmsg run --config /etc/pcoip-cmsg/pcoip-cmsg.toml",
    );
    expect(readFileSync(layout.disk.sysctlFile, "utf8")).toMatch(/^net\.core\.rmem_default = \d+$/m);
    expect(readFileSync(layout.disk.sysctlFile, "utf8")).toMatch(/^net\.core\.wmem_default = \d+$/m);
    // Claim: with the SG on and sg.udpFastPath not "off", the sysctl.d file switches IPv4 forwarding on (the
    // service cannot: ProtectKernelTunables), with the comment saying why; the SG's sysctl parser applies it.
    const sysctl = readFileSync(layout.disk.sysctlFile, "utf8");
    expect(sysctl).toMatch(/^net\.ipv4\.ip_forward = 1$/m);
    expect(sysctl).toContain("drops every forwarded packet that is not an admitted session's media");
    expect(parseSysctlConf(sysctl)).toContainEqual({ key: "net.ipv4.ip_forward", value: 1 });
    expect(readFileSync(layout.disk.usersFile, "utf8")).toBe("");
    expect(mode(layout.disk.usersFile)).toBe(0o600);
    const env = readFileSync(layout.disk.proxyEnv, "utf8");
    expect(env).toContain('HTTPS_PROXY="10.0.0.8:3128"');
    expect(env).toContain('HTTPS_PROXY_USERNAME="cm"');
    expect(env).toContain('HTTPS_PROXY_PASSWORD="pr0xy-S3cret"');
    expect(mode(layout.disk.proxyEnv)).toBe(0o600);
    expect(readFileSync(layout.disk.binary, "utf8")).toBe(readFileSync(binary, "utf8"));
    expect(mode(layout.disk.binary)).toBe(0o755);
    expect(JSON.parse(readFileSync(layout.disk.installRecord, "utf8")).version).toBe("9.9.9");
  });

  test("the admin token file is created 0600 with a 64-hex-digit token, which the CLI reads", () => {
    const file = layout.onDisk("/etc/pcoip-cmsg/admin.token");
    expect(mode(file)).toBe(0o600);
    expect(readFileSync(file, "utf8")).toMatch(/^[0-9a-f]{64}\n$/);
    const r = loadConfig({ file: layout.disk.configFile, strict: true });
    if (!r.ok) throw new Error(r.errors.join("\n"));
    expect(adminEndpointFor(r.config.admin, layout.onDisk).token).toBe(readFileSync(file, "utf8").trim());
  });

  test("the self-signed certificate is RSA-3072 with the host addresses as SANs", () => {
    const pair = loadCertificatePair({ certFile: layout.disk.certFile, keyFile: layout.disk.keyFile });
    if (!pair.ok) throw new Error(pair.error.cause);
    expect(pair.pair.keyBits).toBe(3072);
    expect(pair.pair.sans).toEqual(expect.arrayContaining(["DNS:cm.example.net", "IP:192.0.2.5"]));
    expect(mode(layout.disk.keyFile)).toBe(0o640);
  });

  test("nothing that changes this host ran; each is printed instead", () => {
    for (const r of rec.ran) expect(HOST_CHANGING).not.toContain(r.split(" ")[0]!);
    for (const w of [
      "useradd --system",
      "firewall-cmd --permanent --add-port=443/tcp",
      "--add-port=4172/udp",
      "firewall-cmd --reload",
      "through /proc/sys (pcoip-cmsg sysctl)",
      "systemctl enable pcoip-cmsg",
      "restorecon -R",
    ])
      expect(io.out).toContain(w);
  });

  test("configure edits the staged config, keeps keys it does not manage, says what changed", async () => {
    const cfgText = readFileSync(layout.disk.configFile, "utf8");
    writeFileSync(
      layout.disk.configFile,
      `${cfgText}\n[[desktops]]\nid = "ws-1"\nagent = "10.0.0.5"\nusers = ["alice"]\n`,
    );
    const licenseFile = join(work, "license.pem");
    writeFileSync(licenseFile, "not a real license certificate\n");
    const out = capturedIo();
    const rc = await runConfigure(
      [
        "--root",
        root,
        "--broker-url",
        "https://broker.example:8443",
        "--clear-host-address",
        "--host-address",
        "cm2.example.net",
        "--trusted-license-cert",
        licenseFile,
        "--docker-image=x",
      ],
      out,
      { run: rec.run, systemdRunning: () => true },
    );
    expect(out.err).toContain("not needed: this appliance runs without Docker");
    expect(rc).toBe(0);
    const r = loadConfig({ file: layout.disk.configFile, strict: true });
    if (!r.ok) throw new Error(r.errors.join("\n"));
    expect(r.config.brokerUrl).toBe("https://broker.example:8443");
    expect(r.config.hostAddress).toEqual(["cm2.example.net"]);
    expect(r.config.desktops.map((d) => d.id)).toEqual(["ws-1"]);
    expect(r.config.license.trustedCert).toBe("/etc/pcoip-cmsg/certs/license.pem");
    expect(r.config.externalPcoipIp).toEqual(["203.0.113.10", "2001:db8::10"]);
    expect(out.out).toContain('brokerUrl: "" → "https://broker.example:8443"');
    expect(out.out).toContain("systemctl reload pcoip-cmsg");
    expect(out.err).toContain("does not cover cm2.example.net");
    expect(out.err).toContain("no effect");
    // Deterministic: the same edit again changes nothing.
    const again = capturedIo();
    const before = readFileSync(layout.disk.configFile, "utf8");
    expect(
      await runConfigure(["--root", root, "--broker-url", "https://broker.example:8443"], again, {
        run: rec.run,
        systemdRunning: () => true,
      }),
    ).toBe(0);
    expect(readFileSync(layout.disk.configFile, "utf8")).toBe(before);
    expect(again.out).toContain("nothing changed");
  }, 30_000);

  // Claim: sg.udpFastPath = "off" takes the forwarding line out: configure removes it (saying forwarding stays on
  // until the next boot), and install with that configuration does not write it back; the buffers stay.
  test('udpFastPath = "off": configure removes the forwarding line and install does not write it', async () => {
    writeFileSync(
      layout.disk.configFile,
      `${readFileSync(layout.disk.configFile, "utf8")}\n[sg]\nudpFastPath = "off"\n`,
    );
    expect(loadConfig({ file: layout.disk.configFile, strict: true })).toMatchObject({
      ok: true,
      config: { sg: { udpFastPath: "off" } },
    });
    const out = capturedIo();
    expect(await runConfigure(["--root", root], out, { run: rec.run, systemdRunning: () => true })).toBe(0);
    expect(out.out).toContain("net.ipv4.ip_forward = 1 removed");
    const removed = readFileSync(layout.disk.sysctlFile, "utf8");
    expect(removed).not.toContain("ip_forward");
    expect(removed).not.toContain("admitted session's media");
    expect(removed).toMatch(/^net\.core\.rmem_default = \d+$/m);
    const again = capturedIo();
    const code = await runInstall(
      ["--root", root, "--binary", fakeBinary("9.9.9"), "--ignore-disk-req"],
      again,
      deps(rec.run),
    );
    expect(again.err).not.toContain("install: ");
    expect(code).toBe(0);
    expect(readFileSync(layout.disk.sysctlFile, "utf8")).not.toContain("ip_forward");
    expect(readFileSync(layout.disk.sysctlFile, "utf8")).toMatch(/^net\.core\.wmem_default = \d+$/m);
  }, 30_000);

  test("uninstall removes the service files and keeps config; --purge removes the rest", async () => {
    const out = capturedIo();
    expect(await runUninstall(["--root", root], out, { run: rec.run, systemdRunning: () => true })).toBe(0);
    expect(existsSync(layout.disk.binary)).toBe(false);
    expect(existsSync(layout.disk.unitFile)).toBe(false);
    expect(existsSync(layout.disk.sysctlFile)).toBe(false);
    expect(existsSync(layout.disk.configFile)).toBe(true);
    expect(existsSync(layout.disk.certFile)).toBe(true);
    expect(out.out).toContain("firewall-cmd --permanent --remove-port=443/tcp");
    const purge = capturedIo();
    expect(
      await runUninstall(["--root", root, "--purge"], purge, { run: rec.run, systemdRunning: () => true }),
    ).toBe(0);
    expect(existsSync(layout.disk.configDir)).toBe(false);
    expect(existsSync(layout.disk.stateDir)).toBe(false);
    for (const r of rec.ran) expect(HOST_CHANGING).not.toContain(r.split(" ")[0]!);
  });
});

describe("install refusals", () => {
  test("without a terminal, every missing required value is listed and nothing is written", async () => {
    const root = join(work, "missing");
    const io = capturedIo();
    const code = await runInstall(
      ["--root", root, "--ignore-disk-req", "--binary", fakeBinary("1.0.0")],
      io,
      deps(recorder().run),
    );
    expect(code).toBe(2);
    for (const f of [
      "--accept-policies",
      "--external-pcoip-ip",
      "--self-signed, or --ssl-cert FILE --ssl-key FILE",
    ])
      expect(io.err).toContain(f);
    expect(existsSync(root)).toBe(false);
  });

  test("on a terminal, the missing values are asked for", async () => {
    const root = join(work, "asked");
    const answers = ["y", "not-an-ip", "203.0.113.44", ""];
    const questions: string[] = [];
    const io = capturedIo();
    const code = await runInstall(
      ["--root", root, "--ignore-disk-req", "--config-only", "--host-address", "cm.example.org"],
      io,
      {
        ...deps(recorder().run),
        interactive: true,
        ask: (q) => {
          questions.push(q);
          return answers.shift();
        },
      },
    );
    expect(code).toBe(0);
    expect(questions[0]).toContain("accept the license");
    expect(io.out).toContain("not an IP address literal");
    expect(questions.at(-1)).toContain("self-signed one for cm.example.org");
    const r = loadConfig({ file: installLayout(root).disk.configFile, strict: true });
    expect(r.ok && r.config.externalPcoipIp).toEqual(["203.0.113.44"]);
    expect(existsSync(installLayout(root).disk.certFile)).toBe(true);
  }, 30_000);

  test("declining the policies on the terminal stops with nothing written", async () => {
    const root = join(work, "declined");
    const io = capturedIo();
    const code = await runInstall(["--root", root, "--config-only"], io, {
      ...deps(recorder().run),
      interactive: true,
      ask: () => "n",
    });
    expect(code).toBe(2);
    expect(io.err).toContain("nothing was changed");
    expect(existsSync(root)).toBe(false);
  });

  test("the SG disabled needs no external address", async () => {
    const root = join(work, "nosg");
    const io = capturedIo();
    const code = await runInstall(
      [
        "--root",
        root,
        "--accept-policies",
        "--enable-security-gateway=false",
        "--ignore-disk-req",
        "--config-only",
      ],
      io,
      deps(recorder().run),
    );
    expect(io.err).toContain("--self-signed");
    expect(io.err).not.toContain("--external-pcoip-ip");
    expect(code).toBe(2);
  });

  test("--docker-* and --compose-file are answered, not refused", async () => {
    const root = join(work, "docker");
    const io = capturedIo();
    const code = await runInstall(
      [
        "--root",
        root,
        "--docker-registry",
        "reg.example",
        "--compose-file=/x.yml",
        "--accept-policies",
        "--external-pcoip-ip",
        "203.0.113.9",
        "--self-signed",
        "--ignore-disk-req",
        "--config-only",
      ],
      io,
      deps(recorder().run),
    );
    expect(io.err).toContain("--docker-registry: not needed: this appliance runs without Docker");
    expect(io.err).toContain("--compose-file: not needed: this appliance runs without Docker");
    expect(code).toBe(0);
    expect(existsSync(installLayout(root).disk.configFile)).toBe(true);
    expect(existsSync(installLayout(root).disk.binary)).toBe(false);
  }, 30_000);

  test("a 1024-bit RSA certificate is refused with the rule and the file; nothing is written", async () => {
    const cert = join(work, "weak.pem");
    const key = join(work, "weak.key");
    const r = Bun.spawnSync([
      "openssl",
      "req",
      "-x509",
      "-newkey",
      "rsa:1024",
      "-nodes",
      "-sha256",
      "-days",
      "5",
      "-subj",
      "/CN=weak.example",
      "-keyout",
      key,
      "-out",
      cert,
    ]);
    expect(r.exitCode).toBe(0);
    const root = join(work, "weak");
    const io = capturedIo();
    const code = await runInstall(
      [
        "--root",
        root,
        "--accept-policies",
        "--external-pcoip-ip",
        "203.0.113.9",
        "--ssl-cert",
        cert,
        "--ssl-key",
        key,
        "--ignore-disk-req",
        "--binary",
        fakeBinary("1.0.1"),
      ],
      io,
      deps(recorder().run),
    );
    expect(code).toBe(1);
    expect(io.err).toContain("nothing was changed");
    expect(io.err).toContain(cert);
    expect(io.err).toMatch(/1024/);
    expect(io.err).toMatch(/2048/);
    expect(existsSync(root) ? readdirSync(root) : []).toEqual([]);
  });

  test("--self-signed with --ssl-cert is a conflict", async () => {
    const io = capturedIo();
    const code = await runInstall(
      [
        "--root",
        join(work, "conflict"),
        "--accept-policies",
        "--external-pcoip-ip",
        "203.0.113.9",
        "--self-signed",
        "--ssl-cert",
        "/x",
        "--ssl-key",
        "/y",
        "--config-only",
        "--ignore-disk-req",
      ],
      io,
      deps(recorder().run),
    );
    expect(code).toBe(1);
    expect(io.err).toContain("choose one certificate source");
  });

  test("an unknown flag gets a did-you-mean", async () => {
    const io = capturedIo();
    expect(await runInstall(["--external-pcoip", "1.2.3.4"], io, deps(recorder().run))).toBe(2);
    expect(io.err).toContain("did you mean --external-pcoip-ip");
  });
});

/** The environment without anything that would steer the appliance (overrides, proxies, systemd, LOG_LEVEL). */
function cleanEnv(): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (v === undefined || /^PCOIP_CMSG_|^(https?|all|no)_proxy$|^NOTIFY_SOCKET$|^LOG_LEVEL$/i.test(k))
      continue;
    env[k] = v;
  }
  return env;
}

const GB = 1024 ** 3;

describe("the staged installation runs", () => {
  const root = join(work, "stage-run");
  const layout = installLayout(root);
  const io = capturedIo();
  let code = -1;

  test("staged install on a small host: low disk with --ignore-disk-req and low memory are warnings only", async () => {
    code = await runInstall(
      [
        "--root",
        root,
        "--accept-policies",
        "--external-pcoip-ip",
        "203.0.113.10",
        "--host-address",
        "localhost",
        "--host-address",
        "127.0.0.1",
        "--self-signed",
        "--binary",
        fakeBinary("9.9.8"),
        "--ignore-disk-req",
      ],
      io,
      {
        ...deps(recorder().run),
        freeDisk: () => 5 * GB,
        memory: () => ({ totalBytes: 1 * GB, availableBytes: 0.5 * GB }),
      },
    );
    expect(io.err).not.toContain("install: ");
    expect(code).toBe(0);
    expect(io.out).toContain("disk: 5.0 GB free (below 10 GB: --ignore-disk-req)");
    expect(io.err).toContain("memory: 1.0 GB in total; 2 GB or more is recommended");
    expect(existsSync(layout.disk.configFile)).toBe(true);
  }, 60_000);

  test("`run --config <staged config>` with listeners and paths moved by PCOIP_CMSG_* starts, serves the staged certificate, and exits 0 on SIGTERM", async () => {
    expect(code).toBe(0);
    // The staged config names host paths (/etc/pcoip-cmsg/…, /var/lib/pcoip-cmsg) and real ports: the
    // environment moves them under the root and onto loopback port 0.
    const staged = loadConfig({ file: layout.disk.configFile, strict: true });
    if (!staged.ok) throw new Error(staged.errors.join("\n"));
    expect(staged.config.tls.cert).toBe(layout.host.certFile);
    const env = {
      ...cleanEnv(),
      PCOIP_CMSG_TLS_CERT: layout.onDisk(staged.config.tls.cert),
      PCOIP_CMSG_TLS_KEY: layout.onDisk(staged.config.tls.key),
      PCOIP_CMSG_USERSFILE: layout.onDisk(staged.config.usersFile),
      PCOIP_CMSG_DATADIR: layout.onDisk(staged.config.dataDir),
      PCOIP_CMSG_CM_LISTEN: "127.0.0.1:0",
      PCOIP_CMSG_CM_REDIRECTLISTEN: "127.0.0.1:0",
      PCOIP_CMSG_SG_TCPLISTEN: "127.0.0.1:0",
      PCOIP_CMSG_SG_UDPLISTEN: "127.0.0.1:0",
      PCOIP_CMSG_ADMIN_LISTEN: "127.0.0.1:0",
      PCOIP_CMSG_DRAINSECONDS: "1",
    };
    const proc = Bun.spawn(
      [
        process.execPath,
        join(import.meta.dir, "../../src/main.ts"),
        "run",
        "--config",
        layout.disk.configFile,
      ],
      { cwd: root, env, stdin: "ignore", stdout: "pipe", stderr: "pipe" },
    );
    const stderr = new Response(proc.stderr).text();
    const lines: Record<string, unknown>[] = [];
    let raw = "";
    const reader = (async () => {
      const dec = new TextDecoder();
      for await (const chunk of proc.stdout) {
        raw += dec.decode(chunk, { stream: true });
        for (let nl = raw.indexOf("\n"); nl >= 0; nl = raw.indexOf("\n")) {
          const line = raw.slice(0, nl);
          raw = raw.slice(nl + 1);
          try {
            lines.push(JSON.parse(line) as Record<string, unknown>);
          } catch {
            lines.push({ msg: line, raw: true });
          }
        }
      }
    })();
    const listener = (name: string) => lines.find((l) => l.listener === name);
    try {
      const deadline = Date.now() + 30_000;
      while (!(listener("cm") && listener("admin")) && Date.now() < deadline && proc.exitCode === null)
        await Bun.sleep(50);
      if (!listener("cm") || !listener("admin"))
        throw new Error(
          `no "listener":"cm" line (exit ${proc.exitCode}):\n${lines
            .slice(-10)
            .map((l) => JSON.stringify(l))
            .join("\n")}\n${proc.exitCode !== null ? await stderr : ""}`,
        );
      const cm = String(listener("cm")!.address);
      expect(cm).toMatch(/^127\.0\.0\.1:[1-9]\d*$/);
      // The front door serves the certificate the install generated: trusting only that one, TLS verifies.
      const r = await fetch(`https://${cm}/pcoip-broker/xml`, {
        tls: { ca: readFileSync(layout.disk.certFile, "utf8") },
        signal: AbortSignal.timeout(15_000),
      });
      expect(r.status).toBe(200);
      const health = await fetch(`http://${String(listener("admin")!.address)}/healthz`, {
        signal: AbortSignal.timeout(15_000),
      });
      expect(health.status).toBe(200);

      proc.kill("SIGTERM");
      const killer = setTimeout(() => proc.kill("SIGKILL"), 20_000);
      const exit = await proc.exited;
      clearTimeout(killer);
      await reader;
      expect(proc.signalCode).toBeNull();
      expect(exit).toBe(0);
      expect(lines.some((l) => l.signal === "SIGTERM")).toBe(true);
    } finally {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill("SIGKILL");
      await proc.exited;
    }
  }, 60_000);
});

describe("install pre-checks (injected host)", () => {
  test("too little disk without --ignore-disk-req is refused with the 10 GB rule; nothing is written", async () => {
    const root = join(work, "small-disk");
    const io = capturedIo();
    const code = await runInstall(
      [
        "--root",
        root,
        "--accept-policies",
        "--external-pcoip-ip",
        "203.0.113.9",
        "--self-signed",
        "--binary",
        fakeBinary("1.0.2"),
      ],
      io,
      {
        ...deps(recorder().run),
        freeDisk: () => 3 * GB,
        memory: () => ({ totalBytes: 8 * GB, availableBytes: 6 * GB }),
      },
    );
    expect(code).toBe(1);
    expect(io.err).toContain("refused; nothing was changed");
    expect(io.err).toContain("3.0 GB free for /var/lib/pcoip-cmsg; 10 GB are required");
    expect(io.err).toContain("--ignore-disk-req");
    expect(existsSync(root) ? readdirSync(root) : []).toEqual([]);
  }, 30_000);

  test("a busy 443/tcp is refused naming the port and the key; nothing is written; low memory only warns", async () => {
    // A real (not staged) install, so the ports are checked. Everything host-facing is injected: the port
    // probe says 443/tcp is taken, and the command runner allows only the fake binary's --version, so if the
    // refusal ever failed, the install would stop at its first host command (useradd) before writing a file.
    const binary = fakeBinary("1.0.3");
    const ran: string[] = [];
    const run: CommandRunner = async (cmd, args, opts) => {
      ran.push([cmd, ...args].join(" "));
      if (cmd !== binary) throw new Error(`test: ${cmd} must not run: the install must be refused first`);
      return runCommand(cmd, args, opts);
    };
    const probed: string[] = [];
    const watched = [
      "/etc/pcoip-cmsg",
      "/usr/local/bin/pcoip-cmsg",
      "/usr/local/lib/pcoip-cmsg",
      "/var/lib/pcoip-cmsg",
      "/etc/systemd/system/pcoip-cmsg.service",
      "/etc/sysctl.d/90-pcoip-cmsg.conf",
    ];
    const before = watched.map((f) => existsSync(f));
    const io = capturedIo();
    const code = await runInstall(
      ["--accept-policies", "--external-pcoip-ip", "203.0.113.9", "--self-signed", "--binary", binary],
      io,
      {
        ...deps(run),
        systemdRunning: () => false,
        freeDisk: () => 50 * GB,
        memory: () => ({ totalBytes: 1.5 * GB, availableBytes: 1 * GB }),
        portFree: async (host, port, protocol): Promise<PortProbe> => {
          probed.push(`${host}:${port}/${protocol}`);
          return port === 443 && protocol === "tcp"
            ? { free: false, cause: "the address is already in use (EADDRINUSE)" }
            : { free: true };
        },
      },
    );
    expect(code).toBe(1);
    expect(io.err).toContain("refused; nothing was changed");
    expect(io.err).toContain("checking that the ports are free");
    expect(io.err).toMatch(/cm\.listen \S*:443\/tcp: the address is already in use/);
    expect(io.err).not.toMatch(/:80\/tcp: /);
    expect(io.err).toContain("memory: 1.5 GB in total");
    expect(probed).toEqual(expect.arrayContaining(["0.0.0.0:443/tcp", "0.0.0.0:4172/udp"]));
    expect(ran).toEqual([`${binary} --version`]);
    expect(watched.map((f) => existsSync(f))).toEqual(before);
  }, 30_000);
});
