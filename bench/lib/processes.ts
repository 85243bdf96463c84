/**
 * Every process a benchmark starts goes through one `ProcessSet`, which stops them all — on success, on a thrown
 * error (the script's `finally`), on Ctrl-C / SIGTERM, and, as a last resort, with SIGKILL when the bench process
 * exits. A benchmark that leaves an nginx or a load generator running would skew every figure after it.
 */

export interface Child {
  readonly name: string;
  readonly pid: number;
  /** Lines printed on stdout so far. */
  lines(): readonly string[];
  /** Resolves with the first stdout line for which `match` is true (already printed ones count). */
  waitForLine(match: (line: string) => boolean, ms?: number): Promise<string>;
  /** stderr so far (for error messages). */
  stderr(): string;
  /** Writes to the child's stdin (when it was started with `stdin: "pipe"`). */
  write(text: string): void;
  /** Resolves with the exit code. */
  readonly exited: Promise<number>;
  /** SIGTERM, then SIGKILL after `graceMs`; resolves once the process is gone. */
  stop(graceMs?: number): Promise<void>;
}

export interface SpawnOptions {
  readonly stdin?: "pipe" | "ignore";
  readonly cwd?: string;
  readonly env?: Record<string, string | undefined>;
}

export interface ProcessSet {
  spawn(name: string, argv: readonly string[], options?: SpawnOptions): Child;
  /** Stops every process still running (in reverse start order). */
  stopAll(): Promise<void>;
}

/**
 * @example
 * const procs = createProcessSet();
 * try { const echo = procs.spawn("udp-echo", [bin, "127.0.0.1", "0"]); … } finally { await procs.stopAll(); }
 */
export function createProcessSet(): ProcessSet {
  const running = new Set<Child & { kill(sig: NodeJS.Signals): void }>();

  const killAllNow = () => {
    for (const c of running) c.kill("SIGKILL");
  };
  const onSignal = (sig: NodeJS.Signals) => {
    void stopAll().finally(() => process.exit(sig === "SIGINT" ? 130 : 143));
  };
  process.on("exit", killAllNow);
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);

  async function stopAll(): Promise<void> {
    await Promise.all([...running].reverse().map((c) => c.stop()));
  }

  return {
    spawn(name, argv, options = {}) {
      const proc = Bun.spawn([...argv], {
        stdin: options.stdin ?? "ignore",
        stdout: "pipe",
        stderr: "pipe",
        ...(options.cwd ? { cwd: options.cwd } : {}),
        ...(options.env ? { env: options.env } : {}),
      });
      const out: string[] = [];
      let err = "";
      const waiters: { match: (l: string) => boolean; resolve: (l: string) => void }[] = [];
      void (async () => {
        let partial = "";
        const decoder = new TextDecoder();
        for await (const chunk of proc.stdout) {
          partial += decoder.decode(chunk, { stream: true });
          let nl = partial.indexOf("\n");
          while (nl >= 0) {
            const line = partial.slice(0, nl);
            partial = partial.slice(nl + 1);
            out.push(line);
            for (let i = waiters.length - 1; i >= 0; i--) {
              if (waiters[i]!.match(line)) waiters.splice(i, 1)[0]!.resolve(line);
            }
            nl = partial.indexOf("\n");
          }
        }
        if (partial) out.push(partial);
      })();
      void (async () => {
        const decoder = new TextDecoder();
        for await (const chunk of proc.stderr)
          err = (err + decoder.decode(chunk, { stream: true })).slice(-20_000);
      })();
      let stopping: Promise<void> | undefined;
      const child = {
        name,
        pid: proc.pid,
        lines: () => out,
        stderr: () => err,
        exited: proc.exited,
        kill(sig: NodeJS.Signals) {
          try {
            proc.kill(sig);
          } catch {
            // already gone
          }
        },
        write(text: string) {
          const sink = proc.stdin;
          if (!sink || typeof sink === "number") throw new Error(`${name}: started without stdin: "pipe"`);
          sink.write(text);
          sink.flush();
        },
        waitForLine(match: (l: string) => boolean, ms = 10_000) {
          const hit = out.find(match);
          if (hit !== undefined) return Promise.resolve(hit);
          const w = Promise.withResolvers<string>();
          const waiter = { match, resolve: w.resolve };
          waiters.push(waiter);
          const timer = setTimeout(() => {
            waiters.splice(waiters.indexOf(waiter), 1);
            w.reject(new Error(`${name}: no expected output within ${ms} ms; stderr: ${err.slice(-800)}`));
          }, ms);
          void proc.exited.then((code) => {
            if (waiters.includes(waiter)) {
              waiters.splice(waiters.indexOf(waiter), 1);
              w.reject(
                new Error(`${name} exited (${code}) before the expected output; stderr: ${err.slice(-800)}`),
              );
            }
          });
          return w.promise.finally(() => clearTimeout(timer));
        },
        stop(graceMs = 3000) {
          stopping ??= (async () => {
            if (proc.exitCode === null && proc.signalCode === null) {
              child.kill("SIGTERM");
              const timer = setTimeout(() => child.kill("SIGKILL"), graceMs);
              await proc.exited;
              clearTimeout(timer);
            }
            running.delete(child);
          })();
          return stopping;
        },
      };
      running.add(child);
      void proc.exited.then(() => running.delete(child));
      return child;
    },
    stopAll,
  };
}
