// Claim: the appliance process speaks sd_notify as a Type=notify-reload unit with WatchdogSec needs it: a test
// receiver standing in for systemd (a unix datagram socket named by NOTIFY_SOCKET) gets, from the main pid,
// READY=1 once the listeners are up, WATCHDOG=1 every WATCHDOG_USEC/2, RELOADING=1 (with MONOTONIC_USEC) then
// READY=1 around each SIGHUP — a refused reload included — and STOPPING=1 on SIGTERM, before a clean exit 0.
// A watchdog meant for another pid (WATCHDOG_PID) is not answered.
import { afterEach, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type ApplianceProcess, startApplianceProcess } from "../peers/appliance-process.ts";
import { editedConfig, type NotifyReceiver, notifyReceiver, sgEnv } from "../peers/appliance-session.ts";

let app: ApplianceProcess | undefined;
let receiver: NotifyReceiver | undefined;
let dir: string | undefined;

afterEach(async () => {
  await app?.kill();
  app?.cleanup();
  app = undefined;
  await receiver?.close();
  receiver = undefined;
  if (dir) rmSync(dir, { recursive: true, force: true });
  dir = undefined;
});

async function withReceiver(
  env: Record<string, string>,
): Promise<{ app: ApplianceProcess; rx: NotifyReceiver }> {
  dir = mkdtempSync(join(tmpdir(), "notify-"));
  receiver = await notifyReceiver(join(dir, "notify.sock"));
  app = await startApplianceProcess({ env: { ...sgEnv(), NOTIFY_SOCKET: receiver.path, ...env } });
  return { app, rx: receiver };
}

describe("sd_notify from the appliance process", () => {
  test("READY=1, WATCHDOG=1, RELOADING=1 → READY=1 on SIGHUP (also when refused), STOPPING=1 on SIGTERM", async () => {
    // 400 ms watchdog: a ping every 200 ms.
    const { app, rx } = await withReceiver({ WATCHDOG_USEC: "400000" });

    const ready = await rx.waitFor((d) => d.fields.READY === "1");
    expect(ready.pid).toBe(app.pid); // NotifyAccess=main: from the main process itself
    expect(ready.fields.STATUS).toBe("serving");
    // READY comes after the listeners are up: the start-up lines were already written.
    expect(app.logs.some((l) => l.listener === "admin")).toBe(true);
    expect(rx.datagrams.indexOf(ready)).toBe(0); // nothing before READY=1

    // Watchdog pings at about half of WATCHDOG_USEC.
    const firstPing = rx.datagrams.length;
    await rx.waitFor((d) => d.fields.WATCHDOG === "1", firstPing, 5000);
    const t0 = Date.now();
    await rx.waitFor(
      (d) => d.fields.WATCHDOG === "1" && rx.datagrams.filter((x) => x.fields.WATCHDOG === "1").length >= 4,
      firstPing,
      5000,
    );
    const pings = rx.datagrams.filter((d) => d.fields.WATCHDOG === "1");
    expect(pings.every((d) => d.pid === app.pid)).toBe(true);
    expect(pings.every((d) => d.raw === "WATCHDOG=1")).toBe(true);
    // 3 intervals after the first ping: at least ~0.4 s (not a busy loop), well under 3 s (not stalled).
    expect(Date.now() - t0).toBeGreaterThan(350);
    expect(Date.now() - t0).toBeLessThan(3000);

    // SIGHUP with a real change: RELOADING=1 with a CLOCK_MONOTONIC stamp, then READY=1.
    app.rewriteConfig(await editedConfig(app, 'logLevel = "info"', 'logLevel = "debug"'));
    let mark = rx.datagrams.length;
    app.signal("SIGHUP");
    const reloading = await rx.waitFor((d) => d.fields.RELOADING === "1", mark);
    expect(reloading.pid).toBe(app.pid);
    expect(reloading.fields.MONOTONIC_USEC).toMatch(/^\d+$/);
    expect(Number(reloading.fields.MONOTONIC_USEC)).toBeGreaterThan(0);
    const reReady = await rx.waitFor((d) => d.fields.READY === "1", rx.datagrams.indexOf(reloading) + 1);
    expect(reReady.fields.STATUS).toBe("serving");
    await app.waitForLog((l) => l.msg === "configuration reloaded");

    // A refused reload still ends with READY=1 (systemd would otherwise wait and fail the reload job), and the
    // status says why.
    app.rewriteConfig(await editedConfig(app, 'logLevel = "debug"', 'logLevel = "chatty"'));
    mark = rx.datagrams.length;
    app.signal("SIGHUP");
    const reloading2 = await rx.waitFor((d) => d.fields.RELOADING === "1", mark);
    const refusedReady = await rx.waitFor(
      (d) => d.fields.READY === "1",
      rx.datagrams.indexOf(reloading2) + 1,
    );
    expect(refusedReady.fields.STATUS).toMatch(/^reload refused: .*logLevel/);

    // SIGTERM: STOPPING=1, then a clean exit.
    mark = rx.datagrams.length;
    app.signal("SIGTERM");
    const stopping = await rx.waitFor((d) => d.fields.STOPPING === "1", mark);
    expect(stopping.pid).toBe(app.pid);
    expect(stopping.fields.STATUS).toMatch(/draining/);
    expect(await Promise.race([app.exited, Bun.sleep(15_000).then(() => "still running")])).toBe(0);
    // No READY=1 after STOPPING=1.
    expect(rx.datagrams.slice(rx.datagrams.indexOf(stopping)).some((d) => d.fields.READY === "1")).toBe(
      false,
    );
  });

  test("a watchdog meant for another pid (WATCHDOG_PID) gets no pings; READY=1 still comes", async () => {
    const { rx } = await withReceiver({ WATCHDOG_USEC: "200000", WATCHDOG_PID: "1" });
    await rx.waitFor((d) => d.fields.READY === "1");
    await Bun.sleep(1000); // ten intervals
    expect(rx.datagrams.some((d) => d.fields.WATCHDOG === "1")).toBe(false);
  });
});
