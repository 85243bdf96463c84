/**
 * `npm start`: the appliance on its embedded defaults (config/dev.toml) — first creating the demo account
 * `demo` / `demo` in .data/users when it does not exist, so the demo client can log in at once, and the admin
 * token .data/admin.token (0600).
 */
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { ensureAdminTokenFile } from "../src/observability/admin-token.ts";

mkdirSync(".data/certs", { recursive: true, mode: 0o700 });
const users = ".data/users";
const existing = existsSync(users) ? readFileSync(users, "utf8") : "";
if (!/^demo:/m.test(existing)) {
  const hash = await Bun.password.hash("demo", { algorithm: "argon2id" });
  writeFileSync(users, `${existing}demo:${hash}\n`, { mode: 0o600 });
  console.log("dev: created the demo account demo / demo in .data/users");
}
// The admin listener's bearer token (config/dev.toml: admin.tokenFile); `pcoip-cmsg status --config …` reads it.
if (ensureAdminTokenFile(".data/admin.token").created)
  console.log("dev: created the admin token .data/admin.token (0600)");
const child = spawn(
  process.execPath,
  ["src/main.ts", "run", "--config", "config/dev.toml", ...process.argv.slice(2)],
  { stdio: "inherit" },
);
for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as const) process.on(sig, () => child.kill(sig));
child.on("exit", (code) => process.exit(code ?? 0));
