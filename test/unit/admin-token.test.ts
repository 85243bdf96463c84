// Claim: the admin token file is created 0600 with a fresh token and never replaced once it holds one; reading it
// ignores the trailing newline, refuses an empty or short token and says why; an inline admin.token wins over it.
import { afterAll, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  adminTokenOf,
  ensureAdminTokenFile,
  readAdminTokenFile,
} from "../../src/observability/admin-token.ts";

const dir = mkdtempSync(join(tmpdir(), "admin-token-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

test("created 0600 once; an existing token is kept", () => {
  const file = join(dir, "sub", "admin.token");
  expect(ensureAdminTokenFile(file)).toEqual({ created: true });
  expect(statSync(file).mode & 0o777).toBe(0o600);
  const first = readFileSync(file, "utf8");
  expect(first).toMatch(/^[0-9a-f]{64}\n$/);
  expect(ensureAdminTokenFile(file)).toEqual({ created: false });
  expect(readFileSync(file, "utf8")).toBe(first);
});

test("reading: trailing newline (LF or CRLF) ignored; empty, short and missing files named with the cause", () => {
  const file = join(dir, "t");
  writeFileSync(file, "0123456789abcdef0123\r\n");
  expect(readAdminTokenFile(file)).toEqual({ ok: true, token: "0123456789abcdef0123", source: file });
  writeFileSync(file, "\n");
  expect(readAdminTokenFile(file)).toEqual({ ok: false, cause: `admin.tokenFile ${file} holds no token` });
  writeFileSync(file, "short\n");
  expect(readAdminTokenFile(file).ok).toBe(false);
  expect(readAdminTokenFile(join(dir, "absent"))).toEqual({
    ok: false,
    cause: `admin.tokenFile ${join(dir, "absent")}: ENOENT`,
  });
  // A short file is replaced by ensureAdminTokenFile (it was never usable).
  expect(ensureAdminTokenFile(file)).toEqual({ created: true });
});

test("an inline admin.token wins over the file; the file is read where this process sees it", () => {
  expect(adminTokenOf({ token: "inline-token-000000", tokenFile: "/nonexistent" })).toMatchObject({
    ok: true,
    token: "inline-token-000000",
  });
  const file = join(dir, "etc", "admin.token");
  ensureAdminTokenFile(file);
  const r = adminTokenOf({ token: "", tokenFile: "/etc/admin.token" }, (p) => join(dir, p));
  expect(r.ok && r.token).toBe(readFileSync(file, "utf8").trim());
});
