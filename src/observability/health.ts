/**
 * The admin listener (SPEC §2): /healthz (the process answers), /readyz (listeners bound, broker reachable,
 * certificate valid — each failing check named), /metrics (Prometheus text), /sessions (live sessions as JSON,
 * no secrets) and POST /drain (used by `install` before an upgrade). Loopback by default; off loopback every
 * request needs the bearer token because /sessions lists users and client addresses.
 * Bun.serve + hono are fine here: no PCoIP client ever talks to this port.
 */
import { timingSafeEqual } from "node:crypto";
import { Hono } from "hono";
import { canonicalIp } from "../net/client-address.ts";
import type { MetricsRegistry } from "./metrics.ts";

export interface ReadinessCheck {
  readonly name: string;
  readonly ok: boolean;
  readonly detail?: string;
}

export interface AdminOptions {
  hostname: string;
  port: number;
  /** Required when hostname is not a loopback address (enforced by config validation too). */
  token?: string;
  metrics: MetricsRegistry;
  readiness(): Promise<readonly ReadinessCheck[]> | readonly ReadinessCheck[];
  sessions(): unknown[];
  drain(): { draining: boolean; liveSessions: number };
}

export interface AdminServer {
  readonly port: number;
  stop(): Promise<void>;
}

export function isLoopback(host: string): boolean {
  const h = canonicalIp(host);
  return h === "::1" || h.startsWith("127.") || h === "localhost";
}

export function createAdminApp(opts: Omit<AdminOptions, "hostname" | "port">): Hono {
  const app = new Hono();
  const expected = opts.token ? Buffer.from(`Bearer ${opts.token}`) : undefined;
  if (expected) {
    app.use("*", async function bearerToken(c, next) {
      const got = Buffer.from(c.req.header("authorization") ?? "");
      if (got.length !== expected.length || !timingSafeEqual(got, expected)) {
        return c.text("admin: a valid bearer token is required (admin.token)\n", 401, {
          "WWW-Authenticate": 'Bearer realm="pcoip-cmsg admin"',
        });
      }
      await next();
    });
  }
  app.get("/healthz", (c) => c.text("ok\n"));
  app.get("/readyz", async (c) => {
    const checks = await opts.readiness();
    const failing = checks.filter((k) => !k.ok);
    const body = checks
      .map((k) => `${k.ok ? "ok  " : "FAIL"} ${k.name}${k.detail ? `: ${k.detail}` : ""}`)
      .join("\n");
    return c.text(
      `${failing.length === 0 ? "ready" : "not ready"}\n${body}\n`,
      failing.length === 0 ? 200 : 503,
    );
  });
  app.get("/metrics", (c) =>
    c.body(opts.metrics.render(), 200, { "Content-Type": "text/plain; version=0.0.4; charset=utf-8" }),
  );
  app.get("/sessions", (c) => c.json(opts.sessions()));
  app.post("/drain", (c) => c.json(opts.drain()));
  return app;
}

export function startAdminServer(opts: AdminOptions): AdminServer {
  if (!isLoopback(opts.hostname) && !opts.token) {
    throw new TypeError(`admin.listen ${opts.hostname}: off loopback the admin listener needs admin.token`);
  }
  const app = createAdminApp(opts);
  const server = Bun.serve({ hostname: opts.hostname, port: opts.port, fetch: app.fetch });
  return {
    port: server.port ?? opts.port,
    stop: () => server.stop(true),
  };
}
