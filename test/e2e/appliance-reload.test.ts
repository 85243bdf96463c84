// Claim: SIGHUP re-reads the configuration without touching live sessions. A TCP relay and a UDP flow keep
// carrying bytes (every tick echoed, none lost) across a reload that changes logLevel — which then applies — and
// across a certificate swap, after which new TLS connections to the CM see the new certificate. A configuration
// that does not validate is refused with the reason logged and the old one kept; a change to a key the kernel
// holds (sg.tcpListen) is refused whole with "needs restart: sg.tcpListen". Service goes on in every case.
import { describe, expect, test } from "bun:test";
import { X509Certificate } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import type { ApplianceProcess, LogLine } from "../peers/appliance-process.ts";
import {
  cmCertificateFingerprint,
  editedConfig,
  hostPort,
  keepFlowing,
  openControl,
  signIn,
  tcpRoundTrip,
} from "../peers/appliance-session.ts";
import { applianceTest } from "../peers/appliance-test.ts";
import { testPki } from "../peers/test-certs.ts";

const DEBUG = "debug";

const t = applianceTest();

/** Sends SIGHUP and resolves with the first line at or after `from` that `pred` accepts. */
async function hup(a: ApplianceProcess, pred: (l: LogLine) => boolean): Promise<LogLine> {
  const from = a.logs.length;
  a.signal("SIGHUP");
  return a.waitForLog((l) => a.logs.indexOf(l) >= from && pred(l), 10_000);
}

const reloaded = (l: LogLine) => l.msg === "configuration reloaded";
const refused = (l: LogLine) => typeof l.msg === "string" && l.msg.startsWith("reloading config:");

describe("SIGHUP with live sessions", () => {
  test("logLevel info → debug: applied, and the relay and the UDP flow keep flowing", async () => {
    const { app, control, udp } = await t.liveSession();
    expect(app.logs.some((l) => l.level === DEBUG)).toBe(false);
    const flow = keepFlowing(control, udp);
    t.closers.push(() => flow.stop());
    await Bun.sleep(150);
    app.rewriteConfig(await editedConfig(app, 'logLevel = "info"', 'logLevel = "debug"'));
    const line = await hup(app, reloaded);
    expect(line.changed).toEqual(["logLevel"]);
    const sentAtReload = flow.sent;
    await Bun.sleep(300); // ticks after the reload too
    expect(flow.sent).toBeGreaterThan(sentAtReload);
    await flow.stopAndCheck();
    await tcpRoundTrip(control, "<after>");
    await udp.roundTrip("<udp-after>");

    // The new level is live: a new session's SG dial is logged at debug.
    const mark = app.logs.length;
    const s2 = await signIn(app);
    t.closers.push(() => s2.client.close());
    const c2 = await openControl(app);
    t.closers.push(() => c2.close());
    await tcpRoundTrip(c2, "<second>");
    await app.waitForLog((l) => app.logs.indexOf(l) >= mark && l.level === DEBUG, 5000);
    // And the first session was never cut.
    expect(app.logs.some((l) => l.msg === "sg tcp relay closed")).toBe(false);
  });

  test("certificate swap: new TLS connections see the new certificate, the live relay keeps flowing", async () => {
    const { app, control, udp } = await t.liveSession();
    const oldLeaf = testPki().leaf(["localhost", "127.0.0.1", "::1", "cm.test"]);
    const newLeaf = testPki().leaf(["localhost", "127.0.0.1", "::1", "cm.test", "swapped.cm.test"]);
    const oldFp = new X509Certificate(oldLeaf.cert).fingerprint256;
    const newFp = new X509Certificate(newLeaf.cert).fingerprint256;
    expect(newFp).not.toBe(oldFp);
    expect(await cmCertificateFingerprint(app)).toBe(oldFp);

    const flow = keepFlowing(control, udp);
    t.closers.push(() => flow.stop());
    await Bun.sleep(150);
    let text = await editedConfig(app, `cert = "${oldLeaf.certFile}"`, `cert = "${newLeaf.certFile}"`);
    text = text.replace(`key = "${oldLeaf.keyFile}"`, `key = "${newLeaf.keyFile}"`);
    app.rewriteConfig(text);
    const line = await hup(app, reloaded);
    expect(line.changed).toEqual(expect.arrayContaining(["tls.cert", "tls.key"]));
    expect(await cmCertificateFingerprint(app)).toBe(newFp);
    await Bun.sleep(300);
    await flow.stopAndCheck();

    // A full sign-in on the new certificate works, and the old relay still echoes.
    const s2 = await signIn(app);
    t.closers.push(() => s2.client.close());
    await tcpRoundTrip(control, "<after-swap>");
    await udp.roundTrip("<udp-after-swap>");
  });

  test("a certificate renewed in place is served after SIGHUP; one that does not load is refused", async () => {
    const { app, control, udp } = await t.liveSession();
    const oldLeaf = testPki().leaf(["localhost", "127.0.0.1", "::1", "cm.test"]);
    const newLeaf = testPki().leaf(["localhost", "127.0.0.1", "::1", "cm.test", "renewed.cm.test"]);
    const otherLeaf = testPki().leaf(["localhost", "127.0.0.1", "::1", "cm.test", "other.cm.test"]);
    const certFile = join(app.dir, "cm.pem");
    const keyFile = join(app.dir, "cm.key");
    writeFileSync(certFile, oldLeaf.cert);
    writeFileSync(keyFile, oldLeaf.key);
    let text = await editedConfig(app, `cert = "${oldLeaf.certFile}"`, `cert = "${certFile}"`);
    text = text.replace(`key = "${oldLeaf.keyFile}"`, `key = "${keyFile}"`);
    app.rewriteConfig(text);
    await hup(app, reloaded);
    expect(await cmCertificateFingerprint(app)).toBe(new X509Certificate(oldLeaf.cert).fingerprint256);

    const flow = keepFlowing(control, udp);
    t.closers.push(() => flow.stop());
    // certbot-style renewal: same paths, new contents.
    writeFileSync(certFile, newLeaf.cert);
    writeFileSync(keyFile, newLeaf.key);
    const renewed = await hup(app, (l) => refused(l) || reloaded(l));
    expect(renewed.msg).toBe("configuration reloaded");
    expect(await cmCertificateFingerprint(app)).toBe(new X509Certificate(newLeaf.cert).fingerprint256);

    // A certificate whose key does not match: refused, the renewed one stays.
    writeFileSync(certFile, otherLeaf.cert);
    const bad = await hup(app, (l) => refused(l) || reloaded(l));
    expect(bad.msg).toMatch(/^reloading config: .*kept the previous config$/);
    expect(await cmCertificateFingerprint(app)).toBe(new X509Certificate(newLeaf.cert).fingerprint256);
    await Bun.sleep(200);
    await flow.stopAndCheck();
  });

  test("a configuration that does not validate is refused with the reason; the old one stays and service goes on", async () => {
    const { app, control, udp } = await t.liveSession();
    const good = await Bun.file(app.configFile).text();
    const flow = keepFlowing(control, udp);
    t.closers.push(() => flow.stop());

    // A value the schema refuses.
    app.rewriteConfig(good.replace('logLevel = "info"', 'logLevel = "chatty"'));
    const bad = await hup(app, (l) => refused(l) || reloaded(l));
    expect(bad.msg).toMatch(/^reloading config: .*logLevel.*; kept the previous config$/);
    expect(bad.level).toBe("error");
    // A file that is not TOML at all.
    app.rewriteConfig(`${good}\n[cm\nlisten = \n`);
    const broken = await hup(app, (l) => refused(l) || reloaded(l));
    expect(broken.msg).toMatch(/^reloading config: .*kept the previous config$/);
    expect(String(broken.msg)).toMatch(/pcoip-cmsg\.toml:\d+/); // FILE:LINE of the mistake

    await Bun.sleep(200);
    await flow.stopAndCheck();
    // The old configuration serves: a new session still gets through, at info level (no debug lines).
    const s2 = await signIn(app);
    t.closers.push(() => s2.client.close());
    expect(s2.targetPort).toBe(hostPort(app.sgTcp).port);
    expect(app.logs.some((l) => l.level === DEBUG)).toBe(false);

    // Fixing the file is picked up by the next SIGHUP (a refusal leaves nothing stuck).
    // (debug, not warn: at warn the "configuration reloaded" line itself would not be written.)
    app.rewriteConfig(good.replace('logLevel = "info"', 'logLevel = "debug"'));
    const ok = await hup(app, (l) => refused(l) || reloaded(l));
    expect(ok.msg).toBe("configuration reloaded");
    expect(ok.changed).toEqual(["logLevel"]);
  });

  test('a key that cannot change live is refused whole: "needs restart: sg.tcpListen"', async () => {
    const { app, control, udp } = await t.liveSession();
    const good = await Bun.file(app.configFile).text();
    const flow = keepFlowing(control, udp);
    t.closers.push(() => flow.stop());
    const next = good
      .replace('tcpListen = ["127.0.0.1:0"]', 'tcpListen = ["127.0.0.1:0", "127.0.0.2:0"]')
      .replace('logLevel = "info"', 'logLevel = "debug"');
    expect(next).not.toBe(good);
    app.rewriteConfig(next);
    const line = await hup(app, (l) => refused(l) || reloaded(l));
    expect(line.msg).toContain("needs restart: sg.tcpListen");
    expect(line.msg).not.toContain("logLevel"); // only the key that blocks is named
    await Bun.sleep(200);
    await flow.stopAndCheck();

    // Nothing of the refused file applied: no debug lines, the SG still where it was.
    const mark = app.logs.length;
    const s2 = await signIn(app);
    t.closers.push(() => s2.client.close());
    expect(s2.targetPort).toBe(hostPort(app.sgTcp).port);
    const c2 = await openControl(app);
    t.closers.push(() => c2.close());
    await tcpRoundTrip(c2, "<second>");
    await Bun.sleep(200);
    expect(app.logs.slice(mark).some((l) => l.level === DEBUG)).toBe(false);
    expect(app.logs.some((l) => l.listen?.toString().includes("127.0.0.2"))).toBe(false);
  });
});
