/**
 * The kernel's default socket buffers, as `pcoip-cmsg install` leaves them (SPEC §4: sysctl.d raises
 * net.core.rmem_default / wmem_default to 4 MiB, because Bun's UDP sockets cannot set SO_RCVBUF). The UDP
 * benchmarks measure the SG as installed, so they raise the two values for their run and put the old ones back
 * afterwards — also on Ctrl-C; only a SIGKILL of the bench leaves them raised (harmless: buffers are charged
 * as used). Without root the values stay as they are and the bench says so.
 */
import { readFileSync, writeFileSync } from "node:fs";

/** What install writes (src/cli/install.ts SOCKET_BUFFER_BYTES). */
export const INSTALLED_SOCKET_BUFFER_BYTES = 4 * 1024 * 1024;

const KEYS = ["rmem_default", "wmem_default"] as const;
const path = (k: string) => `/proc/sys/net/core/${k}`;

export function readSocketBufferDefaults(): { rmem_default: number; wmem_default: number } {
  const read = (k: string) => Number(readFileSync(path(k), "utf8").trim());
  return { rmem_default: read("rmem_default"), wmem_default: read("wmem_default") };
}

export interface SocketBufferChange {
  /** The values in force after the change (unchanged when not root). */
  readonly now: { rmem_default: number; wmem_default: number };
  /** Why nothing was changed, when nothing was. */
  readonly skipped?: string;
  /** Puts the previous values back (idempotent). */
  restore(): void;
}

/** Sets both defaults to `bytes` (never lowers them); `restore()` undoes it. */
export function setSocketBufferDefaults(bytes = INSTALLED_SOCKET_BUFFER_BYTES): SocketBufferChange {
  const before = readSocketBufferDefaults();
  if (process.getuid?.() !== 0) {
    return { now: before, skipped: "not root: kernel defaults kept", restore() {} };
  }
  let restored = false;
  const restore = () => {
    if (restored) return;
    restored = true;
    for (const k of KEYS) writeFileSync(path(k), String(before[k]));
    process.off("exit", restore);
  };
  for (const k of KEYS) if (before[k] < bytes) writeFileSync(path(k), String(bytes));
  process.on("exit", restore);
  return { now: readSocketBufferDefaults(), restore };
}
