/**
 * A request read by the front door as a Web `Request` (what hono's `app.fetch` takes): built in the thread that
 * runs the handler — the listener's own (http1-conn.ts), or the main thread for a request a front-door worker
 * relayed as plain data (platform/front-door-workers.ts).
 */
import type { RelayedRequest } from "./http1-options.ts";

/** Only a plain host name or address may become the URL's authority; anything else is "localhost". */
const PLAIN_AUTHORITY = /^[A-Za-z0-9.\-:[\]]+$/;

/** Whether `requestFrom` can make a URL of the target (origin form, `*`, or a parseable absolute form). */
export function targetIsValid(target: string): boolean {
  return target.startsWith("/") || target === "*" || URL.canParse(target);
}

/** The Request for a head's method, target and headers (flat [name, value, …]) and its body. */
export function requestFrom(r: RelayedRequest, tls: boolean): Request {
  const headers = new Headers();
  let host: string | undefined;
  const h = r.headers;
  for (let i = 0; i < h.length; i += 2) {
    headers.append(h[i]!, h[i + 1]!);
    if (host === undefined && h[i] === "host") host = h[i + 1];
  }
  const authority = host && PLAIN_AUTHORITY.test(host) ? host : "localhost";
  const scheme = tls ? "https" : "http";
  const target = r.target.startsWith("/") ? r.target : r.target === "*" ? "/" : new URL(r.target).pathname;
  const hasBody = r.method !== "GET" && r.method !== "HEAD";
  return new Request(`${scheme}://${authority}${target}`, {
    method: r.method,
    headers,
    body: hasBody && r.body ? r.body : undefined,
  });
}
