/**
 * `pcoip-cmsg create-darksite-bundle`: everything an offline host needs in one pcoip-cmsg-bundle.tar.gz — the
 * binary, the x64-baseline binary when one is beside it, the systemd unit, the example config, README.txt and
 * SHA256SUMS (`sha256sum -c` format, so the sums can be checked by hand too) — and, with the vendor's
 * `--pcoip-cmsg-rpm-path`, the RPM, which `install` then installs at the dark site. `openBundle` is the other half,
 * used by `install --darksite-bundle-path`: it takes the archive or its extracted folder and refuses any file
 * whose sum does not match, naming it.
 */
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { basename, dirname, join, resolve } from "node:path";
import exampleConfigText from "../../config/pcoip-cmsg.example.toml" with { type: "text" };
import unitText from "../../systemd/pcoip-cmsg.service" with { type: "text" };
import {
  type CommandRunner,
  commandProblem,
  formatProblem,
  type Problem,
  runCommand,
} from "../platform/host.ts";
import { BASELINE_BINARY_NAME, BINARY_NAME } from "../platform/paths.ts";
import { PRODUCT_NAME, VERSION } from "../version.ts";
import { type FlagSpec, flagString, formatFlags, parseArgs } from "./args.ts";
import type { CliIo, CommandMain } from "./io.ts";
import { stripDockerFlags } from "./vendor-flags.ts";

/** The unit and example config this binary was built with (text imports: embedded in the executable). */
export const EMBEDDED_UNIT: string = unitText;
export const EMBEDDED_EXAMPLE_CONFIG: string = exampleConfigText;

export const BUNDLE_DIR = "pcoip-cmsg-bundle";
export const BUNDLE_FILE = "pcoip-cmsg-bundle.tar.gz";
export const SUMS_FILE = "SHA256SUMS";
export const UNIT_FILE = "pcoip-cmsg.service";
export const EXAMPLE_FILE = "pcoip-cmsg.example.toml";

/** True inside a `bun build --compile` executable, whose modules live under Bun's virtual /$bunfs. */
export function isCompiled(): boolean {
  return Bun.main.startsWith("/$bunfs/") || import.meta.path.startsWith("/$bunfs/");
}

/** The executable to install or bundle: `--binary`, else this one when compiled; else an explanation. */
export function defaultBinary(
  explicit: string | undefined,
): { ok: true; file: string } | { ok: false; error: Problem } {
  if (explicit !== undefined) {
    if (!existsSync(explicit) || !statSync(explicit).isFile())
      return {
        ok: false,
        error: {
          what: `--binary ${explicit}`,
          cause: "no such file",
          fix: "give the path of a pcoip-cmsg executable (dist/pcoip-cmsg after npm run build)",
        },
      };
    return { ok: true, file: resolve(explicit) };
  }
  if (isCompiled()) return { ok: true, file: process.execPath };
  return {
    ok: false,
    error: {
      what: "finding the pcoip-cmsg executable",
      cause: `this is a source run (${basename(process.execPath)} ${Bun.main}), not the compiled executable`,
      fix: "build it (npm run build) and run dist/pcoip-cmsg, or give --binary dist/pcoip-cmsg",
    },
  };
}

export function sha256File(file: string): string {
  const h = new Bun.CryptoHasher("sha256");
  h.update(readFileSync(file));
  return h.digest("hex");
}

/** The version a binary reports (`--version`), or undefined when it cannot be run here. */
export async function binaryVersion(run: CommandRunner, file: string): Promise<string | undefined> {
  if (isCompiled() && resolve(file) === process.execPath) return VERSION;
  const r = await run(file, ["--version"], { timeoutMs: 10_000 });
  if (!r.ok) return undefined;
  const m = /pcoip-cmsg\s+(\S+)/.exec(r.stdout);
  return m?.[1];
}

/** An RPM file starts with these four bytes (the lead's magic). */
const RPM_MAGIC = Buffer.from([0xed, 0xab, 0xee, 0xdb]);

/** Why `file` is not an RPM of this product, or undefined when it is one. */
export function notOurRpm(file: string): string | undefined {
  if (!existsSync(file) || !statSync(file).isFile()) return "no such file";
  if (!/^pcoip-cmsg-[^/]*\.rpm$/.test(basename(file)))
    return "the name is not pcoip-cmsg-<version>-<release>.<arch>.rpm (as npm run package names it)";
  const head = readFileSync(file).subarray(0, 4);
  if (!head.equals(RPM_MAGIC)) return "not an RPM file (its first bytes are not the RPM lead)";
  return undefined;
}

function readme(version: string, baseline: boolean, rpm: string | undefined): string {
  if (rpm)
    return `pcoip-cmsg ${version} — offline installation bundle with the RPM

Contents
  ${rpm.padEnd(40)}the package (dnf/rpm install, upgrade, downgrade, remove)
  ${BINARY_NAME.padEnd(40)}the same executable, for hosts without rpm
  ${SUMS_FILE.padEnd(40)}SHA-256 of every file (check by hand: sha256sum -c ${SUMS_FILE})

Install at the dark site (as root, no network needed), the vendor's way:
  tar -xzf ${BUNDLE_FILE}
  dnf install --disablerepo='*' ./${BUNDLE_DIR}/${rpm}
  pcoip-cmsg-setup install --darksite-bundle-path ./${BUNDLE_DIR} \\
      --accept-policies --external-pcoip-ip PUBLIC_IP --host-address cm.example.net --self-signed
or in one step (install runs rpm -U for the package, then configures and starts the service):
  ./${BUNDLE_DIR}/${BINARY_NAME} install --darksite-bundle-path ./${BUNDLE_DIR} --accept-policies …

Upgrade or downgrade: the same commands with the other bundle (dnf upgrade / dnf downgrade with --disablerepo='*'
for the RPM). Configuration, users and certificates are kept; live sessions are drained first.
`;
  return `pcoip-cmsg ${version} — offline installation bundle

Contents
  ${BINARY_NAME.padEnd(26)}the appliance (one executable, x64 with AVX2 or arm64)
${baseline ? `  ${BASELINE_BINARY_NAME.padEnd(26)}the same for x64 CPUs without AVX2 (install picks it by itself)\n` : ""}  ${UNIT_FILE.padEnd(26)}systemd unit (installed by install)
  ${EXAMPLE_FILE.padEnd(26)}every configuration key, commented
  ${SUMS_FILE.padEnd(26)}SHA-256 of every file (check by hand: sha256sum -c ${SUMS_FILE})
  VERSION

Install (as root, no network needed):
  tar -xzf ${BUNDLE_FILE}
  ./${BUNDLE_DIR}/${BINARY_NAME} install --darksite-bundle-path ./${BUNDLE_DIR} \\
      --accept-policies --external-pcoip-ip PUBLIC_IP --host-address cm.example.net --self-signed

  or, with the archive itself:  ${BINARY_NAME} install --darksite-bundle-path ${BUNDLE_FILE} …

Upgrade: run the same install command with the newer bundle. Configuration, users and certificates are kept,
the previous binary stays in /usr/local/lib/pcoip-cmsg/pcoip-cmsg.previous, and live sessions are drained first
(up to --drain-timeout seconds, default 600; --force does not wait).
`;
}

export interface CreateBundleOptions {
  readonly binary: string;
  readonly baseline?: string;
  readonly output: string;
  readonly version: string;
  /** The RPM to carry (the vendor's --pcoip-cmsg-rpm-path). */
  readonly rpm?: string;
}

/** Writes the archive through a temporary file; returns the files it holds. */
export async function createBundle(
  o: CreateBundleOptions,
  run: CommandRunner,
): Promise<{ ok: true; files: string[] } | { ok: false; error: Problem }> {
  const work = mkdtempSync(join(tmpdir(), "pcoip-cmsg-bundle-"));
  try {
    const dir = join(work, BUNDLE_DIR);
    mkdirSync(dir);
    const files: [string, Uint8Array | string, number][] = [
      [BINARY_NAME, readFileSync(o.binary), 0o755],
      ...(o.baseline
        ? [[BASELINE_BINARY_NAME, readFileSync(o.baseline), 0o755] as [string, Uint8Array, number]]
        : []),
      ...(o.rpm ? [[basename(o.rpm), readFileSync(o.rpm), 0o644] as [string, Uint8Array, number]] : []),
      [UNIT_FILE, EMBEDDED_UNIT, 0o644],
      [EXAMPLE_FILE, EMBEDDED_EXAMPLE_CONFIG, 0o644],
      ["README.txt", readme(o.version, o.baseline !== undefined, o.rpm ? basename(o.rpm) : undefined), 0o644],
      ["VERSION", `${o.version}\n`, 0o644],
    ];
    for (const [name, data, mode] of files) writeFileSync(join(dir, name), data, { mode });
    const sums = files.map(([name]) => `${sha256File(join(dir, name))}  ${name}\n`).join("");
    writeFileSync(join(dir, SUMS_FILE), sums, { mode: 0o644 });
    const out = resolve(o.output);
    mkdirSync(dirname(out), { recursive: true });
    const tmpOut = `${out}.tmp-${process.pid}`;
    const args = ["-czf", tmpOut, "--owner=0", "--group=0", "--numeric-owner", "-C", work, BUNDLE_DIR];
    const r = await run("tar", args);
    if (!r.ok) {
      rmSync(tmpOut, { force: true });
      return {
        ok: false,
        error: commandProblem("tar", args, r, "install GNU tar and check free space where --output points"),
      };
    }
    renameSync(tmpOut, out);
    return { ok: true, files: [...files.map(([n]) => n), SUMS_FILE] };
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

/** A verified bundle, extracted or as given. `close()` removes what was extracted. */
export interface OpenedBundle {
  readonly dir: string;
  readonly version: string;
  readonly binary: string;
  readonly baseline: string | undefined;
  readonly unitText: string;
  /** The RPM the bundle carries (create-darksite-bundle --pcoip-cmsg-rpm-path), installed by `install`. */
  readonly rpm: string | undefined;
  close(): void;
}

/**
 * The archive (extracted to a temporary folder) or its extracted folder, every file checked against SHA256SUMS.
 * Refused: no SHA256SUMS, a sum that does not match (the file is named), a listed file missing, the binary or
 * unit not listed, a name with a path in it.
 */
export async function openBundle(
  path: string,
  run: CommandRunner,
): Promise<{ ok: true; bundle: OpenedBundle } | { ok: false; error: Problem }> {
  const what = `opening the dark-site bundle ${path}`;
  if (!existsSync(path))
    return {
      ok: false,
      error: {
        what,
        cause: "no such file or folder",
        fix: `give the ${BUNDLE_FILE} made by \`pcoip-cmsg create-darksite-bundle\`, or the folder it extracts to`,
      },
    };
  let extracted: string | undefined;
  let root = resolve(path);
  if (statSync(path).isFile()) {
    extracted = mkdtempSync(join(tmpdir(), "pcoip-cmsg-bundle-"));
    const args = ["-xzf", root, "-C", extracted, "--no-same-owner", "--no-same-permissions"];
    const r = await run("tar", args);
    if (!r.ok) {
      rmSync(extracted, { recursive: true, force: true });
      return {
        ok: false,
        error: commandProblem(
          "tar",
          args,
          r,
          `the archive is damaged or not a ${BUNDLE_FILE}: copy it again and compare its sha256sum with the source`,
        ),
      };
    }
    root = extracted;
  }
  const close = () => {
    if (extracted) rmSync(extracted, { recursive: true, force: true });
  };
  const fail = (cause: string, fix: string) => {
    close();
    return { ok: false as const, error: { what, cause, fix } };
  };
  let dir = root;
  if (!existsSync(join(dir, SUMS_FILE)) && existsSync(join(dir, BUNDLE_DIR, SUMS_FILE)))
    dir = join(dir, BUNDLE_DIR);
  const sumsFile = join(dir, SUMS_FILE);
  if (!existsSync(sumsFile))
    return fail(
      `${SUMS_FILE} is missing, so nothing in it can be trusted`,
      `make the bundle again with \`pcoip-cmsg create-darksite-bundle\``,
    );
  const listed = new Map<string, string>();
  for (const line of readFileSync(sumsFile, "utf8").split("\n")) {
    if (line.trim() === "") continue;
    const m = /^([0-9a-f]{64}) [ *](.+)$/.exec(line.trim());
    if (!m || m[2]!.includes("/") || m[2] === "..")
      return fail(
        `${SUMS_FILE} has a line that is not "<sha256>  <file name>": ${JSON.stringify(line.slice(0, 80))}`,
        "make the bundle again",
      );
    listed.set(m[2]!, m[1]!);
  }
  for (const [name, want] of listed) {
    const file = join(dir, name);
    if (!existsSync(file))
      return fail(`${name} is listed in ${SUMS_FILE} but missing`, "copy the complete bundle again");
    const got = sha256File(file);
    if (got !== want)
      return fail(
        `${name} does not match its SHA-256 in ${SUMS_FILE} (expected ${want}, got ${got}): the file was changed or damaged`,
        "copy the bundle again from its source and compare `sha256sum pcoip-cmsg-bundle.tar.gz` on both sides",
      );
  }
  for (const required of [BINARY_NAME, UNIT_FILE])
    if (!listed.has(required))
      return fail(
        `${required} is not listed in ${SUMS_FILE}`,
        "make the bundle again with `pcoip-cmsg create-darksite-bundle`",
      );
  const versionFile = join(dir, "VERSION");
  const version = listed.has("VERSION") ? readFileSync(versionFile, "utf8").trim() : "unknown";
  return {
    ok: true,
    bundle: {
      dir,
      version,
      binary: join(dir, BINARY_NAME),
      baseline: listed.has(BASELINE_BINARY_NAME) ? join(dir, BASELINE_BINARY_NAME) : undefined,
      unitText: readFileSync(join(dir, UNIT_FILE), "utf8"),
      rpm: [...listed.keys()].filter((n) => /^pcoip-cmsg-.*\.rpm$/.test(n)).map((n) => join(dir, n))[0],
      close,
    },
  };
}

/** Files in a folder, for messages. */
export function listFolder(dir: string): string[] {
  try {
    return readdirSync(dir).sort();
  } catch {
    return [];
  }
}

const FLAGS: FlagSpec[] = [
  {
    name: "output",
    kind: "string",
    value: "FILE",
    help: `where to write the archive (default ./${BUNDLE_FILE})`,
  },
  {
    name: "binary",
    kind: "string",
    value: "FILE",
    help: "the executable to bundle (default: this one when compiled)",
  },
  {
    name: "baseline",
    kind: "string",
    value: "FILE",
    help: `the x64-baseline executable (default: ${BASELINE_BINARY_NAME} beside the binary, when present)`,
  },
  {
    name: "pcoip-cmsg-rpm-path",
    kind: "string",
    value: "FILE",
    help: "the vendor's flag: carry this RPM (dist/pcoip-cmsg-*.rpm); install at the dark site installs it",
  },
  { name: "help", kind: "boolean", help: "this text" },
];

const HELP = `Usage: ${PRODUCT_NAME} create-darksite-bundle [--output FILE] [--pcoip-cmsg-rpm-path FILE]

Writes ${BUNDLE_FILE}: the executable, the x64-baseline executable when present beside it, the systemd unit, the
example configuration, README.txt and ${SUMS_FILE}. Copy it to the offline host and run
\`${BINARY_NAME} install --darksite-bundle-path ${BUNDLE_FILE} …\` (or extract it and give the folder).

Options:
${formatFlags(FLAGS)}
`;

export const bundleCommand: CommandMain = (argv, io) => runBundle(argv, io, runCommand);

export async function runBundle(argv: string[], io: CliIo, run: CommandRunner): Promise<number> {
  const stripped = stripDockerFlags(argv);
  for (const n of stripped.notes) io.stderr(`${PRODUCT_NAME} create-darksite-bundle: ${n}\n`);
  const parsed = parseArgs(stripped.argv, FLAGS);
  if (!parsed.ok) {
    io.stderr(`${PRODUCT_NAME} create-darksite-bundle: ${parsed.error}\n\n${HELP}`);
    return 2;
  }
  if (parsed.args.flags.get("help") === true) {
    io.stdout(HELP);
    return 0;
  }
  const bin = defaultBinary(flagString(parsed.args, "binary"));
  if (!bin.ok) {
    io.stderr(`${PRODUCT_NAME} create-darksite-bundle: ${formatProblem(bin.error)}`);
    return 1;
  }
  let baseline = flagString(parsed.args, "baseline");
  if (baseline !== undefined && !existsSync(baseline)) {
    io.stderr(`${PRODUCT_NAME} create-darksite-bundle: --baseline ${baseline}: no such file\n`);
    return 1;
  }
  const beside = join(dirname(bin.file), BASELINE_BINARY_NAME);
  if (baseline === undefined && existsSync(beside) && resolve(beside) !== bin.file) baseline = beside;
  const version = (await binaryVersion(run, bin.file)) ?? "unknown";
  if (version === "unknown")
    io.stderr(`  ! warning: ${bin.file} --version did not answer; the bundle's VERSION says "unknown"\n`);
  const rpm = flagString(parsed.args, "pcoip-cmsg-rpm-path");
  const rpmProblem = rpm === undefined ? undefined : notOurRpm(rpm);
  if (rpm !== undefined && rpmProblem) {
    io.stderr(
      `${PRODUCT_NAME} create-darksite-bundle: --pcoip-cmsg-rpm-path ${rpm}: ${rpmProblem}\n  fix: give the RPM that npm run package wrote (dist/pcoip-cmsg-<version>-<release>.x86_64.rpm)\n`,
    );
    return 1;
  }
  const output = flagString(parsed.args, "output") ?? BUNDLE_FILE;
  const r = await createBundle(
    { binary: bin.file, ...(baseline ? { baseline } : {}), ...(rpm ? { rpm } : {}), output, version },
    run,
  );
  if (!r.ok) {
    io.stderr(`${PRODUCT_NAME} create-darksite-bundle: ${formatProblem(r.error)}`);
    return 1;
  }
  io.stdout(
    `wrote ${resolve(output)} (${PRODUCT_NAME} ${version}): ${r.files.join(", ")}\n` +
      (baseline
        ? ""
        : `  · no ${BASELINE_BINARY_NAME} beside ${bin.file}: CPUs without AVX2 cannot run this bundle\n`),
  );
  return 0;
}
