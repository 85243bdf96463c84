/**
 * `npm run bench`: every benchmark script in turn, each in its own bun process (so one script's sockets, JIT
 * and garbage never weigh on the next), printing their lines as they come and keeping them, with the date and
 * the machine, in bench/results/bench-<UTC date>.txt (the raw output the README's Performance table is made
 * from). Arguments filter by name (`npm run bench -- sg-udp` runs the scripts whose file name contains
 * "sg-udp"). Exits non-zero when a script failed to run; a missed target is a printed verdict, not a failure.
 */
import { appendFileSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { machineInfo } from "./lib/machine.ts";

/** The figures, in the order they run. Add a script here when a figure is added. */
export const BENCHMARKS: readonly { readonly file: string; readonly figure: string }[] = [
  {
    file: "sg-udp-headline.ts",
    figure: "SG UDP media, headline (500 flows, 365 Mbit/s; highest load; Worker question)",
  },
  { file: "sg-udp-closed-loop.ts", figure: "SG UDP relay, closed loop vs nginx stream udp" },
  {
    file: "sg-udp-netns.ts",
    figure:
      "SG UDP kernel path in three namespaces: closed loop and 500-session media vs nginx udp and direct routing",
  },
  { file: "sg-tcp-throughput.ts", figure: "SG TCP relay throughput and CPU-s/GB vs nginx, haproxy, socat" },
  {
    file: "sg-sessions.ts",
    figure: "SG concurrent sessions (descriptor limit, memory per session) vs nginx",
  },
  {
    file: "cm-establishment.ts",
    figure: "CM establishment (hello→bye, upstreams at 50 ms) vs direct to broker",
  },
  {
    file: "cm-logins.ts",
    figure:
      "CM full logins (new TLS connection each, built-in broker, agent 0/50 ms) vs nginx full handshakes; RSA-3072, RSA-2048, P-256",
  },
  { file: "cm-connections.ts", figure: "CM idle keep-alive TLS connections vs nginx TLS termination" },
  {
    file: "lb-nodes.ts",
    figure: "Logins through HAProxy (L7 reference) to 1, 2 and 3 nodes on shared cores; memory a node adds",
  },
  { file: "footprint.ts", figure: "Footprint: start-up to ready, idle RSS, binary and bundle size vs nginx" },
  { file: "xml-parse.ts", figure: "XML parse and build per document vs fast-xml-parser defaults" },
];

const filters = process.argv.slice(2);
const chosen = BENCHMARKS.filter((b) => filters.length === 0 || filters.some((f) => b.file.includes(f)));
if (chosen.length === 0) {
  process.stderr.write(
    `no benchmark matches ${filters.join(", ")}; known: ${BENCHMARKS.map((b) => b.file).join(", ")}\n`,
  );
  process.exit(2);
}

const resultsDir = join(import.meta.dir, "results");
mkdirSync(resultsDir, { recursive: true });
const date = new Date().toISOString();
const resultsFile = join(resultsDir, `bench-${date.slice(0, 10)}.txt`);
writeFileSync(resultsFile, "");
/** Prints and keeps a line of the run. */
const out = (text: string) => {
  process.stdout.write(text);
  appendFileSync(resultsFile, text);
};

const m = machineInfo();
out(`npm run bench — ${date} — ${m.cores} cores, ${m.cpu}, ${m.kernel}, bun ${Bun.version}\n`);
const failed: string[] = [];
const t0 = performance.now();
for (const b of chosen) {
  out(`\n== ${b.file}: ${b.figure}\n`);
  const started = performance.now();
  const proc = Bun.spawn([process.execPath, join(import.meta.dir, b.file)], {
    stdout: "pipe",
    stderr: "pipe",
    stdin: "ignore",
  });
  // Both streams go to the terminal and to the results file, as they come.
  const pump = async (stream: ReadableStream<Uint8Array>) => {
    const decoder = new TextDecoder();
    for await (const chunk of stream) out(decoder.decode(chunk, { stream: true }));
  };
  await Promise.all([pump(proc.stdout), pump(proc.stderr)]);
  const code = await proc.exited;
  const seconds = ((performance.now() - started) / 1000).toFixed(0);
  if (code !== 0) failed.push(b.file);
  out(`== ${b.file}: ${code === 0 ? "done" : `FAILED (exit ${code})`} in ${seconds} s\n`);
}
const total = ((performance.now() - t0) / 1000).toFixed(0);
out(`\n${chosen.length - failed.length} of ${chosen.length} benchmarks ran in ${total} s`);
out(failed.length ? `; failed: ${failed.join(", ")}\n` : "\n");
process.stdout.write(`raw output: ${resultsFile}\n`);
process.exit(failed.length ? 1 : 0);
