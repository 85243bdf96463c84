/**
 * The compiled executable, as shipped: built once with `bun build --compile` exactly as scripts/build.ts builds
 * dist/pcoip-cmsg (same flags and --define stamps; the x64-baseline variant is skipped, and the output goes to a
 * temporary folder so dist/ is left alone), then run from a folder outside the repository: --version carries the
 * stamped version, --help lists the commands, `config check` passes the shipped example and refuses a typo with a
 * did-you-mean, and `run` on a port-0 config opens every listener (the HTTPS one on two front-door worker threads,
 * answering over TLS) and exits 0 on SIGTERM.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import type { Subprocess } from "bun";
import { applianceToml } from "../peers/appliance-process.ts";
import { tcpAccepts } from "../peers/raw-http.ts";
import { cleanEnv, compileExecutable, type Ran, runCommand } from "../peers/run-command.ts";

const REPO = resolve(import.meta.dir, "../..");
const EXAMPLE = join(REPO, "config/pcoip-cmsg.example.toml");
const VERSION = (JSON.parse(readFileSync(join(REPO, "package.json"), "utf8")) as { version: string }).version;
const COMMIT = "e2etest";

const work = mkdtempSync(join(tmpdir(), "pcoip-cmsg-binary-"));
const binary = join(work, "pcoip-cmsg");
let buildError = "";

function runBinary(args: string[], timeoutMs = 30_000): Promise<Ran> {
  return runCommand([binary, ...args], { cwd: work, timeoutMs });
}

beforeAll(async () => {
  // The flags of scripts/build.ts's compile(): default target only.
  const r = await compileExecutable(binary, COMMIT, 110_000);
  if (r.code !== 0 || !existsSync(binary))
    buildError = `bun build --compile exited ${r.code}:\n${r.out}\n${r.err}`;
}, 120_000);

afterAll(() => rmSync(work, { recursive: true, force: true }));

describe("compiled executable", () => {
  test("is built, executable, and self-contained", () => {
    expect(buildError).toBe("");
    expect(statSync(binary).mode & 0o111).not.toBe(0);
    // The program is embedded in the executable: far bigger than the sources.
    expect(statSync(binary).size).toBeGreaterThan(10 * 1024 * 1024);
  });

  test("--version prints the stamped version and commit", async () => {
    const r = await runBinary(["--version"]);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/^pcoip-cmsg \d+\.\d+\.\d+/);
    expect(r.out).toStartWith(`pcoip-cmsg ${VERSION} (${COMMIT}) bun `);
  }, 60_000);

  test("--help lists the commands", async () => {
    const r = await runBinary(["--help"]);
    expect(r.code).toBe(0);
    for (const c of ["run", "install", "configure", "uninstall", "status", "diagnose", "user", "config"])
      expect(r.out).toMatch(new RegExp(`^ {2}${c} `, "m"));
    expect(r.out).toContain(`pcoip-cmsg ${VERSION}`);
  }, 60_000);

  test("config check passes the shipped example", async () => {
    const r = await runBinary(["config", "check", "--config", EXAMPLE]);
    if (r.code !== 0) throw new Error(`config check exited ${r.code}: ${r.err}`);
    expect(r.out).toContain(`config OK: ${EXAMPLE}`);
  }, 60_000);

  test("config check refuses a typo'd key with a did-you-mean and exits non-zero", async () => {
    const text = readFileSync(EXAMPLE, "utf8");
    expect(text).toMatch(/^logLevel = /m);
    const typo = join(work, "typo.toml");
    writeFileSync(typo, text.replace(/^logLevel = /m, "logLevl = "));
    const r = await runBinary(["config", "check", "--config", typo]);
    expect(r.code).not.toBe(0);
    expect(r.err).toContain('unknown key "logLevl"');
    expect(r.err).toContain('did you mean "logLevel"');
  }, 60_000);

  test("run on a port-0 config opens every listener; SIGTERM → exit 0", async () => {
    const dir = mkdtempSync(join(work, "run-"));
    const config = join(dir, "pcoip-cmsg.toml");
    // Two front-door worker threads (cm.workers): the worker's module must be inside the executable.
    writeFileSync(
      config,
      applianceToml(dir, {})
        .replace("drainSeconds = 5", "drainSeconds = 1")
        .replace("[cm]\n", "[cm]\nworkers = 2\n"),
    );
    const proc: Subprocess<"ignore", "pipe", "pipe"> = Bun.spawn([binary, "run", "--config", config], {
      cwd: dir,
      env: cleanEnv(),
      stdin: "ignore",
      stdout: "pipe",
      stderr: "pipe",
    });
    const stderr = new Response(proc.stderr).text();
    const seen = new Map<string, string>();
    const lines: string[] = [];
    const want = ["cm", "redirect", "sg-tcp", "sg-udp", "admin"];
    try {
      const reader = (async () => {
        const dec = new TextDecoder();
        let buf = "";
        for await (const chunk of proc.stdout) {
          buf += dec.decode(chunk, { stream: true });
          for (let nl = buf.indexOf("\n"); nl >= 0; nl = buf.indexOf("\n")) {
            const line = buf.slice(0, nl);
            buf = buf.slice(nl + 1);
            lines.push(line);
            try {
              const j = JSON.parse(line) as { listener?: string; address?: string };
              if (j.listener) seen.set(j.listener, String(j.address));
            } catch {
              // Not JSON: kept in `lines` for the failure message.
            }
          }
        }
      })();
      const deadline = Date.now() + 30_000;
      while (want.some((w) => !seen.has(w)) && Date.now() < deadline && proc.exitCode === null)
        await Bun.sleep(50);
      if (want.some((w) => !seen.has(w)))
        throw new Error(
          `listener lines not seen (have ${[...seen.keys()].join(", ")}; exit ${proc.exitCode}):\n${lines.slice(-10).join("\n")}\n${proc.exitCode !== null ? await stderr : ""}`,
        );
      for (const w of want) expect(seen.get(w)).toMatch(/^127\.0\.0\.1:[1-9]\d*$/);

      // The HTTPS front door really listens: a TCP connect succeeds.
      const [host, port] = seen.get("cm")!.split(":");
      const connected = await tcpAccepts(host!, Number(port));
      expect(connected).toBe(true);
      // … and answers over TLS: the handshake and the HTTP exchange run on a worker, the answer comes from the CM.
      const res = await fetch(`https://${seen.get("cm")}/`, {
        tls: { rejectUnauthorized: false },
      } as RequestInit);
      expect(res.status).toBe(404);
      expect(lines.some((l) => l.includes('"workers":2'))).toBe(true);

      proc.kill("SIGTERM");
      const killer = setTimeout(() => proc.kill("SIGKILL"), 20_000);
      const code = await proc.exited;
      clearTimeout(killer);
      await reader;
      expect(proc.signalCode).toBeNull();
      expect(code).toBe(0);
    } finally {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill("SIGKILL");
      await proc.exited;
    }
  }, 90_000);
});
