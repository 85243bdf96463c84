/**
 * The printed shape every benchmark shares (the benchmark issue):
 *   <figure name>: <value> <unit> (peer <peer name>: <value> <unit>; ratio <x.xx>)
 *   target <what>: met | missed by <how much>
 * Detail lines (setup, counters, CPU) are indented by two spaces so a reader (or grep) can tell them apart.
 */

/** Up to three significant digits after the point for small values, fewer for large ones. */
export function fmt(value: number): string {
  if (!Number.isFinite(value)) return String(value);
  const a = Math.abs(value);
  if (a >= 100) return value.toFixed(0);
  if (a >= 10) return value.toFixed(1);
  if (a >= 1) return value.toFixed(2);
  return value.toFixed(3);
}

export interface Figure {
  readonly name: string;
  readonly value: number;
  readonly unit: string;
  readonly peer: string;
  readonly peerValue: number;
  /** Defaults to `unit`. */
  readonly peerUnit?: string;
}

/** One figure line; the ratio is value / peer value ("n/a" when the peer's value is 0 or not finite). */
export function figureLine(f: Figure): string {
  const ratio =
    Number.isFinite(f.peerValue) && f.peerValue !== 0 && Number.isFinite(f.value)
      ? (f.value / f.peerValue).toFixed(2)
      : "n/a";
  return `${f.name}: ${fmt(f.value)} ${f.unit} (peer ${f.peer}: ${fmt(f.peerValue)} ${f.peerUnit ?? f.unit}; ratio ${ratio})`;
}

/** `target <what>: met` or `target <what>: missed by <shortfall>`. */
export function verdictLine(what: string, met: boolean, shortfall: string): string {
  return `target ${what}: ${met ? "met" : `missed by ${shortfall}`}`;
}

/** Prints a figure (or any line) at once, so a long run shows progress. */
export function print(line: string): void {
  process.stdout.write(`${line}\n`);
}

/** An indented detail line. */
export function detail(line: string): void {
  process.stdout.write(`  ${line}\n`);
}

/** A number from the environment, or the default; a malformed value is a usage error (thrown). */
export function envNumber(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === "") return fallback;
  const n = Number(raw);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`reading ${name}: "${raw}" is not a positive number`);
  return n;
}
