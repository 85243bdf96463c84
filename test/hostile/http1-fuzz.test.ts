// Claim: whatever bytes arrive, in whatever pieces, the front door's parser never throws and ends in a head,
// `need` or a refusal; and the live server answers or closes every fuzzed connection, then still serves a
// legitimate client.
import { afterAll, describe, expect, test } from "bun:test";
import fc from "fast-check";
import { startHttp1Server } from "../../src/net/http1.ts";
import { ChunkedDecoder, DEFAULT_LIMITS, parseRequestHead } from "../../src/net/http1-parse.ts";
import { countResponses, rawConnect } from "../peers/raw-http.ts";
import { testPki } from "../peers/test-certs.ts";

const valid = [
  "POST /pcoip-broker/xml HTTP/1.1\r\nHost: cm\r\nContent-Length: 5\r\n\r\nhello",
  "POST /pcoip-broker/xml HTTP/1.1\nHost: cm\nTransfer-Encoding: chunked\n\n5\nhello\n0\n\n",
  "GET /pcoip-broker/xml HTTP/1.1\r\nHost: cm\r\n\r\n",
];

/** A valid request with a few bytes replaced, inserted or cut. */
const mutated = fc
  .tuple(
    fc.constantFrom(...valid),
    fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 }), fc.constantFrom("set", "insert", "cut")), {
      maxLength: 6,
    }),
  )
  .map(([base, edits]) => {
    const bytes = [...Buffer.from(base, "latin1")];
    for (const [pos, byte, op] of edits) {
      const i = pos % (bytes.length + 1);
      if (op === "set" && i < bytes.length) bytes[i] = byte;
      else if (op === "insert") bytes.splice(i, 0, byte);
      else bytes.splice(i);
    }
    return Uint8Array.from(bytes);
  });

const anyBytes = fc.oneof(
  fc.uint8Array({ maxLength: 2048 }),
  mutated,
  fc.string({ maxLength: 500 }).map((s) => Buffer.from(s)),
);

describe("front door fuzz", () => {
  test("parseRequestHead and ChunkedDecoder never throw", () => {
    fc.assert(
      fc.property(anyBytes, (bytes) => {
        const r = parseRequestHead(bytes, DEFAULT_LIMITS);
        expect(["need", "head", "refused"]).toContain(r.kind);
        const d = new ChunkedDecoder(1000);
        const used = d.push(bytes);
        expect(typeof used === "number" || typeof used.status === "number").toBe(true);
      }),
      { numRuns: 3000 },
    );
  });

  const pki = testPki();
  const leaf = pki.leaf(["localhost", "127.0.0.1"]);
  const server = startHttp1Server({
    hostname: "127.0.0.1",
    port: 0,
    tls: { cert: leaf.cert, key: leaf.key },
    limits: { headerTimeoutMs: 200, bodyTimeoutMs: 200, idleTimeoutMs: 200 },
    fetch: async (req) => new Response(`ok ${(await req.arrayBuffer()).byteLength}`),
  });
  afterAll(() => server.stop({ closeActive: true }));

  test("the live server answers or closes every fuzzed connection, split at random points", async () => {
    await fc.assert(
      fc.asyncProperty(anyBytes, fc.nat(), async (bytes, splitAt) => {
        const c = await rawConnect({ port: server.port, ca: pki.ca.cert });
        const cut = bytes.length === 0 ? 0 : splitAt % bytes.length;
        c.send(bytes.subarray(0, cut));
        c.send(bytes.subarray(cut));
        const settled = await Promise.race([
          c.closed(3000),
          c
            .waitFor((t) => t.includes("\r\n\r\n"), 3000)
            .then(
              () => true,
              () => false,
            ),
        ]);
        expect(settled).toBe(true);
        c.end();
      }),
      { numRuns: 80 },
    );
    const ok = await rawConnect({ port: server.port, ca: pki.ca.cert });
    ok.send(valid[0]!);
    expect(await ok.waitFor((t) => countResponses(t) === 1)).toContain("ok 5");
    ok.end();
  }, 60_000);
});
