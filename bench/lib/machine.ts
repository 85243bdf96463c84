/**
 * How busy the machine is before a benchmark starts. Every figure here is "per core of this machine": other
 * work on it (a test suite, a compiler) takes cores from the relay and from the load generators alike, and the
 * figures then measure the neighbours. The benches print this so a reader knows whether to trust a run.
 */
import { readFileSync } from "node:fs";
import { cpus } from "node:os";

function cpuTicks(): { busy: number; total: number } {
  const line = readFileSync("/proc/stat", "utf8").split("\n")[0] ?? "";
  const v = line.trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal …: idle + iowait are the idle share.
  const total = v.reduce((a, b) => a + b, 0);
  const idle = (v[3] ?? 0) + (v[4] ?? 0);
  return { busy: total - idle, total };
}

/** Share of all cores busy over `ms` (0..1), measured from /proc/stat. */
export async function machineBusy(ms = 1000): Promise<number> {
  const a = cpuTicks();
  await Bun.sleep(ms);
  const b = cpuTicks();
  const total = b.total - a.total;
  return total > 0 ? (b.busy - a.busy) / total : 0;
}

/** A detail line about the machine: cores and how busy it was just before the run. */
export async function machineNote(): Promise<string> {
  const busy = await machineBusy();
  const { cores: n, cpu, kernel } = machineInfo();
  const warn =
    busy > 0.15 ? " — other work is running: these figures measure it too; rerun on a quiet machine" : "";
  return `machine: ${n} cores (${cpu}), ${kernel}, ${(busy * 100).toFixed(0)} % busy before the run${warn}`;
}

/** The machine as the results table names it: cores, CPU model, kernel. */
export function machineInfo(): { cores: number; cpu: string; kernel: string } {
  const kernel = (() => {
    try {
      return readFileSync("/proc/sys/kernel/osrelease", "utf8").trim();
    } catch {
      return "unknown";
    }
  })();
  return { cores: cpus().length, cpu: cpus()[0]?.model.trim() ?? "unknown", kernel: `Linux ${kernel}` };
}
