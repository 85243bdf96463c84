/**
 * The plain-HTTP listener (cm.redirectListen, port 80): the load balancer's health check `GET /pcoip-broker/xml`
 * answered in the clear (200, or 503 while draining/not ready), everything else redirected to HTTPS.
 *
 * The Location names this node as configured — the first `hostAddress`, else the HTTPS listener's address (for a
 * wildcard listener, the address the request came in on) — never the request's Host header: a Host copied into
 * Location turns the node into an open redirector (issue 16 #11), and port 80 is unauthenticated and in clear.
 */
import { isIP } from "node:net";
import { Hono } from "hono";
import { canonicalIp } from "../net/client-address.ts";
import type { ConnInfo } from "../net/http1.ts";

export interface RedirectOptions {
  /** The HTTPS port clients should use (443 → omitted from the Location). */
  readonly httpsPort: number;
  readonly ready: () => boolean;
  /** The configured hostAddress list: the first entry is the name clients reach this node by. */
  readonly hostAddress?: readonly string[];
  /** The HTTPS listener's configured host ("0.0.0.0"/"::" = the local address of each request). */
  readonly httpsHost?: string;
}

/** "2001:db8::1" → "[2001:db8::1]"; names and IPv4 as they are. */
function authorityHost(host: string): string {
  return isIP(host) === 6 ? `[${host}]` : host;
}

/** The host part of the Location for a request that came in on `localAddress`. */
export function redirectHost(o: RedirectOptions, localAddress: string | undefined): string {
  const configured = o.hostAddress?.[0];
  if (configured) return authorityHost(configured);
  const wildcard = o.httpsHost === undefined || o.httpsHost === "0.0.0.0" || o.httpsHost === "::";
  if (!wildcard) return authorityHost(o.httpsHost!);
  return localAddress ? authorityHost(canonicalIp(localAddress)) : "localhost";
}

export function createRedirectApp(o: RedirectOptions): Hono<{ Bindings: ConnInfo }> {
  const app = new Hono<{ Bindings: ConnInfo }>();
  app.get("/pcoip-broker/xml", (c) => (o.ready() ? c.text("OK\n") : c.text("draining or not ready\n", 503)));
  app.all("*", (c) => {
    const url = new URL(c.req.url);
    const port = o.httpsPort === 443 ? "" : `:${o.httpsPort}`;
    const host = redirectHost(o, c.env?.localAddress);
    return c.redirect(`https://${host}${port}${url.pathname}${url.search}`, 301);
  });
  return app;
}
