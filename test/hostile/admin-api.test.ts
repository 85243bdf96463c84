// Claim: the admin API and the port-80 redirect trust no caller by address alone (issue 16 #7, #11). On the real
// process's loopback admin listener, POST /drain and GET /sessions without the bearer token of admin.tokenFile are
// refused (401) and the node keeps serving; a foreign Host (DNS rebinding from a browser on the box) gets 421 even
// with the token; /healthz, /readyz and /metrics stay open under the listener's own address or localhost, with or
// without the port; the token file's trailing newline is not part of the token, and the CLI's admin client reads
// the file; refusals are counted in /metrics and logged once per window. The redirect's Location names the
// configured hostAddress, never the request's Host.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { adminEndpointFor, adminRequest, liveSessions } from "../../src/cli/status.ts";
import { type ApplianceProcess, startApplianceProcess } from "../peers/appliance-process.ts";
import { cmGet, hostPort, parseMetrics, sample } from "../peers/appliance-session.ts";
import { rawConnect } from "../peers/raw-http.ts";

let app: ApplianceProcess;

beforeAll(async () => {
  app = await startApplianceProcess({ env: { PCOIP_CMSG_HOSTADDRESS: "cm.corp.test" } });
});
afterAll(async () => {
  await app?.kill();
  app?.cleanup();
});

/** One HTTP/1.1 request with exactly these headers; the status code and body of the answer. */
async function raw(
  addr: string,
  method: string,
  path: string,
  headers: Record<string, string>,
): Promise<{ status: number; body: string; head: string }> {
  const { host, port } = hostPort(addr);
  const c = await rawConnect({ hostname: host, port, tls: false });
  const lines = Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`);
  c.send(`${method} ${path} HTTP/1.1\r\n${lines.join("")}Connection: close\r\nContent-Length: 0\r\n\r\n`);
  await c.closed(5000);
  const text = c.received();
  const end = text.indexOf("\r\n\r\n");
  return {
    status: Number(/^HTTP\/1\.[01] (\d{3})/.exec(text)?.[1] ?? 0),
    head: text.slice(0, end),
    body: text.slice(end + 4),
  };
}

describe("admin API (16 #7)", () => {
  test("POST /drain and GET /sessions without the token: 401, and the node is not drained", async () => {
    const own = { Host: app.admin };
    const drain = await raw(app.admin, "POST", "/drain", own);
    expect(drain.status).toBe(401);
    expect(drain.head).toMatch(/WWW-Authenticate: Bearer/i);
    expect((await raw(app.admin, "POST", "/drain", { ...own, Authorization: "Bearer nope" })).status).toBe(
      401,
    );
    expect((await raw(app.admin, "GET", "/sessions", own)).status).toBe(401);
    // Not drained: the load balancer's health answer is still 200.
    expect((await cmGet(app, "/pcoip-broker/xml")).status).toBe(200);
    expect((await app.adminGet("/readyz")).status).toBe(200);
    // With the token of admin.tokenFile, /sessions answers.
    const ok = await raw(app.admin, "GET", "/sessions", {
      ...own,
      Authorization: `Bearer ${app.adminToken}`,
    });
    expect(ok.status).toBe(200);
    expect(JSON.parse(ok.body)).toEqual([]);
  });

  test("a foreign Host gets 421 on every path, even with the token; own address and localhost answer", async () => {
    const { port } = hostPort(app.admin);
    const auth = { Authorization: `Bearer ${app.adminToken}` };
    for (const host of [
      "evil.example",
      `evil.example:${port}`,
      "127.0.0.1.evil.example",
      "localhost.evil",
      "",
    ]) {
      for (const [method, path] of [
        ["GET", "/healthz"],
        ["GET", "/metrics"],
        ["GET", "/sessions"],
        ["POST", "/drain"],
      ] as const) {
        const r = await raw(app.admin, method, path, { Host: host, ...auth });
        expect({ host, path, status: r.status }).toEqual({ host, path, status: 421 });
      }
    }
    for (const host of ["127.0.0.1", `127.0.0.1:${port}`, "localhost", `localhost:${port}`, "LocalHost."]) {
      for (const path of ["/healthz", "/readyz", "/metrics"])
        expect({ host, path, status: (await raw(app.admin, "GET", path, { Host: host })).status }).toEqual({
          host,
          path,
          status: 200,
        });
    }
    // Another port on the right host is another origin: refused.
    expect((await raw(app.admin, "GET", "/healthz", { Host: `127.0.0.1:${port + 1}` })).status).toBe(421);
    expect((await cmGet(app, "/pcoip-broker/xml")).status).toBe(200); // the refused drains did nothing
  });

  test("refusals are counted in /metrics and logged once per window", async () => {
    for (let i = 0; i < 5; i++) await raw(app.admin, "GET", "/healthz", { Host: "rebind.example" });
    const m = parseMetrics(await (await app.adminGet("/metrics")).text());
    expect(sample(m, "pcoip_admin_refusals_total", { reason: "foreign_host" })).toBeGreaterThanOrEqual(5);
    expect(sample(m, "pcoip_admin_refusals_total", { reason: "bad_token" })).toBeGreaterThanOrEqual(3);
    const lines = app.logs.filter((l) => l.reason === "foreign_host");
    expect(lines.length).toBe(1);
    expect(String(lines[0]?.msg)).toContain("foreign Host");
  });

  test("the token file's trailing newline is ignored; the CLI's admin client reads the file", async () => {
    const file = join(app.dir, "admin.token");
    const admin = { listen: app.admin, token: "", tokenFile: file };
    writeFileSync(file, `${app.adminToken}\r\n`, { mode: 0o600 });
    const endpoint = adminEndpointFor(admin);
    expect(endpoint.token).toBe(app.adminToken);
    const r = await adminRequest(endpoint, "GET", "/sessions");
    expect(r.ok && r.status).toBe(200);
    expect(await liveSessions(endpoint)).toEqual({ count: 0, reachable: true });
    // A missing token file: the CLI says why it could not see the sessions.
    const missing = adminEndpointFor({ ...admin, tokenFile: join(app.dir, "absent.token") });
    const seen = await liveSessions(missing);
    expect(seen.reachable).toBe(false);
    expect(seen.cause).toContain("401");
    expect(seen.cause).toContain("ENOENT");
  });
});

describe("port-80 redirect (16 #11)", () => {
  test("Location names the configured hostAddress, never the request's Host", async () => {
    const { port: httpsPort } = hostPort(app.cm);
    for (const host of ["evil.example", "evil.example:80", "cm.corp.test@evil.example", "[::1]"]) {
      const r = await raw(app.redirect, "GET", "/login?next=%2F", { Host: host });
      expect(r.status).toBe(301);
      expect(/^Location: (.*)$/im.exec(r.head)?.[1]).toBe(`https://cm.corp.test:${httpsPort}/login?next=%2F`);
    }
  });
});
