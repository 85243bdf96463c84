/**
 * The front door's share of the descriptor budget (net/http1.ts `descriptors`, sg/limits.ts): every connection
 * takes one and gives it back exactly once however it ends — served and closed, cut by the client, stalled in
 * the TLS handshake, TLS garbage, refused over budget — so the budget never leaks (a leak would slowly refuse
 * every client) and never goes negative.
 */
import { afterAll, expect, test } from "bun:test";
import { connect } from "node:tls";
import { startHttp1Server } from "../../src/net/http1.ts";
import { createRelayLimits } from "../../src/sg/limits.ts";
import { until } from "../peers/sg-fixture.ts";
import { testPki } from "../peers/test-certs.ts";

const pki = testPki();
const leaf = pki.leaf(["localhost", "127.0.0.1"]);
// nofile 512 + 1×10: room for exactly 10 connections.
const limits = createRelayLimits({ nofile: 522, reservedFds: 512, fdsPerRelay: 1 });
const server = startHttp1Server({
  hostname: "127.0.0.1",
  port: 0,
  tls: { cert: leaf.cert, key: leaf.key, ca: pki.ca.cert },
  fetch: () => new Response("ok\n"),
  limits: { headerTimeoutMs: 500, idleTimeoutMs: 500 },
  descriptors: limits,
});
afterAll(() => server.stop());

function tlsRequest(): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = connect(
      { host: "127.0.0.1", port: server.port, ca: pki.ca.cert, servername: "localhost" },
      () => {
        s.write("GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
      },
    );
    let text = "";
    s.on("data", (d) => {
      text += d.toString();
    });
    s.on("end", () => resolve(text));
    s.on("error", reject);
  });
}

test("served, cut, stalled, garbage and refused connections all give their descriptor back", async () => {
  expect(limits.maxRelays).toBe(10);
  // Served and closed.
  for (let i = 0; i < 5; i++) expect(await tlsRequest()).toContain("200");
  await until(() => limits.inUse === 0, 3000);

  // Cut by the client mid-head; TLS garbage; a stalled handshake (closed by the header timeout).
  const raw = await Promise.all(
    Array.from({ length: 6 }, () =>
      Bun.connect({ hostname: "127.0.0.1", port: server.port, socket: { data() {}, error() {} } }),
    ),
  );
  raw[0]!.write(new Uint8Array([0x16, 3, 1, 0, 200, 1, 0])); // half a ClientHello, then silence
  raw[1]!.write("GET / HTTP/1.1\r\n"); // not TLS at all
  raw[2]!.write(crypto.getRandomValues(new Uint8Array(300)));
  raw[3]!.end();
  await until(() => limits.inUse <= 2, 3000); // the two silent ones wait for the timeout
  await until(() => limits.inUse === 0, 3000);

  // Over budget: 14 held at once, 10 fit; the rest are closed at once and never counted.
  const held = await Promise.all(
    Array.from({ length: 14 }, () =>
      Bun.connect({ hostname: "127.0.0.1", port: server.port, socket: { data() {}, error() {} } }),
    ),
  );
  await until(() => limits.inUse === 10, 3000);
  expect(limits.refused).toBeGreaterThanOrEqual(4);
  for (const s of [...raw, ...held]) s.terminate();
  await until(() => limits.inUse === 0, 3000);

  // Nothing leaked: a real client still gets through.
  expect(await tlsRequest()).toContain("200");
  await until(() => limits.inUse === 0, 3000);
});
