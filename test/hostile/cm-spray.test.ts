// Claim: a password-spraying run (many user names × a few passwords) is slowed by the throttle — from one client
// IP, and from many IPs (X-Forwarded-For through a trusted proxy) — while every answer stays AUTH_FAILED_… and a
// legitimate user from another IP signs in at full speed during the run; no sprayed or real password reaches the
// log. (The sprayer-behind-a-NAT bound is in test/e2e/cm-limits.test.ts; the throttle arithmetic in
// test/unit/cm-throttle.test.ts.)
import { afterEach, describe, expect, test } from "bun:test";
import { writeUsersFile } from "../../src/cm/auth/local-users.ts";
import { type Harness, startHarness } from "../e2e/cm-harness.ts";

const IP_DELAY_MS = 150;
const SPRAY_PASSWORDS = ["Spray-Winter2026!", "Spray-Summer2026!"];
const VICTIMS = Array.from({ length: 9 }, (_, i) => `victim${i}`);
/** Names a sprayer connection tries: its own slice of the victims, as a tool splitting the list over connections does. */
const slice = (part: number, parts: number) => VICTIMS.filter((_, i) => i % parts === part);

let h: Harness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

/**
 * A CM whose throttle slows an IP after 5 distinct failing names, by 300 ms an attempt; the users file holds the
 * victims with cheap hashes (the run measures the throttle, not argon2), re-read by the CM when it changes.
 */
async function sprayRig(trustedProxies: string[] = []): Promise<Harness> {
  const rig = await startHarness({
    cm: {
      trustedProxies,
      throttle: {
        failuresBeforeDelay: 3,
        baseDelayMs: 200,
        maxDelayMs: 2000,
        distinctUsersPerIp: 5,
        ipDelayMs: IP_DELAY_MS,
      },
    },
  });
  const cheap = (pw: string) =>
    Bun.password.hash(pw, { algorithm: "argon2id", memoryCost: 1024, timeCost: 1 });
  await writeUsersFile(rig.usersFile, [
    { name: "alice", hash: await cheap("correct horse") },
    ...(await Promise.all(VICTIMS.map(async (name) => ({ name, hash: await cheap(`${name}-real-pw`) })))),
  ]);
  return rig;
}

/** One sprayer connection: every victim × every spray password; returns the result ids and the time taken. */
async function spray(rig: Harness, headers: [string, string][] = [], names: string[] = VICTIMS) {
  const c = rig.client({ headers });
  const ids: string[] = [];
  const t0 = Date.now();
  try {
    await c.hello();
    for (const pw of SPRAY_PASSWORDS)
      for (const user of names) ids.push((await c.authenticate(user, pw)).resultId);
  } finally {
    c.close();
  }
  return { ids, ms: Date.now() - t0 };
}

async function legitLogin(rig: Harness, o: { headers?: [string, string][]; localAddress?: string } = {}) {
  const c = rig.client({
    ...(o.headers ? { headers: o.headers } : {}),
    ...(o.localAddress ? { localAddress: o.localAddress } : {}),
  });
  const t0 = Date.now();
  try {
    await c.hello();
    expect((await c.authenticate("alice", "correct horse")).resultId).toBe("AUTH_SUCCESSFUL_AND_COMPLETE");
    expect((await c.getResourceList()).resultId).toBe("LIST_SUCCESSFUL");
    expect((await c.allocate("ws-1")).resultId).toBe("ALLOC_SUCCESSFUL");
    await c.bye();
  } finally {
    c.close();
  }
  return Date.now() - t0;
}

function expectNoSecrets(rig: Harness): void {
  const text = rig.logs.text();
  expect(text.length).toBeGreaterThan(1000);
  for (const s of [...SPRAY_PASSWORDS, "correct horse", ...VICTIMS.map((v) => `${v}-real-pw`)])
    expect(text).not.toContain(s);
}

describe("password spraying", () => {
  test("from one IP: slowed once it crosses the distinct-name threshold; another IP signs in at full speed", async () => {
    h = await sprayRig();
    const rig = h;
    // Three parallel sprayer connections from 127.0.0.1, a legitimate user from 127.0.0.2 meanwhile.
    const attack = Promise.all([0, 1, 2].map((k) => spray(rig, [], slice(k, 3))));
    await Bun.sleep(300);
    const legit: number[] = [];
    for (let i = 0; i < 3; i++) legit.push(await legitLogin(rig, { localAddress: "127.0.0.2" }));
    const runs = await attack;
    const ids = runs.flatMap((r) => r.ids);
    expect(ids.length).toBe(VICTIMS.length * SPRAY_PASSWORDS.length);
    expect(new Set(ids)).toEqual(new Set(["AUTH_FAILED_UNKNOWN_USERNAME_OR_PASSWORD"]));
    expect(rig.cm.throttle.ipSlowed("127.0.0.1", Date.now())).toBe(true);
    expect(rig.cm.throttle.ipSlowed("127.0.0.2", Date.now())).toBe(false);
    // Throttling engaged: most attempts after the 5th name waited (each connection at least 3 times).
    expect(rig.cm.throttle.counters.delayed).toBeGreaterThan(ids.length / 2);
    expect(Math.max(...runs.map((r) => r.ms))).toBeGreaterThanOrEqual(3 * IP_DELAY_MS * 0.9);
    // The legitimate user is not slowed by someone else's spray.
    expect(Math.max(...legit)).toBeLessThan(IP_DELAY_MS * 4);
    expect(rig.cm.counters.loginsOk).toBe(3);
    expectNoSecrets(rig);
  }, 30_000);

  test("from many IPs behind a trusted proxy (X-Forwarded-For): each IP is slowed on its own; others are not", async () => {
    h = await sprayRig(["127.0.0.1"]);
    const rig = h;
    const sprayers = Array.from({ length: 8 }, (_, i) => `203.0.113.${10 + i}`);
    const attack = Promise.all(sprayers.map((ip) => spray(rig, [["X-Forwarded-For", ip]])));
    await Bun.sleep(300);
    const legit: number[] = [];
    for (let i = 0; i < 3; i++)
      legit.push(await legitLogin(rig, { headers: [["X-Forwarded-For", "198.51.100.9"]] }));
    const runs = await attack;
    const ids = runs.flatMap((r) => r.ids);
    expect(ids.length).toBe(sprayers.length * VICTIMS.length * SPRAY_PASSWORDS.length);
    expect(new Set(ids)).toEqual(new Set(["AUTH_FAILED_UNKNOWN_USERNAME_OR_PASSWORD"]));
    const now = Date.now();
    for (const ip of sprayers) expect(rig.cm.throttle.ipSlowed(ip, now)).toBe(true);
    expect(rig.cm.throttle.ipSlowed("198.51.100.9", now)).toBe(false);
    // The proxy's own address is not what is throttled: the forwarded client IP is.
    expect(rig.cm.throttle.ipSlowed("127.0.0.1", now)).toBe(false);
    expect(rig.cm.throttle.counters.delayed).toBeGreaterThan(ids.length / 2);
    expect(Math.max(...legit)).toBeLessThan(IP_DELAY_MS * 4);
    // The audit lines name the forwarded client, so an operator can see who sprays.
    const failed = rig.logs.lines().filter((l) => l.includes("203.0.113."));
    expect(failed.length).toBeGreaterThan(0);
    expectNoSecrets(rig);
  }, 30_000);

  test("an X-Forwarded-For from an untrusted peer is ignored: rotating it does not escape the throttle", async () => {
    h = await sprayRig([]); // no trusted proxy: the socket peer is the client
    const rig = h;
    const runs = await Promise.all(
      Array.from({ length: 3 }, (_, i) =>
        spray(rig, [["X-Forwarded-For", `203.0.113.${50 + i}`]], slice(i, 3)),
      ),
    );
    expect(runs.flatMap((r) => r.ids).length).toBe(VICTIMS.length * SPRAY_PASSWORDS.length);
    expect(rig.cm.throttle.ipSlowed("127.0.0.1", Date.now())).toBe(true);
    for (let i = 0; i < 4; i++)
      expect(rig.cm.throttle.ipSlowed(`203.0.113.${50 + i}`, Date.now())).toBe(false);
    expectNoSecrets(rig);
  }, 30_000);
});
