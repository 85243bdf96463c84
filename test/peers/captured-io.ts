import type { CliIo } from "../../src/cli/io.ts";

/** A command's stdout and stderr, collected as text for a test to read after (or while) the command runs. */
export function capturedIo(): CliIo & { out: string; err: string } {
  const c = {
    out: "",
    err: "",
    stdout(t: string) {
      c.out += t;
    },
    stderr(t: string) {
      c.err += t;
    },
  };
  return c;
}
