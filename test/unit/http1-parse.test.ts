// Claim: the request-head parser and chunked decoder accept CRLF and bare LF, survive any split of the bytes,
// and refuse each limit exactly one byte past it.
import { describe, expect, test } from "bun:test";
import { ChunkedDecoder, DEFAULT_LIMITS, newHeadScan, parseRequestHead } from "../../src/net/http1-parse.ts";

const enc = (s: string) => Buffer.from(s, "latin1");
const limits = {
  ...DEFAULT_LIMITS,
  maxRequestLineBytes: 64,
  maxHeaderBytes: 128,
  maxHeaderCount: 4,
  maxBodyBytes: 100,
};

describe("parseRequestHead", () => {
  test("CRLF and bare LF heads give the same result", () => {
    const a = parseRequestHead(
      enc("POST /pcoip-broker/xml HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"),
      limits,
    );
    const b = parseRequestHead(
      enc("POST /pcoip-broker/xml HTTP/1.1\nHost: x\nContent-Length: 5\n\nhello"),
      limits,
    );
    expect(a.kind).toBe("head");
    expect(b.kind).toBe("head");
    if (a.kind !== "head" || b.kind !== "head") return;
    expect(a.head).toEqual(b.head);
    expect(a.head.body).toEqual({ kind: "length", length: 5 });
    expect(a.head.headers).toEqual([
      ["host", "x"],
      ["content-length", "5"],
    ]);
    expect(
      enc("POST /pcoip-broker/xml HTTP/1.1\nHost: x\nContent-Length: 5\n\nhello")
        .subarray(b.consumed)
        .toString(),
    ).toBe("hello");
  });

  test("every prefix of a valid head is `need`, the whole is a head", () => {
    const full = enc("GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    for (let i = 1; i < full.length; i++)
      expect(parseRequestHead(full.subarray(0, i), limits).kind).toBe("need");
    const r = parseRequestHead(full, limits);
    expect(r.kind === "head" && r.head.keepAlive).toBe(false);
  });

  test("leading empty lines are skipped; HTTP/1.0 keep-alive only when asked", () => {
    const r = parseRequestHead(enc("\r\n\r\nGET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"), limits);
    expect(r.kind === "head" && r.head.version === "1.0" && r.head.keepAlive).toBe(true);
    const r2 = parseRequestHead(enc("GET / HTTP/1.0\r\n\r\n"), limits);
    expect(r2.kind === "head" && r2.head.keepAlive).toBe(false);
  });

  test("request line: exactly the limit passes, one over is 414", () => {
    const at = `GET /${"a".repeat(64 - 14)} HTTP/1.1`;
    expect(at.length).toBe(64);
    expect(parseRequestHead(enc(`${at}\r\n\r\n`), limits).kind).toBe("head");
    const over = `GET /${"a".repeat(64 - 13)} HTTP/1.1`;
    const r = parseRequestHead(enc(`${over}\r\n\r\n`), limits);
    expect(r.kind === "refused" && r.refusal.status).toBe(414);
    const unterminated = parseRequestHead(enc("G".repeat(65)), limits);
    expect(unterminated.kind === "refused" && unterminated.refusal.status).toBe(414);
  });

  test("header count and size: at the limit passes, over is 431", () => {
    const four = "a: 1\r\n".repeat(4);
    expect(parseRequestHead(enc(`GET / HTTP/1.1\r\n${four}\r\n`), limits).kind).toBe("head");
    const five = parseRequestHead(enc(`GET / HTTP/1.1\r\n${"a: 1\r\n".repeat(5)}\r\n`), limits);
    expect(five.kind === "refused" && five.refusal.status).toBe(431);
    const big = parseRequestHead(enc(`GET / HTTP/1.1\r\nx: ${"v".repeat(200)}`), limits);
    expect(big.kind === "refused" && big.refusal.status).toBe(431);
  });

  test("body framing refusals", () => {
    const cases: [string, number][] = [
      ["POST / HTTP/1.1\r\nContent-Length: 101\r\n\r\n", 413],
      ["POST / HTTP/1.1\r\nContent-Length: 1x\r\n\r\n", 400],
      ["POST / HTTP/1.1\r\nContent-Length: 1, 2\r\n\r\n", 400],
      ["POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n", 400],
      ["POST / HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n", 501],
      ["GET / HTTP/3.0\r\n\r\n", 505],
      ["GET /\r\n\r\n", 400],
      ["GET / HTTP/1.1\r\n\tfold\r\n\r\n", 400],
    ];
    for (const [req, status] of cases) {
      const r = parseRequestHead(enc(req), limits);
      expect(String(r.kind === "refused" ? r.refusal.status : r.kind)).toBe(String(status));
    }
    const same = parseRequestHead(
      enc("POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n"),
      limits,
    );
    expect(same.kind === "head" && same.head.body).toEqual({ kind: "length", length: 3 });
  });
});

describe("ChunkedDecoder", () => {
  const body = "5\r\nhello\r\n6;name=v\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";

  test("decodes whole, byte by byte, and with bare LF; leaves the next request's bytes", () => {
    const whole = new ChunkedDecoder(100);
    const used = whole.push(enc(body));
    expect(whole.done).toBe(true);
    expect(Buffer.from(whole.body()).toString()).toBe("hello world");
    expect(
      enc(body)
        .subarray(used as number)
        .toString(),
    ).toBe("NEXT");

    const bytewise = new ChunkedDecoder(100);
    const bytes = enc(body.replace("NEXT", ""));
    for (const b of bytes) expect(bytewise.push(Uint8Array.of(b))).toBe(1);
    expect(Buffer.from(bytewise.body()).toString()).toBe("hello world");

    const lf = new ChunkedDecoder(100);
    lf.push(enc("5\nhello\n0\n\n"));
    expect(lf.done && Buffer.from(lf.body()).toString()).toBe("hello");
  });

  test("body limit: exactly at it passes, one over is 413 before the data arrives", () => {
    const at = new ChunkedDecoder(100);
    at.push(enc(`64\r\n${"a".repeat(100)}\r\n0\r\n\r\n`));
    expect(at.done).toBe(true);
    const over = new ChunkedDecoder(100);
    expect(over.push(enc("64\r\n"))).toBe(4);
    expect(over.push(enc(`${"a".repeat(100)}\r\n1\r\n`))).toEqual({
      status: 413,
      reason: "request body too large",
    });
  });

  test("malformed sizes and overlong chunk data are 400", () => {
    expect(new ChunkedDecoder(100).push(enc("zz\r\n"))).toMatchObject({ status: 400 });
    expect(new ChunkedDecoder(100).push(enc("2\r\nabc\r\n"))).toMatchObject({ status: 400 });
    expect(new ChunkedDecoder(100).push(enc(`${"1".repeat(2000)}`))).toMatchObject({ status: 400 });
  });
});

describe("parseRequestHead with a HeadScan (a head arriving in pieces)", () => {
  const heads = [
    "GET /pcoip-broker/xml HTTP/1.1\r\nHost: a\r\n\r\n",
    "\r\n\r\nPOST /pcoip-broker/xml HTTP/1.1\r\nContent-Length: 3\r\nX: y\r\n\r\nabc",
    "GET / HTTP/1.1\nHost: a\n\n",
    "GET / HTTP/1.1\r\nA: b\r\n\r\r\n",
    "GET / HTTP/1.1\r\nA: b\n\r\nrest",
    "GET /\r\n\r\n",
    `GET / HTTP/1.1\r\n${"X-A: b\r\n".repeat(3000)}\r\n`,
  ];
  test.each(heads.map((h) => [JSON.stringify(h).slice(0, 40), h] as const))(
    "fed 1, 2, 3 and 7 bytes at a time it answers exactly as on the whole buffer: %s",
    (_name, text) => {
      const bytes = Buffer.from(text, "latin1");
      const whole = parseRequestHead(bytes, DEFAULT_LIMITS);
      for (const piece of [1, 2, 3, 7]) {
        const scan = newHeadScan();
        let r = parseRequestHead(bytes.subarray(0, 0), DEFAULT_LIMITS, scan);
        for (let at = piece; r.kind === "need" && at < bytes.length + piece; at += piece) {
          r = parseRequestHead(bytes.subarray(0, Math.min(at, bytes.length)), DEFAULT_LIMITS, scan);
        }
        expect(JSON.stringify(r)).toBe(JSON.stringify(whole));
      }
    },
  );

  test("endless empty lines before a request are refused, not buffered until the header timeout", () => {
    const r = parseRequestHead(Buffer.from("\r\n".repeat(5000)), DEFAULT_LIMITS);
    expect(r.kind).toBe("refused");
  });
});
