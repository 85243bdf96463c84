/**
 * The argv parser every command uses: `--flag value`, `--flag=value`, booleans as bare `--flag`, `--flag=true|false`
 * or `--flag true|false` (the vendor tool's style), list flags collected in order when repeated, positional words
 * kept in order (`--` ends the flags). Unknown flags are errors with a did-you-mean, and a single-valued flag given
 * twice with different values is an error, so a typo or a pasted duplicate never silently becomes a setting.
 *
 * @example
 * const r = parseArgs(["check", "--config=/etc/x.toml"], [{ name: "config", kind: "string", help: "file" }]);
 * // { ok: true, args: { flags: Map { "config" => "/etc/x.toml" }, positional: ["check"] } }
 */
import { nearest } from "../config/keys.ts";
import { PRODUCT_NAME } from "../version.ts";
import type { CliIo } from "./io.ts";

export interface FlagSpec {
  /** Without the dashes: "broker-url". */
  readonly name: string;
  /** "list": may be repeated, values collected in order. */
  readonly kind: "string" | "boolean" | "list";
  readonly help: string;
  /** Shown in help: what the value looks like ("FILE", "URL"). */
  readonly value?: string;
}

export interface ParsedArgs {
  readonly flags: ReadonlyMap<string, string | boolean | string[]>;
  readonly positional: readonly string[];
}

export type ArgsResult = { ok: true; args: ParsedArgs } | { ok: false; error: string };

const TRUE = /^(true|yes|1)$/i;
const FALSE = /^(false|no|0)$/i;

export function parseArgs(argv: readonly string[], specs: readonly FlagSpec[]): ArgsResult {
  const byName = new Map(specs.map((s) => [s.name, s]));
  const flags = new Map<string, string | boolean | string[]>();
  const positional: string[] = [];
  const fail = (error: string): ArgsResult => ({ ok: false, error });

  for (let i = 0; i < argv.length; i++) {
    let word = argv[i]!;
    if (word === "--") {
      positional.push(...argv.slice(i + 1));
      break;
    }
    if (word === "-h" && byName.has("help")) word = "--help";
    if (/^-[^-\d]/.test(word)) {
      return fail(`unknown option ${word}: options are spelled with two dashes (--name)`);
    }
    if (!word.startsWith("--")) {
      positional.push(word);
      continue;
    }
    const eq = word.indexOf("=");
    const name = word.slice(2, eq < 0 ? undefined : eq);
    const spec = byName.get(name);
    if (!spec) {
      const guess = nearest(name, [...byName.keys()]);
      return fail(`unknown option --${name}${guess ? ` (did you mean --${guess}?)` : ""}`);
    }
    let value: string | undefined = eq < 0 ? undefined : word.slice(eq + 1);

    if (spec.kind === "boolean") {
      const next = argv[i + 1];
      if (value === undefined && (next === "true" || next === "false")) {
        value = next;
        i++;
      }
      let b: boolean;
      if (value === undefined || TRUE.test(value)) b = true;
      else if (FALSE.test(value)) b = false;
      else return fail(`--${name}=${value}: must be true or false`);
      const prev = flags.get(name);
      if (prev !== undefined && prev !== b) return fail(`--${name} is given twice with different values`);
      flags.set(name, b);
      continue;
    }

    if (value === undefined) {
      const next = argv[i + 1];
      if (next === undefined || next.startsWith("--"))
        return fail(`--${name} needs a value${spec.value ? ` (${spec.value})` : ""}`);
      value = next;
      i++;
    }
    const prev = flags.get(name);
    if (spec.kind === "list") flags.set(name, [...(Array.isArray(prev) ? prev : []), value]);
    else if (prev !== undefined && prev !== value)
      return fail(
        `--${name} is given twice (${JSON.stringify(prev)} and ${JSON.stringify(value)}): give it once`,
      );
    else flags.set(name, value);
  }
  return { ok: true, args: { flags, positional } };
}

export function flagString(args: ParsedArgs, name: string): string | undefined {
  const v = args.flags.get(name);
  return typeof v === "string" ? v : undefined;
}

export function flagBool(args: ParsedArgs, name: string): boolean | undefined {
  const v = args.flags.get(name);
  return typeof v === "boolean" ? v : undefined;
}

/** The values of a list flag in the order given; [] when absent. */
export function flagList(args: ParsedArgs, name: string): string[] {
  const v = args.flags.get(name);
  return Array.isArray(v) ? v : [];
}

/** The option table of a command's --help. */
export function formatFlags(specs: readonly FlagSpec[]): string {
  const rows = specs.map((s) => {
    const value = s.kind === "boolean" ? "[=true|false]" : ` ${s.value ?? "VALUE"}`;
    return [`--${s.name}${value}${s.kind === "list" ? " (repeatable)" : ""}`, s.help] as const;
  });
  const width = Math.min(44, Math.max(0, ...rows.map(([l]) => l.length)));
  return rows.map(([l, h]) => `  ${l.padEnd(width)}  ${h}`).join("\n");
}

/**
 * Parses a command's argv and answers the two cases every command answers alike: a bad flag (the error, then the
 * help, on stderr: exit code 2) and --help (the help on stdout: 0). Returns that exit code, or the parsed args.
 */
export function parseCommandArgs(
  command: string,
  argv: readonly string[],
  specs: readonly FlagSpec[],
  help: string,
  io: CliIo,
): ParsedArgs | number {
  const parsed = parseArgs(argv, specs);
  if (!parsed.ok) {
    io.stderr(`${PRODUCT_NAME} ${command}: ${parsed.error}\n\n${help}`);
    return 2;
  }
  if (flagBool(parsed.args, "help") === true) {
    io.stdout(help);
    return 0;
  }
  return parsed.args;
}
