/** How commands talk to the terminal; tests pass collecting functions instead of the process streams. */
export interface CliIo {
  stdout(text: string): void;
  stderr(text: string): void;
}

export const processIo: CliIo = {
  stdout: (t) => process.stdout.write(t),
  stderr: (t) => process.stderr.write(t),
};

/** A command module's entry point: argv after the command name → exit code. */
export type CommandMain = (argv: string[], io: CliIo) => Promise<number>;
