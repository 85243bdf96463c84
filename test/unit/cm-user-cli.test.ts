// Claim: `pcoip-cmsg user add|del|list` manages the users file the CM reads: argon2id hashes, atomic writes
// with mode 0600, the password from standard input when it is not a terminal (prompted twice otherwise), the
// file found through --users-file or the config's usersFile; and the CM's local accounts accept the result.
import { afterAll, expect, test } from "bun:test";
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type UserCommandDeps, userCommand } from "../../src/cli/user.ts";
import { createLocalUsers } from "../../src/cm/auth/local-users.ts";
import { createLogger, memoryDestination } from "../../src/observability/log.ts";

const dir = mkdtempSync(join(tmpdir(), "cm-user-cli-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const log = createLogger({ destination: memoryDestination() });

function io() {
  const out: string[] = [];
  const err: string[] = [];
  return {
    out,
    err,
    io: { stdout: (s: string) => void out.push(s), stderr: (s: string) => void err.push(s) },
  };
}
const piped = (text: string): UserCommandDeps => ({
  stdinIsTty: false,
  readStdin: async () => text,
  promptHidden: async () => {
    throw new Error("must not prompt when stdin is not a terminal");
  },
});
const tty = (...answers: string[]): UserCommandDeps => ({
  stdinIsTty: true,
  readStdin: async () => {
    throw new Error("must not read stdin on a terminal");
  },
  promptHidden: async () => answers.shift() ?? "",
});

test("add from stdin, list, change, del; mode 0600; the CM accepts the password", async () => {
  const file = join(dir, "users-a");
  const a = io();
  expect(await userCommand(["add", "alice", "--users-file", file], a.io, piped("s3cret\nignored\n"))).toBe(0);
  expect(a.out.join("")).toContain('user "alice" added');
  expect(statSync(file).mode & 0o777).toBe(0o600);
  expect(readFileSync(file, "utf8")).toMatch(/^alice:\$argon2id\$/m);
  expect(readFileSync(file, "utf8")).not.toContain("s3cret");
  const users = createLocalUsers({ file });
  expect((await users.authenticate({ username: "alice", password: "s3cret", domain: "" }, log)).ok).toBe(
    true,
  );

  expect(await userCommand(["add", "bob", `--users-file=${file}`], io().io, piped("b"))).toBe(0);
  const l = io();
  expect(await userCommand(["list", "--users-file", file], l.io, piped(""))).toBe(0);
  expect(l.out.join("")).toBe("alice\nbob\n");

  const change = io();
  expect(await userCommand(["add", "ALICE", "--users-file", file], change.io, piped("n3w"))).toBe(0);
  expect(change.out.join("")).toContain("updated");
  expect((await users.authenticate({ username: "alice", password: "n3w", domain: "" }, log)).ok).toBe(true);

  expect(await userCommand(["del", "bob", "--users-file", file], io().io, piped(""))).toBe(0);
  const missing = io();
  expect(await userCommand(["del", "bob", "--users-file", file], missing.io, piped(""))).toBe(1);
  expect(missing.err.join("")).toContain('no user "bob"');
  // Atomic write: no temporary files left behind.
  expect(readdirSync(dir).filter((n) => n.includes(".tmp"))).toEqual([]);
});

test("on a terminal: prompted twice; a mismatch changes nothing", async () => {
  const file = join(dir, "users-b");
  expect(await userCommand(["add", "carol", "--users-file", file], io().io, tty("pw1", "pw1"))).toBe(0);
  const bad = io();
  expect(await userCommand(["add", "dave", "--users-file", file], bad.io, tty("x", "y"))).toBe(1);
  expect(bad.err.join("")).toContain("differ");
  const l = io();
  await userCommand(["list", "--users-file", file], l.io, tty());
  expect(l.out.join("")).toBe("carol\n");
});

test("--config: usersFile is read from the TOML", async () => {
  const file = join(dir, "users-c");
  const config = join(dir, "c.toml");
  writeFileSync(config, `logLevel = "info"\nusersFile = "${file}"\n[cm]\nlisten = ["0.0.0.0:443"]\n`);
  expect(await userCommand(["add", "erin", "--config", config], io().io, piped("e"))).toBe(0);
  expect(readFileSync(file, "utf8")).toContain("erin:");
});

test("refusals: bad name, empty password, bad usage, missing config; --help", async () => {
  const file = join(dir, "users-d");
  const r1 = io();
  expect(await userCommand(["add", "a:b", "--users-file", file], r1.io, piped("x"))).toBe(2);
  const r2 = io();
  expect(await userCommand(["add", "ok", "--users-file", file], r2.io, piped("\n"))).toBe(1);
  expect(r2.err.join("")).toContain("empty password");
  expect(await userCommand(["frobnicate"], io().io, piped(""))).toBe(2);
  expect(await userCommand(["add"], io().io, piped(""))).toBe(2);
  expect(await userCommand(["list", "--bogus"], io().io, piped(""))).toBe(2);
  const r3 = io();
  expect(await userCommand(["list", "--config", join(dir, "absent.toml")], r3.io, piped(""))).toBe(1);
  expect(r3.err.join("")).toContain("absent.toml");
  const h = io();
  expect(await userCommand(["--help"], h.io, piped(""))).toBe(0);
  expect(h.out.join("")).toContain("usage: pcoip-cmsg user");
});
