/**
 * The argv parser every command uses: `--flag value`, `--flag=value`, booleans as bare `--flag` or
 * `--flag=true|false` (the vendor tool's style), repeated flags collected into lists, positional words kept in
 * order. Unknown flags are errors with a did-you-mean, so a typo never silently becomes a default.
 */
import { nearest } from "../config/load.ts";

export interface FlagSpec {
  readonly name: string; // without the dashes
  readonly kind: "string" | "boolean" | "list";
  readonly help: string;
  /** Shown in help: what the value looks like. */
  readonly value?: string;
}

export interface ParsedArgs {
  readonly flags: ReadonlyMap<string, string | boolean | string[]>;
  readonly positional: readonly string[];
}

export type ArgsResult = { ok: true; args: ParsedArgs } | { ok: false; error: string };

export function parseArgs(argv: readonly string[], specs: readonly FlagSpec[]): ArgsResult {
  const byName = new Map(specs.map((s) => [s.name, s]));
  const flags = new Map<string, string | boolean | string[]>();
  const positional: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const word = argv[i]!;
    if (word === "--") {
      positional.push(...argv.slice(i + 1));
      break;
    }
    if (!word.startsWith("--") || word === "--") {
      positional.push(word);
      continue;
    }
    const eq = word.indexOf("=");
    const name = word.slice(2, eq < 0 ? undefined : eq);
    const spec = byName.get(name);
    if (!spec) {
      const guess = nearest(name, [...byName.keys()]);
      return { ok: false, error: `unknown option --${name}${guess ? ` (did you mean --${guess}?)` : ""}` };
    }
    let value: string | undefined = eq < 0 ? undefined : word.slice(eq + 1);
    if (spec.kind === "boolean") {
      if (value === undefined) {
        const next = argv[i + 1];
        if (next === "true" || next === "false") {
          value = next;
          i++;
        }
      }
      if (value === undefined || /^(true|yes|1)$/i.test(value)) flags.set(name, true);
      else if (/^(false|no|0)$/i.test(value)) flags.set(name, false);
      else return { ok: false, error: `--${name}=${value}: must be true or false` };
      continue;
    }
    if (value === undefined) {
      const next = argv[i + 1];
      if (next === undefined || (next.startsWith("--") && next.length > 2))
        return { ok: false, error: `--${name} needs a value${spec.value ? ` (${spec.value})` : ""}` };
      value = next;
      i++;
    }
    if (spec.kind === "list") {
      const prev = flags.get(name);
      flags.set(name, [...(Array.isArray(prev) ? prev : []), value]);
    } else flags.set(name, value);
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

export function flagList(args: ParsedArgs, name: string): string[] {
  const v = args.flags.get(name);
  return Array.isArray(v) ? v : [];
}

/** The option table of a command's --help. */
export function formatFlags(specs: readonly FlagSpec[]): string {
  const rows = specs.map(
    (s) =>
      [
        `--${s.name}${s.kind === "boolean" ? "[=true|false]" : ` ${s.value ?? "VALUE"}`}${s.kind === "list" ? " (repeatable)" : ""}`,
        s.help,
      ] as const,
  );
  const width = Math.min(44, Math.max(...rows.map(([l]) => l.length)));
  return rows.map(([l, h]) => `  ${l.padEnd(width)}  ${h}`).join("\n");
}
