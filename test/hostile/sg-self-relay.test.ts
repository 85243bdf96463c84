// Claim: the demo exactly as shipped before the fix — SG on 127.0.0.1:4172 with the default sg.agentPorts, the demo
// agent without --endpoint answering 127.0.0.1:4172 — no longer points the SG at itself (issue 16 #9): the
// allocation fails with ALLOC_FAILED_TO_ALLOCATE_AGENT and one line naming the SG's own listener, and the client's
// connection is the only one the SG accepts (before: ALLOC_SUCCESSFUL, and one connection made the SG accept its
// own thousands of times). Port 4172 is the demo's, so the run happens in a network namespace of its own (prefix
// "core", removed afterwards) where nothing else can hold it.
import { afterAll, expect, test } from "bun:test";
import { resolve } from "node:path";

const NS = `core-self-${Math.random().toString(36).slice(2, 8)}`;
const PROBE = resolve(import.meta.dir, "../peers/self-relay-probe.ts");

const sh = (args: string[]) => {
  const r = Bun.spawnSync(args, { stdout: "pipe", stderr: "pipe" });
  return { ok: r.exitCode === 0, err: r.stderr.toString().trim() };
};
afterAll(() => {
  sh(["ip", "netns", "del", NS]);
});

test("the demo agent without --endpoint: refused, the SG never relays to itself", async () => {
  const made = sh(["ip", "netns", "add", NS]);
  if (!made.ok) throw new Error(`ip netns add ${NS}: ${made.err}`);
  expect(sh(["ip", "-n", NS, "link", "set", "lo", "up"]).ok).toBe(true);
  const p = Bun.spawn(["ip", "netns", "exec", NS, process.execPath, PROBE], {
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
    env: { ...process.env, HTTPS_PROXY: "", https_proxy: "", HTTP_PROXY: "", http_proxy: "" },
  });
  const killer = setTimeout(() => p.kill("SIGKILL"), 30_000);
  const [out, err] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text()]);
  clearTimeout(killer);
  await p.exited;
  const line = out.trim().split("\n").at(-1) ?? "";
  if (!line.startsWith("{"))
    throw new Error(`probe printed no result (exit ${p.exitCode}): ${err.slice(-2000)}`);
  const r = JSON.parse(line) as {
    alloc: string;
    refusals: Record<string, unknown>[];
    sgAccepted: number;
    relayed: boolean;
  };
  expect(r.alloc).toBe("ALLOC_FAILED_TO_ALLOCATE_AGENT");
  expect(r.refusals).toHaveLength(1);
  expect(r.refusals[0]).toMatchObject({ target: "127.0.0.1:4172", rule: "own_listener" });
  expect(r.relayed).toBe(false);
  expect(r.sgAccepted).toBeLessThanOrEqual(1); // the client's own connection, refused: no admission
});
