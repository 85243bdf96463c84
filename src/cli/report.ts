/**
 * What the setup commands share below configure.ts: one line per step to the administrator (Reporter), and
 * writing a file so that no reader ever sees half of it. Apart from configure.ts so that install-log.ts and
 * sysctl-file.ts, which configure.ts uses, need not import it back.
 */
import { chmodSync, mkdirSync, renameSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import type { CliIo } from "./io.ts";

/** One line per step: what was done, or — when staging — what would be done on a real host. */
export interface Reporter {
  done(text: string): void;
  /** A host change skipped because of --root: the command or action that a real install performs. */
  would(text: string): void;
  note(text: string): void;
  warn(text: string): void;
}

export function createReporter(io: CliIo): Reporter {
  return {
    done: (t) => io.stdout(`  ✓ ${t}\n`),
    would: (t) => io.stdout(`  - staged, not run here: ${t}\n`),
    note: (t) => io.stdout(`  · ${t}\n`),
    warn: (t) => io.stderr(`  ! warning: ${t}\n`),
  };
}

/** Writes through a temporary file and a rename, so a reader never sees half a file. */
export function writeFileAtomic(file: string, data: string | Uint8Array, mode: number): void {
  mkdirSync(dirname(file), { recursive: true });
  const tmp = `${file}.tmp-${process.pid}`;
  writeFileSync(tmp, data, { mode });
  chmodSync(tmp, mode);
  renameSync(tmp, file);
}
