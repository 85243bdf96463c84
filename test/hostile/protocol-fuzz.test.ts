// Claim: no input makes a protocol parser throw — arbitrary strings, markup soup and mutated real documents all
// come back as a message or a typed error; what parses re-encodes to the same typed value; parsing cost grows
// linearly with size (a 64 KiB document costs at most 32× a 4 KiB one of the same shape); refusals are cheap.
import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import {
  buildLaunchSession,
  buildLaunchSessionResp,
  parseLaunchSession,
  parseLaunchSessionResp,
} from "../../src/protocol/agent.ts";
import {
  buildAllocateResourceResp,
  buildBrokerResponse,
  buildClientRequest,
  buildGetResourceListResp,
  buildHelloResp,
  parseBrokerResponse,
  parseClientRequest,
} from "../../src/protocol/broker.ts";
import { result } from "../../src/protocol/results.ts";
import type { ParseResult, ProtocolError } from "../../src/protocol/types.ts";
import { MAX_DOCUMENT_BYTES, parseXml } from "../../src/protocol/xml.ts";
import { expectRatioAtMost } from "../peers/linearity.ts";

const RUNS = 500;
const KINDS: readonly ProtocolError["kind"][] = [
  "too_large",
  "not_xml",
  "forbidden_markup",
  "wrong_root",
  "no_operation",
  "unknown_operation",
  "invalid_message",
];

// ---- seeds: real-shaped documents of every message ---------------------------------------------------------

const SEEDS: readonly string[] = [
  `<?xml version="1.0" encoding="UTF-8"?>
<pcoip-client version="2.1">
  <hello>
    <client-info><product-name>Teradici PCoIP Desktop Client</product-name><product-version>23.01.2</product-version>
      <platform>linux</platform><locale>en_US</locale><hostname>laptop-17</hostname>
      <serial-number>02:42:ac:11:00:02</serial-number><device-name>laptop-17</device-name>
      <pcoip-unique-id>02:42:ac:11:00:02</pcoip-unique-id></client-info>
    <caps><cap>CAP_NO_AUTHENTICATION</cap><cap>CAP_DIALOG_AUTHENTICATION</cap></caps>
    <server-address><ip-address>203.0.113.10</ip-address><hostname>cm.example.net</hostname></server-address>
  </hello>
</pcoip-client>`,
  `<pcoip-client version='2.1'><authenticate method='password'><username>alice</username><password>p&amp;&lt;ss</password><domain>corp</domain></authenticate></pcoip-client>`,
  `<pcoip-client version="2.1"><get-resource-list><protocols><protocol>PCOIP</protocol></protocols><resource-types><resource-type>DESKTOP</resource-type></resource-types></get-resource-list></pcoip-client>`,
  `<pcoip-client version="2.1"><allocate-resource><resource-id>0</resource-id><protocol>PCOIP</protocol><client-info><ip-address>::1</ip-address><mac-address>02:42:ac:11:00:02</mac-address></client-info></allocate-resource></pcoip-client>`,
  `<?xml version='1.0' encoding='utf-8'?>\n<pcoip-client version="2.1"><bye-resp /></pcoip-client>`,
  buildHelloResp({
    op: "hello-resp",
    brokers: [
      {
        productName: "B",
        productVersion: "1",
        platform: "linux",
        locale: "en_US",
        ipAddress: "N/A",
        hostname: "b",
      },
    ],
    pcm: { productName: "C", productVersion: "0.1", platform: "linux", ipAddress: "10.0.0.1", hostname: "c" },
    authenticationMethods: ["AUTHENTICATE_VIA_PASSWORD"],
    domains: ["corp.example"],
  }),
  buildGetResourceListResp({
    op: "get-resource-list-resp",
    result: result("LIST_SUCCESSFUL"),
    resources: [
      {
        resourceName: "CAD 3",
        resourceId: "ws-3",
        resourceType: "DESKTOP",
        sessionType: "VDI",
        resourceState: "UNKNOWN",
        protocols: [{ name: "PCOIP", isDefault: true }],
      },
    ],
  }),
  buildAllocateResourceResp({
    op: "allocate-resource-resp",
    result: result("ALLOC_SUCCESSFUL"),
    target: {
      ipAddress: "203.0.113.10",
      hostname: "ws-3",
      sni: "ws-3",
      port: 4172,
      sessionId: "2305843009213693957",
      connectTag: "SCS1abc+/=",
    },
    resourceId: "ws-3",
    protocol: "PCOIP",
  }),
  buildLaunchSession({
    sessionType: "UNSPECIFIED",
    ipAddress: "10.20.3.14",
    hostname: "ws-3",
    logon: { method: "windows-password", username: "alice", password: `<>&"'`, domain: "corp" },
    clientMac: "",
    clientIp: "198.51.100.77",
    clientName: "laptop",
    licensePath: "27000@lic",
    sessionLogId: "5b1e0c40-1f2a-11ee-9c1d-000000000000",
  }),
  buildLaunchSessionResp({
    resultId: "SUCCESSFUL",
    failReason: "",
    sessionInfo: { ipAddress: "10.20.3.14", sni: "ws-3", port: 4172, sessionId: "1", sessionTag: "SCS1x" },
  }),
];

// ---- generators ---------------------------------------------------------------------------------------------

const FRAGMENTS = [
  "<",
  ">",
  "/>",
  "</",
  "=",
  '"',
  "'",
  "&",
  ";",
  "&amp;",
  "&#",
  "&#x",
  "&lt;",
  "&#0;",
  "&#x110000;",
  "&xxe;",
  "<!--",
  "-->",
  "<![CDATA[",
  "]]>",
  "<?xml version='1.0'?>",
  "<?pi x?>",
  "<!DOCTYPE x>",
  "<!ENTITY e 'x'>",
  "pcoip-client",
  "pcoip-broker",
  "pcoip-agent",
  " version='2.1'",
  "<hello>",
  "</hello>",
  "<bye/>",
  "<result-id>",
  "</result-id>",
  "<port>",
  "4172",
  "</port>",
  "<target>",
  "__proto__",
  "constructor",
  "hasOwnProperty",
  "toString",
  " ",
  "\n",
  "\r",
  "\t",
  "\u0000",
  "\uFEFF",
  "\uD800",
  "é",
  "😀",
  "x:y",
  " a=",
  " a='1' a='2'",
];

const markupSoup = fc
  .array(fc.oneof(fc.constantFrom(...FRAGMENTS), fc.string({ maxLength: 8 })), { maxLength: 60 })
  .map((parts) => parts.join(""));

const mutation = fc.record({
  at: fc.nat(),
  cut: fc.nat({ max: 24 }),
  insert: fc.oneof(
    fc.constantFrom(...FRAGMENTS, ""),
    markupSoup,
    fc.string({ unit: "binary", maxLength: 12 }),
  ),
});

const mutatedSeed = fc
  .tuple(fc.constantFrom(...SEEDS), fc.array(mutation, { minLength: 1, maxLength: 4 }))
  .map(([seed, edits]) =>
    edits.reduce((doc, { at, cut, insert }) => {
      const i = doc.length === 0 ? 0 : at % (doc.length + 1);
      return doc.slice(0, i) + insert + doc.slice(i + cut);
    }, seed),
  );

/** A seed with one text slot replaced by an arbitrary, escaped value: stays well-formed, exercises round trips. */
const valueEdited = fc
  .tuple(fc.constantFrom(...SEEDS), fc.nat(), fc.string({ unit: "binary", maxLength: 40 }))
  .map(([seed, k, value]) => {
    const slots = [...seed.matchAll(/>([^<>]+)</g)];
    const slot = slots[k % Math.max(1, slots.length)];
    if (!slot) return seed;
    const start = slot.index + 1;
    const escaped = value.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
    return seed.slice(0, start) + escaped + seed.slice(start + slot[1]!.length);
  });

const anyInput = fc.oneof(
  fc.string({ unit: "binary", maxLength: 300 }),
  markupSoup,
  mutatedSeed,
  mutatedSeed,
);

// ---- the property -------------------------------------------------------------------------------------------

function wellFormedResult(r: ParseResult<unknown>): void {
  if (r.ok) {
    expect(typeof r.msg).toBe("object");
  } else {
    expect(KINDS).toContain(r.error.kind);
    expect(typeof r.error.detail).toBe("string");
  }
}

function withoutNode(m: object): object {
  const { node: _node, ...rest } = m as { node?: unknown };
  return rest;
}

/** Every parser on one input: no throw, a typed result, and a parsed message survives build → parse. */
function checkAll(input: string): void {
  wellFormedResult(parseXml(input));

  const req = parseClientRequest(input, { roots: ["pcoip-client", "pcoip-broker"] });
  wellFormedResult(req);
  if (req.ok) {
    const again = parseClientRequest(buildClientRequest(req.msg, "pcoip-client"));
    expect(again.ok).toBe(true);
    if (again.ok) expect(withoutNode(again.msg)).toEqual(withoutNode(req.msg));
  }

  const resp = parseBrokerResponse(input);
  wellFormedResult(resp);
  if (resp.ok) {
    const again = parseBrokerResponse(buildBrokerResponse(resp.msg));
    expect(again.ok).toBe(true);
    if (again.ok) expect(withoutNode(again.msg)).toEqual(withoutNode(resp.msg));
  }

  const ls = parseLaunchSession(input);
  wellFormedResult(ls);
  if (ls.ok) expect(parseLaunchSession(buildLaunchSession(ls.msg))).toEqual(ls);

  const lsr = parseLaunchSessionResp(input);
  wellFormedResult(lsr);
  if (lsr.ok) expect(parseLaunchSessionResp(buildLaunchSessionResp(lsr.msg))).toEqual(lsr);
}

describe("no input makes a parser throw", () => {
  test("the seeds themselves parse (so mutations start from real documents)", () => {
    for (const seed of SEEDS) {
      const parsed = [
        parseClientRequest(seed),
        parseBrokerResponse(seed),
        parseLaunchSession(seed),
        parseLaunchSessionResp(seed),
      ];
      expect(parsed.filter((r) => r.ok).length).toBe(1);
      checkAll(seed);
    }
  });

  test(`${RUNS} arbitrary strings, markup soups and mutated documents`, () => {
    fc.assert(fc.property(anyInput, checkAll), { numRuns: RUNS });
  });

  test(`${RUNS} mutated documents`, () => {
    fc.assert(fc.property(mutatedSeed, checkAll), { numRuns: RUNS });
  });

  test(`${RUNS} documents with arbitrary values in their texts parse and round-trip`, () => {
    let parsed = 0;
    fc.assert(
      fc.property(valueEdited, (doc) => {
        checkAll(doc);
        const all = [
          parseClientRequest(doc),
          parseBrokerResponse(doc),
          parseLaunchSession(doc),
          parseLaunchSessionResp(doc),
        ];
        if (all.some((r) => r.ok)) parsed++;
      }),
      { numRuns: RUNS },
    );
    // Most slots take any value; only result-id, port and the like refuse some.
    expect(parsed).toBeGreaterThan(RUNS / 2);
  });
});

// ---- cost grows linearly ------------------------------------------------------------------------------------

/** Repeats `unit` between `head` and `tail` to as close to `bytes` as fits. */
function fill(head: string, unit: string, tail: string, bytes: number): string {
  const n = Math.floor((bytes - head.length - tail.length) / unit.length);
  return head + unit.repeat(Math.max(1, n)) + tail;
}

const RESOURCE = `<resource><resource-name>CAD workstation</resource-name><resource-id>ws-0003</resource-id><resource-type session-type="VDI">DESKTOP</resource-type><resource-state>UNKNOWN</resource-state><protocols><protocol is-default="true">PCOIP</protocol></protocols></resource>`;
const LIST_HEAD = `<?xml version="1.0" encoding="UTF-8"?>\n<pcoip-client version="2.1"><get-resource-list-resp><result><result-id>LIST_SUCCESSFUL</result-id><result-str>ok</result-str></result>`;
const LIST_TAIL = "</get-resource-list-resp></pcoip-client>";
const AUTH_HEAD =
  "<pcoip-client version='2.1'><authenticate method='password'><username>a</username><password>";
const AUTH_TAIL = "</password><domain/></authenticate></pcoip-client>";

const SHAPES: [string, (bytes: number) => string, (xml: string) => ParseResult<unknown>][] = [
  ["resource list", (b) => fill(LIST_HEAD, RESOURCE, LIST_TAIL, b), parseBrokerResponse],
  [
    "long password full of references",
    (b) => fill(AUTH_HEAD, "x&amp;&lt;&#x41;&#66;", AUTH_TAIL, b),
    parseClientRequest,
  ],
  ["long plain text", (b) => fill(AUTH_HEAD, "abcdefgh ", AUTH_TAIL, b), parseClientRequest],
  ["CDATA sections", (b) => fill(AUTH_HEAD, "<![CDATA[<&>]]>", AUTH_TAIL, b), parseClientRequest],
  [
    "comments between elements",
    (b) => fill(LIST_HEAD, "<!-- a comment -->\n  ", LIST_TAIL, b),
    parseBrokerResponse,
  ],
  [
    "unknown elements",
    (b) => fill("<pcoip-client version='2.1'><bye>", "<x-e a='1'>v</x-e>", "</bye></pcoip-client>", b),
    parseClientRequest,
  ],
  [
    "nested unknown elements",
    (b) =>
      fill(
        "<pcoip-client version='2.1'><bye>",
        `${"<nested-element>".repeat(20)}${"</nested-element>".repeat(20)}`,
        "</bye></pcoip-client>",
        b,
      ),
    parseClientRequest,
  ],
  [
    "many attributes",
    (b) => {
      const head = "<pcoip-client version='2.1'><bye";
      const tail = "/></pcoip-client>";
      const n = Math.floor((b - head.length - tail.length) / 11); // ` a0000='xy'` is 11 characters
      return (
        head +
        Array.from({ length: n }, (_, i) => ` a${i.toString(36).padStart(4, "0")}='xy'`).join("") +
        tail
      );
    },
    parseClientRequest,
  ],
  [
    "mismatched close tag at the very end",
    (b) => fill(LIST_HEAD, RESOURCE, "</get-resource-list-resp></pcoip-clientX>", b),
    parseBrokerResponse,
  ],
  [
    "depth bomb",
    (b) => {
      const levels = Math.floor(b / "<deep-element></deep-element>".length);
      return "<deep-element>".repeat(levels) + "</deep-element>".repeat(levels);
    },
    parseClientRequest,
  ],
  [
    "unclosed attribute quote",
    (b) => {
      const head = "<pcoip-client version='2.1'><bye a='";
      const tail = "/></pcoip-client>";
      return head + "x".repeat(b - head.length - tail.length) + tail;
    },
    parseClientRequest,
  ],
];

describe("parsing cost is linear in size", () => {
  for (const [shape, make, parse] of SHAPES) {
    test(`${shape}: 64 KiB costs at most 32× 4 KiB`, () => {
      const small = make(4096);
      const large = make(MAX_DOCUMENT_BYTES);
      expect(Buffer.byteLength(large)).toBeLessThanOrEqual(MAX_DOCUMENT_BYTES);
      expect(Buffer.byteLength(large)).toBeGreaterThan(MAX_DOCUMENT_BYTES - 1024);
      // Same shape, same outcome: the large one is not refused for its size.
      const s = parse(small);
      const l = parse(large);
      expect(l.ok ? "ok" : l.error.kind).toBe(s.ok ? "ok" : s.error.kind);
      expectRatioAtMost(
        () => parse(small),
        () => parse(large),
        32,
        { rounds: 9 },
      );
    });
  }
});

describe("refusals cost less than parsing", () => {
  const reference = fill(LIST_HEAD, RESOURCE, LIST_TAIL, 4096);
  const refused: [string, string, ProtocolError["kind"]][] = [
    [
      "billion laughs",
      `<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "${"x".repeat(1000)}">${Array.from({ length: 9 }, (_, i) => `<!ENTITY ${"b".repeat(i + 1)} "${"&a;".repeat(50)}">`).join("")}]><l>${"&bbbbbbbbb;".repeat(4000)}</l>`,
      "forbidden_markup",
    ],
    [
      "XXE",
      `<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><pcoip-client version="2.1"><bye>&e;</bye></pcoip-client>`,
      "forbidden_markup",
    ],
    [
      "1 MiB body",
      `<pcoip-client version="2.1"><bye>${"x".repeat(1 << 20)}</bye></pcoip-client>`,
      "too_large",
    ],
  ];
  for (const [what, xml, kind] of refused) {
    test(`${what} is refused as ${kind} for less than a 4 KiB parse`, () => {
      const r = parseClientRequest(xml);
      expect(r.ok ? "ok" : r.error.kind).toBe(kind);
      // cost(refusal) / cost(4 KiB parse) ≤ 1.
      expectRatioAtMost(
        () => parseBrokerResponse(reference),
        () => parseClientRequest(xml),
        1,
        { rounds: 9, perRoundSmall: 8, perRoundLarge: 8 },
      );
    });
  }
});
