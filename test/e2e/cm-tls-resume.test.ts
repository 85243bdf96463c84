// Claim: the CM's TLS listener (net/http1.ts on Bun.listen, BoringSSL) lets a client that comes back resume its
// TLS session, with TLS 1.3 and with TLS 1.2, so a reconnecting client costs no RSA signature (issue 21); a
// listener started anew (restart, certificate reload) holds new ticket keys and gives a full handshake instead.
import { afterAll, expect, test } from "bun:test";
import { connect } from "node:tls";
import { type Http1Server, startHttp1Server } from "../../src/net/http1.ts";
import { testPki } from "../peers/test-certs.ts";

const pki = testPki();
const leaf = pki.leaf(["localhost", "127.0.0.1"]);
const servers: Http1Server[] = [];
afterAll(() => {
  for (const s of servers) s.stop({ closeActive: true });
});

function serve(): Http1Server {
  const s = startHttp1Server({
    hostname: "127.0.0.1",
    port: 0,
    tls: { cert: leaf.cert, key: leaf.key },
    fetch: () => new Response("ok\n"),
  });
  servers.push(s);
  return s;
}

/** One request on a new connection; whether it resumed, and the session to offer next time. */
function visit(
  port: number,
  maxVersion: "TLSv1.2" | "TLSv1.3",
  session: Buffer | undefined,
): Promise<{ reused: boolean; session: Buffer | undefined }> {
  return new Promise((resolve, reject) => {
    let next = session;
    let reused = false;
    const s = connect({
      host: "127.0.0.1",
      port,
      servername: "localhost",
      ca: pki.ca.cert,
      maxVersion,
      ...(session ? { session } : {}),
    });
    s.on("session", (b: Buffer) => {
      next = b;
    });
    s.once("secureConnect", () => {
      reused = s.isSessionReused();
      s.write("GET /x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    });
    s.on("data", () => undefined);
    s.on("close", () => resolve({ reused, session: next }));
    s.on("error", reject);
  });
}

for (const version of ["TLSv1.3", "TLSv1.2"] as const) {
  test(`${version}: the second and third connections resume the first one's session`, async () => {
    const server = serve();
    const a = await visit(server.port, version, undefined);
    const b = await visit(server.port, version, a.session);
    const c = await visit(server.port, version, b.session);
    expect([a.reused, b.reused, c.reused]).toEqual([false, true, true]);
  });
}

test("a session from another listener (a restart) gets a full handshake, not an error", async () => {
  const first = serve();
  const a = await visit(first.port, "TLSv1.3", undefined);
  const second = serve();
  const b = await visit(second.port, "TLSv1.3", a.session);
  expect(b.reused).toBe(false);
});
