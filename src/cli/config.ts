/** `pcoip-cmsg config check | schema`: validate a file without starting anything; print the key reference. */
import { describeKeys, loadConfig } from "../config/load.ts";
import { type FlagSpec, flagString, formatFlags, parseArgs } from "./args.ts";
import type { CliIo } from "./io.ts";

export const DEFAULT_CONFIG_FILE = "/etc/pcoip-cmsg/pcoip-cmsg.toml";

const FLAGS: FlagSpec[] = [
  {
    name: "config",
    kind: "string",
    value: "FILE",
    help: `configuration file (default ${DEFAULT_CONFIG_FILE})`,
  },
  { name: "help", kind: "boolean", help: "this text" },
];

const HELP = `Usage:
  pcoip-cmsg config check [--config FILE]   validate FILE (strict: unknown keys are errors); exit 0 when valid
  pcoip-cmsg config schema                  every key with its type, default, allowed values and variable

Environment variables PCOIP_CMSG_<SECTION>_<KEY> override the file (e.g. PCOIP_CMSG_SG_MAXSESSIONS=8000).

Options:
${formatFlags(FLAGS)}
`;

export async function runConfigCommand(argv: string[], io: CliIo): Promise<number> {
  const parsed = parseArgs(argv, FLAGS);
  if (!parsed.ok) {
    io.stderr(`pcoip-cmsg config: ${parsed.error}\n\n${HELP}`);
    return 2;
  }
  const [sub] = parsed.args.positional;
  if (parsed.args.flags.get("help") === true || sub === undefined || sub === "help") {
    io.stdout(HELP);
    return sub === undefined && parsed.args.flags.get("help") !== true ? 2 : 0;
  }
  if (sub === "schema") {
    io.stdout(renderSchema());
    return 0;
  }
  if (sub === "check") {
    const file = flagString(parsed.args, "config") ?? DEFAULT_CONFIG_FILE;
    const r = loadConfig({ file, env: process.env, strict: true });
    for (const w of r.warnings) io.stderr(`warning: ${w}\n`);
    if (!r.ok) {
      for (const e of r.errors) io.stderr(`error: ${e}\n`);
      io.stderr(`config check: ${file} has ${r.errors.length} error(s); nothing was changed\n`);
      return 1;
    }
    io.stdout(`config OK: ${file}\n`);
    return 0;
  }
  io.stderr(`pcoip-cmsg config: unknown subcommand "${sub}"\n\n${HELP}`);
  return 2;
}

export function renderSchema(): string {
  const out: string[] = [
    "# pcoip-cmsg configuration reference (TOML; [section] keys shown as section.key)",
    "",
  ];
  for (const k of describeKeys()) {
    out.push(`${k.path}  (${k.kind}${k.allowed ? `: ${k.allowed.join(" | ")}` : ""})`);
    if (k.description) out.push(`    ${k.description}`);
    if (k.defaultValue !== undefined) out.push(`    default: ${JSON.stringify(k.defaultValue)}`);
    if (k.envName) out.push(`    env: ${k.envName}`);
    out.push("");
  }
  return `${out.join("\n")}`;
}
