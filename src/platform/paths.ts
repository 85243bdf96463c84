/**
 * The install layout (SPEC §9): where `install` puts each file, `uninstall` removes it and `status`/`diagnose`
 * look. Every path exists twice: as the running system sees it (`host`, written into the config and the unit) and
 * where this process writes it (`disk`), which differ only under `--root DIR` (staging for packaging and tests).
 *
 * @example
 * const p = installLayout("/tmp/stage");
 * p.host.configFile; // "/etc/pcoip-cmsg/pcoip-cmsg.toml" (what the config and unit say)
 * p.disk.configFile; // "/tmp/stage/etc/pcoip-cmsg/pcoip-cmsg.toml" (where it is written)
 */
import { readFileSync } from "node:fs";
import { join, resolve } from "node:path";

export const SERVICE_NAME = "pcoip-cmsg";
export const SERVICE_USER = "pcoip-cmsg";
export const BINARY_NAME = "pcoip-cmsg";
/** The x64 build for CPUs without AVX2, shipped beside the main binary and in the bundle. */
export const BASELINE_BINARY_NAME = "pcoip-cmsg-baseline";

export interface LayoutPaths {
  readonly binary: string;
  /** /usr/local/lib/pcoip-cmsg: the previous binary (rollback) and the install record. */
  readonly libDir: string;
  readonly previousBinary: string;
  /** JSON: version, source and time of the installed binary (what `status` shows). */
  readonly installRecord: string;
  readonly configDir: string;
  readonly configFile: string;
  readonly usersFile: string;
  readonly certsDir: string;
  readonly certFile: string;
  readonly keyFile: string;
  readonly caFile: string;
  readonly licenseCertFile: string;
  readonly licenseKeyFile: string;
  /** EnvironmentFile of the unit: HTTPS_PROXY and its credentials (0600). */
  readonly proxyEnv: string;
  readonly stateDir: string;
  readonly unitFile: string;
  readonly sysctlFile: string;
  /** The install log (vendor habit: install and upgrade steps kept under /var/log beside the journal). */
  readonly logDir: string;
  readonly installLog: string;
  /**
   * Present when the RPM or deb installed the appliance (text: "rpm" or "deb"). Then the package owns the
   * executables (/usr/libexec/pcoip-cmsg, /usr/bin/pcoip-cmsg), the unit and the sysctl.d file, and install/uninstall
   * leave them to the package manager.
   */
  readonly packageMarker: string;
  readonly packageBinary: string;
  readonly packageSysctlFile: string;
}

export interface InstallLayout {
  /** "/" for a real install, else the staging folder (absolute). */
  readonly root: string;
  /** True under `--root DIR` with DIR other than "/": nothing on this host may change. */
  readonly staged: boolean;
  readonly host: LayoutPaths;
  readonly disk: LayoutPaths;
  /** A host path → where this process reads or writes it. */
  onDisk(hostPath: string): string;
}

const HOST: LayoutPaths = {
  binary: "/usr/local/bin/pcoip-cmsg",
  libDir: "/usr/local/lib/pcoip-cmsg",
  previousBinary: "/usr/local/lib/pcoip-cmsg/pcoip-cmsg.previous",
  installRecord: "/usr/local/lib/pcoip-cmsg/installed.json",
  configDir: "/etc/pcoip-cmsg",
  configFile: "/etc/pcoip-cmsg/pcoip-cmsg.toml",
  usersFile: "/etc/pcoip-cmsg/users",
  certsDir: "/etc/pcoip-cmsg/certs",
  certFile: "/etc/pcoip-cmsg/certs/cm.pem",
  keyFile: "/etc/pcoip-cmsg/certs/cm.key",
  caFile: "/etc/pcoip-cmsg/certs/ca.pem",
  licenseCertFile: "/etc/pcoip-cmsg/certs/license.pem",
  licenseKeyFile: "/etc/pcoip-cmsg/certs/license.key",
  proxyEnv: "/etc/pcoip-cmsg/proxy.env",
  stateDir: "/var/lib/pcoip-cmsg",
  unitFile: "/etc/systemd/system/pcoip-cmsg.service",
  sysctlFile: "/etc/sysctl.d/90-pcoip-cmsg.conf",
  logDir: "/var/log/pcoip-cmsg",
  installLog: "/var/log/pcoip-cmsg/install.log",
  packageMarker: "/usr/share/pcoip-cmsg/packaged",
  packageBinary: "/usr/bin/pcoip-cmsg",
  packageSysctlFile: "/usr/lib/sysctl.d/90-pcoip-cmsg.conf",
};

export function installLayout(root = "/"): InstallLayout {
  const abs = resolve(root);
  const staged = abs !== "/";
  const onDisk = (hostPath: string) => (staged ? join(abs, hostPath) : hostPath);
  const disk = Object.fromEntries(
    Object.entries(HOST).map(([k, v]) => [k, onDisk(v)]),
  ) as unknown as LayoutPaths;
  return { root: abs, staged, host: HOST, disk, onDisk };
}

/** "rpm" or "deb" when a package installed the appliance under the layout's root (its marker file), else undefined. */
export function packagedBy(layout: InstallLayout): "rpm" | "deb" | undefined {
  try {
    const kind = readFileSync(layout.disk.packageMarker, "utf8").trim();
    return kind === "rpm" || kind === "deb" ? kind : undefined;
  } catch {
    return undefined;
  }
}
