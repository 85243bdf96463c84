/**
 * The generated parts of the packages (scripts/package.ts): the man page and the bash completion, both made from
 * the built executable's own `--help` (so they can never disagree with it), and the license texts of the code
 * bundled into the executable (production npm dependencies and the Bun runtime).
 */
import { spawnSync } from "node:child_process";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";

/** The help text of the executable, per command ("" = the top-level --help). */
export function helpTexts(binary: string): Map<string, string> {
  const run = (args: string[]) => {
    const r = spawnSync(binary, args, { encoding: "utf8", env: { ...process.env, NO_COLOR: "1" } });
    if (r.status !== 0) throw new Error(`${binary} ${args.join(" ")} exited ${r.status}: ${r.stderr}`);
    return r.stdout;
  };
  const top = run(["--help"]);
  const out = new Map<string, string>([["", top]]);
  for (const name of commandNames(top)) out.set(name, run([name, "--help"]));
  return out;
}

/** The command names listed under "Commands:" in the top-level help. */
export function commandNames(topHelp: string): string[] {
  const section = topHelp.split(/^Commands:$/m)[1]?.split(/^\S/m)[0] ?? "";
  return [...section.matchAll(/^ {2}([a-z][a-z0-9-]*)\s/gm)].map((m) => m[1]!);
}

/** The --flags a command's help lists. */
export function flagsOf(help: string): string[] {
  return [...new Set([...help.matchAll(/^\s{2,}(--[a-z0-9][a-z0-9-]*)/gm)].map((m) => m[1]!))];
}

const roff = (text: string) =>
  text
    .replace(/\\/g, "\\e")
    .replace(/-/g, "\\-")
    .split("\n")
    .map((l) => (/^[.']/.test(l) ? `\\&${l}` : l))
    .join("\n")
    .trimEnd();

export function manPage(helps: Map<string, string>, version: string, date: string): string {
  const sections = [...helps.entries()]
    .filter(([name]) => name !== "")
    .map(([name, text]) => `.SS ${roff(name)}\n.nf\n${roff(text)}\n.fi`);
  return `.TH PCOIP\\-CMSG 8 "${date}" "pcoip\\-cmsg ${roff(version)}" "System Administration"
.SH NAME
pcoip\\-cmsg, pcoip\\-cmsg\\-setup \\- PCoIP Connection Manager and Security Gateway in one executable
.SH SYNOPSIS
.B pcoip\\-cmsg
.I command
.RI [ options ]
.br
.B pcoip\\-cmsg\\-setup
.I command
.RI [ options ]
.SH DESCRIPTION
.B pcoip\\-cmsg\\-setup
is the same program under the vendor's command name: its install, configure, uninstall and
create\\-darksite\\-bundle commands take the vendor's flags.
.PP
.nf
${roff(helps.get("") ?? "")}
.fi
.SH COMMANDS
${sections.join("\n")}
.SH FILES
.TP
.I /etc/pcoip\\-cmsg/pcoip\\-cmsg.toml
the configuration (every key: /usr/share/doc/pcoip\\-cmsg/pcoip\\-cmsg.example.toml)
.TP
.I /etc/pcoip\\-cmsg/certs/
the certificate and key of port 443
.TP
.I /var/log/pcoip\\-cmsg/install.log
install, configure, upgrade and removal steps
.SH SEE ALSO
.BR systemctl (1),
.BR journalctl (1)
`;
}

/** Bash completion for both names: commands, then each command's flags; file names after flags that take one. */
export function bashCompletion(helps: Map<string, string>): string {
  const cases = [...helps.entries()]
    .filter(([name]) => name !== "")
    .map(([name, text]) => `    ${name}) opts="${flagsOf(text).join(" ")}" ;;`)
    .join("\n");
  const commands = [...helps.keys()].filter((n) => n !== "").join(" ");
  return `# bash completion for pcoip-cmsg and pcoip-cmsg-setup (generated from --help by scripts/package.ts)
_pcoip_cmsg() {
  local cur prev opts
  cur="\${COMP_WORDS[COMP_CWORD]}"
  prev="\${COMP_WORDS[COMP_CWORD-1]}"
  if [ "$COMP_CWORD" -eq 1 ]; then
    COMPREPLY=($(compgen -W "${commands} --help --version" -- "$cur"))
    return
  fi
  case "$prev" in
    --config | --file | --binary | --baseline | --output | --root | --ca-cert | --ssl-cert | --ssl-key | \\
      --darksite-bundle-path | --pcoip-cmsg-rpm-path | --trusted-license-cert | --trusted-license-cert-key | \\
      --https-proxy-password-file | --support-bundle)
      COMPREPLY=($(compgen -f -- "$cur"))
      return
      ;;
  esac
  case "\${COMP_WORDS[1]}" in
${cases}
    *) opts="" ;;
  esac
  COMPREPLY=($(compgen -W "$opts" -- "$cur"))
}
complete -F _pcoip_cmsg pcoip-cmsg pcoip-cmsg-setup
`;
}

export interface BundledPackage {
  readonly name: string;
  readonly version: string;
  readonly license: string;
  readonly texts: string[];
}

/** Production npm dependencies (what the executable bundles) with their license files. */
export function bundledPackages(repo: string): BundledPackage[] {
  const r = spawnSync("npm", ["ls", "--omit=dev", "--all", "--parseable"], { cwd: repo, encoding: "utf8" });
  const dirs = [...new Set(r.stdout.split("\n").filter((d) => d.includes("/node_modules/")))].sort();
  if (dirs.length === 0) throw new Error(`npm ls found no production dependencies: ${r.stderr}`);
  return dirs.map((dir) => {
    const pkg = JSON.parse(readFileSync(join(dir, "package.json"), "utf8")) as {
      name: string;
      version: string;
      license?: string;
    };
    const texts = readdirSync(dir)
      .filter((f) => /^(licen[cs]e|copying|notice)/i.test(f))
      .sort()
      .map((f) => readFileSync(join(dir, f), "utf8").trim());
    return { name: pkg.name, version: pkg.version, license: pkg.license ?? "see text", texts };
  });
}

/** The Bun runtime inside the executable: its own MIT license and what it links statically. */
export function bunNotice(bunVersion: string, lgplFile: string): string {
  return `Bun ${bunVersion} (the runtime inside the executable, from the npm package "bun")
License: MIT, with statically linked components under their own licenses, listed by the Bun project
(https://bun.sh/docs/project/licensing): JavaScriptCore/WebKit (LGPL-2.1 and BSD-2-Clause), BoringSSL
(ISC/OpenSSL), brotli (MIT), c-ares (MIT), libarchive (BSD-2-Clause), libdeflate (MIT), lol-html (BSD-3-Clause),
mimalloc (MIT), picohttpparser (MIT), simdutf (Apache-2.0/MIT), tinycc (LGPL-2.1), uSockets/uWebSockets
(Apache-2.0), zlib (Zlib), zstd (BSD-3-Clause), libuv (MIT), lshpack (MIT), sqlite (public domain).
The LGPL-2.1 text: ${lgplFile}. JavaScriptCore's source: https://github.com/oven-sh/WebKit

Copyright (c) Oven (Jarred Sumner)

Permission is hereby granted, free of charge, to any person obtaining a copy of this software and associated
documentation files (the "Software"), to deal in the Software without restriction, including without limitation
the rights to use, copy, modify, merge, publish, distribute, sublicense, and/or sell copies of the Software, and
to permit persons to whom the Software is furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or substantial portions of
the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT NOT LIMITED TO
THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF
CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS
IN THE SOFTWARE.`;
}

/** One text with every license: the product's notice, Bun, then each bundled npm package. */
export function licensesText(repo: string, bunVersion: string, lgplFile: string): string {
  const parts = [
    "pcoip-cmsg\nCopyright: the pcoip-cmsg authors. All rights reserved (proprietary; package.json: UNLICENSED).",
    bunNotice(bunVersion, lgplFile),
    ...bundledPackages(repo).map(
      (p) =>
        `${p.name} ${p.version} (bundled into the executable)\nLicense: ${p.license}\n\n${p.texts.join("\n\n") || `(the package ships no license file; its package.json says ${p.license})`}`,
    ),
  ];
  return `${parts.join(`\n\n${"-".repeat(78)}\n\n`)}\n`;
}

export function lgplText(): string | undefined {
  const f = "/usr/share/common-licenses/LGPL-2.1";
  return existsSync(f) ? readFileSync(f, "utf8") : undefined;
}
