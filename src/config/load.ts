/**
 * Loading the configuration: built-in defaults < TOML file < environment (`PCOIP_CMSG_<SECTION>_<KEY>`) <
 * command-line flags, validated by the one schema. Each source is an adapter into one plain object, and every
 * message names where the bad value came from (FILE:LINE, the variable, the flag), the key, the value and
 * what is allowed. Unknown keys are errors in strict mode (`config check`, `install`) and warnings otherwise
 * (`run`), so a downgraded binary still starts on a newer file. User errors are values, never throws.
 */
import { readFileSync } from "node:fs";
import type { z } from "zod";
import { type Config, configSchema } from "./schema.ts";

export type LoadResult =
  | { readonly ok: true; readonly config: Readonly<Config>; readonly warnings: readonly string[] }
  | { readonly ok: false; readonly errors: readonly string[]; readonly warnings: readonly string[] };

export interface FlagValue {
  /** Dotted key path, e.g. "sg.maxSessions" or "externalPcoipIp". */
  readonly path: string;
  readonly value: unknown;
  /** The flag as the user typed it, for messages ("--external-pcoip-ip"). */
  readonly flag: string;
}

export interface LoadOptions {
  /** Path of the TOML file; omitted = defaults only. */
  readonly file?: string;
  /** The file's text (tests; or already read). */
  readonly text?: string;
  readonly env?: Readonly<Record<string, string | undefined>>;
  readonly flags?: readonly FlagValue[];
  readonly strict: boolean;
}

export type KeyKind =
  | "string"
  | "number"
  | "boolean"
  | "enum"
  | "array"
  | "string-or-array"
  | "object"
  | "object-array";

export interface KeyInfo {
  readonly path: string;
  readonly kind: KeyKind;
  readonly description: string;
  readonly defaultValue: unknown;
  readonly allowed?: readonly string[];
  readonly envName?: string;
}

type AnySchema = z.ZodType;
interface Def {
  type: string;
  innerType?: AnySchema;
  shape?: Record<string, AnySchema>;
  element?: AnySchema;
  options?: AnySchema[];
  entries?: Record<string, string>;
  defaultValue?: unknown;
  in?: AnySchema;
}
const defOf = (s: AnySchema): Def => (s as unknown as { _zod: { def: Def } })._zod.def;

/** Follows default/prefault/optional wrappers to the schema that says what the value is. */
function unwrap(s: AnySchema): { core: AnySchema; defaultValue: unknown; description: string } {
  let cur = s;
  let defaultValue: unknown;
  const description = s.description ?? "";
  for (;;) {
    const d = defOf(cur);
    if ((d.type === "default" || d.type === "prefault") && d.innerType) {
      if (defaultValue === undefined)
        defaultValue =
          typeof d.defaultValue === "function" ? (d.defaultValue as () => unknown)() : d.defaultValue;
      cur = d.innerType;
    } else if ((d.type === "optional" || d.type === "nullable" || d.type === "readonly") && d.innerType)
      cur = d.innerType;
    else if (d.type === "pipe" && d.in) cur = d.in;
    else return { core: cur, defaultValue, description: description || cur.description || "" };
  }
}

function kindOf(core: AnySchema): { kind: KeyKind; allowed?: string[] } {
  const d = defOf(core);
  switch (d.type) {
    case "string":
      return { kind: "string" };
    case "number":
      return { kind: "number" };
    case "boolean":
      return { kind: "boolean" };
    case "enum":
      return { kind: "enum", allowed: Object.values(d.entries ?? {}) };
    case "literal":
      return { kind: "string" };
    case "array": {
      const el = d.element ? defOf(unwrap(d.element).core) : undefined;
      if (el?.type === "object") return { kind: "object-array" };
      const inner = d.element ? kindOf(unwrap(d.element).core) : undefined;
      return { kind: "array", ...(inner?.allowed ? { allowed: inner.allowed } : {}) };
    }
    case "union":
      return (d.options ?? []).some((o) => defOf(unwrap(o).core).type === "array")
        ? { kind: "string-or-array" }
        : { kind: "string" };
    case "object":
      return { kind: "object" };
    default:
      return { kind: "string" };
  }
}

function shapeOf(core: AnySchema): Record<string, AnySchema> | undefined {
  const d = defOf(core);
  return d.type === "object" ? d.shape : undefined;
}

/** Every key of the schema, depth-first, with its kind, default, description and environment variable. */
export function describeKeys(): KeyInfo[] {
  const out: KeyInfo[] = [];
  const walk = (shape: Record<string, AnySchema>, prefix: string[], envAllowed: boolean) => {
    for (const [key, schema] of Object.entries(shape)) {
      const { core, defaultValue, description } = unwrap(schema);
      const path = [...prefix, key];
      const { kind, allowed } = kindOf(core);
      const sub = shapeOf(core);
      if (kind === "object" && sub) {
        walk(sub, path, envAllowed);
        continue;
      }
      out.push({
        path: path.join("."),
        kind,
        description,
        defaultValue,
        ...(allowed ? { allowed } : {}),
        ...(envAllowed && kind !== "object-array" ? { envName: envVarName(path.join(".")) } : {}),
      });
      if (kind === "object-array") {
        const el = defOf(core).element;
        const elShape = el ? shapeOf(unwrap(el).core) : undefined;
        if (elShape) walk(elShape, [...path, "*"], false);
      }
    }
  };
  walk(shapeOf(unwrap(configSchema).core)!, [], true);
  return out;
}

/** "sg.maxSessions" → "PCOIP_CMSG_SG_MAXSESSIONS". */
export function envVarName(path: string): string {
  return `PCOIP_CMSG_${path.split(".").join("_").toUpperCase()}`;
}

let keyIndex: Map<string, KeyInfo> | undefined;
function keys(): Map<string, KeyInfo> {
  keyIndex ??= new Map(describeKeys().map((k) => [k.path, k]));
  return keyIndex;
}

export function loadConfig(opts: LoadOptions): LoadResult {
  const errors: string[] = [];
  const warnings: string[] = [];
  const sources = new Map<string, string>(); // key path → where its value came from
  let raw: Record<string, unknown> = {};
  let text = opts.text;
  const fileLabel = opts.file ?? "config";

  if (text === undefined && opts.file !== undefined) {
    try {
      text = readFileSync(opts.file, "utf8");
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      const fix =
        code === "ENOENT"
          ? "create it (see config/pcoip-cmsg.example.toml) or run `pcoip-cmsg install`"
          : "check its permissions (the service user must be able to read it)";
      return {
        ok: false,
        errors: [`reading ${opts.file}: ${code ?? (e as Error).message}: ${fix}`],
        warnings,
      };
    }
  }
  if (text !== undefined) {
    try {
      raw = Bun.TOML.parse(text.replace(/\r\n/g, "\n")) as Record<string, unknown>;
    } catch (e) {
      const err = e as { message?: string; line?: number };
      // Bun reports a 0-based line, but not always a sane one: only a line inside the file is shown.
      const lineCount = text.split("\n").length;
      const where =
        typeof err.line === "number" && err.line >= 0 && err.line < lineCount
          ? `${fileLabel}:${err.line + 1}`
          : fileLabel;
      return {
        ok: false,
        errors: [`${where}: not valid TOML: ${String(err.message ?? e).replace(/^TOML Parse error: /, "")}`],
        warnings,
      };
    }
    for (const path of leafPaths(raw)) sources.set(path, `${fileLabel}${lineSuffix(text, path)}`);
  }

  // Unknown keys anywhere in the file.
  for (const problem of unknownKeys(raw)) {
    const msg = `${fileLabel}${text ? lineSuffix(text, problem.path) : ""}: unknown key "${problem.path}"${problem.suggestion ? ` (did you mean "${problem.suggestion}"?)` : ""}`;
    (opts.strict ? errors : warnings).push(opts.strict ? msg : `${msg}; ignored`);
    deletePath(raw, problem.path);
  }

  // Environment overrides.
  const env = opts.env ?? {};
  const byEnv = new Map([...keys().values()].filter((k) => k.envName).map((k) => [k.envName!, k]));
  for (const [name, value] of Object.entries(env)) {
    if (!name.startsWith("PCOIP_CMSG_") || value === undefined) continue;
    const info = byEnv.get(name);
    if (!info) {
      const suggestion = nearest(name, [...byEnv.keys()]);
      const msg = `${name}: not a configuration variable${suggestion ? ` (did you mean ${suggestion}?)` : ""}`;
      (opts.strict ? errors : warnings).push(opts.strict ? msg : `${msg}; ignored`);
      continue;
    }
    setPath(raw, info.path, coerceEnv(value, info.kind));
    sources.set(info.path, name);
  }

  // Flags.
  for (const f of opts.flags ?? []) {
    setPath(raw, f.path, f.value);
    sources.set(f.path, f.flag);
  }

  const parsed = configSchema.safeParse(raw);
  if (!parsed.success) {
    for (const issue of parsed.error.issues) {
      const path = issue.path.map(String).join(".");
      const source = sourceFor(sources, issue.path.map(String)) ?? fileLabel;
      const value = getPath(raw, issue.path.map(String));
      const shown = value === undefined ? "(missing)" : JSON.stringify(value);
      errors.push(`${source}: ${path || "(top level)"} = ${shown}: ${humanMessage(issue, value)}`);
    }
  }
  if (errors.length > 0 || !parsed.success) return { ok: false, errors, warnings };
  return { ok: true, config: deepFreeze(parsed.data), warnings };
}

function humanMessage(issue: z.core.$ZodIssue, value: unknown): string {
  if (issue.code === "invalid_type") {
    const expected = (issue as { expected?: string }).expected;
    if (value === undefined) return `is required (a ${expected})`;
    return expected === "array" ? 'must be a list, e.g. ["a", "b"]' : `must be a ${expected}`;
  }
  return issue.message;
}

function coerceEnv(value: string, kind: KeyKind): unknown {
  const v = value.trim();
  switch (kind) {
    case "number":
      return /^-?\d+(\.\d+)?$/.test(v) ? Number(v) : v;
    case "boolean":
      if (/^(true|1|yes|on)$/i.test(v)) return true;
      if (/^(false|0|no|off)$/i.test(v)) return false;
      return v;
    case "array":
      return splitList(v);
    case "string-or-array":
      return v.includes(",") || v.startsWith("[") ? splitList(v) : v;
    default:
      return value;
  }
}

function splitList(v: string): unknown {
  if (v.startsWith("[")) {
    try {
      return JSON.parse(v);
    } catch {
      return v;
    }
  }
  return v
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean);
}

interface UnknownKey {
  path: string;
  suggestion?: string;
}

function unknownKeys(raw: Record<string, unknown>): UnknownKey[] {
  const out: UnknownKey[] = [];
  const all = [...keys().keys()];
  const walk = (value: Record<string, unknown>, prefix: string[], known: Record<string, AnySchema>) => {
    for (const [k, v] of Object.entries(value)) {
      const schema = known[k];
      const path = [...prefix, k];
      if (!schema) {
        const sibling = nearest(k, Object.keys(known));
        const suggestion = sibling
          ? [...prefix, sibling].join(".")
          : nearestByLeaf(
              k,
              all.filter((p) => !p.includes("*")),
            );
        out.push({ path: path.join("."), ...(suggestion ? { suggestion } : {}) });
        continue;
      }
      const { core } = unwrap(schema);
      const sub = shapeOf(core);
      if (sub && v && typeof v === "object" && !Array.isArray(v))
        walk(v as Record<string, unknown>, path, sub);
      const d = defOf(core);
      if (d.type === "array" && Array.isArray(v) && d.element) {
        const elShape = shapeOf(unwrap(d.element).core);
        if (elShape) {
          for (const [i, item] of v.entries()) {
            if (item && typeof item === "object")
              walk(item as Record<string, unknown>, [...path, String(i)], elShape);
          }
        }
      }
    }
  };
  walk(raw, [], shapeOf(unwrap(configSchema).core)!);
  return out;
}

/** The nearest candidate by edit distance, when it is close enough to be a typo. */
export function nearest(word: string, candidates: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = Number.POSITIVE_INFINITY;
  for (const c of candidates) {
    const d = editDistance(word.toLowerCase(), c.toLowerCase());
    if (d < bestDistance) {
      best = c;
      bestDistance = d;
    }
  }
  return best !== undefined && bestDistance <= Math.max(2, Math.floor(word.length / 3)) ? best : undefined;
}

function nearestByLeaf(leaf: string, paths: readonly string[]): string | undefined {
  const leaves = paths.map((p) => p.split(".").pop()!);
  const hit = nearest(leaf, leaves);
  return hit ? paths[leaves.indexOf(hit)] : undefined;
}

function editDistance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    let prev = row[0]!;
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const tmp = row[j]!;
      row[j] = Math.min(row[j]! + 1, row[j - 1]! + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = tmp;
    }
  }
  return row[b.length]!;
}

function leafPaths(obj: Record<string, unknown>, prefix: string[] = []): string[] {
  const out: string[] = [];
  for (const [k, v] of Object.entries(obj)) {
    const p = [...prefix, k];
    if (v && typeof v === "object" && !Array.isArray(v))
      out.push(...leafPaths(v as Record<string, unknown>, p));
    else if (Array.isArray(v) && v.some((x) => x && typeof x === "object")) {
      v.forEach((x, i) => {
        if (x && typeof x === "object")
          out.push(...leafPaths(x as Record<string, unknown>, [...p, String(i)]));
      });
    } else out.push(p.join("."));
  }
  return out;
}

function sourceFor(sources: Map<string, string>, path: string[]): string | undefined {
  // The key itself, else the nearest enclosing table that has a key we saw (a missing key, a section rule).
  for (let n = path.length; n > 0; n--) {
    const prefix = path.slice(0, n).join(".");
    const hit = sources.get(prefix);
    if (hit) return hit;
    for (const [k, v] of sources) if (k.startsWith(`${prefix}.`)) return v;
  }
  return undefined;
}

/** ":LINE" of a dotted key in TOML text (tables, [[arrays]] by index), or "" when not found. */
export function lineSuffix(text: string, path: string): string {
  const parts = path.split(".");
  const lines = text.split("\n");
  let table: string[] = [];
  const arrayCounts = new Map<string, number>();
  let arrayIndex = -1;
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.trim();
    const arr = /^\[\[\s*([^\]]+?)\s*\]\]/.exec(line);
    const tbl = /^\[\s*([^\]]+?)\s*\]/.exec(line);
    if (arr) {
      table = arr[1]!.split(".").map((s) => s.trim());
      const n = (arrayCounts.get(arr[1]!) ?? -1) + 1;
      arrayCounts.set(arr[1]!, n);
      arrayIndex = n;
      continue;
    }
    if (tbl) {
      table = tbl[1]!.split(".").map((s) => s.trim());
      arrayIndex = -1;
      continue;
    }
    const kv = /^("?)([A-Za-z0-9_-]+)\1\s*=/.exec(line);
    if (!kv) continue;
    const full = arrayIndex >= 0 ? [...table, String(arrayIndex), kv[2]!] : [...table, kv[2]!];
    if (full.join(".") === parts.join(".")) return `:${i + 1}`;
  }
  return "";
}

function setPath(obj: Record<string, unknown>, path: string, value: unknown): void {
  const parts = path.split(".");
  let cur = obj;
  for (const p of parts.slice(0, -1)) {
    const next = cur[p];
    if (!next || typeof next !== "object" || Array.isArray(next)) cur[p] = {};
    cur = cur[p] as Record<string, unknown>;
  }
  cur[parts[parts.length - 1]!] = value;
}

function getPath(obj: unknown, path: readonly string[]): unknown {
  let cur = obj;
  for (const p of path) {
    if (!cur || typeof cur !== "object") return undefined;
    cur = (cur as Record<string, unknown>)[p];
  }
  return cur;
}

function deletePath(obj: Record<string, unknown>, path: string): void {
  const parts = path.split(".");
  const parent = getPath(obj, parts.slice(0, -1));
  if (parent && typeof parent === "object")
    delete (parent as Record<string, unknown>)[parts[parts.length - 1]!];
}

function deepFreeze<T>(value: T): T {
  if (value && typeof value === "object") {
    for (const v of Object.values(value)) deepFreeze(v);
    Object.freeze(value);
  }
  return value;
}
