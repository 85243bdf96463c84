/**
 * `pcoip-cmsg user add|del|list [NAME] [--config FILE | --users-file FILE]`: local accounts of the built-in
 * broker (SPEC §6). The password comes from standard input when it is not a terminal (first line), else it is
 * prompted twice without echo. The file is rewritten atomically with mode 0600; the running service picks the
 * change up at the next login (cm/auth/local-users.ts), no reload needed.
 */
import { readFileSync } from "node:fs";
import { hashPassword, isValidUserName, readUsersFile, writeUsersFile } from "../cm/auth/local-users.ts";
import { type FlagSpec, flagString, formatFlags, parseArgs } from "./args.ts";
import type { CliIo } from "./io.ts";

export const DEFAULT_USERS_FILE = "/etc/pcoip-cmsg/users";
export const DEFAULT_CONFIG_FILE = "/etc/pcoip-cmsg/pcoip-cmsg.toml";

const FLAGS: readonly FlagSpec[] = [
  {
    name: "config",
    kind: "string",
    value: "FILE",
    help: `config file whose usersFile is used (default ${DEFAULT_CONFIG_FILE})`,
  },
  { name: "users-file", kind: "string", value: "FILE", help: "the users file itself (wins over --config)" },
  { name: "help", kind: "boolean", help: "show this help" },
];

const USAGE = `usage: pcoip-cmsg user add NAME | del NAME | list   [--config FILE | --users-file FILE]

Manages the local accounts of the built-in broker: lines "name:<argon2id hash>" in the users file.
add   creates NAME or changes its password; the password is read from standard input when it is not a
      terminal (first line), otherwise prompted twice.
del   removes NAME.
list  prints the names.

${formatFlags(FLAGS)}
`;

/** What the command needs from the terminal (tests pass their own). */
export interface UserCommandDeps {
  readonly stdinIsTty: boolean;
  readStdin(): Promise<string>;
  promptHidden(question: string): Promise<string>;
}

export async function userCommand(
  argv: string[],
  io: CliIo,
  deps: UserCommandDeps = terminal(),
): Promise<number> {
  const parsed = parseArgs(argv, FLAGS);
  if (!parsed.ok) {
    io.stderr(`pcoip-cmsg user: ${parsed.error}\n${USAGE}`);
    return 2;
  }
  const { args } = parsed;
  if (args.flags.get("help") === true) {
    io.stdout(USAGE);
    return 0;
  }
  const [action, name, ...rest] = args.positional;
  const needsName = action === "add" || action === "del";
  if (
    !action ||
    !["add", "del", "list"].includes(action) ||
    (needsName ? !name || rest.length > 0 : name !== undefined)
  ) {
    io.stderr(`pcoip-cmsg user: expected "add NAME", "del NAME" or "list"\n${USAGE}`);
    return 2;
  }
  const file = usersFileFrom(flagString(args, "users-file"), flagString(args, "config"));
  if (!file.ok) {
    io.stderr(`pcoip-cmsg user: ${file.error}\n`);
    return 1;
  }
  const path = file.path;

  let current: Awaited<ReturnType<typeof readUsersFile>>;
  try {
    current = await readUsersFile(path);
  } catch (e) {
    io.stderr(`pcoip-cmsg user: reading ${path}: ${(e as Error).message}\n`);
    return 1;
  }
  for (const p of current.problems) io.stderr(`warning: ${path}:${p.line}: ${p.what}\n`);

  if (action === "list") {
    for (const u of current.users) io.stdout(`${u.name}\n`);
    return 0;
  }
  const user = name!;
  const others = current.users.filter((u) => u.name.toLowerCase() !== user.toLowerCase());

  if (action === "del") {
    if (others.length === current.users.length) {
      io.stderr(`pcoip-cmsg user: no user "${user}" in ${path}\n`);
      return 1;
    }
    return save(path, others, io, `user "${user}" removed from ${path}\n`);
  }

  if (!isValidUserName(user)) {
    io.stderr(
      `pcoip-cmsg user: "${user}" is not a usable name: no colon, blanks or control characters, 1–256 characters\n`,
    );
    return 2;
  }
  let password: string;
  if (deps.stdinIsTty) {
    password = await deps.promptHidden(`Password for ${user}: `);
    const again = await deps.promptHidden("Again: ");
    if (again !== password) {
      io.stderr("pcoip-cmsg user: the two passwords differ; nothing changed\n");
      return 1;
    }
  } else {
    password = (await deps.readStdin()).split(/\r?\n/)[0] ?? "";
  }
  if (password === "") {
    io.stderr("pcoip-cmsg user: empty password; nothing changed\n");
    return 1;
  }
  const existed = others.length !== current.users.length;
  const hash = await hashPassword(password);
  return save(
    path,
    [...others, { name: user, hash }],
    io,
    `user "${user}" ${existed ? "updated" : "added"} in ${path} (applies at the next login)\n`,
  );
}

async function save(
  path: string,
  users: Parameters<typeof writeUsersFile>[1],
  io: CliIo,
  done: string,
): Promise<number> {
  try {
    await writeUsersFile(path, users);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const fix =
      code === "ENOENT"
        ? " (create its folder first)"
        : code === "EACCES"
          ? " (run as root or the service user)"
          : "";
    io.stderr(`pcoip-cmsg user: writing ${path}: ${(e as Error).message}${fix}\n`);
    return 1;
  }
  io.stdout(done);
  return 0;
}

/** --users-file, else usersFile of the config (only that key is read), else the default path. */
function usersFileFrom(
  usersFile: string | undefined,
  config: string | undefined,
): { ok: true; path: string } | { ok: false; error: string } {
  if (usersFile) return { ok: true, path: usersFile };
  const configPath = config ?? DEFAULT_CONFIG_FILE;
  let text: string;
  try {
    text = readFileSync(configPath, "utf8");
  } catch (e) {
    if (!config && (e as NodeJS.ErrnoException).code === "ENOENT")
      return { ok: true, path: DEFAULT_USERS_FILE };
    return { ok: false, error: `reading ${configPath}: ${(e as Error).message}` };
  }
  let doc: unknown;
  try {
    doc = Bun.TOML.parse(text);
  } catch (e) {
    return { ok: false, error: `reading ${configPath}: not valid TOML (${(e as Error).message})` };
  }
  const v = (doc as Record<string, unknown>).usersFile;
  if (v === undefined) return { ok: true, path: DEFAULT_USERS_FILE };
  if (typeof v !== "string" || v === "")
    return { ok: false, error: `${configPath}: usersFile must be a file path` };
  return { ok: true, path: v };
}

function terminal(): UserCommandDeps {
  return {
    stdinIsTty: process.stdin.isTTY === true,
    readStdin: () => new Response(Bun.stdin.stream()).text(),
    promptHidden,
  };
}

/** Reads one line from the terminal without echo. */
function promptHidden(question: string): Promise<string> {
  return new Promise((resolve) => {
    const stdin = process.stdin;
    process.stdout.write(question);
    stdin.setRawMode?.(true);
    stdin.resume();
    let value = "";
    const onData = (d: Buffer) => {
      for (const ch of d.toString("utf8")) {
        if (ch === "\r" || ch === "\n" || ch === "\u0004") {
          stdin.off("data", onData);
          stdin.setRawMode?.(false);
          stdin.pause();
          process.stdout.write("\n");
          resolve(value);
          return;
        }
        if (ch === "\u0003") {
          stdin.setRawMode?.(false);
          process.stdout.write("\n");
          process.exit(130);
        }
        if (ch === "\u007f" || ch === "\b") value = value.slice(0, -1);
        else value += ch;
      }
    };
    stdin.on("data", onData);
  });
}
