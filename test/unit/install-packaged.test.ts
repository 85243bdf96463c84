/**
 * With the RPM or deb installed (its marker /usr/share/pcoip-cmsg/packaged), `install` configures and starts the
 * package's unit but copies no executable and writes no unit of its own, the package's empty config does not
 * count as "policies accepted", and `uninstall` leaves the package's files and says how to remove the package.
 * Staged under --root: nothing on this host changes.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { hostInstallDeps, runInstall } from "../../src/cli/install.ts";
import { runUninstall } from "../../src/cli/uninstall.ts";
import { type CommandRunner, runCommand } from "../../src/platform/host.ts";
import { installLayout } from "../../src/platform/paths.ts";
import { capturedIo } from "../peers/captured-io.ts";

const PACKAGING = join(import.meta.dir, "../../packaging");
const work = mkdtempSync(join(tmpdir(), "pcoip-cmsg-packaged-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

const HOST_CHANGING = [
  "useradd",
  "userdel",
  "firewall-cmd",
  "systemctl",
  "sysctl",
  "restorecon",
  "chown",
  "rpm",
];
const run: CommandRunner = async (cmd, args, opts) => {
  if (HOST_CHANGING.includes(cmd)) throw new Error(`test: ${cmd} must not run in a staged install`);
  return runCommand(cmd, args, opts);
};

/** What the deb leaves on disk before `pcoip-cmsg-setup install` runs. */
function packageTree(root: string): void {
  mkdirSync(join(root, "usr/share/pcoip-cmsg"), { recursive: true });
  writeFileSync(join(root, "usr/share/pcoip-cmsg/packaged"), "deb\n");
  mkdirSync(join(root, "usr/lib/sysctl.d"), { recursive: true });
  writeFileSync(
    join(root, "usr/lib/sysctl.d/90-pcoip-cmsg.conf"),
    readFileSync(join(PACKAGING, "files/sysctl.conf")),
  );
  mkdirSync(join(root, "etc/pcoip-cmsg/certs"), { recursive: true });
  writeFileSync(
    join(root, "etc/pcoip-cmsg/pcoip-cmsg.toml"),
    readFileSync(join(PACKAGING, "files/pcoip-cmsg.toml")),
  );
}

const deps = {
  ...hostInstallDeps(),
  run,
  interactive: false,
  ask: () => undefined,
  systemdRunning: () => true,
};
const flags = ["--external-pcoip-ip", "203.0.113.9", "--self-signed", "--ignore-disk-req"];

describe("install and uninstall over the packages", () => {
  const root = join(work, "root");
  packageTree(root);
  const layout = installLayout(root);

  // Claim: the package's comment-only config is not an installed configuration: --accept-policies is still asked.
  test("the package's empty config does not accept the policies", async () => {
    const io = capturedIo();
    expect(await runInstall(["--root", root, ...flags], io, deps)).toBe(2);
    expect(io.err).toContain("--accept-policies");
  });

  // Claim: no executable or unit is written; the config and service steps are; the package's sysctl.d file has no
  // forwarding (the SG may be off), so install writes /etc/sysctl.d/90-pcoip-cmsg.conf: the package's settings plus
  // net.ipv4.ip_forward = 1 (it masks the package's), and applies that one.
  test("configures and starts the package's unit without copying an executable or a unit", async () => {
    const io = capturedIo();
    const code = await runInstall(["--root", root, "--accept-policies", ...flags], io, deps);
    expect(io.err).not.toContain("failed");
    expect(code).toBe(0);
    expect(io.out).toContain("the deb package installed the executable and the unit");
    expect(io.out).toContain("staged, not run here: systemctl enable pcoip-cmsg");
    expect(io.out).toContain("/etc/sysctl.d/90-pcoip-cmsg.conf through /proc/sys");
    expect(readFileSync(join(PACKAGING, "files/sysctl.conf"), "utf8")).not.toContain("ip_forward");
    const sysctl = readFileSync(layout.disk.sysctlFile, "utf8");
    expect(sysctl).toMatch(/^# Written by pcoip-cmsg install/);
    expect(sysctl).toMatch(/^net\.core\.rmem_default = 4194304$/m);
    expect(sysctl).toMatch(/^net\.ipv4\.ip_forward = 1$/m);
    expect(readFileSync(layout.disk.configFile, "utf8")).toContain('externalPcoipIp = ["203.0.113.9"]');
    for (const f of [layout.disk.binary, layout.disk.unitFile])
      expect({ f, exists: existsSync(f) }).toEqual({ f, exists: false });
    expect(io.err).toContain("no --broker-url and no [[desktops]]");
    expect(readFileSync(layout.disk.installLog, "utf8")).toMatch(/install: done: .*self-signed/);
  }, 30_000);

  test("uninstall leaves the package's files and names the package command", async () => {
    const io = capturedIo();
    expect(await runUninstall(["--root", root], io, { run, systemdRunning: () => true })).toBe(0);
    expect(io.out).toContain("come from the deb package: remove it with apt remove pcoip-cmsg");
    expect(existsSync(join(root, "usr/share/pcoip-cmsg/packaged"))).toBe(true);
    expect(existsSync(layout.disk.configFile)).toBe(true);
  });
});
