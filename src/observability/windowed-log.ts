/**
 * "Logged once per window": a refusal that a flood repeats thousands of times a second gets one warn line per
 * key (reason) per window, carrying how many happened since the previous line, so the log shows the cause and its
 * size without becoming a flood itself.
 *
 * @example
 * const warnOnce = windowedWarn(log);
 * warnOnce("pre_sessions_per_ip", { clientIp }, "pre-session evicted: cm.maxPreSessionsPerIp reached");
 */
import type { Logger } from "./log.ts";

export type WindowedWarn = (key: string, fields: Record<string, unknown>, msg: string) => void;

export function windowedWarn(log: Logger, windowMs = 60_000, now: () => number = Date.now): WindowedWarn {
  const last = new Map<string, { at: number; suppressed: number }>();
  return (key, fields, msg) => {
    const t = now();
    const l = last.get(key);
    if (l && t - l.at < windowMs) {
      l.suppressed++;
      return;
    }
    last.set(key, { at: t, suppressed: 0 });
    log.warn({ ...fields, sinceLastLine: (l?.suppressed ?? 0) + 1, windowSeconds: windowMs / 1000 }, msg);
  };
}
