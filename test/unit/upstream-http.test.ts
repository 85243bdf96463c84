// Claim: the CM's HTTP/1.1 client toward brokers writes Content-Length requests (never chunked) and reads every
// answer framing a broker may use (Content-Length, chunked with extensions and trailers, read-to-close, 100
// Continue, lower-case or odd header names, several Set-Cookie lines), telling "closed before answering" apart
// from "closed mid-answer", and refusing what is not HTTP or is too large.
import { afterAll, describe, expect, test } from "bun:test";
import { connect, createServer, type Server, type Socket } from "node:net";
import {
  createHttpConnection,
  headerValues,
  MAX_RESPONSE_BODY_BYTES,
  serializeRequest,
} from "../../src/cm/brokers/upstream-http.ts";

const servers: Server[] = [];
afterAll(() => {
  for (const s of servers) s.close();
});

/** A server that records each request's bytes and answers it with the next scripted reply (string or handler). */
async function scripted(
  replies: ((s: Socket, request: string) => void)[],
): Promise<{ port: number; requests: string[] }> {
  const requests: string[] = [];
  const srv = createServer((s) => {
    let buf = "";
    s.on("data", (d) => {
      buf += d.toString("latin1");
      const end = buf.indexOf("\r\n\r\n");
      if (end < 0) return;
      const len = Number(/content-length: (\d+)/i.exec(buf)?.[1] ?? 0);
      if (buf.length < end + 4 + len) return;
      const request = buf.slice(0, end + 4 + len);
      buf = buf.slice(end + 4 + len);
      requests.push(request);
      replies.shift()?.(s, request);
    });
    s.on("error", () => {});
  });
  servers.push(srv);
  await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
  return { port: (srv.address() as { port: number }).port, requests };
}

async function client(port: number) {
  const socket = connect({ host: "127.0.0.1", port });
  await new Promise((r) => socket.once("connect", r));
  return createHttpConnection(socket);
}

const REQ = {
  method: "POST" as const,
  host: "broker:8443",
  path: "/pcoip-broker/xml",
  headers: [["Content-Type", "text/xml"]] as [string, string][],
  body: "<pcoip-client version='2.1'><bye/></pcoip-client> é",
};

describe("requests", () => {
  test("always Content-Length with the UTF-8 byte count, never Transfer-Encoding", () => {
    const text = serializeRequest(REQ).toString("utf8");
    expect(
      text.startsWith("POST /pcoip-broker/xml HTTP/1.1\r\nHost: broker:8443\r\nContent-Type: text/xml\r\n"),
    ).toBe(true);
    expect(text).toContain(`\r\nContent-Length: ${Buffer.byteLength(REQ.body)}\r\n\r\n`);
    expect(text).not.toContain("Transfer-Encoding");
  });

  test("a header value with a line break is a bug, thrown", () => {
    expect(() =>
      serializeRequest({ ...REQ, headers: [["X-Forwarded-For", "1.2.3.4\r\nEvil: 1"]] }),
    ).toThrow();
  });
});

describe("answers", () => {
  test("chunked (with extensions and a trailer), then Content-Length, on one kept-alive connection", async () => {
    const { port, requests } = await scripted([
      (s) =>
        s.write(
          "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nSet-Cookie: JSESSIONID=abc; HttpOnly\r\nset-cookie: other=1\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
        ),
      (s) => s.write("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"),
    ]);
    const c = await client(port);
    const a = await c.exchange(REQ, 2000);
    expect(a.ok && a.response.body).toBe("hello world");
    expect(a.ok && headerValues(a.response.headers, "Set-Cookie")).toEqual([
      "JSESSIONID=abc; HttpOnly",
      "other=1",
    ]);
    expect(a.ok && a.response.reusable).toBe(true);
    const b = await c.exchange(REQ, 2000);
    expect(b.ok && b.response.body).toBe("abc");
    expect(requests.length).toBe(2);
    c.close();
  });

  test("100 Continue is skipped; an answer split into single bytes is reassembled", async () => {
    const answer = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone";
    const { port } = await scripted([
      (s) => {
        let i = 0;
        const next = () => {
          if (i < answer.length) {
            s.write(answer[i++]!);
            setImmediate(next);
          }
        };
        next();
      },
    ]);
    const c = await client(port);
    const a = await c.exchange(REQ, 3000);
    expect(a.ok && a.response.status).toBe(200);
    expect(a.ok && a.response.body).toBe("done");
    c.close();
  });

  test("no length: read to the close, and the connection is not reused", async () => {
    const { port } = await scripted([
      (s) => s.end("HTTP/1.0 500 Internal Server Error\r\ncontent-type: text/html\r\n\r\n<html>oops</html>"),
    ]);
    const c = await client(port);
    const a = await c.exchange(REQ, 2000);
    expect(a.ok && a.response.status).toBe(500);
    expect(a.ok && a.response.body).toBe("<html>oops</html>");
    expect(a.ok && a.response.reusable).toBe(false);
    expect(c.closed).toBe(true);
  });

  test("Connection: close makes the connection single-use", async () => {
    const { port } = await scripted([
      (s) => s.write("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"),
    ]);
    const c = await client(port);
    const a = await c.exchange(REQ, 2000);
    expect(a.ok && a.response.reusable).toBe(false);
    expect(c.closed).toBe(true);
  });

  test("closed before any byte vs closed mid-answer", async () => {
    const { port } = await scripted([
      (s) => s.end(),
      (s) => s.end("HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\npartial"),
    ]);
    const c1 = await client(port);
    const a = await c1.exchange(REQ, 2000);
    expect(!a.ok && a.kind).toBe("closed_before_response");
    const c2 = await client(port);
    const b = await c2.exchange(REQ, 2000);
    expect(!b.ok && b.kind).toBe("closed_mid_response");
  });

  test("a connection the server already closed fails at once as closed_before_response", async () => {
    const srv = createServer((s) => s.end());
    servers.push(srv);
    await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
    const c = await client((srv.address() as { port: number }).port);
    await Bun.sleep(50);
    expect(c.closed).toBe(true);
    const a = await c.exchange(REQ, 2000);
    expect(!a.ok && a.kind).toBe("closed_before_response");
  });

  test("a kept connection left idle is closed by the client after idleCloseMs", async () => {
    const { port } = await scripted([(s) => s.write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")]);
    const socket = connect({ host: "127.0.0.1", port });
    await new Promise((r) => socket.once("connect", r));
    const c = createHttpConnection(socket, Date.now, { idleCloseMs: 100 });
    const a = await c.exchange(REQ, 2000);
    expect(a.ok).toBe(true);
    expect(c.closed).toBe(false);
    await Bun.sleep(250);
    expect(c.closed).toBe(true);
  });

  test("silence → timeout", async () => {
    const { port } = await scripted([() => {}]);
    const c = await client(port);
    const a = await c.exchange(REQ, 200);
    expect(!a.ok && a.kind).toBe("timeout");
  });

  test.each([
    ["not HTTP", "bad_response", "SSH-2.0-OpenSSH_9.2\r\n\r\n"],
    ["a bad chunk size", "bad_response", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"],
    [
      "conflicting lengths",
      "bad_response",
      "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    ],
    [
      "a body over the limit",
      "too_large",
      `HTTP/1.1 200 OK\r\nContent-Length: ${MAX_RESPONSE_BODY_BYTES + 1}\r\n\r\n`,
    ],
  ])("%s → %s", async (_name, kind, answer) => {
    const { port } = await scripted([(s) => s.write(answer)]);
    const c = await client(port);
    const a = await c.exchange(REQ, 2000);
    expect(!a.ok && a.kind).toBe(kind as "bad_response" | "too_large");
    expect(c.closed).toBe(true);
  });
});
