// Claim: the front door speaks the HTTP/1.1 real PCoIP clients need, on the wire: exact `Set-Cookie` spelling,
// chunked bodies (never Content-Length; an HTTP/1.0 request gets Content-Length), bare-LF requests, keep-alive
// and pipelining, and every limit enforced by crossing it — while a legitimate client next to a misbehaving one
// is served.
import { afterAll, describe, expect, test } from "bun:test";
import { type Http1Server, startHttp1Server } from "../../src/net/http1.ts";
import { countResponses, rawConnect } from "../peers/raw-http.ts";
import { testPki } from "../peers/test-certs.ts";

const pki = testPki();
const leaf = pki.leaf(["localhost", "127.0.0.1"]);
const servers: Http1Server[] = [];
afterAll(() => {
  for (const s of servers) s.stop({ closeActive: true });
});

function serve(limits = {}, fetch?: (req: Request) => Response | Promise<Response>): Http1Server {
  const s = startHttp1Server({
    hostname: "127.0.0.1",
    port: 0,
    tls: { cert: leaf.cert, key: leaf.key, ca: pki.ca.cert },
    limits,
    fetch:
      fetch ??
      (async (req, info) => {
        const headers = new Headers({ "content-type": "application/xml; charset=UTF-8" });
        headers.append("set-cookie", "JSESSIONID=0123456789abcdef0123456789abcdef; Secure; HttpOnly; Path=/");
        headers.append("set-cookie", "second=2; Path=/");
        const body = req.method === "GET" || req.method === "HEAD" ? "" : await req.text();
        return new Response(
          `<r m="${req.method}" p="${new URL(req.url).pathname}" n="${body.length}" ip="${info.remoteAddress}"/>`,
          { headers },
        );
      }),
  });
  servers.push(s);
  return s;
}

const connect = (s: Http1Server) => rawConnect({ port: s.port, ca: pki.ca.cert });

describe("front door wire format", () => {
  test("Set-Cookie spelled exactly, one line per cookie, chunked body, no Content-Length", async () => {
    const c = await connect(serve());
    c.send("POST /pcoip-broker/xml HTTP/1.1\r\nHost: cm\r\nContent-Length: 4\r\n\r\nabcd");
    const text = await c.waitFor((t) => countResponses(t) === 1);
    expect(text.startsWith("HTTP/1.1 200 OK\r\n")).toBe(true);
    expect(text).toContain(
      "\r\nSet-Cookie: JSESSIONID=0123456789abcdef0123456789abcdef; Secure; HttpOnly; Path=/\r\n",
    );
    expect(text).toContain("\r\nSet-Cookie: second=2; Path=/\r\n");
    expect(text).not.toContain("set-cookie");
    expect(text).toContain("\r\nContent-Type: application/xml; charset=UTF-8\r\n");
    expect(text).toContain("\r\nTransfer-Encoding: chunked\r\n");
    expect(text.toLowerCase()).not.toContain("content-length");
    expect(text).toMatch(
      /\r\n\r\n[0-9a-f]+\r\n<r m="POST" p="\/pcoip-broker\/xml" n="4" ip="127.0.0.1"\/>\r\n0\r\n\r\n$/,
    );
    c.end();
  });

  test("a bare-LF request (openssl s_client) is answered 200", async () => {
    const c = await connect(serve());
    c.send(
      'POST /pcoip-broker/xml HTTP/1.1\nHost: cm\nContent-Length: 38\n\n<?xml version="1.0" encoding="UTF-8"?>',
    );
    const text = await c.waitFor((t) => countResponses(t) === 1);
    expect(text).toContain('n="38"');
    expect(text.startsWith("HTTP/1.1 200 OK")).toBe(true);
  });

  test("keep-alive: two requests on one connection, then pipelined requests answered in order", async () => {
    const c = await connect(serve());
    c.send("GET /one HTTP/1.1\r\nHost: cm\r\n\r\n");
    await c.waitFor((t) => countResponses(t) === 1);
    c.send(
      "GET /two HTTP/1.1\r\nHost: cm\r\n\r\nPOST /three HTTP/1.1\r\nHost: cm\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n1;ext=1\r\nc\r\n0\r\nTrailer: x\r\n\r\nGET /four HTTP/1.1\r\nHost: cm\r\nConnection: close\r\n\r\n",
    );
    const text = await c.waitFor((t) => countResponses(t) === 4);
    const order = [...text.matchAll(/p="([^"]+)" n="(\d+)"/g)].map((m) => `${m[1]}:${m[2]}`);
    expect(order).toEqual(["/one:0", "/two:0", "/three:3", "/four:0"]);
    expect(text.trimEnd().endsWith("0")).toBe(true);
    expect(await c.closed()).toBe(true);
  });

  test("Expect: 100-continue gets an interim answer before the body is sent", async () => {
    const c = await connect(serve());
    c.send("POST /x HTTP/1.1\r\nHost: cm\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n");
    await c.waitFor((t) => t.startsWith("HTTP/1.1 100 Continue\r\n\r\n"));
    c.send("xyz");
    const text = await c.waitFor((t) => countResponses(t) === 1);
    expect(text).toContain('n="3"');
  });

  test("HTTP/1.0 without keep-alive is answered with Content-Length (never chunked) and closed", async () => {
    const c = await connect(serve());
    c.send("GET /old HTTP/1.0\r\n\r\n");
    const text = await c.waitFor((t) => t.endsWith("/>"));
    expect(text).toContain("Connection: close\r\n");
    expect(text).toMatch(
      /\r\nContent-Length: 42\r\n[\s\S]*\r\n\r\n<r m="GET" p="\/old" n="0" ip="127.0.0.1"\/>$/,
    );
    expect(text.toLowerCase()).not.toContain("transfer-encoding");
    expect(await c.closed()).toBe(true);
  });

  test("a streamed response is written chunk by chunk", async () => {
    const s = serve({}, () => {
      const stream = new ReadableStream({
        start(ctrl) {
          ctrl.enqueue(new TextEncoder().encode("part1-"));
          ctrl.enqueue(new TextEncoder().encode("part2"));
          ctrl.close();
        },
      });
      return new Response(stream, { headers: { "content-type": "text/plain" } });
    });
    const c = await connect(s);
    c.send("GET / HTTP/1.1\r\nHost: cm\r\n\r\n");
    const text = await c.waitFor((t) => countResponses(t) === 1);
    expect(text).toContain("\r\n6\r\npart1-\r\n5\r\npart2\r\n0\r\n\r\n");
  });

  test("a handler that throws gives 500 and the server keeps serving", async () => {
    let n = 0;
    const s = serve({}, () => {
      n++;
      if (n === 1) throw new Error("boom");
      return new Response("fine");
    });
    const c = await connect(s);
    c.send("GET / HTTP/1.1\r\nHost: cm\r\n\r\n");
    await c.waitFor((t) => t.startsWith("HTTP/1.1 500"));
    const c2 = await connect(s);
    c2.send("GET / HTTP/1.1\r\nHost: cm\r\n\r\n");
    expect(await c2.waitFor((t) => countResponses(t) === 1)).toContain("fine");
  });
});

describe("front door limits, each crossed", () => {
  test("a body of exactly the limit passes; one byte over gets 413", async () => {
    const s = serve({ maxBodyBytes: 1000 });
    const ok = await connect(s);
    ok.send(`POST / HTTP/1.1\r\nHost: cm\r\nContent-Length: 1000\r\n\r\n${"a".repeat(1000)}`);
    expect(await ok.waitFor((t) => countResponses(t) === 1)).toContain('n="1000"');
    const over = await connect(s);
    over.send("POST / HTTP/1.1\r\nHost: cm\r\nContent-Length: 1001\r\n\r\n");
    expect(await over.waitFor((t) => t.includes("\r\n\r\n"))).toStartWith("HTTP/1.1 413");
    expect(await over.closed()).toBe(true);
  });

  test("a 64 KiB body passes and an endless chunked body is cut at 64 KiB with 413", async () => {
    const s = serve();
    const c = await connect(s);
    c.send(`POST / HTTP/1.1\r\nHost: cm\r\nContent-Length: 65536\r\n\r\n${"b".repeat(65536)}`);
    expect(await c.waitFor((t) => countResponses(t) === 1)).toContain('n="65536"');
    const endless = await connect(s);
    endless.send("POST / HTTP/1.1\r\nHost: cm\r\nTransfer-Encoding: chunked\r\n\r\n");
    for (let i = 0; i < 20; i++) endless.send(`1000\r\n${"c".repeat(4096)}\r\n`);
    expect(await endless.waitFor((t) => t.includes("\r\n\r\n"))).toStartWith("HTTP/1.1 413");
    expect(await endless.closed()).toBe(true);
  });

  test("10,000 tiny headers get 431; exactly maxHeaderCount passes", async () => {
    const s = serve({ maxHeaderCount: 100 });
    const many = await connect(s);
    many.send(`GET / HTTP/1.1\r\n${"a: b\r\n".repeat(10_000)}\r\n`);
    expect(await many.waitFor((t) => t.includes("\r\n\r\n"))).toStartWith("HTTP/1.1 431");
    const exact = await connect(s);
    exact.send(`GET / HTTP/1.1\r\nHost: cm\r\n${"a: b\r\n".repeat(99)}\r\n`);
    expect(await exact.waitFor((t) => countResponses(t) === 1)).toStartWith("HTTP/1.1 200");
  });

  test("a request line over the limit gets 414; an unsupported version 505; garbage 400", async () => {
    const s = serve({ maxRequestLineBytes: 100 });
    const long = await connect(s);
    long.send(`GET /${"x".repeat(200)} HTTP/1.1\r\n\r\n`);
    expect(await long.waitFor((t) => t.includes("\r\n\r\n"))).toStartWith("HTTP/1.1 414");
    const v2 = await connect(s);
    v2.send("GET / HTTP/2.0\r\n\r\n");
    expect(await v2.waitFor((t) => t.includes("\r\n\r\n"))).toStartWith("HTTP/1.1 505");
    const junk = await connect(s);
    junk.send("\x16\x03\x01garbage that is not http\r\n\r\n");
    expect(await junk.waitFor((t) => t.includes("\r\n\r\n"))).toStartWith("HTTP/1.1 400");
    const nine = await connect(s);
    nine.send("GET /\r\n\r\n");
    expect(await nine.waitFor((t) => t.includes("\r\n\r\n"))).toStartWith("HTTP/1.1 400");
  });

  test("request smuggling shapes are refused: TE+CL, conflicting CL, unknown coding", async () => {
    const s = serve();
    for (const [req, status] of [
      ["POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", "400"],
      ["POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", "400"],
      ["POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", "400"],
      ["POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "501"],
      ["GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", "400"],
      ["GET / HTTP/1.1\r\nBad Name: x\r\n\r\n", "400"],
    ] as const) {
      const c = await connect(s);
      c.send(req);
      expect(await c.waitFor((t) => t.includes("\r\n\r\n"))).toStartWith(`HTTP/1.1 ${status}`);
    }
  });

  test("slowloris: a head trickling in past the header timeout gets 408 and is closed", async () => {
    const s = serve({ headerTimeoutMs: 400 });
    const slow = await connect(s);
    slow.send("GET / HTTP/1.1\r\n");
    const timer = setInterval(() => slow.send("X"), 100);
    try {
      expect(await slow.waitFor((t) => t.includes("\r\n\r\n"), 3000)).toStartWith("HTTP/1.1 408");
      expect(await slow.closed()).toBe(true);
    } finally {
      clearInterval(timer);
    }
  });

  test("an idle keep-alive connection is closed after the idle timeout", async () => {
    const s = serve({ idleTimeoutMs: 300 });
    const c = await connect(s);
    c.send("GET / HTTP/1.1\r\nHost: cm\r\n\r\n");
    await c.waitFor((t) => countResponses(t) === 1);
    expect(await c.closed(3000)).toBe(true);
  });

  test("connections over maxConnections are closed at once", async () => {
    const s = startHttp1Server({
      hostname: "127.0.0.1",
      port: 0,
      tls: { cert: leaf.cert, key: leaf.key },
      maxConnections: 1,
      fetch: () => new Response("ok"),
    });
    servers.push(s);
    const first = await connect(s);
    first.send("GET / HTTP/1.1\r\nHost: cm\r\n\r\n");
    await first.waitFor((t) => countResponses(t) === 1);
    const second = await rawConnect({ port: s.port }).catch(() => undefined);
    if (second) expect(await second.closed(2000)).toBe(true);
    expect(s.connections).toBe(1);
  });

  test("a TLS handshake stopped half-way and TLS garbage do not disturb a legitimate client", async () => {
    const s = serve();
    const half = await Bun.connect({ hostname: "127.0.0.1", port: s.port, socket: { data() {} } });
    half.write(new Uint8Array([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03]));
    const junk = await Bun.connect({ hostname: "127.0.0.1", port: s.port, socket: { data() {} } });
    junk.write("GET / HTTP/1.1\r\n\r\n");
    const c = await connect(s);
    c.send("GET /ok HTTP/1.1\r\nHost: cm\r\n\r\n");
    expect(await c.waitFor((t) => countResponses(t) === 1)).toContain('p="/ok"');
    half.end();
    junk.end();
  });
});

describe("certificate rotation", () => {
  test("reloadTls serves the new certificate to new connections; an old keep-alive connection still works", async () => {
    const s = serve();
    const old = await connect(s);
    old.send("GET /before HTTP/1.1\r\nHost: cm\r\n\r\n");
    await old.waitFor((t) => countResponses(t) === 1);
    const next = pki.leaf(["localhost", "127.0.0.1", "rotated.example"]);
    s.reloadTls({ cert: next.cert, key: next.key });
    const fresh = await connect(s);
    const cert = fresh.peerCertificate() as { subjectaltname?: string } | undefined;
    expect(cert?.subjectaltname ?? "").toContain("rotated.example");
    fresh.send("GET /fresh HTTP/1.1\r\nHost: cm\r\n\r\n");
    expect(await fresh.waitFor((t) => countResponses(t) === 1)).toContain('p="/fresh"');
    old.send("GET /after HTTP/1.1\r\nHost: cm\r\n\r\n");
    expect(await old.waitFor((t) => countResponses(t) === 2)).toContain('p="/after"');
  });
});
