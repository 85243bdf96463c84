/**
 * `pcoip-cmsg config check | schema`: validate a configuration without starting anything (strict: unknown keys
 * are errors), and print the reference of every key. Exit codes: 0 valid, 1 invalid, 2 usage error.
 *
 * @example
 * const code = await runConfigCommand(["check", "--config", "config/dev.toml"], processIo);
 */

import { describeKeys, type KeyInfo, loadConfig, nearest } from "../config/load.ts";
import type { Config } from "../config/schema.ts";
import { tls13Note, validateCipherList } from "../tls/policy.ts";
import { explainTrust, outgoingChecks } from "../tls/provision.ts";
import { type FlagSpec, flagBool, flagString, formatFlags, parseCommandArgs } from "./args.ts";
import type { CliIo } from "./io.ts";

export const DEFAULT_CONFIG_FILE = "/etc/pcoip-cmsg/pcoip-cmsg.toml";

/** --config FILE, as every command that reads the configuration spells it. */
export const CONFIG_FLAG: FlagSpec = {
  name: "config",
  kind: "string",
  value: "FILE",
  help: `configuration file (default ${DEFAULT_CONFIG_FILE})`,
};

export interface ConfigCommandOptions {
  /** The environment whose PCOIP_CMSG_* variables override the file (default: this process's). */
  readonly env?: Readonly<Record<string, string | undefined>>;
}

const CHECK_FLAGS: FlagSpec[] = [CONFIG_FLAG, { name: "help", kind: "boolean", help: "this text" }];

const SCHEMA_FLAGS: FlagSpec[] = [
  { name: "json", kind: "boolean", help: "print the keys as JSON (for tools)" },
  { name: "help", kind: "boolean", help: "this text" },
];

const HELP = `Usage:
  pcoip-cmsg config check [--config FILE]   validate FILE; unknown keys are errors; exit 0 when valid
  pcoip-cmsg config schema [--json]         every key: type, default, allowed values, environment variable

Precedence: built-in defaults < FILE < environment PCOIP_CMSG_<SECTION>_<KEY> (e.g. PCOIP_CMSG_SG_MAXSESSIONS=8000)
< command-line flags. \`config check\` applies this shell's PCOIP_CMSG_* variables too.
`;

const CHECK_HELP = `Usage: pcoip-cmsg config check [--config FILE]

Validates FILE as \`pcoip-cmsg run\` would load it, but strictly: an unknown key or PCOIP_CMSG_* variable is an
error (\`run\` only warns, so an older binary still starts on a newer file). Every error names FILE:LINE or the
variable, the key, the bad value and what is allowed. Exit status: 0 valid, 1 invalid, 2 usage error.

Options:
${formatFlags(CHECK_FLAGS)}
`;

const SCHEMA_HELP = `Usage: pcoip-cmsg config schema [--json]

Prints every configuration key with its type, default, allowed values, description and environment variable.

Options:
${formatFlags(SCHEMA_FLAGS)}
`;

export async function runConfigCommand(
  argv: string[],
  io: CliIo,
  options: ConfigCommandOptions = {},
): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub === undefined || sub === "--help" || sub === "-h" || sub === "help") {
    (sub === undefined ? io.stderr : io.stdout)(HELP);
    return sub === undefined ? 2 : 0;
  }
  if (sub === "check") return check(rest, io, options.env ?? process.env);
  if (sub === "schema") return schema(rest, io);
  const guess = nearest(sub, ["check", "schema"]);
  io.stderr(
    `pcoip-cmsg config: unknown subcommand "${sub}"${guess ? ` (did you mean "${guess}"?)` : ""}\n\n${HELP}`,
  );
  return 2;
}

function check(argv: string[], io: CliIo, env: Readonly<Record<string, string | undefined>>): number {
  const args = parseCommandArgs("config check", argv, CHECK_FLAGS, CHECK_HELP, io);
  if (typeof args === "number") return args;
  if (args.positional.length > 0) {
    io.stderr(
      `pcoip-cmsg config check: unexpected "${args.positional[0]}": name the file with --config FILE\n`,
    );
    return 2;
  }
  const file = flagString(args, "config") ?? DEFAULT_CONFIG_FILE;
  const r = loadConfig({ file, env, strict: true });
  const errors = r.ok ? [] : [...r.errors];
  const warnings = [...r.warnings];
  // What tls.caCert and tls.trustedCa each do here (the two used to be one key: issue 18).
  const trust = r.ok ? explainTrust(r.config.tls, outgoingChecks(r.config)) : undefined;
  if (trust?.deprecation) warnings.push(`${file}: ${trust.deprecation}`);
  if (r.ok) {
    // The TLS library decides which suites exist, so this rule lives in tls/policy.ts, not in the schema.
    const suites = validateCipherList(r.config.tls.ciphers);
    if (suites.ok) warnings.push(...suites.warnings.map((w) => `${file}: tls.ciphers: ${w}`));
    else
      errors.push(
        `${file}: tls.ciphers: ${suites.error.what}: ${suites.error.cause}; fix: ${suites.error.fix}`,
      );
  }
  for (const w of warnings) io.stderr(`warning: ${w}\n`);
  if (errors.length > 0) {
    for (const e of errors) io.stderr(`error: ${e}\n`);
    io.stderr(`config check failed: ${file}: ${errors.length} error${errors.length === 1 ? "" : "s"}\n`);
    return 1;
  }
  io.stdout(`config OK: ${file}\n`);
  for (const n of trust?.notes ?? []) io.stdout(`note: ${n}\n`);
  io.stdout(`note: ${tls13Note()}\n`);
  if (r.ok && r.config.enableSecurityGateway) io.stdout(`note: ${agentTargetsNote(r.config)}\n`);
  return 0;
}

/** What sg.agentPorts and sg.agentNetworks allow with this configuration, in the administrator's words. */
export function agentTargetsNote(c: Readonly<Config>): string {
  const ports = `sg.agentPorts = [${c.sg.agentPorts.join(", ")}]`;
  const nets = `sg.agentNetworks = [${c.sg.agentNetworks.join(", ")}]`;
  const who = c.brokerUrl
    ? `the upstream broker's agents must have an address in ${nets}`
    : `each desktop's session must stay on its own agent host ([[desktops]] agent); ${nets} applies to an upstream broker`;
  return (
    `the SG relays a session only to its agent: the port the agent names must be in ${ports}, never one of this ` +
    `appliance's own listeners, and ${who}. Anything else is refused (ALLOC_FAILED_TO_ALLOCATE_AGENT, one log line ` +
    `naming the key). sg.agentNetworks holds no loopback by default: a test setup with an upstream broker on ` +
    `loopback adds "127.0.0.0/8".`
  );
}

function schema(argv: string[], io: CliIo): number {
  const args = parseCommandArgs("config schema", argv, SCHEMA_FLAGS, SCHEMA_HELP, io);
  if (typeof args === "number") return args;
  io.stdout(flagBool(args, "json") ? `${JSON.stringify(describeKeys(), null, 2)}\n` : renderSchema());
  return 0;
}

/** The human reference: one block per key, grouped under its [section]. */
export function renderSchema(): string {
  const out = [
    "# pcoip-cmsg configuration reference",
    `# One TOML file (default ${DEFAULT_CONFIG_FILE}); keys of a [section] are shown as section.key.`,
    "# Precedence: built-in defaults < file < environment variable < command-line flag.",
  ];
  let section = "";
  for (const k of describeKeys()) {
    const parts = k.path.split(".");
    const here = parts.length > 1 ? parts.slice(0, -1).join(".") : "";
    if (here !== section) {
      section = here;
      if (here !== "") out.push("", here.endsWith(".*") ? `[[${here.slice(0, -2)}]]` : `[${here}]`);
    }
    out.push("", k.path);
    out.push(`    type:     ${typeText(k)}`);
    out.push(
      `    default:  ${k.defaultValue === undefined ? "(none: required)" : JSON.stringify(k.defaultValue)}`,
    );
    out.push(`    env:      ${k.envName ?? "(none: set in the file)"}`);
    if (k.description) out.push(`    ${k.description}`);
  }
  return `${out.join("\n")}\n`;
}

function typeText(k: KeyInfo): string {
  const allowed = k.allowed?.map((a) => JSON.stringify(a)).join(" | ");
  const format = k.format ? `: ${k.format}` : "";
  switch (k.kind) {
    case "integer":
      return `integer, ${k.min} to ${k.max}`;
    case "boolean":
      return "boolean: true | false";
    case "enum":
      return `one of ${allowed}`;
    case "list":
      return allowed ? `list of ${allowed}` : `list of strings${format}`;
    case "string-or-list":
      return `string or list of strings${format}`;
    case "table-list":
      return `list of tables, one [[${k.path}]] each`;
    default:
      return `string${format}`;
  }
}
