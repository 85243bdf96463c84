// Claim: the fleet dashboard (contrib/grafana) and the alert rules (contrib/prometheus) only name metrics a running
// node exports: every pcoip_* name in every query is a family in a live appliance's /metrics; the files parse
// (JSON, YAML), every query has balanced brackets, and the dashboard covers what a fleet needs (node up, ready,
// draining, logins/s, failures by stage, SG sessions, drops by reason, descriptor headroom).
import { afterAll, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { type ApplianceProcess, startApplianceProcess } from "../peers/appliance-process.ts";
import { sgEnv } from "../peers/appliance-session.ts";

const ROOT = resolve(import.meta.dir, "../..");
const DASHBOARD = join(ROOT, "contrib/grafana/pcoip-cmsg-fleet.json");
const RULES = join(ROOT, "contrib/prometheus/pcoip-cmsg-alerts.yml");
/** Series Prometheus makes itself (not exported by the node). */
const PROMETHEUS_OWN = new Set(["up"]);

let app: ApplianceProcess | undefined;
afterAll(async () => {
  await app?.kill();
  app?.cleanup();
});

/** Every `expr` string anywhere in a parsed document. */
function exprs(node: unknown, out: string[] = []): string[] {
  if (Array.isArray(node)) for (const v of node) exprs(v, out);
  else if (node && typeof node === "object")
    for (const [k, v] of Object.entries(node)) {
      if (k === "expr" && typeof v === "string") out.push(v);
      else exprs(v, out);
    }
  return out;
}

function metricNames(expr: string): string[] {
  const names = [...expr.matchAll(/\b(pcoip_[a-z0-9_]+)\b/g)].map((m) => m[1]!);
  for (const m of expr.matchAll(/\b(up)\{/g)) names.push(m[1]!);
  return names;
}

function balanced(expr: string): boolean {
  const pairs: Record<string, string> = { ")": "(", "]": "[", "}": "{" };
  const stack: string[] = [];
  let quoted = false;
  for (const ch of expr) {
    if (ch === '"') quoted = !quoted;
    if (quoted) continue;
    if ("([{".includes(ch)) stack.push(ch);
    else if (ch in pairs && stack.pop() !== pairs[ch]) return false;
  }
  return stack.length === 0 && !quoted;
}

describe("contrib monitoring files", () => {
  const dashboard = JSON.parse(readFileSync(DASHBOARD, "utf8")) as { panels: { title: string }[] };
  const rules = Bun.YAML.parse(readFileSync(RULES, "utf8")) as {
    groups: { rules: { alert: string; expr: string }[] }[];
  };
  const all = [...exprs(dashboard), ...exprs(rules)];

  test("both parse, and every query has balanced brackets", () => {
    expect(exprs(dashboard).length).toBeGreaterThan(10);
    expect(rules.groups[0]!.rules.length).toBeGreaterThan(5);
    for (const r of rules.groups.flatMap((g) => g.rules)) {
      expect(r.alert).toMatch(/^Pcoip[A-Za-z]+$/);
      expect(typeof r.expr).toBe("string");
    }
    expect(all.filter((e) => !balanced(e))).toEqual([]);
  });

  test("the dashboard shows what a fleet needs", () => {
    const text = JSON.stringify(dashboard);
    for (const name of [
      "up{",
      "pcoip_node_ready",
      "pcoip_node_draining",
      'pcoip_cm_logins_total{outcome=\\"ok\\"',
      "pcoip_session_verdicts_total",
      "pcoip_sg_sessions",
      "pcoip_sg_udp_drops_total",
      "pcoip_descriptors_budget",
    ])
      expect(text).toContain(name);
  });

  test("every metric they name is exported by a running node", async () => {
    app = await startApplianceProcess({ agent: "127.0.0.1:9", env: sgEnv() });
    const r = await app.adminGet("/metrics");
    expect(r.status).toBe(200);
    const exported = new Set([...(await r.text()).matchAll(/^# TYPE (\S+) /gm)].map((m) => m[1]!));
    const named = new Set(all.flatMap(metricNames));
    expect(named.size).toBeGreaterThan(10);
    const missing = [...named].filter((n) => !exported.has(n) && !PROMETHEUS_OWN.has(n));
    expect(missing).toEqual([]);
  });
});
