/**
 * pino logging for every plane: JSON to stdout through a synchronous destination (pino transports spawn
 * worker threads that cannot load inside a compiled Bun binary), secrets redacted by key name, and one child
 * logger per session that carries the 36-character session id on every line.
 */
import pino, { type DestinationStream, type Logger } from "pino";

export type { Logger };
export type LogLevel = "debug" | "info" | "warn" | "error";

/**
 * Keys whose values are never written. pino's redaction matches paths, so each secret-bearing key is listed at
 * the depths where our code puts it (top level and one object down, e.g. `{ req: { password } }`).
 */
const SECRET_KEYS = [
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

export const REDACT_PATHS: readonly string[] = SECRET_KEYS.flatMap((k) => {
  const key = /^[A-Za-z_$][\w$]*$/.test(k) ? k : `["${k}"]`;
  const dot = key.startsWith("[") ? key : `.${key}`;
  return [key.startsWith("[") ? key : k, `*${dot}`, `*.*${dot}`];
});

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
      formatters: { level: (label) => ({ level: label }) },
      redact: { paths: [...REDACT_PATHS], censor: "[redacted]" },
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
