/**
 * The deb on a real systemd, as an administrator would use it: a minimal Debian 12 (debootstrap minbase + systemd,
 * cached between runs) booted with systemd as PID 1 in namespaces this test makes, on an overlay so the cache and
 * this machine stay untouched. In one boot: dpkg -i (not started), the vendor's `pcoip-cmsg-setup install`
 * (configures, enables, starts), then systemctl stop / start / is-active / reload (the new config applies) / stop (drain) / start, the journal lines, the
 * watchdog keeping the service up for 60 s, dpkg -i of a newer release (drained, restarted, config kept), a
 * downgrade, dpkg -r (stopped, config kept) and dpkg -P (config gone). Also: lintian with the explained overrides.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import {
  BootedSystem,
  buildExecutables,
  buildPackage,
  cannotRun,
  debianRoot,
  OverlayRoot,
  sh,
  VERSION,
} from "./package-fixture.ts";

const skip = cannotRun(["dpkg-deb", "lintian", "flock"]);
if (skip && process.env.CI === "true") throw new Error(`package-deb: cannot run under CI=true: ${skip}`);
if (skip) console.warn(`package-deb: SKIPPED: ${skip}`);

const work = mkdtempSync(join(tmpdir(), "pcoip-cmsg-pkgdeb-"));
let deb1 = "";
let deb2 = "";
let root: OverlayRoot | undefined;
let sys: BootedSystem | undefined;

beforeAll(async () => {
  if (skip) return;
  await buildExecutables(join(work, "bin"));
  deb1 = await buildPackage(join(work, "bin"), join(work, "out"), "deb", "1");
  deb2 = await buildPackage(join(work, "bin"), join(work, "out"), "deb", "2");
  root = await OverlayRoot.create(await debianRoot(), "pkg-deb");
  for (const d of [deb1, deb2]) copyFileSync(d, join(root.merged, "root", basename(d))); // systemd mounts a tmpfs on /tmp
  sys = await BootedSystem.boot(root);
}, 600_000);

afterAll(async () => {
  await sys?.shutdown();
  await root?.dispose();
  rmSync(work, { recursive: true, force: true });
});

describe.skipIf(skip !== undefined)("deb", () => {
  // Claim: lintian reports nothing beyond the overrides shipped in the package (each explained in
  // packaging/deb/lintian-overrides).
  test("lintian is clean with the explained overrides", async () => {
    const r = await sh(["lintian", "--no-tag-display-limit", deb1], { timeoutMs: 290_000 });
    const findings = (r.out + r.err).split("\n").filter((l) => /^[EWX]: /.test(l));
    expect(findings).toEqual([]);
    expect(r.code).toBe(0);
  }, 300_000);

  // Claim: the whole life of the deb under a real systemd works as SPEC §9 and issue 20 describe.
  test("install, start, reload, stop, start, watchdog 60 s, upgrade, downgrade, remove, purge", async () => {
    const s = sys!;
    const ok = async (argv: string[], timeoutMs?: number) => {
      const r = await s.exec(argv, timeoutMs);
      expect({ argv: argv.join(" "), code: r.code, err: r.code === 0 ? "" : r.err + r.out }).toEqual({
        argv: argv.join(" "),
        code: 0,
        err: "",
      });
      return r.out;
    };
    const state = async () => (await s.exec(["systemctl", "is-active", "pcoip-cmsg"])).out.trim();
    const mainPid = async () =>
      (await s.exec(["systemctl", "show", "--property=MainPID", "--value", "pcoip-cmsg"])).out.trim();
    const journal = async () =>
      (await s.exec(["journalctl", "-u", "pcoip-cmsg", "--no-pager", "-o", "cat"])).out;
    const cfg = join(root!.merged, "etc/pcoip-cmsg/pcoip-cmsg.toml");

    // dpkg -i: installed, account made, never started.
    await ok(["dpkg", "-i", `/root/${basename(deb1)}`]);
    expect(await state()).toBe("inactive");
    expect(await ok(["getent", "passwd", "pcoip-cmsg"])).toContain("/var/lib/pcoip-cmsg");
    expect(await ok(["pcoip-cmsg-setup", "--version"])).toStartWith(`pcoip-cmsg ${VERSION}`);

    // The vendor's command configures it (the executable and unit come from the package).
    const setup = await ok(
      [
        "pcoip-cmsg-setup",
        "install",
        "--accept-policies",
        "--external-pcoip-ip",
        "198.18.7.10",
        "--self-signed",
        "--host-address",
        "cm.pkg.test",
        "--ignore-disk-req",
      ],
      120_000,
    );
    // It configures, enables and starts the package's unit (the executable and unit are not copied).
    expect(setup).toContain("the deb package installed the executable and the unit");
    expect(setup).toContain("✓ systemctl enable pcoip-cmsg");
    expect(setup).toContain("✓ systemctl start pcoip-cmsg");
    expect(await state()).toBe("active");
    expect(await ok(["systemctl", "is-enabled", "pcoip-cmsg"])).toBe("enabled\n");
    expect(existsSync(join(root!.merged, "usr/local/bin/pcoip-cmsg"))).toBe(false);
    await ok(["systemctl", "stop", "pcoip-cmsg"], 120_000);
    expect(await state()).toBe("inactive");
    const compose = await s.exec([
      "pcoip-cmsg-setup",
      "configure",
      "--compose-file",
      "/opt/vendor/docker-compose.yml",
    ]);
    expect(compose.err).toContain('logLevel = "debug"');
    expect(existsSync(join(root!.merged, "etc/pcoip-cmsg/certs/cm.pem"))).toBe(true);

    // A stopped appliance forwards nothing: the privileged ExecStopPost switched off the forwarding that install's
    // sysctl.d line (sg.udpFastPath) turned on; the privileged ExecStartPre turns it on again for the service.
    const forwarding = async () => (await ok(["cat", "/proc/sys/net/ipv4/ip_forward"])).trim();
    expect(await ok(["cat", "/etc/sysctl.d/90-pcoip-cmsg.conf"])).toContain("net.ipv4.ip_forward = 1");
    expect(await forwarding()).toBe("0");

    // start, is-active; READY=1 and the status line came through sd_notify.
    await ok(["systemctl", "start", "pcoip-cmsg"], 60_000);
    expect(await state()).toBe("active");
    expect(await forwarding()).toBe("1");
    expect(await ok(["systemctl", "show", "--property=StatusText", "--value", "pcoip-cmsg"])).toContain(
      "serving",
    );
    const status = await ok(["pcoip-cmsg", "status"]);
    expect(status).toContain("/usr/bin/pcoip-cmsg from the deb package");
    expect(status).toMatch(/desktops: warning: no --broker-url and no \[\[desktops\]\]/);

    // reload without /bin/kill: the new log level applies.
    const text = readFileSync(cfg, "utf8");
    expect(text).not.toMatch(/^logLevel/m);
    await ok(["sed", "-i", '1i logLevel = "debug"', "/etc/pcoip-cmsg/pcoip-cmsg.toml"]);
    const pidBefore = await mainPid();
    await ok(["systemctl", "reload", "pcoip-cmsg"]);
    let reloaded = "";
    for (let i = 0; i < 50 && !/configuration reloaded/.test(reloaded); i++) {
      await Bun.sleep(200);
      reloaded = await journal();
    }
    expect(reloaded).toMatch(/"changed":\[[^\]]*"logLevel"[^\]]*\][^\n]*configuration reloaded/);
    expect(await mainPid()).toBe(pidBefore);

    // stop drains; start again.
    await ok(["systemctl", "stop", "pcoip-cmsg"], 120_000);
    expect(await state()).toBe("inactive");
    expect(await journal()).toContain("drained: no live sessions");
    await ok(["systemctl", "start", "pcoip-cmsg"], 60_000);
    expect(await state()).toBe("active");

    // The watchdog (WatchdogSec=30) keeps it up: same process, no restart, after 60 s.
    const pidRunning = await mainPid();
    await Bun.sleep(61_000);
    expect(await state()).toBe("active");
    expect(await mainPid()).toBe(pidRunning);
    expect(await ok(["systemctl", "show", "--property=NRestarts", "--value", "pcoip-cmsg"])).toBe("0\n");

    // Upgrade: drained and restarted on the new package, config kept.
    await ok(["dpkg", "-i", `/root/${basename(deb2)}`], 170_000);
    expect(await state()).toBe("active");
    expect(await mainPid()).not.toBe(pidRunning);
    expect(readFileSync(cfg, "utf8")).toMatch(/^logLevel = "debug"$/m);
    expect(await ok(["dpkg-query", "-W", "pcoip-cmsg"])).toBe(`pcoip-cmsg\t${VERSION}-2\n`);
    const log = readFileSync(join(root!.merged, "var/log/pcoip-cmsg/install.log"), "utf8");
    expect(log).toMatch(/try-restart: (done|note): .*no live sessions/);
    expect(log).toContain("try-restart: done: restarted pcoip-cmsg");

    // Downgrade to the older release: config kept, still running.
    await ok(["dpkg", "-i", `/root/${basename(deb1)}`], 170_000);
    expect(await ok(["dpkg-query", "-W", "pcoip-cmsg"])).toBe(`pcoip-cmsg\t${VERSION}-1\n`);
    expect(readFileSync(cfg, "utf8")).toMatch(/^logLevel = "debug"$/m);
    expect(await state()).toBe("active");

    // Remove: stopped and disabled, configuration and certificates kept.
    await ok(["dpkg", "-r", "pcoip-cmsg"], 170_000);
    expect(await state()).not.toBe("active");
    expect(existsSync(join(root!.merged, "usr/libexec/pcoip-cmsg/pcoip-cmsg"))).toBe(false);
    expect(readFileSync(cfg, "utf8")).toMatch(/^logLevel = "debug"$/m);
    expect(existsSync(join(root!.merged, "etc/pcoip-cmsg/certs/cm.pem"))).toBe(true);

    // Purge: the configuration goes too.
    await ok(["dpkg", "-P", "pcoip-cmsg"]);
    expect(existsSync(join(root!.merged, "etc/pcoip-cmsg"))).toBe(false);
  }, 420_000);
});
