// Claim: every parser a stranger can feed stays linear in its input — parsing 64 KiB costs at most 32× parsing
// 4 KiB of the same shape (a fixed corpus; 16× would be exactly linear, the rest is headroom for a shared machine):
// the front door's request head and chunked decoder (whole, and fed in pieces the way http1.ts feeds them), the
// agent protocol's two documents, and the SG's ClientHello reader (whole, and fed the way tcp-relay.ts feeds it).
// The broker protocol's documents are measured in protocol-fuzz.test.ts.
import { describe, expect, test } from "bun:test";
import {
  ChunkedDecoder,
  DEFAULT_LIMITS,
  type Http1Limits,
  newHeadScan,
  parseRequestHead,
} from "../../src/net/http1-parse.ts";
import {
  buildLaunchSession,
  buildLaunchSessionResp,
  parseLaunchSession,
  parseLaunchSessionResp,
} from "../../src/protocol/agent.ts";
import { newHelloWalk, parseClientHello } from "../../src/sg/client-hello.ts";
import { expectRatioAtMost } from "../peers/linearity.ts";

const SMALL = 4 * 1024;
const LARGE = 64 * 1024;
const MAX_RATIO = 32;

/** Times `run(make(4 KiB))` and `run(make(64 KiB))`; the large one may cost at most 32× the small one. */
function expectLinear<T>(make: (bytes: number) => T, run: (input: T) => unknown, rounds = 7): void {
  const small = make(SMALL);
  const large = make(LARGE);
  run(small);
  run(large); // warm both paths before timing
  expectRatioAtMost(
    () => run(small),
    () => run(large),
    MAX_RATIO,
    { rounds },
  );
}

const enc = (s: string) => Buffer.from(s, "latin1");

/** Repeats `unit` between `head` and `tail` to `bytes` (at least once). */
function fill(head: string, unit: string, tail: string, bytes: number): string {
  const n = Math.floor((bytes - head.length - tail.length) / unit.length);
  return head + unit.repeat(Math.max(1, n)) + tail;
}

// ---- front door ---------------------------------------------------------------------------------------------

/** Limits wide enough that a 64 KiB head is parsed, not refused for its size. */
const WIDE: Http1Limits = {
  ...DEFAULT_LIMITS,
  maxRequestLineBytes: 1 << 20,
  maxHeaderBytes: 1 << 20,
  maxHeaderCount: 1 << 20,
};

const REQUEST_LINE = "POST /pcoip-broker/xml HTTP/1.1\r\n";
const HEAD_SHAPES: [string, (bytes: number) => Uint8Array, string][] = [
  ["many short headers", (b) => enc(fill(REQUEST_LINE, "X-A: b\r\n", "\r\n", b)), "head"],
  ["many headers, bare LF", (b) => enc(fill("POST / HTTP/1.1\n", "X-A: b\n", "\n", b)), "head"],
  ["one long header value", (b) => enc(fill(`${REQUEST_LINE}Cookie: `, "a=b; ", "\r\n\r\n", b)), "head"],
  ["one long request target", (b) => enc(fill("GET /", "abcdefgh/", " HTTP/1.1\r\n\r\n", b)), "head"],
  [
    "many Content-Length headers (all equal)",
    (b) => enc(fill(REQUEST_LINE, "Content-Length: 5\r\n", "\r\n", b)),
    "head",
  ],
  [
    "many Transfer-Encoding headers",
    (b) => enc(fill(REQUEST_LINE, "Transfer-Encoding: chunked\r\n", "\r\n", b)),
    "refused",
  ],
  ["blank lines before the request", (b) => enc(fill("", "\r\n", "GET / HTTP/1.1\r\n\r\n", b)), "head"],
  ["lone CRs in a header value", (b) => enc(fill(`${REQUEST_LINE}X-A: `, "a\rb ", "\r\n\r\n", b)), "refused"],
  [
    "an obsolete folded line at the end",
    (b) => enc(fill(REQUEST_LINE, "X-A: b\r\n", " folded\r\n\r\n", b)),
    "refused",
  ],
  ["no blank line yet (need)", (b) => enc(fill(REQUEST_LINE, "X-A: b\r\n", "", b)), "need"],
];

describe("front door: parseRequestHead on a whole buffer", () => {
  for (const [shape, make, kind] of HEAD_SHAPES) {
    test(`${shape}: 64 KiB ≤ 32× 4 KiB`, () => {
      expect(parseRequestHead(make(SMALL), WIDE).kind).toBe(kind as "head");
      expect(parseRequestHead(make(LARGE), WIDE).kind).toBe(kind as "head");
      expectLinear(make, (buf) => parseRequestHead(buf, WIDE));
    });
  }
});

/**
 * How http1.ts feeds the parser: every socket read is appended in place (its store grows by doubling, so the
 * copies add up to a constant per byte; one store of the final size stands for that here) and the head is parsed
 * again with the connection's HeadScan.
 */
function feedHead(bytes: Uint8Array, piece: number): string {
  const store = Buffer.allocUnsafe(bytes.length);
  const scan = newHeadScan();
  for (let at = 0; at < bytes.length; at += piece) {
    const n = Math.min(piece, bytes.length - at);
    store.set(bytes.subarray(at, at + n), at);
    const r = parseRequestHead(store.subarray(0, at + n), WIDE, scan);
    if (r.kind !== "need") return r.kind;
  }
  return "need";
}

describe("front door: a head arriving in 256-byte reads (http1.ts's append-and-reparse)", () => {
  // http1.ts hands the parser a HeadScan, so a head that trickles in is searched once in all (it was O(n²)).
  test("many short headers: 64 KiB ≤ 32× 4 KiB when fed in pieces", () => {
    expectLinear(
      (b) => enc(fill(REQUEST_LINE, "X-A: b\r\n", "\r\n", b)),
      (buf) => feedHead(buf, 256),
      3,
    );
  });

  test("within the default limits the worst case (one byte per read, 16 KiB head) stays under 2 s of CPU (regression guard)", () => {
    // The bound the quadratic cost above is held to today: the default limits cap the head at 24 KiB.
    const head = enc(
      fill(`${REQUEST_LINE}Cookie: `, "a=b; ", "\r\n\r\n", DEFAULT_LIMITS.maxHeaderBytes - 64),
    );
    const t0 = performance.now();
    let buf = Buffer.alloc(0);
    let kind = "need";
    for (let at = 0; at < head.length && kind === "need"; at++) {
      buf = Buffer.concat([buf, head.subarray(at, at + 1)]);
      kind = parseRequestHead(buf, DEFAULT_LIMITS).kind;
    }
    expect(kind).toBe("head");
    const ms = performance.now() - t0;
    if (ms > 100) console.log(`one byte per read, ${head.length} bytes: ${ms.toFixed(0)} ms`);
    expect(ms).toBeLessThan(2000);
  });
});

describe("front door: ChunkedDecoder", () => {
  const chunked = (size: number, data: number) => (bytes: number) => {
    const unit = `${size.toString(16)}\r\n${"x".repeat(size)}\r\n`;
    void data;
    return enc(fill("", unit, "0\r\n\r\n", bytes));
  };
  const shapes: [string, (bytes: number) => Uint8Array][] = [
    ["one-byte chunks", chunked(1, 1)],
    ["16-byte chunks", chunked(16, 16)],
    ["one big chunk", (b) => enc(`${(b - 12).toString(16)}\r\n${"x".repeat(b - 12)}\r\n0\r\n\r\n`)],
    ["chunk extensions", (b) => enc(fill("", "1;name=value;x=y\r\nx\r\n", "0\r\n\r\n", b))],
  ];
  for (const [shape, make] of shapes) {
    test(`${shape}, pushed whole and in 7-byte pieces: 64 KiB ≤ 32× 4 KiB`, () => {
      const decodeWhole = (buf: Uint8Array) => {
        const d = new ChunkedDecoder(1 << 20);
        const used = d.push(buf);
        return typeof used === "number" && d.done;
      };
      const decodePieces = (buf: Uint8Array) => {
        const d = new ChunkedDecoder(1 << 20);
        for (let at = 0; at < buf.length; at += 7) {
          const used = d.push(buf.subarray(at, at + 7));
          if (typeof used !== "number") return false;
        }
        return d.done;
      };
      expect(decodeWhole(make(LARGE))).toBe(true);
      expect(decodePieces(make(LARGE))).toBe(true);
      expectLinear(make, decodeWhole);
      expectLinear(make, decodePieces);
    });
  }

  test("an endless body is refused at the limit after reading no more than the limit", () => {
    const d = new ChunkedDecoder(DEFAULT_LIMITS.maxBodyBytes);
    const piece = enc(`400\r\n${"x".repeat(1024)}\r\n`);
    let fed = 0;
    let refused: unknown;
    for (let i = 0; i < 1000 && refused === undefined; i++) {
      const used = d.push(piece);
      fed += piece.length;
      if (typeof used !== "number") refused = used;
    }
    expect(refused).toEqual({ status: 413, reason: "request body too large" });
    expect(fed).toBeLessThan(DEFAULT_LIMITS.maxBodyBytes + 2 * piece.length);
  });
});

// ---- agent protocol -----------------------------------------------------------------------------------------

const AGENT_HEAD =
  "<?xml version='1.0' encoding='UTF-8'?><pcoip-agent version='1.0'><launch-session-resp><result-id>SUCCESSFUL</result-id>";
const AGENT_SI_HEAD = `${AGENT_HEAD}<session-info><ip-address>10.0.0.7</ip-address><sni>ws-7</sni><port>4172</port><session-id>2305843009213693957</session-id><session-tag>`;
const AGENT_SI_TAIL = "</session-tag></session-info></launch-session-resp></pcoip-agent>";
const LAUNCH_HEAD =
  "<pcoip-agent version='1.0'><launch-session><session-type>UNSPECIFIED</session-type><logon method='windows-password'><username>alice</username><password>";
const LAUNCH_TAIL =
  "</password><domain>corp</domain></logon><client-ip>198.51.100.7</client-ip></launch-session></pcoip-agent>";

const AGENT_SHAPES: [string, (bytes: number) => string, (xml: string) => { ok: boolean }, boolean][] = [
  [
    "long session-tag (base64)",
    (b) => fill(AGENT_SI_HEAD, "SCS1abc+/=", AGENT_SI_TAIL, b),
    parseLaunchSessionResp,
    true,
  ],
  [
    "long fail-reason full of references",
    (b) =>
      fill(
        "<pcoip-agent version='1.0'><launch-session-resp><result-id>FAILED_USER_AUTH</result-id><fail-reason>",
        "a&amp;&lt;&#x41;&#66; ",
        "</fail-reason></launch-session-resp></pcoip-agent>",
        b,
      ),
    parseLaunchSessionResp,
    true,
  ],
  [
    "many unknown elements in session-info",
    (b) =>
      fill(
        `${AGENT_SI_HEAD}SCS1</session-tag>`,
        "<x-extra a='1'>v</x-extra>",
        "</session-info></launch-session-resp></pcoip-agent>",
        b,
      ),
    parseLaunchSessionResp,
    true,
  ],
  [
    "many repeated result-id elements",
    (b) => fill(AGENT_HEAD, "<result-id>SUCCESSFUL</result-id>", "</launch-session-resp></pcoip-agent>", b),
    parseLaunchSessionResp,
    true,
  ],
  [
    "deep nesting inside the answer",
    (b) => {
      const n = Math.floor((b - AGENT_HEAD.length - 60) / "<n-e></n-e>".length);
      return `${AGENT_HEAD}${"<n-e>".repeat(n)}${"</n-e>".repeat(n)}</launch-session-resp></pcoip-agent>`;
    },
    parseLaunchSessionResp,
    false, // refused by the depth limit, as cheaply at 64 KiB as at 4 KiB
  ],
  [
    "comments and CDATA between elements",
    (b) => fill(AGENT_HEAD, "<!-- c --><![CDATA[x]]>", "</launch-session-resp></pcoip-agent>", b),
    parseLaunchSessionResp,
    true,
  ],
  [
    "a truncated answer (no close tags)",
    (b) => fill(AGENT_SI_HEAD, "SCS1abc+/=", "", b),
    parseLaunchSessionResp,
    false,
  ],
  [
    "launch-session with a long password",
    (b) => fill(LAUNCH_HEAD, "p&amp;&quot;x ", LAUNCH_TAIL, b),
    parseLaunchSession,
    true,
  ],
];

describe("agent protocol documents", () => {
  for (const [shape, make, parse, ok] of AGENT_SHAPES) {
    test(`${shape}: 64 KiB ≤ 32× 4 KiB, same outcome`, () => {
      const small = make(SMALL);
      const large = make(LARGE - 16);
      expect(Buffer.byteLength(large)).toBeLessThanOrEqual(LARGE);
      expect(parse(small).ok).toBe(ok);
      expect(parse(large).ok).toBe(ok);
      expectLinear((b) => make(b === LARGE ? b - 16 : b), parse);
    });
  }

  test("the builders are linear too (what the CM writes and the fake agent answers)", () => {
    const ls = (b: number) => ({
      sessionType: "UNSPECIFIED",
      ipAddress: "10.0.0.7",
      hostname: "ws-7",
      logon: { method: "windows-password", username: "alice", password: "<&>".repeat(b / 3), domain: "corp" },
      clientMac: "",
      clientIp: "198.51.100.7",
      clientName: "laptop",
      licensePath: "",
      sessionLogId: "5b1e0c40-1f2a-41ee-9c1d-000000000000",
    });
    expectLinear(ls, buildLaunchSession);
    expectLinear(
      (b) => ({ resultId: "FAILED_USER_AUTH", failReason: "<&>".repeat(b / 3) }),
      buildLaunchSessionResp,
    );
  });
});

// ---- ClientHello --------------------------------------------------------------------------------------------

const u16 = (n: number) => [(n >> 8) & 0xff, n & 0xff];
const u24 = (n: number) => [(n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff];

/** A ClientHello handshake message whose extensions block is `ext`, SNI last (after everything else). */
function helloWith(ext: number[], sni = "agent-7.corp.example"): Uint8Array {
  const host = [...sni].map((c) => c.charCodeAt(0));
  const sniExt = [0, 0, ...u16(host.length + 5), ...u16(host.length + 3), 0, ...u16(host.length), ...host];
  const all = [...ext, ...sniExt];
  const body = [
    3,
    3,
    ...new Array(32).fill(0x11),
    0,
    ...u16(2),
    0x13,
    0x01,
    1,
    0,
    ...u16(all.length),
    ...all,
  ];
  return new Uint8Array([1, ...u24(body.length), ...body]);
}

/** Wraps a handshake message in records of at most `size` bytes of fragment. */
function inRecords(hs: Uint8Array, size: number): Uint8Array {
  const out: number[] = [];
  for (let at = 0; at < hs.length; at += size) {
    const frag = hs.subarray(at, Math.min(hs.length, at + size));
    out.push(0x16, 3, 1, ...u16(frag.length), ...frag);
  }
  return new Uint8Array(out);
}

/** Total record bytes close to `bytes` for a hello made of `extUnit`s split in `recordSize` records. */
function helloOfSize(bytes: number, extUnit: number[], recordSize: number): Uint8Array {
  const perRecord = (recordSize + 5) / recordSize;
  const n = Math.max(1, Math.floor((bytes / perRecord - 80) / extUnit.length));
  const ext: number[] = [];
  for (let i = 0; i < n; i++) ext.push(...extUnit);
  return inRecords(helloWith(ext), recordSize);
}

// A padding extension (type 21) of 1 byte, and of 0 bytes: the smallest repeating units a hello can carry.
const PAD1 = [0, 21, 0, 1, 0];
const PAD0 = [0, 21, 0, 0];
const PEEK = 1 << 20;

/** How tcp-relay.ts feeds the parser: parse again only once the `need` it asked for has arrived. */
/** How tcp-relay.ts feeds the reader: again each time `need` is met, with the connection's HelloWalk. */
function feedHello(bytes: Uint8Array, piece: number): string {
  let want = 1;
  const walk = newHelloWalk();
  for (let len = Math.min(piece, bytes.length); ; len = Math.min(len + piece, bytes.length)) {
    if (len >= want) {
      const r = parseClientHello(bytes.subarray(0, len), PEEK, walk);
      if (r.kind !== "need") return r.kind === "hello" ? `hello:${r.sni}` : `invalid:${r.invalid}`;
      want = len + r.need;
    }
    if (len === bytes.length) return "need";
  }
}

describe("SG ClientHello reader", () => {
  const shapes: [string, (bytes: number) => Uint8Array][] = [
    ["many 1-byte extensions, 16 KiB records", (b) => helloOfSize(b, PAD1, 16_384)],
    ["many empty extensions, 16 KiB records", (b) => helloOfSize(b, PAD0, 16_384)],
    ["one extension per 64-byte record", (b) => helloOfSize(b, PAD1, 64)],
  ];
  for (const [shape, make] of shapes) {
    test(`${shape}, whole: 64 KiB ≤ 32× 4 KiB, SNI found`, () => {
      expect(parseClientHello(make(SMALL), PEEK)).toEqual({ kind: "hello", sni: "agent-7.corp.example" });
      expect(parseClientHello(make(LARGE), PEEK)).toEqual({ kind: "hello", sni: "agent-7.corp.example" });
      expectLinear(make, (b) => parseClientHello(b, PEEK));
    });
  }

  test("16 KiB records fed 1 KiB at a time (the relay's need-driven re-parse): 64 KiB ≤ 32× 4 KiB", () => {
    const make = (b: number) => helloOfSize(b, PAD1, 16_384);
    expect(feedHello(make(LARGE), 1024)).toBe("hello:agent-7.corp.example");
    expectLinear(make, (b) => feedHello(b, 1024));
  });

  // The relay keeps the record walk between calls (HelloWalk), so many small records cost linear time.
  test("64-byte records fed as they arrive: 64 KiB ≤ 32× 4 KiB", () => {
    const make = (b: number) => helloOfSize(b, PAD1, 64);
    expectLinear(make, (b) => feedHello(b, 69), 3);
  });

  // One-byte records, the worst split a 16 KiB peek can hold (~2,700 records): a hang guard, not a speed target
  // (the linearity ratio above is what fails when the walk turns quadratic again).
  test("within the 16 KiB peek limit the worst record split stays under 500 ms per connection (regression guard)", () => {
    expect(worstSplitMs()).toBeLessThan(500);
  });
});

/** Time to read a 16 KiB hello made of one-byte records, fed record by record as the relay does. */
function worstSplitMs(): number {
  {
    // One-byte records: the most records a 16 KiB peek can hold (each 6 bytes on the wire).
    const hs = helloWith(new Array(Math.floor(16_384 / 6 / 5) - 20).fill(PAD1).flat());
    const wire = inRecords(hs, 1);
    expect(wire.length).toBeLessThanOrEqual(16_384);
    const t0 = performance.now();
    expect(feedHello(wire, 6)).toBe("hello:agent-7.corp.example");
    return performance.now() - t0;
  }
}
