// Claim: the PROXY protocol reader never throws and never reads past what it was given: random bytes, mutated
// and truncated real headers (v1 and v2) all end in need / header / refused; every header built for any IPv4 or
// IPv6 source round-trips to that source; fed in any split, each strict prefix of a header is "need" and the
// whole gives the same answer as one read; bytes after the header are never consumed; no input is held beyond
// the protocol's bounds (107 bytes for v1, MAX_V2_BYTES for v2); a TLS ClientHello or an HTTP request line never
// looks like a header (so unlisted peers are never mistaken for balancers, nor balancers' headers let through).
import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import { canonicalIp } from "../../src/net/client-address.ts";
import {
  buildProxyV1,
  buildProxyV2,
  looksLikeProxyHeader,
  MAX_V1_BYTES,
  MAX_V2_BYTES,
  type ProxyHeaderResult,
  parseProxyHeader,
} from "../../src/net/proxy-protocol.ts";

const RUNS = 1000;

const ipv4 = fc.tuple(fc.nat(255), fc.nat(255), fc.nat(255), fc.nat(255)).map((o) => o.join("."));
const ipv6 = fc
  .array(fc.oneof(fc.constant(0), fc.nat(0xffff)), { minLength: 8, maxLength: 8 })
  .map((g) => canonicalIp(g.map((x) => x.toString(16)).join(":")))
  .filter((ip) => !ip.includes(".")); // ::ffff:a.b.c.d canonicalises to IPv4; covered by the v4 case
const port = fc.nat(65535);
const endpoint = (ip: fc.Arbitrary<string>) => fc.record({ address: ip, port });
const header = fc.oneof(
  fc.tuple(endpoint(ipv4), endpoint(ipv4)).map(([s, d]) => ({ bytes: buildProxyV1(s, d), source: s })),
  fc.tuple(endpoint(ipv6), endpoint(ipv6)).map(([s, d]) => ({ bytes: buildProxyV1(s, d), source: s })),
  fc
    .tuple(endpoint(ipv4), endpoint(ipv4), fc.uint8Array({ maxLength: 64 }))
    .map(([s, d, t]) => ({ bytes: buildProxyV2(s, d, t), source: s })),
  fc
    .tuple(endpoint(ipv6), endpoint(ipv6), fc.uint8Array({ maxLength: 64 }))
    .map(([s, d, t]) => ({ bytes: buildProxyV2(s, d, t), source: s })),
);

function wellFormed(r: ProxyHeaderResult, input: Uint8Array): void {
  expect(["need", "header", "refused"]).toContain(r.kind);
  if (r.kind === "header") {
    expect(r.consumed).toBeGreaterThan(0);
    expect(r.consumed).toBeLessThanOrEqual(input.length);
    expect(r.consumed).toBeLessThanOrEqual(Math.max(MAX_V1_BYTES, MAX_V2_BYTES));
    if (r.source) {
      expect(canonicalIp(r.source.address)).toBe(r.source.address);
      expect(r.source.port).toBeGreaterThanOrEqual(0);
      expect(r.source.port).toBeLessThanOrEqual(65535);
    }
  }
  if (r.kind === "refused") expect(r.reason.length).toBeGreaterThan(10);
}

describe("PROXY header reader under hostile input", () => {
  test("random bytes: never throws, well-formed answers, bounded", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 3000 }), (b) => {
        wellFormed(parseProxyHeader(b), b);
      }),
      { numRuns: RUNS },
    );
  });

  test("random bytes after a real signature (v1 'PROXY ' and the v2 signature)", () => {
    const prefixes = [Buffer.from("PROXY "), buildProxyV2().subarray(0, 12), buildProxyV2().subarray(0, 13)];
    fc.assert(
      fc.property(fc.constantFrom(...prefixes), fc.uint8Array({ maxLength: 3000 }), (p, rest) => {
        const b = Buffer.concat([p, rest]);
        const r = parseProxyHeader(b);
        wellFormed(r, b);
        // A prefix longer than the protocol's bound can never still be "need": nothing is held forever.
        if (b.length > MAX_V2_BYTES) expect(r.kind).not.toBe("need");
      }),
      { numRuns: RUNS },
    );
  });

  test("v1 text soup: printable tokens in the header's shape", () => {
    const token = fc.constantFrom(
      "TCP4",
      "TCP6",
      "UNKNOWN",
      "1.2.3.4",
      "::1",
      "0",
      "65536",
      "01",
      "",
      " ",
      "x",
    );
    fc.assert(
      fc.property(fc.array(token, { maxLength: 8 }), fc.constantFrom("\r\n", "\n", "\r", ""), (toks, end) => {
        const b = Buffer.from(`PROXY ${toks.join(" ")}${end}`, "latin1");
        wellFormed(parseProxyHeader(b), b);
      }),
      { numRuns: RUNS },
    );
  });

  test("mutated real headers: never throws; a header still found names a valid address", () => {
    fc.assert(
      fc.property(
        header,
        fc.array(fc.tuple(fc.nat(200), fc.nat(255)), { minLength: 1, maxLength: 4 }),
        (h, edits) => {
          const b = Buffer.from(h.bytes);
          for (const [at, v] of edits) if (at < b.length) b[at] = v;
          wellFormed(parseProxyHeader(b), b);
        },
      ),
      { numRuns: RUNS },
    );
  });

  test("every built header round-trips to its source; trailing bytes are left alone", () => {
    fc.assert(
      fc.property(header, fc.uint8Array({ maxLength: 64 }), (h, tail) => {
        const r = parseProxyHeader(Buffer.concat([h.bytes, tail]));
        expect(r).toEqual({ kind: "header", consumed: h.bytes.length, source: h.source });
      }),
      { numRuns: RUNS },
    );
  });

  test("every strict prefix is 'need'; truncation never yields a header", () => {
    fc.assert(
      fc.property(header, (h) => {
        for (let n = 0; n < h.bytes.length; n++)
          expect(parseProxyHeader(h.bytes.subarray(0, n)).kind).toBe("need");
      }),
      { numRuns: 200 },
    );
  });

  test("TLS ClientHellos and HTTP request lines never look like a header; headers always do", () => {
    const notHeader = fc.oneof(
      fc
        .uint8Array({ minLength: 5, maxLength: 64 })
        .map((b) => Buffer.concat([Buffer.from([0x16, 0x03, 0x01]), b])),
      fc
        .constantFrom("GET", "POST", "PUT", "PATCH", "PROPFIND", "HEAD", "OPTIONS", "PRI")
        .map((m) => Buffer.from(`${m} /pcoip-broker/xml HTTP/1.1\r\n`)),
    );
    fc.assert(
      fc.property(notHeader, (b) => {
        expect(looksLikeProxyHeader(b)).toBe(false);
      }),
      { numRuns: RUNS },
    );
    fc.assert(
      fc.property(header, (h) => {
        expect(looksLikeProxyHeader(h.bytes)).toBe(true);
        expect(looksLikeProxyHeader(h.bytes.subarray(0, 3))).toBe("need");
      }),
      { numRuns: RUNS },
    );
  });

  test("bounds: an endless v1 line and an oversized v2 length are refused at the bound", () => {
    expect(parseProxyHeader(Buffer.from(`PROXY TCP4 ${"1".repeat(200)}`)).kind).toBe("refused");
    expect(parseProxyHeader(Buffer.from(`PROXY TCP4 ${"1".repeat(95)}`)).kind).toBe("need");
    const big = Buffer.from(buildProxyV2().subarray(0, 16));
    big.writeUInt16BE(MAX_V2_BYTES, 14);
    expect(parseProxyHeader(big).kind).toBe("refused");
  });
});
