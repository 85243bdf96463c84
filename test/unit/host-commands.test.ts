/**
 * The commands that let the unit and the package scripts work on a minimal host: `reload` (ExecReload without
 * /bin/kill), the /proc/sys writer behind `sysctl` (no procps), the warning for a configuration that can serve
 * nobody, and the vendor's --compose-file answered with the key that replaces it.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { runReload } from "../../src/cli/reload.ts";
import { stripDockerFlags } from "../../src/cli/vendor-flags.ts";
import { noDesktopsAdvice } from "../../src/config/advice.ts";
import type { CommandRunner } from "../../src/platform/host.ts";
import { applySysctl, parseSysctlConf } from "../../src/platform/sysctl.ts";
import { capturedIo } from "../peers/captured-io.ts";

const work = mkdtempSync(join(tmpdir(), "pcoip-cmsg-hostcmd-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

const noSystemctl: CommandRunner = async () => {
  throw new Error("test: systemctl must not be asked when --pid is given");
};

describe("reload", () => {
  // Claim: SIGHUP goes to the given PID only when it is a `pcoip-cmsg run` process.
  test("signals a pcoip-cmsg run process given by --pid", async () => {
    const sent: number[] = [];
    const io = capturedIo();
    const code = await runReload(["--pid", "4242"], io, {
      run: noSystemctl,
      signal: (pid) => void sent.push(pid),
      cmdline: () => "/usr/bin/pcoip-cmsg run --config /etc/pcoip-cmsg/pcoip-cmsg.toml",
    });
    expect(code).toBe(0);
    expect(sent).toEqual([4242]);
  });

  test("refuses a PID that is not the appliance, and one that does not exist", async () => {
    const sent: number[] = [];
    const deps = (cmd: string | undefined) => ({
      run: noSystemctl,
      signal: (pid: number) => void sent.push(pid),
      cmdline: () => cmd,
    });
    const other = capturedIo();
    expect(await runReload(["--pid", "77"], other, deps("/usr/sbin/sshd -D"))).toBe(1);
    expect(other.err).toContain("not a `pcoip-cmsg run` process");
    const gone = capturedIo();
    expect(await runReload(["--pid", "78"], gone, deps(undefined))).toBe(3);
    expect(gone.err).toContain("no process 78");
    const bad = capturedIo();
    expect(await runReload(["--pid", "1"], bad, deps("x"))).toBe(2);
    expect(sent).toEqual([]);
  });

  test("without --pid asks systemd; a stopped service is said so", async () => {
    const io = capturedIo();
    const code = await runReload([], io, {
      run: async (cmd, args) => {
        expect([cmd, ...args].join(" ")).toBe("systemctl show --property=MainPID --value pcoip-cmsg");
        return { ok: true, code: 0, stdout: "0\n", stderr: "", missing: false, timedOut: false };
      },
      signal: () => {
        throw new Error("test: nothing to signal");
      },
      cmdline: () => undefined,
    });
    expect(code).toBe(3);
    expect(io.err).toContain("is not running");
  });
});

describe("kernel settings through /proc/sys", () => {
  // Claim: values are raised, never lowered; a key the namespace lacks is skipped by name.
  test("raises, keeps a higher value, skips an absent key", () => {
    const proc = join(work, "proc-sys");
    mkdirSync(join(proc, "net/core"), { recursive: true });
    writeFileSync(join(proc, "net/core/rmem_default"), "212992\n");
    writeFileSync(join(proc, "net/core/wmem_default"), "8388608\n");
    const settings = parseSysctlConf(
      "# comment\nnet.core.rmem_default = 4194304\n; other\nnet.core.wmem_default=4194304\nnet.core.absent = 1\nbad line\n",
    );
    expect(settings.map((s) => s.key)).toEqual([
      "net.core.rmem_default",
      "net.core.wmem_default",
      "net.core.absent",
    ]);
    const r = applySysctl(settings, proc);
    expect(r.map((o) => o.outcome)).toEqual(["raised", "kept", "absent"]);
    expect(readFileSync(join(proc, "net/core/rmem_default"), "utf8").trim()).toBe("4194304");
    expect(readFileSync(join(proc, "net/core/wmem_default"), "utf8").trim()).toBe("8388608");
  });
});

describe("advice and vendor flags", () => {
  test("no broker URL and no desktops: names what to add", () => {
    const a = noDesktopsAdvice({ brokerUrl: "", desktops: [] });
    expect(a).toContain("--broker-url");
    expect(a).toContain("[[desktops]]");
    expect(a).toContain("pcoip-cmsg user add");
    expect(noDesktopsAdvice({ brokerUrl: "https://broker.example", desktops: [] })).toBeUndefined();
    expect(noDesktopsAdvice({ brokerUrl: "", desktops: [{}] })).toBeUndefined();
  });

  test("--compose-file is answered with the key that sets log verbosity", () => {
    const r = stripDockerFlags(["--compose-file", "/opt/x/docker-compose.yml", "--broker-url", "https://b"]);
    expect(r.argv).toEqual(["--broker-url", "https://b"]);
    expect(r.notes[0]).toContain('logLevel = "debug"');
    expect(r.notes[0]).toContain("systemctl reload pcoip-cmsg");
  });
});
