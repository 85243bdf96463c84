/**
 * CPU time of a process from /proc/<pid>/stat, the same way for the SG and for every peer: user + system time of
 * the process (all its threads), plus its reaped children (socat forks one per connection), plus its live
 * descendants (nginx's workers under the master). Clock ticks are 10 ms, so runs measured this way last seconds.
 */
import { readdirSync, readFileSync } from "node:fs";

/** utime, stime, cutime, cstime (clock ticks) and the parent pid, or undefined when the process is gone. */
function readStat(pid: number): { ppid: number; own: number; children: number } | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, "utf8");
  } catch {
    return undefined;
  }
  // The command name is in parentheses and may contain spaces: fields are counted from the last ')'.
  const f = text.slice(text.lastIndexOf(")") + 2).split(" ");
  // f[0] is field 3 (state): ppid is field 4, utime 14, stime 15, cutime 16, cstime 17.
  return {
    ppid: Number(f[1]),
    own: Number(f[11]) + Number(f[12]),
    children: Number(f[13]) + Number(f[14]),
  };
}

/** Clock ticks per second (USER_HZ); 100 on every Linux build these benchmarks meet. */
function ticksPerSecond(): number {
  const r = Bun.spawnSync(["getconf", "CLK_TCK"]);
  const n = Number(r.stdout.toString().trim());
  return Number.isFinite(n) && n > 0 ? n : 100;
}

export interface CpuMeter {
  /** CPU seconds used so far by `pid` and its descendants (see the module comment). */
  seconds(pid: number): number;
}

/** @example const cpu = createCpuMeter(); const before = cpu.seconds(pid); …; const used = cpu.seconds(pid) - before; */
export function createCpuMeter(): CpuMeter {
  const hz = ticksPerSecond();
  return {
    seconds(pid) {
      const root = readStat(pid);
      if (!root) return Number.NaN;
      const byParent = new Map<number, number[]>();
      for (const name of readdirSync("/proc")) {
        const child = Number(name);
        if (!Number.isInteger(child) || child === pid) continue;
        const s = readStat(child);
        if (!s) continue;
        const list = byParent.get(s.ppid);
        if (list) list.push(child);
        else byParent.set(s.ppid, [child]);
      }
      let ticks = root.own + root.children;
      const stack = [...(byParent.get(pid) ?? [])];
      while (stack.length > 0) {
        const p = stack.pop()!;
        const s = readStat(p);
        if (s) ticks += s.own;
        stack.push(...(byParent.get(p) ?? []));
      }
      return ticks / hz;
    },
  };
}
