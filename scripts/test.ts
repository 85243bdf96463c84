/**
 * The whole test suite, as `npm test` and CI run it: system packages the real test peers need, typecheck,
 * lint, then every bun test file. Prints the plain closing line `N passed, N failed` (bun writes its own
 * summary to stderr in another form) and exits non-zero on any failure.
 *
 * Arguments are passed to `bun test` (e.g. `npm test -- test/unit`), which skips typecheck and lint.
 */
import { spawn, spawnSync } from "node:child_process";

const args = process.argv.slice(2);
const focused = args.length > 0;
let failedSteps = 0;

function step(name: string, cmd: string, argv: string[]): void {
  process.stdout.write(`\n== ${name}\n`);
  const r = spawnSync(cmd, argv, { stdio: "inherit" });
  if (r.status !== 0) {
    failedSteps++;
    process.stdout.write(`== ${name}: FAILED (exit ${r.status ?? r.signal})\n`);
  }
}

step("system packages for test peers", "bash", ["scripts/system-deps.sh"]);
if (!focused) {
  step("typecheck (tsc --noEmit)", "npx", ["tsc", "--noEmit", "-p", "."]);
  step("lint and format (biome check)", "npx", ["biome", "check", "src", "test", "bench", "scripts"]);
}

process.stdout.write("\n== bun test\n");
const parallel = process.env.TEST_PARALLEL ?? "2";
const testArgs = ["test", "--timeout=30000", `--parallel=${parallel}`, ...(focused ? args : ["test/"])];
const child = spawn(process.execPath, testArgs, { stdio: ["ignore", "inherit", "pipe"], env: process.env });
let tail = "";
child.stderr.on("data", (d: Buffer) => {
  process.stderr.write(d);
  tail = (tail + d.toString()).slice(-20000);
});
child.on("close", (code) => {
  const pass = Number(/^\s*(\d+) pass\s*$/m.exec(tail)?.[1] ?? 0);
  const fail = Number(/^\s*(\d+) fail\s*$/m.exec(tail)?.[1] ?? 0);
  const skip = Number(/^\s*(\d+) skip\s*$/m.exec(tail)?.[1] ?? 0);
  // In CI a skipped test is a failure: the real peers (slapd, tinyproxy, systemd-analyze, network namespaces)
  // are installed by this script there, so a skip means a test silently stopped testing.
  const skipsFail = process.env.CI === "true" && skip > 0;
  if (skipsFail)
    process.stdout.write(`\n${skip} test(s) skipped under CI=true: a skipped test counts as failed\n`);
  const failed = fail + failedSteps + (code !== 0 && fail === 0 ? 1 : 0) + (skipsFail ? skip : 0);
  if (failedSteps > 0)
    process.stdout.write(`\n${failedSteps} non-test step(s) failed (see == lines above)\n`);
  process.stdout.write(`\n${pass} passed, ${failed} failed\n`);
  process.exit(failed > 0 || pass === 0 ? 1 : 0);
});
