// Claim: the appliance process tells a load balancer the truth. In upstream broker mode /readyz answers 200 while
// the broker answers, and within ~10 s of the broker going down answers 503 with a line `FAIL broker: …` naming the
// broker URL and the cause, while GET /pcoip-broker/xml (on the CM and on the plain-HTTP health listener) answers
// 503; it comes back when the broker does. Off loopback, the admin listener refuses to start without a token and
// refuses /sessions and drain without it (health, readiness and metrics stay open for the load balancer).
import { afterEach, describe, expect, test } from "bun:test";
import { type ApplianceProcess, startApplianceProcess } from "../peers/appliance-process.ts";
import { cmGet, until } from "../peers/appliance-session.ts";
import { type FakeBroker, startFakeBroker } from "../peers/fake-broker.ts";

let app: ApplianceProcess | undefined;
let broker: FakeBroker | undefined;

afterEach(async () => {
  await app?.kill();
  app?.cleanup();
  app = undefined;
  await broker?.close();
  broker = undefined;
});

const upstream = (url: string) => ({
  topLevel: `brokerUrl = "${url}"`,
  // One probe's worth of timeout: a dead broker is found out quickly.
  env: { PCOIP_CMSG_UPSTREAM_TIMEOUTSECONDS: "3" },
});

async function readyz(a: ApplianceProcess): Promise<{ status: number; body: string }> {
  const r = await a.adminGet("/readyz");
  return { status: r.status, body: await r.text() };
}

/** The health answer of the plain-HTTP listener (cm.redirectListen). */
async function plainHealth(a: ApplianceProcess): Promise<number> {
  return (await fetch(`http://${a.redirect}/pcoip-broker/xml`, { redirect: "manual" })).status;
}

/** A port nothing listens on now (bound, then released). */
function closedPort(): number {
  const s = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const port = s.port;
  s.stop(true);
  return port;
}

describe("readiness follows the upstream broker", () => {
  test("broker up: 200; broker gone: 503 with `FAIL broker:` naming the URL and the cause, GET → 503", async () => {
    broker = await startFakeBroker({});
    app = await startApplianceProcess(upstream(broker.url));
    const a = app;

    let last = { status: 0, body: "" };
    await until(
      async () => {
        last = await readyz(a);
        return last.status === 200;
      },
      "/readyz 200 with the broker up",
      10_000,
    ).catch((e) => {
      throw new Error(`${(e as Error).message}; last answer ${last.status}: ${last.body}`);
    });
    expect(last.body).toMatch(/^ok +broker/m);
    expect((await cmGet(a, "/pcoip-broker/xml")).status).toBe(200);
    expect(await plainHealth(a)).toBe(200);

    const brokerPort = new URL(broker.url).port;
    await broker.close();
    broker = undefined;
    const downAt = Date.now();
    await until(
      async () => {
        last = await readyz(a);
        return last.status === 503;
      },
      "/readyz 503 after the broker went down",
      12_000,
    ).catch((e) => {
      throw new Error(`${(e as Error).message}; last answer ${last.status}: ${last.body}`);
    });
    expect(Date.now() - downAt).toBeLessThan(12_000);
    const line = last.body.split("\n").find((l) => l.startsWith("FAIL broker: "));
    expect(line).toBeDefined();
    expect(line).toContain(`127.0.0.1:${brokerPort}`);
    expect(line).toMatch(/refused|ECONNREFUSED|closed|reset|unreachable|timed? ?out/i);
    // The other checks are still listed, and pass.
    expect(last.body).toMatch(/^ok +listeners/m);
    // The load balancer's checks agree.
    const get = await cmGet(a, "/pcoip-broker/xml");
    expect(get.status).toBe(503);
    expect(await plainHealth(a)).toBe(503);
    // Liveness is not readiness: the process is alive.
    expect((await a.adminGet("/healthz")).status).toBe(200);
  });

  test("a broker that is down from the start: 503 with the reason, then 200 once it answers", async () => {
    const port = closedPort();
    const url = `https://127.0.0.1:${port}`;
    app = await startApplianceProcess(upstream(url));
    const a = app;

    let last = { status: 0, body: "" };
    await until(
      async () => {
        last = await readyz(a);
        return last.status === 503 && /^FAIL broker: /m.test(last.body);
      },
      "/readyz 503 with FAIL broker",
      12_000,
    ).catch((e) => {
      throw new Error(`${(e as Error).message}; last answer ${last.status}: ${last.body}`);
    });
    const line = last.body.split("\n").find((l) => l.startsWith("FAIL broker: "))!;
    expect(line).toContain(`127.0.0.1:${port}`);
    expect(line).toMatch(/refused|ECONNREFUSED/i);
    expect((await cmGet(a, "/pcoip-broker/xml")).status).toBe(503);

    broker = await startFakeBroker({ port });
    await until(
      async () => {
        last = await readyz(a);
        return last.status === 200;
      },
      "/readyz 200 once the broker answers",
      12_000,
    ).catch((e) => {
      throw new Error(`${(e as Error).message}; last answer ${last.status}: ${last.body}`);
    });
    expect((await cmGet(a, "/pcoip-broker/xml")).status).toBe(200);
  });
});

describe("the admin listener off loopback", () => {
  test("without a token file the process refuses to start, naming the key", async () => {
    app = await startApplianceProcess({
      env: { PCOIP_CMSG_ADMIN_LISTEN: "0.0.0.0:0", PCOIP_CMSG_ADMIN_TOKENFILE: "/nonexistent/admin.token" },
      waitReady: false,
    });
    const code = await Promise.race([app.exited, Bun.sleep(15_000).then(() => -1)]);
    expect(code).toBe(78); // EX_CONFIG
    expect(app.stderr()).toContain("admin.tokenFile");
  });

  test("with admin.token, sessions and drain need the bearer token; health, readiness and metrics stay open", async () => {
    const token = "op-test-token-0123456789abcdef";
    app = await startApplianceProcess({
      env: { PCOIP_CMSG_ADMIN_LISTEN: "0.0.0.0:0", PCOIP_CMSG_ADMIN_TOKEN: token },
    });
    const port = Number(app.admin.slice(app.admin.lastIndexOf(":") + 1));
    const base = `http://127.0.0.1:${port}`;
    for (const path of ["/healthz", "/readyz", "/metrics"])
      expect({ path, status: (await fetch(`${base}${path}`)).status }).toEqual({ path, status: 200 });
    const none = await fetch(`${base}/sessions`);
    expect(none.status).toBe(401);
    expect(none.headers.get("www-authenticate")).toMatch(/^Bearer/);
    const bad = await fetch(`${base}/sessions`, { headers: { Authorization: `Bearer ${token}x` } });
    expect(bad.status).toBe(401);
    const good = await fetch(`${base}/sessions`, { headers: { Authorization: `Bearer ${token}` } });
    expect(good.status).toBe(200);
    const drain = await fetch(`${base}/drain`, { method: "POST" });
    expect(drain.status).toBe(401);
    expect((await cmGet(app, "/pcoip-broker/xml")).status).toBe(200); // not drained by the refused request
  });
});
