// Claim: `pcoip-cmsg drain` takes a running node out of rotation without a restart — the health check answers 503
// on HTTPS and plain HTTP, GET /drain and the metrics say draining, a new allocation gets the "shutting down"
// answer — while the live session's TCP relay and UDP flow keep carrying bytes; `pcoip-cmsg resume` undoes all
// of it (health 200, a new login allocates); once SIGTERM has started the shutdown, resume is refused by name.
import { describe, expect, test } from "bun:test";
import { resolve } from "node:path";
import type { ApplianceProcess } from "../peers/appliance-process.ts";
import {
  cmClient,
  cmGet,
  keepFlowing,
  openControl,
  sample,
  scrape,
  signIn,
  tcpRoundTrip,
  udpPeer,
} from "../peers/appliance-session.ts";
import { applianceTest } from "../peers/appliance-test.ts";
import { runCommand } from "../peers/run-command.ts";

const MAIN = resolve(import.meta.dir, "../../src/main.ts");
const t = applianceTest();

const cli = (verb: string, a: ApplianceProcess) =>
  // The test config listens on port 0, so the bound admin address is passed as an operator would with --admin.
  runCommand([process.execPath, MAIN, verb, "--config", a.configFile, "--admin", a.admin], {
    timeoutMs: 15_000,
  });

describe("drain and resume from the command line", () => {
  test("drain keeps live sessions, refuses new ones, answers 503; resume brings the node back", async () => {
    const { app } = await t.start();
    const a = app;
    const s = await signIn(a);
    t.closers.push(() => s.client.close());
    const control = await openControl(a);
    t.closers.push(() => control.close());
    const udp = await udpPeer(a);
    t.closers.push(() => udp.close());
    await udp.roundTrip("<udp-before>");
    const flow = keepFlowing(control, udp);
    t.closers.push(() => flow.stop());

    const drained = await cli("drain", a);
    expect(drained.code).toBe(0);
    expect(drained.out).toContain("draining: the health check answers 503");
    expect(drained.out).toContain("1 live session(s) continue");
    expect((await cmGet(a, "/pcoip-broker/xml")).status).toBe(503);
    expect((await fetch(`http://${a.redirect}/pcoip-broker/xml`)).status).toBe(503);
    expect(await (await a.adminGet("/drain")).json()).toEqual({
      draining: true,
      shuttingDown: false,
      liveSessions: 1,
    });
    const m = await scrape(a);
    expect(sample(m, "pcoip_node_draining")).toBe(1);
    expect(sample(m, "pcoip_node_ready")).toBe(0);

    const c = cmClient(a);
    t.closers.push(() => c.close());
    await c.hello();
    const refused = await c.authenticate("alice", "correct horse");
    expect(refused.resultId).toBe("AUTH_FAILED_BROKER_ERROR");
    expect(refused.resultStr).toContain("shutting down");

    await Bun.sleep(200);
    await flow.stopAndCheck();
    await tcpRoundTrip(control, "<during-drain>");

    const resumed = await cli("resume", a);
    expect(resumed.code).toBe(0);
    expect(resumed.out).toContain("resumed");
    expect((await cmGet(a, "/pcoip-broker/xml")).status).toBe(200);
    expect((await fetch(`http://${a.redirect}/pcoip-broker/xml`)).status).toBe(200);
    expect(sample(await scrape(a), "pcoip_node_draining")).toBe(0);
    const again = await signIn(a);
    t.closers.push(() => again.client.close());
    expect(again.alloc.resultId).toBe("ALLOC_SUCCESSFUL");
    await tcpRoundTrip(control, "<after-resume>");
  });

  test("after SIGTERM, resume is refused and says why; an unreachable admin listener is named", async () => {
    const { app } = await t.start({ env: { PCOIP_CMSG_DRAINSECONDS: "600" } });
    const a = app;
    const s = await signIn(a);
    t.closers.push(() => s.client.close());
    const control = await openControl(a);
    t.closers.push(() => control.close());
    a.signal("SIGTERM");
    await a.waitForLog((l) => typeof l.msg === "string" && l.msg.startsWith("draining"), 5000);
    const r = await cli("resume", a);
    expect(r.code).toBe(1);
    expect(r.err).toContain("shutting down (SIGTERM): it cannot resume");
    expect((await cmGet(a, "/pcoip-broker/xml")).status).toBe(503);

    const nowhere = await runCommand([
      process.execPath,
      MAIN,
      "drain",
      "--config",
      a.configFile,
      "--admin",
      "127.0.0.1:9",
    ]);
    expect(nowhere.code).toBe(1);
    expect(nowhere.err).toContain("the admin listener did not answer");
  });
});
