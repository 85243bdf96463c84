/**
 * The key catalogue: every key of the schema with its kind, default, limits, format, description and environment
 * variable, read from the zod schema itself so the reference (`pcoip-cmsg config schema`), the environment adapter
 * and the unknown-key check can never disagree with validation.
 *
 * @example
 * describeKeys().find((k) => k.path === "sg.maxSessions")
 * // { path: "sg.maxSessions", kind: "integer", min: 1, max: 1000000, defaultValue: 5000, envName: "PCOIP_CMSG_SG_MAXSESSIONS", … }
 */
import { z } from "zod";
import { configSchema, type KeyMeta } from "./schema.ts";

export type KeyKind = "string" | "integer" | "boolean" | "enum" | "list" | "string-or-list" | "table-list";

export interface KeyInfo {
  /** "sg.maxSessions"; keys of [[desktops]] tables are "desktops.*.agent". */
  readonly path: string;
  readonly kind: KeyKind;
  readonly description: string;
  /** Undefined for required keys (desktops.*.id, desktops.*.agent). */
  readonly defaultValue: unknown;
  /** Enum values (for lists: of each element). */
  readonly allowed?: readonly string[];
  readonly min?: number;
  readonly max?: number;
  /** What a string must look like, in words. */
  readonly format?: string;
  /** The environment variable that overrides the key; none for keys inside [[desktops]]. */
  readonly envName?: string;
}

/** "sg.maxSessions" → "PCOIP_CMSG_SG_MAXSESSIONS"; "logLevel" → "PCOIP_CMSG_LOGLEVEL". */
export function envVarName(path: string): string {
  return `PCOIP_CMSG_${path.split(".").join("_").toUpperCase()}`;
}

type AnySchema = z.ZodType;
interface Def {
  type: string;
  innerType?: AnySchema;
  in?: AnySchema;
  shape?: Record<string, AnySchema>;
  element?: AnySchema;
  options?: AnySchema[];
  entries?: Record<string, string>;
  defaultValue?: unknown;
}
const defOf = (s: AnySchema): Def => (s as unknown as { _zod: { def: Def } })._zod.def;

/** Follows default/prefault/optional wrappers to the schema that says what the value is. */
export function unwrapSchema(s: AnySchema): { core: AnySchema; defaultValue: unknown } {
  let cur = s;
  let defaultValue: unknown;
  for (;;) {
    const d = defOf(cur);
    if ((d.type === "default" || d.type === "prefault") && d.innerType) {
      defaultValue ??=
        typeof d.defaultValue === "function" ? (d.defaultValue as () => unknown)() : d.defaultValue;
      cur = d.innerType;
    } else if (["optional", "nullable", "readonly"].includes(d.type) && d.innerType) cur = d.innerType;
    else if (d.type === "pipe" && d.in) cur = d.in;
    else return { core: cur, defaultValue };
  }
}

/** The keys of a table schema, or undefined when it is not a table. */
export function tableShape(s: AnySchema): Record<string, AnySchema> | undefined {
  const d = defOf(unwrapSchema(s).core);
  return d.type === "object" ? d.shape : undefined;
}

/** The table schema of a list of tables ([[desktops]]), or undefined. */
export function tableListElement(s: AnySchema): AnySchema | undefined {
  const d = defOf(unwrapSchema(s).core);
  return d.type === "array" && d.element && tableShape(d.element) ? d.element : undefined;
}

function kindOf(core: AnySchema): Pick<KeyInfo, "kind" | "allowed" | "min" | "max"> {
  const d = defOf(core);
  switch (d.type) {
    case "number": {
      const n = core as z.ZodNumber;
      return {
        kind: "integer",
        ...(n.minValue !== null ? { min: n.minValue } : {}),
        ...(n.maxValue !== null ? { max: n.maxValue } : {}),
      };
    }
    case "boolean":
      return { kind: "boolean" };
    case "enum":
      return { kind: "enum", allowed: Object.values(d.entries ?? {}) };
    case "array": {
      if (d.element && tableShape(d.element)) return { kind: "table-list" };
      const el = d.element ? kindOf(unwrapSchema(d.element).core) : undefined;
      return { kind: "list", ...(el?.allowed ? { allowed: el.allowed } : {}) };
    }
    case "union": {
      const types = (d.options ?? []).map((o) => defOf(unwrapSchema(o).core).type);
      if (types.includes("array")) return { kind: "string-or-list" };
      // A number or a word (cm.workers: "auto" or 0–64): digits become the number, other text stays a word.
      return types.includes("number") ? { kind: "integer" } : { kind: "string" };
    }
    default:
      return { kind: "string" };
  }
}

/** Every key of the schema in file order, sections flattened ("sg.maxSessions"), with all `config schema` shows. */
export function describeKeys(): KeyInfo[] {
  const out: KeyInfo[] = [];
  const walk = (shape: Record<string, AnySchema>, prefix: readonly string[], inTableList: boolean) => {
    for (const [key, schema] of Object.entries(shape)) {
      const path = [...prefix, key].join(".");
      const sub = tableShape(schema);
      if (sub) {
        walk(sub, [...prefix, key], inTableList);
        continue;
      }
      const { core, defaultValue } = unwrapSchema(schema);
      const meta = (z.globalRegistry.get(schema) ?? {}) as Partial<KeyMeta>;
      const kind = kindOf(core);
      out.push({
        path,
        ...kind,
        description: meta.description ?? "",
        defaultValue,
        ...(meta.format ? { format: meta.format } : {}),
        ...(inTableList || kind.kind === "table-list" ? {} : { envName: envVarName(path) }),
      });
      const element = tableListElement(schema);
      const elementShape = element ? tableShape(element) : undefined;
      if (elementShape) walk(elementShape, [path, "*"], true);
    }
  };
  walk(tableShape(configSchema)!, [], false);
  return out;
}

/**
 * Did-you-mean: the candidate nearest by edit distance (case-insensitive), when it is close enough to be a typo.
 * @example nearest("maxSesions", ["maxSessions", "udpIdleSeconds"]) // "maxSessions"
 */
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

/** Levenshtein distance, one row at a time. */
function editDistance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    let diagonal = row[0]!;
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const above = row[j]!;
      row[j] = Math.min(above + 1, row[j - 1]! + 1, diagonal + (a[i - 1] === b[j - 1] ? 0 : 1));
      diagonal = above;
    }
  }
  return row[b.length]!;
}
