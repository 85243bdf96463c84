// Claim: SIGTERM drains. From the signal on, the load balancer's GET /pcoip-broker/xml answers 503 (HTTPS and
// plain HTTP), /readyz says draining, a new sign-in and an allocation fail with "shutting down" and a log line
// saying why — while the live session's TCP relay and UDP flow keep carrying bytes. The process exits 0 as soon as the last
// session ends, or when drainSeconds runs out, cutting what is left.
import { describe, expect, test } from "bun:test";
import { type ApplianceProcess, startApplianceProcess } from "../peers/appliance-process.ts";
import { cmClient, cmGet, keepFlowing, sgEnv, tcpRoundTrip, until } from "../peers/appliance-session.ts";
import { applianceTest } from "../peers/appliance-test.ts";

const t = applianceTest();

const exitWithin = (a: ApplianceProcess, ms: number) =>
  Promise.race([a.exited, Bun.sleep(ms).then(() => "still running" as const)]);

describe("SIGTERM with a live session", () => {
  test("no new sessions, the live one keeps flowing, exit 0 as soon as it ends", async () => {
    // drainSeconds far beyond the test, and no reconnect grace: only the session's end can let the process go.
    const { app, control, udp, sessionId } = await t.liveSession({
      PCOIP_CMSG_DRAINSECONDS: "600",
      PCOIP_CMSG_SG_RECONNECTGRACESECONDS: "0",
    });
    expect((await cmGet(app, "/pcoip-broker/xml")).status).toBe(200);
    const early = cmClient(app);
    t.closers.push(() => early.close());
    await early.hello();
    expect((await early.authenticate("alice", "correct horse")).resultId).toBe(
      "AUTH_SUCCESSFUL_AND_COMPLETE",
    );
    expect((await early.getResourceList()).resultId).toBe("LIST_SUCCESSFUL");
    const flow = keepFlowing(control, udp);
    t.closers.push(() => flow.stop());

    app.signal("SIGTERM");
    await app.waitForLog((l) => typeof l.msg === "string" && l.msg.startsWith("draining"), 5000);

    // The load balancer is told to go elsewhere, on both listeners, and readiness says why.
    const get = await cmGet(app, "/pcoip-broker/xml");
    expect(get.status).toBe(503);
    expect(get.body).toContain("draining");
    expect((await fetch(`http://${app.redirect}/pcoip-broker/xml`, { redirect: "manual" })).status).toBe(503);
    const ready = await app.adminGet("/readyz");
    expect(ready.status).toBe(503);
    expect(await ready.text()).toMatch(/^FAIL draining/m);

    // A client signed in before the signal gets a clear failure at allocation; a new one at sign-in (no password
    // check); the log says it is the drain.
    const alloc = await early.allocate("desktop-1");
    expect(alloc.resultId).toMatch(/^ALLOC_FAILED/);
    expect(alloc.resultStr).toContain("shutting down");
    expect(alloc.body).not.toContain("<connect-tag>");
    const c = cmClient(app);
    t.closers.push(() => c.close());
    expect((await c.hello()).operation).toBe("hello-resp");
    const auth = await c.authenticate("alice", "correct horse");
    expect(auth.resultId).toBe("AUTH_FAILED_BROKER_ERROR");
    expect(auth.resultStr).toContain("shutting down");
    await app.waitForLog((l) => l.reason === "draining" && l.sessionId !== sessionId, 5000);

    // The live session is untouched: every tick before, during and after the signal came back.
    await Bun.sleep(300);
    await flow.stopAndCheck();
    await tcpRoundTrip(control, "<during-drain>");
    await udp.roundTrip("<udp-during-drain>");
    expect(await exitWithin(app, 500)).toBe("still running");

    // The session ends: the process drains and exits 0 well before drainSeconds.
    const endedAt = Date.now();
    control.halfClose();
    await control.waitFor("END ", 5000);
    const code = await exitWithin(app, 15_000);
    expect(code).toBe(0);
    expect(Date.now() - endedAt).toBeLessThan(15_000);
    expect(app.logs.some((l) => l.msg === "drained: no live sessions")).toBe(true);
    expect(app.logs.some((l) => l.liveSessionsCut !== undefined && l.liveSessionsCut !== 0)).toBe(false);
  });

  test("drainSeconds bounds the drain: a session that never ends is cut, and the process exits 0", async () => {
    const { app, control, udp } = await t.liveSession({ PCOIP_CMSG_DRAINSECONDS: "2" });
    const flow = keepFlowing(control, udp);
    t.closers.push(() => flow.stop());
    const t0 = Date.now();
    app.signal("SIGTERM");
    await app.waitForLog((l) => typeof l.msg === "string" && l.msg.startsWith("draining"), 5000);
    await Bun.sleep(300);
    await flow.stopAndCheck(); // still relaying inside the drain window
    const code = await exitWithin(app, 15_000);
    const took = Date.now() - t0;
    expect(code).toBe(0);
    expect(took).toBeGreaterThanOrEqual(1900);
    expect(took).toBeLessThan(15_000);
    const over = app.logs.find((l) => l.liveSessionsCut !== undefined);
    expect(over?.liveSessionsCut).toBe(1);
    expect(String(over?.msg)).toContain("drain time over");
    // The cut reaches the client: its control connection is closed.
    await Promise.race([
      control.closed,
      Bun.sleep(5000).then(() => {
        throw new Error("the client's control connection was not closed after the drain");
      }),
    ]);
  });

  // Also a start-up race: the signal comes right after the listener lines, as a `systemctl stop` right after
  // READY=1 would. The handlers must already be in place (SIGTERM's default action would exit 143, undrained).
  test("SIGTERM right after start-up, nothing live: drained at once, exit 0", async () => {
    const { app } = await t.start({ env: { PCOIP_CMSG_DRAINSECONDS: "600" } });
    const t0 = Date.now();
    app.signal("SIGTERM");
    expect(await exitWithin(app, 10_000)).toBe(0);
    expect(Date.now() - t0).toBeLessThan(10_000);
    await until(() => app!.logs.some((l) => l.msg === "drained: no live sessions"), "the drained line", 2000);
  });

  test("SIGINT (Ctrl-C in a foreground run) drains the same way and exits 0", async () => {
    const app = await startApplianceProcess({ env: { ...sgEnv(), PCOIP_CMSG_DRAINSECONDS: "600" } });
    t.app = app;
    app.signal("SIGINT");
    expect(await exitWithin(app, 10_000)).toBe(0);
    const drained = app.logs.find((l) => l.msg === "drained: no live sessions");
    expect(drained?.signal).toBe("SIGINT");
  });
});
