/**
 * configure rewrites the config from its values: the TOML writer must give back exactly what it was given
 * (nested tables, arrays of tables, awkward strings and keys), in the same order every time.
 */
import { expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describeChanges, parseEnvFile, renderEnvFile, renderToml } from "../../src/cli/configure.ts";

const example = readFileSync(join(import.meta.dir, "..", "..", "config", "pcoip-cmsg.example.toml"), "utf8");

test("the example config survives parse → write → parse unchanged", () => {
  const parsed = Bun.TOML.parse(example);
  const written = renderToml(parsed as Record<string, unknown>);
  expect(Bun.TOML.parse(written)).toEqual(parsed);
  expect(written).toContain("[cm.throttle]");
  expect(written).toContain("[[desktops]]");
  // Plain keys of a table come before its sub-tables, top-level ones before any table.
  expect(written.indexOf("logLevel")).toBeLessThan(written.indexOf("[tls]"));
  expect(written.indexOf("agentTimeoutSeconds")).toBeLessThan(written.indexOf("[cm.throttle]"));
});

test("awkward values and keys round-trip", () => {
  const value = {
    "odd key": 'quote " backslash \\ tab \t newline \n unicode é ✓ control \u0001',
    n: -3,
    f: 0.25,
    empty: [],
    nested: { deeper: { x: true }, list: [1, 2] },
    tables: [{ id: "a", sub: { k: "v" } }, { id: "b" }],
  };
  const written = renderToml(value);
  expect(Bun.TOML.parse(written)).toEqual(value);
});

test("the order is the schema's, whatever order the input had", () => {
  const a = renderToml({ tls: { key: "k", cert: "c" }, brokerUrl: "", enableIpv6: true, zzUnknown: 1 });
  const b = renderToml({ zzUnknown: 1, enableIpv6: true, brokerUrl: "", tls: { cert: "c", key: "k" } });
  expect(a).toBe(b);
  expect(a.indexOf("enableIpv6")).toBeLessThan(a.indexOf("brokerUrl"));
  expect(a.indexOf("brokerUrl")).toBeLessThan(a.indexOf("zzUnknown"));
  expect(a.indexOf("cert =")).toBeLessThan(a.indexOf("key ="));
});

test("changes are listed per key, old → new", () => {
  expect(describeChanges({ a: 1, t: { x: "1" } }, { a: 1, t: { x: "2" }, b: [1] })).toEqual([
    "b: (unset) → [1]",
    't.x: "1" → "2"',
  ]);
});

test("proxy.env values with quotes, dollars and backslashes read back as written", () => {
  const vars = new Map([
    ["HTTPS_PROXY", "http://10.0.0.8:3128"],
    ["HTTPS_PROXY_PASSWORD", 'p"a$s\\w`d'],
  ]);
  expect(parseEnvFile(renderEnvFile(vars))).toEqual(vars);
});
