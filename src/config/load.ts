/**
 * Loading the configuration: built-in defaults < TOML file < environment (`PCOIP_CMSG_<SECTION>_<KEY>`) <
 * command-line flags, validated by the one schema. Each source is an adapter into one plain object (caddy's
 * config adapters), and every message names where the bad value came from (FILE:LINE, the variable, the flag), the
 * key, the value and what is allowed:
 *
 *   pcoip-cmsg.toml:12: sg.maxSessions = -5: must be an integer from 1 to 1000000
 *
 * Unknown keys are errors in strict mode (`config check`, `install`) and warnings otherwise (`run`), so a
 * downgraded binary still starts on a newer file. User errors are values; a throw here is a bug.
 *
 * @example
 * const r = loadConfig({ file: "/etc/pcoip-cmsg/pcoip-cmsg.toml", env: process.env, strict: true });
 * if (!r.ok) for (const e of r.errors) console.error(e);
 */
import { readFileSync } from "node:fs";
import type { z } from "zod";
import { readEnvironment } from "./env.ts";
import { describeKeys, envVarName, type KeyInfo, nearest, tableListElement, tableShape } from "./keys.ts";
import { adviceFor, type Config, configSchema, deepFreeze } from "./schema.ts";

export { describeKeys, envVarName, type KeyInfo, nearest };

export type LoadResult =
  | {
      readonly ok: true;
      readonly config: Readonly<Config>;
      /** Everything to show: `ignored` then `advice`. */
      readonly warnings: readonly string[];
      /** Lenient mode: unknown keys and variables that were skipped (a newer version may know them). */
      readonly ignored: readonly string[];
      /** Valid values that are probably not what was meant (see schema.ts adviceFor). */
      readonly advice: readonly string[];
    }
  | { readonly ok: false; readonly errors: readonly string[]; readonly warnings: readonly string[] };

/** A command-line flag's value for one key (the highest-precedence source). */
export interface FlagValue {
  /** Dotted key path, e.g. "sg.maxSessions" or "externalPcoipIp". */
  readonly path: string;
  readonly value: unknown;
  /** The flag as the user typed it, for messages ("--external-pcoip-ip"). */
  readonly flag: string;
}

export interface LoadOptions {
  /** Path of the TOML file, also the name messages use; omitted = defaults (and env, flags) only. */
  readonly file?: string;
  /** The file's text, when already read (tests, `configure` before writing). */
  readonly text?: string;
  readonly env?: Readonly<Record<string, string | undefined>>;
  readonly flags?: readonly FlagValue[];
  /** true: unknown keys and variables are errors (config check, install); false: warnings (run). */
  readonly strict: boolean;
}

/** Every key path, as `config schema` lists them ("sg.maxSessions", "desktops.*.agent"). */
export function keyPaths(): string[] {
  return describeKeys().map((k) => k.path);
}

type Source = { readonly kind: "file" } | { readonly kind: "env" | "flag"; readonly name: string };
type Raw = Record<string, unknown>;

export function loadConfig(opts: LoadOptions): LoadResult {
  const errors: string[] = [];
  const ignored: string[] = [];
  const unknownKey = (message: string) => {
    if (opts.strict) errors.push(message);
    else ignored.push(`${message}; ignored`);
  };
  const label = opts.file ?? "config";
  const keys = describeKeys();

  let text = opts.text;
  if (text === undefined && opts.file !== undefined) {
    const read = readConfigFile(opts.file);
    if (!read.ok) return { ok: false, errors: [read.error], warnings: ignored };
    text = read.text;
  }

  let raw: Raw = {};
  const lines = new Map<string, number>();
  const sources = new Map<string, Source>();
  if (text !== undefined) {
    text = text.replace(/^\uFEFF/, "").replace(/\r\n/g, "\n");
    const parsed = parseToml(text);
    if (!parsed.ok) {
      return {
        ok: false,
        errors: [`${label}${parsed.line ? `:${parsed.line}` : ""}: not valid TOML: ${parsed.error}`],
        warnings: ignored,
      };
    }
    raw = parsed.value;
    for (const [path, line] of indexTomlLines(text)) lines.set(path, line);
    for (const path of leafPaths(raw)) sources.set(path, { kind: "file" });
    const at = (path: string) => `${label}${lineSuffix(lines, path.split("."))}`;
    for (const u of unknownKeys(raw, keys)) {
      unknownKey(
        `${at(u.path)}: unknown key "${displayPath(u.path)}"${u.suggestion ? ` (did you mean "${u.suggestion}"?)` : ""}`,
      );
      deletePath(raw, u.path.split("."));
    }
  }

  const env = readEnvironment(opts.env ?? {}, keys);
  for (const u of env.unknown)
    unknownKey(
      `${u.variable}: not a configuration variable${u.suggestion ? ` (did you mean ${u.suggestion}?)` : ""}`,
    );
  for (const o of env.overrides) override(raw, sources, o.path, o.value, { kind: "env", name: o.variable });

  const known = new Set(keys.map((k) => k.path));
  for (const f of opts.flags ?? []) {
    if (!known.has(f.path)) throw new TypeError(`loadConfig: flag ${f.flag} maps to unknown key "${f.path}"`);
    override(raw, sources, f.path, f.value, { kind: "flag", name: f.flag });
  }

  const where = (path: readonly string[]) => {
    const s = sourceOf(sources, path);
    if (!s) return label;
    return s.kind === "file" ? `${label}${lineSuffix(lines, path)}` : s.name;
  };
  let defaultConfig: Config | undefined;
  const defaults = () => {
    defaultConfig ??= configSchema.parse({});
    return defaultConfig;
  };
  const parsed = configSchema.safeParse(raw);
  if (!parsed.success) {
    for (const issue of parsed.error.issues) {
      const path = issue.path.map(String);
      // A rule between keys may name a key the sources left out: show the default it had.
      const given = getPath(raw, path);
      const value = given === undefined && issue.code === "custom" ? getPath(defaults(), path) : given;
      errors.push(
        `${where(path)}: ${displayPath(path.join(".")) || "(top level)"} = ${showValue(path, value)}: ${humanMessage(issue, value)}`,
      );
    }
  }
  if (errors.length > 0 || !parsed.success) return { ok: false, errors, warnings: ignored };

  const advice = adviceFor(parsed.data).map((a) => {
    const path = a.path.map(String);
    return `${where(path)}: ${displayPath(path.join("."))}: ${a.message}`;
  });
  return { ok: true, config: deepFreeze(parsed.data), warnings: [...ignored, ...advice], ignored, advice };
}

// ── the file ─────────────────────────────────────────────────────────────────────────────────────────────────────

function readConfigFile(file: string): { ok: true; text: string } | { ok: false; error: string } {
  try {
    return { ok: true, text: readFileSync(file, "utf8") };
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? "";
    const why: Record<string, string> = {
      ENOENT: "no such file: create it from pcoip-cmsg.example.toml, or run `pcoip-cmsg install`",
      EACCES: "permission denied: the file must be readable by the user running pcoip-cmsg",
      EISDIR: "it is a directory: name the .toml file itself",
    };
    return { ok: false, error: `reading ${file}: ${why[code] ?? (e as Error).message}` };
  }
}

/**
 * Bun's TOML parser says what is wrong but not where (its error's `line` is the JavaScript caller's). The line is
 * found by parsing prefixes of the text: the error sits on the first line whose prefix fails the same way. A
 * construct left open at the end (array, multi-line string) fails every prefix from its first line on, so for those
 * the search walks back from the end instead.
 */
function parseToml(text: string): { ok: true; value: Raw } | { ok: false; error: string; line?: number } {
  const attempt = (t: string): string | undefined => {
    try {
      Bun.TOML.parse(t);
      return undefined;
    } catch (e) {
      return String((e as Error).message ?? e);
    }
  };
  try {
    return { ok: true, value: Bun.TOML.parse(text) as Raw };
  } catch (e) {
    const message = String((e as Error).message ?? e);
    const error = message.replace(/^TOML Parse error: /, "");
    const lines = text.split("\n");
    const prefix = (n: number) => `${lines.slice(0, n).join("\n")}\n`;
    const fails = (n: number) => attempt(prefix(n)) === message;
    if (!fails(lines.length)) return { ok: false, error };
    let line: number;
    // The walk back costs one parse per line; past a few thousand lines the bisection's answer has to do.
    if (/unterminated/i.test(message) && lines.length <= 5000) {
      line = lines.length;
      while (line > 1 && attempt(prefix(line - 1)) !== undefined) line--;
    } else {
      let lo = 0; // prefix(lo) does not fail this way
      let hi = lines.length; // prefix(hi) does
      while (hi - lo > 1) {
        const mid = (lo + hi) >> 1;
        if (fails(mid)) hi = mid;
        else lo = mid;
      }
      line = hi;
    }
    return { ok: false, error, line };
  }
}

/**
 * Key path → line number for every table header and key line ("desktops.1" is the second [[desktops]]), so
 * that a message can point at the line of the key, or of the nearest enclosing table when the key is missing.
 */
export function indexTomlLines(text: string): Map<string, number> {
  const index = new Map<string, number>();
  const tableCounts = new Map<string, number>();
  let table: string[] = [];
  let openString: string | undefined; // inside a multi-line string: its lines are not keys
  const remember = (path: readonly string[], line: number) => {
    for (let n = 1; n <= path.length; n++) {
      const key = path.slice(0, n).join(".");
      if (!index.has(key)) index.set(key, line);
    }
  };
  text.split("\n").forEach((raw, i) => {
    const line = raw.trim();
    if (openString) {
      if (countOf(line, openString) % 2 === 1) openString = undefined;
      return;
    }
    const arrayTable = /^\[\[\s*(.+?)\s*\]\]/.exec(line);
    const plainTable = arrayTable ? undefined : /^\[\s*([^[\]]+?)\s*\]/.exec(line);
    if (arrayTable) {
      const name = splitDottedKey(arrayTable[1]!);
      const n = (tableCounts.get(name.join(".")) ?? -1) + 1;
      tableCounts.set(name.join("."), n);
      table = [...name, String(n)];
      remember(table, i + 1);
      return;
    }
    if (plainTable) {
      table = splitDottedKey(plainTable[1]!);
      remember(table, i + 1);
      return;
    }
    const kv =
      /^((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*=(.*)$/.exec(
        line,
      );
    if (!kv) return;
    remember([...table, ...splitDottedKey(kv[1]!)], i + 1);
    for (const q of ['"""', "'''"]) if (countOf(kv[2]!, q) % 2 === 1) openString = q;
  });
  return index;
}

function countOf(s: string, what: string): number {
  return s.split(what).length - 1;
}

function splitDottedKey(s: string): string[] {
  return [...s.matchAll(/"([^"]*)"|'([^']*)'|([A-Za-z0-9_-]+)/g)].map((m) => m[1] ?? m[2] ?? m[3]!);
}

/** ":LINE" of the key, or of its nearest enclosing table or key found in the file; "" when none is. */
function lineSuffix(lines: ReadonlyMap<string, number>, path: readonly string[]): string {
  for (let n = path.length; n > 0; n--) {
    const line = lines.get(path.slice(0, n).join("."));
    if (line !== undefined) return `:${line}`;
  }
  return "";
}

// ── unknown keys ─────────────────────────────────────────────────────────────────────────────────────────────────

interface UnknownKey {
  readonly path: string;
  readonly suggestion?: string;
}

/** Keys of the file that the schema does not know, each with the most likely intended key. */
function unknownKeys(raw: Raw, keys: readonly KeyInfo[]): UnknownKey[] {
  const out: UnknownKey[] = [];
  const topLevel = keys.filter((k) => !k.path.includes("*")).map((k) => k.path);
  const walk = (value: Raw, prefix: string[], shape: Record<string, z.ZodType>) => {
    for (const [key, v] of Object.entries(value)) {
      const schema = shape[key];
      const path = [...prefix, key];
      if (!schema) {
        const suggestion = suggest(key, prefix, Object.keys(shape), topLevel);
        out.push({ path: path.join("."), ...(suggestion ? { suggestion } : {}) });
        continue;
      }
      const sub = tableShape(schema);
      if (sub && isTable(v)) walk(v, path, sub);
      const element = tableListElement(schema);
      const elementShape = element ? tableShape(element) : undefined;
      if (elementShape && Array.isArray(v))
        v.forEach((item, i) => {
          if (isTable(item)) walk(item, [...path, String(i)], elementShape);
        });
    }
  };
  walk(raw, [], tableShape(configSchema)!);
  return out;
}

/**
 * A key of the same name in another section wins ("maxSessions" under [cm] → "sg.maxSessions"), then a close
 * sibling ("maxSesions" → "sg.maxSessions"), then any key whose own name is close.
 */
function suggest(key: string, prefix: string[], siblings: string[], all: string[]): string | undefined {
  const inTableList = prefix.some((p) => /^\d+$/.test(p));
  const local = (k: string) => displayPath([...prefix, k].join("."));
  const elsewhere = inTableList
    ? undefined
    : all.find((p) => p.split(".").pop()!.toLowerCase() === key.toLowerCase());
  if (elsewhere) return elsewhere;
  const sibling = nearest(key, siblings);
  if (sibling) return local(sibling);
  if (inTableList) return undefined;
  const leaves = all.map((p) => p.split(".").pop()!);
  const leaf = nearest(key, leaves);
  return leaf ? all[leaves.indexOf(leaf)] : undefined;
}

// ── overrides, sources, messages ─────────────────────────────────────────────────────────────────────────────────

function override(
  raw: Raw,
  sources: Map<string, Source>,
  path: string,
  value: unknown,
  source: Source,
): void {
  const parts = path.split(".");
  let cur = raw;
  for (const p of parts.slice(0, -1)) {
    if (!isTable(cur[p])) cur[p] = {};
    cur = cur[p] as Raw;
  }
  cur[parts[parts.length - 1]!] = value;
  for (const k of [...sources.keys()]) if (k === path || k.startsWith(`${path}.`)) sources.delete(k);
  sources.set(path, source);
}

/** Where the value at `path` came from: the key itself or an enclosing one, else the nearest related key. */
function sourceOf(sources: ReadonlyMap<string, Source>, path: readonly string[]): Source | undefined {
  for (let n = path.length; n > 0; n--) {
    const hit = sources.get(path.slice(0, n).join("."));
    if (hit) return hit;
  }
  for (let n = path.length; n >= 0; n--) {
    const prefix = n === 0 ? "" : `${path.slice(0, n).join(".")}.`;
    for (const [k, s] of sources) if (k.startsWith(prefix)) return s;
  }
  return undefined;
}

function leafPaths(value: Raw, prefix: string[] = []): string[] {
  const out: string[] = [];
  for (const [k, v] of Object.entries(value)) {
    const p = [...prefix, k];
    if (isTable(v)) out.push(...leafPaths(v, p));
    else if (Array.isArray(v) && v.some(isTable))
      v.forEach((item, i) => {
        if (isTable(item)) out.push(...leafPaths(item, [...p, String(i)]));
      });
    else out.push(p.join("."));
  }
  return out;
}

/** "desktops.1.agent" → "desktops[1].agent", "cm.listen.0" → "cm.listen[0]". */
function displayPath(path: string): string {
  return path.replace(/\.(\d+)(?=\.|$)/g, "[$1]");
}

const SECRET_KEY = /token|password/i;

function showValue(path: readonly string[], value: unknown): string {
  if (value === undefined) return "(missing)";
  if (SECRET_KEY.test(path.join(".")) && !/file$/i.test(path.join(".")) && value !== "") return "(hidden)";
  const shown = JSON.stringify(value) ?? String(value);
  return shown.length > 120 ? `${shown.slice(0, 117)}...` : shown;
}

function humanMessage(issue: z.core.$ZodIssue, value: unknown): string {
  if (issue.code === "invalid_type" && value === undefined) return "is required";
  if (issue.message.startsWith("Invalid input")) {
    const expected = (issue as { expected?: string }).expected;
    return expected === "object" ? "must be a table" : `must be a ${expected ?? "valid value"}`;
  }
  return issue.message;
}

function isTable(v: unknown): v is Raw {
  return typeof v === "object" && v !== null && !Array.isArray(v) && !(v instanceof Date);
}

function getPath(value: unknown, path: readonly string[]): unknown {
  let cur = value;
  for (const p of path) {
    if (typeof cur !== "object" || cur === null) return undefined;
    cur = (cur as Raw)[p];
  }
  return cur;
}

function deletePath(raw: Raw, path: readonly string[]): void {
  const parent = getPath(raw, path.slice(0, -1));
  if (typeof parent === "object" && parent !== null) delete (parent as Raw)[path[path.length - 1]!];
}
