/**
 * `pcoip-cmsg drain` and `pcoip-cmsg resume`: take a node out of a load balancer's rotation and put it back,
 * without a restart. Drain makes the health check (GET /pcoip-broker/xml on 443 and 80) answer 503 and refuses
 * new sessions, while live sessions and their relays go on; resume undoes it. Both talk to the admin listener
 * (POST /drain, POST /resume, with the admin token when one is set), read from the configuration file.
 */
import { PRODUCT_NAME } from "../version.ts";
import { type FlagSpec, flagBool, flagString, formatFlags, parseCommandArgs } from "./args.ts";
import { CONFIG_FLAG, DEFAULT_CONFIG_FILE } from "./config.ts";
import type { CliIo, CommandMain } from "./io.ts";
import { type AdminEndpoint, adminEndpointOf, adminRequest } from "./status.ts";

const FLAGS: FlagSpec[] = [
  CONFIG_FLAG,
  {
    name: "admin",
    kind: "string",
    value: "HOST:PORT",
    help: "the admin listener, when not the configuration's admin.listen",
  },
  { name: "wait", kind: "boolean", help: "drain: wait until no live session is left (prints the count)" },
  {
    name: "timeout",
    kind: "string",
    value: "SECONDS",
    help: "with --wait: give up after this long (default 3600)",
  },
  { name: "help", kind: "boolean", help: "this text" },
];

const help = (verb: "drain" | "resume") =>
  verb === "drain"
    ? `Usage: ${PRODUCT_NAME} drain [--config FILE] [--wait [--timeout SECONDS]]

Takes this node out of its load balancer's rotation: the health check GET /pcoip-broker/xml answers 503, new
sessions are refused ("the server is shutting down"), live sessions and their relays continue. Undo with
\`${PRODUCT_NAME} resume\`; \`${PRODUCT_NAME} status\` shows the state.

Options:
${formatFlags(FLAGS)}`
    : `Usage: ${PRODUCT_NAME} resume [--config FILE]

Puts a drained node back: the health check answers 200 again and new sessions are taken. A node that is
stopping (SIGTERM) cannot resume.

Options:
${formatFlags(FLAGS.filter((f) => f.name !== "wait" && f.name !== "timeout"))}`;

interface DrainAnswer {
  draining?: boolean;
  liveSessions?: number;
  error?: string;
}

export const drainCommand: CommandMain = (argv, io) => drainOrResume("drain", argv, io);
export const resumeCommand: CommandMain = (argv, io) => drainOrResume("resume", argv, io);

async function drainOrResume(verb: "drain" | "resume", argv: string[], io: CliIo): Promise<number> {
  const args = parseCommandArgs(verb, argv, FLAGS, help(verb), io);
  if (typeof args === "number") return args;
  const file = flagString(args, "config") ?? DEFAULT_CONFIG_FILE;
  const fromFile = adminEndpointOf(file);
  const admin: AdminEndpoint = { ...fromFile, listen: flagString(args, "admin") ?? fromFile.listen };
  const r = await adminRequest(admin, "POST", `/${verb}`);
  if (!r.ok) {
    io.stderr(
      `${PRODUCT_NAME} ${verb}: the admin listener did not answer: ${r.cause}; fix: is the service running ` +
        `(systemctl status pcoip-cmsg)? admin.listen in ${file} must name where it listens (or pass --admin)\n`,
    );
    return 1;
  }
  const body = parseAnswer(r.body);
  if (r.status === 401 || (r.status === 503 && admin.tokenProblem)) {
    io.stderr(
      `${PRODUCT_NAME} ${verb}: the admin listener refused the call (HTTP ${r.status}): ` +
        `${admin.tokenProblem ?? "the bearer token did not match"}; fix: run as root (or the service user), ` +
        `who can read admin.tokenFile named in ${file}\n`,
    );
    return 1;
  }
  if (r.status !== 200) {
    io.stderr(`${PRODUCT_NAME} ${verb}: refused (HTTP ${r.status}): ${body.error ?? r.body.trim()}\n`);
    return 1;
  }
  const live = body.liveSessions ?? 0;
  if (verb === "resume") {
    io.stdout(`resumed: the health check answers 200; new sessions are taken (${live} live)\n`);
    return 0;
  }
  io.stdout(
    `draining: the health check answers 503 and new sessions are refused; ${live} live session(s) continue\n`,
  );
  if (flagBool(args, "wait") !== true) return 0;
  const timeoutS = Number(flagString(args, "timeout") ?? "3600");
  const deadline = Date.now() + (Number.isFinite(timeoutS) && timeoutS > 0 ? timeoutS : 3600) * 1000;
  let last = live;
  while (last > 0) {
    if (Date.now() > deadline) {
      io.stderr(`${PRODUCT_NAME} drain: ${last} live session(s) left after ${timeoutS} s\n`);
      return 1;
    }
    await Bun.sleep(1000);
    const s = await adminRequest(admin, "GET", "/drain");
    if (!s.ok || s.status !== 200) continue;
    const now = parseAnswer(s.body).liveSessions ?? 0;
    if (now !== last) io.stdout(`${now} live session(s)\n`);
    last = now;
  }
  io.stdout("drained: no live sessions\n");
  return 0;
}

function parseAnswer(text: string): DrainAnswer {
  try {
    const v = JSON.parse(text) as unknown;
    return v && typeof v === "object" ? (v as DrainAnswer) : {};
  } catch {
    return {};
  }
}
