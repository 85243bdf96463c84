// Claim: the XML fast path (xml-fast.ts) gives exactly what the full path (scan, validator, fast-xml-parser)
// gives — the same tree with the same key order, or the same refusal — for any document; it is the path the
// documents of a login take; and its cost stays linear in the document's size up to its limit (the hostile
// suite's linearity checks time 4 KiB and 64 KiB documents, which both take the full path). Likewise the fast
// builder (xml-build-fast.ts) writes the very text fast-xml-parser's builder writes, for any tree.
import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import { HELLO_DOCUMENT } from "../../bench/lib/logins.ts";
import { buildLaunchSessionResp } from "../../src/protocol/agent.ts";
import { buildXml, isRepeated, parseXml } from "../../src/protocol/xml.ts";
import { fastBuildXml } from "../../src/protocol/xml-build-fast.ts";
import { FAST_MAX_CHARS, fastParseXml } from "../../src/protocol/xml-fast.ts";
import { minMicros } from "../peers/linearity.ts";

/** Both paths' answers as one order-sensitive string. */
const viaFast = (xml: string) => JSON.stringify(parseXml(xml));
const viaFull = (xml: string) => JSON.stringify(parseXml(xml, { fast: false }));

/** Mostly what the fast path reads, sometimes what it must hand over (or what must be refused). */
const mostly = <T>(plain: readonly T[], odd: readonly T[]): fc.Arbitrary<T> =>
  fc.oneof(
    { weight: 8, arbitrary: fc.constantFrom(...plain) },
    { weight: 1, arbitrary: fc.constantFrom(...odd) },
  );

const name = mostly(
  [
    "a",
    "b",
    "pcoip-client",
    "hello",
    "caps",
    "cap",
    "domains",
    "domain",
    "protocols",
    "protocol",
    "resource",
    "get-resource-list-resp",
    "resource-types",
    "resource-type",
    "authentication-methods",
    "method",
    "x.y",
    "_n",
  ],
  ["constructor", "__proto__", "hasOwnProperty", "toString", "a:b", "1a", "é"],
);
const attrName = mostly(["version", "method", "x", "is-default"], ["__proto__", "a:b", "1"]);
const textPiece = mostly(
  [
    "t",
    "alice",
    "0012",
    " ",
    "  x ",
    "\t",
    "&amp;",
    "&lt;",
    "&gt;",
    "&quot;",
    "&apos;",
    "&#65;",
    "&#x42;",
    "é",
  ],
  [
    "\n",
    "\r\n",
    "\r",
    "&#0;",
    "&#xD800;",
    "&nbsp;",
    "&",
    "<",
    ">",
    "]]>",
    '"',
    "'",
    "<!-- c -->",
    "<![CDATA[x<y]]>",
    "<?pi x?>",
  ],
);

const text = fc.array(textPiece, { maxLength: 3 }).map((a) => a.join(""));
const space = mostly(["", "", " ", "\n"], ["\t", "\r\n"]);
/** What stands between child elements: white space, sometimes text (mixed content). */
const gap = mostly(["", "", " ", "\n"], ["\t", "\r\n", "x", '"', "&amp;"]);
const attr = fc
  .tuple(attrName, text, fc.constantFrom('"', "'"), space, space)
  .map(([n, v, q, s1, s2]) => ` ${n}${s1}=${s2}${q}${v}${q}`);

type Gen = fc.Arbitrary<string>;
const element: (depth: number) => Gen = (depth) =>
  fc
    .tuple(
      name,
      fc.array(attr, { maxLength: 2 }),
      space,
      depth > 0
        ? fc.oneof(
            { weight: 2, arbitrary: text.map((t) => ({ kind: "text" as const, t })) },
            {
              weight: 3,
              arbitrary: fc
                .array(fc.tuple(gap, element(depth - 1)), { maxLength: 4 })
                .map((cs) => ({ kind: "children" as const, cs })),
            },
            { weight: 1, arbitrary: fc.constant({ kind: "empty" as const }) },
          )
        : fc.oneof(
            text.map((t) => ({ kind: "text" as const, t })),
            fc.constant({ kind: "empty" as const }),
          ),
      fc.boolean(),
    )
    .map(([name, attrs, sp, content, mixed]) => {
      const open = `<${name}${attrs.join("")}${sp}`;
      if (content.kind === "empty") return `${open}/>`;
      const inner =
        content.kind === "text" ? content.t : content.cs.map(([s, c]) => s + c).join("") + (mixed ? "x" : "");
      return `${open}>${inner}</${name}>`;
    });

const prolog = mostly(
  ["", '<?xml version="1.0" encoding="UTF-8"?>', "<?xml version='1.0' encoding='UTF-8'?>\n", "\n"],
  ["\uFEFF<?xml version='1.0'?>", "<?xml?>", "<?xml version=1.0?>", "<!DOCTYPE a>", "<!-- c -->"],
);
const tail = mostly(["", "\n"], [" x", "<b/>", "<!-- c -->", "</a>"]);
const document = fc.tuple(prolog, element(4), tail).map(([p, e, t]) => p + e + t);

/** A document with one markup character inserted, deleted or swapped: mostly not well-formed any more. */
const mutated = fc
  .tuple(document, fc.nat(), fc.constantFrom("<", ">", "/", '"', "'", "=", "&", " ", "", "a", "!", "?"))
  .map(([d, at, ch]) => {
    const i = d.length === 0 ? 0 : at % d.length;
    return at % 3 === 0 ? d.slice(0, i) + ch + d.slice(i) : d.slice(0, i) + ch + d.slice(i + 1);
  });

describe("fast path against fast-xml-parser", () => {
  test("generated documents: same tree (and key order) or same refusal", () => {
    fc.assert(
      fc.property(document, (d) => {
        expect(viaFast(d)).toBe(viaFull(d));
      }),
      { numRuns: 10000 },
    );
  });

  test("mutated documents: same tree or same refusal", () => {
    fc.assert(
      fc.property(mutated, (d) => {
        expect(viaFast(d)).toBe(viaFull(d));
      }),
      { numRuns: 10000 },
    );
  });

  test("the generated documents exercise the fast path (the property above is not vacuous)", () => {
    const sample = fc.sample(document, 2000);
    const taken = sample.filter((d) => fastParseXml(d, isRepeated) !== undefined).length;
    expect(taken).toBeGreaterThan(500);
  });
});

describe("the documents of a login take the fast path", () => {
  const doc = (inner: string) =>
    `<?xml version='1.0' encoding='UTF-8'?><pcoip-client version='2.1'>${inner}</pcoip-client>`;
  const login = [
    HELLO_DOCUMENT,
    doc(
      "<authenticate method='password'><username>alice</username><password>p&amp;ss 0012 </password><domain>corp</domain></authenticate>",
    ),
    doc(
      "<get-resource-list><protocols><protocol>PCOIP</protocol></protocols><resource-types><resource-type>DESKTOP</resource-type></resource-types></get-resource-list>",
    ),
    doc(
      "<allocate-resource><resource-id>0</resource-id><protocol>PCOIP</protocol><client-info><ip-address>192.168.1.23</ip-address><mac-address>02:42:ac:11:00:02</mac-address></client-info></allocate-resource>",
    ),
    doc("<bye/>"),
    doc("<bye />"),
    buildLaunchSessionResp({
      resultId: "SUCCESSFUL",
      failReason: "",
      sessionInfo: {
        ipAddress: "10.0.0.5",
        sni: "desktop-1.test",
        port: 4172,
        sessionId: "2305843009213693957",
        sessionTag: "SCS1+abc/def==",
      },
    }),
  ];
  for (const d of login) {
    test(
      d.slice(d.indexOf("version='2.1'>") + 14, d.indexOf("version='2.1'>") + 40) || d.slice(0, 40),
      () => {
        const fast = fastParseXml(d, isRepeated);
        expect(fast).toBeDefined();
        expect(JSON.stringify({ ok: true, msg: fast })).toBe(viaFull(d));
      },
    );
  }
});

describe("the fast path stays linear (its own inputs: 128 bytes to its limit)", () => {
  const fill = (head: string, unit: string, tail: string, chars: number) =>
    head + unit.repeat(Math.max(1, Math.floor((chars - head.length - tail.length) / unit.length))) + tail;
  const shapes: [string, (chars: number) => string][] = [
    ["many sibling elements", (c) => fill("<a>", "<b>t</b>", "</a>", c)],
    ["many repeated list items", (c) => fill("<caps>", "<cap>X</cap>", "</caps>", c)],
    ["long text full of references", (c) => fill("<a><p>", "&amp;&#65;x", "</p></a>", c)],
    [
      "many attributes",
      (c) => {
        const n = Math.max(1, Math.floor((c - 5) / 12));
        return `<a${Array.from({ length: n }, (_, k) => ` x${String(k).padStart(6, "0")}="1"`).join("")}/>`;
      },
    ],
    [
      "nesting to the depth limit, then siblings",
      (c) => fill(`${"<d>".repeat(15)}`, "<e/>", "</d>".repeat(15), c),
    ],
  ];
  for (const [what, make] of shapes) {
    test(what, () => {
      const small = make(128);
      const large = make(FAST_MAX_CHARS);
      expect(fastParseXml(small, isRepeated)).toBeDefined();
      expect(fastParseXml(large, isRepeated)).toBeDefined();
      const factor = large.length / small.length;
      const tSmall = minMicros(() => fastParseXml(small, isRepeated), 7, 64);
      const tLarge = minMicros(() => fastParseXml(large, isRepeated), 7, 4);
      // Three times linear is the headroom for this shared 2-core machine (quadratic would be 16×).
      expect(tLarge / tSmall).toBeLessThanOrEqual(3 * factor);
    });
  }
});

describe("fast builder against fast-xml-parser's builder", () => {
  const key = mostly(
    ["a", "b", "result-id", "cap", "#text", "@_version", "@_method", "@_is-default"],
    ["@_", "@_1x", "1x", "a b", "", "x<y", "__proto__", "@___proto__", "é", "a:b", "#comment"],
  );
  const textValue = fc.oneof(
    { weight: 6, arbitrary: text },
    { weight: 1, arbitrary: fc.string() },
    { weight: 1, arbitrary: fc.constantFrom("", "true", "0012", "a\r\nb", "]]>", "x & y < z > \"q\" 'a'") },
  );
  const leafValue = fc.oneof(
    { weight: 8, arbitrary: textValue },
    { weight: 1, arbitrary: fc.integer() },
    { weight: 1, arbitrary: fc.boolean() },
    { weight: 1, arbitrary: fc.constantFrom(null, undefined) },
  );
  const tree: fc.Memo<unknown> = fc.memo((n) =>
    n <= 0
      ? leafValue
      : fc.oneof(
          { weight: 3, arbitrary: leafValue },
          { weight: 3, arbitrary: fc.dictionary(key, tree(n - 1), { maxKeys: 5 }) },
          { weight: 1, arbitrary: fc.array(tree(n - 1), { maxLength: 3 }) },
        ),
  );
  const rootTree = fc.dictionary(key, tree(4), { maxKeys: 6 });

  /** The text, or that it threw (the library's builder throws on some trees no code of ours makes). */
  const outcome = (f: () => string) => {
    try {
      return f();
    } catch {
      return "(threw)";
    }
  };

  test("generated trees: the same text, or the full builder when the fast one declines", () => {
    fc.assert(
      fc.property(rootTree, (t) => {
        expect(outcome(() => buildXml("pcoip-client", t as never))).toBe(
          outcome(() => buildXml("pcoip-client", t as never, { fast: false })),
        );
      }),
      { numRuns: 5000 },
    );
  });

  test("the fast builder writes most generated trees itself (the property above is not vacuous)", () => {
    const taken = fc.sample(rootTree, 1000).filter((t) => fastBuildXml("r", t as never) !== undefined).length;
    expect(taken).toBeGreaterThan(500);
  });
});
