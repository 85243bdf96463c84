/**
 * `pcoip-cmsg configure`: edits the installed configuration with the vendor's flags and reloads the service.
 * The file is rewritten deterministically from the merged values (keys in schema order, keys it does not manage
 * kept, comments not kept — the command says so), certificates are checked before anything is written and copied
 * into /etc/pcoip-cmsg/certs, and proxy settings go to the 0600 EnvironmentFile.
 *
 * `install` composes the same plan/apply steps (planConfiguration, applyConfiguration) with its own
 * prerequisites, binary and service steps.
 */
import { chmodSync, chownSync, existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import { noDesktopsAdvice } from "../config/advice.ts";
import { describeKeys, type FlagValue, loadConfig } from "../config/load.ts";
import { proxyFromEnv } from "../net/proxy-env.ts";
import {
  type CommandRunner,
  commandLine,
  commandProblem,
  formatProblem,
  lookupUser,
  type Problem,
  runCommand,
  systemdRunning,
} from "../platform/host.ts";
import { type InstallLayout, installLayout, SERVICE_NAME, SERVICE_USER } from "../platform/paths.ts";
import { certificateCovers, generateSelfSigned, loadCaBundle, loadCertificatePair } from "../tls/certs.ts";
import { formatFlags, parseArgs } from "./args.ts";
import { loggedReporter, openInstallLog } from "./install-log.ts";
import type { CliIo, CommandMain } from "./io.ts";
import { createReporter, type Reporter, writeFileAtomic } from "./report.ts";
import { syncForwardingLine } from "./sysctl-file.ts";
import {
  CONFIGURE_FLAGS,
  configEdits,
  conflicts,
  readVendorSettings,
  stripDockerFlags,
  VENDOR_NOTES,
  type VendorSettings,
} from "./vendor-flags.ts";

// Reporting and atomic writes live in report.ts (install-log.ts and sysctl-file.ts use them too); the commands
// that import them from here keep doing so.
export { createReporter, type Reporter, writeFileAtomic };

// ───────────────────────────── TOML ─────────────────────────────

type Table = Record<string, unknown>;

const isTable = (v: unknown): v is Table =>
  v !== null && typeof v === "object" && !Array.isArray(v) && !(v instanceof Date);
const isTableArray = (v: unknown): v is Table[] => Array.isArray(v) && v.length > 0 && v.every(isTable);

let schemaOrder: Map<string, string[]> | undefined;
/** Key order per table path ("", "tls", "cm.throttle", "desktops.*") as the schema declares it. */
function orderOf(table: string): string[] {
  if (!schemaOrder) {
    schemaOrder = new Map();
    for (const { path } of describeKeys()) {
      const parts = path.split(".");
      for (let i = 0; i < parts.length; i++) {
        const t = parts.slice(0, i).join(".");
        const list = schemaOrder.get(t) ?? [];
        if (!list.includes(parts[i]!)) list.push(parts[i]!);
        schemaOrder.set(t, list);
      }
    }
  }
  return schemaOrder.get(table) ?? [];
}

function sortedKeys(obj: Table, schemaTable: string): string[] {
  const known = orderOf(schemaTable);
  const keys = Object.keys(obj);
  const rank = (k: string) => {
    const i = known.indexOf(k);
    return i < 0 ? known.length : i;
  };
  return keys.sort((a, b) => rank(a) - rank(b) || (a < b ? -1 : a > b ? 1 : 0));
}

const bareKey = (k: string) => (/^[A-Za-z0-9_-]+$/.test(k) ? k : JSON.stringify(k));

function tomlValue(v: unknown): string {
  if (typeof v === "string") return JSON.stringify(v);
  if (typeof v === "boolean") return String(v);
  if (typeof v === "number") {
    if (Number.isNaN(v)) return "nan";
    if (!Number.isFinite(v)) return v > 0 ? "inf" : "-inf";
    return String(v);
  }
  if (typeof v === "bigint") return v.toString();
  if (v instanceof Date) return v.toISOString();
  if (Array.isArray(v)) return `[${v.map(tomlValue).join(", ")}]`;
  if (isTable(v))
    return `{ ${Object.keys(v)
      .sort()
      .map((k) => `${bareKey(k)} = ${tomlValue(v[k])}`)
      .join(", ")} }`;
  throw new TypeError(`renderToml: cannot write a ${typeof v} value`);
}

/**
 * A configuration object as TOML, deterministically: each table's plain keys first (schema order, then unknown
 * keys alphabetically), then its sub-tables, then its arrays of tables. Empty tables are left out.
 *
 * @example renderToml({ brokerUrl: "", tls: { cert: "/c.pem" } }) // 'brokerUrl = ""\n\n[tls]\ncert = "/c.pem"\n'
 */
export function renderToml(config: Table, header = ""): string {
  const out: string[] = header ? [header.trimEnd(), ""] : [];
  const walk = (obj: Table, path: string[], schemaPath: string, arrayHeader: boolean) => {
    const keys = sortedKeys(obj, schemaPath);
    const plain = keys.filter((k) => !isTable(obj[k]) && !isTableArray(obj[k]));
    if (plain.length > 0 || arrayHeader) {
      if (path.length > 0) {
        if (out.length > 0 && out[out.length - 1] !== "") out.push("");
        const name = path.map(bareKey).join(".");
        out.push(arrayHeader ? `[[${name}]]` : `[${name}]`);
      }
      for (const k of plain) out.push(`${bareKey(k)} = ${tomlValue(obj[k])}`);
    }
    for (const k of keys.filter((k) => isTable(obj[k])))
      walk(obj[k] as Table, [...path, k], schemaPath ? `${schemaPath}.${k}` : k, false);
    for (const k of keys.filter((k) => isTableArray(obj[k])))
      for (const item of obj[k] as Table[])
        walk(item, [...path, k], `${schemaPath ? `${schemaPath}.` : ""}${k}.*`, true);
  };
  walk(config, [], "", false);
  return `${out.join("\n")}\n`;
}

export const CONFIG_HEADER = `# pcoip-cmsg configuration, written by \`pcoip-cmsg install\` / \`pcoip-cmsg configure\`.
# configure rewrites this file from its values (comments are not kept); every key is described by
# \`pcoip-cmsg config schema\` and in pcoip-cmsg.example.toml. Check it with: pcoip-cmsg config check`;

function setPath(obj: Table, path: string, value: unknown): void {
  const parts = path.split(".");
  let cur = obj;
  for (const p of parts.slice(0, -1)) {
    if (!isTable(cur[p])) cur[p] = {};
    cur = cur[p] as Table;
  }
  cur[parts[parts.length - 1]!] = value;
}

function getPath(obj: Table, path: string): unknown {
  let cur: unknown = obj;
  for (const p of path.split(".")) cur = isTable(cur) ? cur[p] : undefined;
  return cur;
}

function leaves(obj: unknown, prefix = ""): Map<string, string> {
  const out = new Map<string, string>();
  if (isTable(obj)) {
    for (const [k, v] of Object.entries(obj))
      for (const [p, s] of leaves(v, prefix ? `${prefix}.${k}` : k)) out.set(p, s);
  } else out.set(prefix, JSON.stringify(obj));
  return out;
}

/** "key: old → new" for every leaf that differs. */
export function describeChanges(before: Table, after: Table): string[] {
  const a = leaves(before);
  const b = leaves(after);
  const out: string[] = [];
  for (const k of [...new Set([...a.keys(), ...b.keys()])].sort()) {
    if (a.get(k) === b.get(k)) continue;
    out.push(`${k}: ${a.get(k) ?? "(unset)"} → ${b.get(k) ?? "(removed)"}`);
  }
  return out;
}

// ───────────────────────────── proxy EnvironmentFile ─────────────────────────────

/** systemd EnvironmentFile syntax as far as we write it: KEY=value, values optionally double-quoted. */
export function parseEnvFile(text: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const raw of text.replace(/\r\n/g, "\n").split("\n")) {
    const line = raw.trim();
    if (line === "" || line.startsWith("#") || line.startsWith(";")) continue;
    const m = /^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$/.exec(line);
    if (!m) continue;
    let v = m[2]!;
    if (v.length >= 2 && v.startsWith('"') && v.endsWith('"'))
      v = v.slice(1, -1).replace(/\\(["\\$`])/g, "$1");
    else if (v.length >= 2 && v.startsWith("'") && v.endsWith("'")) v = v.slice(1, -1);
    out.set(m[1]!, v);
  }
  return out;
}

export function renderEnvFile(vars: ReadonlyMap<string, string>): string {
  const lines = [
    "# Proxy for upstream broker traffic, read by pcoip-cmsg.service (EnvironmentFile=). Mode 0600: it may hold a",
    "# password. Written by `pcoip-cmsg install/configure --https-proxy …`.",
  ];
  for (const [k, v] of vars) lines.push(`${k}="${v.replace(/(["\\$`])/g, "\\$1")}"`);
  return `${lines.join("\n")}\n`;
}

// ───────────────────────────── plan ─────────────────────────────

export type CertificateAction =
  | { readonly kind: "keep" }
  | { readonly kind: "copy"; readonly certFile: string; readonly keyFile: string }
  | {
      readonly kind: "generated";
      readonly cert: string;
      readonly key: string;
      readonly names: readonly string[];
    };

export interface ConfigurationPlan {
  readonly before: Table;
  readonly after: Table;
  readonly text: string;
  readonly changes: readonly string[];
  readonly certificate: CertificateAction;
  /** A CA file to copy into certs/ca.pem. */
  readonly caFrom: string | undefined;
  readonly licenseCertFrom: string | undefined;
  readonly licenseKeyFrom: string | undefined;
  /** New proxy.env text, or undefined to leave the file as it is. */
  readonly proxyEnvText: string | undefined;
  readonly proxyChanged: boolean;
  readonly warnings: readonly string[];
}

export interface PlanInput {
  readonly layout: InstallLayout;
  readonly settings: VendorSettings;
  /** The installed config object (parsed TOML), or undefined for a fresh one. */
  readonly existing: Table | undefined;
  /** install: unknown keys are errors; configure: warnings, and they are kept. */
  readonly strict: boolean;
  /** install keeps an existing certificate with --self-signed (upgrades keep certificates); configure replaces it. */
  readonly replaceCertificate: boolean;
}

/** The settings of a fresh install; flags are applied on top. */
export function freshConfig(layout: InstallLayout): Table {
  const h = layout.host;
  return {
    enableSecurityGateway: true,
    enableCollaboration: true,
    enableIpv6: false,
    externalPcoipIp: [],
    hostAddress: [],
    brokerUrl: "",
    licenseServerUrl: "",
    usersFile: h.usersFile,
    dataDir: h.stateDir,
    tls: { cert: h.certFile, key: h.keyFile, caCert: "" },
  };
}

/** Reads and parses the installed config; undefined when there is none. */
export function readInstalledConfig(
  layout: InstallLayout,
): { ok: true; raw: Table | undefined } | { ok: false; error: string } {
  const file = layout.disk.configFile;
  if (!existsSync(file)) return { ok: true, raw: undefined };
  try {
    return { ok: true, raw: Bun.TOML.parse(readFileSync(file, "utf8").replace(/\r\n/g, "\n")) as Table };
  } catch (e) {
    return {
      ok: false,
      error: `reading ${file}: not valid TOML: ${(e as Error).message}: fix the file (pcoip-cmsg config check --config ${file}) or move it away`,
    };
  }
}

/**
 * Everything configure/install will write, checked before a single byte is written: certificate rules, CA and
 * license files readable, proxy settings parseable, and the resulting config valid. Errors are complete sentences.
 */
export async function planConfiguration(
  input: PlanInput,
): Promise<{ ok: true; plan: ConfigurationPlan } | { ok: false; errors: string[] }> {
  const { layout, settings: s } = input;
  const errors = conflicts(s);
  const warnings: string[] = [];
  const before = input.existing ?? {};
  const after = structuredClone(input.existing ?? freshConfig(layout)) as Table;
  const edits: FlagValue[] = configEdits(s, layout.host);
  for (const e of edits) setPath(after, e.path, e.value);

  const hostAddress = (getPath(after, "hostAddress") as string[] | undefined) ?? [];
  const existingCa = String(getPath(before, "tls.caCert") ?? "");
  const caForCheck =
    s.caCert !== undefined ? s.caCert || undefined : existingCa ? layout.onDisk(existingCa) : undefined;

  if (s.caCert) {
    const ca = loadCaBundle(s.caCert);
    if (!ca.ok) errors.push(problemText(ca.error));
    else warnings.push(...ca.warnings);
  }

  let certificate: CertificateAction = { kind: "keep" };
  if (s.sslCert !== undefined && s.sslKey !== undefined) {
    const r = loadCertificatePair({
      certFile: s.sslCert,
      keyFile: s.sslKey,
      ...(caForCheck && existsSync(caForCheck) ? { caFile: caForCheck } : {}),
      expectedNames: hostAddress,
    });
    if (!r.ok) errors.push(problemText(r.error));
    else {
      warnings.push(...r.pair.warnings);
      certificate = { kind: "copy", certFile: s.sslCert, keyFile: s.sslKey };
    }
  } else if (s.selfSigned === true) {
    const present = existsSync(layout.disk.certFile) && existsSync(layout.disk.keyFile);
    if (present && !input.replaceCertificate) {
      warnings.push(
        `kept the existing certificate ${layout.host.certFile}; \`pcoip-cmsg configure --self-signed\` replaces it`,
      );
    } else if (errors.length === 0) {
      try {
        const pair = await generateSelfSigned({ hostAddresses: hostAddress });
        certificate = {
          kind: "generated",
          ...pair,
          names: hostAddress.length ? hostAddress : ["localhost", "127.0.0.1", "::1"],
        };
      } catch (e) {
        errors.push(`--host-address: ${(e as Error).message}: give IP addresses or DNS names`);
      }
    }
  }
  if (certificate.kind === "keep" && s.hostAddress !== undefined) {
    const certFile = layout.onDisk(String(getPath(after, "tls.cert") ?? layout.host.certFile));
    if (existsSync(certFile)) {
      const pem = readFileSync(certFile, "utf8");
      const uncovered = hostAddress.filter((h) => !certificateCovers(pem, h));
      if (uncovered.length > 0)
        warnings.push(
          `the installed certificate does not cover ${uncovered.join(", ")}: clients will refuse it under that name; ` +
            "run `pcoip-cmsg configure --self-signed` or give --ssl-cert/--ssl-key for these names",
        );
    }
  }

  for (const [flag, file] of [
    ["--trusted-license-cert", s.trustedLicenseCert],
    ["--trusted-license-cert-key", s.trustedLicenseCertKey],
  ] as const) {
    if (file === undefined) continue;
    try {
      readFileSync(file);
    } catch (e) {
      errors.push(
        `${flag} ${file}: cannot be read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message}): give a readable file`,
      );
    }
  }
  if (s.trustedLicenseCert !== undefined || s.trustedLicenseCertKey !== undefined)
    warnings.push(
      "--trusted-license-cert(-key) are stored in [license] for compatibility and have no effect",
    );

  const proxy = planProxyEnv(layout, s);
  if (!proxy.ok) errors.push(proxy.error);

  const text = renderToml(after, CONFIG_HEADER);
  const check = loadConfig({ text, file: layout.host.configFile, strict: input.strict });
  if (!check.ok) errors.push(...check.errors.map((e) => `the resulting configuration is not valid: ${e}`));
  else for (const w of check.warnings) warnings.push(`${w} (kept: a newer version may know it)`);

  if (errors.length > 0) return { ok: false, errors };
  return {
    ok: true,
    plan: {
      before,
      after,
      text,
      changes: describeChanges(before, after),
      certificate,
      caFrom: s.caCert || undefined,
      licenseCertFrom: s.trustedLicenseCert,
      licenseKeyFrom: s.trustedLicenseCertKey,
      proxyEnvText: proxy.ok ? proxy.text : undefined,
      proxyChanged: proxy.ok && proxy.changed,
      warnings,
    },
  };
}

function problemText(p: Problem): string {
  return `${p.what}: ${p.cause}\n    fix: ${p.fix}`;
}

function planProxyEnv(
  layout: InstallLayout,
  s: VendorSettings,
): { ok: true; text: string | undefined; changed: boolean } | { ok: false; error: string } {
  if (
    s.httpsProxy === undefined &&
    s.httpsProxyUsername === undefined &&
    s.httpsProxyPasswordFile === undefined
  )
    return { ok: true, text: undefined, changed: false };
  const file = layout.disk.proxyEnv;
  const oldText = existsSync(file) ? readFileSync(file, "utf8") : "";
  const vars = parseEnvFile(oldText);
  if (s.httpsProxy === "") {
    for (const k of ["HTTPS_PROXY", "HTTPS_PROXY_USERNAME", "HTTPS_PROXY_PASSWORD"]) vars.delete(k);
  } else {
    if (s.httpsProxy !== undefined) vars.set("HTTPS_PROXY", s.httpsProxy);
    if (s.httpsProxyUsername !== undefined) vars.set("HTTPS_PROXY_USERNAME", s.httpsProxyUsername);
    if (s.httpsProxyPasswordFile !== undefined) {
      let password: string;
      try {
        password = readFileSync(s.httpsProxyPasswordFile, "utf8").split(/\r?\n/)[0] ?? "";
      } catch (e) {
        return {
          ok: false,
          error: `--https-proxy-password-file ${s.httpsProxyPasswordFile}: cannot be read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message}): give a readable file`,
        };
      }
      if (password === "")
        return {
          ok: false,
          error: `--https-proxy-password-file ${s.httpsProxyPasswordFile}: the first line is empty: write the password on it`,
        };
      vars.set("HTTPS_PROXY_PASSWORD", password);
    }
    if (!vars.get("HTTPS_PROXY"))
      return {
        ok: false,
        error: "--https-proxy-username/--https-proxy-password-file need a proxy: give --https-proxy URL",
      };
    const parsed = proxyFromEnv(Object.fromEntries(vars));
    if (!parsed.ok) return { ok: false, error: problemText(parsed.error) };
  }
  const text = renderEnvFile(vars);
  return { ok: true, text, changed: text !== oldText };
}

// ───────────────────────────── apply ─────────────────────────────

/** Owner of the files the service reads; undefined when staging (no chown: the account is not on this host). */
export interface Ownership {
  readonly uid: number;
  readonly gid: number;
}

function own(file: string, owner: Ownership | undefined, uid: "root" | "service"): void {
  if (!owner) return;
  chownSync(file, uid === "root" ? 0 : owner.uid, owner.gid);
}

export interface ApplyResult {
  readonly ok: boolean;
  readonly problem?: Problem;
}

/**
 * Writes the plan: directories, certificates (root:pcoip-cmsg 0640), CA and license copies, the users file
 * (empty, 0600, the service's) when missing, the config (root:pcoip-cmsg 0640; the old one kept as .previous)
 * and proxy.env (root 0600). Ownership is set only when `owner` is given.
 */
export function applyConfiguration(
  plan: ConfigurationPlan,
  layout: InstallLayout,
  owner: Ownership | undefined,
  report: Reporter,
): ApplyResult {
  const d = layout.disk;
  const h = layout.host;
  const step = (what: string, fn: () => void): ApplyResult => {
    try {
      fn();
      return { ok: true };
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      return {
        ok: false,
        problem: {
          what,
          cause: err.code ? `${err.code}: ${err.message}` : err.message,
          fix:
            err.code === "EACCES" || err.code === "EPERM"
              ? "run as root (sudo)"
              : "check the path and free space, then run again",
        },
      };
    }
  };
  const steps: [string, () => void][] = [
    [
      `creating ${h.configDir}, ${h.certsDir} and ${h.stateDir}`,
      () => {
        for (const [dir, mode, who] of [
          [d.configDir, 0o750, "root"],
          [d.certsDir, 0o750, "root"],
          [d.stateDir, 0o750, "service"],
        ] as const) {
          // Parents get the usual 0755; only our own folders are closed to other users.
          mkdirSync(dirname(dir), { recursive: true });
          if (!existsSync(dir)) mkdirSync(dir, { mode });
          chmodSync(dir, mode);
          own(dir, owner, who);
        }
      },
    ],
  ];
  const c = plan.certificate;
  if (c.kind === "copy")
    steps.push([
      `copying the certificate to ${h.certFile} and ${h.keyFile}`,
      () => {
        writeFileAtomic(d.certFile, readFileSync(c.certFile), 0o640);
        writeFileAtomic(d.keyFile, readFileSync(c.keyFile), 0o640);
        own(d.certFile, owner, "root");
        own(d.keyFile, owner, "root");
        report.done(
          `certificate ${c.certFile} → ${h.certFile}, key → ${h.keyFile} (0640 root:${SERVICE_USER})`,
        );
      },
    ]);
  if (c.kind === "generated")
    steps.push([
      `writing the self-signed certificate ${h.certFile}`,
      () => {
        writeFileAtomic(d.certFile, c.cert, 0o640);
        writeFileAtomic(d.keyFile, c.key, 0o640);
        own(d.certFile, owner, "root");
        own(d.keyFile, owner, "root");
        report.done(`self-signed RSA-3072 certificate for ${c.names.join(", ")} → ${h.certFile}`);
      },
    ]);
  for (const [from, to, toHost, label] of [
    [plan.caFrom, d.caFile, h.caFile, "CA certificate"],
    [plan.licenseCertFrom, d.licenseCertFile, h.licenseCertFile, "trusted-license certificate (no effect)"],
    [plan.licenseKeyFrom, d.licenseKeyFile, h.licenseKeyFile, "trusted-license key (no effect)"],
  ] as const) {
    if (!from) continue;
    steps.push([
      `copying ${from} to ${toHost}`,
      () => {
        writeFileAtomic(to, readFileSync(from), 0o640);
        own(to, owner, "root");
        report.done(`${label} ${from} → ${toHost}`);
      },
    ]);
  }
  const usersHost = String(getPath(plan.after, "usersFile") ?? h.usersFile);
  const usersDisk = layout.onDisk(usersHost);
  steps.push([
    `creating the users file ${usersHost}`,
    () => {
      if (existsSync(usersDisk)) {
        report.note(`kept the users file ${usersHost}`);
        return;
      }
      mkdirSync(dirname(usersDisk), { recursive: true });
      writeFileSync(usersDisk, "", { mode: 0o600 });
      chmodSync(usersDisk, 0o600);
      own(usersDisk, owner, "service");
      report.done(
        `users file ${usersHost} (empty, 0600, owned by ${SERVICE_USER}); add accounts with \`pcoip-cmsg user add NAME\``,
      );
    },
  ]);
  steps.push([
    `writing ${h.configFile}`,
    () => {
      const old = existsSync(d.configFile) ? readFileSync(d.configFile, "utf8") : undefined;
      if (old === plan.text) {
        report.note(`${h.configFile} unchanged`);
        return;
      }
      if (old !== undefined) {
        writeFileAtomic(`${d.configFile}.previous`, old, 0o640);
        own(`${d.configFile}.previous`, owner, "root");
      }
      writeFileAtomic(d.configFile, plan.text, 0o640);
      own(d.configFile, owner, "root");
      report.done(
        old === undefined
          ? `config ${h.configFile} (0640 root:${SERVICE_USER})`
          : `config ${h.configFile} rewritten from its values (comments are not kept; the old file is ${h.configFile}.previous)`,
      );
      if (old !== undefined) for (const ch of plan.changes) report.note(`  ${ch}`);
    },
  ]);
  if (plan.proxyEnvText !== undefined)
    steps.push([
      `writing ${h.proxyEnv}`,
      () => {
        if (!plan.proxyChanged) {
          report.note(`${h.proxyEnv} unchanged`);
          return;
        }
        writeFileAtomic(d.proxyEnv, plan.proxyEnvText!, 0o600);
        if (owner) chownSync(d.proxyEnv, 0, 0);
        report.done(`proxy settings → ${h.proxyEnv} (0600 root)`);
      },
    ]);
  for (const [what, fn] of steps) {
    const r = step(what, fn);
    if (!r.ok) return r;
  }
  return { ok: true };
}

// ───────────────────────────── the command ─────────────────────────────

const HELP = `Usage: pcoip-cmsg configure [flags]

Changes the installed configuration (/etc/pcoip-cmsg/pcoip-cmsg.toml) with the vendor's flags and reloads the
service (systemctl reload ${SERVICE_NAME}). Only the keys named by the flags change; the file is rewritten from
its values in a fixed order (comments are not kept; the old file is kept as pcoip-cmsg.toml.previous).
Certificates are checked before anything is written. Proxy changes need a restart (the command says so).

Flags:
${formatFlags(CONFIGURE_FLAGS)}

${VENDOR_NOTES}
`;

export interface ConfigureDeps {
  readonly run: CommandRunner;
  readonly systemdRunning: () => boolean;
}

export const configureCommand: CommandMain = (argv, io) =>
  runConfigure(argv, io, { run: runCommand, systemdRunning });

export async function runConfigure(argv: string[], io: CliIo, deps: ConfigureDeps): Promise<number> {
  const stripped = stripDockerFlags(argv);
  for (const n of stripped.notes) io.stderr(`pcoip-cmsg configure: ${n}\n`);
  const parsed = parseArgs(stripped.argv, CONFIGURE_FLAGS);
  if (!parsed.ok) {
    io.stderr(
      `pcoip-cmsg configure: ${parsed.error}\n\nRun \`pcoip-cmsg configure --help\` for the flags.\n`,
    );
    return 2;
  }
  if (parsed.args.flags.get("help") === true) {
    io.stdout(HELP);
    return 0;
  }
  if (parsed.args.positional.length > 0) {
    io.stderr(`pcoip-cmsg configure: unexpected argument "${parsed.args.positional[0]}"\n`);
    return 2;
  }
  const settings = readVendorSettings(parsed.args);
  if (settings.darksiteBundlePath !== undefined) {
    io.stderr(
      "pcoip-cmsg configure: --darksite-bundle-path installs a binary: use `pcoip-cmsg install --darksite-bundle-path PATH`\n",
    );
    return 2;
  }
  const layout = installLayout(String(parsed.args.flags.get("root") ?? "/"));
  const existing = readInstalledConfig(layout);
  if (!existing.ok) {
    io.stderr(`pcoip-cmsg configure: ${existing.error}\n`);
    return 1;
  }
  if (!existing.raw) {
    io.stderr(
      `pcoip-cmsg configure: ${layout.disk.configFile} does not exist: install first (pcoip-cmsg install …)\n`,
    );
    return 1;
  }
  const log = openInstallLog(layout.disk.installLog, "configure", io);
  log.line(`configure ${stripped.argv.join(" ")}`);
  const report = loggedReporter(createReporter(io), log);
  if (settings.ignoreDiskReq !== undefined) report.note("--ignore-disk-req applies to install only; ignored");
  if (settings.acceptPolicies !== undefined)
    report.note("--accept-policies applies to install only; ignored");

  const planned = await planConfiguration({
    layout,
    settings,
    existing: existing.raw,
    strict: false,
    replaceCertificate: true,
  });
  if (!planned.ok) {
    io.stderr(
      `pcoip-cmsg configure: refused; nothing was changed:\n${planned.errors.map((e) => `  - ${e}\n`).join("")}`,
    );
    return 1;
  }
  const plan = planned.plan;
  for (const w of plan.warnings) report.warn(w);
  const after = loadConfig({ text: plan.text, strict: false });
  const advice = after.ok ? noDesktopsAdvice(after.config) : undefined;
  if (advice) report.warn(advice);
  io.stdout(`pcoip-cmsg configure${layout.staged ? ` (staged under ${layout.root})` : ""}:\n`);
  log.commit();
  const owner = layout.staged ? undefined : await serviceOwnership(deps.run);
  if (layout.staged) report.would(`chown root:${SERVICE_USER} on the files written`);
  const applied = applyConfiguration(plan, layout, owner, report);
  if (!applied.ok) {
    io.stderr(`pcoip-cmsg configure: ${formatProblem(applied.problem!)}`);
    return 1;
  }
  if (after.ok)
    try {
      syncForwardingLine(layout, after.config, report, true);
    } catch (e) {
      report.warn(
        `${layout.host.sysctlFile}: the forwarding line could not be removed (${(e as Error).message}); remove net.ipv4.ip_forward = 1 from it by hand`,
      );
    }
  const somethingChanged =
    plan.changes.length > 0 || plan.certificate.kind !== "keep" || plan.caFrom !== undefined;
  if (!somethingChanged && !plan.proxyChanged) {
    report.note("nothing changed");
    return 0;
  }
  return (await reloadService(layout, deps, report, plan.proxyChanged, io)) ? 0 : 1;
}

/** uid of the service account and gid of its group, when it exists on this host. */
export async function serviceOwnership(run: CommandRunner): Promise<Ownership | undefined> {
  const u = await lookupUser(run, SERVICE_USER);
  return u ? { uid: u.uid, gid: u.gid } : undefined;
}

async function reloadService(
  layout: InstallLayout,
  deps: ConfigureDeps,
  report: Reporter,
  needsRestart: boolean,
  io: CliIo,
): Promise<boolean> {
  const args = ["reload", SERVICE_NAME];
  const restartNote = `proxy settings are read when the service starts: run \`systemctl restart ${SERVICE_NAME}\` when convenient (live sessions end)`;
  if (layout.staged) {
    report.would(commandLine("systemctl", args));
    return true;
  }
  if (!deps.systemdRunning()) {
    report.note("systemd is not running: send `pcoip-cmsg run` SIGHUP (or restart it) to apply");
    return true;
  }
  const active = await deps.run("systemctl", ["is-active", "--quiet", SERVICE_NAME]);
  if (!active.ok) {
    report.note(
      `${SERVICE_NAME} is not running; the new settings apply when it starts (systemctl start ${SERVICE_NAME})`,
    );
    return true;
  }
  if (needsRestart) report.note(restartNote);
  const r = await deps.run("systemctl", args);
  if (!r.ok) {
    io.stderr(
      `pcoip-cmsg configure: ${formatProblem(
        commandProblem(
          "systemctl",
          args,
          r,
          `see \`journalctl -u ${SERVICE_NAME} -n 50\`; the service keeps its old settings when the new file is refused`,
        ),
      )}`,
    );
    return false;
  }
  report.done(`reloaded ${SERVICE_NAME} (live sessions keep running)`);
  return true;
}
