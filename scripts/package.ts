/**
 * `npm run package`: dist/pcoip-cmsg-<version>-<release>.x86_64.rpm (RHEL/Rocky 8 and 9) and
 * dist/pcoip-cmsg_<version>-<release>_amd64.deb, built offline on Debian with Debian's own tools: rpmbuild (the
 * `rpm` package) and dpkg-deb. Both come from the distribution we already build on, need no network and no other
 * packager; fpm/nfpm would add a Ruby or Go toolchain for the same result.
 *
 * Both packages carry the same tree (staged here): the executable and its x64-baseline twin in /usr/libexec/pcoip-cmsg
 * (EL's SELinux policy labels /usr/libexec bin_t, so systemd may run them; /usr/lib would be lib_t)
 * (postinst points /usr/bin/pcoip-cmsg at the one this CPU runs), /usr/sbin/pcoip-cmsg-setup (the vendor's name),
 * the unit, sysctl.d and sysusers.d files, an empty config (conffile / %config(noreplace)), the man page and bash
 * completion generated from --help, the example config and the licenses of the bundled code.
 *
 * Flags: --version V --release R (defaults: package.json, 1), --bin-dir DIR (prebuilt executables; default: build
 * them with scripts/build.ts into dist/), --out DIR (default dist), --only rpm|deb, --fast (light compression, for
 * tests).
 */
import { spawnSync } from "node:child_process";
import {
  chmodSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, relative, resolve } from "node:path";
import { gzipSync } from "node:zlib";
import { bashCompletion, helpTexts, lgplText, licensesText, manPage } from "./package-docs.ts";

const REPO = resolve(import.meta.dir, "..");
const PKG = join(REPO, "packaging");

interface Options {
  version: string;
  release: string;
  binDir: string | undefined;
  out: string;
  formats: ("rpm" | "deb")[];
  fast: boolean;
}

function parseOptions(argv: string[]): Options {
  const pkg = JSON.parse(readFileSync(join(REPO, "package.json"), "utf8")) as { version: string };
  const o: Options = {
    version: pkg.version,
    release: "1",
    binDir: undefined,
    out: "dist",
    formats: ["rpm", "deb"],
    fast: false,
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const value = () => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    if (a === "--version") o.version = value();
    else if (a === "--release") o.release = value();
    else if (a === "--bin-dir") o.binDir = value();
    else if (a === "--out") o.out = value();
    else if (a === "--only") o.formats = [value() as "rpm" | "deb"];
    else if (a === "--fast") o.fast = true;
    else throw new Error(`unknown argument ${a} (see the comment at the top of scripts/package.ts)`);
  }
  if (!/^[0-9][A-Za-z0-9.+~]*$/.test(o.version))
    throw new Error(`--version ${o.version}: not a package version`);
  if (!/^[0-9][A-Za-z0-9.+~]*$/.test(o.release))
    throw new Error(`--release ${o.release}: not a release number`);
  return o;
}

function sh(cmd: string, args: string[], opts: { cwd?: string } = {}): string {
  const r = spawnSync(cmd, args, { encoding: "utf8", cwd: opts.cwd, maxBuffer: 64 * 1024 * 1024 });
  if (r.error)
    throw new Error(
      `${cmd}: ${r.error.message}${(r.error as NodeJS.ErrnoException).code === "ENOENT" ? " (install it: bash scripts/system-deps.sh)" : ""}`,
    );
  if (r.status !== 0)
    throw new Error(`${cmd} ${args.join(" ")} exited ${r.status}:\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

function write(root: string, path: string, data: string | Uint8Array, mode = 0o644): void {
  const file = join(root, path);
  mkdirSync(dirname(file), { recursive: true, mode: 0o755 });
  writeFileSync(file, data);
  chmodSync(file, mode);
}

function link(root: string, path: string, target: string): void {
  const file = join(root, path);
  mkdirSync(dirname(file), { recursive: true, mode: 0o755 });
  symlinkSync(target, file);
}

/** Builds the executables into dist/ unless --bin-dir names prebuilt ones. */
function executables(o: Options): { binary: string; baseline: string | undefined } {
  let dir = o.binDir;
  if (dir === undefined) {
    const r = spawnSync(process.execPath, ["scripts/build.ts"], { cwd: REPO, stdio: "inherit" });
    if (r.status !== 0) throw new Error("npm run build failed (see above)");
    dir = join(REPO, "dist");
  }
  const binary = join(dir, "pcoip-cmsg");
  if (!existsSync(binary)) throw new Error(`${binary} is missing: run npm run build, or give --bin-dir`);
  const baseline = join(dir, "pcoip-cmsg-baseline");
  if (!existsSync(baseline))
    console.error(
      `package: ${baseline} is missing: CPUs without AVX2 will get the default build (warned at install)`,
    );
  return { binary, baseline: existsSync(baseline) ? baseline : undefined };
}

/** The file tree both packages install, for one package kind (the unit's folder and the marker differ). */
function stageTree(
  root: string,
  kind: "rpm" | "deb",
  o: Options,
  bins: ReturnType<typeof executables>,
  docs: Docs,
): void {
  copyFileSync(bins.binary, join(mkdirp(root, "usr/libexec/pcoip-cmsg"), "pcoip-cmsg"));
  chmodSync(join(root, "usr/libexec/pcoip-cmsg/pcoip-cmsg"), 0o755);
  if (bins.baseline) {
    copyFileSync(bins.baseline, join(root, "usr/libexec/pcoip-cmsg/pcoip-cmsg-baseline"));
    chmodSync(join(root, "usr/libexec/pcoip-cmsg/pcoip-cmsg-baseline"), 0o755);
  }
  write(root, "usr/share/pcoip-cmsg/packaged", `${kind}\n`);
  link(root, "usr/bin/pcoip-cmsg", "../libexec/pcoip-cmsg/pcoip-cmsg");
  link(root, "usr/sbin/pcoip-cmsg-setup", "../bin/pcoip-cmsg");
  const unit = readFileSync(join(REPO, "systemd/pcoip-cmsg.service"), "utf8").replaceAll(
    "/usr/local/bin/pcoip-cmsg",
    "/usr/bin/pcoip-cmsg",
  );
  // Debian 12 keeps units in /lib/systemd/system (the same folder on merged-/usr systems); EL in /usr/lib.
  write(root, `${kind === "deb" ? "" : "usr/"}lib/systemd/system/pcoip-cmsg.service`, unit);
  write(root, "usr/lib/sysctl.d/90-pcoip-cmsg.conf", readFileSync(join(PKG, "files/sysctl.conf")));
  write(root, "usr/lib/sysusers.d/pcoip-cmsg.conf", readFileSync(join(PKG, "files/sysusers.conf")));
  write(root, "etc/pcoip-cmsg/pcoip-cmsg.toml", readFileSync(join(PKG, "files/pcoip-cmsg.toml")), 0o640);
  mkdirp(root, "etc/pcoip-cmsg/certs");
  mkdirp(root, "var/log/pcoip-cmsg");
  const gz = (text: string) => gzipSync(Buffer.from(text), { level: 9 }).subarray();
  write(root, "usr/share/man/man8/pcoip-cmsg.8.gz", gz(docs.man));
  link(root, "usr/share/man/man8/pcoip-cmsg-setup.8.gz", "pcoip-cmsg.8.gz");
  write(root, "usr/share/bash-completion/completions/pcoip-cmsg", docs.completion);
  link(root, "usr/share/bash-completion/completions/pcoip-cmsg-setup", "pcoip-cmsg");
  const doc = "usr/share/doc/pcoip-cmsg";
  write(root, `${doc}/pcoip-cmsg.example.toml`, readFileSync(join(REPO, "config/pcoip-cmsg.example.toml")));
  write(root, `${doc}/README`, docs.readme);
  if (kind === "deb") {
    // Debian refers to the licenses every system has in /usr/share/common-licenses instead of repeating them.
    write(root, `${doc}/copyright`, docs.licenses.replace(APACHE_2_FULL_TEXT, APACHE_2_REFERENCE));
    write(root, "usr/share/lintian/overrides/pcoip-cmsg", readFileSync(join(PKG, "deb/lintian-overrides")));
    write(root, `${doc}/changelog.Debian.gz`, gz(debChangelog(o)));
  } else {
    write(root, "usr/share/licenses/pcoip-cmsg/LICENSES", docs.licenses);
    if (docs.lgpl) write(root, "usr/share/licenses/pcoip-cmsg/LGPL-2.1", docs.lgpl);
  }
}

const APACHE_2_FULL_TEXT =
  /^ *Apache License\s+Version 2\.0, January 2004[\s\S]*?END OF TERMS AND CONDITIONS[\s\S]*?(?=\n\n\S|$)/gm;
const APACHE_2_REFERENCE = "The Apache License, Version 2.0: /usr/share/common-licenses/Apache-2.0";

function mkdirp(root: string, path: string): string {
  const dir = join(root, path);
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  return dir;
}

interface Docs {
  man: string;
  completion: string;
  licenses: string;
  lgpl: string | undefined;
  readme: string;
}

function makeDocs(binary: string, o: Options, kind: "rpm" | "deb"): Docs {
  const helps = helpTexts(binary);
  const date =
    sh("git", ["log", "-1", "--format=%cs"], { cwd: REPO }).trim() || new Date().toISOString().slice(0, 10);
  const bunVersion = /bun (\S+)/.exec(sh(binary, ["--version"]))?.[1] ?? "unknown";
  const lgplFile =
    kind === "deb" ? "/usr/share/common-licenses/LGPL-2.1" : "/usr/share/licenses/pcoip-cmsg/LGPL-2.1";
  return {
    man: manPage(helps, o.version, date),
    completion: bashCompletion(helps),
    licenses: licensesText(REPO, bunVersion, lgplFile),
    lgpl: lgplText(),
    readme: `pcoip-cmsg ${o.version}: PCoIP Connection Manager and Security Gateway in one executable.

After installing the package, configure and start the service with the vendor's command line:
  pcoip-cmsg-setup install --accept-policies --external-pcoip-ip PUBLIC_IP --self-signed --host-address FQDN \\
      [--broker-url https://broker.example.net]
Then: pcoip-cmsg status, pcoip-cmsg diagnose, journalctl -u pcoip-cmsg. Install steps: /var/log/pcoip-cmsg/install.log.
Every configuration key: pcoip-cmsg.example.toml in this folder, or pcoip-cmsg config schema. Manual: man pcoip-cmsg.
`,
  };
}

function debChangelog(o: Options): string {
  return `pcoip-cmsg (${o.version}-${o.release}) stable; urgency=medium

  * Release ${o.version}-${o.release}.

 -- pcoip-cmsg maintainers <pcoip-cmsg@example.net>  Fri, 04 Dec 2026 00:00:00 +0000
`;
}

function scriptlet(file: string): string {
  const common = readFileSync(join(PKG, "scripts/common.sh"), "utf8").trimEnd();
  return readFileSync(file, "utf8").replace("@COMMON@", common);
}

function duKiB(dir: string): number {
  let bytes = 0;
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile()) bytes += statSync(p).size;
    }
  };
  walk(dir);
  return Math.ceil(bytes / 1024);
}

function buildDeb(o: Options, bins: ReturnType<typeof executables>, work: string): string {
  const root = join(work, "deb");
  stageTree(root, "deb", o, bins, makeDocs(bins.binary, o, "deb"));
  const md5 = sh("find", [".", "-type", "f", "-printf", "%P\\0"], { cwd: root })
    .split("\0")
    .filter((f) => f !== "" && !f.startsWith("etc/"))
    .sort()
    .map((f) => `${new Bun.CryptoHasher("md5").update(readFileSync(join(root, f))).digest("hex")}  ${f}`)
    .join("\n");
  const control = mkdirp(root, "DEBIAN");
  write(
    root,
    "DEBIAN/control",
    `Package: pcoip-cmsg
Version: ${o.version}-${o.release}
Architecture: amd64
Maintainer: pcoip-cmsg maintainers <pcoip-cmsg@example.net>
Installed-Size: ${duKiB(root)}
Depends: libc6 (>= 2.17)
Suggests: libnftables1
Provides: pcoip-cmsg-setup
Section: net
Priority: optional
Description: PCoIP Connection Manager and Security Gateway in one executable
 Replaces the vendor's Docker-based Connection Manager and Security Gateway
 with one systemd service: the HTTPS broker front door on 443 and the PCoIP
 relay on 4172 TCP/UDP. After installing, configure and start it with the
 vendor's command line:
 pcoip-cmsg-setup install --accept-policies --external-pcoip-ip IP ...
`,
  );
  write(root, "DEBIAN/conffiles", "/etc/pcoip-cmsg/pcoip-cmsg.toml\n");
  write(root, "DEBIAN/md5sums", `${md5}\n`);
  for (const s of ["preinst", "postinst", "prerm", "postrm"])
    write(root, `DEBIAN/${s}`, scriptlet(join(PKG, "deb", s)), 0o755);
  void control;
  const out = resolve(o.out, `pcoip-cmsg_${o.version}-${o.release}_amd64.deb`);
  sh("dpkg-deb", ["--root-owner-group", "-Zgzip", `-z${o.fast ? 1 : 6}`, "--build", root, out]);
  return out;
}

function buildRpm(o: Options, bins: ReturnType<typeof executables>, work: string): string {
  const stage = join(work, "rpm-stage");
  stageTree(stage, "rpm", o, bins, makeDocs(bins.binary, o, "rpm"));
  const common = readFileSync(join(PKG, "scripts/common.sh"), "utf8").trimEnd();
  const spec = readFileSync(join(PKG, "rpm/pcoip-cmsg.spec.in"), "utf8")
    .replaceAll("@VERSION@", o.version)
    .replaceAll("@RELEASE@", o.release)
    .replaceAll("@STAGE@", stage)
    .replaceAll("@COMMON@", common)
    .replace("@BASELINE_FILE@", bins.baseline ? "/usr/libexec/pcoip-cmsg/pcoip-cmsg-baseline" : "");
  const specFile = join(work, "pcoip-cmsg.spec");
  writeFileSync(specFile, spec);
  const top = join(work, "rpmbuild");
  const defines: [string, string][] = [
    ["_topdir", top],
    ["_rpmdir", resolve(o.out)],
    ["_build_name_fmt", "%%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm"],
    ["_dbpath", join(work, "rpmdb")],
    // Never strip or post-process: the program lives in the executable's tail.
    ["debug_package", "%{nil}"],
    ["__os_install_post", "%{nil}"],
    ["__strip", "/bin/true"],
    ["_build_id_links", "none"],
    // gzip -6: every EL8/EL9 rpm reads it (zstd needs rpm built with it); -9 took twice as long for 2 % less.
    ["_binary_payload", `w${o.fast ? 1 : 6}.gzdio`],
    ["_binary_filedigest_algorithm", "8"],
  ];
  sh("rpmbuild", [
    "-bb",
    "--target",
    "x86_64-redhat-linux",
    ...defines.flatMap(([k, v]) => ["--define", `${k} ${v}`]),
    specFile,
  ]);
  const out = resolve(o.out, `pcoip-cmsg-${o.version}-${o.release}.x86_64.rpm`);
  if (!existsSync(out)) throw new Error(`rpmbuild finished but ${relative(REPO, out)} is not there`);
  return out;
}

if (import.meta.main) {
  try {
    const o = parseOptions(process.argv.slice(2));
    const bins = executables(o);
    mkdirSync(o.out, { recursive: true });
    const work = mkdtempSync(join(tmpdir(), "pcoip-cmsg-package-"));
    try {
      for (const f of o.formats) {
        const file = f === "deb" ? buildDeb(o, bins, work) : buildRpm(o, bins, work);
        console.log(
          `package: ${relative(process.cwd(), file)} (${(statSync(file).size / 1024 ** 2).toFixed(1)} MiB)`,
        );
      }
    } finally {
      rmSync(work, { recursive: true, force: true });
    }
  } catch (e) {
    console.error(`package: ${(e as Error).message}`);
    process.exit(1);
  }
}
