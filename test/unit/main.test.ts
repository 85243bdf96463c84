// Claim: the entry point (`bun src/main.ts`) answers --help with every registered command, --version with the
// product name and version from src/version.ts, `<command> --help` with exit 0 for each command, and an unknown
// command with a non-zero exit, the bad word and the usage on stderr. Runs the real process, as a user would.
import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { PRODUCT_NAME, VERSION } from "../../src/version.ts";
import { type Ran, runCommand } from "../peers/run-command.ts";

const MAIN = resolve(import.meta.dir, "../../src/main.ts");

/** The command names registered in src/main.ts's COMMANDS table, read from the source (so new ones are covered). */
function registeredCommands(): string[] {
  const src = readFileSync(MAIN, "utf8");
  const start = src.indexOf("const COMMANDS");
  const end = src.indexOf("\n};", start);
  expect(start).toBeGreaterThan(-1);
  expect(end).toBeGreaterThan(start);
  const body = src.slice(start, end);
  return [...body.matchAll(/^ {2}(?:"([\w-]+)"|([\w]+)): \{/gm)].map((m) => (m[1] ?? m[2])!);
}

/** Runs `bun src/main.ts ...args`, killed after `timeoutMs` (the exit code then says so). */
function cli(args: string[], timeoutMs = 20_000): Promise<Ran> {
  return runCommand([process.execPath, MAIN, ...args], { timeoutMs });
}

const COMMANDS = registeredCommands();

describe("bun src/main.ts", () => {
  test("the command table is read from src/main.ts", () => {
    // The known set at the time of writing; a new command only needs to appear, none may vanish unnoticed.
    expect(COMMANDS).toEqual(
      expect.arrayContaining([
        "run",
        "install",
        "configure",
        "uninstall",
        "status",
        "diagnose",
        "create-darksite-bundle",
        "user",
        "config",
      ]),
    );
  });

  test("--help exits 0 and names every registered command", async () => {
    const r = await cli(["--help"]);
    expect(r.code).toBe(0);
    expect(r.err).toBe("");
    expect(r.out).toContain(`Usage: ${PRODUCT_NAME} <command> [options]`);
    for (const c of COMMANDS) expect(r.out).toMatch(new RegExp(`^ {2}${c} +\\S`, "m"));
    expect(r.out).toContain("--version");
  }, 30_000);

  test("--version prints the product name and version (and exits 0)", async () => {
    const r = await cli(["--version"]);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/^pcoip-cmsg \d+\.\d+\.\d+/);
    expect(r.out.startsWith(`${PRODUCT_NAME} ${VERSION} (`)).toBe(true);
    expect(r.out).toContain(`bun ${Bun.version}`);
    expect(r.out.trim().split("\n")).toHaveLength(1);
  }, 30_000);

  test("no command at all prints the usage and exits 2", async () => {
    const r = await cli([]);
    expect(r.code).toBe(2);
    expect(r.out).toContain(`Usage: ${PRODUCT_NAME} <command>`);
  }, 30_000);

  test("`<command> --help` exits 0 with help text for every command", async () => {
    // Two at a time: the machine is small and shared.
    const results: [string, Ran][] = [];
    for (let i = 0; i < COMMANDS.length; i += 2) {
      const batch = COMMANDS.slice(i, i + 2);
      results.push(
        ...(await Promise.all(batch.map(async (c) => [c, await cli([c, "--help"])] as [string, Ran]))),
      );
    }
    for (const [c, r] of results) {
      if (r.code !== 0) throw new Error(`${c} --help exited ${r.code}: ${r.err}`);
      expect(r.out.toLowerCase()).toContain("usage");
      expect(r.out).toContain(c === "config" ? "config check" : `${PRODUCT_NAME} ${c}`);
    }
    expect(results.map(([c]) => c)).toEqual(COMMANDS);
  }, 120_000);

  test("an unknown command exits non-zero, names the word and shows the commands", async () => {
    const r = await cli(["frobnicate"]);
    expect(r.code).not.toBe(0);
    expect(r.code).toBe(2);
    expect(r.err).toContain('unknown command "frobnicate"');
    for (const c of COMMANDS) expect(r.err).toContain(`  ${c} `);
    expect(r.out).toBe("");
  }, 30_000);
});
