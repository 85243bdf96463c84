// Claim: a reload replaces configuration and the conversations that start after it, never what the node keeps
// (platform/node-state.ts). N failed logins, SIGHUP, one more failure: the throttle counts N+1 (the next attempt
// waits the doubled delay). A desktop held by one user (enableCollaboration = false) is still refused to another
// after SIGHUP. Every `_total` series only grows across three reloads with conversations that start before and
// finish after each one, also once the retired generation has closed. One drain flag drives /readyz, the CM's
// load-balancer GET and allocations, and the SG's admissions — and lowering it resumes all three.
import { describe, expect, test } from "bun:test";
import { type ApplianceProcess, type LogLine, startApplianceProcess } from "../peers/appliance-process.ts";
import { cmClient, type Scrape, scrape, sgEnv, signIn } from "../peers/appliance-session.ts";
import { applianceTest } from "../peers/appliance-test.ts";
import { startFakeAgent } from "../peers/fake-agent.ts";
import { startInProcessAppliance } from "../peers/in-process-appliance.ts";

const t = applianceTest();

let reloads = 0;
/** Changes cm.agentTimeoutSeconds (so the CM generation is rebuilt) and waits for "configuration reloaded". */
async function reload(a: ApplianceProcess): Promise<LogLine> {
  reloads++;
  const text = await Bun.file(a.configFile).text();
  const next = /agentTimeoutSeconds = \d+/.test(text)
    ? text.replace(/agentTimeoutSeconds = \d+/, `agentTimeoutSeconds = ${20 + reloads}`)
    : text.replace("[cm]\n", `[cm]\nagentTimeoutSeconds = ${20 + reloads}\n`);
  a.rewriteConfig(next);
  const from = a.logs.length;
  a.signal("SIGHUP");
  const line = await a.waitForLog(
    (l) =>
      a.logs.indexOf(l) >= from &&
      (l.msg === "configuration reloaded" || String(l.msg).startsWith("reloading config:")),
    10_000,
  );
  expect(line.msg).toBe("configuration reloaded");
  expect(line.changed).toEqual(["cm.agentTimeoutSeconds"]);
  return line;
}

const delays = (a: ApplianceProcess, from: number) =>
  a.logs.slice(from).filter((l) => l.msg === "failed logins: delaying the password check");

describe("what a reload keeps", () => {
  test("N failed logins, reload, one more failure: the throttle counts N+1", async () => {
    const app = await startApplianceProcess({
      env: sgEnv(),
      tables: "[cm.throttle]\nfailuresBeforeDelay = 2\n",
    });
    t.app = app;
    const c = cmClient(app);
    t.closers.push(() => c.close());
    expect((await c.hello()).operation).toBe("hello-resp");
    // N = 2 failures: the free ones.
    for (let i = 0; i < 2; i++)
      expect((await c.authenticate("alice", "wrong")).resultId).toMatch(/^AUTH_FAILED_/);
    expect(delays(app, 0)).toEqual([]);
    await reload(app);

    // The new generation's conversation: failure N+1 waits the base delay (1 s)…
    const c2 = cmClient(app);
    t.closers.push(() => c2.close());
    expect((await c2.hello()).operation).toBe("hello-resp");
    let mark = app.logs.length;
    expect((await c2.authenticate("alice", "wrong")).resultId).toMatch(/^AUTH_FAILED_/);
    expect(delays(app, mark).map((l) => l.waitMs)).toEqual([1000]);
    // …and the next one waits twice that: the throttle counted N+1 = 3 failures.
    mark = app.logs.length;
    expect((await c2.authenticate("alice", "wrong")).resultId).toMatch(/^AUTH_FAILED_/);
    expect(delays(app, mark).map((l) => l.waitMs)).toEqual([2000]);
  });

  test("a desktop held by one user (collaboration off) stays held across a reload", async () => {
    const { app } = await t.start({
      users: { alice: "correct horse", bob: "battery staple" },
      topLevel: "enableCollaboration = false",
    });
    const alice = await signIn(app);
    t.closers.push(() => alice.client.close());
    await reload(app);
    const bob = cmClient(app);
    t.closers.push(() => bob.close());
    await bob.hello();
    expect((await bob.authenticate("bob", "battery staple")).resultId).toBe("AUTH_SUCCESSFUL_AND_COMPLETE");
    expect((await bob.getResourceList()).resultId).toBe("LIST_SUCCESSFUL");
    expect((await bob.allocate("desktop-1")).resultId).toBe("ALLOC_FAILED_RESOURCE_IN_USE");
    // The holder herself may allocate again.
    const again = await signIn(app);
    t.closers.push(() => again.client.close());
  });

  test("every _total series only grows across three reloads with conversations spanning them", async () => {
    const { app } = await t.start();
    const a = app;
    const scrapes: { at: string; m: Scrape }[] = [];
    const take = async (at: string) => {
      const m = await scrape(a);
      const prev = scrapes.at(-1);
      if (prev) {
        for (const [key, before] of prev.m) {
          if (!/^[a-z_]+_total(\{|$)/.test(key)) continue;
          const after = m.get(key);
          if (after === undefined || after < before)
            throw new Error(`${key} went from ${before} (${prev.at}) to ${after} (${at})`);
        }
      }
      scrapes.push({ at, m });
    };
    for (let round = 1; round <= 3; round++) {
      // A conversation that starts on this generation…
      const c = cmClient(a);
      t.closers.push(() => c.close());
      await c.hello();
      expect((await c.authenticate("alice", "correct horse")).resultId).toBe("AUTH_SUCCESSFUL_AND_COMPLETE");
      await take(`round ${round}, before the reload`);
      await reload(a);
      await take(`round ${round}, right after the reload`);
      // …finishes on it after the reload (its cookie routes it back), then ends.
      expect((await c.getResourceList()).resultId).toBe("LIST_SUCCESSFUL");
      expect((await c.allocate("desktop-1")).resultId).toBe("ALLOC_SUCCESSFUL");
      await c.bye();
      await take(`round ${round}, conversation over`);
      // The retired generation, now empty, is closed within 5 s.
      await Bun.sleep(5_500);
      await take(`round ${round}, retired generation closed`);
    }
    const first = scrapes[0]!.m;
    const last = scrapes.at(-1)!.m;
    expect(last.get("pcoip_cm_requests_total")).toBeGreaterThan(first.get("pcoip_cm_requests_total") ?? 0);
    expect(last.get('pcoip_cm_allocations_total{result="ALLOC_SUCCESSFUL"}')).toBe(3);
  }, 60_000);
});

describe("one drain flag", () => {
  test("drives /readyz, the CM (GET and allocations) and the SG's admissions; resume lowers all three", async () => {
    const fake = await startFakeAgent({ endpoint: true });
    const node = await startInProcessAppliance({
      agent: fake,
    });
    try {
      const { appliance } = node;
      const admit = (n: number) =>
        appliance.admissions!.admit({
          sessionLogId: `dddddddd-0000-4000-8000-${String(n).padStart(12, "0")}`,
          agentSessionId: "drain",
          clientIp: "192.0.2.1",
          agentHost: "127.0.0.1",
          sni: "desktop-1.test",
        });
      // A client signed in and listed before the flag moves (a draining node also refuses new sign-ins).
      const listed = async () => {
        const c = node.client();
        t.closers.push(() => c.close());
        await c.hello();
        expect((await c.authenticate("alice", "correct horse")).resultId).toBe(
          "AUTH_SUCCESSFUL_AND_COMPLETE",
        );
        expect((await c.getResourceList()).resultId).toBe("LIST_SUCCESSFUL");
        return c;
      };
      let next = await listed();
      const state = async () => ({
        readyz: (await fetch(`http://${appliance.bound.admin}/readyz`)).status,
        cmGet: (await node.cmGet("/pcoip-broker/xml")).status,
        allocation: (await next.allocate("desktop-1")).resultId,
        sgAdmit: admit(Math.floor(Math.random() * 1e9)).ok,
      });
      expect(await state()).toEqual({
        readyz: 200,
        cmGet: 200,
        allocation: "ALLOC_SUCCESSFUL",
        sgAdmit: true,
      });
      next = await listed();
      appliance.node.setDraining(true);
      expect(appliance.draining).toBe(true);
      expect(await state()).toEqual({
        readyz: 503,
        cmGet: 503,
        allocation: "ALLOC_FAILED_SERVER_BUSY",
        sgAdmit: false,
      });
      appliance.node.setDraining(false);
      next = await listed();
      expect(await state()).toEqual({
        readyz: 200,
        cmGet: 200,
        allocation: "ALLOC_SUCCESSFUL",
        sgAdmit: true,
      });
    } finally {
      await node.stop();
      await fake.close();
    }
  });
});
