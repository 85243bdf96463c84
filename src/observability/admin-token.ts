/**
 * The admin listener's bearer token (SPEC §2, issue 16 #7): one secret in `admin.tokenFile`, created 0600 by
 * `pcoip-cmsg install` (owned by the service account) and by `npm start` (under .data/). The service reads it for
 * /sessions and every state-changing call; the CLI (`status`, install's drain step, `drain`/`resume`) reads it to
 * call them. The file holds the token on its first line; a trailing newline (what editors and `echo` add) is not
 * part of it. An inline `admin.token` (older configs, containers that pass it through the environment) wins over
 * the file.
 *
 * @example
 * ensureAdminTokenFile(".data/admin.token");              // { created: true } the first time
 * adminTokenOf(config).token;                              // what the CLI sends as "Authorization: Bearer …"
 */
import { randomBytes } from "node:crypto";
import {
  chmodSync,
  chownSync,
  existsSync,
  mkdirSync,
  readFileSync,
  renameSync,
  writeFileSync,
} from "node:fs";
import { dirname } from "node:path";

/** A token shorter than this is refused: it would be guessable over a loopback connection in minutes. */
export const MIN_TOKEN_LENGTH = 16;

export type TokenRead =
  | { readonly ok: true; readonly token: string; readonly source: string }
  | { readonly ok: false; readonly cause: string };

/** The token in `file`: its first line without the line end; a clear cause when missing, unreadable or short. */
export function readAdminTokenFile(file: string): TokenRead {
  if (file === "") return { ok: false, cause: "admin.tokenFile is not set" };
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? String(e);
    return { ok: false, cause: `admin.tokenFile ${file}: ${code}` };
  }
  const token = (text.split(/\r?\n/, 1)[0] ?? "").trim();
  if (token.length < MIN_TOKEN_LENGTH)
    return {
      ok: false,
      cause: `admin.tokenFile ${file} holds ${token.length === 0 ? "no token" : `a token shorter than ${MIN_TOKEN_LENGTH} characters`}`,
    };
  return { ok: true, token, source: file };
}

/** What a config says the token is: the inline admin.token when set, else the token file's. */
export function adminTokenOf(
  admin: { readonly token: string; readonly tokenFile: string },
  onDisk: (hostPath: string) => string = (p) => p,
): TokenRead {
  if (admin.token !== "") return { ok: true, token: admin.token, source: "admin.token" };
  return readAdminTokenFile(admin.tokenFile === "" ? "" : onDisk(admin.tokenFile));
}

/** A new random token: 32 bytes as 64 hex digits. */
export function newAdminToken(): string {
  return randomBytes(32).toString("hex");
}

/**
 * Creates `file` with a new token (mode 0600, written atomically, chowned to `owner` when given) unless it already
 * holds a usable one; an existing token is never replaced (the CLI and scripts of the site may use it).
 */
export function ensureAdminTokenFile(
  file: string,
  owner?: { readonly uid: number; readonly gid: number },
): { created: boolean } {
  if (existsSync(file) && readAdminTokenFile(file).ok) return { created: false };
  mkdirSync(dirname(file), { recursive: true, mode: 0o755 });
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, `${newAdminToken()}\n`, { mode: 0o600 });
  chmodSync(tmp, 0o600);
  if (owner) chownSync(tmp, owner.uid, owner.gid);
  renameSync(tmp, file);
  return { created: true };
}
