// Claim: the fake broker behaves on the wire like the real public broker of PROTOCOL.md §10, byte for byte where
// it matters (so upstream tests against it mean something): cookie spelling and shape, chunked answers, the
// single-quoted declaration, strict order with HTTP 500 resets, chunked request bodies read as empty, idle close.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { connect, type TLSSocket } from "node:tls";
import { type FakeBroker, startFakeBroker } from "../peers/fake-broker.ts";

let broker: FakeBroker;
beforeAll(async () => {
  broker = await startFakeBroker({
    launch: "host-only",
    idleCloseMs: 300,
    users: {
      alice: {
        password: "pw",
        desktops: [
          { name: "CAD 1", agentHost: "10.20.3.14" },
          { name: "CAD 2", agentHost: "10.20.3.15" },
        ],
      },
    },
  });
});
afterAll(async () => {
  await broker?.close();
});

/** A raw keep-alive TLS connection that sends requests and returns the raw answer bytes. */
async function raw(): Promise<{
  send(req: string): Promise<string>;
  closed(): Promise<void>;
  socket: TLSSocket;
}> {
  const socket = connect({
    host: broker.hostname,
    port: broker.port,
    ca: broker.caCert,
    servername: "localhost",
  });
  await new Promise((r, j) => {
    socket.once("secureConnect", r);
    socket.once("error", j);
  });
  let buf = "";
  let waiter: (() => void) | undefined;
  socket.on("data", (d) => {
    buf += d.toString("utf8");
    waiter?.();
  });
  const ended = new Promise<void>((r) => socket.once("close", () => r()));
  const complete = (t: string) => {
    const end = t.indexOf("\r\n\r\n");
    if (end < 0) return false;
    const head = t.slice(0, end);
    const cl = /content-length: (\d+)/i.exec(head);
    if (cl) return Buffer.byteLength(t.slice(end + 4)) >= Number(cl[1]);
    return t.endsWith("0\r\n\r\n");
  };
  return {
    socket,
    closed: () => ended,
    async send(req) {
      buf = "";
      socket.write(req);
      while (!complete(buf)) await new Promise<void>((r) => (waiter = r));
      return buf;
    },
  };
}

function post(body: string, headers: Record<string, string> = {}): string {
  const extra = Object.entries(headers)
    .map(([k, v]) => `${k}: ${v}\r\n`)
    .join("");
  return `POST /pcoip-broker/xml HTTP/1.1\r\nHost: broker\r\nContent-Type: text/xml\r\n${extra}Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`;
}
const doc = (inner: string) => `<?xml version="1.0"?><pcoip-client version="2.1">${inner}</pcoip-client>`;
const HELLO = doc(
  "<hello><client-info><product-name>Teradici PCoIP Desktop Client</product-name></client-info></hello>",
);
const PROBE = doc("<hello><client-info><product-name>QueryBrokerClient</product-name></client-info></hello>");
const AUTH = doc(
  '<authenticate method="password"><username>alice</username><password>pw</password><domain/></authenticate>',
);

function unchunk(answer: string): string {
  const body = answer.slice(answer.indexOf("\r\n\r\n") + 4);
  if (!/Transfer-Encoding: chunked/.test(answer)) return body;
  let out = "";
  let rest = body;
  for (;;) {
    const le = rest.indexOf("\r\n");
    const size = Number.parseInt(rest.slice(0, le), 16);
    if (size === 0) return out;
    out += rest.slice(le + 2, le + 2 + size);
    rest = rest.slice(le + 2 + size + 2);
  }
}

describe("fake broker on the wire", () => {
  test("a new session gets Set-Cookie: JSESSIONID=<32 hex>; HttpOnly; Path=/; Secure, chunked, ILS's XML shape", async () => {
    const c = await raw();
    const a = await c.send(post(HELLO));
    expect(a.startsWith("HTTP/1.1 200 OK\r\n")).toBe(true);
    expect(a).toMatch(/\r\nSet-Cookie: JSESSIONID=[0-9a-f]{32}; HttpOnly; Path=\/; Secure\r\n/);
    expect(a).toContain("\r\nTransfer-Encoding: chunked\r\n");
    expect(a).toContain("\r\ncontent-type: application/xml\r\n");
    const body = unchunk(a);
    expect(body.startsWith("<?xml version='1.0' encoding='utf-8'?>\n<pcoip-client version=\"2.1\">")).toBe(
      true,
    );
    expect(body).toContain("<ip-address>N/A</ip-address>");
    c.socket.destroy();
  });

  test("the cookie is never rotated; strict order; an out-of-order message is HTTP 500 and resets", async () => {
    const c = await raw();
    const first = await c.send(post(HELLO));
    const cookie = /JSESSIONID=([0-9a-f]{32})/.exec(first)![1]!;
    const withCookie = { Cookie: `JSESSIONID=${cookie}` };
    const list = await c.send(post(doc("<get-resource-list/>"), withCookie));
    expect(list.startsWith("HTTP/1.1 500 Internal Server Error")).toBe(true);
    expect(list).not.toContain("Transfer-Encoding: chunked");
    expect(list).toContain("<error><title>500 Internal Server Error</title><description>");
    expect(list).not.toContain("Set-Cookie");
    // Reset: authenticate now fails too, until a new hello.
    expect((await c.send(post(AUTH, withCookie))).startsWith("HTTP/1.1 500")).toBe(true);
    expect((await c.send(post(HELLO, withCookie))).startsWith("HTTP/1.1 200")).toBe(true);
    expect(unchunk(await c.send(post(AUTH, withCookie)))).toContain("AUTH_SUCCESSFUL_AND_COMPLETE");
    const resources = unchunk(await c.send(post(doc("<get-resource-list/>"), withCookie)));
    expect(resources).toContain("<resource-id>0</resource-id>");
    expect(resources).toContain("<resource-id>1</resource-id>");
    // Resource ids are matched exactly: " 1" is unknown → 500.
    expect(
      (
        await c.send(
          post(doc("<allocate-resource><resource-id> 1</resource-id></allocate-resource>"), withCookie),
        )
      ).startsWith("HTTP/1.1 500"),
    ).toBe(true);
    c.socket.destroy();
  });

  test("after a successful allocation only bye is accepted; <bye-resp />", async () => {
    const c = await raw();
    const cookie = /JSESSIONID=([0-9a-f]{32})/.exec(await c.send(post(HELLO)))![1]!;
    const h = { Cookie: `JSESSIONID=${cookie}` };
    await c.send(post(AUTH, h));
    await c.send(post(doc("<get-resource-list/>"), h));
    const alloc = unchunk(
      await c.send(post(doc("<allocate-resource><resource-id>1</resource-id></allocate-resource>"), h)),
    );
    expect(alloc).toContain("<ip-address>10.20.3.15</ip-address>");
    expect(alloc).not.toContain("<connect-tag>");
    expect((await c.send(post(doc("<get-resource-list/>"), h))).startsWith("HTTP/1.1 500")).toBe(true);
    expect(unchunk(await c.send(post(doc("<bye/>"), h)))).toContain("<bye-resp />");
    c.socket.destroy();
  });

  test("the probe gets a hello-resp and a cookie but no conversation: authenticate right after fails", async () => {
    const c = await raw();
    const a = await c.send(post(PROBE));
    expect(unchunk(a)).toContain("<hello-resp>");
    const cookie = /JSESSIONID=([0-9a-f]{32})/.exec(a)![1]!;
    expect((await c.send(post(AUTH, { Cookie: `JSESSIONID=${cookie}` }))).startsWith("HTTP/1.1 500")).toBe(
      true,
    );
    c.socket.destroy();
  });

  test("in cookie mode Client-Log-Id is ignored: no cookie, new session", async () => {
    const c = await raw();
    const id = { "Client-Log-Id": "a1ff3a80-8801-1038-a9bd-00505680aded" };
    expect(await c.send(post(HELLO, id))).toContain("Set-Cookie");
    const second = await c.send(post(AUTH, id));
    expect(second).toContain("Set-Cookie");
    expect(second.startsWith("HTTP/1.1 500")).toBe(true);
    c.socket.destroy();
  });

  test("a chunked request body is read as empty: 400 Malformed XML", async () => {
    const c = await raw();
    const body = Buffer.from(HELLO);
    const a = await c.send(
      `POST /pcoip-broker/xml HTTP/1.1\r\nHost: broker\r\nTransfer-Encoding: chunked\r\n\r\n${body.length.toString(16)}\r\n${HELLO}\r\n0\r\n\r\n`,
    );
    expect(a.startsWith("HTTP/1.1 400 Bad Request")).toBe(true);
    expect(a).toContain("<description>Malformed XML</description>");
    c.socket.destroy();
  });

  test("another path is 404 with the error body", async () => {
    const c = await raw();
    const a = await c.send(`POST /broker/xml HTTP/1.1\r\nHost: b\r\nContent-Length: 0\r\n\r\n`);
    expect(a.startsWith("HTTP/1.1 404")).toBe(true);
    expect(a).toContain("<error><title>404 Not Found</title>");
    c.socket.destroy();
  });

  test("an idle kept-alive connection is closed by the broker", async () => {
    const c = await raw();
    await c.send(post(PROBE));
    const t0 = Date.now();
    await c.closed();
    expect(Date.now() - t0).toBeGreaterThanOrEqual(250);
  });

  test("faults: HTTP 500, garbage, wrong root, once each", async () => {
    const c = await raw();
    broker.fail("http-500", { times: 1 });
    expect((await c.send(post(PROBE))).startsWith("HTTP/1.1 500")).toBe(true);
    broker.fail("garbage", { times: 1 });
    expect(unchunk(await c.send(post(PROBE)))).toBe("this is not XML at all <<<");
    broker.fail("wrong-root", { op: "hello", times: 1 });
    expect(unchunk(await c.send(post(PROBE)))).toContain("<html>");
    expect(unchunk(await c.send(post(PROBE)))).toContain("<hello-resp>");
    c.socket.destroy();
  });
});

test("in ILS's cookie-less mode the Client-Log-Id is the session key and no cookie is set", async () => {
  const b = await startFakeBroker({ sessionKey: "client-log-id", users: {} });
  try {
    const socket = connect({ host: b.hostname, port: b.port, ca: b.caCert, servername: "localhost" });
    let text = "";
    socket.on("data", (d) => (text += d.toString()));
    await new Promise((r) => socket.once("secureConnect", r));
    const id = { "Client-Log-Id": "c3ff3a80-8801-1038-a9bd-00505680aded" };
    socket.write(post(HELLO, id));
    socket.write(
      post(
        doc('<authenticate method="password"><username>x</username><password>y</password></authenticate>'),
        id,
      ),
    );
    while ((text.match(/0\r\n\r\n/g) ?? []).length < 2) await Bun.sleep(10);
    expect(text).not.toContain("Set-Cookie");
    expect(text).toContain("<result-id>AUTH_FAILED_UNKNOWN");
    expect(b.sessionStates().get("c3ff3a80-8801-1038-a9bd-00505680aded")).toBe("WAIT_AUTH");
    socket.destroy();
  } finally {
    await b.close();
  }
});
