/**
 * Kernel settings from a sysctl.d file, applied by this process through /proc/sys instead of the `sysctl` tool:
 * a minimal host (Debian minbase, a container image) has systemd and the C library but no procps, and the
 * appliance asks nothing else of the host. Values are only ever raised here — a host tuned higher keeps its
 * setting — while systemd-sysctl applies the same file at boot.
 *
 * @example
 * applySysctl(parseSysctlConf("net.core.rmem_default = 4194304\n"));
 * // [{ key: "net.core.rmem_default", want: 4194304, outcome: "raised", before: 212992 }]
 */
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

export interface SysctlSetting {
  readonly key: string;
  readonly value: number;
}

export interface SysctlOutcome {
  readonly key: string;
  readonly want: number;
  /** raised: written; kept: already at least that; absent: this kernel or namespace has no such key; failed. */
  readonly outcome: "raised" | "kept" | "absent" | "failed";
  readonly before?: number;
  readonly detail?: string;
}

/** "key = value" lines (comments with # or ;, blank lines skipped); non-numeric values are left out. */
export function parseSysctlConf(text: string): SysctlSetting[] {
  const out: SysctlSetting[] = [];
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (line === "" || line.startsWith("#") || line.startsWith(";")) continue;
    const m = /^-?([A-Za-z0-9_.\-/]+)\s*=\s*(\d+)\s*$/.exec(line);
    if (m) out.push({ key: m[1]!.replace(/\//g, "."), value: Number(m[2]) });
  }
  return out;
}

/** Raises each setting to at least its value through `procSys` (/proc/sys). Never throws. */
export function applySysctl(settings: readonly SysctlSetting[], procSys = "/proc/sys"): SysctlOutcome[] {
  return settings.map(({ key, value }) => {
    const file = join(procSys, ...key.split("."));
    let before: number;
    try {
      before = Number(readFileSync(file, "utf8").trim());
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === "ENOENT")
        return { key, want: value, outcome: "absent", detail: "not in this kernel or network namespace" };
      return { key, want: value, outcome: "failed", detail: `reading ${file}: ${code ?? String(e)}` };
    }
    if (Number.isFinite(before) && before >= value) return { key, want: value, outcome: "kept", before };
    try {
      writeFileSync(file, `${value}\n`);
      return { key, want: value, outcome: "raised", before };
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      return {
        key,
        want: value,
        outcome: "failed",
        before,
        detail: `writing ${file}: ${code ?? String(e)}${code === "EACCES" || code === "EPERM" || code === "EROFS" ? " (run as root, outside a read-only /proc/sys)" : ""}`,
      };
    }
  });
}

/** One line per setting, for install's report and the `sysctl` command. */
export function describeOutcome(o: SysctlOutcome): string {
  switch (o.outcome) {
    case "raised":
      return `${o.key} = ${o.want} (was ${o.before})`;
    case "kept":
      return `${o.key} = ${o.before} kept (at least ${o.want} already)`;
    case "absent":
      return `${o.key}: ${o.detail}; skipped`;
    case "failed":
      return `${o.key} = ${o.want} not applied: ${o.detail}`;
  }
}
