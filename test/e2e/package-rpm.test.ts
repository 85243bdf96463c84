/**
 * The RPM, as dnf/rpm handle it on EL8/EL9, tried without touching this machine: `rpm --root` on an overlay of a
 * minimal Debian root (it has the /bin/sh, getent and systemd-sysusers the scriptlets use), inside new mount, PID
 * and network namespaces. Install on a CPU "without AVX2" (a fake cpuinfo), upgrade to a newer release,
 * downgrade back with --oldpackage, erase: the edited config and a certificate survive each step, rpm -V stays
 * clean, and the scriptlets (rpm -qp --scripts) never start the service on install.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  buildExecutables,
  buildPackage,
  cannotRun,
  debianRoot,
  OverlayRoot,
  REPO,
  sh,
  VERSION,
} from "./package-fixture.ts";

const skip = cannotRun(["rpm", "rpmbuild", "rpmlint", "flock"]);
if (skip && process.env.CI === "true") throw new Error(`package-rpm: cannot run under CI=true: ${skip}`);
if (skip) console.warn(`package-rpm: SKIPPED: ${skip}`);

const work = mkdtempSync(join(tmpdir(), "pcoip-cmsg-pkgrpm-"));
let rpm1 = "";
let rpm2 = "";
let root: OverlayRoot | undefined;

beforeAll(async () => {
  if (skip) return;
  await buildExecutables(join(work, "bin"));
  rpm1 = await buildPackage(join(work, "bin"), join(work, "out"), "rpm", "1");
  rpm2 = await buildPackage(join(work, "bin"), join(work, "out"), "rpm", "2");
  root = await OverlayRoot.create(await debianRoot(), "pkg-rpm");
}, 600_000);

afterAll(async () => {
  await root?.dispose();
  rmSync(work, { recursive: true, force: true });
});

const q = (args: string[]) => sh(["rpm", ...args]);

describe.skipIf(skip !== undefined)("RPM", () => {
  // Claim: the package is pcoip-cmsg, provides the vendor's name, and asks nothing beyond the C library and sh.
  test("name, Provides: pcoip-cmsg-setup, requires only the C library and /bin/sh", async () => {
    expect((await q(["-qp", "--qf", "%{NAME} %{VERSION}-%{RELEASE} %{ARCH}", rpm1])).out).toBe(
      `pcoip-cmsg ${VERSION}-1 x86_64`,
    );
    const provides = (await q(["-qp", "--provides", rpm1])).out;
    expect(provides).toContain(`pcoip-cmsg-setup = ${VERSION}-1`);
    const requires = (await q(["-qp", "--requires", rpm1])).out.trim().split("\n");
    const other = requires.filter(
      (r) =>
        !/^(\/bin\/sh|rpmlib\(|config\(pcoip-cmsg\)|(ld-linux-x86-64|libc|libdl|libm|libpthread)\.so)/.test(
          r,
        ),
    );
    expect(other).toEqual([]);
    const files = (await q(["-qpl", rpm1])).out;
    for (const f of [
      "/usr/libexec/pcoip-cmsg/pcoip-cmsg",
      "/usr/libexec/pcoip-cmsg/pcoip-cmsg-baseline",
      "/usr/share/pcoip-cmsg/packaged",
      "/usr/bin/pcoip-cmsg",
      "/usr/sbin/pcoip-cmsg-setup",
      "/usr/lib/systemd/system/pcoip-cmsg.service",
      "/etc/pcoip-cmsg/pcoip-cmsg.toml",
      "/usr/share/man/man8/pcoip-cmsg.8.gz",
      "/usr/share/bash-completion/completions/pcoip-cmsg",
      "/usr/share/doc/pcoip-cmsg/pcoip-cmsg.example.toml",
      "/usr/share/licenses/pcoip-cmsg/LICENSES",
    ])
      expect(files).toContain(f);
    const configs = (await q(["-qpc", rpm1])).out.trim();
    expect(configs).toBe("/etc/pcoip-cmsg/pcoip-cmsg.toml");
  });

  // Claim: the scriptlets create the account, never start on install, drain+try-restart on upgrade only, stop
  // and disable on erase only.
  test("scriptlets (rpm -qp --scripts)", async () => {
    const s = (await q(["-qp", "--scripts", rpm1])).out;
    const part = (name: string) =>
      s.split(/^(?=\S+ scriptlet \(using \/bin\/sh\):$)/m).find((p) => p.startsWith(`${name} scriptlet`)) ??
      "";
    expect(part("preinstall")).toContain("\npcoip_cmsg_account");
    const post = part("postinstall");
    expect(post).toContain("pcoip_cmsg_choose_binary");
    expect(post).toMatch(
      /if \[ "\$1" -eq 1 \]; then[\s\S]*not started[\s\S]*else[\s\S]*pcoip-cmsg try-restart/,
    );
    expect(s).not.toMatch(/systemctl (start|restart|enable)\b/);
    expect(part("preuninstall")).toMatch(
      /if \[ "\$1" -eq 0 \]; then[\s\S]*systemctl disable --now pcoip-cmsg/,
    );
    expect(part("postuninstall")).toContain("pcoip-cmsg.toml.rpmsave");
  });

  // Claim: rpmlint finds nothing beyond the findings packaging/rpm/rpmlint.toml explains one by one.
  test("rpmlint is clean with the explained filters", async () => {
    const r = await sh(["rpmlint", "-c", join(REPO, "packaging/rpm/rpmlint.toml"), rpm1], {
      timeoutMs: 120_000,
    });
    // The test's stand-in baseline build is a byte-for-byte copy of the default one (a real one differs).
    const findings = r.out
      .split("\n")
      .filter((l) => /: [EW]: /.test(l) && !/: (files-duplicated-waste|files-duplicate) /.test(l));
    expect(findings).toEqual([]);
    expect(r.out).toMatch(/1 packages and 0 specfiles checked/);
  }, 120_000);

  // Claim: install → upgrade → downgrade → erase keeps the site's config and certificate each time, rpm -V clean.
  test("rpm -i, -U newer, --oldpackage -U back, -e: config kept, rpm -V clean", async () => {
    const r = root!;
    const rpmR = `rpm --root "$R" --dbpath /var/lib/rpm`;
    const script = `
cp '${rpm1}' '${rpm2}' "$R/tmp/"
PCOIP_CMSG_CPUINFO=/tmp/no-avx2 ; export PCOIP_CMSG_CPUINFO
printf 'flags\\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx\\n' >"$R/tmp/no-avx2"
step() { echo "== $1"; }
check() {
  echo "link: $(readlink "$R/usr/bin/pcoip-cmsg")"
  echo "config: $(tail -1 "$R/etc/pcoip-cmsg/pcoip-cmsg.toml")"
  echo "cert: $(cat "$R/etc/pcoip-cmsg/certs/cm.pem" 2>/dev/null)"
  echo "rpmnew: $(ls "$R/etc/pcoip-cmsg" | grep -c rpmnew)"
  echo "verify: [$(${rpmR} -V --nodeps pcoip-cmsg)]"
  echo "version: $(chroot "$R" pcoip-cmsg-setup --version | cut -d' ' -f1-2)"
}
step install; ${rpmR} --nodeps -i "$R/tmp/$(basename '${rpm1}')"; echo "rc=$?"
echo "account: $(chroot "$R" getent passwd pcoip-cmsg | cut -d: -f1,6,7)"
echo "perms: $(stat -c '%a %U:%G' "$R/etc/pcoip-cmsg" "$R/etc/pcoip-cmsg/certs" "$R/etc/pcoip-cmsg/pcoip-cmsg.toml" | chroot "$R" sh -c 'cat' | tr '\\n' ' ')"
check
echo 'logLevel = "debug"' >>"$R/etc/pcoip-cmsg/pcoip-cmsg.toml"
echo 'SITE CERTIFICATE' >"$R/etc/pcoip-cmsg/certs/cm.pem"
step upgrade; ${rpmR} --nodeps -U "$R/tmp/$(basename '${rpm2}')"; echo "rc=$?"; check
echo "installed: $(${rpmR} -q pcoip-cmsg)"
step downgrade; ${rpmR} --nodeps --oldpackage -U "$R/tmp/$(basename '${rpm1}')"; echo "rc=$?"; check
echo "installed: $(${rpmR} -q pcoip-cmsg)"
step erase; ${rpmR} --nodeps -e pcoip-cmsg; echo "rc=$?"
echo "config: $(tail -1 "$R/etc/pcoip-cmsg/pcoip-cmsg.toml")"
echo "cert: $(cat "$R/etc/pcoip-cmsg/certs/cm.pem")"
echo "gone: $(ls "$R/usr/libexec/pcoip-cmsg" "$R/usr/bin/pcoip-cmsg" "$R/usr/sbin/pcoip-cmsg-setup" 2>&1 | grep -c 'No such file')"
echo "log:"; cat "$R/var/log/pcoip-cmsg/install.log"
`;
    const ran = await r.inNamespaces(script, 300_000);
    const out = ran.out;
    const steps = Object.fromEntries(
      out
        .split(/^== /m)
        .slice(1)
        .map((b) => [b.split("\n")[0]!, b] as const),
    );
    // rpm itself saves the edited config as .rpmsave on erase; %postun puts it back (checked below).
    expect(steps.install).toContain("rc=0");
    expect(steps.install).toContain("account: pcoip-cmsg:/var/lib/pcoip-cmsg:/usr/sbin/nologin");
    expect(steps.install).toContain("link: ../libexec/pcoip-cmsg/pcoip-cmsg-baseline");
    expect(steps.install).toMatch(/perms: 750 \S+ 750 \S+ 640 /);
    expect(steps.install).toContain("verify: []");
    expect(steps.install).toContain(`version: pcoip-cmsg ${VERSION}`);
    for (const s of ["upgrade", "downgrade"]) {
      expect({ s, out: steps[s] }).toEqual({ s, out: expect.stringContaining("rc=0") });
      expect(steps[s]).toContain('config: logLevel = "debug"');
      expect(steps[s]).toContain("cert: SITE CERTIFICATE");
      expect(steps[s]).toContain("rpmnew: 0");
      expect(steps[s]).toContain("verify: []");
      expect(steps[s]).toContain("link: ../libexec/pcoip-cmsg/pcoip-cmsg-baseline");
    }
    expect(steps.upgrade).toContain(`installed: pcoip-cmsg-${VERSION}-2.x86_64`);
    expect(steps.downgrade).toContain(`installed: pcoip-cmsg-${VERSION}-1.x86_64`);
    expect(steps.erase).toContain("rc=0");
    expect(steps.erase).toContain('config: logLevel = "debug"');
    expect(steps.erase).toContain("cert: SITE CERTIFICATE");
    expect(steps.erase).toContain("gone: 3");
    expect(out).toMatch(/rpm post 1: installed .*not started/);
    expect(out).toMatch(/rpm post 2: upgraded or downgraded/);
    expect(out).toContain("rpm preun 0: stopped and disabled");
  }, 300_000);
});
