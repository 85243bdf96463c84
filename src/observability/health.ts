/**
 * The admin listener (SPEC §2): /healthz (the process answers), /readyz (listeners bound, broker reachable,
 * certificate valid — each failing check named) and /metrics (Prometheus text) are open, for load balancers and
 * scrapers; /sessions (it lists users, client addresses and the session ids) and every state-changing call
 * (POST /drain, POST /resume, any method but GET/HEAD) need the bearer token of `admin.tokenFile`.
 *
 * Any local user can reach a loopback port, and so can a browser on the box through DNS rebinding (a page of
 * evil.example whose name now resolves to 127.0.0.1): a request whose Host is not the listener's own address or
 * `localhost` (with or without the port) gets 421 before anything else is looked at, and the token keeps local
 * users out of what changes state. Bun.serve + hono are fine here: no PCoIP client ever talks to this port.
 */
import { timingSafeEqual } from "node:crypto";
import { isIP } from "node:net";
import { networkInterfaces } from "node:os";
import { Hono } from "hono";
import { canonicalIp } from "../net/client-address.ts";
import type { Logger } from "./log.ts";
import type { MetricsRegistry } from "./metrics.ts";

export interface ReadinessCheck {
  readonly name: string;
  readonly ok: boolean;
  readonly detail?: string;
}

/** The token now, or why there is none (read per protected call, so a token file created later is seen). */
export type AdminTokenSource = () => { ok: true; token: string } | { ok: false; cause: string };

export interface AdminOptions {
  hostname: string;
  port: number;
  /** The bearer token, or a function reading it (admin-token.ts). None: protected calls answer 503. */
  token?: string | AdminTokenSource;
  metrics: MetricsRegistry;
  readiness(): Promise<readonly ReadinessCheck[]> | readonly ReadinessCheck[];
  sessions(): unknown[];
  drain(): { draining: boolean; liveSessions: number };
  /** Refused calls are logged, once per minute per reason. */
  log?: Logger;
  /** Undoes an operator's drain (POST /resume); refused while the process shuts down. */
  resume?(): { draining: boolean; liveSessions: number } | { ok: false; error: string };
  /** GET /drain: the drain state for `pcoip-cmsg status` and fleet dashboards. */
  drainState?(): { draining: boolean; shuttingDown: boolean; liveSessions: number };
}

export interface AdminServer {
  readonly port: number;
  /** Requests refused so far, by reason (also in /metrics as pcoip_admin_refusals_total). */
  readonly refusals: Readonly<Record<AdminRefusal, number>>;
  stop(): Promise<void>;
}

export type AdminRefusal = "foreign_host" | "no_token" | "bad_token";

export function isLoopback(host: string): boolean {
  const h = canonicalIp(host);
  return h === "::1" || h.startsWith("127.") || h === "localhost";
}

/**
 * The Host values this listener answers: "localhost" and its own address, each with or without `port`. A
 * wildcard listener's own addresses are those of this host's interfaces (IP literals only: a rebinding page
 * always arrives under a DNS name).
 */
export function allowedAdminHosts(hostname: string, port: number): Set<string> {
  const names = new Set<string>(["localhost"]);
  const add = (ip: string) => names.add(isIP(ip) === 6 ? `[${canonicalIp(ip)}]` : canonicalIp(ip));
  if (hostname === "0.0.0.0" || hostname === "::") {
    for (const list of Object.values(networkInterfaces()))
      for (const i of list ?? []) if (hostname === "::" || i.family === "IPv4") add(i.address);
    add("127.0.0.1");
    if (hostname === "::") add("::1");
  } else if (isIP(hostname) !== 0) add(hostname);
  else names.add(hostname.toLowerCase());
  const out = new Set<string>();
  for (const n of names) out.add(n).add(`${n}:${port}`);
  return out;
}

/** The Host header as compared: lower case, no trailing dot, IPv6 literals canonical inside their brackets. */
function normalHost(raw: string): string {
  const h = raw.trim().toLowerCase();
  const v6 = /^\[([^\]]+)\](:\d+)?$/.exec(h);
  if (v6) return `[${canonicalIp(v6[1]!)}]${v6[2] ?? ""}`;
  const m = /^([^:]*?)\.?(:\d+)?$/.exec(h);
  return m ? `${m[1]}${m[2] ?? ""}` : h;
}

export interface AdminAppOptions extends Omit<AdminOptions, "hostname" | "port"> {
  /** Host values answered (see {@link allowedAdminHosts}); undefined = no Host check (unit tests of routes). */
  readonly allowedHosts?: ReadonlySet<string>;
  /** Counted refusals (the server's). */
  readonly refusals?: Record<AdminRefusal, number>;
}

export function createAdminApp(opts: AdminAppOptions): Hono {
  const app = new Hono();
  const refusals = opts.refusals ?? { foreign_host: 0, no_token: 0, bad_token: 0 };
  const lastLogged = new Map<AdminRefusal, number>();
  const refuse = (reason: AdminRefusal, detail: Record<string, unknown>, msg: string) => {
    refusals[reason]++;
    const now = Date.now();
    if (now - (lastLogged.get(reason) ?? 0) >= 60_000) {
      lastLogged.set(reason, now);
      opts.log?.warn({ reason, refusedSoFar: refusals[reason], ...detail }, msg);
    }
  };
  const tokenNow: AdminTokenSource = () => {
    const t = opts.token;
    if (typeof t === "function") return t();
    return t ? { ok: true, token: t } : { ok: false, cause: "no admin token is configured" };
  };

  app.use("*", async function hostAndToken(c, next) {
    const host = c.req.header("host") ?? "";
    if (opts.allowedHosts && !opts.allowedHosts.has(normalHost(host))) {
      refuse(
        "foreign_host",
        { host: host.slice(0, 100) },
        "admin: refused a request for a foreign Host (DNS rebinding?); only the listener's address and localhost are answered",
      );
      return c.text(
        "admin: this listener answers only its own address or localhost in the Host header\n",
        421,
      );
    }
    const open = (c.req.method === "GET" || c.req.method === "HEAD") && c.req.path !== "/sessions";
    if (open) return next();
    const t = tokenNow();
    if (!t.ok) {
      refuse(
        "no_token",
        { cause: t.cause },
        `admin: ${c.req.method} ${c.req.path} refused: ${t.cause}; fix: create admin.tokenFile (pcoip-cmsg install does; npm start writes .data/admin.token)`,
      );
      return c.text(
        `admin: ${c.req.path} needs the bearer token, and the service has none (${t.cause}); create admin.tokenFile\n`,
        503,
      );
    }
    const expected = Buffer.from(`Bearer ${t.token}`);
    const got = Buffer.from(c.req.header("authorization") ?? "");
    if (got.length !== expected.length || !timingSafeEqual(got, expected)) {
      refuse(
        "bad_token",
        { method: c.req.method, path: c.req.path },
        "admin: refused a call without the bearer token of admin.tokenFile",
      );
      return c.text("admin: a valid bearer token is required (the content of admin.tokenFile)\n", 401, {
        "WWW-Authenticate": 'Bearer realm="pcoip-cmsg admin"',
      });
    }
    return next();
  });
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
  if (opts.resume) {
    const resume = opts.resume;
    app.post("/resume", (c) => {
      const r = resume();
      return "error" in r ? c.json({ error: r.error }, 409) : c.json(r);
    });
  }
  if (opts.drainState) {
    const state = opts.drainState;
    app.get("/drain", (c) => c.json(state()));
  }
  return app;
}

export function startAdminServer(opts: AdminOptions): AdminServer {
  const t = typeof opts.token === "function" ? opts.token() : undefined;
  const hasToken = typeof opts.token === "string" ? opts.token !== "" : t?.ok === true;
  if (!isLoopback(opts.hostname) && !hasToken) {
    throw new TypeError(
      `admin.listen ${opts.hostname}: off loopback the admin listener needs a token (admin.tokenFile${t && !t.ok ? `: ${t.cause}` : ""})`,
    );
  }
  const refusals: Record<AdminRefusal, number> = { foreign_host: 0, no_token: 0, bad_token: 0 };
  let allowedHosts = new Set<string>();
  const app = createAdminApp({
    ...opts,
    refusals,
    get allowedHosts() {
      return allowedHosts;
    },
  });
  const server = Bun.serve({ hostname: opts.hostname, port: opts.port, fetch: app.fetch });
  const port = server.port ?? opts.port;
  allowedHosts = allowedAdminHosts(opts.hostname, port);
  opts.metrics.add({
    name: "pcoip_admin_refusals_total",
    help: "Admin requests refused, by reason (foreign_host = 421, no_token = 503, bad_token = 401).",
    type: "counter",
    samples: () => Object.entries(refusals).map(([reason, value]) => ({ labels: { reason }, value })),
  });
  return {
    port,
    refusals,
    stop: () => server.stop(true),
  };
}
