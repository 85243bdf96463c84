/**
 * `npm run build`: one self-contained executable at dist/pcoip-cmsg (bun build --compile), plus
 * dist/pcoip-cmsg-baseline for x64 CPUs without AVX2 (older hypervisor baselines at dark sites) when the
 * baseline runtime can be had (it comes from the npm registry as @oven/bun-linux-x64-baseline).
 * Never strip the result: the program is embedded in the executable's tail and strip deletes it.
 */
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync } from "node:fs";

const pkg = JSON.parse(readFileSync("package.json", "utf8")) as { version: string };
const commit =
  spawnSync("git", ["rev-parse", "--short", "HEAD"], { encoding: "utf8" }).stdout?.trim() || "unknown";
mkdirSync("dist", { recursive: true });

function compile(outfile: string, target?: string): boolean {
  const args = [
    "build",
    "--compile",
    "--minify",
    "--bytecode",
    `--define=PCOIP_CMSG_VERSION=${JSON.stringify(pkg.version)}`,
    `--define=PCOIP_CMSG_COMMIT=${JSON.stringify(commit)}`,
    ...(target ? [`--target=${target}`] : []),
    "src/main.ts",
    // Loaded by `new Worker` (platform/front-door-workers.ts): a compiled executable holds only its entry points.
    "src/net/front-door-worker.ts",
    "--outfile",
    outfile,
  ];
  const r = spawnSync(process.execPath, args, { stdio: "inherit" });
  return r.status === 0 && existsSync(outfile);
}

if (!compile("dist/pcoip-cmsg")) {
  console.error("build: compiling dist/pcoip-cmsg failed (see above)");
  process.exit(1);
}
console.log("build: dist/pcoip-cmsg");
if (process.arch === "x64" && process.env.PCOIP_CMSG_SKIP_BASELINE !== "1") {
  if (compile("dist/pcoip-cmsg-baseline", "bun-linux-x64-baseline"))
    console.log("build: dist/pcoip-cmsg-baseline");
  else
    console.error(
      "build: the x64-baseline build could not be made (its runtime could not be fetched); dist/pcoip-cmsg is complete",
    );
}
