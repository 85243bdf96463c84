/**
 * The install log: every step install, configure, uninstall and the package scripts report also goes, with a
 * timestamp, to /var/log/pcoip-cmsg/install.log, beside the journal (the vendor keeps one there too), so an
 * upgrade that ran from dnf or apt can be read back later. Lines are held until `commit()` (the command starts
 * changing the host): a refused command promises that nothing was written, the log included. Writing it never
 * stops the command: when the file cannot be written the command says so once and goes on.
 */
import { appendFileSync, mkdirSync } from "node:fs";
import { dirname } from "node:path";
import type { CliIo } from "./io.ts";
import type { Reporter } from "./report.ts";

export interface InstallLog {
  /** Appends one line: "<ISO time> <command>: <text>" (held in memory until commit). */
  line(text: string): void;
  /** From now on lines go to the file, starting with those held. */
  commit(): void;
}

export function openInstallLog(
  file: string,
  command: string,
  io: CliIo,
  o: { committed?: boolean } = {},
): InstallLog {
  let broken = false;
  let committed = o.committed === true;
  const held: string[] = [];
  const write = (lines: string) => {
    if (broken) return;
    try {
      mkdirSync(dirname(file), { recursive: true, mode: 0o750 });
      appendFileSync(file, lines, { mode: 0o640 });
    } catch (e) {
      broken = true;
      io.stderr(
        `  ! warning: the install log ${file} cannot be written (${(e as NodeJS.ErrnoException).code ?? String(e)}); the steps are only shown here\n`,
      );
    }
  };
  return {
    line(text) {
      const entry = `${new Date().toISOString()} ${command}: ${text}\n`;
      if (committed) write(entry);
      else held.push(entry);
    },
    commit() {
      if (committed) return;
      committed = true;
      if (held.length > 0) write(held.splice(0).join(""));
    },
  };
}

/** A reporter that also writes each line to the install log. */
export function loggedReporter(inner: Reporter, log: InstallLog): Reporter {
  return {
    done: (t) => {
      inner.done(t);
      log.line(`done: ${t}`);
    },
    would: (t) => {
      inner.would(t);
      log.line(`staged: ${t}`);
    },
    note: (t) => {
      inner.note(t);
      log.line(`note: ${t}`);
    },
    warn: (t) => {
      inner.warn(t);
      log.line(`warning: ${t}`);
    },
  };
}
