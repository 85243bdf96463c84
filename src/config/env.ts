/**
 * The environment as a configuration source: `PCOIP_CMSG_<SECTION>_<KEY>` (upper case, sections joined by "_",
 * e.g. PCOIP_CMSG_SG_MAXSESSIONS, PCOIP_CMSG_CM_THROTTLE_MAXDELAYSECONDS, PCOIP_CMSG_LOGLEVEL). Values are text, so
 * each is turned into the key's type here — integers, booleans, comma-separated lists — and anything that does not
 * convert is passed on as text, for the schema to refuse with a message naming the variable.
 *
 * @example
 * readEnvironment({ PCOIP_CMSG_SG_MAXSESSIONS: "8000" }, describeKeys())
 * // { overrides: [{ path: "sg.maxSessions", value: 8000, variable: "PCOIP_CMSG_SG_MAXSESSIONS" }], unknown: [] }
 */
import { type KeyInfo, type KeyKind, nearest } from "./keys.ts";

export const ENV_PREFIX = "PCOIP_CMSG_";

export interface EnvOverride {
  readonly path: string;
  readonly value: unknown;
  readonly variable: string;
}

export interface UnknownVariable {
  readonly variable: string;
  /** The nearest real variable, when the name looks like a typo of it. */
  readonly suggestion?: string;
}

export function readEnvironment(
  env: Readonly<Record<string, string | undefined>>,
  keys: readonly KeyInfo[],
): { overrides: EnvOverride[]; unknown: UnknownVariable[] } {
  const byName = new Map(keys.flatMap((k) => (k.envName ? [[k.envName, k] as const] : [])));
  const overrides: EnvOverride[] = [];
  const unknown: UnknownVariable[] = [];
  // Sorted, so messages come out in the same order whatever order the process environment has.
  for (const variable of Object.keys(env).sort()) {
    const value = env[variable];
    if (!variable.startsWith(ENV_PREFIX) || value === undefined) continue;
    const key = byName.get(variable);
    if (!key) {
      const suggestion = nearest(variable, [...byName.keys()]);
      unknown.push({ variable, ...(suggestion ? { suggestion } : {}) });
      continue;
    }
    overrides.push({ path: key.path, value: coerceEnvValue(value, key.kind), variable });
  }
  return { overrides, unknown };
}

/** Text → the key's type; text that does not convert is returned unchanged for the schema to refuse. */
export function coerceEnvValue(text: string, kind: KeyKind): unknown {
  const v = text.trim();
  switch (kind) {
    case "integer":
      return /^[+-]?\d+$/.test(v) ? Number(v) : text;
    case "boolean":
      if (/^(true|1|yes|on)$/i.test(v)) return true;
      if (/^(false|0|no|off)$/i.test(v)) return false;
      return text;
    case "list":
      return splitList(v);
    case "string-or-list":
      return v.includes(",") || v.startsWith("[") ? splitList(v) : v;
    default:
      return text;
  }
}

/** `a, b` or a JSON list `["a","b"]`; "" is the empty list (e.g. PCOIP_CMSG_CM_REDIRECTLISTEN= disables). */
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
    .filter((s) => s !== "");
}
