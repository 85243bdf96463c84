/**
 * The flags of the vendor's `pcoip-cmsg-setup install|configure` (SPEC §7), shared by our `install` and
 * `configure`, and how each maps onto a configuration key (SPEC §6). Administrators paste their existing
 * command lines, so the spellings are the vendor's; Docker flags are answered instead of refused.
 * Pure: argv in, settings and config edits out; files are read and written by configure.ts / install.ts.
 */
import { isIP } from "node:net";
import type { FlagValue } from "../config/load.ts";
import type { LayoutPaths } from "../platform/paths.ts";
import { type FlagSpec, flagBool, flagList, flagString, type ParsedArgs } from "./args.ts";

export const DOCKER_NOTE = "not needed: this appliance runs without Docker";
/**
 * The vendor's `configure --compose-file` swaps the docker-compose file, which administrators use to raise the log
 * verbosity: name the key that does that here.
 */
export const COMPOSE_FILE_NOTE =
  'not needed: this appliance runs without Docker. The vendor\'s compose file set the log verbosity; here that is logLevel = "debug" (or "info", "warn", "error") in /etc/pcoip-cmsg/pcoip-cmsg.toml, applied by `systemctl reload pcoip-cmsg` (for one run: LOG_LEVEL=debug in the service\'s environment)';

/** The vendor's own flags, valid for both install and configure. */
export const VENDOR_FLAGS: readonly FlagSpec[] = [
  {
    name: "accept-policies",
    kind: "boolean",
    help: "accept the license and privacy policies (required by install)",
  },
  {
    name: "broker-url",
    kind: "string",
    value: "URL",
    help: 'upstream broker https://host[:port]; "" = built-in broker',
  },
  {
    name: "ca-cert",
    kind: "string",
    value: "FILE",
    help: "CA certificate(s) PEM: served as the chain, trusted for broker/agent checks (copied)",
  },
  {
    name: "enable-collaboration",
    kind: "boolean",
    help: "allow several concurrent allocations of one desktop",
  },
  { name: "enable-ipv6", kind: "boolean", help: "add [::] listeners" },
  {
    name: "enable-security-gateway",
    kind: "boolean",
    help: "relay sessions through the Security Gateway (default true)",
  },
  {
    name: "external-pcoip-ip",
    kind: "list",
    value: "IP",
    help: "public SG address clients get: one IPv4 and/or one IPv6 (give twice)",
  },
  {
    name: "host-address",
    kind: "list",
    value: "IP|FQDN",
    help: "this node's address(es): SANs of the self-signed certificate (give twice)",
  },
  { name: "ignore-disk-req", kind: "boolean", help: "install even with less than 10 GB free" },
  {
    name: "license-server-url",
    kind: "string",
    value: "URL",
    help: "license server: port@host or http(s)://host:port/request",
  },
  {
    name: "self-signed",
    kind: "boolean",
    help: "generate a self-signed RSA-3072 certificate for --host-address",
  },
  {
    name: "ssl-cert",
    kind: "string",
    value: "FILE",
    help: "PEM certificate (leaf first) for 443 (copied; checked against the rules)",
  },
  { name: "ssl-key", kind: "string", value: "FILE", help: "PEM private key of --ssl-cert (copied)" },
  {
    name: "darksite-bundle-path",
    kind: "string",
    value: "PATH",
    help: "install offline from pcoip-cmsg-bundle.tar.gz or its extracted folder",
  },
  {
    name: "trusted-license-cert",
    kind: "string",
    value: "FILE",
    help: "stored for compatibility with the vendor's tool; has no effect",
  },
  {
    name: "trusted-license-cert-key",
    kind: "string",
    value: "FILE",
    help: "stored for compatibility with the vendor's tool; has no effect",
  },
];

/** Ours, shared by install and configure. */
export const COMMON_FLAGS: readonly FlagSpec[] = [
  {
    name: "root",
    kind: "string",
    value: "DIR",
    help: "stage every file under DIR; change nothing on this host (packaging, tests)",
  },
  {
    name: "https-proxy",
    kind: "string",
    value: "URL",
    help: 'proxy for broker traffic (http://host:port or host:port); "" removes it',
  },
  { name: "https-proxy-username", kind: "string", value: "NAME", help: "proxy basic-auth user" },
  {
    name: "https-proxy-password-file",
    kind: "string",
    value: "FILE",
    help: "file holding the proxy password (first line)",
  },
  { name: "help", kind: "boolean", help: "this text" },
];

export const INSTALL_ONLY_FLAGS: readonly FlagSpec[] = [
  {
    name: "binary",
    kind: "string",
    value: "FILE",
    help: "the executable to install (default: this one when compiled)",
  },
  {
    name: "config-only",
    kind: "boolean",
    help: "write configuration, certificates and users file only (no binary, unit, service)",
  },
  {
    name: "drain-timeout",
    kind: "string",
    value: "SECONDS",
    help: "upgrade: wait this long for live sessions to end (default 600)",
  },
  { name: "force", kind: "boolean", help: "upgrade without waiting for live sessions" },
];

export const CONFIGURE_ONLY_FLAGS: readonly FlagSpec[] = [
  {
    name: "clear-host-address",
    kind: "boolean",
    help: "remove every host address (then add any --host-address given)",
  },
  {
    name: "clear-trusted-license",
    kind: "boolean",
    help: "remove the stored trusted-license certificate and key",
  },
];

export const INSTALL_FLAGS: readonly FlagSpec[] = [...VENDOR_FLAGS, ...COMMON_FLAGS, ...INSTALL_ONLY_FLAGS];
export const CONFIGURE_FLAGS: readonly FlagSpec[] = [
  ...VENDOR_FLAGS,
  ...CONFIGURE_ONLY_FLAGS,
  ...COMMON_FLAGS,
];

/**
 * Removes `--docker-*` and `--compose-file` (with their values) before parsing, returning one note per flag:
 * the vendor's scripts pass them, and an unknown-flag error would stop an otherwise good command line.
 */
export function stripDockerFlags(argv: readonly string[]): { argv: string[]; notes: string[] } {
  const out: string[] = [];
  const notes: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const word = argv[i]!;
    const name = /^--([^=]+)/.exec(word)?.[1];
    if (name && (name.startsWith("docker") || name === "compose-file")) {
      notes.push(`--${name}: ${name === "compose-file" ? COMPOSE_FILE_NOTE : DOCKER_NOTE}; ignored`);
      const next = argv[i + 1];
      if (!word.includes("=") && next !== undefined && !next.startsWith("--")) i++;
      continue;
    }
    out.push(word);
  }
  return { argv: out, notes };
}

/** What the administrator asked for; undefined = not given (keep what is configured). */
export interface VendorSettings {
  readonly acceptPolicies?: boolean;
  readonly brokerUrl?: string;
  readonly caCert?: string;
  readonly enableCollaboration?: boolean;
  readonly enableIpv6?: boolean;
  readonly enableSecurityGateway?: boolean;
  readonly externalPcoipIp?: readonly string[];
  readonly hostAddress?: readonly string[];
  readonly clearHostAddress?: boolean;
  readonly ignoreDiskReq?: boolean;
  readonly licenseServerUrl?: string;
  readonly selfSigned?: boolean;
  readonly sslCert?: string;
  readonly sslKey?: string;
  readonly darksiteBundlePath?: string;
  readonly trustedLicenseCert?: string;
  readonly trustedLicenseCertKey?: string;
  readonly clearTrustedLicense?: boolean;
  readonly httpsProxy?: string;
  readonly httpsProxyUsername?: string;
  readonly httpsProxyPasswordFile?: string;
}

type Mutable<T> = { -readonly [K in keyof T]: T[K] };

export function readVendorSettings(args: ParsedArgs): VendorSettings {
  const s: Mutable<VendorSettings> = {};
  const str = (flag: string, key: keyof VendorSettings) => {
    const v = flagString(args, flag);
    if (v !== undefined) (s as Record<string, unknown>)[key] = v;
  };
  const bool = (flag: string, key: keyof VendorSettings) => {
    const v = flagBool(args, flag);
    if (v !== undefined) (s as Record<string, unknown>)[key] = v;
  };
  const list = (flag: string, key: keyof VendorSettings) => {
    const v = flagList(args, flag);
    if (v.length > 0) (s as Record<string, unknown>)[key] = v.map((x) => x.trim()).filter((x) => x !== "");
  };
  bool("accept-policies", "acceptPolicies");
  str("broker-url", "brokerUrl");
  str("ca-cert", "caCert");
  bool("enable-collaboration", "enableCollaboration");
  bool("enable-ipv6", "enableIpv6");
  bool("enable-security-gateway", "enableSecurityGateway");
  list("external-pcoip-ip", "externalPcoipIp");
  list("host-address", "hostAddress");
  bool("clear-host-address", "clearHostAddress");
  bool("ignore-disk-req", "ignoreDiskReq");
  str("license-server-url", "licenseServerUrl");
  bool("self-signed", "selfSigned");
  str("ssl-cert", "sslCert");
  str("ssl-key", "sslKey");
  str("darksite-bundle-path", "darksiteBundlePath");
  str("trusted-license-cert", "trustedLicenseCert");
  str("trusted-license-cert-key", "trustedLicenseCertKey");
  bool("clear-trusted-license", "clearTrustedLicense");
  str("https-proxy", "httpsProxy");
  str("https-proxy-username", "httpsProxyUsername");
  str("https-proxy-password-file", "httpsProxyPasswordFile");
  return s;
}

/** Combinations that make no sense whatever is installed. */
export function conflicts(s: VendorSettings): string[] {
  const out: string[] = [];
  if (s.selfSigned === true && (s.sslCert !== undefined || s.sslKey !== undefined))
    out.push("--self-signed and --ssl-cert/--ssl-key: choose one certificate source");
  if ((s.sslCert === undefined) !== (s.sslKey === undefined))
    out.push("--ssl-cert and --ssl-key go together: give both files");
  if (
    s.clearTrustedLicense === true &&
    (s.trustedLicenseCert !== undefined || s.trustedLicenseCertKey !== undefined)
  )
    out.push("--clear-trusted-license with --trusted-license-cert(-key): choose one");
  for (const ip of s.externalPcoipIp ?? [])
    if (isIP(ip) === 0) out.push(`--external-pcoip-ip ${ip}: must be an IPv4 or IPv6 address literal`);
  if ((s.httpsProxyUsername !== undefined || s.httpsProxyPasswordFile !== undefined) && s.httpsProxy === "")
    out.push('--https-proxy "" removes the proxy: proxy credentials make no sense with it');
  return out;
}

/** What is already installed, as far as the required values go. */
export interface Installed {
  /** An installed configuration exists (re-install or upgrade): policies were accepted then. */
  readonly configExists: boolean;
  readonly enableSecurityGateway: boolean;
  readonly externalPcoipIp: readonly string[];
  /** The configured certificate and key files both exist. */
  readonly certificatePresent: boolean;
}

export interface MissingValue {
  readonly flag: string;
  readonly why: string;
}

/** Required values (SPEC §7) that neither the flags nor the installed configuration provide. */
export function missingRequired(s: VendorSettings, installed: Installed): MissingValue[] {
  const out: MissingValue[] = [];
  if (s.acceptPolicies !== true && !installed.configExists)
    out.push({ flag: "--accept-policies", why: "the license and privacy policies must be accepted" });
  const sg = s.enableSecurityGateway ?? installed.enableSecurityGateway;
  const external = s.externalPcoipIp ?? installed.externalPcoipIp;
  if (sg && external.length === 0)
    out.push({
      flag: "--external-pcoip-ip IP",
      why: "the Security Gateway needs the public address clients reach it at (or --enable-security-gateway=false)",
    });
  if (s.selfSigned !== true && s.sslCert === undefined && !installed.certificatePresent)
    out.push({ flag: "--self-signed, or --ssl-cert FILE --ssl-key FILE", why: "443 needs a certificate" });
  return out;
}

/**
 * The configuration keys the flags set, with host paths for copied files. Certificates and keys are copied
 * into /etc/pcoip-cmsg/certs by the caller; the config names the copies, never the operator's originals.
 */
export function configEdits(s: VendorSettings, host: LayoutPaths): FlagValue[] {
  const out: FlagValue[] = [];
  const set = (path: string, value: unknown, flag: string) => out.push({ path, value, flag });
  if (s.brokerUrl !== undefined) set("brokerUrl", s.brokerUrl, "--broker-url");
  if (s.enableCollaboration !== undefined)
    set("enableCollaboration", s.enableCollaboration, "--enable-collaboration");
  if (s.enableIpv6 !== undefined) set("enableIpv6", s.enableIpv6, "--enable-ipv6");
  if (s.enableSecurityGateway !== undefined)
    set("enableSecurityGateway", s.enableSecurityGateway, "--enable-security-gateway");
  if (s.externalPcoipIp !== undefined) set("externalPcoipIp", [...s.externalPcoipIp], "--external-pcoip-ip");
  if (s.clearHostAddress === true) set("hostAddress", [...(s.hostAddress ?? [])], "--clear-host-address");
  else if (s.hostAddress !== undefined) set("hostAddress", [...s.hostAddress], "--host-address");
  if (s.licenseServerUrl !== undefined) set("licenseServerUrl", s.licenseServerUrl, "--license-server-url");
  if (s.caCert !== undefined) set("tls.caCert", s.caCert === "" ? "" : host.caFile, "--ca-cert");
  if (s.sslCert !== undefined || s.selfSigned === true) {
    const flag = s.selfSigned === true ? "--self-signed" : "--ssl-cert";
    set("tls.cert", host.certFile, flag);
    set("tls.key", host.keyFile, s.selfSigned === true ? flag : "--ssl-key");
  }
  if (s.clearTrustedLicense === true) {
    set("license.trustedCert", "", "--clear-trusted-license");
    set("license.trustedCertKey", "", "--clear-trusted-license");
  }
  if (s.trustedLicenseCert !== undefined)
    set("license.trustedCert", host.licenseCertFile, "--trusted-license-cert");
  if (s.trustedLicenseCertKey !== undefined)
    set("license.trustedCertKey", host.licenseKeyFile, "--trusted-license-cert-key");
  return out;
}

/** Text for --help: the vendor flags, and what this appliance does differently. */
export const VENDOR_NOTES = `Notes:
  Booleans take --flag, --flag=true or --flag=false. --external-pcoip-ip and --host-address may be given twice.
  --docker-* and --compose-file are accepted and ignored: ${DOCKER_NOTE}; the compose file's log verbosity
  is logLevel in the config (pcoip-cmsg reload applies it).
  --trusted-license-cert(-key) are stored in [license] for compatibility with the vendor's tool and have no effect.`;
