/**
 * The plain-HTTP listener (cm.redirectListen, port 80): the load balancer's health check `GET /pcoip-broker/xml`
 * answered in the clear (200, or 503 while draining/not ready), everything else redirected to HTTPS.
 */
import { Hono } from "hono";

export interface RedirectOptions {
  /** The HTTPS port clients should use (443 → omitted from the Location). */
  readonly httpsPort: number;
  readonly ready: () => boolean;
}

export function createRedirectApp(o: RedirectOptions): Hono {
  const app = new Hono();
  app.get("/pcoip-broker/xml", (c) => (o.ready() ? c.text("OK\n") : c.text("draining or not ready\n", 503)));
  app.all("*", (c) => {
    const url = new URL(c.req.url);
    const host = url.hostname; // already bracketed for IPv6 literals
    const port = o.httpsPort === 443 ? "" : `:${o.httpsPort}`;
    return c.redirect(`https://${host}${port}${url.pathname}${url.search}`, 301);
  });
  return app;
}
