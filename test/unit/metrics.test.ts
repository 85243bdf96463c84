// Claim: the registry renders valid Prometheus text: HELP/TYPE lines, escaped labels, histogram buckets cumulative.
import { describe, expect, test } from "bun:test";
import { createMetricsRegistry, Histogram, LabelledCounter } from "../../src/observability/metrics.ts";

describe("metrics registry", () => {
  test("counters, gauges, labelled counters and histograms render in text format", () => {
    const reg = createMetricsRegistry();
    let opened = 3;
    reg.add({
      name: "pcoip_sg_tcp_relays_open",
      help: "Open TCP relays.",
      type: "gauge",
      samples: () => [{ value: opened }],
    });
    const alloc = new LabelledCounter("pcoip_cm_allocations_total", "Allocations by result id.", "result");
    alloc.inc("ALLOC_SUCCESSFUL");
    alloc.inc("ALLOC_SUCCESSFUL");
    alloc.inc('we"ird\\');
    reg.add(alloc.family());
    const h = new Histogram("pcoip_cm_agent_seconds", "Agent latency.", [0.1, 1]);
    h.observe(0.05);
    h.observe(0.5);
    h.observe(5);
    reg.add(h);
    opened = 4;
    const text = reg.render();
    expect(text).toContain("# TYPE pcoip_sg_tcp_relays_open gauge\npcoip_sg_tcp_relays_open 4\n");
    expect(text).toContain('pcoip_cm_allocations_total{result="ALLOC_SUCCESSFUL"} 2');
    expect(text).toContain('pcoip_cm_allocations_total{result="we\\"ird\\\\"} 1');
    expect(text).toContain('pcoip_cm_agent_seconds_bucket{le="0.1"} 1');
    expect(text).toContain('pcoip_cm_agent_seconds_bucket{le="1"} 2');
    expect(text).toContain('pcoip_cm_agent_seconds_bucket{le="+Inf"} 3');
    expect(text).toContain("pcoip_cm_agent_seconds_count 3");
  });
});
