/**
 * Prometheus text exposition (format 0.0.4) without a dependency: the planes keep plain number fields on their
 * own objects (no per-packet work here), and a registry of collector functions reads them when /metrics is
 * scraped. Histograms are the one kind that records on the hot path, so they are fixed-bucket arrays.
 */

export type Labels = Readonly<Record<string, string>>;

export interface Sample {
  readonly labels?: Labels;
  readonly value: number;
}

export interface MetricFamily {
  readonly name: string;
  readonly help: string;
  readonly type: "counter" | "gauge" | "histogram";
  readonly samples: readonly Sample[] | (() => readonly Sample[]);
}

/** A counter family: the planes list many, and a one-line call keeps each family's name and help readable. */
export function counter(name: string, help: string, samples: readonly Sample[]): MetricFamily {
  return { name, help, type: "counter", samples };
}

/** A gauge family (see `counter`). */
export function gauge(name: string, help: string, samples: readonly Sample[]): MetricFamily {
  return { name, help, type: "gauge", samples };
}

/** One sample per entry of a `{ key: count }` record, the key under `label` (refusals by reason, sessions by state…). */
export function samplesByLabel(label: string, counts: Readonly<Record<string, number>>): Sample[] {
  return Object.entries(counts).map(([key, value]) => ({ labels: { [label]: key }, value }));
}

/** The two samples of a relayed-both-ways figure, labelled the way every `*_total{direction}` family is. */
export function samplesByDirection(toAgent: number, toClient: number): Sample[] {
  return [
    { labels: { direction: "to_agent" }, value: toAgent },
    { labels: { direction: "to_client" }, value: toClient },
  ];
}

/** A fixed-bucket histogram (seconds); `observe` is O(buckets) with no allocation. */
export class Histogram {
  readonly #bounds: readonly number[];
  readonly #counts: number[];
  #sum = 0;
  #count = 0;

  constructor(
    readonly name: string,
    readonly help: string,
    bounds: readonly number[] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
  ) {
    this.#bounds = bounds;
    this.#counts = new Array(bounds.length).fill(0);
  }

  observe(seconds: number): void {
    this.#sum += seconds;
    this.#count++;
    for (let i = 0; i < this.#bounds.length; i++) if (seconds <= this.#bounds[i]!) this.#counts[i]!++;
  }

  render(): string {
    const lines = [`# HELP ${this.name} ${escapeHelp(this.help)}`, `# TYPE ${this.name} histogram`];
    for (let i = 0; i < this.#bounds.length; i++) {
      lines.push(`${this.name}_bucket{le="${this.#bounds[i]}"} ${this.#counts[i]}`);
    }
    lines.push(
      `${this.name}_bucket{le="+Inf"} ${this.#count}`,
      `${this.name}_sum ${this.#sum}`,
      `${this.name}_count ${this.#count}`,
    );
    return lines.join("\n");
  }
}

/** Counts by a label value (e.g. allocations by result id); values are created on first use. */
export class LabelledCounter {
  readonly #values = new Map<string, number>();
  constructor(
    readonly name: string,
    readonly help: string,
    readonly label: string,
  ) {}

  inc(value: string, by = 1): void {
    this.#values.set(value, (this.#values.get(value) ?? 0) + by);
  }

  get(value: string): number {
    return this.#values.get(value) ?? 0;
  }

  family(): MetricFamily {
    return {
      name: this.name,
      help: this.help,
      type: "counter",
      samples: () => [...this.#values].map(([v, n]) => ({ labels: { [this.label]: v }, value: n })),
    };
  }
}

export interface MetricsRegistry {
  add(family: MetricFamily | Histogram | (() => readonly (MetricFamily | Histogram)[])): void;
  render(): string;
}

/** @example const m = createMetricsRegistry(); m.add({ name: "x_total", help: "…", type: "counter", samples: () => [{ value: n }] }) */
export function createMetricsRegistry(): MetricsRegistry {
  const sources: (MetricFamily | Histogram | (() => readonly (MetricFamily | Histogram)[]))[] = [];
  return {
    add(f) {
      sources.push(f);
    },
    render() {
      const out: string[] = [];
      for (const src of sources) {
        const families = typeof src === "function" ? src() : [src];
        for (const f of families) out.push(f instanceof Histogram ? f.render() : renderFamily(f));
      }
      return `${out.join("\n")}\n`;
    },
  };
}

function renderFamily(f: MetricFamily): string {
  const samples = typeof f.samples === "function" ? f.samples() : f.samples;
  const lines = [`# HELP ${f.name} ${escapeHelp(f.help)}`, `# TYPE ${f.name} ${f.type}`];
  for (const s of samples) lines.push(`${f.name}${renderLabels(s.labels)} ${formatValue(s.value)}`);
  return lines.join("\n");
}

function renderLabels(labels: Labels | undefined): string {
  if (!labels) return "";
  const parts = Object.entries(labels).map(
    ([k, v]) => `${k}="${v.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n")}"`,
  );
  return parts.length ? `{${parts.join(",")}}` : "";
}

function formatValue(v: number): string {
  if (Number.isNaN(v)) return "NaN";
  if (v === Number.POSITIVE_INFINITY) return "+Inf";
  if (v === Number.NEGATIVE_INFINITY) return "-Inf";
  return String(v);
}

function escapeHelp(h: string): string {
  return h.replace(/\\/g, "\\\\").replace(/\n/g, "\\n");
}
