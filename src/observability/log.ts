/**
 * pino logging for every plane: JSON to stdout through a synchronous destination (pino transports spawn
 * worker threads that cannot load inside a compiled Bun binary), secrets redacted by key name, and one child
 * logger per session that carries the 36-character session id on every line.
 */
import pino, { type DestinationStream, type Logger } from "pino";

export type { Logger };
export type LogLevel = "debug" | "info" | "warn" | "error";

/**
 * Keys whose values are never written, at any depth up to MAX_SCRUB_DEPTH objects down (e.g. `{ req: { password } }`).
 * Matched by exact key name.
 */
export const SECRET_KEYS = [
  "password",
  "newPassword",
  "cookie",
  "Cookie",
  "setCookie",
  "jsessionid",
  "connectTag",
  "sessionTag",
  "connect-tag",
  "session-tag",
  "token",
  "authorization",
  "Authorization",
  "proxyPassword",
  "proxyAuthorization",
  "bindPassword",
] as const;

const SECRET = new Set<string>(SECRET_KEYS);
const CENSOR = "[redacted]";
const MAX_SCRUB_DEPTH = 4;

/**
 * The log object with every secret-keyed value replaced, copying only the objects that held one (the caller's
 * objects are never changed). Plain objects only: errors, buffers and arrays are left to pino's serializers.
 * Why not pino's `redact`: its wildcard paths (`*.password`, `*.*.password` for 16 keys) cost about a tenth of
 * the CM's CPU per login in bench/cm-establishment.ts; one walk over the keys with a Set lookup costs next to
 * nothing and reaches deeper.
 */
export function scrubSecrets<T>(value: T, depth = 0): T {
  if (value === null || typeof value !== "object" || depth > MAX_SCRUB_DEPTH) return value;
  const proto = Object.getPrototypeOf(value);
  if (proto !== Object.prototype && proto !== null) return value;
  let out: Record<string, unknown> | undefined;
  const src = value as Record<string, unknown>;
  for (const key in src) {
    const v = src[key];
    const next = SECRET.has(key) ? CENSOR : scrubSecrets(v, depth + 1);
    if (next !== v) {
      out ??= { ...src };
      out[key] = next;
    }
  }
  return (out ?? value) as T;
}

export interface LogOptions {
  level?: LogLevel;
  /** Where lines go; stdout (fd 1, synchronous) when omitted. Tests pass a collecting stream. */
  destination?: DestinationStream;
}

/** Creates the root logger. `LOG_LEVEL` in the environment wins over the configured level (SPEC §8). */
export function createLogger(options: LogOptions = {}): Logger {
  const envLevel = process.env.LOG_LEVEL?.toLowerCase();
  const level = isLogLevel(envLevel) ? envLevel : (options.level ?? "info");
  return pino(
    {
      level,
      base: { svc: "pcoip-cmsg" },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: {
        level: (label) => ({ level: label }),
        log: (obj) => scrubSecrets(obj),
      },
      // A child's bindings do not pass through formatters.log; its top-level keys do pass through serializers.
      serializers: Object.fromEntries(SECRET_KEYS.map((k) => [k, () => CENSOR])),
    },
    options.destination ?? pino.destination({ dest: 1, sync: true }),
  );
}

/** A child logger whose every line carries `sessionId` (the one id shared by CM and SG lines of a session). */
export function sessionLogger(parent: Logger, sessionId: string): Logger {
  return parent.child({ sessionId });
}

export function isLogLevel(v: unknown): v is LogLevel {
  return v === "debug" || v === "info" || v === "warn" || v === "error";
}

/**
 * A destination that keeps every line in memory; tests use it to prove what was (and was not) logged.
 * @example const sink = memoryDestination(); const log = createLogger({ destination: sink }); sink.lines()
 */
export function memoryDestination(): DestinationStream & { lines(): string[]; text(): string } {
  const chunks: string[] = [];
  return {
    write(msg: string) {
      chunks.push(msg);
    },
    lines: () => chunks.join("").split("\n").filter(Boolean),
    text: () => chunks.join(""),
  };
}
