// Claim: a front door that relays requests as plain data (`relay`, what a front-door worker does) puts on the
// wire exactly the bytes the one that calls `fetch` itself does, for the same handler: Set-Cookie spelling and one
// line per cookie, chunked HTTP/1.1 bodies, HTTP/1.0 Content-Length and close, HEAD, 204 and 304 without a body,
// an empty body, keep-alive and pipelining — only the Date line is left out of the comparison.
import { afterAll, describe, expect, test } from "bun:test";
import { type Http1Server, startHttp1Server } from "../../src/net/http1.ts";
import type { RelayedResponse } from "../../src/net/http1-options.ts";
import { requestFrom } from "../../src/net/http1-request.ts";
import { rawConnect } from "../peers/raw-http.ts";
import { testPki } from "../peers/test-certs.ts";

const pki = testPki();
const leaf = pki.leaf(["localhost", "127.0.0.1"]);
const servers: Http1Server[] = [];
afterAll(() => {
  for (const s of servers) s.stop({ closeActive: true });
});

/** One handler for both front doors: the status and body a request asks for, two cookies, an extra header. */
async function handler(req: Request): Promise<Response> {
  const url = new URL(req.url);
  const status = Number(url.searchParams.get("status") ?? "200");
  const headers = new Headers({ "content-type": "application/xml; charset=UTF-8", "x-client-log-id": "abc" });
  headers.append("set-cookie", "JSESSIONID=0123456789abcdef; Secure; HttpOnly; Path=/");
  headers.append("set-cookie", "second=2; Path=/");
  const body = req.method === "POST" ? `<echo>${await req.text()}</echo>` : url.searchParams.get("body");
  return new Response(status === 204 || status === 304 ? null : body, { status, headers });
}

/** What the main thread does for a worker: the Request from plain data, the answer back as plain data. */
async function relayed(res: Response): Promise<RelayedResponse> {
  const headers: string[] = [];
  for (const [name, value] of res.headers) if (name !== "set-cookie") headers.push(name, value);
  const body = res.body === null ? undefined : new Uint8Array(await res.arrayBuffer());
  return {
    status: res.status,
    statusText: res.statusText,
    headers,
    cookies: res.headers.getSetCookie(),
    body,
  };
}

const tls = { cert: leaf.cert, key: leaf.key, ca: pki.ca.cert };
const direct = startHttp1Server({ hostname: "127.0.0.1", port: 0, tls, fetch: handler });
const relaying = startHttp1Server({
  hostname: "127.0.0.1",
  port: 0,
  tls,
  relay: async (req, info) => relayed(await handler(requestFrom(req, info.tls))),
});
servers.push(direct, relaying);

/** Sends `wire` on a new connection and returns what came back once `done` holds (Date lines removed). */
async function exchange(port: number, wire: string, done: (text: string) => boolean): Promise<string> {
  const c = await rawConnect({ port, ca: pki.ca.cert });
  try {
    c.send(wire);
    const text = await c.waitFor(done, 5000);
    return text.replace(/^Date: .*\r\n/gm, "");
  } finally {
    c.end();
  }
}

const post = (path: string, body: string, version = "1.1", extra = "") =>
  `POST ${path} HTTP/${version}\r\nHost: localhost\r\nContent-Length: ${body.length}\r\n${extra}\r\n${body}`;
const get = (method: string, path: string, version = "1.1") =>
  `${method} ${path} HTTP/${version}\r\nHost: localhost\r\n\r\n`;

const CASES: readonly (readonly [string, string, (t: string) => boolean])[] = [
  ["HTTP/1.1 POST with cookies", post("/pcoip-broker/xml", "<hello/>"), (t) => t.endsWith("0\r\n\r\n")],
  ["HTTP/1.0 POST", post("/x", "<a/>", "1.0"), (t) => t.includes("</echo>")],
  [
    "HTTP/1.0 POST, keep-alive asked",
    post("/x", "<b/>", "1.0", "Connection: keep-alive\r\n"),
    (t) => t.includes("</echo>"),
  ],
  ["HEAD", get("HEAD", "/?body=abc"), (t) => t.includes("\r\n\r\n")],
  ["HTTP/1.0 HEAD", get("HEAD", "/?body=abc", "1.0"), (t) => t.includes("\r\n\r\n")],
  ["204", get("GET", "/?status=204"), (t) => t.includes("\r\n\r\n")],
  ["304", get("GET", "/?status=304"), (t) => t.includes("\r\n\r\n")],
  ["empty body", get("GET", "/?body="), (t) => t.endsWith("0\r\n\r\n")],
  [
    "HTTP/1.0 empty body",
    get("GET", "/?body=", "1.0"),
    (t) => t.includes("Content-Length: 0\r\n") && t.endsWith("\r\n\r\n"),
  ],
  ["500 with a body", get("GET", "/?status=500&body=oops"), (t) => t.endsWith("0\r\n\r\n")],
  [
    "two pipelined requests",
    post("/p", "<one/>") + post("/p", "<two/>"),
    (t) => t.split("0\r\n\r\n").length === 3,
  ],
];

describe("relayed front door = direct front door, on the wire", () => {
  for (const [name, wire, done] of CASES)
    test(name, async () => {
      const a = await exchange(direct.port, wire, done);
      const b = await exchange(relaying.port, wire, done);
      expect(a).toStartWith("HTTP/1.1 ");
      expect(b).toBe(a);
    });

  test("the cookie lines are spelled Set-Cookie, one per cookie, on the relayed door", async () => {
    const b = await exchange(relaying.port, post("/pcoip-broker/xml", "<hello/>"), (t) =>
      t.endsWith("0\r\n\r\n"),
    );
    expect(b.match(/^Set-Cookie: /gm)?.length).toBe(2);
    expect(b).not.toMatch(/^set-cookie:/m);
    expect(b).toContain("\r\nTransfer-Encoding: chunked\r\n");
  });
});
