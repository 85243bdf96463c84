/**
 * Local accounts of the built-in broker (SPEC §3): a users file of `name:<argon2id hash>` lines, written by
 * `pcoip-cmsg user add` (src/cli/user.ts). The file is stat'ed at every login and re-read when its mtime or size
 * changed, so an added or removed user counts from the next login on, without a restart or a reload.
 *
 * Names are compared without regard to case (Windows logons, which the password ends up in, ignore case) and
 * spelled as written in the file. An unknown name costs one argon2 verification against a dummy hash, like a
 * known one, so answer timing does not tell which names exist.
 */
import { type Stats, statSync } from "node:fs";
import { readFile, rename, rm, writeFile } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import type { Logger } from "../../observability/log.ts";
import type { Authenticator, AuthOutcome, Credentials } from "./authenticator.ts";

export interface UserEntry {
  readonly name: string;
  /** An argon2id PHC string ($argon2id$v=19$…). */
  readonly hash: string;
}

export interface UsersFileProblem {
  readonly line: number;
  readonly what: string;
}

/** A user name the file can hold: no colon, no white space, no control characters, at most 256 characters. */
export function isValidUserName(name: string): boolean {
  return name.length > 0 && name.length <= 256 && !/[:\s\p{Cc}]/u.test(name);
}

/** Parses the users file. Blank lines and `#` comments are skipped; bad lines are reported, not fatal. */
export function parseUsersFile(text: string): { users: UserEntry[]; problems: UsersFileProblem[] } {
  const users: UserEntry[] = [];
  const problems: UsersFileProblem[] = [];
  const seen = new Set<string>();
  text.split(/\r?\n/).forEach((raw, i) => {
    const line = raw.trim();
    if (line === "" || line.startsWith("#")) return;
    const colon = line.indexOf(":");
    const name = colon > 0 ? line.slice(0, colon) : "";
    const hash = colon > 0 ? line.slice(colon + 1) : "";
    if (!isValidUserName(name) || !hash.startsWith("$argon2")) {
      problems.push({ line: i + 1, what: 'expected "name:<argon2id hash>"' });
      return;
    }
    if (seen.has(name.toLowerCase())) {
      problems.push({ line: i + 1, what: `user "${name}" appears twice; the first line counts` });
      return;
    }
    seen.add(name.toLowerCase());
    users.push({ name, hash });
  });
  return { users, problems };
}

/** The file text for `users` (one line each, a header comment first). */
export function formatUsersFile(users: readonly UserEntry[]): string {
  const lines = ["# pcoip-cmsg local accounts: name:<argon2id hash> (managed by `pcoip-cmsg user`)"];
  for (const u of users) lines.push(`${u.name}:${u.hash}`);
  return `${lines.join("\n")}\n`;
}

/** Writes the users file atomically (temporary file in the same folder, mode 0600, then rename). */
export async function writeUsersFile(path: string, users: readonly UserEntry[]): Promise<void> {
  const tmp = join(dirname(path), `.${basename(path)}.${process.pid}.${Date.now()}.tmp`);
  try {
    await writeFile(tmp, formatUsersFile(users), { mode: 0o600 });
    await rename(tmp, path);
  } catch (e) {
    await rm(tmp, { force: true });
    throw e;
  }
}

/** Reads the users file; a missing file is an empty list. */
export async function readUsersFile(
  path: string,
): Promise<{ users: UserEntry[]; problems: UsersFileProblem[] }> {
  try {
    return parseUsersFile(await readFile(path, "utf8"));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return { users: [], problems: [] };
    throw e;
  }
}

/** argon2id as `pcoip-cmsg user add` writes it (Bun's defaults: 64 MiB, t=2). */
export function hashPassword(password: string): Promise<string> {
  return Bun.password.hash(password, { algorithm: "argon2id" });
}

export interface LocalUsersOptions {
  /** Path of the users file. */
  readonly file: string;
  /** For file problems (unreadable file, bad lines); each distinct problem is said once per file version. */
  readonly log?: Logger;
}

/** The local-accounts authenticator ("local"). */
export function createLocalUsers(options: LocalUsersOptions): Authenticator & { readonly size: number } {
  let users = new Map<string, UserEntry>();
  let version = "";
  let dummyHash: Promise<string> | undefined;

  const refresh = async (log: Logger): Promise<{ ok: true } | { ok: false; detail: string }> => {
    let st: Stats | undefined;
    try {
      st = statSync(options.file);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "ENOENT") {
        return { ok: false, detail: `reading the users file ${options.file}: ${(e as Error).message}` };
      }
    }
    const v = st ? `${st.mtimeMs}|${st.size}|${st.ino}` : "absent";
    if (v === version) return { ok: true };
    try {
      const parsed = await readUsersFile(options.file);
      users = new Map(parsed.users.map((u) => [u.name.toLowerCase(), u]));
      version = v;
      for (const p of parsed.problems) {
        (options.log ?? log).warn(
          { file: options.file, line: p.line },
          `users file ${options.file}:${p.line}: ${p.what}; fix: correct the line or run pcoip-cmsg user add again`,
        );
      }
      return { ok: true };
    } catch (e) {
      return {
        ok: false,
        detail: `reading the users file ${options.file}: ${(e as Error).message}; fix: make it readable by the service user`,
      };
    }
  };

  return {
    name: "local",
    get size() {
      return users.size;
    },
    async authenticate(credentials: Credentials, log: Logger): Promise<AuthOutcome> {
      const fresh = await refresh(log);
      if (!fresh.ok) return { ok: false, reason: "unavailable", detail: fresh.detail };
      const entry = users.get(credentials.username.toLowerCase());
      if (!entry) {
        dummyHash ??= hashPassword("pcoip-cmsg timing equaliser");
        await Bun.password.verify(credentials.password, await dummyHash).catch(() => false);
        return { ok: false, reason: "unknown_user", detail: `local: no user "${credentials.username}"` };
      }
      let good = false;
      try {
        good = await Bun.password.verify(credentials.password, entry.hash);
      } catch (e) {
        return {
          ok: false,
          reason: "bad_credentials",
          detail: `local: the stored hash of "${entry.name}" is unusable (${(e as Error).message}); fix: pcoip-cmsg user add ${entry.name}`,
        };
      }
      if (!good)
        return { ok: false, reason: "bad_credentials", detail: `local: wrong password for "${entry.name}"` };
      return { ok: true, user: entry.name, groups: [], domain: credentials.domain };
    },
  };
}
