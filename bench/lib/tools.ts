/**
 * The C load generators (bench/c/*.c), built with gcc into bench/.work/bin when missing or older than their
 * source, and the Debian peers (bench/peers-install.sh). C, because a load generator written in the runtime under
 * test would measure itself: these send and receive in batches (sendmmsg/recvmmsg) for a few µs per datagram.
 */
import { existsSync, mkdirSync, statSync } from "node:fs";
import { join } from "node:path";

export const BENCH_DIR = join(import.meta.dir, "..");
export const WORK_DIR = join(BENCH_DIR, ".work");
const C_DIR = join(BENCH_DIR, "c");
const BIN_DIR = join(WORK_DIR, "bin");

export type ToolName = "udp-echo" | "udp-load" | "tcp-sink" | "tcp-send";

/** Path of a built tool; builds it first when needed. Throws with gcc's message when the build fails. */
export function tool(name: ToolName): string {
  mkdirSync(BIN_DIR, { recursive: true });
  const src = join(C_DIR, `${name}.c`);
  const header = join(C_DIR, "common.h");
  const bin = join(BIN_DIR, name);
  const newest = Math.max(statSync(src).mtimeMs, statSync(header).mtimeMs);
  if (existsSync(bin) && statSync(bin).mtimeMs >= newest) return bin;
  const r = Bun.spawnSync(["gcc", "-O2", "-Wall", "-Wextra", "-std=gnu11", "-o", bin, src]);
  if (r.exitCode !== 0) throw new Error(`building ${name} with gcc: ${r.stderr.toString().slice(-2000)}`);
  return bin;
}

/** Runs bench/peers-install.sh (installs nginx, haproxy, socat when missing); throws when they are still absent. */
export function ensurePeers(): void {
  const r = Bun.spawnSync(["bash", join(BENCH_DIR, "peers-install.sh")], {
    stdout: "inherit",
    stderr: "inherit",
  });
  if (r.exitCode !== 0)
    throw new Error("installing benchmark peers: bench/peers-install.sh failed (see above)");
}

/** A work folder for one benchmark run (configs, logs), under bench/.work (gitignored). */
export function workDir(name: string): string {
  const dir = join(WORK_DIR, name);
  mkdirSync(dir, { recursive: true });
  return dir;
}
